//! WebSocket routes: upgrade, then hand the socket to its source or sink.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::Response;
use gaveurs_connectors::sources::websocket::{IngestPath, serve_ingest};
use gaveurs_sinks::websocket::{OnText, serve_gaveur_channel, serve_realtime};
use serde::Deserialize;

use super::AppState;

/// Largest message the ingest sockets take; larger records are refused by the record limit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub(super) async fn gavage_ingest(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    ingest(upgrade, state, peer, IngestPath::Gavage)
}

pub(super) async fn sensors_ingest(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    ingest(upgrade, state, peer, IngestPath::Sensors)
}

fn ingest(
    upgrade: WebSocketUpgrade,
    state: Arc<AppState>,
    peer: SocketAddr,
    path: IngestPath,
) -> Response {
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let task = serve_ingest(
                socket,
                state.intake.clone(),
                path,
                peer,
                None,
                state.shutdown.clone(),
            );
            state.ingest_sockets.track_future(task)
        })
}

#[derive(Deserialize)]
pub(super) struct ChannelQuery {
    since: Option<u64>,
}

pub(super) async fn gaveur_channel(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    Path(gaveur_id): Path<i64>,
    Query(query): Query<ChannelQuery>,
) -> Response {
    let subscription = state.hub.subscribe_gaveur(gaveur_id, query.since);
    let ping_every = state.ping_every;
    upgrade.on_upgrade(move |socket| {
        serve_gaveur_channel(socket, subscription, ping_every, channel_messages())
    })
}

/// Client messages on a gaveur channel: `ping` → `pong`; anything else is answered with an
/// error naming the type.
fn channel_messages() -> OnText {
    Box::new(|text: &str| -> Option<Utf8Bytes> {
        #[derive(Deserialize)]
        struct Message {
            #[serde(rename = "type")]
            kind: String,
        }
        let reply = match serde_json::from_str::<Message>(text) {
            Ok(m) if m.kind == "ping" => {
                serde_json::json!({"type": "pong", "timestamp": chrono::Utc::now()})
            }
            Ok(m) => {
                serde_json::json!({"type": "error", "message": format!("unknown message type {:?}", m.kind)})
            }
            Err(e) => {
                serde_json::json!({"type": "error", "message": format!("not a channel message: {e}")})
            }
        };
        Some(reply.to_string().into())
    })
}

pub(super) async fn realtime(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
) -> Response {
    let hub = state.hub.clone();
    let ping_every = state.ping_every;
    upgrade.on_upgrade(move |socket| serve_realtime(socket, hub, ping_every))
}
