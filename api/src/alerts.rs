//! `GET /api/v1/alerts` and `POST /api/v1/alerts/{alert_id}/ack`: the alerts a caller may
//! see, for clients that come back after the live channel's replay buffer has moved on.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gaveurs_operators::alerts::AckError;
use gaveurs_operators::auth::AuthError;
use gaveurs_operators::auth::audit;
use gaveurs_operators::auth::permissions::{self, Action, Resource};
use gaveurs_schemas::alert::AlertState;
use serde::Deserialize;
use serde_json::json;

use super::{AppState, access};
use gaveurs_operators::alerts::desk::AckFailure;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertQuery {
    /// `open`, `acknowledged`, `active` (both; the default) or `cleared` (the last cleared
    /// alert of each key).
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    code_lot: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    access: access::Access,
    Query(query): Query<AlertQuery>,
) -> Response {
    let wanted: fn(AlertState) -> bool = match query.state.as_deref() {
        None | Some("active") => AlertState::is_active,
        Some("open") => |s| s == AlertState::Open,
        Some("acknowledged") => |s| s == AlertState::Acknowledged,
        Some("cleared") => |s| s == AlertState::Cleared,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": format!("state {other:?}: expected open, acknowledged, active or cleared")})),
            )
                .into_response();
        }
    };
    // Alerts are gavage or SQAL data: whoever may read neither (a gateway) is refused
    // rather than shown an empty list.
    let reader = [Resource::GavageData, Resource::SqalData]
        .into_iter()
        .any(|r| permissions::allowed_somewhere(&access.principal, r, Action::Read));
    if !reader {
        return access.refuse("read alerts").into_response();
    }
    let alerts = state.alerts.alerts(&access.principal, |a| {
        wanted(a.state)
            && query
                .code_lot
                .as_deref()
                .is_none_or(|lot| a.code_lot.as_deref() == Some(lot))
            && query
                .device_id
                .as_deref()
                .is_none_or(|device| a.device_id.as_deref() == Some(device))
    });
    axum::Json(json!({"count": alerts.len(), "alerts": alerts})).into_response()
}

pub(super) async fn acknowledge(
    State(state): State<Arc<AppState>>,
    Path(alert_id): Path<String>,
    access: access::Access,
) -> Response {
    // Only a gaveur (their lots' alerts), a superviseur or an admin acknowledges; anyone else
    // is refused before the id is looked up, so nobody learns which alerts exist.
    if let Err(forbidden) = access.require(
        Resource::GavageData,
        Action::Read,
        permissions::own_scope(&access.principal),
    ) {
        return forbidden.into_response();
    }
    let desk = state.alerts.clone();
    let principal = access.principal.clone();
    let id = alert_id.clone();
    let result = tokio::task::spawn_blocking(move || desk.acknowledge(&id, &principal)).await;
    match result {
        Ok(Ok(alert)) => {
            audit::data_mutation(&format!("acknowledge alert {alert_id}"), access.context());
            let (status, alert) = match alert {
                Some(alert) => ("acknowledged", Some(alert)),
                None => ("already_acknowledged", None),
            };
            axum::Json(json!({"status": status, "alert_id": alert_id, "alert": alert}))
                .into_response()
        }
        Ok(Err(failure)) => ack_failure(&failure, &access),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

fn ack_failure(failure: &AckFailure, access: &access::Access) -> Response {
    let status = match failure {
        AckFailure::Refused(AckError::Unknown(_)) => StatusCode::NOT_FOUND,
        AckFailure::Refused(AckError::Cleared(_)) => StatusCode::CONFLICT,
        AckFailure::Forbidden(..) => {
            audit::unauthorized(&AuthError::forbidden(failure.to_string()), access.context());
            StatusCode::FORBIDDEN
        }
        AckFailure::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        AckFailure::Elsewhere(..) => StatusCode::CONFLICT,
    };
    (status, axum::Json(json!({"error": failure.to_string()}))).into_response()
}
