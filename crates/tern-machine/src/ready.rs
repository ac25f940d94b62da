//! Whether a machine that was started is up: each of its service ports accepts a
//! connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// First pause between tries; it doubles up to `MAX_PAUSE`. A machine binary that
/// listens within a few milliseconds is seen within a millisecond of it.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(25);

/// Waits until every port in `ports` on `ip` accepts a connection, up to `limit`.
pub async fn wait_until_listening(
    ip: IpAddr,
    ports: &[u16],
    limit: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    for &port in ports {
        let addr = SocketAddr::new(ip, port);
        let mut pause = FIRST_PAUSE;
        loop {
            let attempt = tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await;
            match attempt {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => {}
                Err(_) => return Err(format!("it did not listen on {addr} within {limit:?}")),
            }
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(format!("it did not listen on {addr} within {limit:?}"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_port_is_up_and_a_closed_one_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        wait_until_listening(ip, &[open], Duration::from_secs(5))
            .await
            .unwrap();
        drop(listener);
        let err = wait_until_listening(ip, &[open], Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("did not listen"), "{err}");
    }
}
