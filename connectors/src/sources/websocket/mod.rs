//! The V3-compatible WebSocket ingest (SPEC §2): `/ws/gavage` for feeding records and
//! `/ws/sensors/` for SQAL stations, so the old stations and simulators keep working.
//!
//! Replies follow V3: `connection_established` on connect; per record an `ack` with
//! `status: "saved"` once it is durable, or an `error` with the reason only (never an echo of
//! the payload); `hello_ack` for `esp32_hello`, `pong` for `ping`; a `heartbeat` updates the
//! device's status and gets no reply. Replies leave in arrival order.
//!
//! A producer that never reads its replies must not stall the pipeline: replies wait in a
//! bounded queue, and once it is full further replies are dropped (the records are still
//! stored). Input keeps being read, so such a producer is only slowed by the durable log's
//! own backpressure.

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gaveurs_schemas::envelope::{Provenance, Transport};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::intake::{Credentials, DurableTicket, Intake, RawInput, Route, Saved, Target, Verdict};

/// Which ingest path a socket was opened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestPath {
    /// `/ws/gavage`: meals, and lot outcomes marked `"record_type": "lot_outcome"`.
    Gavage,
    /// `/ws/sensors/`: SQAL measurements and station control messages.
    Sensors,
}

impl IngestPath {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestPath::Gavage => "/ws/gavage",
            IngestPath::Sensors => "/ws/sensors/",
        }
    }
}

/// Replies a connection may have waiting before further ones are dropped.
pub const MAX_PENDING_REPLIES: usize = 1024;

/// Control messages are small; anything larger is a record and is not parsed twice.
const CONTROL_PEEK_LIMIT: usize = 4096;

struct Reply {
    ticket: Option<DurableTicket>,
    text: Utf8Bytes,
}

#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Serves one ingest socket until the client leaves or `shutdown` fires.
pub async fn serve_ingest<I: Intake>(
    socket: WebSocket,
    intake: I,
    path: IngestPath,
    peer: SocketAddr,
    mut connection_token: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (mut sink, mut stream) = socket.split();
    let (replies, mut queue) = mpsc::channel::<Reply>(MAX_PENDING_REPLIES);
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<CloseFrame>();
    let writer = tokio::spawn(async move {
        while let Some(reply) = queue.recv().await {
            if let Some(ticket) = reply.ticket
                && ticket.await.is_err()
            {
                break;
            }
            if sink.send(Message::Text(reply.text)).await.is_err() {
                return;
            }
        }
        match close_rx.await {
            Ok(frame) => {
                let _ = sink.send(Message::Close(Some(frame))).await;
            }
            Err(_) => {
                let _ = sink.close().await;
            }
        }
    });
    let welcome = serde_json::json!({
        "type": "connection_established",
        "message": format!("connected to gaveurs {}", path.as_str()),
        "timestamp": now(),
    });
    let _ = replies.try_send(Reply {
        ticket: None,
        text: welcome.to_string().into(),
    });
    let mut dropped = 0u64;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = stream.next() => message,
        };
        let payload: Bytes = match message {
            Some(Ok(Message::Text(text))) => text.into(),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(e)) => {
                let _ = close_tx.send(close_for(&e));
                break;
            }
            Some(Ok(_)) => continue,
        };
        let reply = match renewal(&payload) {
            Some(token) => Some(renew(&intake, path, peer, token, &mut connection_token).await),
            None => handle(&intake, path, peer, &connection_token, payload).await,
        };
        if let Some(reply) = reply
            && replies.try_send(reply).is_err()
        {
            dropped += 1;
            if dropped == 1 {
                tracing::info!(%peer, path = path.as_str(), "client does not read its replies; dropping them");
            }
        }
    }
    drop(replies);
    // Replies owed to a client that is still there go out; a bounded wait at shutdown.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), writer).await;
}

/// The close frame that tells a client why its socket could not be read: 1009 for a
/// message over the size limit (the WebSocket library reports it as a capacity error),
/// 1002 for anything else it could not decode.
fn close_for(error: &axum::Error) -> CloseFrame {
    let text = error.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") {
        CloseFrame {
            code: 1009,
            reason: Utf8Bytes::from_static("message too big: records are at most 16 MiB"),
        }
    } else {
        CloseFrame {
            code: 1002,
            reason: Utf8Bytes::from_static("unreadable WebSocket frame"),
        }
    }
}

/// The token of an `{"type":"auth","token":…}` message, which renews the socket's token.
fn renewal(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Auth {
        #[serde(rename = "type")]
        kind: String,
        token: String,
    }
    if payload.len() > CONTROL_PEEK_LIMIT {
        return None;
    }
    serde_json::from_slice::<Auth>(payload)
        .ok()
        .filter(|a| a.kind == "auth")
        .map(|a| a.token)
}

async fn renew<I: Intake>(
    intake: &I,
    path: IngestPath,
    peer: SocketAddr,
    token: String,
    connection_token: &mut Option<String>,
) -> Reply {
    let source = peer.to_string();
    let context = crate::intake::ConnectionContext {
        transport: path.as_str(),
        source: &source,
    };
    let text = match intake.authenticate_connection(&token, context).await {
        Ok(()) => {
            *connection_token = Some(token);
            serde_json::json!({"type": "auth_ok", "timestamp": now()})
        }
        Err(refused) => serde_json::json!({"type": "error", "message": refused.0}),
    };
    Reply {
        ticket: None,
        text: text.to_string().into(),
    }
}

async fn handle<I: Intake>(
    intake: &I,
    path: IngestPath,
    peer: SocketAddr,
    connection_token: &Option<String>,
    payload: Bytes,
) -> Option<Reply> {
    let peek = (payload.len() <= CONTROL_PEEK_LIMIT)
        .then(|| serde_json::from_slice::<Peek>(&payload).ok())
        .flatten();
    let kind = peek.as_ref().and_then(|p| p.kind.as_deref());
    let target = match kind {
        Some("ping") => {
            return Some(Reply {
                ticket: None,
                text: serde_json::json!({"type": "pong", "timestamp": now()})
                    .to_string()
                    .into(),
            });
        }
        Some("esp32_hello") => {
            let device = peek.as_ref().and_then(|p| p.device_id.clone());
            return Some(Reply {
                ticket: None,
                text: serde_json::json!({
                    "type": "hello_ack", "device_id": device, "timestamp": now(),
                    "message": "welcome",
                })
                .to_string()
                .into(),
            });
        }
        Some("heartbeat") => Target::DeviceStatus,
        _ => match path {
            IngestPath::Gavage => Target::GavageOrOutcome,
            IngestPath::Sensors => Target::Sqal,
        },
    };
    let mut provenance = Provenance::new(Transport::WebSocket);
    provenance.topic = Some(path.as_str().to_string());
    provenance.source = Some(peer.to_string());
    let mut route = Route::to(target);
    if target == Target::DeviceStatus {
        route.device_id = peek.and_then(|p| p.device_id);
    }
    let submitted = intake
        .submit(RawInput {
            route,
            payload,
            provenance,
            credentials: Credentials {
                message_token: None,
                connection_token: connection_token.clone(),
            },
            received_at: chrono::Utc::now(),
            produced_at: None,
            backfill: false,
            reread: false,
        })
        .await;
    let text = match submitted.verdict {
        Verdict::Control => return None,
        Verdict::Accepted { saved, duplicate } => ack(&saved, duplicate),
        Verdict::Rejected { message, .. } | Verdict::Busy { message } => {
            serde_json::json!({"type": "error", "message": message})
        }
    };
    Some(Reply {
        ticket: Some(submitted.durable),
        text: text.to_string().into(),
    })
}

fn ack(saved: &Saved, duplicate: bool) -> serde_json::Value {
    let mut ack = match saved {
        Saved::Meal {
            code_lot,
            jour,
            moment,
        } => serde_json::json!({"code_lot": code_lot, "jour": jour, "moment": moment}),
        Saved::Sample {
            sample_id,
            final_score,
            grade,
        } => {
            serde_json::json!({"sample_id": sample_id, "fusion_score": final_score, "fusion_grade": grade.as_str()})
        }
        Saved::Outcome { code_lot } => {
            serde_json::json!({"code_lot": code_lot, "record_type": "lot_outcome"})
        }
    };
    let fields = ack.as_object_mut().expect("object");
    fields.insert("type".into(), "ack".into());
    fields.insert("status".into(), "saved".into());
    fields.insert("timestamp".into(), now().into());
    if duplicate {
        fields.insert("duplicate".into(), true.into());
    }
    ack
}
