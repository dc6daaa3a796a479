//! What a token costs a record: the first sight of a token (RS256 verification against the
//! JWKS) against every later record with the same token (a cache lookup).

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gaveurs_operators::auth::dev::{self, DevKeys};
use gaveurs_operators::auth::{JwksSource, KeyStore, Verifier, VerifierSettings};

const ISSUER: &str = "http://127.0.0.1:8000/realms/gaveurs-production";

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let keys = DevKeys::load_or_create(dir.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = KeyStore::new(
        JwksSource::Static(keys.jwks().to_string()),
        Duration::from_secs(10),
    );
    runtime.block_on(store.refresh()).unwrap();
    let verifier = Verifier::new(
        VerifierSettings {
            issuer: ISSUER.into(),
            audiences: vec!["backend-api".into()],
            leeway: Duration::from_secs(30),
            max_backlog_age: Duration::from_secs(7 * 24 * 3600),
            broker_token_grace: Duration::from_secs(24 * 3600),
            cache_capacity: 10_000_000,
        },
        store,
    );
    let jean = dev::demo_user("jean.martin@gaveur.fr").unwrap();
    let mint = || keys.mint(jean, ISSUER, "backend-api", Duration::from_secs(3600));

    let mut group = c.benchmark_group("token");
    // Tokens minted one second apart are identical; a counter in `jti` makes each one new.
    let mut n = 0u64;
    let mut fresh = || {
        n += 1;
        let claims: serde_json::Value = {
            let token = mint();
            let payload = token.split('.').nth(1).unwrap().to_string();
            use base64::Engine;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap();
            let mut claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            claims["jti"] = serde_json::json!(n);
            claims
        };
        keys.sign(&claims)
    };
    group.bench_function("first sight (RS256 verify)", |b| {
        b.iter_batched(
            &mut fresh,
            |token| runtime.block_on(verifier.verify(&token, None)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let token = mint();
    runtime.block_on(verifier.verify(&token, None)).unwrap();
    group.bench_function("cached", |b| {
        b.iter(|| runtime.block_on(verifier.verify(&token, None)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
