use super::*;

fn index(dir: &Path, limits: DedupLimits) -> DedupIndex {
    DedupIndex::open(&dir.join("keys.redb"), limits).unwrap()
}

fn meal_key(lot: &str, n: u64) -> DedupKey {
    DedupKey::Lot {
        lot: lot_digest(lot),
        key: n,
    }
}

#[test]
fn second_sighting_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let index = index(dir.path(), DedupLimits::default());
    assert!(index.first_sighting(meal_key("LL1", 7)).unwrap());
    assert!(!index.first_sighting(meal_key("LL1", 7)).unwrap());
    assert!(index.first_sighting(meal_key("LL2", 7)).unwrap());
    assert!(index.first_sighting(DedupKey::Sample(9)).unwrap());
    assert!(!index.first_sighting(DedupKey::Sample(9)).unwrap());
}

#[test]
fn published_keys_stay_duplicates_after_their_lot_left_memory_and_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let limits = DedupLimits {
        max_lots: 10,
        idle: Duration::ZERO,
        ..DedupLimits::default()
    };
    {
        let index = index(dir.path(), limits.clone());
        let mut keys = Vec::new();
        for lot in 0..100 {
            for n in 0..3 {
                let key = meal_key(&format!("LL{lot}"), n);
                assert!(index.first_sighting(key).unwrap());
                keys.push(key);
            }
        }
        keys.push(DedupKey::Sample(42));
        assert!(index.first_sighting(DedupKey::Sample(42)).unwrap());
        // Unpublished keys pin their lots: nothing is forgotten before it is on disk.
        assert_eq!(index.counts().resident_lots, 100);
        index.published(&keys).unwrap();
        assert!(index.counts().resident_lots <= 10, "{:?}", index.counts());
        for lot in 0..100 {
            assert!(
                !index
                    .first_sighting(meal_key(&format!("LL{lot}"), 1))
                    .unwrap()
            );
        }
        assert!(index.lot_published("LL5").unwrap());
        assert!(!index.lot_published("LL500").unwrap());
    }
    let index = index(dir.path(), limits);
    assert!(!index.first_sighting(meal_key("LL42", 2)).unwrap());
    assert!(!index.first_sighting(DedupKey::Sample(42)).unwrap());
    assert!(index.first_sighting(meal_key("LL42", 3)).unwrap());
}

#[test]
fn memory_stays_within_the_resident_lots_limit() {
    let dir = tempfile::tempdir().unwrap();
    let index = index(
        dir.path(),
        DedupLimits {
            max_lots: 1_000,
            idle: Duration::from_secs(3600),
            ..DedupLimits::default()
        },
    );
    for round in 0..20 {
        let mut keys = Vec::new();
        for lot in 0..1_000 {
            let key = meal_key(&format!("LS{round}-{lot}"), 1);
            assert!(index.first_sighting(key).unwrap());
            keys.push(key);
        }
        index.published(&keys).unwrap();
        assert!(index.counts().resident_lots <= 1_000);
    }
}

#[test]
fn racing_connections_store_a_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let index = std::sync::Arc::new(index(dir.path(), DedupLimits::default()));
    let firsts: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let index = index.clone();
                scope.spawn(move || {
                    (0..500)
                        .filter(|n| {
                            index
                                .first_sighting(meal_key(&format!("MT{}", n % 50), *n))
                                .unwrap()
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(firsts, 500);
}
