//! Realistic records: gavage lots meal by meal, their outcomes, and SQAL measurements in the
//! stations' full wire shape.

use chrono::{Duration, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const SITES: [&str; 3] = ["LL", "LS", "MT"];
const STRAINS: [&str; 3] = ["Mulard", "Mulard", "Barbarie"];
const NAMES: [&str; 6] = [
    "Jean Martin",
    "Sophie Dubois",
    "Pierre Lafitte",
    "Marie Laborde",
    "Paul Duprat",
    "Anne Castaing",
];

/// One message to publish: the MQTT topic it goes to and its JSON.
pub struct Outgoing {
    pub topic: String,
    pub body: Value,
}

struct Lot {
    code_lot: String,
    gaveur_id: i64,
    site: &'static str,
    genetique: &'static str,
    start: NaiveDate,
    days: i64,
    /// Meals served so far.
    meal: i64,
    placed: i64,
    alive: i64,
    weight_g: f64,
    daily_gain_g: f64,
}

/// Deterministic for a seed, so a demo or a test can be replayed.
pub struct Farm {
    rng: StdRng,
    /// Every lot's meals lie before this day: event times in the future are refused.
    today: NaiveDate,
    lots: Vec<Lot>,
    gaveurs: i64,
    next_lot: u32,
    /// Distinguishes this run's sample ids from another run's.
    run: u16,
    devices: Vec<(String, &'static str, u64)>,
    next_device: usize,
}

/// Site of a gaveur: gaveur 1 farms at LL, 2 at LS, 3 at MT, 4 at LL again… (the demo users
/// jean.martin, gaveur 1 at LL, and sophie.dubois, gaveur 2 at LS, see their own lots).
pub fn site_of_gaveur(gaveur_id: i64) -> &'static str {
    SITES[((gaveur_id - 1).rem_euclid(3)) as usize]
}

impl Farm {
    pub fn new(seed: u64, lots: usize, gaveurs: usize, devices: usize, today: NaiveDate) -> Farm {
        let mut farm = Farm {
            rng: StdRng::seed_from_u64(seed),
            today,
            lots: Vec::new(),
            gaveurs: gaveurs.max(1) as i64,
            // Lot numbers and sample ids depend on the seed, so runs with different seeds
            // do not look like replays of each other.
            next_lot: (seed % 900) as u32 * 100 + 1,
            run: (seed % 0xffff) as u16,
            devices: (0..devices)
                .map(|n| {
                    let site = SITES[n % 3];
                    (format!("ESP32_{site}_{:02}", n / 3 + 1), site, 0)
                })
                .collect(),
            next_device: 0,
        };
        for n in 0..lots.max(1) {
            // Stagger the lots so they are at different days of their feeding.
            let gaveur_id = 1 + (n as i64 % farm.gaveurs);
            let lot = farm.new_lot(gaveur_id, (n as i64 * 3) % 12);
            farm.lots.push(lot);
        }
        farm
    }

    /// A lot whose feeding ended `ended_days_ago` days before today (all its meals are in
    /// the past: the pipeline refuses event times in the future).
    fn new_lot(&mut self, gaveur_id: i64, ended_days_ago: i64) -> Lot {
        let site = site_of_gaveur(gaveur_id);
        let number = self.next_lot;
        self.next_lot += 1;
        let placed = self.rng.random_range(800..=1200);
        let days = self.rng.random_range(11..=14);
        let start = self.today - Duration::days(days + ended_days_ago);
        Lot {
            code_lot: format!("{site}{}{number:05}", start.format("%y")),
            gaveur_id,
            site,
            genetique: STRAINS[self.rng.random_range(0..STRAINS.len())],
            start,
            days,
            meal: 0,
            placed,
            alive: placed,
            weight_g: self.rng.random_range(4400.0..4800.0),
            daily_gain_g: self.rng.random_range(60.0..90.0),
        }
    }

    /// The next meal of the next lot in turn, and the lot's outcome when that meal was its
    /// last (a new lot then takes its place).
    pub fn next_meal(&mut self) -> Vec<Outgoing> {
        let index = self.rng.random_range(0..self.lots.len());
        let mut out = Vec::with_capacity(2);
        let (meal, finished) = {
            let rng = &mut self.rng;
            let lot = &mut self.lots[index];
            let jour = lot.meal / 2 + 1;
            let matin = lot.meal % 2 == 0;
            let progress = (jour - 1) as f64 / (lot.days - 1) as f64;
            let theo: f64 = if matin {
                200.0 + 260.0 * progress
            } else {
                210.0 + 280.0 * progress
            };
            let reelle = theo * rng.random_range(0.95..1.05);
            if rng.random_bool(0.12) {
                lot.alive -= rng.random_range(1..=2);
            }
            if matin {
                lot.weight_g += lot.daily_gain_g * rng.random_range(0.8..1.2);
            }
            let last = lot.meal + 1 == lot.days * 2;
            let date = lot.start + Duration::days(jour - 1);
            let time = if matin { "06:30:00" } else { "17:30:00" };
            let mut body = json!({
                "code_lot": lot.code_lot,
                "gaveur_id": lot.gaveur_id,
                "gaveur_nom": NAMES[((lot.gaveur_id - 1) % NAMES.len() as i64) as usize],
                "site": lot.site,
                "genetique": lot.genetique,
                "jour": jour,
                "moment": if matin { "matin" } else { "soir" },
                "dose_theorique": round1(theo),
                "dose_reelle": round1(reelle),
                "nb_canards_vivants": lot.alive,
                "taux_mortalite": round2((lot.placed - lot.alive) as f64 / lot.placed as f64 * 100.0),
                "temperature_stabule": round1(rng.random_range(19.5..23.5)),
                "humidite_stabule": round1(rng.random_range(55.0..70.0)),
                "timestamp": format!("{date}T{time}"),
                "pret_abattage": last,
            });
            // Farms weigh in the morning only.
            if matin {
                body["poids_moyen"] = json!(round1(lot.weight_g));
            }
            lot.meal += 1;
            (
                Outgoing {
                    topic: format!("gaveurs/{}/{}/gavage", lot.site, lot.gaveur_id),
                    body,
                },
                last,
            )
        };
        out.push(meal);
        if finished {
            let lot = &self.lots[index];
            let liver = self.rng.random_range(500.0..640.0);
            out.push(Outgoing {
                topic: format!("gaveurs/{}/{}/outcome", lot.site, lot.gaveur_id),
                body: json!({
                    // Marks an outcome where it shares a path with meals (Kafka, /ws/gavage).
                    "record_type": "lot_outcome",
                    "code_lot": lot.code_lot,
                    "gaveur_id": lot.gaveur_id,
                    "site": lot.site,
                    "nb_canards_mis_en_gavage": lot.placed,
                    "nb_canards_accroches": lot.alive,
                    "poids_foie_moyen_g": round1(liver),
                    "date_fin": (lot.start + Duration::days(lot.days - 1)).to_string(),
                }),
            });
            let gaveur_id = lot.gaveur_id;
            self.lots[index] = self.new_lot(gaveur_id, 0);
        }
        out
    }

    /// One SQAL measurement from the next station in turn, V3 wire shape, 50–140 KB.
    pub fn next_sample(&mut self, now: chrono::DateTime<chrono::Utc>) -> Option<Outgoing> {
        self.sample(now, true)
    }

    /// [`Farm::next_sample`] without the large extras the pipeline ignores (`vl53l8ch_raw`,
    /// `analysis`): the same stations measuring, a few KB a sample, for training the SQAL
    /// model.
    pub fn next_sample_without_extras(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Outgoing> {
        self.sample(now, false)
    }

    fn sample(&mut self, now: chrono::DateTime<chrono::Utc>, extras: bool) -> Option<Outgoing> {
        if self.devices.is_empty() {
            return None;
        }
        let slot = self.next_device % self.devices.len();
        self.next_device += 1;
        let (device_id, site, counter) = &mut self.devices[slot];
        *counter += 1;
        let (device_id, site, counter) = (device_id.clone(), *site, *counter);
        let rng = &mut self.rng;
        let quality: f64 = if rng.random_bool(0.08) {
            rng.random_range(0.2..0.5)
        } else {
            rng.random_range(0.55..0.95)
        };
        let base_distance = rng.random_range(90.0..140.0);
        let mut matrix = |center: f64, spread: f64| -> Value {
            json!(
                (0..8)
                    .map(|_| (0..8)
                        .map(|_| round1(center + rng.random_range(-spread..spread)))
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            )
        };
        let distance = matrix(base_distance, 8.0);
        let reflectance = matrix(45.0, 10.0);
        let amplitude = matrix(800.0, 120.0);
        let ambient = matrix(6.0, 3.0);
        let status = json!(vec![vec![5; 8]; 8]);
        let bins: Vec<Vec<Vec<u32>>> = (0..8 * usize::from(extras))
            .map(|_| {
                (0..8)
                    .map(|_| (0..128).map(|_| rng.random_range(0..16384)).collect())
                    .collect()
            })
            .collect();
        // Stations also send per-zone analysis profiles of varying length, which is what
        // makes their messages 50–140 KB.
        let profile_len = rng.random_range(16..=128);
        let profiles: Vec<Vec<f64>> = (0..64 * usize::from(extras))
            .map(|_| {
                (0..profile_len)
                    .map(|_| round2(rng.random_range(0.0..1000.0)))
                    .collect()
            })
            .collect();
        let volume = rng.random_range(520_000.0..700_000.0) * (0.8 + quality * 0.3);
        let channel = |rng: &mut StdRng, center: f64| round1(center * rng.random_range(0.9..1.1));
        let lot = self
            .lots
            .iter()
            .find(|l| l.site == site)
            .map(|l| l.code_lot.clone());
        let mut body = json!({
            "type": "sensor_data",
            "device_id": device_id,
            "sample_id": format!("{device_id}-{:04x}-{counter:06}", self.run),
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "location": format!("Ligne {}", slot % 3 + 1),
            "code_lot": lot,
            "vl53l8ch": {
                "distance_matrix": distance,
                "reflectance_matrix": reflectance,
                "amplitude_matrix": amplitude,
                "ambient_matrix": ambient,
                "status_matrix": status,
                "volume_mm3": round1(volume),
                "surface_uniformity": round2(0.6 + quality * 0.35),
                "quality_score": round2(quality * rng.random_range(0.95..1.05)),
                "avg_distance_mm": round1(base_distance),
                "std_distance_mm": round1(rng.random_range(2.0..9.0)),
                "defects": if quality < 0.5 { json!([{"type": "hematome", "severity": "moderate"}]) } else { json!([]) },
            },
            "vl53l8ch_raw": {"bins_matrix": bins, "integration_time_ms": 20},
            "analysis": {"zone_profiles": profiles, "model": "fusion-v3"},
            "as7341": {
                "channels": {
                    "F1_415nm": channel(rng, 120.0), "F2_445nm": channel(rng, 340.0),
                    "F3_480nm": channel(rng, 560.0), "F4_515nm": channel(rng, 780.0),
                    "F5_555nm": channel(rng, 1020.0), "F6_590nm": channel(rng, 1250.0),
                    "F7_630nm": channel(rng, 1480.0), "F8_680nm": channel(rng, 990.0),
                    "Clear": channel(rng, 4100.0), "NIR": channel(rng, 640.0)
                },
                "freshness_index": round2(0.5 + quality * 0.5),
                "fat_quality_index": round2(0.55 + quality * 0.4),
                "oxidation_index": round2(0.45 - quality * 0.4),
                "quality_score": round2(quality),
            },
            "as7341_raw": {"gain": 256, "atime": 29, "astep": 599, "adc": (0..12).map(|_| rng.random_range(0..65535)).collect::<Vec<u32>>()},
            "fusion": {
                "final_score": round2(quality),
                "tof_score": round2(quality * rng.random_range(0.95..1.05)).min(1.0),
                "spectral_score": round2(quality * rng.random_range(0.95..1.05)).min(1.0),
                "is_compliant": quality >= 0.45,
            },
            "meta": {"firmware": "3.2.1", "simulated": true},
        });
        if !extras && let Some(fields) = body.as_object_mut() {
            fields.remove("vl53l8ch_raw");
            fields.remove("analysis");
        }
        Some(Outgoing {
            topic: format!("sqal/{site}/{device_id}/measurements"),
            body,
        })
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gaveurs_schemas::records::{GavageMeal, LotOutcome, SqalSample};
    use gaveurs_schemas::time::SiteTimeZones;

    #[test]
    fn generated_records_pass_validation_and_follow_the_curves() {
        let mut farm = Farm::new(7, 3, 2, 3, NaiveDate::from_ymd_opt(2026, 1, 5).unwrap());
        let zones = SiteTimeZones::default();
        let mut outcomes = 0;
        let mut meals = Vec::new();
        for _ in 0..200 {
            for out in farm.next_meal() {
                let bytes = out.body.to_string();
                if out.topic.ends_with("/outcome") {
                    outcomes += 1;
                    LotOutcome::decode(bytes.as_bytes(), &zones).unwrap();
                } else {
                    meals.push(GavageMeal::decode(bytes.as_bytes(), &zones).unwrap());
                }
            }
        }
        assert!(outcomes >= 3, "lots finish and are replaced");
        let today = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        assert!(
            meals.iter().all(|m| m.timestamp.date_naive() < today),
            "every meal is in the past"
        );
        for meal in &meals {
            assert!((1..=14).contains(&meal.jour));
            let ratio = meal.dose_reelle / meal.dose_theorique;
            assert!((0.95..=1.05).contains(&ratio));
            assert!((200.0..=490.0).contains(&meal.dose_theorique));
        }
        let first_day = meals
            .iter()
            .find(|m| m.jour == 1 && m.moment.as_str() == "matin")
            .unwrap();
        assert_eq!(first_day.dose_theorique, 200.0);
        for _ in 0..20 {
            let sample = farm.next_sample(chrono::Utc::now()).unwrap();
            let bytes = sample.body.to_string();
            assert!(
                (50_000..=140_000).contains(&bytes.len()),
                "{} bytes",
                bytes.len()
            );
            SqalSample::decode(bytes.as_bytes()).unwrap();
        }
    }
}
