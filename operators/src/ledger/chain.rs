//! A chain on disk: `data/ledger/<chain>/<first seq, 20 digits>.jsonl`, one entry a line,
//! a new file every [`SEGMENT_ENTRIES`] entries. Appends are written and fsynced before the
//! entries are returned, so nothing outside the file sees an entry the file could lose; a line
//! a crash left half written was never fsynced, so never seen, and the writer cuts it off when
//! it opens the chain again.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use serde_json::json;

use super::entry::{Entry, EntryKind, Event, GENESIS_PREV, LedgerKey};
use super::keys::KeyStore;

/// Entries a chain file holds before the next one starts.
pub const SEGMENT_ENTRIES: u64 = 100_000;
const SEGMENT_SUFFIX: &str = ".jsonl";

/// The chain files of `dir`, in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(SEGMENT_SUFFIX))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// The chains under a ledger folder (`data/ledger`), by name.
pub fn chains(ledger_dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut chains = Vec::new();
    match fs::read_dir(ledger_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    chains.push((
                        entry.file_name().to_string_lossy().into_owned(),
                        entry.path(),
                    ));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    chains.sort();
    Ok(chains)
}

/// Whether a process (a running pipeline) holds the chain under `dir` now.
pub fn is_held(dir: &Path) -> std::io::Result<bool> {
    match Flock::lock(File::open(dir)?, FlockArg::LockExclusiveNonblock) {
        Ok(_released_at_once) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(std::io::Error::from(e)),
    }
}

/// Appends to one chain. Holds an exclusive lock on the chain's folder while it lives, so
/// two writers (two instances, or `gaveurs ledger rotate-key` beside a running pipeline)
/// never interleave.
pub struct ChainWriter {
    name: String,
    dir: PathBuf,
    _lock: Flock<File>,
    file: File,
    /// Entries in the current file.
    in_file: u64,
    next_seq: u64,
    head: String,
    key: LedgerKey,
}

/// What opening a chain did.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// No chain was there: its genesis entry was written, with a new key.
    Genesis(Box<Entry>),
    /// An existing chain continues after `head_seq`; `cut_bytes` of a line half written by a
    /// crash were cut off.
    Continued { head_seq: u64, cut_bytes: u64 },
}

impl ChainWriter {
    /// Opens (or starts) the chain `name` under `ledger_dir`, signing with keys from `keys`.
    pub fn open(
        ledger_dir: &Path,
        name: &str,
        keys: &KeyStore,
    ) -> anyhow::Result<(ChainWriter, Opened)> {
        let dir = ledger_dir.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock =
            Flock::lock(File::open(&dir)?, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                anyhow::anyhow!(
                    "the ledger chain {} is being written by another process ({e}): stop it first",
                    dir.display()
                )
            })?;
        let files = segments(&dir)?;
        let Some(last_file) = files.last() else {
            let key = keys.create()?;
            let path = dir.join(segment_name(1));
            let file = open_append(&path)?;
            fsync_dir(&dir)?;
            let mut writer = ChainWriter {
                name: name.to_string(),
                dir,
                _lock: lock,
                file,
                in_file: 0,
                next_seq: 1,
                head: GENESIS_PREV.to_string(),
                key,
            };
            let genesis = Event {
                time: now(),
                kind: EntryKind::Genesis,
                code_lot: None,
                device_id: None,
                payload: json!({
                    "key_id": writer.key.id,
                    "public_key": writer.key.public_hex(),
                }),
            };
            let entry = writer.append(vec![genesis])?.remove(0);
            return Ok((writer, Opened::Genesis(Box::new(entry))));
        };
        let cut_bytes = cut_torn_tail(last_file)?;
        let (in_file, last) = last_entry(last_file)?;
        let last = match last {
            Some(last) => last,
            // An empty last file: its predecessor holds the head.
            None => {
                let previous = files.len().checked_sub(2).map(|i| &files[i]);
                match previous.map(|p| last_entry(p)).transpose()? {
                    Some((_, Some(last))) => last,
                    _ => anyhow::bail!(
                        "the ledger chain {} has files but no entry; move them aside to start a new chain",
                        dir.display()
                    ),
                }
            }
        };
        let active = match last.introduced_key() {
            Some(Ok((id, _))) if last.kind == EntryKind::KeyRotated => id,
            _ => last.key.clone(),
        };
        let key = keys.load(&active).with_context(|| {
            format!(
                "the ledger chain {name} is signed by key {active}, which is needed to continue it"
            )
        })?;
        Ok((
            ChainWriter {
                name: name.to_string(),
                dir,
                _lock: lock,
                file: open_append(last_file)?,
                in_file,
                next_seq: last.seq + 1,
                head: last.hash.clone(),
                key,
            },
            Opened::Continued {
                head_seq: last.seq,
                cut_bytes,
            },
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn head(&self) -> &str {
        &self.head
    }

    pub fn key_id(&self) -> &str {
        &self.key.id
    }

    /// Chains, signs, writes and fsyncs `events`; returns their entries.
    pub fn append(&mut self, events: Vec<Event>) -> anyhow::Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(events.len());
        let mut buffer = Vec::new();
        for event in events {
            if self.in_file >= SEGMENT_ENTRIES {
                self.flush(&mut buffer)?;
                let path = self.dir.join(segment_name(self.next_seq));
                self.file = open_append(&path)?;
                fsync_dir(&self.dir)?;
                self.in_file = 0;
            }
            let entry = Entry::seal(&self.name, self.next_seq, &self.head, event, &self.key);
            buffer.extend_from_slice(&entry.line());
            buffer.push(b'\n');
            self.next_seq += 1;
            self.in_file += 1;
            self.head = entry.hash.clone();
            entries.push(entry);
        }
        self.flush(&mut buffer)?;
        Ok(entries)
    }

    /// Appends a rotation entry signed by the current key that introduces a new one, and
    /// signs with the new one from then on.
    pub fn rotate(&mut self, keys: &KeyStore, time: String) -> anyhow::Result<Entry> {
        let new_key = keys.create()?;
        let event = Event {
            time,
            kind: EntryKind::KeyRotated,
            code_lot: None,
            device_id: None,
            payload: json!({
                "key_id": new_key.id,
                "public_key": new_key.public_hex(),
                "previous_key_id": self.key.id,
            }),
        };
        let entry = self.append(vec![event])?.remove(0);
        self.key = new_key;
        Ok(entry)
    }

    fn flush(&mut self, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all(buffer)?;
        self.file.sync_data()?;
        buffer.clear();
        Ok(())
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The current time as entries write it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Cuts a last line without its newline (written, never fsynced whole); returns the bytes cut.
fn cut_torn_tail(path: &Path) -> anyhow::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // Find the last newline, reading back in blocks.
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(block.len() as u64);
        let size = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..size])?;
        if let Some(at) = block[..size].iter().rposition(|b| *b == b'\n') {
            let keep = start + at as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                file.sync_all()?;
            }
            return Ok(len - keep);
        }
        if start == 0 {
            file.set_len(0)?;
            file.sync_all()?;
            return Ok(len);
        }
        end = start;
    }
}

/// How many entries `path` holds and its last one.
fn last_entry(path: &Path) -> anyhow::Result<(u64, Option<Entry>)> {
    let reader = BufReader::new(File::open(path)?);
    let mut count = 0;
    let mut last = None;
    for line in reader.lines() {
        last = Some(line?);
        count += 1;
    }
    let last = last
        .map(|line| {
            serde_json::from_str::<Entry>(&line).with_context(|| {
                format!(
                    "the last entry of {} is not a ledger entry; run `gaveurs ledger verify`",
                    path.display()
                )
            })
        })
        .transpose()?;
    Ok((count, last))
}

/// The entries of the chain in `dir` after `seq`, read without being verified (a half
/// written last line is left out).
pub fn entries_after(dir: &Path, seq: u64) -> anyhow::Result<Vec<Entry>> {
    let files = segments(dir)?;
    let first_seq = |path: &PathBuf| -> u64 {
        path.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let start = files
        .iter()
        .rposition(|f| first_seq(f) <= seq + 1)
        .unwrap_or(0);
    let mut entries = Vec::new();
    for path in &files[start.min(files.len())..] {
        let mut reader = BufReader::new(File::open(path)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let entry: Entry =
                serde_json::from_slice(&line[..line.len() - 1]).with_context(|| {
                    format!(
                        "{} holds a line that is not a ledger entry; run `gaveurs ledger verify`",
                        path.display()
                    )
                })?;
            if entry.seq > seq {
                entries.push(entry);
            }
        }
    }
    Ok(entries)
}

/// The keys of one chain, as its genesis and rotation entries introduced them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChainKeys {
    pub chain: String,
    pub keys: Vec<super::verify::ChainKey>,
}

/// Every chain's public keys, read from its key entries (not verified: `gaveurs ledger
/// verify` does that).
pub fn chain_keys(ledger_dir: &Path) -> anyhow::Result<Vec<ChainKeys>> {
    let mut all = Vec::new();
    for (name, dir) in chains(ledger_dir)? {
        let mut keys: Vec<super::verify::ChainKey> = Vec::new();
        for path in segments(&dir)? {
            for line in BufReader::new(File::open(&path)?).lines() {
                let line = line?;
                if !(line.contains("\"type\":\"genesis\"")
                    || line.contains("\"type\":\"key_rotated\""))
                {
                    continue;
                }
                let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
                    continue;
                };
                if let Some(Ok((key_id, public))) = entry.introduced_key() {
                    if let Some(last) = keys.last_mut() {
                        last.retired_at = Some(entry.seq);
                    }
                    keys.push(super::verify::ChainKey {
                        key_id,
                        public_key: hex::encode(public.to_bytes()),
                        introduced_at: entry.seq,
                        retired_at: None,
                    });
                }
            }
        }
        all.push(ChainKeys { chain: name, keys });
    }
    Ok(all)
}
