//! The dedup operator: a record whose idempotency key was seen before is a duplicate, never a
//! second row (SPEC §1) — whatever its age: a replay of last year's lots adds nothing.
//!
//! Exact, with bounded memory. Every published key is kept on disk in a small embedded
//! database (`redb`, `published-keys.redb` in the instance folder), written by the Parquet
//! sink at each roll. In memory:
//! - the keys of **resident lots**, grouped by `code_lot` (a lot has a few dozen meals and one
//!   outcome). A record of a lot that is not resident loads that lot's keys from disk once
//!   (one range read); later records of the lot are decided in memory. Lots idle for
//!   `idle` are evicted, and at most `max_lots` stay resident (least recently used first),
//!   except lots with keys not yet published: those are pinned until the roll that publishes
//!   them.
//! - SQAL samples are keyed by station and sample id, and a station sends samples for ever,
//!   so they are not grouped: a sample's key is looked up on disk (SQAL arrives at a few
//!   samples a second), and kept in memory only until it is published.
//!
//! Keys of records in the log but not yet published are seeded at start from the log, so a
//! crash loses nothing: they are in memory until the roll that publishes them writes them to
//! disk.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

pub mod recovery;

pub use gaveurs_schemas::records::{DedupKey, lot_digest};
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// `(lot digest, key digest)` of every published meal and outcome.
const LOT_KEYS: TableDefinition<(u64, u64), ()> = TableDefinition::new("lot_keys");
/// The idempotency digest of every published SQAL sample.
const SAMPLE_KEYS: TableDefinition<u128, ()> = TableDefinition::new("sample_keys");

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("published keys database {path}: {message}")]
    Store { path: String, message: String },
}

#[derive(Debug, Clone)]
pub struct DedupLimits {
    /// Lots whose keys stay in memory at most (least recently used go first).
    pub max_lots: usize,
    /// A lot without a record for this long leaves memory.
    pub idle: Duration,
    /// Memory the database may use for its page cache.
    pub cache_bytes: usize,
}

impl Default for DedupLimits {
    fn default() -> Self {
        Self {
            max_lots: 50_000,
            idle: Duration::from_secs(3600),
            cache_bytes: 16 * 1024 * 1024,
        }
    }
}

struct Lot {
    keys: HashSet<u64>,
    /// Keys accepted but not yet published: the lot cannot leave memory before they are.
    unpublished: usize,
    last_used: Instant,
}

#[derive(Default)]
struct Resident {
    lots: HashMap<u64, Lot>,
    /// SQAL keys accepted but not yet published.
    samples: HashSet<u128>,
    /// The last search for lots to evict found too few (the rest wait for their roll): no
    /// new search until a roll publishes some, or every new lot would scan them all.
    full_until_published: bool,
}

pub struct DedupIndex {
    db: redb::Database,
    path: String,
    resident: Mutex<Resident>,
    limits: DedupLimits,
}

/// Counts for logs and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupCounts {
    pub resident_lots: usize,
    pub resident_keys: usize,
    pub unpublished: usize,
}

impl DedupIndex {
    /// Opens (or creates) the published keys database at `path`.
    pub fn open(path: &Path, limits: DedupLimits) -> Result<DedupIndex, DedupError> {
        let name = path.display().to_string();
        let store_error = |e: &dyn std::fmt::Display| DedupError::Store {
            path: name.clone(),
            message: e.to_string(),
        };
        let db = redb::Builder::new()
            .set_cache_size(limits.cache_bytes)
            .create(path)
            .map_err(|e| store_error(&e))?;
        // Both tables exist from the first open, so readers never meet a missing one.
        let tx = db.begin_write().map_err(|e| store_error(&e))?;
        tx.open_table(LOT_KEYS).map_err(|e| store_error(&e))?;
        tx.open_table(SAMPLE_KEYS).map_err(|e| store_error(&e))?;
        tx.commit().map_err(|e| store_error(&e))?;
        Ok(DedupIndex {
            db,
            path: name,
            resident: Mutex::new(Resident::default()),
            limits,
        })
    }

    /// Whether the database holds no key yet (a first start, or a data dir from before it).
    pub fn is_empty(&self) -> Result<bool, DedupError> {
        let tx = self.db.begin_read().map_err(|e| self.error(&e))?;
        let lots = tx.open_table(LOT_KEYS).map_err(|e| self.error(&e))?;
        let samples = tx.open_table(SAMPLE_KEYS).map_err(|e| self.error(&e))?;
        Ok(lots.is_empty().map_err(|e| self.error(&e))?
            && samples.is_empty().map_err(|e| self.error(&e))?)
    }

    /// Records `key`; true if it was new. Atomic: two connections racing with the same
    /// record store it once.
    pub fn first_sighting(&self, key: DedupKey) -> Result<bool, DedupError> {
        match key {
            DedupKey::Lot { lot, key } => self.first_lot_sighting(lot, key),
            DedupKey::Sample(digest) => {
                if self.resident.lock().samples.contains(&digest) {
                    return Ok(false);
                }
                let published = self.sample_published(digest)?;
                let mut resident = self.resident.lock();
                Ok(!published && resident.samples.insert(digest))
            }
        }
    }

    fn first_lot_sighting(&self, lot: u64, key: u64) -> Result<bool, DedupError> {
        {
            let mut resident = self.resident.lock();
            if let Some(state) = resident.lots.get_mut(&lot) {
                return Ok(state.accept(key));
            }
        }
        // Not resident: its published keys, read outside the lock.
        let keys = self.published_keys_of(lot)?;
        let mut resident = self.resident.lock();
        if !resident.lots.contains_key(&lot) {
            self.make_room(&mut resident);
        }
        let state = resident.lots.entry(lot).or_insert_with(|| Lot {
            keys: HashSet::new(),
            unpublished: 0,
            last_used: Instant::now(),
        });
        state.keys.extend(keys);
        Ok(state.accept(key))
    }

    /// Keys of records in the log but not yet published (at start).
    pub fn seed_unpublished(
        &self,
        keys: impl IntoIterator<Item = DedupKey>,
    ) -> Result<(), DedupError> {
        for key in keys {
            self.first_sighting(key)?;
        }
        Ok(())
    }

    /// The Parquet sink published these records: their keys go to disk, and their lots may
    /// leave memory. Called once the roll's files are complete, before they are renamed.
    pub fn published(&self, keys: &[DedupKey]) -> Result<(), DedupError> {
        if keys.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.error(&e))?;
        {
            let mut lot_keys = tx.open_table(LOT_KEYS).map_err(|e| self.error(&e))?;
            let mut sample_keys = tx.open_table(SAMPLE_KEYS).map_err(|e| self.error(&e))?;
            for key in keys {
                match *key {
                    DedupKey::Lot { lot, key } => {
                        lot_keys
                            .insert((lot, key), ())
                            .map_err(|e| self.error(&e))?;
                    }
                    DedupKey::Sample(digest) => {
                        sample_keys.insert(digest, ()).map_err(|e| self.error(&e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.error(&e))?;
        // Only now: until the commit, memory is what makes them duplicates.
        let mut resident = self.resident.lock();
        resident.full_until_published = false;
        for key in keys {
            match *key {
                DedupKey::Lot { lot, .. } => {
                    if let Some(state) = resident.lots.get_mut(&lot) {
                        state.unpublished = state.unpublished.saturating_sub(1);
                    }
                }
                DedupKey::Sample(digest) => {
                    resident.samples.remove(&digest);
                }
            }
        }
        let idle = self.limits.idle;
        resident
            .lots
            .retain(|_, lot| lot.unpublished > 0 || lot.last_used.elapsed() < idle);
        Ok(())
    }

    /// Whether any record of this lot was ever published (analytics asks before restoring a
    /// lot from Parquet).
    pub fn lot_published(&self, code_lot: &str) -> Result<bool, DedupError> {
        let lot = lot_digest(code_lot);
        let tx = self.db.begin_read().map_err(|e| self.error(&e))?;
        let table = tx.open_table(LOT_KEYS).map_err(|e| self.error(&e))?;
        let mut range = table
            .range((lot, 0)..=(lot, u64::MAX))
            .map_err(|e| self.error(&e))?;
        Ok(range.next().is_some())
    }

    pub fn counts(&self) -> DedupCounts {
        let resident = self.resident.lock();
        DedupCounts {
            resident_lots: resident.lots.len(),
            resident_keys: resident.lots.values().map(|l| l.keys.len()).sum::<usize>()
                + resident.samples.len(),
            unpublished: resident.lots.values().map(|l| l.unpublished).sum::<usize>()
                + resident.samples.len(),
        }
    }

    fn published_keys_of(&self, lot: u64) -> Result<Vec<u64>, DedupError> {
        let tx = self.db.begin_read().map_err(|e| self.error(&e))?;
        let table = tx.open_table(LOT_KEYS).map_err(|e| self.error(&e))?;
        let mut keys = Vec::new();
        for item in table
            .range((lot, 0)..=(lot, u64::MAX))
            .map_err(|e| self.error(&e))?
        {
            let (key, _) = item.map_err(|e| self.error(&e))?;
            keys.push(key.value().1);
        }
        Ok(keys)
    }

    fn sample_published(&self, digest: u128) -> Result<bool, DedupError> {
        let tx = self.db.begin_read().map_err(|e| self.error(&e))?;
        let table = tx.open_table(SAMPLE_KEYS).map_err(|e| self.error(&e))?;
        Ok(table.get(digest).map_err(|e| self.error(&e))?.is_some())
    }

    /// Evicts the least recently used lots without unpublished keys until one more fits. Lots
    /// with unpublished keys stay, above the limit if need be: the log bounds them, and the
    /// roll that publishes them lets them go.
    fn make_room(&self, resident: &mut Resident) {
        if resident.lots.len() < self.limits.max_lots || resident.full_until_published {
            return;
        }
        let idle = self.limits.idle;
        resident
            .lots
            .retain(|_, lot| lot.unpublished > 0 || lot.last_used.elapsed() < idle);
        let excess = (resident.lots.len() + 1).saturating_sub(self.limits.max_lots);
        if excess == 0 {
            return;
        }
        // Evict a tenth at once, so a stream of new lots does not sort on every record.
        let mut evictable: Vec<(Instant, u64)> = resident
            .lots
            .iter()
            .filter(|(_, lot)| lot.unpublished == 0)
            .map(|(digest, lot)| (lot.last_used, *digest))
            .collect();
        let count = excess.max(self.limits.max_lots / 10).min(evictable.len());
        // Fewer than a tenth to evict: the next searches would find as few, at a full scan each.
        resident.full_until_published = count < self.limits.max_lots / 10;
        if count == 0 {
            return;
        }
        evictable.select_nth_unstable(count - 1);
        for (_, digest) in &evictable[..count] {
            resident.lots.remove(digest);
        }
    }

    fn error(&self, e: &dyn std::fmt::Display) -> DedupError {
        DedupError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

impl Lot {
    fn accept(&mut self, key: u64) -> bool {
        self.last_used = Instant::now();
        if self.keys.insert(key) {
            self.unpublished += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
