//! The ledger: entries appended per second (hashing, signing, one write and one fsync a batch
//! of 1,000, as the ledger desk appends a batch of records' events), and entries verified per
//! second by `gaveurs ledger verify` (parse, hash, link, signature) over a 20,000-entry chain.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gaveurs_operators::ledger::chain::ChainWriter;
use gaveurs_operators::ledger::entry::{EntryKind, Event};
use gaveurs_operators::ledger::keys::KeyStore;
use gaveurs_operators::ledger::verify::verify_chain;
use serde_json::json;

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            time: "2026-01-20T10:00:00.000Z".into(),
            kind: EntryKind::DayClosed,
            code_lot: Some(format!("LL{:07}", i % 2295)),
            device_id: None,
            payload: json!({
                "jour": i % 12 + 1, "repas": 2, "dose_theorique_g": 640.0,
                "dose_reelle_g": 633.5, "ecart_pct": -1.02, "poids_moyen_g": null,
                "taux_mortalite": null,
            }),
        })
        .collect()
}

fn ledger(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger");
    let root = tempfile::tempdir().unwrap();
    let keys = KeyStore::new(root.path().join("keys"));
    let (mut writer, _) = ChainWriter::open(&root.path().join("ledger"), "local", &keys).unwrap();
    group.throughput(Throughput::Elements(1000));
    group.bench_function("append_1000_signed_fsynced", |b| {
        b.iter_batched(
            || events(1000),
            |batch| black_box(writer.append(batch).unwrap()),
            BatchSize::SmallInput,
        )
    });
    drop(writer);

    let verified = tempfile::tempdir().unwrap();
    let keys = KeyStore::new(verified.path().join("keys"));
    let (mut writer, _) =
        ChainWriter::open(&verified.path().join("ledger"), "local", &keys).unwrap();
    for _ in 0..20 {
        writer.append(events(1000)).unwrap();
    }
    drop(writer);
    let chain = verified.path().join("ledger/local");
    group.throughput(Throughput::Elements(20_001));
    group.sample_size(10);
    group.bench_function("verify_20001", |b| {
        b.iter(|| black_box(verify_chain("local", &chain, |_| {}).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, ledger);
criterion_main!(benches);
