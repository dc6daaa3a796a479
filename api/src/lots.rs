//! A gaveur's lots and a lot's meals as published (`GET /api/v1/lots?gaveur_id=N`,
//! `GET /api/v1/lots/{code_lot}/meals`): what a client opening after a restart, or later than
//! the live channel keeps, needs to show a lot's history. The rows of the roll in progress are
//! not there yet: the gaveur's channel carries them.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gaveurs_operators::analytics::consumer::{gaveur_lots_from_parquet, lot_meals_from_parquet};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::access::{Access, Forbidden};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LotsQuery {
    gaveur_id: i64,
}

/// Runs a read on the query runtime (a heavy read never delays the acknowledging tasks).
async fn on_query_runtime<F>(read: F) -> Result<Vec<Map<String, Value>>, String>
where
    F: std::future::Future<Output = Result<Vec<Map<String, Value>>, String>> + Send + 'static,
{
    gaveurs_query::runtime()
        .spawn(read)
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

fn unreadable(error: String) -> Response {
    tracing::error!(target: "api", error, "published lots could not be read");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": error})),
    )
        .into_response()
}

pub(super) async fn gaveur_lots(
    State(state): State<Arc<AppState>>,
    Query(query): Query<LotsQuery>,
    access: Access,
) -> Result<Response, Forbidden> {
    access.require_lot_reader(Some(query.gaveur_id), None)?;
    let root = state.parquet_root.clone();
    Ok(
        match on_query_runtime(async move {
            gaveur_lots_from_parquet(&root, query.gaveur_id)
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await
        {
            Ok(lots) => {
                axum::Json(json!({"gaveur_id": query.gaveur_id, "lots": lots})).into_response()
            }
            Err(e) => unreadable(e),
        },
    )
}

pub(super) async fn meals(
    State(state): State<Arc<AppState>>,
    Path(code_lot): Path<String>,
    access: Access,
) -> Result<Response, Forbidden> {
    let root = state.parquet_root.clone();
    let code = code_lot.clone();
    let read = on_query_runtime(async move {
        lot_meals_from_parquet(&root, &code)
            .await
            .map_err(|e| format!("{e:#}"))
    });
    let meals = match read.await {
        Ok(meals) => meals,
        Err(e) => return Ok(unreadable(e)),
    };
    // The lot's owner, as its meals say (or the lot board, for a lot none is published of).
    let owner = meals
        .first()
        .map(|m| {
            (
                m.get("gaveur_id").and_then(Value::as_i64),
                m.get("site").and_then(Value::as_str).map(str::to_string),
            )
        })
        .or_else(|| state.lots.get(&code_lot).map(|v| (v.gaveur_id, v.site)));
    let Some((gaveur_id, site)) = owner else {
        return access.unknown_lot(format!("no published meal of lot {code_lot}"));
    };
    access.require_lot_reader(gaveur_id, site.as_deref())?;
    Ok(axum::Json(json!({"code_lot": code_lot, "meals": meals})).into_response())
}
