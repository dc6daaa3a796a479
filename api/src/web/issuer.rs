//! The dev issuer's Keycloak-shaped sign-in endpoints for the web page (authorization code
//! with PKCE, refresh, logout), under `/realms/<realm>/protocol/openid-connect/`, and
//! `GET /auth/config`, which tells the page where to sign in. Served in dev mode when the
//! demo-user sign-in is (a loopback listener, or `[auth] dev_signin`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use gaveurs_operators::auth::dev::{DEMO_USERS, DemoUser, REALM};
use gaveurs_operators::auth::dev_issuer::{AuthorizationRequest, OAuthError, WEB_CLIENT};
use serde_json::json;

use crate::AppState;

/// The page's sign-in: the dev issuer here, or the realm in keycloak mode.
pub async fn config(State(state): State<Arc<AppState>>) -> Response {
    let answer = match (&state.dev_signin, &state.web_issuer) {
        (Some(signin), _) => json!({
            "mode": "dev",
            "issuer": format!("/realms/{REALM}"),
            "client_id": WEB_CLIENT,
            "picker": true,
            "issuer_url": signin.issuer,
        }),
        (None, Some(issuer)) => json!({
            "mode": "keycloak",
            "issuer": issuer,
            "client_id": WEB_CLIENT,
            "picker": false,
        }),
        (None, None) => json!({"mode": "none", "client_id": WEB_CLIENT, "picker": false}),
    };
    axum::Json(answer).into_response()
}

fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    format!("http://{host}")
}

fn oauth_error(status: StatusCode, error: &OAuthError) -> Response {
    (
        status,
        axum::Json(json!({"error": error.error, "error_description": error.description})),
    )
        .into_response()
}

/// `GET …/auth`: without `user`, the login page (the demo users, as Keycloak's form would
/// ask for a password); with it, a redirect to the page with a one-use code.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(signin) = &state.dev_signin else {
        return super::signin_off();
    };
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let origin = origin(&headers);
    let request = AuthorizationRequest {
        response_type: field("response_type"),
        client_id: field("client_id"),
        redirect_uri: field("redirect_uri"),
        code_challenge: field("code_challenge"),
        code_challenge_method: field("code_challenge_method"),
        origin: &origin,
    };
    if let Err(e) = request.check() {
        return oauth_error(StatusCode::BAD_REQUEST, &e);
    }
    let Some(email) = query.get("user") else {
        return login_page(&query);
    };
    match signin.issuer_flow.authorize(&request, email) {
        Ok(code) => {
            // The request's check made sure the redirect is on this origin.
            let Ok(mut to) = url::Url::parse(field("redirect_uri")) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    &OAuthError {
                        error: "invalid_request",
                        description: "redirect_uri is not a URL".into(),
                    },
                );
            };
            {
                let mut pairs = to.query_pairs_mut();
                pairs.append_pair("code", &code);
                if let Some(state) = query.get("state") {
                    pairs.append_pair("state", state);
                }
            }
            tracing::info!(target: "auth", user = %email, client = WEB_CLIENT, "dev issuer: authorization code issued");
            Redirect::to(to.as_str()).into_response()
        }
        Err(e) => oauth_error(StatusCode::BAD_REQUEST, &e),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn login_page(query: &HashMap<String, String>) -> Response {
    let mut kept: Vec<(&String, &String)> = query.iter().filter(|(k, _)| *k != "user").collect();
    kept.sort();
    // Each person's link: the same authorization request, with `user` added.
    let link = |email: &str| {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        pairs.extend_pairs(kept.iter().copied());
        pairs.append_pair("user", email);
        pairs.finish()
    };
    let users: String = DEMO_USERS
        .iter()
        .filter(|u| !u.realm_roles.is_empty())
        .map(|u| {
            format!(
                "<li><a data-user=\"{email}\" href=\"?{query}\">{name} — {roles}</a></li>",
                email = escape(u.email),
                query = escape(&link(u.email)),
                name = escape(u.username),
                roles = escape(&u.realm_roles.join(", ")),
            )
        })
        .collect();
    let page = format!(
        "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Connexion — {REALM}</title></head><body><main><h1>Connexion au royaume {REALM}</h1><p>Émetteur de développement de gaveurs : choisissez un utilisateur de démonstration (en production, Keycloak demande ici un mot de passe).</p><ul>{users}</ul></main></body></html>"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        page,
    )
        .into_response()
}

/// `POST …/token`: `authorization_code` (with the PKCE verifier) or `refresh_token`.
pub async fn token(
    State(state): State<Arc<AppState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(signin) = &state.dev_signin else {
        return super::signin_off();
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let granted = match field("grant_type") {
        "authorization_code" => signin.issuer_flow.exchange(
            field("code"),
            field("code_verifier"),
            field("client_id"),
            field("redirect_uri"),
        ),
        "refresh_token" => signin
            .issuer_flow
            .refresh(field("refresh_token"), super::SESSION_TTL),
        other => Err(OAuthError {
            error: "unsupported_grant_type",
            description: format!("grant_type {other:?}"),
        }),
    };
    let (user, refresh) = match granted {
        Ok(granted) => granted,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, &e),
    };
    let web_user = DemoUser {
        client: WEB_CLIENT,
        ..user.clone()
    };
    let ttl = signin.web_ttl();
    let access = signin
        .keys
        .mint(&web_user, &signin.issuer, &signin.audience, ttl);
    axum::Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "refresh_token": refresh,
        "refresh_expires_in": super::SESSION_TTL.as_secs(),
    }))
    .into_response()
}

/// `POST …/logout`: the refresh token is revoked.
pub async fn logout(
    State(state): State<Arc<AppState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let (Some(signin), Some(token)) = (&state.dev_signin, form.get("refresh_token")) {
        signin.issuer_flow.revoke(token);
    }
    StatusCode::NO_CONTENT.into_response()
}
