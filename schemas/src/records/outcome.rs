use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Site;
use crate::time::{SiteTimeZones, local_to_utc, parse_date, parse_timestamp};
use crate::validation::{self, DecodeError, ValidationError, code_lot, optional};

/// The outcome of a lot at slaughter (SPEC §1.3). It closes the lot: its ITM is computed
/// from it. On Kafka it shares the gavage topic, marked `"record_type": "lot_outcome"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(title = "lot_outcome")]
pub struct LotOutcomeInput {
    /// `lot_outcome`; absent on the MQTT outcome topic.
    #[serde(default)]
    pub record_type: Option<String>,
    #[schemars(length(min = 1, max = 64))]
    pub code_lot: String,
    pub gaveur_id: i64,
    pub site: Site,
    /// Ducks put into feeding.
    #[schemars(range(min = 0))]
    pub nb_canards_mis_en_gavage: i64,
    /// Ducks delivered to slaughter.
    #[schemars(range(min = 0))]
    pub nb_canards_accroches: i64,
    /// Mean liver weight, grams; when absent it is derived from the lot's SQAL samples.
    #[serde(default)]
    pub poids_foie_moyen_g: Option<f64>,
    /// Last feeding day, `YYYY-MM-DD`: not before 2000-01-01, nor after the day the record is
    /// received (site time).
    pub date_fin: String,
    /// When the outcome was recorded; defaults to the end of `date_fin`, site time. Not before
    /// 2000-01-01, nor more than 5 minutes (configurable) after the record is received.
    #[serde(default)]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LotOutcome {
    pub code_lot: String,
    pub gaveur_id: i64,
    pub site: Site,
    pub nb_canards_mis_en_gavage: i64,
    pub nb_canards_accroches: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poids_foie_moyen_g: Option<f64>,
    pub date_fin: NaiveDate,
    #[serde(serialize_with = "crate::time::serialize_utc")]
    pub event_time: DateTime<Utc>,
}

impl LotOutcome {
    pub fn decode(bytes: &[u8], zones: &SiteTimeZones) -> Result<Self, DecodeError> {
        Ok(validation::decode::<LotOutcomeInput>(bytes)?.validate(zones)?)
    }
}

impl LotOutcomeInput {
    pub fn validate(self, zones: &SiteTimeZones) -> Result<LotOutcome, ValidationError> {
        if let Some(kind) = &self.record_type
            && kind != "lot_outcome"
        {
            return Err(ValidationError::new(
                "record_type",
                format!("must be \"lot_outcome\" for an outcome (got {kind:?})"),
            ));
        }
        code_lot("code_lot", &self.code_lot)?;
        if self.nb_canards_mis_en_gavage < 0 {
            return Err(ValidationError::new(
                "nb_canards_mis_en_gavage",
                "must be ≥ 0",
            ));
        }
        // More ducks delivered than placed is not refused: real exports have it (ducks moved
        // in from another lot), and the lot's ITM does not depend on it; its losses are then
        // negative.
        if self.nb_canards_accroches < 0 {
            return Err(ValidationError::new(
                "nb_canards_accroches",
                format!("must be ≥ 0 (got {})", self.nb_canards_accroches),
            ));
        }
        let poids_foie_moyen_g = optional(self.poids_foie_moyen_g, |v| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(ValidationError::new(
                    "poids_foie_moyen_g",
                    format!("must be > 0 (got {v})"),
                ))
            }
        })?;
        let date_fin =
            parse_date(&self.date_fin).map_err(|rule| ValidationError::new("date_fin", rule))?;
        let tz = zones.for_site(self.site.as_str());
        let event_time = match &self.timestamp {
            Some(text) => {
                parse_timestamp(text, tz).map_err(|rule| ValidationError::new("timestamp", rule))?
            }
            None => local_to_utc(
                date_fin.and_time(NaiveTime::from_hms_opt(23, 59, 59).expect("valid time")),
                tz,
            ),
        };
        Ok(LotOutcome {
            code_lot: self.code_lot,
            gaveur_id: self.gaveur_id,
            site: self.site,
            nb_canards_mis_en_gavage: self.nb_canards_mis_en_gavage,
            nb_canards_accroches: self.nb_canards_accroches,
            poids_foie_moyen_g,
            date_fin,
            event_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcome_defaults_to_end_of_last_day() {
        let outcome = LotOutcome::decode(
            json!({"code_lot": "LL1", "gaveur_id": 1, "site": "LL", "nb_canards_mis_en_gavage": 100,
                   "nb_canards_accroches": 97, "poids_foie_moyen_g": 560.0, "date_fin": "2026-01-31"})
            .to_string()
            .as_bytes(),
            &SiteTimeZones::default(),
        )
        .unwrap();
        assert_eq!(outcome.event_time.to_rfc3339(), "2026-01-31T22:59:59+00:00");
    }

    #[test]
    fn delivered_may_exceed_placed_but_not_be_negative() {
        let decode = |delivered: i64| {
            LotOutcome::decode(
                json!({"code_lot": "LL1", "gaveur_id": 1, "site": "LL", "nb_canards_mis_en_gavage": 10,
                       "nb_canards_accroches": delivered, "date_fin": "2026-01-31"})
                .to_string()
                .as_bytes(),
                &SiteTimeZones::default(),
            )
        };
        assert_eq!(decode(11).unwrap().nb_canards_accroches, 11);
        let err = decode(-1).unwrap_err().expect_invalid();
        assert_eq!(err.path, "nb_canards_accroches");
    }
}
