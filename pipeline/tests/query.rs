//! SQL for analysts: `gaveurs query` (the real binary) and `POST /api/v1/query` (a running
//! pipeline), over meals published by the pipeline itself and over files written as an
//! older version or another operator would have written them.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use gaveurs_loadgen::producer::MqttVersion;
use serde_json::{Value, json};
use support::{BIN, Gaveurs, eventually, publish_each, read_rows, records};

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// `gaveurs query ARGS…` in `dir` (whose `./data` is the default data dir).
fn gaveurs_query(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("query")
        .args(args)
        .output()
        .expect("run gaveurs query")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a query that must succeed; returns its stdout.
fn query_ok(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = gaveurs_query(dir, args);
    assert!(
        output.status.success(),
        "gaveurs query {args:?} failed: {}",
        stderr(&output)
    );
    output.stdout
}

fn read_ipc(bytes: &[u8]) -> (Arc<Schema>, Vec<RecordBatch>) {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .expect("an Arrow IPC stream");
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
    (schema, batches)
}

fn meal_msg(code_lot: &str, jour: i64, moment: &str) -> (String, Vec<u8>, u8) {
    (
        "gaveurs/LL/1/gavage".to_string(),
        records::meal(code_lot, 1, "LL", jour, moment)
            .to_string()
            .into_bytes(),
        1,
    )
}

/// A pipeline rolling every second, with three meals of one lot published to Parquet.
async fn pipeline_with_three_meals(dir: &Path) -> Gaveurs {
    let gaveurs = Gaveurs::start(dir, "[storage]\nroll_interval_s = 1\n");
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            meal_msg("LL2601001", 2, "matin"),
            meal_msg("LL2601001", 1, "soir"),
            meal_msg("LL2601001", 1, "matin"),
        ],
    )
    .await;
    assert_eq!(codes, vec![0, 0, 0]);
    let root = gaveurs.parquet_root();
    eventually(Duration::from_secs(30), "three meals published", || {
        (read_rows(&root, "gavage_meals").len() == 3).then_some(())
    });
    gaveurs
}

#[tokio::test]
async fn cli_prints_meals_published_by_the_pipeline_as_csv_json_arrow_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = pipeline_with_three_meals(dir.path()).await;
    let config = dir.path().join("gaveurs.toml");
    let config = config.to_str().unwrap();
    let sql = "SELECT code_lot, jour, moment, dose_reelle, date FROM gavage_meals \
               ORDER BY jour, moment";

    let csv = query_ok(dir.path(), &["--config", config, "--format", "csv", sql]);
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "code_lot,jour,moment,dose_reelle,date\n\
         LL2601001,1,matin,218.5,2026-01-11\n\
         LL2601001,1,soir,218.5,2026-01-11\n\
         LL2601001,2,matin,238.5,2026-01-12\n"
    );

    let rows: Value = serde_json::from_slice(&query_ok(
        dir.path(),
        &["--config", config, "--format", "json", sql],
    ))
    .expect("one JSON document");
    assert_eq!(
        rows,
        json!([
            {"code_lot": "LL2601001", "jour": 1, "moment": "matin", "dose_reelle": 218.5, "date": "2026-01-11"},
            {"code_lot": "LL2601001", "jour": 1, "moment": "soir", "dose_reelle": 218.5, "date": "2026-01-11"},
            {"code_lot": "LL2601001", "jour": 2, "moment": "matin", "dose_reelle": 238.5, "date": "2026-01-12"},
        ])
    );

    let ipc = query_ok(dir.path(), &["--config", config, "--format", "arrow", sql]);
    let (schema, batches) = read_ipc(&ipc);
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["code_lot", "jour", "moment", "dose_reelle", "date"]);
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    assert_eq!(batch.num_rows(), 3);
    let jours = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(jours.values(), &[1, 1, 2]);
    let moments = batch
        .column(2)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(moments.value(1), "soir");

    let table = String::from_utf8(query_ok(
        dir.path(),
        &[
            "--config",
            config,
            "SELECT count(*) AS meals, sum(dose_reelle) AS total FROM gavage_meals",
        ],
    ))
    .unwrap();
    assert!(
        table.contains("| meals | total |") && table.contains("| 3     | 675.5 |"),
        "{table}"
    );
    // Only the result is on stdout: no log line slipped in.
    assert!(
        !table.contains("INFO") && !table.contains("WARN"),
        "{table}"
    );
    gaveurs.stop_cleanly();
}

#[test]
fn datasets_without_files_are_empty_tables_with_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let output = gaveurs_query(dir.path(), &["--format", "csv", "SELECT * FROM lot_kpis"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "code_lot,gaveur_id,site,itm,_computed_at,date\n"
    );
    assert_eq!(
        stdout(&gaveurs_query(
            dir.path(),
            &[
                "--format",
                "csv",
                "SELECT alert_id, rule, severity, state, opened_at FROM alerts WHERE severity = 'critical'",
            ],
        )),
        "alert_id,rule,severity,state,opened_at\n"
    );
    assert_eq!(
        stdout(&gaveurs_query(
            dir.path(),
            &["--format", "json", "SELECT code_lot FROM gavage_meals"],
        )),
        "[]\n"
    );
    let (schema, batches) = read_ipc(&query_ok(
        dir.path(),
        &[
            "--format",
            "arrow",
            "SELECT _event_id, score FROM anomalies",
        ],
    ));
    assert_eq!(schema.fields().len(), 2);
    assert!(batches.iter().all(|b| b.num_rows() == 0));
}

#[test]
fn an_unknown_table_or_column_fails_on_stderr_with_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    for (sql, named) in [
        ("SELECT * FROM meals_of_2019", "meals_of_2019"),
        ("SELECT poids_canard FROM gavage_meals", "poids_canard"),
        ("SELEC code_lot FROM gavage_meals", "SELEC"),
    ] {
        let output = gaveurs_query(dir.path(), &["--format", "csv", sql]);
        assert!(!output.status.success(), "{sql} succeeded");
        assert_eq!(stdout(&output), "", "{sql}");
        let message = stderr(&output);
        assert!(
            message.starts_with("error: ") && message.contains(named),
            "{sql}: {message}"
        );
    }
}

#[test]
fn writes_and_table_definitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let copy_target = dir.path().join("copied.csv");
    for sql in [
        "INSERT INTO alerts (alert_id, rule) VALUES ('a1', 'temperature')".to_string(),
        "CREATE TABLE shadow AS SELECT * FROM gavage_meals".to_string(),
        "DROP TABLE gavage_meals".to_string(),
        format!(
            "COPY (SELECT * FROM gavage_meals) TO '{}'",
            copy_target.display()
        ),
    ] {
        let output = gaveurs_query(dir.path(), &[&sql]);
        assert!(!output.status.success(), "{sql} succeeded");
        assert_eq!(stdout(&output), "", "{sql}");
        assert!(
            stderr(&output).contains("read-only"),
            "{sql}: {}",
            stderr(&output)
        );
    }
    assert!(!copy_target.exists());
}

/// Writes `batch` as one Parquet file, as another writer (an older version, the analytics
/// operator) would have.
fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

fn utc_micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

fn kpis(rows: &[(&str, f64, &str)], extra: Option<&str>) -> RecordBatch {
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("gaveur_id", DataType::Int64, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("itm", DataType::Float64, true),
        Field::new("_computed_at", utc.clone(), false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int64Array::from(vec![1; rows.len()])),
        Arc::new(StringArray::from(vec!["LL"; rows.len()])),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| utc_micros(r.2)))
                .with_timezone("UTC"),
        ),
    ];
    if let Some(name) = extra {
        fields.push(Field::new(name, DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from(vec![12_500.0; rows.len()])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

#[test]
fn lot_kpis_holds_the_latest_row_of_each_lot() {
    let dir = tempfile::tempdir().unwrap();
    let partition = dir
        .path()
        .join("data/parquet/lot_kpis/date=2026-01-31/site=LL");
    write_parquet(
        &partition.join("a-wal-1-10.parquet"),
        &kpis(
            &[
                ("LL2601001", 3.1, "2026-01-31T10:00:00Z"),
                ("LL2601002", 2.9, "2026-01-31T10:00:00Z"),
            ],
            None,
        ),
    );
    // A correction of LL2601001, by a newer version with one more column.
    write_parquet(
        &partition.join("a-wal-11-20.parquet"),
        &kpis(
            &[("LL2601001", 3.3, "2026-01-31T11:00:00Z")],
            Some("total_mais_reel_g"),
        ),
    );
    // Written last, but computed before the correction: not the latest.
    write_parquet(
        &dir.path()
            .join("data/parquet/lot_kpis/date=2026-01-30/site=LL/b-wal-1-5.parquet"),
        &kpis(&[("LL2601001", 2.0, "2026-01-31T09:00:00Z")], None),
    );

    let latest = stdout(&gaveurs_query(
        dir.path(),
        &[
            "--format",
            "csv",
            "SELECT code_lot, itm, _computed_at, total_mais_reel_g FROM lot_kpis ORDER BY code_lot",
        ],
    ));
    assert_eq!(
        latest,
        "code_lot,itm,_computed_at,total_mais_reel_g\n\
         LL2601001,3.3,2026-01-31T11:00:00Z,12500.0\n\
         LL2601002,2.9,2026-01-31T10:00:00Z,\n"
    );
    let counts = stdout(&gaveurs_query(
        dir.path(),
        &[
            "--format",
            "csv",
            "SELECT (SELECT count(*) FROM lot_kpis) AS lots, \
             (SELECT count(*) FROM lot_kpis_history) AS rows_written",
        ],
    ));
    assert_eq!(counts, "lots,rows_written\n2,4\n");
}

#[test]
fn files_of_older_versions_read_missing_columns_as_null_and_hidden_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data/parquet");
    let meals = |code_lot: &str, genetique: Option<&str>| {
        let mut fields = vec![
            Field::new("code_lot", DataType::Utf8, false),
            Field::new("jour", DataType::Int64, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![code_lot])),
            Arc::new(Int64Array::from(vec![3])),
        ];
        if let Some(g) = genetique {
            fields.push(Field::new("genetique", DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from(vec![g])));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    };
    let partition = root.join("gavage_meals/date=2026-01-13/site=LL");
    write_parquet(
        &partition.join("old-wal-1-1.parquet"),
        &meals("LL_OLD", None),
    );
    write_parquet(
        &partition.join("new-wal-2-2.parquet"),
        &meals("LL_NEW", Some("Mulard")),
    );
    // A roll in progress, and a hidden file: never read.
    write_parquet(
        &partition.join(".new-wal-3-3.parquet.tmp"),
        &meals("LL_TMP", Some("x")),
    );
    write_parquet(
        &partition.join(".hidden.parquet"),
        &meals("LL_HIDDEN", Some("x")),
    );
    // A dataset this version does not know: a table with the columns of its files.
    let ledger = |n: i64, with_note: bool| {
        let mut fields = vec![Field::new("entry", DataType::Int64, false)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![n]))];
        if with_note {
            fields.push(Field::new("note", DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from(vec!["signed"])));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    };
    write_parquet(
        &root.join("ledger/date=2026-01-13/site=LL/x-1.parquet"),
        &ledger(1, false),
    );
    write_parquet(
        &root.join("ledger/date=2026-01-14/site=MT/x-2.parquet"),
        &ledger(2, true),
    );

    let rows: Value = serde_json::from_slice(&query_ok(
        dir.path(),
        &[
            "--format",
            "json",
            "SELECT code_lot, genetique, poids_moyen, date FROM gavage_meals ORDER BY code_lot",
        ],
    ))
    .unwrap();
    assert_eq!(
        rows,
        json!([
            {"code_lot": "LL_NEW", "genetique": "Mulard", "poids_moyen": null, "date": "2026-01-13"},
            {"code_lot": "LL_OLD", "genetique": null, "poids_moyen": null, "date": "2026-01-13"},
        ])
    );
    assert_eq!(
        stdout(&gaveurs_query(
            dir.path(),
            &[
                "--format",
                "csv",
                "SELECT entry, note, site FROM ledger ORDER BY entry"
            ],
        )),
        "entry,note,site\n1,,LL\n2,signed,MT\n"
    );
}

#[test]
fn help_lists_the_tables_and_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["query", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    let tables = [
        "gavage_meals",
        "sqal_samples",
        "lot_outcomes",
        "dlq",
        "lot_kpis",
        "lot_kpis_history",
        "late",
        "alerts",
        "anomalies",
    ];
    // Each table's columns in the help are exactly those a query of it returns.
    for table in tables {
        let section = help
            .split(&format!("\n  {table}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("{table} is not in the help:\n{help}"));
        let listed: Vec<&str> = section
            .lines()
            .take_while(|l| l.starts_with("    "))
            .flat_map(|l| l.split(','))
            .filter_map(|column| column.split_whitespace().next())
            .collect();
        let header = stdout(&gaveurs_query(
            dir.path(),
            &["--format", "csv", &format!("SELECT * FROM {table}")],
        ));
        let columns: Vec<&str> = header.trim_end().split(',').collect();
        assert_eq!(listed, columns, "{table}");
    }
    assert!(help.contains("dose_reelle double"), "{help}");
    assert!(help.contains("_computed_at timestamp"), "{help}");
    // The limits a query runs within are named with their configuration keys.
    assert!(
        help.contains("memory_limit_mb") && help.contains("timeout_s"),
        "{help}"
    );
}

async fn post_query(
    http: std::net::SocketAddr,
    token: Option<&str>,
    accept: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/query"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn http_query_answers_json_and_arrow_to_a_superviseur() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = pipeline_with_three_meals(dir.path()).await;
    let superviseur = gaveurs.token("superviseur@euralis.fr");
    let sql = "SELECT code_lot, jour, moment, gaveur_nom FROM gavage_meals ORDER BY jour, moment";

    let response = post_query(gaveurs.http, Some(&superviseur), None, json!({"sql": sql})).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer,
        json!({
            "columns": [
                {"name": "code_lot", "type": "string"}, {"name": "jour", "type": "bigint"},
                {"name": "moment", "type": "string"}, {"name": "gaveur_nom", "type": "string"},
            ],
            "rows": [
                {"code_lot": "LL2601001", "jour": 1, "moment": "matin", "gaveur_nom": null},
                {"code_lot": "LL2601001", "jour": 1, "moment": "soir", "gaveur_nom": null},
                {"code_lot": "LL2601001", "jour": 2, "moment": "matin", "gaveur_nom": null},
            ],
            "row_count": 3,
        })
    );

    let response = post_query(
        gaveurs.http,
        Some(&superviseur),
        Some(ARROW_STREAM),
        json!({"sql": sql}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], ARROW_STREAM);
    let (schema, batches) = read_ipc(&response.bytes().await.unwrap());
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    assert_eq!(batch.num_rows(), 3);
    let moments = batch
        .column_by_name("moment")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(
        moments.iter().collect::<Vec<_>>(),
        [Some("matin"), Some("soir"), Some("matin")]
    );
    assert!(batch.column_by_name("gaveur_nom").unwrap().is_null(0));

    // The SQL as a plain-text body; an empty dataset answers zero rows.
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/query", gaveurs.http))
        .bearer_auth(&superviseur)
        .header("content-type", "text/plain")
        .body("SELECT device_id, final_score FROM sqal_samples")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["rows"], json!([]));
    assert_eq!(answer["row_count"], 0);

    // Mistakes and writes are the caller's: 400 with a reason.
    for (sql, says) in [
        ("SELECT nothing FROM gavage_meals", "nothing"),
        ("SELECT * FROM nowhere", "nowhere"),
        ("DELETE FROM gavage_meals", "read-only"),
        ("CREATE TABLE t AS SELECT 1", "read-only"),
    ] {
        let response =
            post_query(gaveurs.http, Some(&superviseur), None, json!({"sql": sql})).await;
        assert_eq!(response.status(), 400, "{sql}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{sql}: {body}"
        );
    }
    let response = post_query(
        gaveurs.http,
        Some(&superviseur),
        None,
        json!({"query": "SELECT 1"}),
    )
    .await;
    assert_eq!(response.status(), 400);
    gaveurs.stop_cleanly();
}

#[tokio::test]
async fn http_query_refuses_a_gaveur_with_403_and_no_token_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let body = json!({"sql": "SELECT code_lot FROM gavage_meals"});

    let response = post_query(gaveurs.http, Some(&jean), None, body.clone()).await;
    assert_eq!(response.status(), 403);
    let refusal: Value = response.json().await.unwrap();
    assert_eq!(refusal["error"], "forbidden");

    let response = post_query(gaveurs.http, None, Some(ARROW_STREAM), body.clone()).await;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let response = post_query(gaveurs.http, Some("not-a-token"), None, body.clone()).await;
    assert_eq!(response.status(), 401);

    // The admin may.
    let response = post_query(gaveurs.http, Some(&gaveurs.admin), None, body).await;
    assert_eq!(response.status(), 200);
    gaveurs.stop_cleanly();
    // Stopped, so the audit log is flushed.
    let audit = std::fs::read_to_string(dir.path().join("logs/audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("UNAUTHORIZED_ACCESS")
            && l.contains("forbidden")
            && l.contains("/api/v1/query")),
        "{audit}"
    );
}

/// Two million distinct keys: a hash table of tens of MiB, whatever the plan.
const NEEDS_MEMORY: &str =
    "SELECT count(*) AS keys FROM (SELECT DISTINCT value * 7 AS k FROM range(2000000))";

/// A sum over a trillion numbers: hours of work.
const RUNS_LONG: &str = "SELECT sum(value % 7) AS total FROM range(1000000000000)";

/// A query that needs neither much memory nor much time.
const SMALL: &str = "SELECT count(*) AS meals FROM gavage_meals";

/// `gaveurs query ARGS…` in `dir` with extra environment variables; killed, and the test
/// failed, if it has not exited within two minutes (a query the limits did not stop).
fn gaveurs_query_bounded(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = Command::new(BIN)
        .current_dir(dir)
        .arg("query")
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run gaveurs query");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("gaveurs query ran"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("gaveurs query {args:?} still running after 120 s");
        }
    }
}

/// POSTs `sql` as a superviseur; the test fails, rather than hangs, on a query nothing stops.
async fn post_bounded(gaveurs: &Gaveurs, token: &str, sql: &str) -> (u16, Value) {
    let response = tokio::time::timeout(
        Duration::from_secs(120),
        post_query(gaveurs.http, Some(token), None, json!({ "sql": sql })),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer to {sql} within 120 s"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_query_over_its_memory_limit_is_refused_with_413_and_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[query]\nmemory_limit_mb = 4\n");
    let superviseur = gaveurs.token("superviseur@euralis.fr");

    let (status, body) = post_bounded(&gaveurs, &superviseur, NEEDS_MEMORY).await;
    assert_eq!(status, 413, "{body}");
    let reason = body["error"].as_str().unwrap();
    assert!(
        reason.contains("4 MiB") && reason.contains("[query] memory_limit_mb"),
        "{reason}"
    );
    let (status, body) = post_bounded(&gaveurs, &superviseur, SMALL).await;
    assert_eq!((status, &body["rows"]), (200, &json!([{"meals": 0}])));

    // The CLI, with the same configuration, fails the same way, with nothing on stdout.
    let config = dir.path().join("gaveurs.toml");
    let config = config.to_str().unwrap();
    let output = gaveurs_query_bounded(dir.path(), &["--config", config, NEEDS_MEMORY], &[]);
    assert!(!output.status.success(), "{}", stdout(&output));
    assert_eq!(stdout(&output), "");
    let message = stderr(&output);
    assert!(
        message.starts_with("error: ") && message.contains("[query] memory_limit_mb"),
        "{message}"
    );
    // With the default limit the same query answers: the refusals above are the limit's.
    let output = gaveurs_query_bounded(
        dir.path(),
        &["--config", config, "--format", "csv", NEEDS_MEMORY],
        &[("GAVEURS_QUERY__MEMORY_LIMIT_MB", "256")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "keys\n2000000\n");
    gaveurs.stop_cleanly();
}

#[tokio::test]
async fn a_query_past_its_timeout_is_cancelled_with_503_and_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[query]\ntimeout_s = 1\n");
    let superviseur = gaveurs.token("superviseur@euralis.fr");

    // Twice: a cancelled query must not keep the query threads busy for the next one.
    for _ in 0..2 {
        let (status, body) = post_bounded(&gaveurs, &superviseur, RUNS_LONG).await;
        assert_eq!(status, 503, "{body}");
        let reason = body["error"].as_str().unwrap();
        assert!(
            reason.contains("longer than 1 s") && reason.contains("[query] timeout_s"),
            "{reason}"
        );
        let (status, body) = post_bounded(&gaveurs, &superviseur, SMALL).await;
        assert_eq!((status, &body["rows"]), (200, &json!([{"meals": 0}])));
    }

    let config = dir.path().join("gaveurs.toml");
    let output = gaveurs_query_bounded(
        dir.path(),
        &["--config", config.to_str().unwrap(), RUNS_LONG],
        &[],
    );
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.starts_with("error: ") && message.contains("[query] timeout_s"),
        "{message}"
    );
    gaveurs.stop_cleanly();
}
