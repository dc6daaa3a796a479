//! Logs, metrics and health as an operator sees them (SPEC §7, §9): the real binary's log
//! files, `GET /metrics` scraped as text, `/health/ready` when the data dir turns read-only,
//! and SIGHUP changing a module's level.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gaveurs_loadgen::producer::MqttVersion;
use serde_json::{Value, json};
use support::records::meal;
use support::*;

/// Every log file: the modules and `errors`.
fn log_files() -> Vec<&'static str> {
    let mut files = gaveurs_pipeline::logs::MODULES.to_vec();
    files.push(gaveurs_pipeline::logs::ERRORS);
    files
}

const LINE: &str = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \| (TRACE|DEBUG|INFO|WARN|ERROR) +\| [a-z]+ +\| [^|]*( \| [a-z_]+=[^|]*)*$";

fn gavage(record: &Value) -> (String, Vec<u8>, u8) {
    (
        format!(
            "gaveurs/{}/{}/gavage",
            record["site"].as_str().unwrap(),
            record["gaveur_id"]
        ),
        record.to_string().into_bytes(),
        1,
    )
}

fn log(dir: &std::path::Path, module: &str) -> String {
    std::fs::read_to_string(dir.join(format!("logs/{module}.log"))).unwrap_or_default()
}

/// The value of one series in Prometheus text, if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(gaveurs: &Gaveurs) -> String {
    let response = reqwest::get(format!("http://{}/metrics", gaveurs.http))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_module_has_its_file_and_every_line_parses() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    for module in log_files() {
        assert!(
            dir.path().join(format!("logs/{module}.log")).exists(),
            "{module}.log is created at start"
        );
    }
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        "not-a-token",
        &[gavage(&meal("LL2612001", 1, "LL", 1, "matin"))],
    )
    .await;
    assert_eq!(codes, [0x87]);
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[gavage(&meal("LL2612001", 1, "LL", 1, "matin"))],
    )
    .await;
    assert_eq!(codes, [0]);
    let (status, _) = http_get_as(gaveurs.http, "/api/v1/alerts", &gaveurs.admin).await;
    assert_eq!(status, 200);
    gaveurs.stop_cleanly();

    let api = log(dir.path(), "api");
    let request = api
        .lines()
        .find(|l| l.contains("path=/api/v1/alerts"))
        .unwrap_or_else(|| panic!("{api}"));
    assert!(
        request.contains("| status=200") && request.contains("| request_id="),
        "{request}"
    );
    assert!(
        log(dir.path(), "audit")
            .lines()
            .any(|l| l.contains("AUTHENTICATED_REQUEST")
                && l.contains("resource=/api/v1/alerts")
                && l.contains("request_id=")),
        "the audit line of the request carries its id"
    );
    let main = log(dir.path(), "main");
    assert!(
        main.contains("gaveurs starting") && main.contains("version="),
        "{main}"
    );
    assert!(
        main.contains("gaveurs ready") && main.contains("http="),
        "{main}"
    );
    assert!(main.contains("gaveurs stopped"), "{main}");
    let audit = log(dir.path(), "audit");
    let refusal = audit
        .lines()
        .find(|l| l.contains("UNAUTHORIZED_ACCESS"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(refusal.contains("| WARN     | audit "), "{refusal}");
    assert!(refusal.contains("| reason=malformed_token"), "{refusal}");
    assert!(
        refusal.contains("| resource=gaveurs/LL/1/gavage"),
        "{refusal}"
    );
    assert!(
        log(dir.path(), "errors").contains("UNAUTHORIZED_ACCESS"),
        "WARN and above also go to errors.log"
    );
    assert!(log(dir.path(), "auth").contains("token verification ready"));
    assert!(log(dir.path(), "alerts").contains("alerts ready"));
    assert!(!log(dir.path(), "main").contains("UNAUTHORIZED_ACCESS"));
    let line = regex::Regex::new(LINE).unwrap();
    for module in log_files() {
        for text in log(dir.path(), module).lines() {
            assert!(line.is_match(text), "{module}.log: {text:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_as_records_flow() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    let before = scrape(&gaveurs).await;
    let accepted = "gaveurs_records_in_total{stream=\"gavage\",transport=\"mqtt\"}";
    assert_eq!(sample(&before, accepted), None);
    assert_eq!(
        sample(&before, "gaveurs_ws_clients{kind=\"gaveur\"}"),
        Some(0.0)
    );

    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let records: Vec<_> = (1..=3)
        .map(|jour| gavage(&meal("LL2612002", 1, "LL", jour, "matin")))
        .collect();
    publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &records).await;
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        "not-a-token",
        &records[..1],
    )
    .await;
    for _ in 0..3 {
        loop {
            if next_json(&mut channel).await["type"] == "gavage" {
                break;
            }
        }
    }
    // Rolls publish every second; scrape until the three meals and the dead letter are out.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let during = loop {
        let text = scrape(&gaveurs).await;
        let out = |dataset: &str| {
            sample(
                &text,
                &format!("gaveurs_records_out_total{{sink=\"parquet\",dataset=\"{dataset}\"}}"),
            )
        };
        if out("gavage_meals").is_some_and(|rows| rows >= 3.0)
            && out("dlq").is_some_and(|rows| rows >= 1.0)
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Parquet file published: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sample(&during, accepted), Some(3.0), "{during}");
    assert_eq!(
        sample(
            &during,
            "gaveurs_records_rejected_total{reason=\"invalid_token\"}"
        ),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        sample(&during, "gaveurs_dlq_rows_total{stage=\"auth\"}"),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        sample(&during, "gaveurs_ws_clients{kind=\"gaveur\"}"),
        Some(1.0)
    );
    assert!(
        sample(&during, "gaveurs_live_latency_seconds_count").unwrap() >= 3.0,
        "{during}"
    );
    assert!(sample(&during, "gaveurs_parquet_bytes_total").unwrap() > 0.0);
    assert!(
        sample(&during, "gaveurs_parquet_files_total").unwrap() >= 2.0,
        "meals and dlq"
    );
    assert_eq!(
        sample(&during, "gaveurs_sms_total{outcome=\"disabled\"}"),
        Some(0.0)
    );
    // Typed as what they are, for Prometheus: counters (even those read from a component when
    // scraped) and a histogram whose +Inf bucket is its count.
    for family in [
        "# TYPE gaveurs_records_in counter",
        "# TYPE gaveurs_sms counter",
        "# TYPE gaveurs_ws_slow_disconnects counter",
        "# TYPE gaveurs_ws_clients gauge",
        "# TYPE gaveurs_live_latency_seconds histogram",
    ] {
        assert!(during.lines().any(|l| l == family), "{family}: {during}");
    }
    assert_eq!(
        sample(&during, "gaveurs_live_latency_seconds_bucket{le=\"+Inf\"}"),
        sample(&during, "gaveurs_live_latency_seconds_count"),
    );
    assert!(during.ends_with("# EOF\n"));
    drop(channel);
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_turns_503_when_the_data_dir_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let (status, _) = http_get(gaveurs.http, "/health/ready").await;
    assert_eq!(status, 200);
    let data = dir.path().join("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    let (status, body) = http_get(gaveurs.http, "/health/ready").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"].as_str().unwrap().contains("not writable"),
        "{body}"
    );
    let (status, _) = http_get(gaveurs.http, "/health/live").await;
    assert_eq!(status, 200, "still alive");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, _) = http_get(gaveurs.http, "/health/ready").await;
    assert_eq!(status, 200);
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_changes_a_modules_level() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[logs]\nlevel = \"info\"\n");
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let refused = |jour: i64| {
        let mut record = meal("LL2612003", 1, "LL", jour, "matin");
        record["dose_reelle"] = json!(50.0);
        gavage(&record)
    };
    let alerte = async |channel: &mut Ws, count: i64| loop {
        let message = next_json(channel).await;
        if message["type"] == "alerte" && message["data"]["count"] == count {
            break;
        }
    };
    // Opened, then an update at debug: not written at info.
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[refused(1), refused(2)],
    )
    .await;
    alerte(&mut channel, 2).await;
    let path = dir.path().join("gaveurs.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "level = \"info\"",
        "level = \"info\"\n\n[logs.modules]\nalerts = \"debug\"",
    );
    std::fs::write(&path, text).unwrap();
    nix::sys::signal::kill(gaveurs.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually(Duration::from_secs(10), "the reload", || {
        log(dir.path(), "main")
            .contains("log levels reloaded")
            .then_some(())
    });
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[refused(3)],
    )
    .await;
    alerte(&mut channel, 3).await;
    gaveurs.stop_cleanly();
    let alerts = log(dir.path(), "alerts");
    // The refusals' alert, by its rule: the meal model may judge these meals too, and its
    // `anomalie` alert has its own count.
    let refusal = |count: &str| {
        alerts
            .lines()
            .find(|l| l.contains("rule=refus_alimentaire") && l.contains(count))
    };
    assert!(refusal("transition=opened").is_some(), "{alerts}");
    assert!(
        refusal("count=2").is_none(),
        "the update before the reload was below info: {alerts}"
    );
    assert!(
        refusal("count=3").is_some_and(|l| l.contains("| DEBUG    | alerts")),
        "{alerts}"
    );
}
