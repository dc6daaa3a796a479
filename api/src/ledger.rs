//! `GET /api/v1/ledger/keys` (public: the ledger's public keys, to check certificates) and
//! `GET /api/v1/ledger/lots/{code_lot}` (a lot's certificate, for its gaveur, a superviseur
//! or an admin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gaveurs_operators::ledger::certificate::{CertificateError, export};
use gaveurs_operators::ledger::chain::chain_keys;
use serde_json::json;

use crate::AppState;
use crate::access::{Access, Forbidden};

pub async fn keys(State(state): State<Arc<AppState>>) -> Response {
    let dir = state.data_dir.join("ledger");
    match tokio::task::spawn_blocking(move || chain_keys(&dir)).await {
        Ok(Ok(chains)) => {
            axum::Json(json!({ "algorithm": "Ed25519", "chains": chains })).into_response()
        }
        Ok(Err(e)) => internal(format!("the ledger's keys could not be read: {e:#}")),
        Err(e) => internal(e.to_string()),
    }
}

/// One certificate is made at a time: each verifies whole chains (about 2 s for a year of
/// entries), and the acknowledging tasks must keep their cores.
static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub async fn lot(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(code_lot): axum::extract::Path<String>,
    access: Access,
) -> Result<Response, Forbidden> {
    // Who may see the lot is checked first when its owner is known (the lot board, or its
    // published KPIs), so a caller who may not costs no verification.
    if let Some(view) = crate::known_lot(&state, &code_lot).await {
        access.require_lot_reader(view.gaveur_id, view.site.as_deref())?;
    }
    let Ok(_turn) = EXPORTS.acquire().await else {
        return Ok(internal("certificate exports are closed".into()));
    };
    let dir = state.data_dir.join("ledger");
    let code = code_lot.clone();
    let exported = tokio::task::spawn_blocking(move || export(&dir, &code)).await;
    let certificate = match exported {
        Ok(Ok(certificate)) => certificate,
        Ok(Err(CertificateError::UnknownLot(_))) => {
            return access.unknown_lot(format!("lot {code_lot} has no entry in the ledger"));
        }
        Ok(Err(e)) => return Ok(internal(e.to_string())),
        Err(e) => return Ok(internal(e.to_string())),
    };
    // The lot's owner, as its first entry says.
    let started = certificate.entries.iter().find_map(|e| {
        let gaveur_id = e.payload.get("gaveur_id")?.as_i64()?;
        Some((gaveur_id, e.payload.get("site")?.as_str()?.to_string()))
    });
    access.require_lot_reader(
        started.as_ref().map(|s| s.0),
        started.as_ref().map(|s| s.1.as_str()),
    )?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        certificate.to_bytes(),
    )
        .into_response())
}

fn internal(error: String) -> Response {
    tracing::error!(target: "api", error, "ledger request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({ "error": error })),
    )
        .into_response()
}
