//! The issuer's signing keys, from its JWKS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use super::{AuthError, AuthErrorCode};

/// Where the keys come from.
#[derive(Clone)]
pub enum JwksSource {
    /// Keycloak: `{issuer}/protocol/openid-connect/certs`.
    Http {
        url: String,
        client: reqwest::Client,
    },
    /// A JWKS document held in memory (dev mode's own key).
    Static(String),
}

/// A signing key, with the one algorithm it may verify.
pub(super) struct SigningKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<JwkEntry>,
}

#[derive(Deserialize)]
struct JwkEntry {
    #[serde(default)]
    kid: Option<String>,
    kty: String,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Keys by `kid`. Only RSA (RS256) and P-256 (ES256) signature keys are kept: symmetric
/// (`oct`) and encryption keys in a JWKS are ignored, so no token can make the verifier use
/// one.
fn parse(document: &str) -> Result<HashMap<String, Arc<SigningKey>>, String> {
    let document: Document =
        serde_json::from_str(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for entry in document.keys {
        let Some(kid) = entry.kid else { continue };
        if entry.usage.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let key = match (entry.kty.as_str(), entry.alg.as_deref()) {
            ("RSA", None | Some("RS256")) => match (&entry.n, &entry.e) {
                (Some(n), Some(e)) => {
                    DecodingKey::from_rsa_components(n, e)
                        .ok()
                        .map(|key| SigningKey {
                            algorithm: Algorithm::RS256,
                            key,
                        })
                }
                _ => None,
            },
            ("EC", None | Some("ES256")) if entry.crv.as_deref() == Some("P-256") => {
                match (&entry.x, &entry.y) {
                    (Some(x), Some(y)) => {
                        DecodingKey::from_ec_components(x, y)
                            .ok()
                            .map(|key| SigningKey {
                                algorithm: Algorithm::ES256,
                                key,
                            })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(key) = key {
            keys.insert(kid, Arc::new(key));
        }
    }
    Ok(keys)
}

/// The JWKS, cached. An unknown `kid` triggers a refresh at most once per
/// `min_refresh_interval`; when one comes too soon after the last, a refresh is scheduled for
/// the end of the interval, so a rotated key is known no later than that.
pub struct KeyStore {
    source: JwksSource,
    keys: RwLock<HashMap<String, Arc<SigningKey>>>,
    last_refresh: Mutex<Option<Instant>>,
    deferred: Mutex<bool>,
    refreshing: tokio::sync::Mutex<()>,
    min_refresh_interval: Duration,
}

impl KeyStore {
    pub fn new(source: JwksSource, min_refresh_interval: Duration) -> Arc<KeyStore> {
        Arc::new(KeyStore {
            source,
            keys: RwLock::new(HashMap::new()),
            last_refresh: Mutex::new(None),
            deferred: Mutex::new(false),
            refreshing: tokio::sync::Mutex::new(()),
            min_refresh_interval,
        })
    }

    /// Fetches the keys now. Start-up calls it; a failure is logged, not fatal: the issuer
    /// may come up later and the next unknown `kid` retries.
    pub async fn refresh(&self) -> Result<usize, AuthError> {
        let _guard = self.refreshing.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<usize, AuthError> {
        *self.last_refresh.lock() = Some(Instant::now());
        let document = match &self.source {
            JwksSource::Static(document) => document.clone(),
            JwksSource::Http { url, client } => {
                let fetch = async {
                    client
                        .get(url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await?
                        .error_for_status()?
                        .text()
                        .await
                };
                fetch.await.map_err(|e| {
                    tracing::warn!(target: "auth", jwks = %url, error = %e, "cannot fetch the issuer's keys");
                    AuthError::new(AuthErrorCode::KeysUnavailable, format!("cannot fetch {url}: {e}"))
                })?
            }
        };
        let keys =
            parse(&document).map_err(|e| AuthError::new(AuthErrorCode::KeysUnavailable, e))?;
        let count = keys.len();
        *self.keys.write() = keys;
        tracing::info!(target: "auth", keys = count, "signing keys loaded");
        Ok(count)
    }

    pub(super) fn get(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.keys.read().get(kid).cloned()
    }

    /// The key for a `kid` the cache does not know: refreshes if allowed, else schedules a
    /// refresh for when it is.
    pub(super) async fn get_or_refresh(self: &Arc<Self>, kid: &str) -> Option<Arc<SigningKey>> {
        if let Some(key) = self.get(kid) {
            return Some(key);
        }
        let _guard = self.refreshing.lock().await;
        if let Some(key) = self.get(kid) {
            return Some(key);
        }
        let since = self.last_refresh.lock().map(|t| t.elapsed());
        match since {
            Some(elapsed) if elapsed < self.min_refresh_interval => {
                self.defer_refresh(self.min_refresh_interval - elapsed);
                None
            }
            _ => {
                let _ = self.refresh_locked().await;
                self.get(kid)
            }
        }
    }

    fn defer_refresh(self: &Arc<Self>, wait: Duration) {
        let mut deferred = self.deferred.lock();
        if *deferred {
            return;
        }
        *deferred = true;
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            *store.deferred.lock() = false;
            let _ = store.refresh().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signature_keys_of_allowed_types_are_kept() {
        let document = serde_json::json!({"keys": [
            {"kid": "rsa", "kty": "RSA", "alg": "RS256", "use": "sig", "n": "sXch", "e": "AQAB"},
            {"kid": "enc", "kty": "RSA", "alg": "RSA-OAEP", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kid": "hmac", "kty": "oct", "k": "c2VjcmV0"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"}
        ]});
        let keys = parse(&document.to_string()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["rsa"]);
    }
}
