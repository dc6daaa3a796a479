//! The HTTP server of the pipeline: health, metrics, the dev-mode JWKS, the API (devices,
//! lots, alerts, SQL queries), the WebSocket ingest and the live channels. Every response
//! carries the security headers and an `X-Request-ID`; every request is checked against the
//! caller's token and permissions (`access`).

mod access;
mod alerts;
mod ledger;
mod lots;
mod query;
mod web;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gaveurs_operators::alerts::desk::AlertDesk;
use gaveurs_operators::analytics::consumer::LotBoard;
use gaveurs_operators::auth::Verifier;
use gaveurs_operators::auth::dev::DevKeys;
use gaveurs_operators::auth::permissions::{Action, Resource, Scope};
use gaveurs_operators::devices::DeviceRegistry;
use gaveurs_operators::intake::PipelineIntake;
use gaveurs_sinks::wal::Wal;
use gaveurs_sinks::websocket::Hub;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::RequestId;
pub use web::DevSignin;

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub wal: Wal,
    /// False while a source is not connected (an external broker that is down).
    /// Sources that depend on a broker (an external MQTT broker, Kafka).
    pub sources: gaveurs_connectors::sources::health::SourceHealth,
    pub intake: PipelineIntake,
    pub hub: Arc<Hub>,
    pub devices: Arc<DeviceRegistry>,
    /// The latest KPIs of every lot.
    pub lots: Arc<LotBoard>,
    /// Alerts: listed, acknowledged, and joined to a lot's KPIs.
    pub alerts: Arc<AlertDesk>,
    pub verifier: Arc<Verifier>,
    /// Dev mode: the keys whose JWKS is served at the Keycloak-shaped path.
    pub dev_keys: Option<Arc<DevKeys>>,
    /// Dev mode on a loopback listener (or `[auth] dev_signin = true`): the web page's
    /// demo-user sign-in mints tokens.
    pub dev_signin: Option<web::DevSignin>,
    /// Keycloak mode: the realm the web page signs in to (`[auth] issuer`).
    pub web_issuer: Option<String>,
    pub ping_every: Duration,
    /// Stops the WebSocket ingest at shutdown.
    pub shutdown: CancellationToken,
    /// WebSocket ingest sockets, awaited at shutdown before the log closes.
    pub ingest_sockets: TaskTracker,
    /// One permit per open WebSocket (`[websocket] max_connections`).
    pub socket_slots: Arc<tokio::sync::Semaphore>,
    /// `<data_dir>/parquet`, which `POST /api/v1/query` reads.
    pub parquet_root: PathBuf,
    /// What one `POST /api/v1/query` may use (`[query]`).
    pub query_limits: gaveurs_query::QueryLimits,
    /// Must stay writable for `/health/ready`.
    pub data_dir: PathBuf,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(&gaveurs_operators::auth::dev::jwks_path(), get(jwks))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/lots", get(lots::gaveur_lots))
        .route("/api/v1/lots/{code_lot}", get(lot))
        .route("/api/v1/lots/{code_lot}/meals", get(lots::meals))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/ledger/keys", get(ledger::keys))
        .route("/api/v1/ledger/lots/{code_lot}", get(ledger::lot))
        .route("/api/v1/alerts/{alert_id}/ack", post(alerts::acknowledge))
        .route("/api/v1/query", post(query::query))
        .route("/ws/gavage", get(ws::gavage_ingest))
        .route("/ws/sensors/", get(ws::sensors_ingest))
        .route("/ws/sensors", get(ws::sensors_ingest))
        .route("/ws/gaveur/{gaveur_id}", get(ws::gaveur_channel))
        .route("/ws/realtime/", get(ws::realtime))
        .route("/ws/realtime", get(ws::realtime))
        .merge(web::routes())
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(Arc::new(state))
}

const SECURITY_HEADERS: [(&str, &str); 6] = [
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=()",
    ),
];

/// Adds the SPEC's security headers and an `X-Request-ID` (the caller's, when it sent a sane
/// one) to every response, and makes the id available to handlers for their audit lines.
/// Every response gets the security headers and its `X-Request-ID`; everything logged while
/// the request is handled carries `request_id`, and the request itself is one `api` line
/// (probes and scrapes at debug, so they do not drown the rest).
async fn security_headers(mut request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let request_id = RequestId::from_headers(request.headers());
    request.extensions_mut().insert(request_id.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("request", request_id = %request_id.0);
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if path.starts_with("/health") || path == "/metrics" {
            tracing::debug!(target: "api", %method, path, status, ms, "request");
        } else {
            tracing::info!(target: "api", %method, path, status, ms, "request");
        }
    });
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        // The web pages set their own content policy (their scripts, styles and socket).
        headers
            .entry(HeaderName::from_static(name))
            .or_insert(HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        headers.insert(HeaderName::from_static("x-request-id"), value);
    }
    response
}

async fn live() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "live"}))
}

/// 200 only when input can be taken and kept: the durable log works, every source is
/// connected, and the data dir is writable; else 503 with the reason.
async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let data_dir = state.data_dir.clone();
    let writable = tokio::task::spawn_blocking(move || writable(&data_dir))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let problem = if state.wal.failed() {
        Some("the durable log failed; input is refused".to_string())
    } else if let Some(error) = state.wal.disk_full() {
        Some(format!(
            "the data disk is full ({error}); input is refused until there is space"
        ))
    } else if let Some(source) = state.sources.problem() {
        Some(format!("a source is not connected: {source}"))
    } else if let Err(reason) = writable {
        Some(format!(
            "the data dir {} is not writable: {reason}",
            state.data_dir.display()
        ))
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

/// Whether files can be created in `dir`: its permissions (root ignores them when writing,
/// but an operator who made the folder read-only means it) and a real probe file.
fn writable(dir: &std::path::Path) -> Result<(), String> {
    let metadata = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if metadata.permissions().readonly() {
        return Err("it is read-only".into());
    }
    let probe = dir.join(format!(".ready-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| e.to_string())?;
    std::fs::remove_file(&probe).map_err(|e| e.to_string())
}

/// Every metric (names prefixed `gaveurs_`), OpenMetrics text.
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            gaveurs_telemetry::CONTENT_TYPE,
        )],
        gaveurs_telemetry::registry().render(),
    )
}

async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    match &state.dev_keys {
        Some(keys) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            keys.jwks().to_string(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "keys are served by Keycloak in keycloak mode",
        )
            .into_response(),
    }
}

/// Station status, for superviseurs and SQAL technicians.
async fn devices(
    State(state): State<Arc<AppState>>,
    access: access::Access,
) -> Result<impl IntoResponse, access::Forbidden> {
    access.require(Resource::SqalData, Action::Read, Scope::default())?;
    Ok(axum::Json(state.devices.snapshot()))
}

/// A lot's current KPIs (the latest row of each) and active alerts, for its gaveur and
/// superviseurs.
async fn lot(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(code_lot): axum::extract::Path<String>,
    access: access::Access,
) -> Result<Response, access::Forbidden> {
    let alerts = state.alerts.alerts(&access.principal, |a| {
        a.state.is_active() && a.code_lot.as_deref() == Some(code_lot.as_str())
    });
    let view = known_lot(&state, &code_lot).await;
    // A lot with alerts but no KPIs yet (or analytics off) is still a lot.
    let view = view.or_else(|| {
        alerts
            .first()
            .map(|alert| gaveurs_operators::analytics::consumer::LotView {
                code_lot: code_lot.clone(),
                gaveur_id: alert.gaveur_id,
                site: alert.site.clone(),
                kpis: Default::default(),
            })
    });
    let Some(view) = view else {
        return access.unknown_lot(format!("no KPIs for lot {code_lot}"));
    };
    access.require_lot_reader(view.gaveur_id, view.site.as_deref())?;
    Ok(axum::Json(serde_json::json!({
        "code_lot": view.code_lot,
        "gaveur_id": view.gaveur_id,
        "site": view.site,
        "kpis": view.kpis,
        "alerts": alerts,
    }))
    .into_response())
}

/// A lot as the pipeline knows it: from memory, else (forgotten, or before a restart) its
/// latest published `lot_kpis` row, read on the query runtime.
pub(crate) async fn known_lot(
    state: &AppState,
    code_lot: &str,
) -> Option<gaveurs_operators::analytics::consumer::LotView> {
    if let Some(view) = state.lots.get(code_lot) {
        return Some(view);
    }
    let root = state.parquet_root.clone();
    let code = code_lot.to_string();
    gaveurs_query::runtime()
        .spawn(async move { gaveurs_operators::analytics::consumer::lot_view_from_parquet(&root, &code).await })
        .await
        .ok()
        .and_then(|read| {
            read.map_err(|e| tracing::warn!(target: "api", error = %format!("{e:#}"), "a lot's KPIs could not be read from Parquet"))
                .ok()
        })
        .flatten()
}

pub(crate) fn bearer_from_headers(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| gaveurs_operators::auth::bearer(v).to_string())
        .filter(|t| !t.is_empty())
}
