//! `gaveurs ledger …`: checks a data dir's chains offline.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use gaveurs_operators::ledger::chain::{ChainWriter, chains, entries_after, is_held, now};
use gaveurs_operators::ledger::desk::rotation_request;
use gaveurs_operators::ledger::entry::{Entry, EntryKind};
use gaveurs_operators::ledger::keys::KeyStore;
use gaveurs_operators::ledger::verify::verify_chain;

/// Verifies every chain under `data_dir/ledger`; the report, or the first bad entry. Both
/// are written to `ledger.log` too.
pub fn verify(data_dir: &Path) -> anyhow::Result<String> {
    let started = Instant::now();
    let verified = verify_chains(data_dir);
    let seconds = started.elapsed().as_secs_f64();
    match &verified {
        Ok((_, chains, entries)) => {
            tracing::info!(target: "ledger", data_dir = %data_dir.display(), chains, entries, seconds, "ledger verified")
        }
        Err(e) => {
            tracing::error!(target: "ledger", data_dir = %data_dir.display(), error = %format!("{e:#}"), "ledger verification failed")
        }
    }
    verified.map(|(report, _, _)| report)
}

/// The report, the chains and the entries verified.
fn verify_chains(data_dir: &Path) -> anyhow::Result<(String, usize, u64)> {
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
    Ok((report, found.len(), total))
}

/// Writes `code_lot`'s certificate to `out` (standard output if `None`).
pub fn certificate(data_dir: &Path, code_lot: &str, out: Option<&Path>) -> anyhow::Result<String> {
    let certificate =
        gaveurs_operators::ledger::certificate::export(&data_dir.join("ledger"), code_lot)?;
    let bytes = certificate.to_bytes();
    tracing::info!(target: "ledger", code_lot, chain = %certificate.chain, entries = certificate.entries.len(), head_seq = certificate.head.seq, "certificate exported");
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

/// How long `rotate-key` waits for a running pipeline to take its request.
const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// Appends a key rotation to `chain`: a new key in `keys_dir`, introduced by an entry signed
/// with the current one. While a pipeline holds the chain, the rotation is asked of it (a
/// request file in `keys_dir`) and awaited.
pub fn rotate_key(data_dir: &Path, keys_dir: &Path, chain: &str) -> anyhow::Result<String> {
    let ledger_dir = data_dir.join("ledger");
    let chain_dir = ledger_dir.join(chain);
    anyhow::ensure!(
        chain_dir.is_dir(),
        "no ledger chain {chain} under {} (chains: {})",
        ledger_dir.display(),
        chains(&ledger_dir)?
            .into_iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let keys = KeyStore::new(keys_dir);
    let (entry, previous) = if is_held(&chain_dir)? {
        rotate_in_running_pipeline(&chain_dir, keys_dir, chain)?
    } else {
        let (mut writer, _) = ChainWriter::open(&ledger_dir, chain, &keys)?;
        let previous = writer.key_id().to_string();
        let entry = writer.rotate(&keys, now())?;
        tracing::info!(target: "ledger", chain, seq = entry.seq, previous_key_id = %previous, key_id = %writer.key_id(), "signing key rotated");
        (entry, previous)
    };
    let new_key = entry
        .payload
        .get("key_id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?");
    Ok(format!(
        "chain {chain}: entry {} rotates key {previous} → {new_key} (new key in {})",
        entry.seq,
        keys_dir.display()
    ))
}

/// Leaves a request for the pipeline that holds the chain and waits for its rotation entry.
fn rotate_in_running_pipeline(
    chain_dir: &Path,
    keys_dir: &Path,
    chain: &str,
) -> anyhow::Result<(Entry, String)> {
    let head = entries_after(chain_dir, 0)?.last().map_or(0, |e| e.seq);
    let request = rotation_request(keys_dir, chain);
    std::fs::write(&request, b"")
        .with_context(|| format!("leaving a rotation request at {}", request.display()))?;
    let deadline = Instant::now() + REQUEST_WAIT;
    while request.exists() {
        if Instant::now() >= deadline {
            let _ = std::fs::remove_file(&request);
            anyhow::bail!(
                "the pipeline holding chain {chain} did not rotate its key within {} s (is its [ledger] keys_dir {}?); request withdrawn",
                REQUEST_WAIT.as_secs(),
                keys_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rotation = entries_after(chain_dir, head)?
        .into_iter()
        .find(|e| e.kind == EntryKind::KeyRotated)
        .with_context(|| format!("the pipeline took the request but chain {chain} holds no new rotation entry: see its ledger.log"))?;
    let previous = rotation
        .payload
        .get("previous_key_id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
        .to_string();
    tracing::info!(target: "ledger", chain, seq = rotation.seq, previous_key_id = %previous, "signing key rotated by the running pipeline on request");
    Ok((rotation, previous))
}
