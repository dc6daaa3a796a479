//! The Parquet sink's private state: the published LSN and a roll in progress.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ParquetOptions, publish_renames};
use crate::fsutil::{create_dir_durable, write_atomic};
use crate::wal::Lsn;

const STATE_FILE: &str = "state.json";
/// Where versions before the dedup database kept the digest of every published record.
const LEGACY_DIGESTS_FILE: &str = "published.keys";

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub published_through: Lsn,
    #[serde(default)]
    pub rolling: Option<Rolling>,
}

/// A roll whose files are complete under their hidden names; paths relative to the root.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Rolling {
    pub through: Lsn,
    pub renames: Vec<(PathBuf, PathBuf)>,
}

impl Rolling {
    pub(super) fn new(root: &Path, through: Lsn, renames: &[(PathBuf, PathBuf)]) -> Self {
        let relative = |p: &PathBuf| p.strip_prefix(root).unwrap_or(p).to_path_buf();
        Rolling {
            through,
            renames: renames
                .iter()
                .map(|(from, to)| (relative(from), relative(to)))
                .collect(),
        }
    }
}

pub(super) fn write(options: &ParquetOptions, state: &State) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(state).expect("state serialises");
    write_atomic(&options.state_dir.join(STATE_FILE), &text)
}

/// What the sink knows at start.
pub struct RecoveredState {
    pub published_through: Lsn,
    /// The digests file an earlier version kept, if any: the dedup index rebuilds its keys
    /// from the published files, then retires it ([`retire_legacy_digests`]).
    pub legacy_digests: Option<PathBuf>,
    /// Hidden files of this instance removed because no roll owned them.
    pub stale_removed: usize,
    /// Kafka offsets this instance has published (from its manifest).
    pub kafka: super::manifest::KafkaOffsets,
}

fn read(state_dir: &Path) -> io::Result<State> {
    let path = state_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is unreadable: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e),
    }
}

/// The published LSN `state.json` records now. A roll's files have LSNs above it until the
/// roll has ended (renames done, intent cleared), so compaction leaves them alone.
pub(super) fn read_published(state_dir: &Path) -> io::Result<Lsn> {
    Ok(read(state_dir)?.published_through)
}

/// Finishes a roll interrupted by a crash, removes this instance's stale hidden files, and
/// looks for the digests file of an earlier version. Never touches another instance's files.
pub fn recover(options: &ParquetOptions) -> io::Result<RecoveredState> {
    create_dir_durable(&options.state_dir)?;
    create_dir_durable(&options.root)?;
    let mut state = read(&options.state_dir)?;
    if let Some(rolling) = state.rolling.take() {
        let renames: Vec<(PathBuf, PathBuf)> = rolling
            .renames
            .iter()
            .map(|(from, to)| (options.root.join(from), options.root.join(to)))
            .collect();
        publish_renames(&renames)?;
        tracing::info!(
            through = rolling.through,
            files = renames.len(),
            "finished a parquet roll interrupted by a crash"
        );
        state.published_through = rolling.through;
        write(options, &state)?;
    }
    // The shared manifest is written before the private intent: a crash between the two
    // leaves a roll only the manifest knows about.
    let manifest =
        super::manifest::read(&super::manifest::path(&options.root, &options.instance_id))?;
    if let Some(manifest) = &manifest
        && manifest.through > state.published_through
    {
        super::manifest::complete(&options.root, manifest)?;
        tracing::info!(
            through = manifest.through,
            "finished a parquet roll named by this instance's manifest"
        );
        state.published_through = manifest.through;
        write(options, &state)?;
    }
    let stale_removed = remove_stale_temp_files(&options.root, &options.instance_id)?;
    let legacy = options.state_dir.join(LEGACY_DIGESTS_FILE);
    let legacy_digests = legacy.exists().then_some(legacy);
    Ok(RecoveredState {
        published_through: state.published_through,
        legacy_digests,
        stale_removed,
        kafka: manifest.map(|m| m.kafka).unwrap_or_default(),
    })
}

fn remove_stale_temp_files(root: &Path, instance: &str) -> io::Result<usize> {
    let prefix = format!(".{instance}-");
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".parquet.tmp") {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Renames an earlier version's digests file once the dedup index holds its keys (kept, not
/// deleted: an operator going back to that version still has it).
pub fn retire_legacy_digests(path: &Path) -> io::Result<()> {
    let retired = path.with_extension("keys.migrated");
    std::fs::rename(path, &retired)?;
    if let Some(dir) = path.parent() {
        crate::fsutil::sync_dir(dir)?;
    }
    Ok(())
}
