//! Copying bytes both ways between a client and a machine. When one side ends its
//! stream, the other side's write half is shut down, so half-closed protocols work.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Bytes moved in each direction by `splice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_machine: u64,
    pub machine_to_client: u64,
}

/// Writes `preamble` (e.g. a PROXY header) to the machine, then copies both ways
/// until both directions have ended.
pub async fn splice<C, M>(
    client: &mut C,
    machine: &mut M,
    preamble: &[u8],
) -> io::Result<Transferred>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    M: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    if !preamble.is_empty() {
        machine.write_all(preamble).await?;
    }
    let (up, down) = tokio::io::copy_bidirectional(client, machine).await?;
    Ok(Transferred {
        client_to_machine: up,
        machine_to_client: down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A client that half-closes still gets the machine's answer, as `nc -N` expects.
    #[tokio::test]
    async fn half_close_passes_through() {
        let machine_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let machine_addr = machine_l.local_addr().unwrap();
        let machine = tokio::spawn(async move {
            let (mut s, _) = machine_l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got.iter().rev().copied().collect::<Vec<_>>())
                .await
                .unwrap();
            got
        });

        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let proxy = tokio::spawn(async move {
            let (mut c, _) = front.accept().await.unwrap();
            let mut m = TcpStream::connect(machine_addr).await.unwrap();
            splice(&mut c, &mut m, b"HDR ").await.unwrap()
        });

        let mut client = TcpStream::connect(front_addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"olleh RDH");
        assert_eq!(machine.await.unwrap(), b"HDR hello");
        let t = proxy.await.unwrap();
        assert_eq!(t.client_to_machine, 5);
        assert_eq!(t.machine_to_client, 9);
    }
}
