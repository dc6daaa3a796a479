use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Utf8Bytes, WebSocket};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::filters::{RealtimeFilters, RealtimeScope};
use super::hub::RealtimeSubscriber;
use super::pump::{ClientReply, OnText, Pump};

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    filters: Option<RealtimeFilters>,
}

/// Handles the dashboard's own messages; anything it does not know goes to `fallback`
/// (authentication renewals, for instance).
fn dashboard_messages(filters: Arc<Mutex<RealtimeFilters>>, mut fallback: OnText) -> OnText {
    Box::new(move |text: String| {
        let now = chrono::Utc::now();
        let reply = match serde_json::from_str::<ClientMessage>(&text) {
            Ok(message) => match message.kind.as_str() {
                "subscribe" => {
                    let new = message.filters.unwrap_or_default();
                    *filters.lock() = new.clone();
                    serde_json::json!({"type": "subscribe_ack", "filters": new, "timestamp": now})
                }
                "heartbeat" => serde_json::json!({"type": "heartbeat_ack", "timestamp": now}),
                "ping" => serde_json::json!({"type": "pong", "timestamp": now}),
                _ => return fallback(text),
            },
            Err(e) => {
                serde_json::json!({"type": "error", "message": format!("not a dashboard message: {e}")})
            }
        };
        Box::pin(std::future::ready(ClientReply::text(reply.to_string())))
    })
}

/// Serves `/ws/realtime/`: `sensor_update` and `gavage_realtime` messages within the
/// client's scope that pass its filters; `subscribe` → `subscribe_ack`, `heartbeat` →
/// `heartbeat_ack`, `ping` → `pong`; other messages go to `fallback`.
pub async fn serve_realtime(
    socket: WebSocket,
    hub: Arc<Hub>,
    ping_every: Duration,
    scope: RealtimeScope,
    fallback: OnText,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) {
    let filters = Arc::new(Mutex::new(RealtimeFilters::default()));
    let (tx, frames) = mpsc::channel(hub.options().client_queue);
    let evicted = CancellationToken::new();
    let id = hub.next_id();
    hub.realtime.lock().push(RealtimeSubscriber {
        id,
        tx,
        evicted: evicted.clone(),
        filters: filters.clone(),
        scope,
    });
    let welcome: Utf8Bytes = serde_json::json!({
        "type": "connection_established",
        "message": "connected to gaveurs realtime",
        "timestamp": chrono::Utc::now(),
    })
    .to_string()
    .into();
    let on_text = dashboard_messages(filters, fallback);
    Pump {
        prelude: vec![welcome],
        frames,
        evicted,
        ping_every,
        on_text,
        closing: hub.closing(),
        expires_at,
    }
    .run(socket)
    .await;
    hub.realtime.lock().retain(|s| s.id != id);
}
