//! Authentication end to end (SPEC §6): a test-local issuer serving a Keycloak-shaped JWKS,
//! the pipeline in keycloak mode or dev mode, and real MQTT, WebSocket and HTTP clients.
//! Every refusal is checked where a user or operator would see it: the MQTT reason code or
//! the WebSocket close code, the dead-letter row, and the audit log.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use gaveurs_loadgen::producer::{MqttVersion, ProducerError, ServerPacket, connect};
use gaveurs_operators::auth::dev::DevKeys;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{
    Gaveurs, next_close, next_json, publish_each, read_rows, records, send_json, ws_connect,
    ws_connect_anonymous,
};

const NOT_AUTHORIZED: u8 = 0x87;

/// A stand-in for Keycloak's realm endpoint: serves the JWKS it is given, counts fetches.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Issuer {
    async fn start(published: &[&DevKeys]) -> Issuer {
        let keys: Arc<Mutex<Vec<Value>>> =
            Arc::new(Mutex::new(published.iter().map(|k| jwk(k)).collect()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, counted) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/realms/gaveurs-production/protocol/openid-connect/certs",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let document = json!({ "keys": served.lock().clone() });
                async move { axum::Json(document) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Issuer {
            url: format!("http://{addr}/realms/gaveurs-production"),
            keys,
            fetches,
        }
    }

    /// Adds a key to the JWKS, as Keycloak does when a realm key is rotated.
    fn publish(&self, key: &DevKeys) {
        self.keys.lock().push(jwk(key));
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn pipeline_config(&self) -> String {
        format!(
            "[auth]\nmode = \"keycloak\"\nissuer = \"{}\"\naudience = [\"backend-api\"]\nleeway_s = 30\n",
            self.url
        )
    }
}

fn jwk(key: &DevKeys) -> Value {
    serde_json::from_str::<Value>(key.jwks()).unwrap()["keys"][0].clone()
}

fn signing_key(dir: &Path, name: &str) -> DevKeys {
    DevKeys::load_or_create(&dir.join(name)).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Keycloak-shaped claims of a user of the `gaveurs-frontend` client.
fn user(issuer: &str, username: &str, realm_roles: &[&str]) -> Value {
    json!({
        "iss": issuer, "sub": format!("sub-{username}"), "aud": "backend-api",
        "azp": "gaveurs-frontend", "iat": now(), "nbf": now(), "exp": now() + 3600,
        "jti": support::rand_id().to_string(),
        "preferred_username": username, "realm_access": {"roles": realm_roles},
        "organization": "euralis",
    })
}

fn jean(issuer: &str) -> Value {
    let mut claims = user(issuer, "jean.martin", &["gaveur"]);
    claims["gaveur_id"] = json!(1);
    claims["site_id"] = json!("LL");
    claims
}

fn gateway(issuer: &str, site: &str) -> Value {
    let mut claims = user(issuer, "service-account-sensors", &[]);
    claims["azp"] = json!("sensors");
    claims["resource_access"] = json!({"sensors": {"roles": ["gateway"]}});
    claims["site_id"] = json!(site);
    claims
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token whose header and signature are whatever the attacker chose.
fn forged(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// HS256 "signed" with the issuer's public RSA key as the HMAC secret: the classic
/// algorithm-confusion attack on verifiers that pick the algorithm from the token.
fn hmac_with_public_key(key: &DevKeys, claims: &Value) -> String {
    let entry = jwk(key);
    let secret = format!(
        "{}.{}",
        entry["n"].as_str().unwrap(),
        entry["e"].as_str().unwrap()
    );
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key.kid().to_string());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token whose payload was swapped for another after signing.
fn tampered(key: &DevKeys, claims: &Value, changes: Value) -> String {
    let token = key.sign(claims);
    let parts: Vec<&str> = token.split('.').collect();
    let altered = with(claims.clone(), changes);
    format!(
        "{}.{}.{}",
        parts[0],
        b64(altered.to_string().as_bytes()),
        parts[2]
    )
}

struct Case {
    name: &'static str,
    topic: String,
    payload: Value,
    token: Option<String>,
    /// `None` when the record must be accepted; else the DLQ `reason_code` and the detailed
    /// code that starts the reason (and appears in the audit line).
    refused: Option<(&'static str, &'static str)>,
}

fn meal_case(
    name: &'static str,
    lot: &str,
    gaveur: i64,
    site: &str,
    token: Option<String>,
    refused: Option<(&'static str, &'static str)>,
) -> Case {
    Case {
        name,
        topic: format!("gaveurs/{site}/{gaveur}/gavage"),
        payload: records::meal(lot, gaveur, site, 3, "matin"),
        token,
        refused,
    }
}

fn sqal_case(
    name: &'static str,
    device: &str,
    site: &str,
    sample: &str,
    token: Option<String>,
    refused: Option<(&'static str, &'static str)>,
) -> Case {
    Case {
        name,
        topic: format!("sqal/{site}/{device}/measurements"),
        payload: records::sqal(device, sample, 0.8),
        token,
        refused,
    }
}

/// Publishes over MQTT 5, each message with its own token (or none); the PUBACK reasons.
async fn publish_cases(mqtt: SocketAddr, cases: &[Case]) -> Vec<u8> {
    let (mut writer, mut reader) = connect(mqtt, MqttVersion::V5, "auth-cases", None)
        .await
        .unwrap();
    let mut reasons = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let pkid = n as u16 + 1;
        writer
            .publish(
                &case.topic,
                bytes::Bytes::from(case.payload.to_string()),
                1,
                pkid,
                case.token.as_deref(),
            )
            .unwrap();
        writer.flush().await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("acknowledged within 10 s")
            .unwrap()
        {
            ServerPacket::Ack { pkid: p, reason } if p == pkid => reasons.push(reason),
            other => panic!("{}: unexpected {other:?}", case.name),
        }
    }
    writer.disconnect().await.unwrap();
    reasons
}

fn audit_lines(gaveurs_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(gaveurs_dir.join("logs/audit.log"))
        .expect("logs/audit.log exists")
        .lines()
        .map(str::to_string)
        .collect()
}

fn field_is(line: &str, name: &str, value: &str) -> bool {
    line.contains(&format!("{name}=\"{value}\"")) || line.contains(&format!("{name}={value} "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_tokens_are_verified_and_every_refusal_is_a_dlq_row_and_an_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key(dir.path(), "realm-key");
    let stranger = signing_key(dir.path(), "other-realm-key");
    let issuer = Issuer::start(&[&key]).await;
    let gaveurs = Gaveurs::start(dir.path(), &issuer.pipeline_config());
    let iss = issuer.url.as_str();
    let sign = |claims: Value| Some(key.sign(&claims));

    let technician = user(iss, "tech.sqal", &["technicien_sqal"]);
    let admin = user(iss, "admin", &["admin"]);
    let invalid = |code| Some(("invalid_token", code));
    let cases = vec![
        meal_case("valid", "LL26A0001", 1, "LL", sign(jean(iss)), None),
        meal_case(
            "gaveur_id as a one-element array of strings",
            "LL26A0002",
            1,
            "LL",
            sign(with(jean(iss), json!({"gaveur_id": ["1"]}))),
            None,
        ),
        meal_case(
            "gaveur_id as a string",
            "LL26A0003",
            1,
            "LL",
            sign(with(jean(iss), json!({"gaveur_id": "1"}))),
            None,
        ),
        meal_case(
            "expired within the leeway",
            "LL26A0004",
            1,
            "LL",
            sign(with(jean(iss), json!({"exp": now() - 10}))),
            None,
        ),
        meal_case(
            "audience by azp only",
            "LL26A0005",
            1,
            "LL",
            sign(with(jean(iss), json!({"aud": null, "azp": "backend-api"}))),
            None,
        ),
        meal_case(
            "admin writes for anyone",
            "LS26A0006",
            2,
            "LS",
            sign(admin.clone()),
            None,
        ),
        meal_case(
            "gateway writes for a gaveur of its site",
            "LL26A0007",
            7,
            "LL",
            sign(gateway(iss, "LL")),
            None,
        ),
        sqal_case(
            "technician writes SQAL",
            "ESP32_LL_01",
            "LL",
            "A-1",
            sign(technician.clone()),
            None,
        ),
        sqal_case(
            "gateway writes SQAL of its site",
            "ESP32_LL_02",
            "LL",
            "A-2",
            sign(gateway(iss, "LL")),
            None,
        ),
        // Refused.
        meal_case(
            "no token",
            "LL26R0001",
            1,
            "LL",
            None,
            Some(("missing_token", "missing_token")),
        ),
        meal_case(
            "expired",
            "LL26R0002",
            1,
            "LL",
            sign(with(jean(iss), json!({"exp": now() - 3600}))),
            Some(("expired_token", "expired")),
        ),
        meal_case(
            "not valid before an hour from now",
            "LL26R0003",
            1,
            "LL",
            sign(with(jean(iss), json!({"nbf": now() + 3600}))),
            invalid("not_yet_valid"),
        ),
        meal_case(
            "issued in the future",
            "LL26R0004",
            1,
            "LL",
            sign(with(jean(iss), json!({"iat": now() + 3600}))),
            invalid("issued_in_future"),
        ),
        meal_case(
            "another realm",
            "LL26R0005",
            1,
            "LL",
            sign(with(
                jean(iss),
                json!({"iss": "http://keycloak.example/realms/other"}),
            )),
            invalid("wrong_issuer"),
        ),
        meal_case(
            "another audience",
            "LL26R0006",
            1,
            "LL",
            sign(with(jean(iss), json!({"aud": "account", "azp": "account"}))),
            invalid("wrong_audience"),
        ),
        meal_case(
            "alg none",
            "LL26R0007",
            1,
            "LL",
            Some(forged(
                json!({"alg": "none", "typ": "JWT"}),
                &jean(iss),
                b"",
            )),
            invalid("algorithm_not_allowed"),
        ),
        meal_case(
            "HS256 keyed with the public key",
            "LL26R0008",
            1,
            "LL",
            Some(hmac_with_public_key(&key, &jean(iss))),
            invalid("algorithm_not_allowed"),
        ),
        meal_case(
            "signed by a key the issuer never published",
            "LL26R0009",
            1,
            "LL",
            Some(stranger.sign(&jean(iss))),
            invalid("unknown_key"),
        ),
        meal_case(
            "payload altered after signing",
            "LL26R0010",
            1,
            "LL",
            Some(tampered(
                &key,
                &jean(iss),
                json!({"realm_access": {"roles": ["admin"]}}),
            )),
            invalid("bad_signature"),
        ),
        meal_case(
            "not a JWT",
            "LL26R0011",
            1,
            "LL",
            Some("not-a-jwt".into()),
            invalid("malformed_token"),
        ),
        meal_case(
            "a gaveur writes for another gaveur",
            "LS26R0012",
            2,
            "LS",
            sign(jean(iss)),
            Some(("forbidden", "forbidden")),
        ),
        meal_case(
            "a gateway writes for another site",
            "LS26R0013",
            2,
            "LS",
            sign(gateway(iss, "LL")),
            Some(("forbidden", "forbidden")),
        ),
        meal_case(
            "a SQAL technician writes gavage data",
            "LL26R0014",
            1,
            "LL",
            sign(technician),
            Some(("forbidden", "forbidden")),
        ),
        sqal_case(
            "a gaveur writes SQAL data",
            "ESP32_LL_03",
            "LL",
            "R-1",
            sign(jean(iss)),
            Some(("forbidden", "forbidden")),
        ),
        sqal_case(
            "a gateway writes SQAL of another site",
            "ESP32_LS_01",
            "LS",
            "R-2",
            sign(gateway(iss, "LL")),
            Some(("forbidden", "forbidden")),
        ),
    ];
    let reasons = publish_cases(gaveurs.mqtt(), &cases).await;
    for (case, reason) in cases.iter().zip(&reasons) {
        let expected = if case.refused.is_some() {
            NOT_AUTHORIZED
        } else {
            0
        };
        assert_eq!(*reason, expected, "PUBACK reason for {:?}", case.name);
    }

    let root = gaveurs.parquet_root();
    let dir_path = gaveurs.dir.clone();
    gaveurs.stop_cleanly();

    // Accepted records are stored; refused ones are not.
    let mut stored: Vec<String> = read_rows(&root, "gavage_meals")
        .iter()
        .map(|r| r["code_lot"].as_str().unwrap().to_string())
        .chain(
            read_rows(&root, "sqal_samples")
                .iter()
                .map(|r| r["sample_id"].as_str().unwrap().to_string()),
        )
        .collect();
    stored.sort();
    let mut expected: Vec<String> = cases
        .iter()
        .filter(|c| c.refused.is_none())
        .map(|c| {
            c.payload
                .get("code_lot")
                .or(c.payload.get("sample_id"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    expected.sort();
    assert_eq!(stored, expected);

    // One dead-letter row per refusal, with its reason.
    let dlq = read_rows(&root, "dlq");
    let mut dead: BTreeMap<(String, String), usize> = BTreeMap::new();
    for row in &dlq {
        assert_eq!(row["stage"], "auth");
        let reason = row["reason"].as_str().unwrap();
        let detail = reason.split(':').next().unwrap().to_string();
        *dead
            .entry((row["reason_code"].as_str().unwrap().to_string(), detail))
            .or_default() += 1;
    }
    let mut wanted: BTreeMap<(String, String), usize> = BTreeMap::new();
    for case in &cases {
        if let Some((code, detail)) = case.refused {
            *wanted
                .entry((code.to_string(), detail.to_string()))
                .or_default() += 1;
        }
    }
    assert_eq!(dead, wanted);

    // One UNAUTHORIZED_ACCESS audit line per refusal, naming the reason and the topic.
    let audit = audit_lines(&dir_path);
    let refusals: Vec<&String> = audit
        .iter()
        .filter(|l| l.contains("UNAUTHORIZED_ACCESS"))
        .collect();
    assert_eq!(refusals.len(), wanted.values().sum::<usize>(), "{audit:#?}");
    for case in cases.iter().filter(|c| c.refused.is_some()) {
        let (_, detail) = case.refused.unwrap();
        assert!(
            refusals
                .iter()
                .any(|l| field_is(l, "reason", detail) && l.contains(&case.topic)),
            "no audit line for {:?} ({detail} on {})",
            case.name,
            case.topic
        );
    }
    let forbidden = refusals
        .iter()
        .find(|l| field_is(l, "reason", "forbidden"))
        .unwrap();
    assert!(
        forbidden.contains("jean.martin"),
        "the user is named: {forbidden}"
    );
    assert!(
        audit.iter().any(|l| l.contains("TOKEN_VALIDATION")),
        "token validations are audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_within_ten_seconds_without_hammering_the_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let old = signing_key(dir.path(), "old-key");
    let new = signing_key(dir.path(), "new-key");
    let issuer = Issuer::start(&[&old]).await;
    let gaveurs = Gaveurs::start(dir.path(), &issuer.pipeline_config());
    let iss = issuer.url.clone();
    assert_eq!(issuer.fetches(), 1, "keys are fetched once at start");

    // Keycloak rotates: the new key appears in the JWKS and tokens are signed with it.
    issuer.publish(&new);
    let rotated_at = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let case = meal_case(
            "signed with the new key",
            &format!("LL26K{attempts:04}"),
            1,
            "LL",
            Some(new.sign(&jean(&iss))),
            None,
        );
        if publish_cases(gaveurs.mqtt(), &[case]).await == [0] {
            break;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(15),
            "a token signed with the rotated key was still refused after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Old tokens keep working, and however many unknown `kid`s arrived, the JWKS was fetched
    // at most once per 10 s.
    let old_token = meal_case(
        "old key",
        "LL26K9999",
        1,
        "LL",
        Some(old.sign(&jean(&iss))),
        None,
    );
    assert_eq!(publish_cases(gaveurs.mqtt(), &[old_token]).await, [0]);
    let allowed = 1 + 1 + (rotated_at.elapsed().as_secs() / 10) as usize;
    assert!(
        issuer.fetches() <= allowed,
        "{} JWKS fetches for {attempts} attempts in {:?}",
        issuer.fetches(),
        rotated_at.elapsed()
    );
    gaveurs.stop_cleanly();
}

fn meal_message(lot: &str, gaveur: i64, site: &str) -> (String, Vec<u8>, u8) {
    (
        format!("gaveurs/{site}/{gaveur}/gavage"),
        records::meal(lot, gaveur, site, 2, "soir")
            .to_string()
            .into_bytes(),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_opened_only_for_who_may_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let http = gaveurs.http;
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let superviseur = gaveurs.token("superviseur@euralis.fr");
    let technician = gaveurs.token("tech@sqal.fr");

    // Forbidden: 4403. Invalid: 4401.
    let mut other = ws_connect(http, "/ws/gaveur/2", &jean).await;
    assert_eq!(next_close(&mut other).await.0, 4403);
    let mut dashboard = ws_connect(http, "/ws/realtime/", &jean).await;
    assert_eq!(next_close(&mut dashboard).await.0, 4403);
    let mut garbage = ws_connect(http, "/ws/gaveur/1", "not-a-jwt").await;
    assert_eq!(next_close(&mut garbage).await.0, 4401);

    // No token: asked for one at once, closed with 4401 when none comes.
    let mut silent = ws_connect_anonymous(http, "/ws/gaveur/1").await;
    assert_eq!(next_json(&mut silent).await["type"], "auth_required");
    let asked = Instant::now();
    assert_eq!(next_close(&mut silent).await.0, 4401);
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "the client had 3 s to answer"
    );

    // The token may come as the first message instead.
    let mut by_message = ws_connect_anonymous(http, "/ws/gaveur/1").await;
    assert_eq!(next_json(&mut by_message).await["type"], "auth_required");
    send_json(&mut by_message, &json!({"type": "auth", "token": jean})).await;
    assert_eq!(next_json(&mut by_message).await["type"], "auth_ok");

    let mut watching_sophie = ws_connect(http, "/ws/gaveur/2", &superviseur).await;
    let mut quality = ws_connect(http, "/ws/realtime/", &technician).await;

    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            meal_message("LL26W0001", 1, "LL"),
            meal_message("LS26W0002", 2, "LS"),
            (
                "sqal/LL/ESP32_LL_01/measurements".into(),
                records::sqal("ESP32_LL_01", "W-1", 0.7)
                    .to_string()
                    .into_bytes(),
                1,
            ),
        ],
    )
    .await;
    assert_eq!(
        next_json(&mut by_message).await["data"]["code_lot"],
        "LL26W0001"
    );
    assert_eq!(
        next_json(&mut watching_sophie).await["data"]["code_lot"],
        "LS26W0002"
    );
    // A SQAL technician's dashboard gets SQAL only: the gavage records were never sent.
    assert_eq!(
        next_json(&mut quality).await["type"],
        "connection_established"
    );
    let first = next_json(&mut quality).await;
    assert_eq!(first["type"], "sensor_update", "{first}");

    gaveurs.stop_cleanly();
    let audit = audit_lines(dir.path());
    assert!(audit.iter().any(|l| l.contains("AUTH_REQUIRED")));
    assert!(audit.iter().any(|l| l.contains("AUTHENTICATED_REQUEST")));
    assert!(
        audit
            .iter()
            .any(|l| l.contains("UNAUTHORIZED_ACCESS") && l.contains("/ws/gaveur/2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_lives_as_long_as_its_token_unless_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let short = gaveurs.token_with_ttl("jean.martin@gaveur.fr", 2);
    let long = gaveurs.token("jean.martin@gaveur.fr");

    let mut renewed = ws_connect(gaveurs.http, "/ws/gaveur/1", &short).await;
    let mut left = ws_connect(gaveurs.http, "/ws/gaveur/1", &short).await;
    send_json(&mut renewed, &json!({"type": "auth", "token": long})).await;
    assert_eq!(next_json(&mut renewed).await["type"], "auth_ok");
    // An invalid renewal is answered, and does not cost the channel its current token.
    send_json(&mut renewed, &json!({"type": "auth", "token": "nope"})).await;
    assert_eq!(next_json(&mut renewed).await["type"], "error");

    assert_eq!(next_close(&mut left).await.0, 4401);
    // The renewed channel outlived the short token and still receives.
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[meal_message("LL26E0001", 1, "LL")],
    )
    .await;
    assert_eq!(
        next_json(&mut renewed).await["data"]["code_lot"],
        "LL26E0001"
    );
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_password_must_be_a_valid_token_and_then_speaks_for_its_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mqtt = gaveurs.mqtt();

    for (version, code) in [(MqttVersion::V5, 0x86), (MqttVersion::V311, 0x04)] {
        match connect(mqtt, version, "bad-password", Some("not-a-jwt")).await {
            Err(ProducerError::Refused(refused)) => assert_eq!(refused, code),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a CONNECT with a bad password was accepted"),
        }
    }

    // MQTT 3.1.1 has no user properties: the CONNECT password is the token. A refused
    // PUBLISH still gets its plain PUBACK and the connection stays open for the next one.
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let codes = publish_each(
        mqtt,
        MqttVersion::V311,
        &jean,
        &[
            meal_message("LL26C0001", 1, "LL"),
            meal_message("LS26C0002", 2, "LS"),
            meal_message("LL26C0003", 1, "LL"),
        ],
    )
    .await;
    assert_eq!(codes, [0, 0, 0]);

    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let mut lots: Vec<String> = read_rows(&root, "gavage_meals")
        .iter()
        .map(|r| r["code_lot"].as_str().unwrap().to_string())
        .collect();
    lots.sort();
    assert_eq!(lots, ["LL26C0001", "LL26C0003"]);
    let dlq = read_rows(&root, "dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["reason_code"], "forbidden");
    assert_eq!(dlq[0]["principal_sub"], "dev-jean.martin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_carry_security_headers_and_refusals_say_bearer() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", gaveurs.http);
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let technician = gaveurs.token("tech@sqal.fr");

    let anonymous = get("/api/v1/devices", None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    let expired = get("/api/v1/devices", Some("not-a-jwt")).await.unwrap();
    assert_eq!(expired.status(), 401);
    assert!(
        expired.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(
        get("/api/v1/devices", Some(&jean)).await.unwrap().status(),
        403
    );
    assert_eq!(
        get("/api/v1/devices", Some(&technician))
            .await
            .unwrap()
            .status(),
        200
    );

    let jwks = get(
        "/realms/gaveurs-production/protocol/openid-connect/certs",
        None,
    )
    .await
    .unwrap();
    assert_eq!(jwks.status(), 200);
    let document: Value = jwks.json().await.unwrap();
    assert_eq!(document["keys"][0]["alg"], "RS256");

    let mut ids = Vec::new();
    for (path, token) in [
        ("/health/live", None),
        ("/api/v1/devices", None),
        ("/api/v1/devices", Some(jean.as_str())),
        ("/no/such/page", None),
    ] {
        let response = get(path, token).await.unwrap();
        let headers = response.headers();
        for name in [
            "strict-transport-security",
            "x-frame-options",
            "x-content-type-options",
            "content-security-policy",
            "referrer-policy",
            "permissions-policy",
            "x-request-id",
        ] {
            assert!(headers.contains_key(name), "{path}: no {name}");
        }
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        ids.push(headers["x-request-id"].to_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each response has its own request id");
    // A caller's own request id is kept.
    let traced = client
        .get(url("/health/live"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.headers()["x-request-id"], "trace-me-42");
    gaveurs.stop_cleanly();
}
