//! The intake's counters: records in, duplicates, refusals and dead-letter rows.

use gaveurs_schemas::{StreamKind, Transport};
use gaveurs_telemetry::registry;

/// An accepted record (not a duplicate), by stream and transport.
pub fn record_accepted(stream: StreamKind, transport: Transport) {
    registry()
        .counter(
            "gaveurs_records_in_total",
            "Records accepted, by stream and transport (duplicates not counted).",
            &[
                ("stream", stream.as_str()),
                ("transport", transport.as_str()),
            ],
        )
        .inc();
}

/// A record seen before (its idempotency key), acknowledged and not stored again.
pub fn record_duplicate(stream: StreamKind) {
    registry()
        .counter(
            "gaveurs_records_duplicate_total",
            "Records already stored, acknowledged without a second row.",
            &[("stream", stream.as_str())],
        )
        .inc();
}

/// A refused input: its reason, and its dead-letter row.
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
