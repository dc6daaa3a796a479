//! The socket loop shared by gaveur channels and dashboards: frames and replies out, client
//! messages in, a ping every so often, and a 1013 close for a client that fell behind.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CLOSE_TOO_SLOW, Frame};

/// How long a client that fell behind gets to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Answers one text message from the client, or says nothing.
pub type OnText = Box<dyn FnMut(&str) -> Option<Utf8Bytes> + Send>;

pub(super) struct Pump {
    pub prelude: Vec<Utf8Bytes>,
    pub frames: mpsc::Receiver<Frame>,
    pub evicted: CancellationToken,
    pub ping_every: Duration,
    pub on_text: OnText,
    /// Cancelled at shutdown.
    pub closing: CancellationToken,
}

enum Next {
    Send(Message),
    Evicted,
    Closing,
    Done,
}

impl Pump {
    pub(super) async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let (reply_tx, mut replies) = mpsc::channel::<Utf8Bytes>(64);
        let client_gone = CancellationToken::new();
        let mut on_text = self.on_text;
        let reader = tokio::spawn({
            let client_gone = client_gone.clone();
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Text(text) => {
                            if let Some(reply) = on_text(&text) {
                                // A client that floods us with requests loses replies, not us.
                                let _ = reply_tx.try_send(reply);
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                client_gone.cancel();
            }
        });
        for text in std::mem::take(&mut self.prelude) {
            if sink.send(Message::Text(text)).await.is_err() {
                reader.abort();
                return;
            }
        }
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ping_every,
            self.ping_every,
        );
        let mut evicted = false;
        let mut closing = false;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.closing.cancelled() => Next::Closing,
                _ = self.evicted.cancelled() => Next::Evicted,
                _ = client_gone.cancelled() => Next::Done,
                reply = replies.recv() => reply.map(|r| Next::Send(Message::Text(r))).unwrap_or(Next::Done),
                frame = self.frames.recv() => match frame {
                    Some(frame) => Next::Send(Message::Text(frame.text)),
                    None => Next::Done,
                },
                _ = ping.tick() => Next::Send(Message::Ping(Default::default())),
            };
            let message = match next {
                Next::Send(message) => message,
                Next::Evicted => {
                    evicted = true;
                    break;
                }
                Next::Closing => {
                    closing = true;
                    break;
                }
                Next::Done => break,
            };
            tokio::select! {
                sent = sink.send(message) => if sent.is_err() { break },
                _ = self.evicted.cancelled() => { evicted = true; break }
                _ = client_gone.cancelled() => break,
            }
        }
        if evicted {
            let close = Message::Close(Some(CloseFrame {
                code: CLOSE_TOO_SLOW,
                reason: Utf8Bytes::from_static("client too slow; reconnect with ?since="),
            }));
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await;
        } else if closing {
            let close = Message::Close(Some(CloseFrame {
                code: axum::extract::ws::close_code::AWAY,
                reason: Utf8Bytes::from_static("server shutting down"),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
        }
        reader.abort();
    }
}
