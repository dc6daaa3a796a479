//! What the pipeline counts, by name (`GET /metrics`, Prometheus text). Counters that live on
//! a hot path are registered where they are counted (`gaveurs_telemetry::registry()`, e.g.
//! the intake's in `gaveurs_operators::intake::metrics`); the rest are read from their
//! components when scraped ([`register_components`]).

use std::sync::Arc;

use gaveurs_operators::anomalies::desk::{AnomalyDesk, ScoringCounters};
use gaveurs_sinks::sms::SmsService;
use gaveurs_sinks::websocket::Hub;
use gaveurs_telemetry::registry;

/// Gauges and counters read from their components at scrape time.
pub fn register_components(hub: &Arc<Hub>, sms: &Arc<SmsService>) {
    let metrics = registry();
    type Count = fn((usize, usize)) -> usize;
    let kinds: [(&str, Count); 2] = [("gaveur", |c| c.0), ("realtime", |c| c.1)];
    for (kind, count) in kinds {
        let clients = hub.clone();
        metrics.read_at_scrape(
            "gaveurs_ws_clients",
            "WebSocket clients connected, by kind (gaveur channels, dashboards).",
            &[("kind", kind)],
            move || count(clients.clients()) as f64,
        );
    }
    metrics.read_at_scrape(
        "gaveurs_log_lines_dropped_total",
        "Log lines not written because the logs dir could not take them (full disk).",
        &[],
        || crate::logs::file::LINES_DROPPED.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    let slow = hub.clone();
    metrics.read_at_scrape(
        "gaveurs_ws_slow_disconnects_total",
        "WebSocket clients closed (1013) for reading too slowly.",
        &[],
        move || slow.slow_disconnects() as f64,
    );
    type Read = fn(&gaveurs_sinks::sms::SmsCountersSnapshot) -> u64;
    let outcomes: [(&str, Read); 6] = [
        ("sent", |c| c.sent),
        ("failed", |c| c.failed),
        ("disabled", |c| c.disabled),
        ("dropped_budget", |c| c.dropped_budget),
        ("retried", |c| c.retried),
        ("expired", |c| c.expired),
    ];
    for (outcome, read) in outcomes {
        let sms = sms.clone();
        metrics.read_at_scrape(
            "gaveurs_sms_total",
            "Text messages by outcome: sent, failed (refused or given up), disabled (no credentials), dropped_budget, retried, expired (pending longer than [sms] max_age_s).",
            &[("outcome", outcome)],
            move || read(&sms.counters()) as f64,
        );
    }
    let sms = sms.clone();
    metrics.read_at_scrape(
        "gaveurs_sms_pending",
        "Text messages waiting in the outbox.",
        &[],
        move || sms.pending_len() as f64,
    );
}

/// The anomaly desk's counts since start.
pub fn register_anomalies(desk: &Arc<AnomalyDesk>) {
    let metrics = registry();
    type Count = fn(&ScoringCounters) -> u64;
    let by_model: [(&'static str, Count, Count); 2] = [
        ("gavage_meal", |c| c.scored, |c| c.anomalies),
        ("sqal_sample", |c| c.samples_scored, |c| c.sample_anomalies),
    ];
    for (model, scored, found) in by_model {
        let desk_scored = desk.clone();
        metrics.read_at_scrape(
            "gaveurs_ml_scored_total",
            "Records scored by the anomaly models since start, by model.",
            &[("model", model)],
            move || scored(&desk_scored.counters()) as f64,
        );
        let desk_found = desk.clone();
        metrics.read_at_scrape(
            "gaveurs_anomalies_total",
            "Records scored at or above their model's threshold since start, by model.",
            &[("model", model)],
            move || found(&desk_found.counters()) as f64,
        );
    }
}
