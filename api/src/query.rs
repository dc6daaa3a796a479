//! `POST /api/v1/query`: a read-only SQL query over the Parquet datasets, for callers who may
//! read analytics (superviseur, admin). The body is `{"sql": "…"}` (or the SQL itself as
//! `text/plain` or `application/sql`); the answer is JSON, or an Arrow IPC stream when the
//! caller accepts `application/vnd.apache.arrow.stream`.
//!
//! A query is bounded by `[query]`: over its memory pool it answers 413, past its time 503;
//! either way it is cancelled and the pipeline goes on.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gaveurs_operators::auth::permissions::{Action, Resource, Scope};

use super::AppState;
use super::access::Access;
use gaveurs_query::{self as query, BatchWriter, Format, QueryError};

/// The most rows one answer carries; a larger result is refused with 400.
pub const MAX_ROWS: usize = 100_000;

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

pub(super) async fn query(
    State(state): State<Arc<AppState>>,
    access: Access,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(forbidden) = access.require(Resource::Analytics, Action::Read, Scope::default()) {
        return forbidden.into_response();
    }
    let sql = match sql_of(&headers, &body) {
        Ok(sql) => sql,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let format = if wants_arrow(&headers) {
        Format::Arrow
    } else {
        Format::Json
    };
    let root = state.parquet_root.clone();
    let limits = state.query_limits;
    let started = Instant::now();
    // On the query runtime; aborted if the caller goes away or the time is up.
    let task = query::runtime().spawn({
        let sql = sql.clone();
        async move {
            let (schema, batches) = query::collect_capped(&root, &sql, MAX_ROWS, limits).await?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let body = match format {
                Format::Arrow => {
                    let mut writer = BatchWriter::new(Format::Arrow, schema, Vec::new())?;
                    for batch in &batches {
                        writer.write(batch)?;
                    }
                    writer.finish()?
                }
                _ => json_answer(&schema, &batches, rows)?,
            };
            Ok::<_, QueryError>((rows, body))
        }
    });
    let abort = AbortOnDrop(task.abort_handle());
    // Timed here, on the server's runtime, so the answer goes out on time even when the query
    // runtime is saturated.
    let outcome = query::within_time(limits, async {
        match task.await {
            Ok(outcome) => outcome,
            Err(e) => Err(QueryError::Failed(format!("the query task failed: {e}"))),
        }
    })
    .await;
    drop(abort);
    let user = access.principal.display_name();
    match outcome {
        Ok((rows, body)) => {
            tracing::info!(
                target: "query",
                user = %user,
                request_id = %access.request_id,
                rows,
                ms = started.elapsed().as_millis() as u64,
                "query answered"
            );
            let content_type = match format {
                Format::Arrow => ARROW_STREAM,
                _ => "application/json",
            };
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => {
            let status = match e {
                QueryError::Invalid(_) | QueryError::TooLarge(_) => StatusCode::BAD_REQUEST,
                QueryError::MemoryExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                QueryError::TimedOut { .. } => StatusCode::SERVICE_UNAVAILABLE,
                QueryError::Failed(_) | QueryError::Output(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::info!(
                target: "query",
                user = %user,
                request_id = %access.request_id,
                status = status.as_u16(),
                "query refused: {e}"
            );
            error(status, &e.to_string())
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

/// The SQL of the request: the body itself for `text/plain` and `application/sql`, else the
/// `sql` member of a JSON object.
fn sql_of(headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let sql = match content_type.as_str() {
        "text/plain" | "application/sql" => std::str::from_utf8(body)
            .map_err(|_| "the body is not UTF-8".to_string())?
            .to_string(),
        _ => {
            #[derive(serde::Deserialize)]
            struct Body {
                sql: String,
            }
            serde_json::from_slice::<Body>(body)
                .map_err(|e| {
                    format!(r#"the body must be {{"sql": "SELECT …"}} (or text/plain SQL): {e}"#)
                })?
                .sql
        }
    };
    if sql.trim().is_empty() {
        return Err("the query is empty".into());
    }
    Ok(sql)
}

/// Whether the caller prefers an Arrow IPC stream to JSON (by `Accept` q-values; JSON wins
/// ties and is the default).
fn wants_arrow(headers: &HeaderMap) -> bool {
    let mut arrow = 0.0f32;
    let mut json = 0.0f32;
    for accept in headers.get_all(header::ACCEPT) {
        let Ok(accept) = accept.to_str() else {
            continue;
        };
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                ARROW_STREAM => arrow = arrow.max(q),
                "application/json" | "application/*" | "*/*" => json = json.max(q),
                _ => {}
            }
        }
    }
    arrow > 0.0 && arrow > json
}

/// `{"columns": [{"name", "type"}…], "rows": [{…}…], "row_count": N}`, the rows written by
/// arrow's JSON writer (nulls as `null`).
fn json_answer(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
    rows: usize,
) -> Result<Vec<u8>, QueryError> {
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": query::sql_type(f.data_type())}))
        .collect();
    let mut body = br#"{"columns":"#.to_vec();
    serde_json::to_writer(&mut body, &columns)
        .map_err(|e| QueryError::Failed(format!("encoding the columns: {e}")))?;
    body.extend_from_slice(br#","rows":"#);
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(&mut body);
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    body.extend_from_slice(format!(r#","row_count":{rows}}}"#).as_bytes());
    Ok(body)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn arrow_only_when_preferred() {
        assert!(wants_arrow(&accept(ARROW_STREAM)));
        assert!(wants_arrow(&accept(
            "application/vnd.apache.arrow.stream, application/json;q=0.5"
        )));
        assert!(!wants_arrow(&accept("application/json")));
        assert!(!wants_arrow(&accept("*/*")));
        assert!(!wants_arrow(&accept(
            "application/json, application/vnd.apache.arrow.stream;q=0.9"
        )));
        assert!(!wants_arrow(&accept(
            "application/vnd.apache.arrow.stream;q=0"
        )));
        assert!(!wants_arrow(&HeaderMap::new()));
    }

    #[test]
    fn sql_from_json_or_plain_text() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            sql_of(&headers, br#"{"sql": "SELECT 1"}"#).unwrap(),
            "SELECT 1"
        );
        assert!(sql_of(&headers, b"SELECT 1").is_err());
        assert!(sql_of(&headers, br#"{"sql": "  "}"#).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        assert_eq!(sql_of(&headers, b"SELECT 2").unwrap(), "SELECT 2");
    }
}
