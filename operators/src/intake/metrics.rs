//! The intake's counters: records in, duplicates, refusals and dead-letter rows. The counters
//! of accepted records are resolved once for every stream and transport, so counting one is
//! an atomic add: no label set is built per record.

use std::sync::OnceLock;

use gaveurs_schemas::{StreamKind, Transport};
use gaveurs_telemetry::{Counter, registry};

struct PerRecord {
    /// By `StreamKind::ALL`, then `Transport::ALL`.
    accepted: Vec<Vec<Counter>>,
    duplicate: Vec<Counter>,
}

fn per_record() -> &'static PerRecord {
    static COUNTERS: OnceLock<PerRecord> = OnceLock::new();
    COUNTERS.get_or_init(|| PerRecord {
        accepted: StreamKind::ALL
            .iter()
            .map(|stream| {
                Transport::ALL
                    .iter()
                    .map(|transport| {
                        registry().counter(
                            "gaveurs_records_in_total",
                            "Records accepted, by stream and transport (duplicates not counted).",
                            &[
                                ("stream", stream.as_str()),
                                ("transport", transport.as_str()),
                            ],
                        )
                    })
                    .collect()
            })
            .collect(),
        duplicate: StreamKind::ALL
            .iter()
            .map(|stream| {
                registry().counter(
                    "gaveurs_records_duplicate_total",
                    "Records already stored, acknowledged without a second row.",
                    &[("stream", stream.as_str())],
                )
            })
            .collect(),
    })
}

fn index<T: PartialEq>(all: &[T], item: T) -> usize {
    all.iter()
        .position(|x| *x == item)
        .expect("ALL lists every variant")
}

/// An accepted record (not a duplicate), by stream and transport.
pub fn record_accepted(stream: StreamKind, transport: Transport) {
    per_record().accepted[index(&StreamKind::ALL, stream)][index(&Transport::ALL, transport)].inc();
}

/// A record seen before (its idempotency key), acknowledged and not stored again.
pub fn record_duplicate(stream: StreamKind) {
    per_record().duplicate[index(&StreamKind::ALL, stream)].inc();
}

/// A refused input: its reason, and its dead-letter row. (Refusals are the exception: their
/// counters are looked up by label.)
pub fn record_rejected(reason: &str, stage: &str) {
    let metrics = registry();
    metrics
        .counter(
            "gaveurs_records_rejected_total",
            "Inputs refused, by reason.",
            &[("reason", reason)],
        )
        .inc();
    metrics
        .counter(
            "gaveurs_dlq_rows_total",
            "Dead-letter rows written, by stage.",
            &[("stage", stage)],
        )
        .inc();
}
