//! Walks a chain from its genesis and checks every entry: that it parses, belongs to the
//! chain, follows its predecessor's sequence number, links to its predecessor's hash, hashes
//! to its `hash`, and is signed by the key the chain had at that point (its genesis key, or
//! the key the last rotation before it introduced, a rotation itself being signed by the key
//! it retires).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::chain::segments;
use super::entry::{Entry, EntryKind, GENESIS_PREV};

/// A key as the chain introduced it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainKey {
    pub key_id: String,
    pub public_key: String,
    /// The entry that introduced it (the genesis or a rotation).
    pub introduced_at: u64,
    /// The rotation that retired it.
    pub retired_at: Option<u64>,
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainReport {
    pub chain: String,
    pub entries: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub keys: Vec<ChainKey>,
    /// A last line a crash left half written (never fsynced, so never part of the chain):
    /// its file and length. The next writer cuts it off.
    pub torn_tail: Option<(PathBuf, usize)>,
}

/// The first entry that does not verify.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: entry {seq} of chain {chain}: {what}", file.display())]
pub struct Break {
    pub chain: String,
    pub file: PathBuf,
    /// Line in `file`, from 1.
    pub line: u64,
    /// The entry's sequence number (the one expected there, if the line does not say).
    pub seq: u64,
    pub what: String,
}

/// Checks the chain `name` in `dir`, handing each verified entry to `visit`.
pub fn verify_chain(
    name: &str,
    dir: &Path,
    mut visit: impl FnMut(&Entry),
) -> Result<ChainReport, Break> {
    let fail = |file: &Path, line: u64, seq: u64, what: String| Break {
        chain: name.to_string(),
        file: file.to_path_buf(),
        line,
        seq,
        what,
    };
    let files = segments(dir).map_err(|e| fail(dir, 0, 1, format!("cannot be listed: {e}")))?;
    let mut expected = 1u64;
    let mut previous_hash = GENESIS_PREV.to_string();
    let mut keys: Vec<ChainKey> = Vec::new();
    let mut current: Option<(String, VerifyingKey)> = None;
    let mut torn_tail = None;
    for (index, path) in files.iter().enumerate() {
        let last_file = index + 1 == files.len();
        let mut reader = BufReader::new(
            File::open(path)
                .map_err(|e| fail(path, 0, expected, format!("cannot be read: {e}")))?,
        );
        let mut line_no = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| fail(path, line_no + 1, expected, format!("cannot be read: {e}")))?;
            if read == 0 {
                break;
            }
            line_no += 1;
            if line.last() != Some(&b'\n') {
                if last_file {
                    torn_tail = Some((path.clone(), line.len()));
                    break;
                }
                return Err(fail(
                    path,
                    line_no,
                    expected,
                    "is cut short (no newline) before the chain's last file".into(),
                ));
            }
            line.pop();
            let at = |what: String| fail(path, line_no, expected, what);
            let entry: Entry = serde_json::from_slice(&line)
                .map_err(|e| at(format!("is not a ledger entry ({e})")))?;
            if entry.chain != name {
                return Err(at(format!("belongs to chain {}", entry.chain)));
            }
            if entry.seq != expected {
                return Err(at(if entry.seq > expected {
                    format!(
                        "the sequence jumps to {}: entries {expected} to {} are missing",
                        entry.seq,
                        entry.seq - 1
                    )
                } else {
                    format!("the sequence goes back to {}", entry.seq)
                }));
            }
            if entry.prev != previous_hash {
                return Err(at(if expected == 1 {
                    "the chain's first entry links to a previous one".to_string()
                } else {
                    format!(
                        "its link (prev) is not the hash of entry {}: an entry was removed, added or altered before it",
                        expected - 1
                    )
                }));
            }
            if !entry.hash_matches() {
                return Err(at(
                    "its hash does not match its contents: the entry was altered".into(),
                ));
            }
            if expected == 1 {
                if entry.kind != EntryKind::Genesis {
                    return Err(at("the chain does not start with a genesis entry".into()));
                }
            } else if entry.kind == EntryKind::Genesis {
                return Err(at("a second genesis in the chain".into()));
            }
            if let Some(introduced) = entry.introduced_key() {
                let (id, public) =
                    introduced.map_err(|e| at(format!("its key is unusable: {e}")))?;
                if entry.kind == EntryKind::Genesis {
                    current = Some((id.clone(), public));
                }
                let (signer_id, signer) = current.as_ref().expect("the genesis set a key");
                if entry.key != *signer_id || !entry.signed_by(signer) {
                    return Err(at(format!(
                        "its signature does not verify with key {signer_id}, the chain's key at that point"
                    )));
                }
                if let Some(last) = keys.last_mut() {
                    last.retired_at = Some(entry.seq);
                }
                keys.push(ChainKey {
                    key_id: id.clone(),
                    public_key: hex::encode(public.to_bytes()),
                    introduced_at: entry.seq,
                    retired_at: None,
                });
                current = Some((id, public));
            } else {
                let (signer_id, signer) = current.as_ref().expect("the genesis set a key");
                if entry.key != *signer_id || !entry.signed_by(signer) {
                    return Err(at(format!(
                        "its signature does not verify with key {signer_id}, the chain's key at that point"
                    )));
                }
            }
            visit(&entry);
            previous_hash = entry.hash;
            expected += 1;
        }
    }
    Ok(ChainReport {
        chain: name.to_string(),
        entries: expected - 1,
        head_seq: expected - 1,
        head_hash: previous_hash,
        keys,
        torn_tail,
    })
}
