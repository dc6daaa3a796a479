//! Token verification and the verified-token cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use gaveurs_schemas::Principal;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use xxhash_rust::xxh3::Xxh3Builder;

use super::claims::Claims;
use super::jwks::KeyStore;
use super::{AuthError, AuthErrorCode, bearer};

/// The longest clock leeway accepted (SPEC §6).
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// `iss` every token must carry, e.g. `http://keycloak:8080/realms/gaveurs-production`.
    pub issuer: String,
    /// A token is for us when its `aud` or its `azp` is one of these.
    pub audiences: Vec<String>,
    /// Clock leeway for `exp`, `nbf` and `iat`; at most 60 s.
    pub leeway: Duration,
    /// A record that waited in a broker is judged at its broker timestamp, but never at a
    /// time older than this before now.
    pub max_backlog_age: Duration,
    /// How long after its token expired a record that waited in a broker may still be
    /// accepted (see [`Verifier::verify_waited`]).
    pub broker_token_grace: Duration,
    /// Verified tokens kept in the cache.
    pub cache_capacity: usize,
}

/// A verified token: who, and until when.
#[derive(Debug, Clone)]
pub struct Verified {
    pub principal: Arc<Principal>,
    pub expires_at: DateTime<Utc>,
}

struct Cached {
    verified: Verified,
    not_before: Option<i64>,
}

pub struct Verifier {
    settings: VerifierSettings,
    keys: Arc<KeyStore>,
    cache: Mutex<HashMap<String, Cached, Xxh3Builder>>,
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

impl Verifier {
    pub fn new(mut settings: VerifierSettings, keys: Arc<KeyStore>) -> Verifier {
        settings.leeway = settings.leeway.min(MAX_LEEWAY);
        Verifier {
            settings,
            keys,
            cache: Mutex::new(HashMap::with_hasher(Xxh3Builder::new())),
        }
    }

    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    /// Verifies `token` (with or without a `Bearer ` prefix) as of now, or as of `at` for a
    /// record that waited in a broker.
    pub async fn verify(
        &self,
        token: &str,
        at: Option<DateTime<Utc>>,
    ) -> Result<Verified, AuthError> {
        let token = bearer(token);
        if token.is_empty() {
            return Err(AuthError::missing());
        }
        let reference = self.reference_time(at);
        if let Some(result) = self.lookup(token, reference) {
            return result;
        }
        let result = self.verify_cold(token, reference).await;
        match &result {
            Ok(verified) => tracing::info!(
                target: "audit",
                user = verified.principal.display_name(),
                sub = %verified.principal.sub,
                result = "valid",
                "TOKEN_VALIDATION"
            ),
            Err(e) => tracing::info!(
                target: "audit",
                result = "invalid",
                reason = e.code.as_str(),
                detail = %e.message,
                "TOKEN_VALIDATION"
            ),
        }
        result
    }

    /// A record that waited in an external MQTT broker, which keeps no publish time, and
    /// whose token has expired since: it is accepted when the token was valid at the
    /// record's `event_time` and expired no longer than `broker_token_grace` ago. Otherwise
    /// the refusal says why.
    pub async fn verify_waited(
        &self,
        token: &str,
        event_time: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let verified = self.verify(token, Some(event_time)).await?;
        let expired_for = Utc::now() - verified.expires_at;
        let grace = self.settings.broker_token_grace;
        if expired_for.to_std().is_ok_and(|waited| waited > grace) {
            return Err(AuthError::new(
                AuthErrorCode::Expired,
                format!(
                    "token expired at {}, more than the {} s a record may wait in the broker",
                    verified.expires_at.to_rfc3339(),
                    grace.as_secs()
                ),
            ));
        }
        Ok(verified)
    }

    /// The cached verdict for a token seen before, if any: a map lookup and two comparisons.
    pub fn lookup(
        &self,
        token: &str,
        reference: DateTime<Utc>,
    ) -> Option<Result<Verified, AuthError>> {
        let cache = self.cache.lock();
        let cached = cache.get(token)?;
        Some(self.check_window(&cached.verified, cached.not_before, reference))
    }

    /// The time a token is judged at: now, or an earlier broker timestamp, but never earlier
    /// than the maximum backlog age.
    pub fn reference_time(&self, at: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let now = Utc::now();
        match at {
            None => now,
            Some(at) => {
                let oldest = now - self.settings.max_backlog_age;
                at.clamp(oldest, now)
            }
        }
    }

    fn check_window(
        &self,
        verified: &Verified,
        not_before: Option<i64>,
        reference: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let leeway = self.settings.leeway.as_secs() as i64;
        let at = reference.timestamp();
        if verified.expires_at.timestamp() + leeway < at {
            return Err(AuthError::new(
                AuthErrorCode::Expired,
                format!("token expired at {}", verified.expires_at.to_rfc3339()),
            ));
        }
        if let Some(nbf) = not_before
            && nbf - leeway > at
        {
            return Err(AuthError::new(
                AuthErrorCode::NotYetValid,
                format!("token not valid before {nbf}"),
            ));
        }
        Ok(verified.clone())
    }

    async fn verify_cold(
        &self,
        token: &str,
        reference: DateTime<Utc>,
    ) -> Result<Verified, AuthError> {
        let header = read_header(token)?;
        let algorithm = match header.alg.as_deref() {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            other => {
                return Err(AuthError::new(
                    AuthErrorCode::AlgorithmNotAllowed,
                    format!(
                        "algorithm {} is not accepted (RS256 or ES256 only)",
                        other.unwrap_or("(none)")
                    ),
                ));
            }
        };
        let kid = header
            .kid
            .ok_or_else(|| AuthError::new(AuthErrorCode::UnknownKey, "token names no key (kid)"))?;
        let key = self.keys.get_or_refresh(&kid).await.ok_or_else(|| {
            AuthError::new(
                AuthErrorCode::UnknownKey,
                format!("no signing key {kid:?} at the issuer"),
            )
        })?;
        if key.algorithm != algorithm {
            // An RS256 key used for ES256 or the reverse: algorithm confusion.
            return Err(AuthError::new(
                AuthErrorCode::AlgorithmNotAllowed,
                format!(
                    "key {kid:?} is for {:?}, the token says {algorithm:?}",
                    key.algorithm
                ),
            ));
        }
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    AuthError::new(AuthErrorCode::BadSignature, "signature does not verify")
                }
                _ => AuthError::new(
                    AuthErrorCode::Malformed,
                    format!("token cannot be read: {e}"),
                ),
            })?
            .claims;
        let leeway = self.settings.leeway.as_secs() as f64;
        if let Some(iat) = claims.iat
            && iat - leeway > Utc::now().timestamp() as f64
        {
            return Err(AuthError::new(
                AuthErrorCode::IssuedInFuture,
                format!("token issued in the future ({iat})"),
            ));
        }
        if claims.iss.as_deref() != Some(self.settings.issuer.as_str()) {
            return Err(AuthError::new(
                AuthErrorCode::WrongIssuer,
                format!(
                    "issuer {:?} is not {:?}",
                    claims.iss.as_deref().unwrap_or(""),
                    self.settings.issuer
                ),
            ));
        }
        let for_us = claims
            .audiences()
            .into_iter()
            .chain(claims.azp.as_deref())
            .any(|a| self.settings.audiences.iter().any(|ours| ours == a));
        if !for_us {
            return Err(AuthError::new(
                AuthErrorCode::WrongAudience,
                format!("token is not for {:?} (aud/azp)", self.settings.audiences),
            ));
        }
        let expires_at = claims
            .exp
            .and_then(|exp| DateTime::from_timestamp(exp as i64, 0))
            .ok_or_else(|| AuthError::new(AuthErrorCode::Malformed, "token has no exp"))?;
        let not_before = claims.nbf.map(|n| n as i64);
        let principal = claims
            .principal()
            .map_err(|e| AuthError::new(AuthErrorCode::Malformed, e))?;
        let verified = Verified {
            principal: Arc::new(principal),
            expires_at,
        };
        let checked = self.check_window(&verified, not_before, reference);
        if checked.is_ok() {
            self.remember(token, verified, not_before);
        }
        checked
    }

    fn remember(&self, token: &str, verified: Verified, not_before: Option<i64>) {
        let mut cache = self.cache.lock();
        if cache.len() >= self.settings.cache_capacity {
            let horizon = Utc::now() - self.settings.max_backlog_age;
            cache.retain(|_, c| c.verified.expires_at > horizon);
            if cache.len() >= self.settings.cache_capacity {
                cache.clear();
            }
        }
        cache.insert(
            token.to_string(),
            Cached {
                verified,
                not_before,
            },
        );
    }
}

fn read_header(token: &str) -> Result<Header, AuthError> {
    let malformed = |why: &str| AuthError::new(AuthErrorCode::Malformed, why.to_string());
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWT has three dot-separated parts"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| malformed("header is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::JwksSource;
    use crate::auth::dev::{DevKeys, demo_user};

    const ISSUER: &str = "http://issuer.test/realms/gaveurs-production";

    async fn verifier(keys: &DevKeys, max_backlog_age: Duration) -> Verifier {
        let store = KeyStore::new(
            JwksSource::Static(keys.jwks().to_string()),
            Duration::from_secs(10),
        );
        store.refresh().await.unwrap();
        Verifier::new(
            VerifierSettings {
                issuer: ISSUER.into(),
                audiences: vec!["backend-api".into()],
                leeway: Duration::from_secs(600),
                max_backlog_age,
                broker_token_grace: Duration::from_secs(24 * 3600),
                cache_capacity: 2,
            },
            store,
        )
    }

    fn token_valid_between(keys: &DevKeys, from: i64, until: i64) -> String {
        let mut claims: serde_json::Value = serde_json::json!({
            "iss": ISSUER, "sub": "s", "aud": "backend-api", "iat": from, "nbf": from, "exp": until,
            "realm_access": {"roles": ["gaveur"]}, "gaveur_id": 1,
        });
        claims["preferred_username"] =
            serde_json::json!(demo_user("jean.martin@gaveur.fr").unwrap().username);
        keys.sign(&claims)
    }

    #[tokio::test]
    async fn a_backlogged_record_is_judged_at_its_broker_time_within_the_backlog_age() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DevKeys::load_or_create(dir.path()).unwrap();
        let verifier = verifier(&keys, Duration::from_secs(7 * 24 * 3600)).await;
        assert_eq!(
            verifier.settings().leeway,
            MAX_LEEWAY,
            "leeway is capped at 60 s"
        );
        let now = Utc::now();
        // Valid two days ago for an hour, long expired now.
        let from = (now - chrono::Duration::days(2)).timestamp();
        let token = token_valid_between(&keys, from, from + 3600);
        let at = |t: i64| DateTime::from_timestamp(t, 0);
        assert_eq!(
            verifier.verify(&token, None).await.unwrap_err().code,
            AuthErrorCode::Expired
        );
        verifier.verify(&token, at(from + 600)).await.unwrap();
        // The cached verdict is judged at each record's own time too.
        verifier.verify(&token, at(from + 1200)).await.unwrap();
        assert_eq!(
            verifier
                .verify(&token, at(from + 7200))
                .await
                .unwrap_err()
                .code,
            AuthErrorCode::Expired
        );

        // Beyond the backlog age, the broker time no longer helps.
        let strict = self::verifier(&keys, Duration::from_secs(24 * 3600)).await;
        assert_eq!(
            strict
                .verify(&token, at(from + 600))
                .await
                .unwrap_err()
                .code,
            AuthErrorCode::Expired
        );
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_capacity_and_keeps_answering() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DevKeys::load_or_create(dir.path()).unwrap();
        let verifier = verifier(&keys, Duration::from_secs(3600)).await;
        let now = Utc::now().timestamp();
        for n in 0..5 {
            let token = token_valid_between(&keys, now - n, now + 3600);
            verifier.verify(&token, None).await.unwrap();
            assert!(verifier.cache.lock().len() <= 2);
            assert!(
                verifier.lookup(&token, Utc::now()).is_some(),
                "a verified token is cached"
            );
        }
    }
}
