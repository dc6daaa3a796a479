//! The HTTP server: health, the WebSocket ingest and live channels.

mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use gaveurs_sinks::wal::Wal;
use gaveurs_sinks::websocket::Hub;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::devices::DeviceRegistry;
use crate::intake::PipelineIntake;

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub wal: Wal,
    /// False while a source is not connected (an external broker that is down).
    pub sources_connected: watch::Receiver<bool>,
    pub intake: PipelineIntake,
    pub hub: Arc<Hub>,
    pub devices: Arc<DeviceRegistry>,
    pub ping_every: Duration,
    /// Stops the WebSocket ingest at shutdown.
    pub shutdown: CancellationToken,
    /// WebSocket ingest sockets, awaited at shutdown before the log closes.
    pub ingest_sockets: TaskTracker,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/api/v1/devices", get(devices))
        .route("/ws/gavage", get(ws::gavage_ingest))
        .route("/ws/sensors/", get(ws::sensors_ingest))
        .route("/ws/sensors", get(ws::sensors_ingest))
        .route("/ws/gaveur/{gaveur_id}", get(ws::gaveur_channel))
        .route("/ws/realtime/", get(ws::realtime))
        .route("/ws/realtime", get(ws::realtime))
        .with_state(Arc::new(state))
}

async fn live() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "live"}))
}

async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let problem = if state.wal.failed() {
        Some("the durable log failed; input is refused")
    } else if !*state.sources_connected.borrow() {
        Some("a source is not connected")
    } else {
        None
    };
    match problem {
        None => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not_ready", "reason": reason})),
        ),
    }
}

async fn devices(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(state.devices.snapshot())
}
