//! Wiring of the auth operator: the verifier for the configured mode, and dev-mode tokens.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gaveurs_operators::auth::dev::{self, DevKeys};
use gaveurs_operators::auth::{JwksSource, KeyStore, Verifier, VerifierSettings};

use crate::config::{AuthMode, Config};

/// How often an unknown `kid` may trigger a JWKS refresh (SPEC §6).
const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

pub fn issuer(config: &Config) -> String {
    config
        .auth
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{}/realms/{}", config.http.listen, dev::REALM))
}

pub fn dev_keys(config: &Config) -> anyhow::Result<DevKeys> {
    DevKeys::load_or_create(&config.storage.data_dir.join("auth")).context("dev-mode signing key")
}

/// The verifier, and in dev mode the keys whose JWKS the HTTP server publishes.
pub async fn verifier(config: &Config) -> anyhow::Result<(Arc<Verifier>, Option<Arc<DevKeys>>)> {
    let issuer = issuer(config);
    let (source, keys) = match config.auth.mode {
        AuthMode::Dev => {
            let keys = Arc::new(dev_keys(config)?);
            (JwksSource::Static(keys.jwks().to_string()), Some(keys))
        }
        AuthMode::Keycloak => {
            let url = config.auth.jwks_url.clone().unwrap_or_else(|| {
                format!(
                    "{}/protocol/openid-connect/certs",
                    issuer.trim_end_matches('/')
                )
            });
            (
                JwksSource::Http {
                    url,
                    client: reqwest::Client::new(),
                },
                None,
            )
        }
    };
    let store = KeyStore::new(source, JWKS_REFRESH_INTERVAL);
    if let Err(e) = store.refresh().await {
        tracing::warn!(target: "auth", "starting without signing keys ({e}); the next token will retry");
    }
    let verifier = Verifier::new(
        VerifierSettings {
            issuer,
            audiences: config.auth.audience.clone(),
            leeway: Duration::from_secs(config.auth.leeway_s),
            max_backlog_age: Duration::from_secs(config.auth.max_backlog_age_s),
            broker_token_grace: Duration::from_secs(config.auth.broker_token_grace_s),
            cache_capacity: config.auth.token_cache,
        },
        store,
    );
    Ok((Arc::new(verifier), keys))
}

/// A dev-mode token for a demo user, as `gaveurs token --user` prints it.
pub fn mint_dev_token(
    config: &Config,
    email: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<String> {
    if config.auth.mode != AuthMode::Dev {
        anyhow::bail!("tokens are minted in dev mode only; with Keycloak, log in to the realm");
    }
    let user = dev::demo_user(email).ok_or_else(|| {
        let known: Vec<&str> = dev::DEMO_USERS.iter().map(|u| u.email).collect();
        anyhow::anyhow!("unknown demo user {email:?}; known: {}", known.join(", "))
    })?;
    let keys = dev_keys(config)?;
    let audience = config
        .auth
        .audience
        .first()
        .map(String::as_str)
        .unwrap_or("backend-api");
    Ok(keys.mint(
        user,
        &issuer(config),
        audience,
        ttl.unwrap_or(Duration::from_secs(config.auth.dev_token_ttl_s)),
    ))
}

/// True when the data dir already holds a dev signing key (the simulator's hint that it runs
/// beside a dev-mode pipeline).
pub fn has_dev_key(data_dir: &Path) -> bool {
    data_dir.join("auth").join(dev::KEY_FILE).exists()
}
