//! Alerts end to end (SPEC §5): records published to the real binary open, update, clear and
//! acknowledge alerts seen on the gaveur's channel, over HTTP and in the `alerts` dataset read
//! back with the arrow-rs reader; critical openings are texted through a local server that
//! speaks Twilio's Messages API (the only fake: Twilio is a paid API).

mod support;

use std::path::Path;
use std::time::Duration;

use gaveurs_loadgen::producer::MqttVersion;
use serde_json::{Value, json};
use support::records::meal;
use support::twilio::FakeTwilio;
use support::*;

const SID: &str = "AC00000000000000000000000000000001";
const PHONE: &str = "+33612345678";
const FROM: &str = "+33700000000";

/// Fast rolls and retries, a phone for gaveur 1 and one for gaveur 2. The `anomalie` rule is
/// off: these records are crafted for the fixed rules, and many of them are anomalies too
/// (`tests/anomalies.rs` covers that rule).
fn config(dir: &Path, twilio: &str, extra: &str) -> String {
    std::fs::write(
        dir.join("phones.csv"),
        format!("gaveur_id,phone\n1,{PHONE}\n2,+33611111111\n"),
    )
    .unwrap();
    format!(
        "[storage]\nroll_interval_s = 1\n[analytics]\nbatch_interval_ms = 50\n\
         [alerts.rules.anomalie]\nenabled = false\n\
         [sms]\ntwilio_base_url = \"{twilio}\"\ndirectory = \"{}\"\nretry_initial_ms = 50\nretry_max_s = 1\n{extra}",
        dir.join("phones.csv").display()
    )
}

fn twilio_env() -> Vec<(&'static str, Option<&'static str>)> {
    vec![
        ("TWILIO_ACCOUNT_SID", Some(SID)),
        ("TWILIO_AUTH_TOKEN", Some("secret-token")),
        ("TWILIO_PHONE_NUMBER", Some(FROM)),
    ]
}

/// A meal of gaveur 1 whose dose is `ratio` of the theory (≤ 0.7: refus_alimentaire).
fn meal_at(code_lot: &str, n: i64, ratio: f64) -> Value {
    let mut record = meal(
        code_lot,
        1,
        "LL",
        n / 2 + 1,
        if n % 2 == 0 { "matin" } else { "soir" },
    );
    record["dose_reelle"] = json!(record["dose_theorique"].as_f64().unwrap() * ratio);
    record
}

fn gavage(record: &Value) -> (String, Vec<u8>, u8) {
    let site = record["site"].as_str().unwrap();
    let gaveur = record["gaveur_id"].as_i64().unwrap();
    (
        format!("gaveurs/{site}/{gaveur}/gavage"),
        record.to_string().into_bytes(),
        1,
    )
}

async fn publish(gaveurs: &Gaveurs, records: &[Value]) {
    let messages: Vec<_> = records.iter().map(gavage).collect();
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0), "refused: {codes:?}");
}

/// The next `alerte` messages on a gaveur channel until `wanted` says stop.
async fn alerte_until(ws: &mut Ws, wanted: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !wanted(&seen) {
        assert!(
            std::time::Instant::now() < deadline,
            "alerte messages so far: {seen:#?}"
        );
        let message = next_json(ws).await;
        if message["type"] == "alerte" {
            seen.push(message);
        }
    }
    seen
}

fn of_lot<'a>(messages: &'a [Value], code_lot: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["data"]["code_lot"] == code_lot)
        .collect()
}

async fn alerts_as(gaveurs: &Gaveurs, token: &str, query: &str) -> Vec<Value> {
    let (status, body) = http_get_as(gaveurs.http, &format!("/api/v1/alerts{query}"), token).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["alerts"].as_array().unwrap().clone()
}

fn stderr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_critical_condition_held_over_twelve_records_is_one_alert_and_one_sms() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let extra = config(dir.path(), &twilio.base_url, "");
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;

    let records: Vec<Value> = (0..12).map(|n| meal_at("LL2611001", n, 0.5)).collect();
    publish(&gaveurs, &records).await;
    let messages = alerte_until(&mut channel, |seen| seen.len() >= 12).await;
    let data: Vec<&Value> = messages.iter().map(|m| &m["data"]).collect();
    assert!(
        data.iter().all(|d| d["rule"] == "refus_alimentaire"),
        "{data:#?}"
    );
    assert_eq!(data[0]["transition"], "opened");
    assert!(data[1..].iter().all(|d| d["transition"] == "updated"));
    let alert_id = data[0]["alert_id"].as_str().unwrap().to_string();
    assert!(
        data.iter().all(|d| d["alert_id"] == alert_id.as_str()),
        "one alert"
    );
    let last = data[11];
    assert_eq!(last["severity"], "critical");
    assert_eq!(last["state"], "open");
    assert_eq!(last["count"], 12);
    assert_eq!(last["value"], 50.0);
    assert_eq!(last["threshold"], 70.0);
    assert_eq!(last["code_lot"], "LL2611001");
    assert!(last["opened_at"].is_string());

    let sms = twilio.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(sms[0].account_sid, SID);
    assert_eq!(sms[0].user.as_deref(), Some(SID));
    assert_eq!(sms[0].password.as_deref(), Some("secret-token"));
    assert_eq!(sms[0].to, PHONE);
    assert_eq!(sms[0].from, FROM);
    assert!(sms[0].body.contains("LL2611001"), "{}", sms[0].body);
    assert!(sms[0].body.chars().count() <= 160);

    // The state, scoped to the caller.
    let open = alerts_as(&gaveurs, &jean, "?state=open").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0]["alert_id"], alert_id.as_str());
    assert_eq!(open[0]["count"], 12);
    let sophie = gaveurs.token("sophie.dubois@gaveur.fr");
    assert!(alerts_as(&gaveurs, &sophie, "?state=open").await.is_empty());
    let superviseur = gaveurs.token("superviseur@euralis.fr");
    assert_eq!(
        alerts_as(&gaveurs, &superviseur, "?state=open").await.len(),
        1
    );
    let (status, lot) = http_get_as(gaveurs.http, "/api/v1/lots/LL2611001", &jean).await;
    assert_eq!(status, 200, "{lot}");
    let lot: Value = serde_json::from_str(&lot).unwrap();
    assert_eq!(lot["alerts"][0]["alert_id"], alert_id.as_str());

    // Sophie may not acknowledge Jean's alert; Jean may, on his channel.
    let forbidden = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/alerts/{alert_id}/ack",
            gaveurs.http
        ))
        .bearer_auth(&sophie)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status().as_u16(), 403);
    send_json(
        &mut channel,
        &json!({"type": "ack_alert", "alert_id": alert_id}),
    )
    .await;
    let mut reply = None;
    let mut acknowledged = None;
    while reply.is_none() || acknowledged.is_none() {
        let message = next_json(&mut channel).await;
        match message["type"].as_str() {
            Some("ack_alert_ok") => reply = Some(message),
            Some("alerte") if message["data"]["transition"] == "acknowledged" => {
                acknowledged = Some(message)
            }
            _ => {}
        }
    }
    let acknowledged = acknowledged.unwrap();
    assert_eq!(acknowledged["data"]["state"], "acknowledged");
    assert_eq!(acknowledged["data"]["acknowledged_by"], "jean.martin");

    // The acknowledgement survives a restart.
    gaveurs.stop_cleanly();
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    let active = alerts_as(&gaveurs, &jean, "").await;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["state"], "acknowledged");

    // Three records without the condition clear it.
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let normal: Vec<Value> = (12..15).map(|n| meal_at("LL2611001", n, 1.0)).collect();
    publish(&gaveurs, &normal).await;
    let messages = alerte_until(&mut channel, |seen| {
        seen.iter().any(|m| m["data"]["transition"] == "cleared")
    })
    .await;
    let cleared = messages.last().unwrap();
    assert_eq!(cleared["data"]["alert_id"], alert_id.as_str());
    assert_eq!(cleared["data"]["state"], "cleared");
    assert!(alerts_as(&gaveurs, &jean, "?state=active").await.is_empty());
    assert_eq!(alerts_as(&gaveurs, &jean, "?state=cleared").await.len(), 1);
    gaveurs.stop_cleanly();

    // Every transition is a row: opened, 11 updated, acknowledged, cleared.
    let rows = read_rows(&dir.path().join("data/parquet"), "alerts");
    let mut transitions: Vec<(String, i64)> = rows
        .iter()
        .filter(|r| r["alert_id"] == alert_id.as_str())
        .map(|r| {
            (
                r["transition"].as_str().unwrap().to_string(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    transitions.sort_by_key(|(t, count)| (*count, t != "opened", t.clone()));
    let names: Vec<&str> = transitions.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names.len(), 14, "{names:?}");
    assert_eq!(names.iter().filter(|t| **t == "opened").count(), 1);
    assert_eq!(names.iter().filter(|t| **t == "updated").count(), 11);
    assert_eq!(names.iter().filter(|t| **t == "acknowledged").count(), 1);
    assert_eq!(names.iter().filter(|t| **t == "cleared").count(), 1);
    assert_eq!(twilio.requests().len(), 1, "one SMS for one opening");
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_and_flapping_conditions_send_no_sms_storm() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let extra = config(dir.path(), &twilio.base_url, "");
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;

    // A replay (backfill) of a critical record: an alert, never a text.
    let replayed = [gavage(&meal_at("LL2611002", 0, 0.5))];
    let codes = publish_each_with(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &replayed,
        &[("backfill", "true")],
    )
    .await;
    assert_eq!(codes, [0]);
    // A condition true on every other record.
    let flapping: Vec<Value> = (0..20)
        .map(|n| meal_at("LL2611003", n, if n % 2 == 0 { 0.5 } else { 1.0 }))
        .collect();
    publish(&gaveurs, &flapping).await;
    // Then a live critical record on a third lot: its SMS comes after any earlier one.
    publish(&gaveurs, &[meal_at("LL2611004", 0, 0.5)]).await;
    let messages = alerte_until(&mut channel, |seen| !of_lot(seen, "LL2611004").is_empty()).await;

    let backfill = of_lot(&messages, "LL2611002");
    assert_eq!(backfill.len(), 1);
    assert_eq!(backfill[0]["data"]["transition"], "opened");
    assert_eq!(backfill[0]["data"]["backfill"], true);
    let flaps = of_lot(&messages, "LL2611003");
    assert_eq!(
        flaps
            .iter()
            .filter(|m| m["data"]["transition"] == "opened")
            .count(),
        1,
        "one alert while the condition flaps: {flaps:#?}"
    );
    assert!(flaps.iter().all(|m| m["data"]["transition"] != "cleared"));

    let sms = twilio.wait_for_requests(2, Duration::from_secs(20)).await;
    let lots_texted: Vec<&str> = sms
        .iter()
        .map(|r| {
            if r.body.contains("LL2611003") {
                "LL2611003"
            } else if r.body.contains("LL2611004") {
                "LL2611004"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(lots_texted, ["LL2611003", "LL2611004"], "{sms:#?}");
    gaveurs.stop_cleanly();
    assert_eq!(twilio.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsent_outbox_entry_is_sent_exactly_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    // Twilio is failing: the text stays in the outbox, retried.
    twilio.respond_with(&[500; 1000]);
    let extra = config(dir.path(), &twilio.base_url, "");
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    publish(&gaveurs, &[meal_at("LL2611005", 0, 0.5)]).await;
    let failed = twilio.wait_for_requests(2, Duration::from_secs(20)).await;
    assert!(failed.iter().all(|r| r.status == 500));
    gaveurs.stop_cleanly();

    // Twilio is back: the restart sends it once.
    twilio.respond_with(&[]);
    let before = twilio.requests().len();
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    twilio
        .wait_for_requests(before + 1, Duration::from_secs(20))
        .await;
    let sent = twilio.sent();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].body.contains("LL2611005"));
    gaveurs.stop_cleanly();

    // Another restart repeats nothing: the next text is the next alert's.
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    publish(&gaveurs, &[meal_at("LL2611006", 0, 0.5)]).await;
    let after = twilio.requests().len();
    let requests = twilio
        .wait_for_requests(after + 1, Duration::from_secs(20))
        .await;
    assert!(requests.last().unwrap().body.contains("LL2611006"));
    gaveurs.stop_cleanly();
    let sent: Vec<String> = twilio.sent().into_iter().map(|r| r.body).collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_retried_and_a_400_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    twilio.respond_with(&[429]);
    let extra = config(dir.path(), &twilio.base_url, "");
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    publish(&gaveurs, &[meal_at("LL2611007", 0, 0.5)]).await;
    let requests = twilio.wait_for_requests(2, Duration::from_secs(20)).await;
    assert_eq!(requests[0].status, 429);
    assert_eq!(requests[1].status, 201);
    assert_eq!(requests[0].body, requests[1].body);

    twilio.respond_with(&[400]);
    publish(&gaveurs, &[meal_at("LL2611008", 0, 0.5)]).await;
    let requests = twilio.wait_for_requests(3, Duration::from_secs(20)).await;
    assert_eq!(requests[2].status, 400);
    // The next alert's text is the next request: the refused one was not retried.
    publish(&gaveurs, &[meal_at("LL2611009", 0, 0.5)]).await;
    let requests = twilio.wait_for_requests(4, Duration::from_secs(20)).await;
    assert!(requests[3].body.contains("LL2611009"), "{requests:#?}");
    gaveurs.stop_cleanly();
    assert_eq!(twilio.requests().len(), 4);
    assert_eq!(twilio.sent().len(), 2);
    let log = stderr(dir.path());
    assert!(
        log.contains("21211"),
        "the refusal is logged with Twilio's code:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_producers_on_one_lot_raise_one_alert() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let extra = config(dir.path(), &twilio.base_url, "");
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let records: Vec<Value> = (0..40).map(|n| meal_at("LL2611010", n, 0.5)).collect();
    let (even, odd): (Vec<_>, Vec<_>) = records
        .iter()
        .cloned()
        .enumerate()
        .partition(|(n, _)| n % 2 == 0);
    let strip = |v: Vec<(usize, Value)>| v.into_iter().map(|(_, r)| r).collect::<Vec<_>>();
    let (even, odd) = (strip(even), strip(odd));
    tokio::join!(publish(&gaveurs, &even), publish(&gaveurs, &odd));
    let messages = alerte_until(&mut channel, |seen| seen.len() >= 40).await;
    let opened = messages
        .iter()
        .filter(|m| m["data"]["transition"] == "opened")
        .count();
    assert_eq!(
        opened, 1,
        "one alert, whatever connection its records came on"
    );
    assert_eq!(messages.last().unwrap()["data"]["count"], 40);
    assert_eq!(alerts_as(&gaveurs, &jean, "?state=open").await.len(), 1);
    twilio.wait_for_requests(1, Duration::from_secs(20)).await;
    gaveurs.stop_cleanly();
    assert_eq!(twilio.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_twilio_credentials_alerts_are_still_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let extra = config(dir.path(), &twilio.base_url, "");
    let env = [
        ("TWILIO_ACCOUNT_SID", None),
        ("TWILIO_AUTH_TOKEN", None),
        ("TWILIO_PHONE_NUMBER", None),
    ];
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &env);
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    publish(&gaveurs, &[meal_at("LL2611011", 0, 0.5)]).await;
    let messages = alerte_until(&mut channel, |seen| !seen.is_empty()).await;
    assert_eq!(messages[0]["data"]["severity"], "critical");
    gaveurs.stop_cleanly();
    let log = stderr(dir.path());
    assert_eq!(
        log.matches("SMS disabled").count(),
        1,
        "one warning:\n{log}"
    );
    assert!(twilio.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let strict = config(
        dir.path(),
        &twilio.base_url,
        "[alerts.rules.mortalite_lot]\ncritical = 50\n",
    );
    let gaveurs = Gaveurs::start_with_env(dir.path(), &strict, &twilio_env());
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let mut first = meal_at("LL2611012", 0, 1.0);
    first["taux_mortalite"] = json!(10.0);
    publish(&gaveurs, &[first]).await;

    // The same file with the default mortality threshold (5 %), then SIGHUP.
    let path = dir.path().join("gaveurs.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("critical = 50", "critical = 5")).unwrap();
    nix::sys::signal::kill(gaveurs.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually(Duration::from_secs(10), "the reload", || {
        stderr(dir.path())
            .contains("alert rules reloaded")
            .then_some(())
    });
    let mut second = meal_at("LL2611012", 1, 1.0);
    second["taux_mortalite"] = json!(10.0);
    publish(&gaveurs, &[second]).await;
    let messages = alerte_until(&mut channel, |seen| !seen.is_empty()).await;
    assert_eq!(messages[0]["data"]["rule"], "mortalite_lot");
    assert_eq!(messages[0]["data"]["transition"], "opened");
    assert_eq!(
        messages[0]["data"]["count"], 1,
        "the first record was judged by the old rule"
    );
    assert_eq!(messages[0]["data"]["threshold"], 5.0);
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_neither_repeats_a_text_nor_twins_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    // The state is saved before a text and otherwise rarely (long interval, slow rolls), so the
    // update that follows the text is not saved before the kill: the restart evaluates that
    // record again from the durable log.
    let extra = config(
        dir.path(),
        &twilio.base_url,
        "[alerts]\nstate_save_interval_ms = 600000\n",
    )
    .replace("roll_interval_s = 1", "roll_interval_s = 600");
    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    publish(&gaveurs, &[meal_at("LL2611013", 0, 0.5)]).await;
    twilio.wait_for_requests(1, Duration::from_secs(20)).await;
    // Killed once the outbox has recorded the text as sent (a kill between Twilio's answer
    // and that record would send it again: Twilio has no idempotency key).
    let journal = dir
        .path()
        .join("data/instances")
        .join(&gaveurs.instance)
        .join("sms/outbox.jsonl");
    eventually(Duration::from_secs(10), "the text recorded as sent", || {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .contains("\"sent\"")
            .then_some(())
    });
    publish(&gaveurs, &[meal_at("LL2611013", 1, 0.5)]).await;
    alerte_until(&mut channel, |seen| {
        seen.iter().any(|m| m["data"]["count"] == 2)
    })
    .await;
    let state = dir
        .path()
        .join("data/instances")
        .join(&gaveurs.instance)
        .join("alerts/state.json");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let saved = saved.to_string();
    assert!(
        saved.contains("\"count\":1") && !saved.contains("\"count\":2"),
        "the state saved before the text covers the first record only: {saved}"
    );
    gaveurs.kill9();

    let gaveurs = Gaveurs::start_with_env(dir.path(), &extra, &twilio_env());
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    publish(
        &gaveurs,
        &[meal_at("LL2611013", 2, 0.5), meal_at("LL2611014", 0, 0.5)],
    )
    .await;
    alerte_until(&mut channel, |seen| !of_lot(seen, "LL2611014").is_empty()).await;
    let requests = twilio.wait_for_requests(2, Duration::from_secs(20)).await;
    assert!(requests[0].body.contains("LL2611013"));
    assert!(requests[1].body.contains("LL2611014"), "{requests:#?}");
    let open = alerts_as(&gaveurs, &jean, "?code_lot=LL2611013").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(
        open[0]["count"], 3,
        "each of the three records counted once"
    );
    gaveurs.stop_cleanly();
    assert_eq!(twilio.requests().len(), 2);
}
