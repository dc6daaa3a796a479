//! What the pipeline counts, by name (`GET /metrics`, Prometheus text). Counters that live on
//! a hot path are registered where they are counted (`gaveurs_schemas::metrics::registry()`);
//! the rest are read from their components when scraped ([`register_components`]).

use std::sync::Arc;

use gaveurs_schemas::metrics::registry;
use gaveurs_schemas::{StreamKind, Transport};
use gaveurs_sinks::sms::SmsService;
use gaveurs_sinks::websocket::Hub;

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

/// Gauges and counters read from their components at scrape time.
pub fn register_components(hub: &Arc<Hub>, sms: &Arc<SmsService>) {
    let metrics = registry();
    type Count = fn((usize, usize)) -> usize;
    let kinds: [(&str, Count); 2] = [("gaveur", |c| c.0), ("realtime", |c| c.1)];
    for (kind, count) in kinds {
        let clients = hub.clone();
        metrics.gauge_fn(
            "gaveurs_ws_clients",
            "WebSocket clients connected, by kind (gaveur channels, dashboards).",
            &[("kind", kind)],
            move || count(clients.clients()) as f64,
        );
    }
    let slow = hub.clone();
    metrics.gauge_fn(
        "gaveurs_ws_slow_disconnects_total",
        "WebSocket clients closed (1013) for reading too slowly.",
        &[],
        move || slow.slow_disconnects() as f64,
    );
    type Read = fn(&gaveurs_sinks::sms::SmsCountersSnapshot) -> u64;
    let outcomes: [(&str, Read); 5] = [
        ("sent", |c| c.sent),
        ("failed", |c| c.failed),
        ("disabled", |c| c.disabled),
        ("dropped_budget", |c| c.dropped_budget),
        ("retried", |c| c.retried),
    ];
    for (outcome, read) in outcomes {
        let sms = sms.clone();
        metrics.gauge_fn(
            "gaveurs_sms_total",
            "Text messages by outcome: sent, failed (refused or given up), disabled (no credentials), dropped_budget, retried.",
            &[("outcome", outcome)],
            move || read(&sms.counters()) as f64,
        );
    }
    let sms = sms.clone();
    metrics.gauge_fn(
        "gaveurs_sms_pending",
        "Text messages waiting in the outbox.",
        &[],
        move || sms.pending_len() as f64,
    );
}

pub fn render() -> String {
    registry().render()
}
