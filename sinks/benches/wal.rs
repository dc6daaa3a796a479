//! Durable log throughput: N concurrent appenders, each waiting for durability before its
//! next append (like a producer that waits for every PUBACK) or keeping a window in flight.
//! Measures entries/s through group commit on the machine's real disk.

use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use gaveurs_schemas::dead_letter::{DeadLetter, RejectReason, Rejection};
use gaveurs_schemas::envelope::{Provenance, Transport};
use gaveurs_sinks::wal::{CursorOptions, Wal, WalEntry, WalOptions};

fn entry() -> WalEntry {
    WalEntry::DeadLetter(DeadLetter::new(
        &Rejection::new(
            RejectReason::SchemaInvalid,
            "dose_reelle: must be ≥ 0 (got -1)",
        ),
        br#"{"code_lot":"LL2601001","gaveur_id":1,"site":"LL","jour":3,"moment":"matin"}"#,
        None,
        Some("LL".into()),
        Provenance::new(Transport::Mqtt),
        Utc::now(),
    ))
}

fn run(appenders: usize, window: usize, per_appender: usize) -> Duration {
    let dir = tempfile::tempdir_in(".").unwrap();
    let (wal, writer) = Wal::open(WalOptions::new(dir.path().into()), 0).unwrap();
    // One consumer reading everything through its cursor, as the Parquet sink does.
    let mut cursor = wal.cursor(CursorOptions {
        name: "bench".into(),
        after: 0,
        essential: true,
    });
    let drain = std::thread::spawn(move || {
        let mut read = 0;
        while let Ok(batch) = cursor.next_batch(4096, Duration::from_secs(1)) {
            read += batch.len();
            if let Some(last) = batch.last() {
                cursor.checkpoint(last.lsn);
            }
        }
        read
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    let mut inflight = std::collections::VecDeque::new();
                    for _ in 0..per_appender {
                        let lsn = wal.append(entry()).await.unwrap();
                        inflight.push_back(wal.durable(lsn));
                        if inflight.len() >= window {
                            inflight.pop_front().unwrap().await.unwrap();
                        }
                    }
                    for ticket in inflight {
                        ticket.await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    writer.close();
    drain.join().unwrap();
    elapsed
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit");
    group.sample_size(10);
    for (appenders, window) in [(1, 1), (16, 1), (4, 256)] {
        let per = 2000;
        group.throughput(criterion::Throughput::Elements((appenders * per) as u64));
        group.bench_function(format!("{appenders}_appenders_window_{window}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(appenders, window, per)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
