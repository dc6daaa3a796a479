//! Authentication of HTTP API requests: a bearer token, verified, then a permission check.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gaveurs_operators::auth::audit::{self, AccessContext};
use gaveurs_operators::auth::permissions::{self, Action, Resource, Scope};
use gaveurs_operators::auth::{AuthError, AuthErrorCode};
use gaveurs_schemas::Principal;

use super::{AppState, bearer_from_headers};

/// The request's id: the caller's `X-Request-ID` when it is short and plain, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn from_headers(headers: &HeaderMap) -> RequestId {
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 128
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            })
            .map(|v| RequestId(v.to_string()))
            .unwrap_or_else(|| RequestId(uuid::Uuid::new_v4().to_string()))
    }
}

/// A refused permission check; answers 403.
#[derive(Debug)]
pub struct Forbidden(AuthError);

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        refusal(&self.0)
    }
}

impl Access {
    /// A lot that is not there is a 404 only for someone who may read some gavage data;
    /// anyone else is refused as for any lot, so no one learns which lots exist.
    pub fn unknown_lot(&self, error: String) -> Result<Response, Forbidden> {
        self.require(
            Resource::GavageData,
            Action::Read,
            Scope {
                gaveur_id: self.principal.gaveur_id,
                site: None,
            },
        )?;
        Ok((
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": error })),
        )
            .into_response())
    }
}

/// A verified caller of the API.
pub struct Access {
    pub principal: Arc<Principal>,
    pub request_id: String,
    pub path: String,
    pub source: String,
}

/// 401 with `WWW-Authenticate: Bearer`, or 403; the body says why.
pub fn refusal(error: &AuthError) -> Response {
    let status = if error.code == AuthErrorCode::Forbidden {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    let body =
        axum::Json(serde_json::json!({"error": error.code.as_str(), "message": error.message}));
    let mut response = (status, body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        let challenge = match error.code {
            AuthErrorCode::MissingToken => "Bearer realm=\"gaveurs\"".to_string(),
            code => format!(
                "Bearer realm=\"gaveurs\", error=\"invalid_token\", error_description=\"{}\"",
                code.as_str()
            ),
        };
        if let Ok(value) = challenge.parse() {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

impl FromRequestParts<Arc<AppState>> for Access {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let request_id = parts
            .extensions
            .get::<super::RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        let path = parts.uri.path().to_string();
        let context = AccessContext {
            resource: &path,
            source: &source,
            request_id: &request_id,
            user: None,
        };
        let verified = match bearer_from_headers(&parts.headers) {
            None => Err(AuthError::missing()),
            Some(token) => state.verifier.verify(&token, None).await,
        };
        match verified {
            Ok(verified) => {
                audit::authenticated(AccessContext {
                    user: Some(verified.principal.display_name()),
                    ..context
                });
                Ok(Access {
                    principal: verified.principal,
                    request_id,
                    path,
                    source,
                })
            }
            Err(e) => {
                audit::unauthorized(&e, context);
                Err(refusal(&e))
            }
        }
    }
}

impl Access {
    /// 403 (and an audit line) unless the caller may do `action` on `resource` in `scope`.
    pub fn require(
        &self,
        resource: Resource,
        action: Action,
        scope: Scope,
    ) -> Result<(), Forbidden> {
        if permissions::allowed(&self.principal, resource, action, scope) {
            return Ok(());
        }
        Err(self.refuse(&format!("{action:?} {resource:?}")))
    }

    /// The 403 (and its audit line) for a caller who may not `what`.
    pub fn refuse(&self, what: &str) -> Forbidden {
        let error =
            AuthError::forbidden(format!("{} may not {what}", self.principal.display_name()));
        audit::unauthorized(&error, self.context());
        Forbidden(error)
    }

    /// 403 unless the caller may read the gavage data of the lot's gaveur and site (its
    /// gaveur, a superviseur, an admin): the lot endpoints' one rule.
    pub fn require_lot_reader(
        &self,
        gaveur_id: Option<i64>,
        site: Option<&str>,
    ) -> Result<(), Forbidden> {
        self.require(
            Resource::GavageData,
            Action::Read,
            Scope { gaveur_id, site },
        )
    }

    pub fn context(&self) -> AccessContext<'_> {
        AccessContext {
            resource: &self.path,
            source: &self.source,
            request_id: &self.request_id,
            user: Some(self.principal.display_name()),
        }
    }
}
