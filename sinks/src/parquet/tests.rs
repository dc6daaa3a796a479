use std::thread::JoinHandle;

use crate::wal::{CursorOptions, Wal, WalOptions, WalWriter};

use chrono::Utc;
use gaveurs_schemas::envelope::{Provenance, Transport};
use gaveurs_schemas::records::{GavageMeal, Record};
use gaveurs_schemas::time::SiteTimeZones;
use gaveurs_schemas::{DeadLetter, Event, RejectReason};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

fn meal(jour: i64) -> WalEntry {
    let record = Record::Gavage(
        GavageMeal::decode(
            serde_json::json!({"code_lot": "LL1", "gaveur_id": 1, "site": "LL", "jour": jour,
                "moment": "matin", "dose_theorique": 200, "dose_reelle": 190,
                "timestamp": "2026-01-20T08:00:00"})
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

fn dead() -> WalEntry {
    WalEntry::DeadLetter(DeadLetter::new(
        &gaveurs_schemas::dead_letter::Rejection::new(RejectReason::NotJson, "x"),
        b"{",
        None,
        Some("LL".into()),
        Provenance::new(Transport::Mqtt),
        Utc::now(),
    ))
}

fn options(dir: &Path) -> ParquetOptions {
    ParquetOptions {
        root: dir.join("parquet"),
        state_dir: dir.join("instances/i1/parquet"),
        instance_id: "i1".into(),
        roll_interval: Duration::from_secs(3600),
        max_rows_per_roll: 1_000_000,
    }
}

fn published_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rows_in(path: &Path) -> usize {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum()
}

/// The sink running on its own thread, reading a real log through its cursor.
struct Running {
    wal: Wal,
    writer: Option<WalWriter>,
    sink: JoinHandle<Result<(), SinkError>>,
    keys: Arc<parking_lot::Mutex<Vec<DedupKey>>>,
}

impl Running {
    fn start(dir: &Path, options: ParquetOptions, control: Arc<RollControl>) -> Running {
        let state = recover(&options).unwrap();
        let (wal, writer) =
            Wal::open(WalOptions::new(dir.join("wal")), state.published_through).unwrap();
        let cursor = wal.cursor(CursorOptions {
            name: "parquet".into(),
            after: state.published_through,
            essential: true,
        });
        let keys = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = {
            let keys = keys.clone();
            std::thread::spawn(move || {
                run(
                    options,
                    &state,
                    cursor,
                    control,
                    Box::new(move |published| {
                        keys.lock().extend_from_slice(published);
                        Ok(())
                    }),
                )
            })
        };
        Running {
            wal,
            writer: Some(writer),
            sink,
            keys,
        }
    }

    async fn append(&self, entries: impl IntoIterator<Item = WalEntry>) -> Lsn {
        let mut last = 0;
        for entry in entries {
            last = self.wal.append(entry).await.unwrap();
        }
        self.wal.durable(last).await.unwrap();
        last
    }

    /// Closes the log; the sink publishes everything and ends.
    fn finish(mut self) -> Vec<DedupKey> {
        self.writer.take().unwrap().close();
        self.sink.join().unwrap().unwrap();
        self.keys.lock().clone()
    }
}

#[tokio::test]
async fn entries_are_published_per_dataset_and_partition_when_the_log_ends() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    let running = Running::start(dir.path(), options.clone(), RollControl::new(0));
    running
        .append((1..=5001).map(|n| meal(n as i64)).chain([dead()]))
        .await;
    let keys = running.finish();
    assert_eq!(
        keys.len(),
        5001,
        "the dedup index is told every record's key"
    );
    let files = published_files(&options.root);
    assert_eq!(files.len(), 2);
    let meals = files
        .iter()
        .find(|p| p.to_string_lossy().contains("gavage_meals"))
        .unwrap();
    assert!(meals.ends_with(format!(
        "gavage_meals/date=2026-01-20/site=LL/i1-wal-{:020}-{:020}.parquet",
        1, 5001
    )));
    assert_eq!(rows_in(meals), 5001);
    let state = recover(&options).unwrap();
    assert_eq!(state.published_through, 5002);
}

#[tokio::test]
async fn a_restarted_sink_publishes_what_the_log_holds_after_the_published_position() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    let running = Running::start(dir.path(), options.clone(), RollControl::new(0));
    running.append((1..=10).map(meal)).await;
    running.finish();
    // Entries logged after that (as a crash before their roll leaves them).
    {
        let (wal, writer) = Wal::open(WalOptions::new(dir.path().join("wal")), 10).unwrap();
        for n in 11..=15 {
            wal.append(meal(n)).await.unwrap();
        }
        wal.durable(15).await.unwrap();
        writer.close();
    }
    let running = Running::start(dir.path(), options.clone(), RollControl::new(10));
    assert_eq!(running.finish().len(), 5);
    let rows: usize = published_files(&options.root)
        .iter()
        .map(|f| rows_in(f))
        .sum();
    assert_eq!(rows, 15);
}

#[test]
fn an_interrupted_roll_is_finished_and_stale_temp_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    recover(&options).unwrap();
    // A completed hidden file named by an intent, as a crash between steps 3 and 4 leaves it.
    let partition = options.root.join("dlq/date=2026-01-20/site=LL");
    std::fs::create_dir_all(&partition).unwrap();
    let tmp = partition.join(".i1-wal-00000000000000000001.parquet.tmp");
    std::fs::write(&tmp, b"complete file").unwrap();
    let published = partition.join("i1-wal-00000000000000000001-00000000000000000009.parquet");
    state::write(
        &options,
        &state::State {
            published_through: 0,
            rolling: Some(state::Rolling::new(
                &options.root,
                9,
                &[(tmp.clone(), published.clone())],
            )),
        },
    )
    .unwrap();
    // A stray hidden file of this instance, and one of another instance.
    let stray = partition.join(".i1-wal-00000000000000000010.parquet.tmp");
    std::fs::write(&stray, b"half").unwrap();
    let foreign = partition.join(".i2-wal-00000000000000000010.parquet.tmp");
    std::fs::write(&foreign, b"not mine").unwrap();

    let state = recover(&options).unwrap();
    assert_eq!(state.published_through, 9);
    assert_eq!(state.stale_removed, 1);
    assert!(published.exists() && !tmp.exists());
    assert!(!stray.exists());
    assert!(
        foreign.exists(),
        "another instance's temp file is not ours to delete"
    );
}

#[tokio::test]
async fn a_timer_roll_publishes_without_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let options = ParquetOptions {
        roll_interval: Duration::from_millis(50),
        ..options(dir.path())
    };
    let control = RollControl::new(0);
    let running = Running::start(dir.path(), options.clone(), control.clone());
    running.append([meal(1)]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while control.published() < 1 {
        assert!(Instant::now() < deadline, "no roll within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(published_files(&options.root).len(), 1);
    running.finish();
}

fn from_kafka(jour: i64, partition: i32, offset: i64) -> WalEntry {
    let mut entry = meal(jour);
    if let WalEntry::Event(event) = &mut entry {
        event.envelope.provenance = Provenance {
            topic: Some("gaveurs.gavage.v1".into()),
            partition: Some(partition),
            offset: Some(offset),
            ..Provenance::new(Transport::Kafka)
        };
    }
    entry
}

#[tokio::test]
async fn a_requested_roll_publishes_early_and_the_manifest_names_the_kafka_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    let control = RollControl::new(0);
    let running = Running::start(dir.path(), options.clone(), control.clone());
    running
        .append([
            from_kafka(1, 0, 41),
            from_kafka(2, 1, 7),
            from_kafka(3, 0, 42),
            meal(4),
        ])
        .await;
    // The roll interval is an hour: only the request can publish this.
    let asked = control.clone();
    assert!(
        tokio::task::spawn_blocking(move || asked.publish_through(4, Duration::from_secs(10)))
            .await
            .unwrap()
    );
    assert_eq!(published_files(&options.root).len(), 1);
    let offsets = manifest::published_offsets(&options.root).unwrap();
    assert_eq!(offsets["gaveurs.gavage.v1"][&0], 42);
    assert_eq!(offsets["gaveurs.gavage.v1"][&1], 7);

    // Offsets are cumulative: a later roll without partition 1 still names it.
    running.append([from_kafka(5, 0, 43)]).await;
    let asked = control.clone();
    assert!(
        tokio::task::spawn_blocking(move || asked.publish_through(5, Duration::from_secs(10)))
            .await
            .unwrap()
    );
    let offsets = manifest::published_offsets(&options.root).unwrap();
    assert_eq!(offsets["gaveurs.gavage.v1"][&0], 43);
    assert_eq!(offsets["gaveurs.gavage.v1"][&1], 7);
    running.finish();
    assert_eq!(recover(&options).unwrap().kafka, offsets);
}

#[test]
fn a_peer_finishes_a_roll_its_manifest_names() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    let hidden = options.root.join("gavage_meals/.i1-wal-1.parquet.tmp");
    std::fs::create_dir_all(hidden.parent().unwrap()).unwrap();
    std::fs::write(&hidden, b"complete file").unwrap();
    manifest::write(
        &options.root,
        &manifest::Manifest {
            instance: "i1".into(),
            through: 9,
            renames: vec![(
                "gavage_meals/.i1-wal-1.parquet.tmp".into(),
                "gavage_meals/i1-wal-1-9.parquet".into(),
            )],
            kafka: [("t".to_string(), [(0, 99)].into_iter().collect())]
                .into_iter()
                .collect(),
        },
    )
    .unwrap();
    // Another instance reading the offsets publishes the dead instance's files first.
    let offsets = manifest::published_offsets(&options.root).unwrap();
    assert_eq!(offsets["t"][&0], 99);
    assert!(!hidden.exists());
    assert!(
        options
            .root
            .join("gavage_meals/i1-wal-1-9.parquet")
            .exists()
    );
    // And the instance itself, restarting, adopts the roll.
    assert_eq!(recover(&options).unwrap().published_through, 9);
}
