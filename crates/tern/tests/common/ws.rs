//! A WebSocket machine.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A machine that speaks WebSocket: it echoes every message, upper-cased.
pub async fn ws_machine(ip: std::net::IpAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind((ip, 7000)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => {
                            let _ = ws.send(Message::text(t.to_uppercase())).await;
                        }
                        Message::Binary(b) => {
                            let _ = ws.send(Message::Binary(b)).await;
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    })
}
