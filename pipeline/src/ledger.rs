//! `gaveurs ledger …`: checks a data dir's chains offline.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use gaveurs_operators::ledger::chain::chains;
use gaveurs_operators::ledger::verify::verify_chain;

/// Verifies every chain under `data_dir/ledger`; the report, or the first bad entry.
pub fn verify(data_dir: &Path) -> anyhow::Result<String> {
    let ledger_dir = data_dir.join("ledger");
    let found = chains(&ledger_dir)?;
    anyhow::ensure!(
        !found.is_empty(),
        "no ledger chain under {} (a pipeline writes one from its first start)",
        ledger_dir.display()
    );
    let started = Instant::now();
    let mut report = String::new();
    let mut total = 0;
    for (name, dir) in &found {
        let chain = verify_chain(name, dir, |_| {})?;
        total += chain.entries;
        let keys: Vec<&str> = chain.keys.iter().map(|k| k.key_id.as_str()).collect();
        writeln!(
            report,
            "chain {name}: {} entries verified, head {} {}, keys {}",
            chain.entries,
            chain.head_seq,
            chain.head_hash,
            keys.join(" → ")
        )?;
        if let Some((file, bytes)) = &chain.torn_tail {
            writeln!(
                report,
                "chain {name}: {} ends with {bytes} bytes of an entry a crash left half written (never acknowledged; the next start cuts it off)",
                file.display()
            )?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    write!(
        report,
        "ledger ok: {total} entries in {} chain(s) verified in {seconds:.2} s ({:.0} entries/s)",
        found.len(),
        total as f64 / seconds.max(1e-9)
    )?;
    Ok(report)
}
