//! The socket loop shared by gaveur channels and dashboards: frames and replies out, client
//! messages in, a ping every so often, a 1013 close for a client that fell behind, and a
//! 4401 close when the client's token expires without renewal.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CLOSE_TOO_SLOW, Frame};

/// How long a client that fell behind gets to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Close code for a missing, invalid or expired token.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code for a token that may not see this channel.
pub const CLOSE_FORBIDDEN: u16 = 4403;

/// What to do about one message from the client.
#[derive(Default)]
pub struct ClientReply {
    pub reply: Option<Utf8Bytes>,
    /// A renewed token: the channel now lives until then.
    pub expires_at: Option<DateTime<Utc>>,
    /// Close the socket with this code and reason.
    pub close: Option<(u16, String)>,
}

impl ClientReply {
    pub fn text(reply: impl Into<Utf8Bytes>) -> Self {
        Self {
            reply: Some(reply.into()),
            ..Self::default()
        }
    }
}

/// Answers one text message from the client.
pub type OnText = Box<dyn FnMut(String) -> BoxFuture<'static, ClientReply> + Send>;

pub(super) struct Pump {
    pub prelude: Vec<Utf8Bytes>,
    pub frames: mpsc::Receiver<Frame>,
    pub evicted: CancellationToken,
    pub ping_every: Duration,
    pub on_text: OnText,
    /// Cancelled at shutdown.
    pub closing: CancellationToken,
    /// When the client's token expires; `None` for no limit.
    pub expires_at: Option<DateTime<Utc>>,
}

enum Next {
    Send(Message),
    Close(u16, String),
    Done,
}

impl Pump {
    pub(super) async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let (reply_tx, mut replies) = mpsc::channel::<ClientReply>(64);
        let client_gone = CancellationToken::new();
        let mut on_text = self.on_text;
        let reader = tokio::spawn({
            let client_gone = client_gone.clone();
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Text(text) => {
                            let reply = on_text(text.as_str().to_string()).await;
                            // A client that floods us with requests loses replies, not us.
                            let _ = reply_tx.try_send(reply);
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
        let mut expires_at = self.expires_at;
        let latency = live_latency();
        let end = loop {
            let mut sent_record = None;
            let until_expiry = expires_at.map(|at| (at - Utc::now()).to_std().unwrap_or_default());
            let next = tokio::select! {
                biased;
                _ = self.closing.cancelled() => Next::Close(
                    axum::extract::ws::close_code::AWAY,
                    "server shutting down".into(),
                ),
                _ = self.evicted.cancelled() => Next::Close(
                    CLOSE_TOO_SLOW,
                    "client too slow; reconnect with ?since=".into(),
                ),
                _ = client_gone.cancelled() => Next::Done,
                _ = sleep_or_never(until_expiry) => Next::Close(
                    CLOSE_UNAUTHORIZED,
                    "token expired; reconnect or send a fresh auth message".into(),
                ),
                reply = replies.recv() => match reply {
                    None => Next::Done,
                    Some(reply) => {
                        if let Some(at) = reply.expires_at {
                            expires_at = Some(at);
                        }
                        match (reply.close, reply.reply) {
                            (Some((code, reason)), _) => Next::Close(code, reason),
                            (None, Some(text)) => Next::Send(Message::Text(text)),
                            (None, None) => continue,
                        }
                    }
                },
                frame = self.frames.recv() => match frame {
                    Some(frame) => {
                        sent_record = frame.ingest_time;
                        Next::Send(Message::Text(frame.text))
                    }
                    None => Next::Done,
                },
                _ = ping.tick() => Next::Send(Message::Ping(Default::default())),
            };
            let message = match next {
                Next::Send(message) => message,
                Next::Close(code, reason) => break Some((code, reason)),
                Next::Done => break None,
            };
            tokio::select! {
                sent = sink.send(message) => {
                    if sent.is_err() {
                        break None;
                    }
                    if let Some(ingest_time) = sent_record {
                        latency.observe((Utc::now() - ingest_time).as_seconds_f64());
                    }
                }
                _ = self.evicted.cancelled() => break Some((CLOSE_TOO_SLOW, "client too slow; reconnect with ?since=".into())),
                _ = client_gone.cancelled() => break None,
            }
        };
        if let Some((code, reason)) = end {
            let grace = if code == CLOSE_TOO_SLOW {
                CLOSE_GRACE
            } else {
                Duration::from_secs(1)
            };
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(grace, sink.send(close)).await;
        }
        reader.abort();
    }
}

/// Event ingest → the record's frame written to a WebSocket (SPEC §9 "end-to-end latency").
fn live_latency() -> gaveurs_telemetry::Histogram {
    gaveurs_telemetry::registry().histogram(
        "gaveurs_live_latency_seconds",
        "From a record's receipt to its frame written to a WebSocket client (gaveur channels and dashboards).",
        &[],
        gaveurs_telemetry::LATENCY_BUCKETS,
    )
}

async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}
