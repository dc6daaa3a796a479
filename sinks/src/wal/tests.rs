use std::sync::mpsc;

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
        WalEntry::Event(_) => unreachable!(),
    }
}

fn open(
    dir: &std::path::Path,
    published: Lsn,
) -> (
    Wal,
    WalWriter,
    Recovered,
    mpsc::Receiver<Arc<Vec<Committed>>>,
) {
    let (tx, rx) = mpsc::sync_channel(1024);
    let (wal, writer, recovered) =
        Wal::open(WalOptions::new(dir.to_path_buf()), published, vec![tx]).unwrap();
    (wal, writer, recovered, rx)
}

#[tokio::test]
async fn appended_entries_become_durable_in_order_and_flow_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, writer, recovered, rx) = open(dir.path(), 0);
    assert!(recovered.entries.is_empty());
    let mut last = 0;
    for n in 0..100 {
        last = wal.append(dead(n)).await.unwrap();
    }
    assert_eq!(last, 100);
    wal.durable(last).await.unwrap();
    assert!(wal.durable_lsn() >= 100);
    writer.close();
    let lsns: Vec<Lsn> = rx
        .iter()
        .flat_map(|b| b.iter().map(|c| c.lsn).collect::<Vec<_>>())
        .collect();
    assert_eq!(lsns, (1..=100).collect::<Vec<_>>());
    assert!(
        wal.append(dead(0)).await.is_err(),
        "a closed log refuses appends"
    );
}

#[tokio::test]
async fn reopening_returns_unpublished_entries_and_continues_numbering() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, writer, _, _rx) = open(dir.path(), 0);
        for n in 0..10 {
            wal.append(dead(n)).await.unwrap();
        }
        writer.close();
    }
    let (wal, writer, recovered, _rx) = open(dir.path(), 4);
    let lsns: Vec<Lsn> = recovered.entries.iter().map(|c| c.lsn).collect();
    assert_eq!(lsns, (5..=10).collect::<Vec<_>>());
    assert_eq!(reason(&recovered.entries[0].entry), "entry 4");
    assert_eq!(wal.append(dead(99)).await.unwrap(), 11);
    writer.close();
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, writer, _, _rx) = open(dir.path(), 0);
        for n in 0..3 {
            wal.append(dead(n)).await.unwrap();
        }
        writer.close();
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = bytes.len();
    // Half of a fourth frame, as a crash mid-write would leave it.
    let mut partial = Vec::new();
    segment::frame(&mut partial, 4, b"{\"entry\":\"dead_letter\"}");
    bytes.extend_from_slice(&partial[..partial.len() / 2]);
    std::fs::write(&segment, &bytes).unwrap();
    let (wal, writer, recovered, _rx) = open(dir.path(), 0);
    assert_eq!(recovered.entries.len(), 3);
    assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, whole);
    assert_eq!(wal.append(dead(3)).await.unwrap(), 4);
    writer.close();
}

#[tokio::test]
async fn a_flipped_bit_ends_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, writer, _, _rx) = open(dir.path(), 0);
        for n in 0..3 {
            wal.append(dead(n)).await.unwrap();
        }
        writer.close();
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let (_wal, writer, recovered, _rx) = open(dir.path(), 0);
    assert_eq!(recovered.entries.len(), 2);
    writer.close();
}

#[tokio::test]
async fn released_segments_are_deleted_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::sync_channel(1024);
    let options = WalOptions {
        segment_bytes: 1,
        ..WalOptions::new(dir.path().to_path_buf())
    };
    let (wal, writer, _) = Wal::open(options, 0, vec![tx]).unwrap();
    for n in 0..5 {
        let lsn = wal.append(dead(n)).await.unwrap();
        wal.durable(lsn).await.unwrap();
    }
    // One entry per segment, plus the fresh active one.
    assert_eq!(segment_files(dir.path()).len(), 6);
    wal.release_through(3);
    let left: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.first().unwrap(), &format!("{:020}.wal", 4));
    wal.release_through(1000);
    assert_eq!(segment_files(dir.path()).len(), 1);
    writer.close();
}

#[tokio::test]
async fn numbering_survives_releasing_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, writer, _, _rx) = open(dir.path(), 0);
        for n in 0..5 {
            wal.append(dead(n)).await.unwrap();
        }
        writer.close();
    }
    for file in segment_files(dir.path()) {
        std::fs::remove_file(file).unwrap();
    }
    let (wal, writer, recovered, _rx) = open(dir.path(), 5);
    assert!(recovered.entries.is_empty());
    assert_eq!(wal.append(dead(5)).await.unwrap(), 6);
    writer.close();
}
