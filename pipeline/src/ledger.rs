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

/// Writes `code_lot`'s certificate to `out` (standard output if `None`).
pub fn certificate(data_dir: &Path, code_lot: &str, out: Option<&Path>) -> anyhow::Result<String> {
    let certificate =
        gaveurs_operators::ledger::certificate::export(&data_dir.join("ledger"), code_lot)?;
    let bytes = certificate.to_bytes();
    match out {
        Some(path) => {
            std::fs::write(path, &bytes)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            Ok(format!(
                "{}: certificate of lot {code_lot}, {} entries, chain {} at entry {}\n{}",
                path.display(),
                certificate.entries.len(),
                certificate.chain,
                certificate.head.seq,
                certificate.url
            ))
        }
        None => Ok(String::from_utf8(bytes)?.trim_end().to_string()),
    }
}

/// Checks a certificate file offline.
pub fn verify_certificate(path: &Path) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let checked = gaveurs_operators::ledger::certificate::check(&bytes)
        .map_err(|why| anyhow::anyhow!("{}: certificate refused: {why}", path.display()))?;
    Ok(format!(
        "{}: certificate ok: lot {}, {} entries of chain {} up to entry {}, keys {}",
        path.display(),
        checked.code_lot,
        checked.entries,
        checked.chain,
        checked.head_seq,
        checked.keys.join(" → ")
    ))
}

/// Appends a key rotation to `chain`: a new key in `keys_dir`, introduced by an entry signed
/// with the current one. The pipeline must be stopped (it holds the chain's lock).
pub fn rotate_key(data_dir: &Path, keys_dir: &Path, chain: &str) -> anyhow::Result<String> {
    use gaveurs_operators::ledger::chain::{ChainWriter, Opened, now};
    use gaveurs_operators::ledger::keys::KeyStore;
    let ledger_dir = data_dir.join("ledger");
    anyhow::ensure!(
        ledger_dir.join(chain).is_dir(),
        "no ledger chain {chain} under {}",
        ledger_dir.display()
    );
    let keys = KeyStore::new(keys_dir);
    let (mut writer, opened) = ChainWriter::open(&ledger_dir, chain, &keys)?;
    anyhow::ensure!(
        matches!(opened, Opened::Continued { .. }),
        "the chain {chain} was empty"
    );
    let old = writer.key_id().to_string();
    let entry = writer.rotate(&keys, now())?;
    tracing::info!(target: "ledger", chain, seq = entry.seq, previous_key_id = %old, key_id = %writer.key_id(), "signing key rotated");
    Ok(format!(
        "chain {chain}: entry {} rotates key {old} → {} (new key in {})",
        entry.seq,
        writer.key_id(),
        keys_dir.display()
    ))
}
