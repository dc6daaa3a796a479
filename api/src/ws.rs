//! WebSocket routes. Every socket authenticates first (SPEC §6): a token in the
//! `Authorization` header or `?token=`, or else the server sends `{"type":"auth_required"}`
//! and waits 3 s for `{"type":"auth","token":…}`. A missing, invalid or expired token closes
//! the socket with 4401, a token that may not see the channel with 4403. A client may send a
//! fresh `auth` message at any time; a channel whose token expires unrenewed is closed 4401.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::FutureExt;
use gaveurs_connectors::sources::websocket::{IngestPath, serve_ingest};
use gaveurs_operators::auth::audit::{self, AccessContext};
use gaveurs_operators::auth::permissions::{self, Action, Resource, Scope};
use gaveurs_operators::auth::verifier::Verified;
use gaveurs_operators::auth::{AuthError, Verifier};
use gaveurs_schemas::Principal;
use gaveurs_sinks::websocket::{
    CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, ClientReply, OnText, RealtimeScope, serve_gaveur_channel,
    serve_realtime,
};
use serde::Deserialize;

use super::{AppState, RequestId, bearer_from_headers};

/// Largest message the ingest sockets take; larger records are refused by the record limit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Largest message a channel or dashboard socket takes: they only ever send small control
/// messages, so a client streaming megabytes at one is cut off early.
const MAX_CHANNEL_MESSAGE_BYTES: usize = 64 * 1024;

fn channel_upgrade(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .max_message_size(MAX_CHANNEL_MESSAGE_BYTES)
        .max_frame_size(MAX_CHANNEL_MESSAGE_BYTES)
}

/// A slot for one more WebSocket (`[websocket] max_connections`), held while it is open.
fn socket_slot(state: &AppState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    state.socket_slots.clone().try_acquire_owned().ok()
}

fn too_many_sockets() -> Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "too many WebSockets are open ([websocket] max_connections); try again later",
    )
        .into_response()
}

/// How long a client without a token has to send its `auth` message.
const AUTH_WINDOW: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
pub(super) struct SocketQuery {
    token: Option<String>,
    since: Option<u64>,
}

/// Who is knocking, for authentication and the audit log.
#[derive(Clone)]
struct Caller {
    verifier: Arc<Verifier>,
    path: String,
    source: String,
    request_id: String,
    presented: Option<String>,
}

impl Caller {
    fn new(
        state: &AppState,
        path: String,
        peer: SocketAddr,
        request_id: RequestId,
        headers: &HeaderMap,
        query: &SocketQuery,
    ) -> Caller {
        Caller {
            verifier: state.verifier.clone(),
            path,
            source: peer.to_string(),
            request_id: request_id.0,
            presented: bearer_from_headers(headers).or_else(|| query.token.clone()),
        }
    }

    fn context<'a>(&'a self, user: Option<&'a str>) -> AccessContext<'a> {
        AccessContext {
            resource: &self.path,
            source: &self.source,
            request_id: &self.request_id,
            user,
        }
    }

    /// Runs the authentication handshake; on failure the socket is closed with 4401.
    async fn authenticate(&self, socket: &mut WebSocket) -> Option<(Verified, String)> {
        let mut by_message = false;
        let token = match self.presented.clone() {
            Some(token) => token,
            None => {
                by_message = true;
                audit::auth_required(self.context(None));
                let ask = serde_json::json!({"type": "auth_required", "message": "send {\"type\":\"auth\",\"token\":\"<jwt>\"} within 3 s"});
                let _ = socket.send(Message::Text(ask.to_string().into())).await;
                match tokio::time::timeout(AUTH_WINDOW, first_auth_message(socket)).await {
                    Ok(Some(token)) => token,
                    _ => {
                        audit::unauthorized(&AuthError::missing(), self.context(None));
                        close(socket, CLOSE_UNAUTHORIZED, "authentication required").await;
                        return None;
                    }
                }
            }
        };
        match self.verifier.verify(&token, None).await {
            Ok(verified) => {
                audit::authenticated(self.context(Some(verified.principal.display_name())));
                if by_message {
                    let ok =
                        serde_json::json!({"type": "auth_ok", "expires_at": verified.expires_at});
                    let _ = socket.send(Message::Text(ok.to_string().into())).await;
                }
                Some((verified, token))
            }
            Err(e) => {
                audit::unauthorized(&e, self.context(None));
                close(socket, CLOSE_UNAUTHORIZED, &e.to_string()).await;
                None
            }
        }
    }

    /// 4403 (and an audit line) unless `allowed`.
    async fn authorize(
        &self,
        socket: &mut WebSocket,
        principal: &Principal,
        allowed: bool,
    ) -> bool {
        if allowed {
            return true;
        }
        let e = AuthError::forbidden(format!(
            "{} may not open {}",
            principal.display_name(),
            self.path
        ));
        audit::unauthorized(&e, self.context(Some(principal.display_name())));
        close(socket, CLOSE_FORBIDDEN, &e.message).await;
        false
    }
}

async fn first_auth_message(socket: &mut WebSocket) -> Option<String> {
    #[derive(Deserialize)]
    struct Auth {
        #[serde(rename = "type")]
        kind: String,
        token: Option<String>,
    }
    loop {
        match socket.recv().await? {
            Ok(Message::Text(text)) => {
                let auth: Auth = serde_json::from_str(&text).ok()?;
                return (auth.kind == "auth").then_some(auth.token).flatten();
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    // A close reason is limited to 123 bytes.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].to_string().into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Handles `{"type":"auth","token":…}` renewals on an open channel: a valid token that may
/// still see the channel extends it; an invalid one is answered with an error (the current
/// token keeps the channel until it expires); one that may not see it closes it with 4403.
///
/// On a gaveur channel (`alerts` given), `{"type":"ack_alert","alert_id":…}` acknowledges an
/// alert as the channel's current principal; the answer is `ack_alert_ok` or an `error`, and
/// the transition itself arrives as an `alerte` message like any other.
fn renewals(
    caller: Caller,
    principal: Arc<Principal>,
    alerts: Option<Arc<gaveurs_operators::alerts::desk::AlertDesk>>,
    may_see: impl Fn(&Principal) -> bool + Send + Sync + 'static,
) -> OnText {
    let may_see = Arc::new(may_see);
    let principal = Arc::new(parking_lot::Mutex::new(principal));
    Box::new(move |text: String| {
        let caller = caller.clone();
        let may_see = may_see.clone();
        let principal = principal.clone();
        let alerts = alerts.clone();
        async move {
            #[derive(Deserialize)]
            struct Message {
                #[serde(rename = "type")]
                kind: String,
                #[serde(default)]
                token: Option<String>,
                #[serde(default)]
                alert_id: Option<String>,
            }
            let message = match serde_json::from_str::<Message>(&text) {
                Ok(m) => m,
                Err(e) => {
                    return ClientReply::text(
                        serde_json::json!({"type": "error", "message": format!("not a channel message: {e}")}).to_string(),
                    );
                }
            };
            match message.kind.as_str() {
                "ping" => ClientReply::text(serde_json::json!({"type": "pong", "timestamp": chrono::Utc::now()}).to_string()),
                "auth" => match caller.verifier.verify(message.token.as_deref().unwrap_or(""), None).await {
                    Ok(verified) if may_see(&verified.principal) => {
                        audit::authenticated(caller.context(Some(verified.principal.display_name())));
                        *principal.lock() = verified.principal.clone();
                        ClientReply {
                            reply: Some(serde_json::json!({"type": "auth_ok", "expires_at": verified.expires_at}).to_string().into()),
                            expires_at: Some(verified.expires_at),
                            close: None,
                        }
                    }
                    Ok(verified) => {
                        let e = AuthError::forbidden(format!("{} may not see {}", verified.principal.display_name(), caller.path));
                        audit::unauthorized(&e, caller.context(Some(verified.principal.display_name())));
                        ClientReply { close: Some((CLOSE_FORBIDDEN, e.message)), ..ClientReply::default() }
                    }
                    Err(e) => {
                        audit::unauthorized(&e, caller.context(None));
                        ClientReply::text(serde_json::json!({"type": "error", "message": e.to_string()}).to_string())
                    }
                },
                "ack_alert" if alerts.is_some() => {
                    let (Some(desk), Some(alert_id)) = (alerts, message.alert_id) else {
                        return ClientReply::text(serde_json::json!({"type": "error", "message": "ack_alert needs an alert_id"}).to_string());
                    };
                    let who = principal.lock().clone();
                    let id = alert_id.clone();
                    let result = tokio::task::spawn_blocking(move || desk.acknowledge(&id, &who)).await;
                    match result {
                        Ok(Ok(_)) => {
                            audit::data_mutation(&format!("acknowledge alert {alert_id}"), caller.context(Some(principal.lock().display_name())));
                            ClientReply::text(serde_json::json!({"type": "ack_alert_ok", "alert_id": alert_id}).to_string())
                        }
                        Ok(Err(e)) => {
                            if let gaveurs_operators::alerts::desk::AckFailure::Forbidden(..) = e {
                                audit::unauthorized(&AuthError::forbidden(e.to_string()), caller.context(Some(principal.lock().display_name())));
                            }
                            ClientReply::text(serde_json::json!({"type": "error", "alert_id": alert_id, "message": e.to_string()}).to_string())
                        }
                        Err(e) => ClientReply::text(serde_json::json!({"type": "error", "alert_id": alert_id, "message": e.to_string()}).to_string()),
                    }
                }
                other => ClientReply::text(
                    serde_json::json!({"type": "error", "message": format!("unknown message type {other:?}")}).to_string(),
                ),
            }
        }
        .boxed()
    })
}

pub(super) async fn gavage_ingest(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    Query(query): Query<SocketQuery>,
) -> Response {
    let caller = Caller::new(
        &state,
        IngestPath::Gavage.as_str().into(),
        peer,
        request_id,
        &headers,
        &query,
    );
    ingest(upgrade, state, peer, IngestPath::Gavage, caller)
}

pub(super) async fn sensors_ingest(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    Query(query): Query<SocketQuery>,
) -> Response {
    let caller = Caller::new(
        &state,
        IngestPath::Sensors.as_str().into(),
        peer,
        request_id,
        &headers,
        &query,
    );
    ingest(upgrade, state, peer, IngestPath::Sensors, caller)
}

/// Producers authenticate once per socket; each record is then authorized on its own (a
/// gaveur may write only its own lots), with the socket's token.
fn ingest(
    upgrade: WebSocketUpgrade,
    state: Arc<AppState>,
    peer: SocketAddr,
    path: IngestPath,
    caller: Caller,
) -> Response {
    let Some(slot) = socket_slot(&state) else {
        return too_many_sockets();
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |mut socket| {
            let tracker = state.ingest_sockets.clone();
            let task = async move {
                let _slot = slot;
                let Some((verified, token)) = caller.authenticate(&mut socket).await else {
                    return;
                };
                // Each record is authorized again for its own gaveur and site; who may write
                // none at all has no business on the socket.
                let resource = match path {
                    IngestPath::Gavage => Resource::GavageData,
                    IngestPath::Sensors => Resource::SqalData,
                };
                let writer =
                    permissions::allowed_somewhere(&verified.principal, resource, Action::Write);
                if !caller
                    .authorize(&mut socket, &verified.principal, writer)
                    .await
                {
                    return;
                }
                serve_ingest(
                    socket,
                    state.intake.clone(),
                    path,
                    peer,
                    Some(token),
                    state.shutdown.clone(),
                )
                .await;
            };
            tracker.track_future(task)
        })
}

pub(super) async fn gaveur_channel(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    Path(gaveur_id): Path<i64>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    Query(query): Query<SocketQuery>,
) -> Response {
    let caller = Caller::new(
        &state,
        format!("/ws/gaveur/{gaveur_id}"),
        peer,
        request_id,
        &headers,
        &query,
    );
    let since = query.since;
    let Some(slot) = socket_slot(&state) else {
        return too_many_sockets();
    };
    channel_upgrade(upgrade).on_upgrade(move |mut socket| async move {
        let _slot = slot;
        let Some((verified, _)) = caller.authenticate(&mut socket).await else {
            return;
        };
        let may_see = move |p: &Principal| {
            let scope = Scope {
                gaveur_id: Some(gaveur_id),
                site: None,
            };
            permissions::allowed(p, Resource::GavageData, Action::Read, scope)
        };
        if !caller
            .authorize(
                &mut socket,
                &verified.principal,
                may_see(&verified.principal),
            )
            .await
        {
            return;
        }
        let subscription = state.hub.subscribe_gaveur(gaveur_id, since);
        serve_gaveur_channel(
            socket,
            subscription,
            state.ping_every,
            renewals(
                caller,
                verified.principal.clone(),
                Some(state.alerts.clone()),
                may_see,
            ),
            Some(verified.expires_at),
        )
        .await;
    })
}

/// What a dashboard token may see: superviseurs and admins everything (gavage and SQAL), a
/// SQAL technician SQAL only; a token that names a site sees that site only.
fn realtime_scope(principal: &Principal) -> Option<RealtimeScope> {
    let everything = principal.has_role("admin") || principal.has_role("superviseur");
    let sqal = permissions::allowed(
        principal,
        Resource::SqalData,
        Action::Read,
        Scope::default(),
    );
    if !everything && !sqal {
        return None;
    }
    Some(RealtimeScope {
        site: principal.site_id.clone(),
        sqal_only: !everything,
    })
}

pub(super) async fn realtime(
    upgrade: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    Query(query): Query<SocketQuery>,
) -> Response {
    let caller = Caller::new(
        &state,
        "/ws/realtime/".into(),
        peer,
        request_id,
        &headers,
        &query,
    );
    let Some(slot) = socket_slot(&state) else {
        return too_many_sockets();
    };
    channel_upgrade(upgrade).on_upgrade(move |mut socket| async move {
        let _slot = slot;
        let Some((verified, _)) = caller.authenticate(&mut socket).await else {
            return;
        };
        let scope = realtime_scope(&verified.principal);
        if !caller
            .authorize(&mut socket, &verified.principal, scope.is_some())
            .await
        {
            return;
        }
        let granted = scope.clone().expect("authorized");
        // A renewal must keep at least the access the socket was opened with.
        let may_see = move |p: &Principal| realtime_scope(p).is_some_and(|s| s.covers(&granted));
        serve_realtime(
            socket,
            state.hub.clone(),
            state.ping_every,
            scope.expect("authorized"),
            renewals(caller, verified.principal.clone(), None, may_see),
            Some(verified.expires_at),
        )
        .await;
    })
}
