//! The web pages (SPEC §3): `/` (a gaveur's lots, live) and `/sites`, one page shell whose
//! script signs in and then reads the same APIs and channels as any client, with the user's
//! token. The assets are embedded in the binary; the vendored pieces (uPlot for charts,
//! qrcode-generator for certificates' QR codes) keep their MIT licences beside them.
//!
//! In dev mode the page offers the demo users and `POST /auth/dev/token` mints their tokens,
//! but only when the HTTP listener is on loopback or `[auth] dev_signin = true` says so:
//! anyone who reaches it becomes whoever they choose.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gaveurs_operators::auth::dev::{DEMO_USERS, DevKeys, REALM, demo_user};
use gaveurs_operators::auth::dev_issuer::DevIssuer;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;

mod issuer;

/// How long the web page's sign-in lasts (its refresh token), as a Keycloak SSO session.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What the page's own content policy allows: its scripts and styles, its socket, uPlot's
/// inline canvas sizing and the QR code as a data image.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/app.js"),
    },
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/app.css"),
    },
    Asset {
        path: "vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/vendor/uPlot.min.css"),
    },
    Asset {
        path: "vendor/qrcode.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/vendor/qrcode.js"),
    },
];

const SHELL: &[u8] = include_bytes!("assets/index.html");

/// Dev-mode sign-in: how the page's tokens are minted.
#[derive(Clone)]
pub struct DevSignin {
    pub keys: Arc<DevKeys>,
    pub issuer: String,
    pub audience: String,
    /// `[auth] dev_token_ttl_s`.
    pub ttl: Duration,
    /// Codes and refresh tokens of the authorization-code flow.
    pub issuer_flow: Arc<DevIssuer>,
}

impl DevSignin {
    /// Access tokens of the code flow live as Keycloak's do by default (5 min), or less.
    fn web_ttl(&self) -> Duration {
        self.ttl.min(Duration::from_secs(300))
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(shell))
        .route("/sites", get(shell))
        .route("/assets/{*path}", get(asset))
        .route("/auth/dev/users", get(dev_users))
        .route("/auth/dev/token", post(dev_token))
        .route("/auth/config", get(issuer::config))
        .route(
            &format!("/realms/{REALM}/protocol/openid-connect/auth"),
            get(issuer::authorize),
        )
        .route(
            &format!("/realms/{REALM}/protocol/openid-connect/token"),
            post(issuer::token),
        )
        .route(
            &format!("/realms/{REALM}/protocol/openid-connect/logout"),
            post(issuer::logout),
        )
}

/// The page shell: no data, for anyone; the script inside signs in. In keycloak mode the
/// page may also reach the realm's token endpoint.
async fn shell(State(state): State<Arc<AppState>>) -> Response {
    let policy = match state.web_issuer.as_deref().and_then(origin_of) {
        Some(realm) => {
            PAGE_POLICY.replace("connect-src 'self'", &format!("connect-src 'self' {realm}"))
        }
        None => PAGE_POLICY.to_string(),
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        SHELL,
    )
        .into_response()
}

/// `https://sso.example:8443/realms/x` → `https://sso.example:8443`.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    (!host.is_empty() && !host.contains(['\'', ';', ' '])).then(|| format!("{scheme}://{host}"))
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            asset.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

fn signin_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "the demo-user sign-in is served in dev mode on a loopback listener only ([auth] dev_signin)"})),
    )
        .into_response()
}

/// The demo users the dev sign-in offers (people, not the sensor gateway).
async fn dev_users(State(state): State<Arc<AppState>>) -> Response {
    if state.dev_signin.is_none() {
        return signin_off();
    }
    let users: Vec<_> = DEMO_USERS
        .iter()
        .filter(|u| !u.realm_roles.is_empty())
        .map(|u| {
            json!({
                "email": u.email,
                "username": u.username,
                "roles": u.realm_roles,
                "gaveur_id": u.gaveur_id,
                "site": u.site_id,
            })
        })
        .collect();
    axum::Json(json!({"mode": "dev", "users": users})).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    email: String,
}

async fn dev_token(
    State(state): State<Arc<AppState>>,
    axum::Json(request): axum::Json<TokenRequest>,
) -> Response {
    let Some(signin) = &state.dev_signin else {
        return signin_off();
    };
    let Some(user) = demo_user(&request.email).filter(|u| !u.realm_roles.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": format!("{} is not a demo user", request.email)})),
        )
            .into_response();
    };
    let token = signin
        .keys
        .mint(user, &signin.issuer, &signin.audience, signin.ttl);
    tracing::info!(target: "auth", user = user.email, "dev sign-in: demo token issued to the web page");
    axum::Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": signin.ttl.as_secs(),
    }))
    .into_response()
}
