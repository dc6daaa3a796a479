//! A stand-in for Twilio's Messages API, so that the end-to-end tests can check what the
//! pipeline sends by SMS without an account or a network.
//!
//! Point the pipeline at it with `[sms] twilio_base_url = "<fake.base_url>"` and any
//! `TWILIO_*` credentials: it accepts every account and records what it receives. Answers are
//! scripted with [`FakeTwilio::respond_with`]; unscripted requests get a 201 like Twilio's, or
//! Twilio's 400 when `To`, `From` or `Body` is missing.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioRequest {
    /// The account SID from the URL path.
    pub account_sid: String,
    /// The HTTP basic-auth user and password (account SID and auth token), if sent.
    pub user: Option<String>,
    pub password: Option<String>,
    /// The form fields (empty when missing).
    pub to: String,
    pub from: String,
    pub body: String,
    /// The status the fake answered.
    pub status: u16,
    /// The message SID (`SM…`) the fake answered with, on 2xx.
    pub sid: Option<String>,
    pub received_at: Instant,
}

#[derive(Default)]
struct Script {
    statuses: VecDeque<u16>,
    retry_after: Option<u64>,
    requests: Vec<TwilioRequest>,
}

struct Shared {
    script: Mutex<Script>,
    arrived: Notify,
}

/// A fake Twilio on 127.0.0.1, serving `POST /2010-04-01/Accounts/{sid}/Messages.json`. Stops
/// when dropped.
pub struct FakeTwilio {
    /// `http://127.0.0.1:<port>`: the API root, to use as `twilio_base_url`.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeTwilio {
    /// Binds an ephemeral port and starts serving.
    pub async fn start() -> FakeTwilio {
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            arrived: Notify::new(),
        });
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Twilio");
        let base_url = format!("http://{}", listener.local_addr().expect("local address"));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).into_future().await {
                eprintln!("fake Twilio stopped: {e}");
            }
        });
        FakeTwilio {
            base_url,
            shared,
            server,
        }
    }

    /// The next requests get these statuses, in order (replacing what was left of an earlier
    /// script); after them, 201 again.
    pub fn respond_with(&self, statuses: &[u16]) {
        self.shared.script.lock().statuses = statuses.iter().copied().collect();
    }

    /// Adds `Retry-After: <seconds>` to 429 and 5xx answers (`None`, the default: no header, so
    /// the pipeline's own backoff applies).
    pub fn set_retry_after(&self, seconds: Option<u64>) {
        self.shared.script.lock().retry_after = seconds;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<TwilioRequest> {
        self.shared.script.lock().requests.clone()
    }

    /// The requests answered with a 2xx: the SMS that went out.
    pub fn sent(&self) -> Vec<TwilioRequest> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until at least `n` requests have arrived and returns them all; panics with what
    /// arrived if that takes longer than `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<TwilioRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a request arriving in between still wakes us.
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let requests = self.requests();
                if requests.len() >= n {
                    return requests;
                }
                panic!(
                    "expected {n} Twilio requests within {timeout:?}, got {}: {requests:#?}",
                    requests.len()
                );
            }
        }
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// `Authorization: Basic base64(user:password)`, decoded.
fn basic_auth(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let decoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .and_then(|v| String::from_utf8(v).ok());
    match decoded.as_deref().map(|v| v.split_once(':')) {
        Some(Some((user, password))) => (Some(user.to_string()), Some(password.to_string())),
        Some(None) => (decoded, None),
        None => (None, None),
    }
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let fields = form.map(|Form(fields)| fields).unwrap_or_default();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    let (to, from, body) = (field("To"), field("From"), field("Body"));
    let (user, password) = basic_auth(&headers);

    let mut script = shared.script.lock();
    let n = script.requests.len();
    let (status, answer) = match script.statuses.pop_front() {
        Some(status) => (status, error_answer(status)),
        None if to.is_empty() => (
            400,
            twilio_error(21604, "A 'To' phone number is required.", 400),
        ),
        None if from.is_empty() => (
            400,
            twilio_error(21603, "A 'From' phone number is required.", 400),
        ),
        None if body.is_empty() => (400, twilio_error(21602, "Message body is required.", 400)),
        None => (201, None),
    };
    let sid = (200..300)
        .contains(&status)
        .then(|| format!("SM{:032x}", n + 1));
    let answer = answer.unwrap_or_else(|| {
        json!({
            "sid": sid,
            "account_sid": account_sid,
            "to": to,
            "from": from,
            "body": body,
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "error_code": null,
            "error_message": null,
        })
    });
    script.requests.push(TwilioRequest {
        account_sid,
        user,
        password,
        to,
        from,
        body,
        status,
        sid,
        received_at: Instant::now(),
    });
    let retry_after = script.retry_after;
    drop(script);
    shared.arrived.notify_waiters();

    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, Json(answer)).into_response();
    if let Some(seconds) = retry_after
        && (status == 429 || status >= 500)
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn twilio_error(code: u32, message: &str, status: u16) -> Option<Value> {
    Some(json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    }))
}

/// Twilio's error body for a scripted status; `None` for a 2xx (the normal answer).
fn error_answer(status: u16) -> Option<Value> {
    match status {
        200..=299 => None,
        400 => twilio_error(21211, "The 'To' number is not a valid phone number.", 400),
        401 => twilio_error(20003, "Authenticate", 401),
        404 => twilio_error(20404, "The requested resource was not found", 404),
        429 => twilio_error(20429, "Too Many Requests", 429),
        500..=599 => twilio_error(20500, "Internal Server Error", status),
        _ => twilio_error(u32::from(status), "Scripted error", status),
    }
}
