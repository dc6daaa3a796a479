use std::time::Duration;

use axum::extract::ws::WebSocket;

use super::GaveurSubscription;
use super::pump::{OnText, Pump};

/// Serves `/ws/gaveur/{id}` on an upgraded socket: a replay-gap notice if frames after
/// `since` were already dropped, the kept frames after `since`, then live frames.
pub async fn serve_gaveur_channel(
    socket: WebSocket,
    mut subscription: GaveurSubscription,
    ping_every: Duration,
    on_text: OnText,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) {
    let mut prelude = Vec::new();
    if let Some((since, oldest)) = subscription.gap {
        prelude.push(
            serde_json::json!({
                "type": "notification",
                "data": {"kind": "replay_gap", "since": since, "oldest_available": oldest,
                         "hint": "missed messages are no longer buffered; use the REST API for current state"}
            })
            .to_string()
            .into(),
        );
    }
    prelude.extend(
        std::mem::take(&mut subscription.backlog)
            .into_iter()
            .map(|f| f.text),
    );
    let (frames, evicted) = subscription.take_stream();
    Pump {
        prelude,
        frames,
        evicted,
        ping_every,
        on_text,
        closing: subscription.hub.closing(),
        expires_at,
    }
    .run(socket)
    .await;
    drop(subscription);
}
