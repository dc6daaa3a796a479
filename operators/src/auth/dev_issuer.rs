//! Dev mode's answer to Keycloak's authorization-code flow with PKCE, so the web page signs
//! in the same way against the dev issuer as against the realm: an authorization endpoint
//! that issues a one-use code for a demo user, a token endpoint that trades it (with the
//! PKCE verifier) for an access and a refresh token, refresh grants, and a logout that
//! revokes the refresh token. Codes and refresh tokens live in memory, bounded: a restart
//! signs everyone out when their access token expires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use super::dev::{DemoUser, demo_user};

/// The realm's public client for the web page (`deploy/keycloak/…realm.json`).
pub const WEB_CLIENT: &str = "gaveurs-web";
/// How long a code may wait to be traded.
const CODE_TTL: Duration = Duration::from_secs(60);
/// Codes, and refresh tokens, kept at most; past it the oldest go.
const MAX_GRANTS: usize = 10_000;

/// Why a request was refused, in OAuth's words (`error`, and a description).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

fn refused(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        error,
        description: description.into(),
    }
}

/// What the page asked the authorization endpoint for.
pub struct AuthorizationRequest<'a> {
    pub response_type: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub code_challenge: &'a str,
    pub code_challenge_method: &'a str,
    /// Where the pipeline is reached (`http://host:port`): the only place a code may go.
    pub origin: &'a str,
}

impl AuthorizationRequest<'_> {
    /// Refuses what Keycloak would refuse for this public client: another client, a
    /// response type other than `code`, PKCE other than S256, a redirect elsewhere.
    pub fn check(&self) -> Result<(), OAuthError> {
        if self.client_id != WEB_CLIENT {
            return Err(refused(
                "unauthorized_client",
                format!("client {:?} is not {WEB_CLIENT}", self.client_id),
            ));
        }
        if self.response_type != "code" {
            return Err(refused(
                "unsupported_response_type",
                "only response_type=code",
            ));
        }
        if self.code_challenge_method != "S256" || self.code_challenge.len() < 43 {
            return Err(refused(
                "invalid_request",
                "a code_challenge with code_challenge_method=S256 is required",
            ));
        }
        let own = format!("{}/", self.origin);
        if !self.redirect_uri.starts_with(&own) {
            return Err(refused(
                "invalid_request",
                format!("redirect_uri must be on {own}"),
            ));
        }
        Ok(())
    }
}

struct Grant {
    user: &'static DemoUser,
    redirect_uri: String,
    challenge: String,
    issued: Instant,
}

#[derive(Default)]
pub struct DevIssuer {
    codes: Mutex<HashMap<String, Grant>>,
    /// Refresh token → its user and when it was issued.
    refresh: Mutex<HashMap<String, (&'static DemoUser, Instant)>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system gives randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Keeps a map under `MAX_GRANTS` by dropping its oldest entries.
fn bound<V>(map: &mut HashMap<String, V>, issued: impl Fn(&V) -> Instant) {
    if map.len() < MAX_GRANTS {
        return;
    }
    let mut ages: Vec<(Instant, String)> =
        map.iter().map(|(k, v)| (issued(v), k.clone())).collect();
    ages.sort();
    for (_, key) in ages.iter().take(map.len() - MAX_GRANTS / 2) {
        map.remove(key);
    }
}

impl DevIssuer {
    pub fn new() -> DevIssuer {
        DevIssuer::default()
    }

    /// A one-use code for `email` (a demo user), after [`AuthorizationRequest::check`].
    pub fn authorize(
        &self,
        request: &AuthorizationRequest<'_>,
        email: &str,
    ) -> Result<String, OAuthError> {
        request.check()?;
        let user = demo_user(email)
            .filter(|u| !u.realm_roles.is_empty())
            .ok_or_else(|| refused("access_denied", format!("{email} is not a demo user")))?;
        let code = random_token();
        let mut codes = self.codes.lock();
        codes.retain(|_, g| g.issued.elapsed() < CODE_TTL);
        bound(&mut codes, |g| g.issued);
        codes.insert(
            code.clone(),
            Grant {
                user,
                redirect_uri: request.redirect_uri.to_string(),
                challenge: request.code_challenge.to_string(),
                issued: Instant::now(),
            },
        );
        Ok(code)
    }

    /// Trades a code for its user and a refresh token: once, within a minute, from the same
    /// redirect, with the verifier whose SHA-256 is the challenge.
    pub fn exchange(
        &self,
        code: &str,
        verifier: &str,
        client_id: &str,
        redirect_uri: &str,
    ) -> Result<(&'static DemoUser, String), OAuthError> {
        if client_id != WEB_CLIENT {
            return Err(refused("unauthorized_client", "not the web page's client"));
        }
        let grant = self
            .codes
            .lock()
            .remove(code)
            .filter(|g| g.issued.elapsed() < CODE_TTL)
            .ok_or_else(|| refused("invalid_grant", "the code is unknown, used or expired"))?;
        if grant.redirect_uri != redirect_uri {
            return Err(refused(
                "invalid_grant",
                "redirect_uri differs from the authorization's",
            ));
        }
        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        if computed != grant.challenge {
            return Err(refused(
                "invalid_grant",
                "the PKCE verifier does not match the challenge",
            ));
        }
        Ok((grant.user, self.new_refresh(grant.user)))
    }

    /// A new refresh token for the user of `token`, which is spent (as Keycloak rotates them).
    pub fn refresh(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<(&'static DemoUser, String), OAuthError> {
        let (user, issued) = self
            .refresh
            .lock()
            .remove(token)
            .ok_or_else(|| refused("invalid_grant", "the refresh token is unknown or spent"))?;
        if issued.elapsed() >= ttl {
            return Err(refused("invalid_grant", "the session expired"));
        }
        Ok((user, self.new_refresh(user)))
    }

    /// Sign-out: the refresh token no longer renews anything.
    pub fn revoke(&self, token: &str) {
        self.refresh.lock().remove(token);
    }

    fn new_refresh(&self, user: &'static DemoUser) -> String {
        let token = random_token();
        let mut refresh = self.refresh.lock();
        bound(&mut refresh, |(_, issued)| *issued);
        refresh.insert(token.clone(), (user, Instant::now()));
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(challenge: &'a str, redirect: &'a str) -> AuthorizationRequest<'a> {
        AuthorizationRequest {
            response_type: "code",
            client_id: WEB_CLIENT,
            redirect_uri: redirect,
            code_challenge: challenge,
            code_challenge_method: "S256",
            origin: "http://127.0.0.1:8000",
        }
    }

    #[test]
    fn a_code_is_traded_once_with_the_right_verifier_only() {
        let issuer = DevIssuer::new();
        let verifier = "a-verifier-of-at-least-forty-three-characters-long";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        let redirect = "http://127.0.0.1:8000/";
        let code = issuer
            .authorize(&request(&challenge, redirect), "jean.martin@gaveur.fr")
            .unwrap();
        let wrong = issuer.exchange(&code, "another", WEB_CLIENT, redirect);
        assert_eq!(wrong.unwrap_err().error, "invalid_grant");
        // The failed attempt spent the code, as a stolen code must not be tried twice.
        let again = issuer.exchange(&code, verifier, WEB_CLIENT, redirect);
        assert_eq!(again.unwrap_err().error, "invalid_grant");

        let code = issuer
            .authorize(&request(&challenge, redirect), "jean.martin@gaveur.fr")
            .unwrap();
        let (user, refresh) = issuer
            .exchange(&code, verifier, WEB_CLIENT, redirect)
            .unwrap();
        assert_eq!(user.gaveur_id, Some(1));
        let (_, renewed) = issuer.refresh(&refresh, Duration::from_secs(60)).unwrap();
        assert!(
            issuer.refresh(&refresh, Duration::from_secs(60)).is_err(),
            "spent"
        );
        issuer.revoke(&renewed);
        assert!(
            issuer.refresh(&renewed, Duration::from_secs(60)).is_err(),
            "revoked"
        );
    }

    #[test]
    fn a_redirect_elsewhere_or_a_plain_challenge_is_refused() {
        let issuer = DevIssuer::new();
        let challenge = "x".repeat(43);
        let elsewhere = issuer.authorize(
            &request(&challenge, "http://evil.example/"),
            "jean.martin@gaveur.fr",
        );
        assert_eq!(elsewhere.unwrap_err().error, "invalid_request");
        let mut plain = request(&challenge, "http://127.0.0.1:8000/");
        plain.code_challenge_method = "plain";
        assert_eq!(
            issuer
                .authorize(&plain, "jean.martin@gaveur.fr")
                .unwrap_err()
                .error,
            "invalid_request"
        );
        let sensor = issuer.authorize(
            &request(&challenge, "http://127.0.0.1:8000/"),
            "gateway-ll@sensors",
        );
        assert_eq!(sensor.unwrap_err().error, "access_denied");
    }
}
