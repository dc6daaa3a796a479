//! The dedup operator: a record whose idempotency key was seen before is a duplicate, never a
//! second row (SPEC §1). Keys are kept as 128-bit digests
//! ([`gaveurs_schemas::Record::idempotency_hash`]). The index starts from the digests of every
//! published record (persisted by the Parquet sink) and of the durable log's unpublished tail,
//! so it holds across restarts.

use std::collections::HashSet;

use parking_lot::Mutex;

#[derive(Default)]
pub struct DedupIndex {
    seen: Mutex<HashSet<u128>>,
}

impl DedupIndex {
    pub fn from_digests(digests: impl IntoIterator<Item = u128>) -> Self {
        Self {
            seen: Mutex::new(digests.into_iter().collect()),
        }
    }

    /// Records `digest`; true if it was new. Atomic, so two connections racing with the same
    /// record store it once.
    pub fn first_sighting(&self, digest: u128) -> bool {
        self.seen.lock().insert(digest)
    }

    pub fn len(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sighting_is_a_duplicate() {
        let index = DedupIndex::from_digests([7]);
        assert!(!index.first_sighting(7));
        assert!(index.first_sighting(8));
        assert!(!index.first_sighting(8));
        assert_eq!(index.len(), 2);
    }
}
