//! `gaveurs log salvage`: what an operator runs when `gaveurs run` refuses to start because
//! the durable log is damaged. Every readable entry stays in the log (the next start
//! publishes the unpublished ones); each unreadable range goes to a quarantine file beside
//! the log and becomes a `dlq` row (stage `log`, reason `log_damaged`), so the loss is
//! visible to analysts and nothing is silently dropped.

use std::path::Path;

use anyhow::Context;
use chrono::Utc;
use gaveurs_schemas::DeadLetter;
use gaveurs_schemas::datasets::{self, Partition};
use gaveurs_schemas::dead_letter::{RejectReason, Rejection};
use gaveurs_schemas::envelope::{Provenance, Transport};
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::wal::salvage::{self, Quarantined};

use crate::config::Config;
use crate::run::Paths;

/// Salvages this working directory's instance log; returns what to tell the operator.
pub fn run(config: &Config, working_dir: &Path) -> anyhow::Result<String> {
    let instance_id = crate::instance::resolve(config, working_dir)?;
    let paths = Paths::new(config, &instance_id);
    let wal_dir = paths.instance_dir.join("wal");
    if !wal_dir.is_dir() {
        anyhow::bail!("no durable log at {}", wal_dir.display());
    }
    let report =
        salvage::salvage(&wal_dir).with_context(|| format!("salvaging {}", wal_dir.display()))?;
    if report.quarantined.is_empty() {
        return Ok(format!(
            "{}: {} segments, {} entries, nothing damaged",
            wal_dir.display(),
            report.segments,
            report.entries_kept
        ));
    }
    let now = Utc::now();
    let rows: Vec<DeadLetter> = report
        .quarantined
        .iter()
        .map(|bad| dead_letter(bad, now))
        .collect();
    let mut writer = DerivedWriter::new(paths.parquet_root.clone(), instance_id);
    let refs: Vec<&DeadLetter> = rows.iter().collect();
    writer.append(
        datasets::Dataset::Dlq.name(),
        Partition::of_dead_letter(&rows[0]),
        datasets::dead_letters_to_batch(&refs)?,
    );
    writer
        .flush_named(&format!("salvage-{}", now.timestamp_millis()))
        .context("writing the dlq rows of the damaged ranges")?;
    let mut text = format!(
        "{}: kept {} readable entries; {} damaged ranges quarantined and dead-lettered (dlq, reason log_damaged):",
        wal_dir.display(),
        report.entries_kept,
        report.quarantined.len()
    );
    for bad in &report.quarantined {
        text.push_str(&format!("\n  {}", describe(bad)));
    }
    Ok(text)
}

fn describe(bad: &Quarantined) -> String {
    let around = match (bad.lsn_before, bad.lsn_after) {
        (Some(before), Some(after)) => format!("between entries {before} and {after}"),
        (Some(before), None) => format!("after entry {before}"),
        (None, Some(after)) => format!("before entry {after}"),
        (None, None) => "no readable entry around it".to_string(),
    };
    format!(
        "{} bytes at byte {} of {} ({around}), saved to {}",
        bad.bytes.len(),
        bad.offset,
        bad.segment.display(),
        bad.saved_to.display()
    )
}

fn dead_letter(bad: &Quarantined, now: chrono::DateTime<Utc>) -> DeadLetter {
    let rejection = Rejection::new(
        RejectReason::LogDamaged,
        format!("unreadable durable-log bytes: {}", describe(bad)),
    );
    let provenance = Provenance {
        topic: Some(bad.segment.display().to_string()),
        offset: Some(bad.offset as i64),
        ..Provenance::new(Transport::Log)
    };
    DeadLetter::new(&rejection, &bad.bytes, None, None, provenance, now)
}
