//! Compaction and retention over files written by the real writers (the log's Parquet sink,
//! the derived writer), read back with the `parquet` crate through a listing that applies
//! the readers' rule ([`superseded`]).

use std::collections::BTreeMap;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::NaiveDate;
use gaveurs_schemas::Event;
use gaveurs_schemas::datasets::Partition;
use gaveurs_schemas::envelope::{Provenance, Transport};
use gaveurs_schemas::records::{GavageMeal, Record};
use gaveurs_schemas::time::SiteTimeZones;

use super::*;
use crate::parquet::derived::DerivedWriter;
use crate::parquet::{ParquetOptions, RollControl, manifest, recover, run as run_sink};
use crate::wal::{CursorOptions, Lsn, Wal, WalEntry, WalOptions};

const DAY: &str = "2026-01-20";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A meal of lot `LL<n>` eaten on `date` (UTC), so it lands in `date=<date>/site=LL`.
fn meal(n: u64, date: &str) -> WalEntry {
    let record = Record::Gavage(
        GavageMeal::decode(
            serde_json::json!({"code_lot": format!("LL{n:07}"), "gaveur_id": 1, "site": "LL",
                "jour": 1 + (n % 12), "moment": if n.is_multiple_of(2) { "matin" } else { "soir" },
                "dose_theorique": 200, "dose_reelle": 150 + n,
                "timestamp": format!("{date}T08:00:00Z")})
            .to_string()
            .as_bytes(),
            &SiteTimeZones::default(),
        )
        .unwrap(),
    );
    WalEntry::Event(Event::accepted(
        record,
        Utc::now(),
        Provenance::new(Transport::Mqtt),
        None,
        false,
    ))
}

/// One instance's log sink in a test data dir.
struct Instance {
    options: ParquetOptions,
    next_lsn: Lsn,
}

impl Instance {
    fn new(data: &Path, id: &str) -> Instance {
        let options = ParquetOptions {
            root: data.join("parquet"),
            state_dir: data.join("instances").join(id).join("parquet"),
            instance_id: id.into(),
            roll_interval: Duration::from_secs(3600),
            max_rows_per_roll: 1_000_000,
        };
        let next_lsn = recover(&options).unwrap().published_through + 1;
        Instance { options, next_lsn }
    }

    /// Publishes one roll through the real sink, from a real log: `rows` meals per date
    /// given; returns the lot numbers written (their LSNs).
    fn roll(&mut self, dates: &[(&str, u64)]) -> Vec<u64> {
        let state = recover(&self.options).unwrap();
        let wal_dir = self.options.state_dir.parent().unwrap().join("wal");
        let (wal, writer) = Wal::open(WalOptions::new(wal_dir), state.published_through).unwrap();
        let cursor = wal.cursor(CursorOptions {
            name: "parquet".into(),
            after: state.published_through,
            essential: true,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lots = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    runtime.block_on(async {
                        let mut lots = Vec::new();
                        for (date, rows) in dates {
                            for _ in 0..*rows {
                                let lsn = self.next_lsn;
                                let logged = wal.append(meal(lsn, date)).await.unwrap();
                                assert_eq!(logged, lsn);
                                self.next_lsn += 1;
                                lots.push(lsn);
                            }
                        }
                        if let Some(last) = lots.last() {
                            wal.durable(*last).await.unwrap();
                        }
                        lots
                    })
                })
                .join()
                .unwrap()
        });
        writer.close();
        run_sink(
            self.options.clone(),
            &state,
            cursor,
            RollControl::new(state.published_through),
            Box::new(|_| Ok(())),
        )
        .unwrap();
        lots
    }

    fn compact_options(&self) -> CompactOptions {
        CompactOptions {
            root: self.options.root.clone(),
            state_dir: self.options.state_dir.clone(),
            instance_id: self.options.instance_id.clone(),
            compact: true,
            compact_after: Duration::from_secs(3600),
            max_file_bytes: 256 * 1024 * 1024,
            retention_days: BTreeMap::new(),
            interval: Duration::from_secs(300),
        }
    }
}

fn folder(root: &Path, dataset: &str, date: &str) -> PathBuf {
    root.join(dataset).join(format!("date={date}/site=LL"))
}

/// File names in a folder, hidden ones included, sorted.
fn names(dir: &Path) -> Vec<String> {
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

/// What a reader that applies the rule reads: published files not superseded.
fn visible(dir: &Path) -> Vec<String> {
    let all = names(dir);
    let published: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|n| !n.starts_with('.') && n.ends_with(".parquet"))
        .collect();
    let hidden = superseded(&published);
    published
        .into_iter()
        .filter(|n| !hidden.contains(n))
        .map(str::to_string)
        .collect()
}

/// Every row of the visible files of a folder, one JSON text per row, sorted.
fn rows(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for name in visible(dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(dir.join(name)).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
            writer.write(&batch.unwrap()).unwrap();
            writer.finish().unwrap();
            out.extend(
                String::from_utf8(writer.into_inner())
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    out.sort();
    out
}

/// The lot numbers of the meals a reader sees, sorted, duplicates kept.
fn lots(dir: &Path) -> Vec<u64> {
    let mut lots: Vec<u64> = rows(dir)
        .iter()
        .map(|row| {
            let row: serde_json::Value = serde_json::from_str(row).unwrap();
            row["code_lot"].as_str().unwrap()[2..].parse().unwrap()
        })
        .collect();
    lots.sort();
    lots
}

fn never() -> AtomicBool {
    AtomicBool::new(false)
}

#[test]
fn names_of_every_writer_parse_and_compacted_names_cover_their_inputs() {
    let wal =
        FileName::parse("node-1-wal-00000000000000000003-00000000000000000009.parquet").unwrap();
    assert_eq!(
        (wal.instance.as_str(), wal.kind, wal.lo, wal.hi),
        ("node-1", Kind::Wal, (3, 0), (9, 0))
    );
    assert_eq!(
        wal.render(),
        "node-1-wal-00000000000000000003-00000000000000000009.parquet"
    );
    // Hand-written names without padding read the same.
    assert_eq!(FileName::parse("a-wal-1-10.parquet").unwrap().hi, (10, 0));
    let derived = FileName::parse("i1-derived-1768900000000-4.parquet").unwrap();
    assert_eq!(
        (derived.lo, derived.hi),
        ((1768900000000, 4), (1768900000000, 4))
    );
    assert_eq!(derived.render(), "i1-derived-1768900000000-4.parquet");
    let compacted = FileName::parse("i1-derived-5-1-9-2.parquet").unwrap();
    assert_eq!((compacted.lo, compacted.hi), ((5, 1), (9, 2)));
    assert_eq!(compacted.render(), "i1-derived-5-1-9-2.parquet");
    let anomalies = FileName::parse("7-anomalies-12.parquet").unwrap();
    assert_eq!(anomalies.kind, Kind::Anomalies);
    assert_eq!(anomalies.render(), "7-anomalies-12.parquet");
    assert_eq!(
        FileName::parse("7-anomalies-1-0-3-0.parquet")
            .unwrap()
            .render(),
        "7-anomalies-1-0-3-0.parquet"
    );
    let alerts = FileName::parse("7-alerts-12.parquet").unwrap();
    assert_eq!((alerts.instance.as_str(), alerts.lo), ("7", (12, 0)));
    assert_eq!(alerts.render(), "7-alerts-12.parquet");
    assert_eq!(
        FileName::parse("7-alerts-12-1.parquet").unwrap().render(),
        "7-alerts-12-1.parquet"
    );
    for foreign in [
        ".i1-wal-00000000000000000001.parquet.tmp",
        ".i1-wal-1-2.parquet",
        "i1-wal-9-3.parquet",
        "i1-wal-1.parquet",
        "i1-derived-1-2-1-2.parquet",
        "wal-1-2.parquet",
        "x-1.parquet",
        "i1-kpis-3.parquet",
        "i1-wal-1-2.csv",
        "i1-derived-1-2-3-4-5.parquet",
    ] {
        assert_eq!(FileName::parse(foreign), None, "{foreign}");
    }
}

#[test]
fn readers_skip_files_another_file_of_the_same_writer_strictly_contains() {
    let names = [
        "i1-wal-1-30.parquet",
        "i1-wal-1-10.parquet",
        "i1-wal-11-20.parquet",
        "i1-wal-21-30.parquet",
        "i1-wal-31-40.parquet",
        // Another instance's LSNs are another sequence.
        "i2-wal-5-6.parquet",
        "i1-derived-1-0-9-0.parquet",
        "i1-derived-5-3.parquet",
        "i1-derived-10-0.parquet",
        "i1-alerts-3.parquet",
        "i1-alerts-2-0-3-0.parquet",
        "i1-alerts-4.parquet",
        "ledger-1.parquet",
    ];
    let mut hidden: Vec<&str> = superseded(&names).into_iter().collect();
    hidden.sort();
    assert_eq!(
        hidden,
        [
            "i1-alerts-3.parquet",
            "i1-derived-5-3.parquet",
            "i1-wal-1-10.parquet",
            "i1-wal-11-20.parquet",
            "i1-wal-21-30.parquet",
        ]
    );
    // A compacted file of compacted files hides them all.
    let names = [
        "i1-wal-1-30.parquet",
        "i1-wal-1-40.parquet",
        "i1-wal-31-40.parquet",
    ];
    assert_eq!(superseded(&names).len(), 2);
}

#[test]
fn small_files_of_a_closed_day_become_one_file_with_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    let mut i2 = Instance::new(dir.path(), "i2");
    let mut written = Vec::new();
    for _ in 0..5 {
        written.extend(i1.roll(&[(DAY, 20), ("2026-01-21", 3)]));
    }
    i2.roll(&[(DAY, 7)]);
    let day = folder(&i1.options.root, "gavage_meals", DAY);
    let before = rows(&day);
    assert_eq!(visible(&day).len(), 6);
    let theirs: Vec<String> = names(&day)
        .into_iter()
        .filter(|n| n.starts_with("i2-"))
        .collect();

    // 2026-01-21 01:30: the 20th closed an hour ago; the 21st is today.
    let report = run_once(&i1.compact_options(), at("2026-01-21T01:30:00Z"), &never()).unwrap();
    assert_eq!(report.compacted_files, 5);
    assert_eq!(report.written_files, 1);
    assert_eq!(report.compacted_rows, 100);
    assert_eq!(report.failures, 0);
    let after = names(&day);
    let first = written.first().unwrap();
    let last = written.last().unwrap();
    let mine: Vec<&String> = after.iter().filter(|n| n.starts_with("i1-")).collect();
    // The compacted range runs from the first roll's first LSN in this folder to the last
    // roll's last one.
    assert_eq!(mine.len(), 1, "{after:?}");
    let compacted = FileName::parse(mine[0]).unwrap();
    assert_eq!(compacted.lo.0, *first);
    assert_eq!(compacted.hi.0, *last - 3);
    assert_eq!(
        after.len(),
        1 + theirs.len(),
        "inputs gone, no hidden file left"
    );
    assert!(
        theirs.iter().all(|n| after.contains(n)),
        "i2's file untouched"
    );
    assert_eq!(rows(&day), before, "same rows, once each");
    // The day that is still open is not touched.
    assert_eq!(
        visible(&folder(&i1.options.root, "gavage_meals", "2026-01-21")).len(),
        5
    );

    let footer =
        ParquetRecordBatchReaderBuilder::try_new(File::open(day.join(mine[0])).unwrap()).unwrap();
    let metadata: BTreeMap<String, String> = footer
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(metadata["gaveurs.compacted_from"], "5");
    assert_eq!(metadata["gaveurs.first_lsn"], first.to_string());

    // A second pass finds nothing to do.
    let again = run_once(&i1.compact_options(), at("2026-01-21T01:30:00Z"), &never()).unwrap();
    assert_eq!(again, PassReport::default());
}

#[test]
fn a_day_is_compacted_only_once_closed_and_past_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    i1.roll(&[(DAY, 2)]);
    i1.roll(&[(DAY, 2)]);
    let day = folder(&i1.options.root, "gavage_meals", DAY);
    let options = i1.compact_options();
    for now in ["2026-01-20T23:59:59Z", "2026-01-21T00:59:59Z"] {
        let report = run_once(&options, at(now), &never()).unwrap();
        assert_eq!(report.compacted_files, 0, "{now}");
        assert_eq!(visible(&day).len(), 2);
    }
    let report = run_once(&options, at("2026-01-21T01:00:00Z"), &never()).unwrap();
    assert_eq!(report.compacted_files, 2);
    assert_eq!(visible(&day).len(), 1);
}

/// Each step a SIGKILL can interrupt: a reader sees every row once at that point, and a
/// restart (recovery, then the next pass) finishes the job.
#[test]
fn a_crash_at_any_step_of_a_merge_never_shows_a_row_twice_and_the_next_pass_finishes() {
    for step in [
        Step::Written,
        Step::Renamed,
        Step::Deleted(1),
        Step::Deleted(2),
        Step::Deleted(3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut i1 = Instance::new(dir.path(), "i1");
        let mut written = Vec::new();
        for _ in 0..3 {
            written.extend(i1.roll(&[(DAY, 4)]));
        }
        let day = folder(&i1.options.root, "gavage_meals", DAY);
        let options = i1.compact_options();
        let now = at("2026-01-22T00:00:00Z");
        let report = run_with_crash(&options, now, &never(), &|s| s == step).unwrap();
        assert_eq!(report.written_files, 0, "{step:?}: the pass died");
        assert_eq!(lots(&day), written, "{step:?}: every row once");
        let hidden: Vec<String> = names(&day)
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect();
        assert_eq!(hidden.len(), usize::from(step == Step::Written), "{step:?}");

        // Restart: the sink's recovery removes the instance's hidden files, the next pass
        // removes the inputs a compacted file already holds and merges what is left.
        recover(&i1.options).unwrap();
        let report = run_once(&options, now, &never()).unwrap();
        assert_eq!(report.failures, 0, "{step:?}");
        let left = names(&day);
        assert_eq!(left.len(), 1, "{step:?}: {left:?}");
        assert_eq!(
            FileName::parse(&left[0]).unwrap().lo.0,
            written[0],
            "{step:?}"
        );
        assert_eq!(lots(&day), written, "{step:?}");
        match step {
            Step::Written => assert_eq!(report.compacted_files, 3),
            Step::Deleted(n) => assert_eq!(report.leftovers_removed, 3 - n, "{step:?}"),
            Step::Renamed => assert_eq!(report.leftovers_removed, 3),
        }
    }
}

#[test]
fn a_late_file_after_compaction_is_merged_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    let mut written = Vec::new();
    for _ in 0..3 {
        written.extend(i1.roll(&[(DAY, 3)]));
    }
    let day = folder(&i1.options.root, "gavage_meals", DAY);
    let options = i1.compact_options();
    let now = at("2026-01-25T00:00:00Z");
    run_once(&options, now, &never()).unwrap();
    assert_eq!(visible(&day).len(), 1);
    // A late meal of the 20th, and a meal of the 24th, in one later roll.
    written.extend(i1.roll(&[(DAY, 1), ("2026-01-24", 1)]));
    let late = written.pop().unwrap();
    assert_eq!(visible(&day).len(), 2);
    let report = run_once(&options, now, &never()).unwrap();
    assert_eq!(report.compacted_files, 2);
    let left = names(&day);
    assert_eq!(left.len(), 1);
    let name = FileName::parse(&left[0]).unwrap();
    assert_eq!(
        (name.lo.0, name.hi.0),
        (written[0], *written.last().unwrap())
    );
    assert_eq!(lots(&day), written);
    assert_eq!(
        lots(&folder(&i1.options.root, "gavage_meals", "2026-01-24")),
        [late]
    );
}

#[test]
fn files_of_a_roll_still_in_progress_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    i1.roll(&[(DAY, 2)]);
    i1.roll(&[(DAY, 2)]);
    i1.roll(&[(DAY, 2)]);
    let day = folder(&i1.options.root, "gavage_meals", DAY);
    // The third roll renamed its file but `state.json` still holds its intent, as after a
    // crash between the renames and the final state write (or a peer finishing the renames
    // its Kafka manifest names).
    let state_file = i1.options.state_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["published_through"] = 4.into();
    std::fs::write(&state_file, state.to_string()).unwrap();
    let report = run_once(&i1.compact_options(), at("2026-01-22T00:00:00Z"), &never()).unwrap();
    assert_eq!(report.compacted_files, 2);
    let mut left: Vec<(u64, u64)> = visible(&day)
        .iter()
        .map(|n| {
            let f = FileName::parse(n).unwrap();
            (f.lo.0, f.hi.0)
        })
        .collect();
    left.sort();
    assert_eq!(left, [(1, 4), (5, 6)]);
}

#[test]
fn only_runs_of_files_with_the_same_columns_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let partition = Partition {
        date: NaiveDate::from_ymd_opt(2026, 1, 20).unwrap(),
        site: "LL".into(),
    };
    let old = Arc::new(Schema::new(vec![Field::new(
        "code_lot",
        DataType::Utf8,
        false,
    )]));
    let new = Arc::new(Schema::new(vec![
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("itm", DataType::Int64, true),
    ]));
    let mut writer = DerivedWriter::new(root.clone(), "i1".into());
    // Two flushes by an older version, then two by a newer one with one more column.
    for (n, schema) in [(1, &old), (2, &old), (3, &new), (4, &new)] {
        let lot: Arc<dyn arrow::array::Array> = Arc::new(StringArray::from(vec![format!("LL{n}")]));
        let columns = if schema.fields().len() == 1 {
            vec![lot]
        } else {
            vec![lot, Arc::new(Int64Array::from(vec![n]))]
        };
        writer.append(
            "lot_kpis",
            partition.clone(),
            RecordBatch::try_new(schema.clone(), columns).unwrap(),
        );
        writer.flush().unwrap();
    }
    let day = folder(&root, "lot_kpis", DAY);
    let before = rows(&day);
    assert_eq!(visible(&day).len(), 4);
    let options = CompactOptions {
        root: root.clone(),
        state_dir: dir.path().join("instances/i1/parquet"),
        instance_id: "i1".into(),
        compact: true,
        compact_after: Duration::ZERO,
        max_file_bytes: 1 << 30,
        retention_days: BTreeMap::new(),
        interval: Duration::from_secs(1),
    };
    let report = run_once(&options, Utc::now(), &never()).unwrap();
    assert_eq!((report.compacted_files, report.written_files), (4, 2));
    let left = visible(&day);
    assert_eq!(left.len(), 2);
    assert!(
        left.iter()
            .all(|n| FileName::parse(n).unwrap().kind == Kind::Derived)
    );
    assert_eq!(rows(&day), before);

    // A flush after compaction is named above the compacted ranges, even with a clock that
    // went back: pretend the compacted files came from the future.
    let future = left
        .iter()
        .map(|n| FileName::parse(n).unwrap())
        .max_by_key(|f| f.hi)
        .unwrap();
    let moved = FileName {
        hi: (future.hi.0 + 3_600_000, future.hi.1),
        ..future.clone()
    };
    std::fs::rename(day.join(future.render()), day.join(moved.render())).unwrap();
    writer.append(
        "lot_kpis",
        partition.clone(),
        RecordBatch::try_new(
            new.clone(),
            vec![
                Arc::new(StringArray::from(vec!["LL5"])),
                Arc::new(Int64Array::from(vec![5])),
            ],
        )
        .unwrap(),
    );
    let flushed = writer.flush().unwrap();
    let name = flushed.files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(FileName::parse(&name).unwrap().lo > moved.hi, "{name}");
    assert_eq!(visible(&day).len(), 3, "the new file is not hidden");
    run_once(&options, Utc::now(), &never()).unwrap();
    assert_eq!(visible(&day).len(), 2);
    assert_eq!(rows(&day).len(), 5);
}

#[test]
fn the_newest_publication_sequence_waits_for_a_newer_one() {
    // The alert operator's and the anomaly desk's files, each its own sequence.
    for stem in ["alerts", "anomalies"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let mut writer = DerivedWriter::new(root.clone(), "i1".into());
        let partition = Partition {
            date: NaiveDate::from_ymd_opt(2026, 1, 20).unwrap(),
            site: "LL".into(),
        };
        let publish = |writer: &mut DerivedWriter, seq: u64| {
            writer.append(
                stem,
                partition.clone(),
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(StringArray::from(vec![format!("a{seq}")]))],
                )
                .unwrap(),
            );
            writer.flush_named(&format!("{stem}-{seq}")).unwrap();
        };
        for seq in 1..=3 {
            publish(&mut writer, seq);
        }
        let options = CompactOptions {
            root: root.clone(),
            state_dir: dir.path().join("instances/i1/parquet"),
            instance_id: "i1".into(),
            compact: true,
            compact_after: Duration::ZERO,
            max_file_bytes: 1 << 30,
            retention_days: BTreeMap::new(),
            interval: Duration::from_secs(1),
        };
        let day = folder(&root, stem, DAY);
        run_once(&options, Utc::now(), &never()).unwrap();
        // Sequence 3 may still be published again (with more rows) after a crash.
        assert_eq!(
            visible(&day),
            [
                format!("i1-{stem}-1-0-2-0.parquet"),
                format!("i1-{stem}-3.parquet")
            ]
        );
        // Writing it again replaces it, as the alert operator and the anomaly desk rely on.
        publish(&mut writer, 3);
        publish(&mut writer, 4);
        run_once(&options, Utc::now(), &never()).unwrap();
        assert_eq!(
            visible(&day),
            [
                format!("i1-{stem}-1-0-3-0.parquet"),
                format!("i1-{stem}-4.parquet")
            ]
        );
        assert_eq!(rows(&day).len(), 4);
    }
}

#[test]
fn compacted_files_stay_under_the_size_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    let mut written = Vec::new();
    for _ in 0..6 {
        written.extend(i1.roll(&[(DAY, 10)]));
    }
    let day = folder(&i1.options.root, "gavage_meals", DAY);
    let sizes: Vec<u64> = visible(&day)
        .iter()
        .map(|n| std::fs::metadata(day.join(n)).unwrap().len())
        .collect();
    let biggest = *sizes.iter().max().unwrap();
    // Room for two inputs, not three.
    let options = CompactOptions {
        max_file_bytes: 2 * biggest + biggest / 2,
        ..i1.compact_options()
    };
    let report = run_once(&options, at("2026-01-22T00:00:00Z"), &never()).unwrap();
    assert_eq!((report.compacted_files, report.written_files), (6, 3));
    assert_eq!(visible(&day).len(), 3);
    assert_eq!(lots(&day), written);
}

#[test]
fn a_stop_request_ends_the_pass_without_leaving_anything_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    i1.roll(&[(DAY, 2)]);
    i1.roll(&[(DAY, 2)]);
    let day = folder(&i1.options.root, "gavage_meals", DAY);
    let before = names(&day);
    let report = run_once(
        &i1.compact_options(),
        at("2026-01-22T00:00:00Z"),
        &AtomicBool::new(true),
    )
    .unwrap();
    assert!(report.stopped);
    assert_eq!(names(&day), before);
}

#[test]
fn retention_removes_old_partitions_of_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    let mut i2 = Instance::new(dir.path(), "i2");
    i1.roll(&[("2026-01-01", 2), ("2026-01-09", 2), ("2026-01-10", 2)]);
    i2.roll(&[("2026-01-01", 2)]);
    let root = i1.options.root.clone();
    // A write in progress in an expired partition (a late record for that day).
    let in_progress = folder(&root, "gavage_meals", "2026-01-09").join(".i2-wal-9.parquet.tmp");
    std::fs::write(&in_progress, b"half").unwrap();
    let options = CompactOptions {
        compact: false,
        retention_days: [("gavage_meals".to_string(), 10), ("dlq".to_string(), 1)]
            .into_iter()
            .collect(),
        ..i1.compact_options()
    };
    // The 20th, keeping 10 days: the 10th stays, the 9th and before go.
    let report = run_once(&options, at("2026-01-20T12:00:00Z"), &never()).unwrap();
    assert_eq!(report.removed_partitions, 1);
    assert_eq!(report.removed_files, 3);
    assert!(!root.join("gavage_meals/date=2026-01-01").exists());
    assert_eq!(
        names(&folder(&root, "gavage_meals", "2026-01-09")),
        [".i2-wal-9.parquet.tmp"],
        "the published file is gone, the file being written is not"
    );
    assert_eq!(
        visible(&folder(&root, "gavage_meals", "2026-01-10")).len(),
        1
    );
    std::fs::remove_file(&in_progress).unwrap();
    let report = run_once(&options, at("2026-01-20T12:00:00Z"), &never()).unwrap();
    assert_eq!((report.removed_partitions, report.removed_files), (1, 0));
    assert!(!root.join("gavage_meals/date=2026-01-09").exists());
}

#[test]
fn a_peer_completing_a_manifest_tolerates_renames_compaction_has_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    i1.roll(&[(DAY, 2)]);
    i1.roll(&[(DAY, 2)]);
    let root = i1.options.root.clone();
    let day = folder(&root, "gavage_meals", DAY);
    let last = visible(&day).pop().unwrap();
    // i1's manifest still names its last roll's rename; a hidden file of a later roll is
    // named too, as a roll that died between the manifest and its renames leaves it.
    let hidden = ".i1-wal-00000000000000000005.parquet.tmp";
    std::fs::write(day.join(hidden), b"complete file").unwrap();
    let relative = |name: &str| PathBuf::from(format!("gavage_meals/date={DAY}/site=LL/{name}"));
    manifest::write(
        &root,
        &manifest::Manifest {
            instance: "i1".into(),
            through: 5,
            renames: vec![
                (
                    relative(".i1-wal-00000000000000000003.parquet.tmp"),
                    relative(&last),
                ),
                (
                    relative(hidden),
                    relative("i1-wal-00000000000000000005-00000000000000000005.parquet"),
                ),
            ],
            kafka: [("t".to_string(), [(0, 41)].into_iter().collect())]
                .into_iter()
                .collect(),
        },
    )
    .unwrap();
    // The published LSN (4) leaves the unfinished roll's file alone once renamed.
    let report = run_once(&i1.compact_options(), at("2026-01-22T00:00:00Z"), &never()).unwrap();
    assert_eq!(report.compacted_files, 2);
    assert!(!day.join(&last).exists(), "compacted away");
    // A peer taking i1's partitions over finishes what the manifest names.
    let offsets = manifest::published_offsets(&root).unwrap();
    assert_eq!(offsets["t"][&0], 41);
    let left = visible(&day);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&"i1-wal-00000000000000000005-00000000000000000005.parquet".into()));
    // Done again (both sources gone): nothing to do, no error.
    manifest::published_offsets(&root).unwrap();
    let report = run_once(&i1.compact_options(), at("2026-01-22T00:00:00Z"), &never()).unwrap();
    assert_eq!(report.compacted_files, 0, "LSN 5 is not published yet");
}

#[test]
fn the_thread_compacts_every_interval_and_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut i1 = Instance::new(dir.path(), "i1");
    // Yesterday and before are closed, whatever today is.
    let yesterday = (Utc::now().date_naive() - chrono::Days::new(1)).to_string();
    let mut written = i1.roll(&[(&yesterday, 2)]);
    written.extend(i1.roll(&[(&yesterday, 2)]));
    let day = folder(&i1.options.root, "gavage_meals", &yesterday);
    let task = spawn(CompactOptions {
        compact_after: Duration::ZERO,
        interval: Duration::from_millis(20),
        ..i1.compact_options()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while visible(&day).len() != 1 || names(&day).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "not compacted: {:?}",
            names(&day)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(lots(&day), written);
    let stopping = Instant::now();
    task.stop();
    assert!(stopping.elapsed() < Duration::from_secs(2));
}
