//! Whether a machine that was started is up: each of its service ports accepts a
//! connection, and a service with HTTP checks passes its first one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tern_health::Probe;
use tokio::time::Instant;

/// Pause between tries while a start is young: a machine binary that listens
/// within a few milliseconds is seen within a millisecond of it (a refused
/// connect on the machine's own address costs microseconds).
const EAGER_PAUSE: Duration = Duration::from_millis(1);
/// How long tries stay that eager; then they come every `SLOW_PAUSE`.
const EAGER_FOR: Duration = Duration::from_millis(200);
const SLOW_PAUSE: Duration = Duration::from_millis(25);

/// What makes one service of a machine up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub port: u16,
    /// The service's first HTTP check, which must pass too.
    pub check: Option<Probe>,
}

/// Waits until every service in `services` on `ip` is up, up to `limit`; else
/// says which check did not pass.
pub async fn wait_until_up(
    ip: IpAddr,
    services: &[Readiness],
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    for service in services {
        let addr = SocketAddr::new(ip, service.port);
        let listening = Probe::Tcp {
            addr,
            timeout: limit,
        };
        for probe in std::iter::once(&listening).chain(&service.check) {
            let passes = || async move {
                tokio::time::timeout_at(deadline, probe.run())
                    .await
                    .is_ok_and(|r| r.is_ok())
            };
            if !retry_until(deadline, passes).await {
                return Err(format!(
                    "its {} check on {addr} did not pass within {limit:?}",
                    probe.kind()
                ));
            }
        }
    }
    Ok(())
}

/// Tries `attempt` until it succeeds or `deadline` passes: every millisecond at
/// first, then less often.
async fn retry_until<F, Fut>(deadline: Instant, attempt: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let began = Instant::now();
    loop {
        if attempt().await {
            return true;
        }
        let pause = if began.elapsed() < EAGER_FOR {
            EAGER_PAUSE
        } else {
            SLOW_PAUSE
        };
        if Instant::now() + pause >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_only(port: u16) -> Vec<Readiness> {
        vec![Readiness { port, check: None }]
    }

    #[tokio::test]
    async fn a_listening_port_is_up_and_a_closed_one_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        wait_until_up(ip, &port_only(open), Duration::from_secs(5))
            .await
            .unwrap();
        drop(listener);
        let err = wait_until_up(ip, &port_only(open), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("its tcp check on"), "{err}");
    }

    #[tokio::test]
    async fn a_service_with_an_http_check_is_up_only_once_it_passes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&answered);
        // Answers 503 three times, then 200.
        tokio::spawn(async move {
            for _ in 0.. {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let Ok(read) = s.read(&mut buf).await else {
                    continue;
                };
                if read == 0 {
                    continue; // a bare connect, as the port test makes
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let status = if n < 3 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let check = Probe::Http {
            addr,
            timeout: Duration::from_secs(1),
            method: "GET".into(),
            path: "/healthz".into(),
            host: "web.test".into(),
        };
        let services = vec![Readiness {
            port: addr.port(),
            check: Some(check),
        }];
        wait_until_up(addr.ip(), &services, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(answered.load(Ordering::SeqCst), 4, "up at the first 200");
    }
}
