use std::time::Duration;

use chrono::Utc;
use gaveurs_schemas::dead_letter::{DeadLetter, RejectReason, Rejection};
use gaveurs_schemas::envelope::{Provenance, Transport};

use super::segment::segment_files;
use super::*;

fn dead(n: usize) -> WalEntry {
    WalEntry::DeadLetter(DeadLetter::new(
        &Rejection::new(RejectReason::NotJson, format!("entry {n}")),
        format!("payload {n}").as_bytes(),
        None,
        None,
        Provenance::new(Transport::Mqtt),
        Utc::now(),
    ))
}

fn reason(entry: &WalEntry) -> String {
    match entry {
        WalEntry::DeadLetter(d) => d.reason.clone(),
        WalEntry::Event(_) | WalEntry::Reread(_) => unreachable!(),
    }
}

fn open_with(options: WalOptions, floor: Lsn) -> (Wal, WalWriter) {
    Wal::open(options, floor).unwrap()
}

fn open(dir: &std::path::Path, floor: Lsn) -> (Wal, WalWriter) {
    open_with(WalOptions::new(dir.to_path_buf()), floor)
}

fn cursor(wal: &Wal, name: &str, after: Lsn, essential: bool) -> LogCursor {
    wal.cursor(CursorOptions {
        name: name.into(),
        after,
        essential,
    })
}

/// Everything the cursor can read until the log ends.
fn read_all(cursor: &mut LogCursor) -> Vec<Committed> {
    let mut all = Vec::new();
    loop {
        match cursor.next_batch(1000, Duration::from_secs(5)) {
            Ok(batch) => all.extend(batch),
            Err(LogEnded::Closed) => return all,
            Err(other) => panic!("cursor ended: {other}"),
        }
    }
}

/// Appends one entry at a time, each durable before the next (so each is its own group
/// commit, and small segments hold few entries).
async fn append_n(wal: &Wal, range: std::ops::Range<usize>) -> Lsn {
    let mut last = 0;
    for n in range {
        last = wal.append(dead(n)).await.unwrap();
        wal.durable(last).await.unwrap();
    }
    last
}

/// Writes `n` entries and closes the log (on a thread of its own, so tests of any kind can
/// call it).
fn write_log(dir: &std::path::Path, options: impl FnOnce(WalOptions) -> WalOptions, n: usize) {
    let options = options(WalOptions::new(dir.to_path_buf()));
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let (wal, writer) = open_with(options, 0);
                runtime.block_on(append_n(&wal, 0..n));
                writer.close();
            })
            .join()
            .unwrap();
    });
}

#[tokio::test]
async fn appended_entries_become_durable_in_order_and_a_cursor_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, writer) = open(dir.path(), 0);
    let mut reader = cursor(&wal, "test", 0, false);
    let last = append_n(&wal, 0..100).await;
    assert_eq!(last, 100);
    assert!(wal.durable_lsn() >= 100);
    writer.close();
    let lsns: Vec<Lsn> = read_all(&mut reader).iter().map(|c| c.lsn).collect();
    assert_eq!(lsns, (1..=100).collect::<Vec<_>>());
    assert!(
        wal.append(dead(0)).await.is_err(),
        "a closed log refuses appends"
    );
}

#[tokio::test]
async fn a_reopened_log_is_read_from_the_cursor_checkpoint_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), |o| o, 10);
    let (wal, writer) = open(dir.path(), 4);
    assert_eq!(wal.opened_at(), 10);
    let mut reader = cursor(&wal, "test", 4, false);
    assert_eq!(wal.append(dead(99)).await.unwrap(), 11);
    wal.durable(11).await.unwrap();
    writer.close();
    let read = read_all(&mut reader);
    let lsns: Vec<Lsn> = read.iter().map(|c| c.lsn).collect();
    assert_eq!(lsns, (5..=11).collect::<Vec<_>>());
    assert_eq!(reason(&read[0].entry), "entry 4");
    assert_eq!(reason(&read[6].entry), "entry 99");
}

#[tokio::test]
async fn a_cursor_behind_the_memory_tail_reads_the_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        tail_bytes: 300,
        segment_bytes: 2_000,
        ..WalOptions::new(dir.path().to_path_buf())
    };
    let (wal, writer) = open_with(options, 0);
    let mut slow = cursor(&wal, "slow", 0, true);
    append_n(&wal, 0..200).await;
    assert!(segment_files(dir.path()).len() > 5);
    writer.close();
    let read = read_all(&mut slow);
    let lsns: Vec<Lsn> = read.iter().map(|c| c.lsn).collect();
    assert_eq!(lsns, (1..=200).collect::<Vec<_>>());
    assert_eq!(reason(&read[150].entry), "entry 150");
}

#[tokio::test]
async fn a_cursor_that_never_reads_does_not_hold_up_appends() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        tail_bytes: 4096,
        max_pending_bytes: 4096,
        ..WalOptions::new(dir.path().to_path_buf())
    };
    let (wal, writer) = open_with(options, 0);
    let stalled = cursor(&wal, "stalled", 0, false);
    // Far more than the memory tail and the pending buffer together.
    let last = append_n(&wal, 0..5_000).await;
    assert_eq!(wal.durable_lsn(), last);
    let status = wal.cursors();
    assert_eq!(status[0].name, "stalled");
    assert_eq!(status[0].lag_entries, 5_000);
    assert!(status[0].lag_seconds >= 0.0);
    drop(stalled);
    writer.close();
}

#[tokio::test]
async fn segments_are_released_at_the_slowest_checkpoint_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 1,
        ..WalOptions::new(dir.path().to_path_buf())
    };
    let (wal, writer) = open_with(options, 0);
    let fast = cursor(&wal, "fast", 0, true);
    let slow = cursor(&wal, "slow", 0, false);
    append_n(&wal, 0..5).await;
    // One entry per segment, plus the fresh active one.
    assert_eq!(segment_files(dir.path()).len(), 6);
    fast.checkpoint(5);
    assert_eq!(
        segment_files(dir.path()).len(),
        6,
        "the slow cursor holds them"
    );
    slow.checkpoint(3);
    let left: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.first().unwrap(), &format!("{:020}.wal", 4));
    slow.checkpoint(1000);
    assert_eq!(segment_files(dir.path()).len(), 1);
    writer.close();
}

#[tokio::test]
async fn a_derived_cursor_past_the_retention_cap_skips_ahead_but_the_essential_one_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 1,
        tail_bytes: 1,
        max_retained_bytes: 600,
        ..WalOptions::new(dir.path().to_path_buf())
    };
    let (wal, writer) = open_with(options, 0);
    let essential = cursor(&wal, "parquet", 0, true);
    let mut lagging = cursor(&wal, "analytics", 0, false);
    append_n(&wal, 0..20).await;
    // The essential cursor holds everything while it has not checkpointed.
    lagging.checkpoint(0);
    assert_eq!(segment_files(dir.path()).len(), 21);
    essential.checkpoint(20);
    let kept = segment_files(dir.path()).len();
    assert!(
        kept < 21,
        "the cap released segments the lagging cursor had not read"
    );
    assert!(
        wal.disk_bytes() <= 600 + 200,
        "{} bytes kept",
        wal.disk_bytes()
    );
    writer.close();
    let read = read_all(&mut lagging);
    let first = read.first().unwrap().lsn;
    assert!(first > 1, "the lagging cursor skipped what was released");
    assert_eq!(read.last().unwrap().lsn, 20);
    let status = wal.cursors();
    let analytics = status.iter().find(|c| c.name == "analytics").unwrap();
    assert_eq!(analytics.skipped, first - 1);
}

#[tokio::test]
async fn numbering_survives_releasing_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), |o| o, 5);
    for file in segment_files(dir.path()) {
        std::fs::remove_file(file).unwrap();
    }
    let (wal, writer) = open(dir.path(), 5);
    assert_eq!(wal.append(dead(5)).await.unwrap(), 6);
    writer.close();
}

#[tokio::test]
async fn abandoned_cursors_stop_at_their_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, writer) = open(dir.path(), 0);
    let mut reader = cursor(&wal, "late", 0, false);
    append_n(&wal, 0..10).await;
    wal.abandon_cursors();
    assert_eq!(
        reader.next_batch(100, Duration::from_secs(5)).unwrap_err(),
        LogEnded::Abandoned
    );
    writer.close();
}

#[test]
fn a_torn_tail_of_the_newest_segment_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), |o| o, 3);
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = bytes.len();
    // Half of a fourth frame, as a crash mid-write would leave it.
    let mut partial = Vec::new();
    segment::frame(&mut partial, 4, b"{\"entry\":\"dead_letter\"}");
    bytes.extend_from_slice(&partial[..partial.len() / 2]);
    std::fs::write(&segment, &bytes).unwrap();
    let (wal, writer) = open(dir.path(), 0);
    assert_eq!(wal.opened_at(), 3);
    assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, whole);
    drop(wal);
    writer.close();
}

/// Flips one byte of the frame holding `lsn` (in its payload).
fn flip_payload_byte(dir: &std::path::Path, lsn: Lsn) -> (std::path::PathBuf, u64) {
    for path in segment_files(dir) {
        let mut bytes = std::fs::read(&path).unwrap();
        let scan = segment::scan(&bytes);
        if let Some(frame) = scan.frames.iter().find(|f| f.lsn == lsn) {
            bytes[frame.start + segment::HEADER + 5] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            return (path, frame.start as u64);
        }
    }
    panic!("no frame {lsn}");
}

fn damage_of(dir: &std::path::Path) -> Damage {
    match Wal::open(WalOptions::new(dir.to_path_buf()), 0) {
        Err(SegmentError::Damaged(damage)) => damage,
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a damaged log opened"),
    }
}

#[test]
fn a_flipped_byte_in_a_closed_segment_refuses_to_open_and_names_the_place() {
    let dir = tempfile::tempdir().unwrap();
    write_log(
        dir.path(),
        |o| WalOptions {
            segment_bytes: 1_000,
            ..o
        },
        40,
    );
    let before: Vec<Vec<u8>> = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let (path, offset) = flip_payload_byte(dir.path(), 3);
    let damage = damage_of(dir.path());
    assert_eq!(damage.path, path);
    assert_eq!(damage.offset, offset);
    assert_eq!(damage.entries_after, 37);
    let message = damage.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("gaveurs log salvage"), "{message}");
    // Nothing was cut.
    let after: Vec<usize> = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap().len())
        .collect();
    assert_eq!(after, before.iter().map(Vec::len).collect::<Vec<_>>());
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_newest_segment_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), |o| o, 10);
    flip_payload_byte(dir.path(), 5);
    assert_eq!(damage_of(dir.path()).entries_after, 5);
}

#[test]
fn a_flipped_byte_in_the_last_whole_frame_is_damage_too() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), |o| o, 10);
    flip_payload_byte(dir.path(), 10);
    let damage = damage_of(dir.path());
    assert_eq!(damage.entries_after, 0);
}

#[tokio::test]
async fn salvage_keeps_every_readable_entry_and_quarantines_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    write_log(
        dir.path(),
        |o| WalOptions {
            segment_bytes: 1_000,
            ..o
        },
        40,
    );
    let (path, offset) = flip_payload_byte(dir.path(), 3);
    let report = salvage::salvage(dir.path()).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    let bad = &report.quarantined[0];
    assert_eq!(bad.segment, path);
    assert_eq!(bad.offset, offset);
    assert_eq!((bad.lsn_before, bad.lsn_after), (Some(2), Some(4)));
    assert_eq!(std::fs::read(&bad.saved_to).unwrap(), bad.bytes);
    assert_eq!(report.entries_kept, 39);
    let (wal, writer) = open(dir.path(), 0);
    let mut reader = cursor(&wal, "after-salvage", 0, true);
    writer.close();
    let lsns: Vec<Lsn> = read_all(&mut reader).iter().map(|c| c.lsn).collect();
    let expected: Vec<Lsn> = (1..=40).filter(|l| *l != 3).collect();
    assert_eq!(lsns, expected);
}
