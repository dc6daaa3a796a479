//! Compaction and retention in the running binary: meals of a closed day published over MQTT
//! across several rolls end up in one file, read once by `gaveurs query` and by DuckDB; a
//! late meal for that day is merged in at a later pass; an expired partition is removed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use gaveurs_loadgen::producer::MqttVersion;
use serde_json::json;
use support::{BIN, Gaveurs, duckdb, eventually, http_get, parquet_files, publish_each};

/// A meal of its own lot (so none is a duplicate of another) eaten on `date`.
fn meal(n: u32, date: NaiveDate) -> (String, Vec<u8>, u8) {
    let record = json!({
        "code_lot": format!("LL26{n:05}"), "gaveur_id": 1, "site": "LL", "jour": 3,
        "moment": "matin", "dose_theorique": 260.0, "dose_reelle": 255.5,
        "timestamp": format!("{date}T08:00:00Z"),
    });
    (
        "gaveurs/LL/1/gavage".to_string(),
        record.to_string().into_bytes(),
        1,
    )
}

fn partition(root: &Path, date: NaiveDate) -> PathBuf {
    root.join(format!("gavage_meals/date={date}/site=LL"))
}

/// Every file name in a folder, hidden ones included.
fn all_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `gaveurs query --format csv SQL` in `dir`: the single value of the result.
fn query_value(dir: &Path, sql: &str) -> String {
    let output = Command::new(BIN)
        .current_dir(dir)
        .args(["query", "--config", "gaveurs.toml", "--format", "csv", sql])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gaveurs query: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines().nth(1).unwrap_or_default().to_string()
}

fn duckdb_count(root: &Path, date: NaiveDate) -> i64 {
    let rows = duckdb(
        root,
        &format!(
            "SELECT count(*) AS n, count(DISTINCT code_lot) AS lots FROM \
             read_parquet('{{root}}/gavage_meals/**/*.parquet', hive_partitioning=1) \
             WHERE date = '{date}'"
        ),
    );
    assert_eq!(rows[0]["n"], rows[0]["lots"], "a row read twice: {rows:?}");
    rows[0]["n"].as_i64().unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn closed_days_are_compacted_into_one_file_and_old_partitions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let today = Utc::now().date_naive();
    let closed = today - chrono::Days::new(2);
    let expired = today - chrono::Days::new(40);

    // First run without compaction: at least three rolls, so at least three files for the
    // closed day.
    let gaveurs = Gaveurs::start(
        dir.path(),
        "[storage]\nroll_interval_s = 1\ncompact = false\n",
    );
    let root = gaveurs.parquet_root();
    let day = partition(&root, closed);
    let mut next = 0;
    for roll in 1..=3 {
        let meals: Vec<_> = (0..4).map(|k| meal(next + k, closed)).collect();
        next += 4;
        let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &meals).await;
        assert_eq!(codes, vec![0; 4]);
        eventually(Duration::from_secs(30), "the roll's file", || {
            (parquet_files(&root, &format!("gavage_meals/date={closed}")).len() >= roll)
                .then_some(())
        });
    }
    let old = [meal(900, expired), meal(901, expired)];
    assert_eq!(
        publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &old).await,
        [0, 0]
    );
    eventually(Duration::from_secs(30), "the old day's file", || {
        (!parquet_files(&root, &format!("gavage_meals/date={expired}")).is_empty()).then_some(())
    });
    gaveurs.stop_cleanly();
    let small_files = all_names(&day).len();
    assert!(small_files >= 3, "{small_files}");

    // Second run: compaction every second, any closed day, 30 days kept.
    let gaveurs = Gaveurs::start(
        dir.path(),
        "[storage]\nroll_interval_s = 1\ncompact_after_hours = 0\ncompact_interval_s = 1\n\n\
         [storage.retention_days]\ngavage_meals = 30\n",
    );
    let instance = gaveurs.instance.clone();
    let compacted = eventually(Duration::from_secs(60), "the day compacted", || {
        let names = all_names(&day);
        (names.len() == 1 && !root.join(format!("gavage_meals/date={expired}")).exists())
            .then(|| names[0].clone())
    });
    assert!(
        compacted.starts_with(&format!("{instance}-wal-")),
        "{compacted}"
    );
    let count = format!("SELECT count(*) FROM gavage_meals WHERE date = '{closed}'");
    assert_eq!(query_value(dir.path(), &count), "12");
    assert_eq!(
        query_value(dir.path(), "SELECT count(*) FROM gavage_meals"),
        "12",
        "the expired day is gone"
    );
    assert_eq!(duckdb_count(&root, closed), 12);
    let (_, metrics) = http_get(gaveurs.http, "/metrics").await;
    assert!(metric(&metrics, "gaveurs_parquet_compacted_files_total") >= small_files as f64);
    assert!(metric(&metrics, "gaveurs_parquet_compactions_total") >= 1.0);
    assert_eq!(
        metric(
            &metrics,
            "gaveurs_parquet_retention_removed_partitions_total"
        ),
        1.0
    );

    // A late meal for the closed day: a new small file, merged in at a later pass.
    assert_eq!(
        publish_each(
            gaveurs.mqtt(),
            MqttVersion::V5,
            &gaveurs.admin,
            &[meal(next, closed)]
        )
        .await,
        [0]
    );
    let recompacted = eventually(Duration::from_secs(60), "the late meal merged in", || {
        let names = all_names(&day);
        (names.len() == 1 && names[0] != compacted).then(|| names[0].clone())
    });
    // Its LSN range starts where the first compacted file's did.
    assert_eq!(
        recompacted[..recompacted.len() - 29],
        compacted[..compacted.len() - 29]
    );
    assert_eq!(query_value(dir.path(), &count), "13");
    assert_eq!(duckdb_count(&root, closed), 13);
    gaveurs.stop_cleanly();
    let log = std::fs::read_to_string(dir.path().join("logs/storage.log")).unwrap();
    assert!(
        log.contains("parquet compaction and retention pass"),
        "{log}"
    );
    assert!(log.contains("retention removed a partition"), "{log}");
}
