//! Roll manifests: how instances that share a data dir agree on which Kafka records are
//! already in published files.
//!
//! Each instance that reads Kafka keeps one manifest, `parquet/_rolls/<instance>.json`,
//! replaced atomically at every roll *before* the roll's files are renamed. It names the
//! roll's renames and, cumulatively, the last Kafka offset of every partition this instance
//! has put in a file. The files of a roll are complete and fsynced before the manifest is
//! written, so anyone who reads it may finish its renames: the instance itself after a crash,
//! or a peer that takes its partitions over. A peer resumes each partition after the highest
//! offset any manifest names, whatever the group's committed offset says, so a record that a
//! dead instance published but never committed is not written twice — the scheme Kafka
//! Connect's S3 sink uses, with the offsets in a manifest instead of the file name because
//! one file here holds records of several partitions.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{create_dir_durable, sync_dir, write_atomic};
use crate::wal::Lsn;

pub const MANIFEST_DIR: &str = "_rolls";

/// Last offset in a published file, per topic and partition.
pub type KafkaOffsets = BTreeMap<String, BTreeMap<i32, i64>>;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub instance: String,
    /// This instance's log position the roll covers.
    pub through: Lsn,
    /// The roll's renames, relative to the Parquet root.
    pub renames: Vec<(PathBuf, PathBuf)>,
    pub kafka: KafkaOffsets,
}

pub fn path(root: &Path, instance: &str) -> PathBuf {
    root.join(MANIFEST_DIR).join(format!("{instance}.json"))
}

pub fn write(root: &Path, manifest: &Manifest) -> io::Result<()> {
    create_dir_durable(&root.join(MANIFEST_DIR))?;
    let text = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    write_atomic(&path(root, &manifest.instance), &text)
}

pub fn read(path: &Path) -> io::Result<Option<Manifest>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is unreadable: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Finishes the renames a manifest names. A rename whose hidden source is gone was done
/// already — by the instance, or by another reader of the manifest meanwhile — and its
/// target may be gone too: the owner's compaction may have merged it into a larger file
/// since (`compact.rs`), so neither is an error.
pub fn complete(root: &Path, manifest: &Manifest) -> io::Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (from, to) in &manifest.renames {
        let (from, to) = (root.join(from), root.join(to));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => continue,
            Err(e) => return Err(e),
        }
        if let Some(dir) = to.parent()
            && !dirs.iter().any(|d| d == dir)
        {
            dirs.push(dir.to_path_buf());
        }
    }
    for dir in dirs {
        sync_dir(&dir)?;
    }
    Ok(())
}

/// Every instance's manifest, each roll finished: the offsets published so far.
pub fn published_offsets(root: &Path) -> io::Result<KafkaOffsets> {
    let mut offsets = KafkaOffsets::new();
    let entries = match std::fs::read_dir(root.join(MANIFEST_DIR)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(offsets),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json")
            || path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let Some(manifest) = read(&path)? else {
            continue;
        };
        complete(root, &manifest)?;
        merge(&mut offsets, &manifest.kafka);
    }
    Ok(offsets)
}

pub fn merge(into: &mut KafkaOffsets, from: &KafkaOffsets) {
    for (topic, partitions) in from {
        let mine = into.entry(topic.clone()).or_default();
        for (&partition, &offset) in partitions {
            let slot = mine.entry(partition).or_insert(offset);
            *slot = (*slot).max(offset);
        }
    }
}
