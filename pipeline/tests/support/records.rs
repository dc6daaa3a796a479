//! Valid records in their wire shape, for tests.

use serde_json::{Value, json};

pub fn meal(code_lot: &str, gaveur_id: i64, site: &str, jour: i64, moment: &str) -> Value {
    json!({
        "code_lot": code_lot, "gaveur_id": gaveur_id, "site": site, "jour": jour,
        "moment": moment, "dose_theorique": 200.0 + jour as f64 * 20.0,
        "dose_reelle": 198.5 + jour as f64 * 20.0,
        "timestamp": format!("2026-01-{:02}T{}:00:00", 10 + jour.clamp(0, 18), if moment == "matin" { "07" } else { "18" }),
    })
}

/// A meal with every optional field set.
pub fn full_meal() -> Value {
    json!({
        "code_lot": "LL2601001", "gaveur_id": 1, "gaveur_nom": "Jean Martin", "site": "LL",
        "genetique": "Mulard", "jour": 5, "moment": "soir", "dose_theorique": 340.0,
        "dose_reelle": 333.5, "poids_moyen": 5620.0, "nb_canards_vivants": 998,
        "taux_mortalite": 0.2, "temperature_stabule": 21.4, "humidite_stabule": 64.0,
        "timestamp": "2026-01-20T18:05:00", "pret_abattage": false,
        "firmware": {"ignored": true}
    })
}

fn matrix(value: f64) -> Value {
    json!(vec![vec![value; 8]; 8])
}

/// A SQAL measurement in the stations' full wire shape, with the large raw block.
pub fn sqal(device_id: &str, sample_id: &str, final_score: f64) -> Value {
    json!({
        "type": "sensor_data", "device_id": device_id, "sample_id": sample_id,
        "timestamp": "2026-01-20T10:00:00Z", "location": "ligne 1",
        "vl53l8ch": {
            "distance_matrix": matrix(120.4), "reflectance_matrix": matrix(300.0),
            "amplitude_matrix": matrix(812.0), "ambient_matrix": matrix(7.0),
            "status_matrix": matrix(5.0), "volume_mm3": 640000.0, "quality_score": 0.8,
            "bins_matrix": vec![vec![vec![12; 128]; 8]; 8]
        },
        "vl53l8ch_raw": {"bins_matrix": vec![vec![vec![1234; 128]; 8]; 8]},
        "as7341": {"channels": {"F1_415nm": 101.0, "F2_445nm": 120.0, "NIR": 40.0},
                   "freshness_index": 0.8, "oxidation_index": 0.2},
        "fusion": {"final_score": final_score, "final_grade": "B"}
    })
}

pub fn outcome(code_lot: &str, gaveur_id: i64, site: &str) -> Value {
    json!({
        "code_lot": code_lot, "gaveur_id": gaveur_id, "site": site,
        "nb_canards_mis_en_gavage": 1000, "nb_canards_accroches": 985,
        "poids_foie_moyen_g": 562.5, "date_fin": "2026-01-31"
    })
}

/// One evening meal of each lot `LS<n>` for `n` in `from..to`, on gaveur 2's topic: a
/// record per lot, so counting lots counts records.
pub fn one_meal_per_lot(from: usize, to: usize) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .map(|n| {
            let lot = format!("LS{n:06}");
            (
                "gaveurs/LS/2/gavage".to_string(),
                meal(&lot, 2, "LS", 1, "soir").to_string().into_bytes(),
            )
        })
        .collect()
}
