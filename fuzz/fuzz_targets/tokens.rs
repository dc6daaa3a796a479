//! Bearer tokens, verified as the intake verifies them with dev mode's key: any bytes as a
//! token, and any JSON object as the claims of a token signed with the real key (so that the
//! claims parser is reached, which a forged signature never would).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gaveurs_operators::auth::dev::DevKeys;
use gaveurs_operators::auth::{JwksSource, KeyStore, Verifier, VerifierSettings};
use libfuzzer_sys::fuzz_target;

struct Setup {
    runtime: tokio::runtime::Runtime,
    keys: DevKeys,
    verifier: Verifier,
    _dir: tempfile::TempDir,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let keys = DevKeys::load_or_create(dir.path()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = KeyStore::new(
            JwksSource::Static(keys.jwks().to_string()),
            Duration::from_secs(30),
        );
        runtime.block_on(store.refresh()).unwrap();
        let verifier = Verifier::new(
            VerifierSettings {
                issuer: "http://127.0.0.1:8000/realms/gaveurs-production".into(),
                audiences: vec!["backend-api".into()],
                leeway: Duration::from_secs(30),
                max_backlog_age: Duration::from_secs(7 * 86_400),
                broker_token_grace: Duration::from_secs(86_400),
                // No cache: every input goes through the whole check.
                cache_capacity: 0,
            },
            Arc::clone(&store),
        );
        Setup {
            runtime,
            keys,
            verifier,
            _dir: dir,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let setup = setup();
    let token = match serde_json::from_slice::<serde_json::Value>(input) {
        Ok(claims @ serde_json::Value::Object(_)) => setup.keys.sign(&claims),
        _ => String::from_utf8_lossy(input).into_owned(),
    };
    let _ = setup.runtime.block_on(setup.verifier.verify(&token, None));
});
