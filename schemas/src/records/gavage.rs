use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Site;
use crate::time::{SiteTimeZones, parse_timestamp};
use crate::validation::{
    self, DecodeError, ValidationError, code_lot, finite, in_range, non_negative, optional,
};

/// Which of the day's two meals.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Moment {
    Matin,
    Soir,
}

impl Moment {
    pub fn as_str(self) -> &'static str {
        match self {
            Moment::Matin => "matin",
            Moment::Soir => "soir",
        }
    }
}

impl fmt::Display for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gavage meal record: one per lot per meal (SPEC §1.1). Keys not listed here are ignored.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(title = "gavage_meal")]
pub struct GavageMealInput {
    /// Lot code, by convention a site prefix and digits (`LL2601001`); 1–64 characters.
    #[schemars(length(min = 1, max = 64))]
    pub code_lot: String,
    /// The farmer who feeds the lot; must equal the producer token's `gaveur_id`.
    pub gaveur_id: i64,
    /// The farmer's name, for display only.
    #[serde(default)]
    pub gaveur_nom: Option<String>,
    pub site: Site,
    /// Duck strain, e.g. `Mulard`, `Barbarie`, `Pékin`.
    #[serde(default)]
    pub genetique: Option<String>,
    /// Feeding day, from 1; −1 is the preparation day.
    #[schemars(range(min = -1))]
    pub jour: i64,
    pub moment: Moment,
    /// Planned maize per duck for this meal, grams.
    #[schemars(range(min = 0.0))]
    pub dose_theorique: f64,
    /// Maize actually given per duck for this meal, grams.
    #[schemars(range(min = 0.0))]
    pub dose_reelle: f64,
    /// Mean live weight, grams.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub poids_moyen: Option<f64>,
    /// Ducks alive after this meal.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub nb_canards_vivants: Option<i64>,
    /// Dead / initial × 100.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub taux_mortalite: Option<f64>,
    /// Barn temperature, °C.
    #[serde(default)]
    pub temperature_stabule: Option<f64>,
    /// Barn relative humidity, %.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub humidite_stabule: Option<f64>,
    /// ISO-8601. Without an offset it is the site's local time (Europe/Paris by default). Not
    /// before 2000-01-01, nor more than 5 minutes (configurable) after the record is received.
    pub timestamp: String,
    /// True on the lot's last meal.
    #[serde(default)]
    pub pret_abattage: Option<bool>,
}

/// A validated gavage meal; `timestamp` is the event time in UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GavageMeal {
    pub code_lot: String,
    pub gaveur_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaveur_nom: Option<String>,
    pub site: Site,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genetique: Option<String>,
    pub jour: i64,
    pub moment: Moment,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poids_moyen: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nb_canards_vivants: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taux_mortalite: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_stabule: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub humidite_stabule: Option<f64>,
    #[serde(serialize_with = "crate::time::serialize_utc")]
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub pret_abattage: bool,
}

impl GavageMeal {
    /// Decodes and validates one JSON meal record.
    pub fn decode(bytes: &[u8], zones: &SiteTimeZones) -> Result<Self, DecodeError> {
        Ok(validation::decode::<GavageMealInput>(bytes)?.validate(zones)?)
    }
}

impl GavageMealInput {
    pub fn validate(self, zones: &SiteTimeZones) -> Result<GavageMeal, ValidationError> {
        code_lot("code_lot", &self.code_lot)?;
        if self.jour < -1 {
            return Err(ValidationError::new(
                "jour",
                format!("must be ≥ −1 (got {})", self.jour),
            ));
        }
        let timestamp = parse_timestamp(&self.timestamp, zones.for_site(self.site.as_str()))
            .map_err(|rule| ValidationError::new("timestamp", rule))?;
        let nb_canards_vivants = match self.nb_canards_vivants {
            Some(n) if n < 0 => {
                return Err(ValidationError::new(
                    "nb_canards_vivants",
                    format!("must be ≥ 0 (got {n})"),
                ));
            }
            other => other,
        };
        Ok(GavageMeal {
            dose_theorique: non_negative("dose_theorique", self.dose_theorique)?,
            dose_reelle: non_negative("dose_reelle", self.dose_reelle)?,
            poids_moyen: optional(self.poids_moyen, |v| non_negative("poids_moyen", v))?,
            taux_mortalite: optional(self.taux_mortalite, |v| {
                in_range("taux_mortalite", v, 0.0, 100.0)
            })?,
            temperature_stabule: optional(self.temperature_stabule, |v| {
                finite("temperature_stabule", v)
            })?,
            humidite_stabule: optional(self.humidite_stabule, |v| {
                in_range("humidite_stabule", v, 0.0, 100.0)
            })?,
            nb_canards_vivants,
            code_lot: self.code_lot,
            gaveur_id: self.gaveur_id,
            gaveur_nom: self.gaveur_nom,
            site: self.site,
            genetique: self.genetique,
            jour: self.jour,
            moment: self.moment,
            timestamp,
            pret_abattage: self.pret_abattage.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(value: serde_json::Value) -> Result<GavageMeal, ValidationError> {
        GavageMeal::decode(value.to_string().as_bytes(), &SiteTimeZones::default())
            .map_err(DecodeError::expect_invalid)
    }

    fn valid() -> serde_json::Value {
        json!({
            "code_lot": "LL2601001", "gaveur_id": 1, "site": "LL", "jour": 3,
            "moment": "matin", "dose_theorique": 250.0, "dose_reelle": 248.5,
            "timestamp": "2026-01-20T08:00:00"
        })
    }

    #[test]
    fn minimal_record_is_accepted_and_unknown_keys_ignored() {
        let mut record = valid();
        record["firmware"] = json!({"nested": {"anything": [1, 2, 3]}});
        let meal = decode(record).unwrap();
        assert_eq!(meal.code_lot, "LL2601001");
        assert_eq!(meal.timestamp.to_rfc3339(), "2026-01-20T07:00:00+00:00");
        assert!(!meal.pret_abattage);
        assert_eq!(meal.poids_moyen, None);
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("code_lot", json!(""), "must not be empty"),
            ("code_lot", json!("L".repeat(65)), "at most 64"),
            ("jour", json!(-2), "≥ −1"),
            ("moment", json!("midi"), "unknown variant"),
            ("site", json!("XX"), "unknown variant"),
            ("dose_reelle", json!(-1.0), "≥ 0"),
            ("dose_theorique", json!("abc"), "invalid type"),
            ("taux_mortalite", json!(101), "between 0 and 100"),
            ("humidite_stabule", json!(-3), "between 0 and 100"),
            ("nb_canards_vivants", json!(-1), "≥ 0"),
            ("timestamp", json!("tomorrow"), "ISO-8601"),
            ("gaveur_id", json!(1.5), "invalid type"),
        ];
        for (field, value, expected) in cases {
            let mut record = valid();
            record[field] = value;
            let err = decode(record).unwrap_err();
            assert_eq!(err.path, field, "{err}");
            assert!(err.rule.contains(expected), "{field}: {err}");
        }
    }

    #[test]
    fn missing_required_field_is_named() {
        let mut record = valid();
        record.as_object_mut().unwrap().remove("dose_reelle");
        let err = decode(record).unwrap_err();
        assert_eq!(err.to_string(), "dose_reelle: is required");
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let mut record = valid();
        record["poids_moyen"] = serde_json::Value::Null;
        assert_eq!(decode(record).unwrap().poids_moyen, None);
    }

    #[test]
    fn code_lot_counts_characters_not_bytes() {
        let mut record = valid();
        record["code_lot"] = json!("é".repeat(64));
        assert!(decode(record).is_ok());
    }
}
