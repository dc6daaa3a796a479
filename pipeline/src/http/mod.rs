//! The HTTP server: health now; WebSockets, metrics and the API as they arrive.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use gaveurs_sinks::wal::Wal;
use tokio::sync::watch;

/// What readiness depends on.
#[derive(Clone)]
pub struct Health {
    pub wal: Wal,
    /// False while a source is not connected (an external broker that is down).
    pub sources_connected: watch::Receiver<bool>,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(Arc::new(health))
}

async fn live() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "live"}))
}

async fn ready(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let problem = if health.wal.failed() {
        Some("the durable log failed; input is refused")
    } else if !*health.sources_connected.borrow() {
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
