use std::sync::Mutex;

use chrono::NaiveDate;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// A clock the test moves.
struct ManualClock(Mutex<DateTime>);
type DateTime = chrono::DateTime<chrono::Local>;

impl ManualClock {
    fn at(day: NaiveDate, hms: (u32, u32, u32)) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(local(day, hms))))
    }

    fn set(&self, day: NaiveDate, hms: (u32, u32, u32)) {
        *self.0.lock().unwrap() = local(day, hms);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime {
        *self.0.lock().unwrap()
    }
}

fn local(day: NaiveDate, (h, m, s): (u32, u32, u32)) -> DateTime {
    use chrono::TimeZone;
    chrono::Local
        .from_local_datetime(&day.and_hms_opt(h, m, s).unwrap())
        .earliest()
        .unwrap()
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn at_local_midnight_the_file_is_renamed_with_its_date() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(day(10), (23, 59, 58));
    let mut file = RotatingFile::open(dir.path(), "auth", 30, clock.clone()).unwrap();
    file.write_all(b"before midnight\n").unwrap();
    clock.set(day(11), (0, 0, 1));
    file.write_all(b"after midnight\n").unwrap();
    file.flush().unwrap();
    assert_eq!(names(dir.path()), ["auth.log", "auth.log.2026-03-10"]);
    assert_eq!(read(dir.path(), "auth.log.2026-03-10"), "before midnight\n");
    assert_eq!(read(dir.path(), "auth.log"), "after midnight\n");
    // Two days later, with nothing written in between: one rotation, dated the 11th.
    clock.set(day(13), (8, 0, 0));
    file.write_all(b"two days later\n").unwrap();
    assert_eq!(read(dir.path(), "auth.log.2026-03-11"), "after midnight\n");
    assert_eq!(read(dir.path(), "auth.log"), "two days later\n");
}

#[test]
fn retention_deletes_only_this_modules_files_older_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let today = day(31);
    let old = |name: &str| std::fs::write(dir.path().join(name), "x").unwrap();
    old("auth.log.2026-02-28"); // 31 days before: deleted
    old("auth.log.2026-03-01"); // 30 days before: kept
    old("auth.log.2026-03-30");
    old("auth.log.backup"); // not a dated file: kept
    old("errors.log.2026-01-01"); // 89 days before: kept at 90 days
    old("errors.log.2025-12-31"); // 90 days before: kept
    old("errors.log.2025-12-30"); // 91 days before: deleted
    old("api.log.2026-01-01"); // another module's: kept until its own writer runs
    let clock = ManualClock::at(today, (9, 0, 0));
    let _auth = RotatingFile::open(dir.path(), "auth", 30, clock.clone()).unwrap();
    let _errors = RotatingFile::open(dir.path(), "errors", 90, clock.clone()).unwrap();
    assert_eq!(
        names(dir.path()),
        [
            "api.log.2026-01-01",
            "auth.log",
            "auth.log.2026-03-01",
            "auth.log.2026-03-30",
            "auth.log.backup",
            "errors.log",
            "errors.log.2025-12-31",
            "errors.log.2026-01-01",
        ]
    );
}

#[test]
fn retention_is_enforced_at_each_rotation_too() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(day(1), (12, 0, 0));
    let mut file = RotatingFile::open(dir.path(), "main", 2, clock.clone()).unwrap();
    for d in 2..=6 {
        file.write_all(format!("day {}\n", d - 1).as_bytes())
            .unwrap();
        clock.set(day(d), (0, 0, 5));
    }
    file.write_all(b"day 6\n").unwrap();
    // Rotated files of the 4th and 5th are kept (2 days); the 1st–3rd are gone.
    assert_eq!(
        names(dir.path()),
        ["main.log", "main.log.2026-03-04", "main.log.2026-03-05"]
    );
}

#[test]
fn a_file_left_from_an_earlier_day_is_rotated_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storage.log");
    std::fs::write(&path, "yesterday's line\n").unwrap();
    let yesterday = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400 * 2);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(yesterday)
        .unwrap();
    let written: chrono::DateTime<chrono::Local> = yesterday.into();
    let _file = RotatingFile::open(dir.path(), "storage", 30, Arc::new(SystemClock)).unwrap();
    let dated = format!("storage.log.{}", written.date_naive().format("%Y-%m-%d"));
    assert_eq!(read(dir.path(), &dated), "yesterday's line\n");
    assert_eq!(read(dir.path(), "storage.log"), "");
}

fn config(dir: &Path, extra: &str) -> LogsConfig {
    toml::from_str(&format!("dir = {:?}\n{extra}", dir.display().to_string())).unwrap()
}

/// Runs `emit` with the module files as the only logger, then flushes them.
fn with_files(config: &LogsConfig, emit: impl FnOnce(&Levels)) {
    let levels = Levels::from_config(config).unwrap();
    let clock = ManualClock::at(day(10), (10, 0, 0));
    let (layer, guard) = ModuleFiles::open(&config.dir, config, levels.clone(), clock).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || emit(&levels));
    drop(guard);
}

const LINE: &str = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \| (TRACE|DEBUG|INFO|WARN|ERROR) +\| [a-z]+ +\| [^|]*( \| [a-z_]+=[^|]*)*$";

#[test]
fn each_module_has_its_file_warnings_go_to_errors_and_lines_parse() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    with_files(&config, |_| {
        let span = tracing::info_span!("request", request_id = "r-42", user = "jean.martin");
        let _entered = span.enter();
        tracing::info!(target: "auth", kid = "k1", "token verified");
        tracing::warn!(target: "alerts", code_lot = "LL1", "SMS refused:\nbad number");
        tracing::info!(target: "audit", reason = "missing_token", resource = "/ws/gaveur/1", "UNAUTHORIZED_ACCESS");
        tracing::debug!(target: "storage", "not at info");
        tracing::info!("gaveurs starting");
    });
    for module in MODULES.iter().chain([&ERRORS]) {
        assert!(
            dir.path().join(format!("{module}.log")).exists(),
            "{module}.log"
        );
    }
    let auth = read(dir.path(), "auth.log");
    assert_eq!(auth.lines().count(), 1, "{auth}");
    assert!(auth.contains("| INFO     | auth                           | token verified | kid=k1 | request_id=r-42 | user=jean.martin"), "{auth}");
    let alerts = read(dir.path(), "alerts.log");
    assert!(alerts.contains("| WARN     | alerts"), "{alerts}");
    assert!(
        alerts.contains("SMS refused:\\nbad number | code_lot=LL1"),
        "one line: {alerts}"
    );
    let errors = read(dir.path(), "errors.log");
    assert_eq!(errors.lines().count(), 1, "only the warning: {errors}");
    assert!(errors.contains("SMS refused"));
    let audit = read(dir.path(), "audit.log");
    assert!(
        audit.contains(
            "UNAUTHORIZED_ACCESS | reason=missing_token | resource=/ws/gaveur/1 | request_id=r-42"
        ),
        "{audit}"
    );
    assert!(read(dir.path(), "storage.log").is_empty());
    assert!(read(dir.path(), "main.log").contains("gaveurs starting"));
    let line = regex::Regex::new(LINE).unwrap();
    for module in MODULES.iter().chain([&ERRORS]) {
        for text in read(dir.path(), &format!("{module}.log")).lines() {
            assert!(line.is_match(text), "{module}: {text:?}");
        }
    }
}

#[test]
fn levels_are_per_module_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "level = \"warn\"\n[modules]\nauth = \"debug\"\n",
    );
    with_files(&config, |levels| {
        tracing::debug!(target: "auth", "auth detail");
        tracing::info!(target: "api", "api info, below warn");
        tracing::info!(target: "audit", "AUTHENTICATED_REQUEST");
        levels
            .reload(&super::tests::config(dir.path(), "level = \"info\""))
            .unwrap();
        tracing::debug!(target: "auth", "auth detail after reload");
        tracing::info!(target: "api", "api info after reload");
    });
    let auth = read(dir.path(), "auth.log");
    assert!(
        auth.contains("auth detail") && !auth.contains("after reload"),
        "{auth}"
    );
    let api = read(dir.path(), "api.log");
    assert!(
        !api.contains("below warn") && api.contains("api info after reload"),
        "{api}"
    );
    assert!(
        read(dir.path(), "audit.log").contains("AUTHENTICATED_REQUEST"),
        "audit whatever the level"
    );
    let bad = super::tests::config(dir.path(), "[modules]\nautth = \"debug\"");
    assert!(
        Levels::from_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("autth")
    );
}

#[test]
fn json_lines_carry_the_same_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "format = \"json\"");
    with_files(&config, |_| {
        tracing::info!(target: "connectors", topic = "gaveurs/LL/1/gavage", "subscribed\nnow");
    });
    let text = read(dir.path(), "connectors.log");
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["module"], "connectors");
    assert_eq!(line["message"], "subscribed\nnow");
    assert_eq!(line["topic"], "gaveurs/LL/1/gavage");
    assert_eq!(text.lines().count(), 1);
}

#[test]
fn events_find_their_module_by_target_or_code_path() {
    assert_eq!(module_of("audit"), "audit");
    assert_eq!(module_of("gaveurs_operators::auth::jwks"), "auth");
    assert_eq!(module_of("gaveurs_sinks::parquet"), "storage");
    assert_eq!(module_of("gaveurs_sinks::websocket::pump"), "websocket");
    assert_eq!(
        module_of("gaveurs_connectors::sources::mqtt_embedded"),
        "connectors"
    );
    assert_eq!(module_of("gaveurs_api::query"), "api");
    assert_eq!(module_of("gaveurs_pipeline::run"), "main");
    assert_eq!(module_of("gaveurs_sinks::parquetish"), "main");
}
