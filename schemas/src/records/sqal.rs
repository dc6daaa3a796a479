use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::Site;
use crate::time::parse_timestamp;
use crate::validation::{self, DecodeError, ValidationError, code_lot, finite, in_range};

/// Liver grade, derived from `final_score` (SPEC §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Grade {
    #[serde(rename = "REJECT")]
    Reject,
    C,
    B,
    A,
    #[serde(rename = "A+")]
    APlus,
}

impl Grade {
    pub fn from_score(score: f64) -> Grade {
        if score >= 0.85 {
            Grade::APlus
        } else if score >= 0.75 {
            Grade::A
        } else if score >= 0.60 {
            Grade::B
        } else if score >= 0.45 {
            Grade::C
        } else {
            Grade::Reject
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Grade::APlus => "A+",
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::Reject => "REJECT",
        }
    }

    pub fn parse(text: &str) -> Option<Grade> {
        [Grade::APlus, Grade::A, Grade::B, Grade::C, Grade::Reject]
            .into_iter()
            .find(|g| g.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An 8×8 matrix of the VL53L8CH time-of-flight sensor, row by row.
pub type Matrix8x8 = [[i32; 8]; 8];

/// A SQAL measurement as the ESP32 stations send it (`type: "sensor_data"`, SPEC §1.2).
/// Large extras (`vl53l8ch_raw`, `as7341_raw`, analysis blocks) are accepted and ignored.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(title = "sqal_measurement")]
pub struct SqalMeasurementInput {
    /// `sensor_data` for a measurement.
    #[serde(rename = "type", default)]
    pub message_type: Option<String>,
    /// Station id, e.g. `ESP32_LL_01`; its two-letter token is the site.
    pub device_id: String,
    /// Sample id, unique per station (not across stations).
    #[serde(deserialize_with = "text_or_integer")]
    #[schemars(with = "String")]
    pub sample_id: String,
    /// ISO-8601 UTC (`Z`). Not before 2000-01-01, nor more than 5 minutes (configurable)
    /// after the record is received.
    pub timestamp: String,
    #[serde(default)]
    pub location: Option<String>,
    /// The lot the liver comes from, when the station knows it.
    #[serde(default)]
    pub code_lot: Option<String>,
    pub vl53l8ch: Vl53l8chInput,
    #[serde(default)]
    pub as7341: Option<As7341Input>,
    pub fusion: FusionInput,
    /// Free-form station metadata, stored as JSON text.
    #[serde(default)]
    pub meta: Option<serde_json::Value>,
}

/// Time-of-flight block. Matrix values are rounded and clamped (distance 0–4000 mm,
/// reflectance 0–255, amplitude 0–4095, ambient 0–4095, status 0–255).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct Vl53l8chInput {
    pub distance_matrix: Vec<Vec<f64>>,
    pub reflectance_matrix: Vec<Vec<f64>>,
    pub amplitude_matrix: Vec<Vec<f64>>,
    pub ambient_matrix: Vec<Vec<f64>>,
    pub status_matrix: Vec<Vec<f64>>,
    #[serde(default)]
    pub volume_mm3: Option<f64>,
    #[serde(default)]
    pub surface_uniformity: Option<f64>,
    #[serde(default)]
    pub quality_score: Option<f64>,
    #[serde(default)]
    pub grade: Option<String>,
    #[serde(default)]
    pub avg_distance_mm: Option<f64>,
    #[serde(default)]
    pub std_distance_mm: Option<f64>,
    /// Detected defects, stored as JSON text.
    #[serde(default)]
    pub defects: Option<serde_json::Value>,
}

/// Spectral block.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct As7341Input {
    #[serde(default)]
    pub channels: Option<As7341Channels>,
    #[serde(default)]
    pub freshness_index: Option<f64>,
    #[serde(default)]
    pub fat_quality_index: Option<f64>,
    #[serde(default)]
    pub oxidation_index: Option<f64>,
    #[serde(default)]
    pub quality_score: Option<f64>,
}

/// The ten AS7341 channels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[allow(non_snake_case)]
pub struct As7341Channels {
    #[serde(default)]
    pub F1_415nm: Option<f64>,
    #[serde(default)]
    pub F2_445nm: Option<f64>,
    #[serde(default)]
    pub F3_480nm: Option<f64>,
    #[serde(default)]
    pub F4_515nm: Option<f64>,
    #[serde(default)]
    pub F5_555nm: Option<f64>,
    #[serde(default)]
    pub F6_590nm: Option<f64>,
    #[serde(default)]
    pub F7_630nm: Option<f64>,
    #[serde(default)]
    pub F8_680nm: Option<f64>,
    #[serde(default)]
    pub Clear: Option<f64>,
    #[serde(default)]
    pub NIR: Option<f64>,
}

/// Fusion of both sensors.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct FusionInput {
    /// 0–1; the grade is re-derived from it.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub final_score: f64,
    /// The grade the station computed; informative only.
    #[serde(default)]
    pub final_grade: Option<String>,
    /// Defaults to grade ≠ REJECT.
    #[serde(default)]
    pub is_compliant: Option<bool>,
    #[serde(default)]
    pub tof_score: Option<f64>,
    #[serde(default)]
    pub spectral_score: Option<f64>,
}

/// A validated, normalised SQAL sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqalSample {
    pub device_id: String,
    pub sample_id: String,
    #[serde(serialize_with = "crate::time::serialize_utc")]
    pub timestamp: DateTime<Utc>,
    pub site_code: Site,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_lot: Option<String>,
    pub final_score: f64,
    pub grade: Grade,
    /// The grade as the station sent it, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_grade: Option<String>,
    pub is_compliant: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tof_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spectral_score: Option<f64>,
    pub distance_matrix: Matrix8x8,
    pub reflectance_matrix: Matrix8x8,
    pub amplitude_matrix: Matrix8x8,
    pub ambient_matrix: Matrix8x8,
    pub status_matrix: Matrix8x8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mm3: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poids_foie_estime_g: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surface_uniformity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vl53l8ch_quality_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vl53l8ch_grade: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_distance_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std_distance_mm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defects: Option<serde_json::Value>,
    #[serde(default)]
    pub channels: As7341Channels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_index: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fat_quality_index: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oxidation_index: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as7341_quality_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// Estimated liver weight from the measured volume: volume_mm3 / 1000 × 0.947 g.
pub const LIVER_DENSITY_G_PER_CM3: f64 = 0.947;

impl SqalSample {
    /// Decodes, validates and normalises one `sensor_data` message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(validation::decode::<SqalMeasurementInput>(bytes)?.validate()?)
    }

    /// The site token of a station id: `ESP32_LL_01` → `LL`.
    pub fn site_of_device(device_id: &str) -> Option<Site> {
        device_id.split(['_', '-']).find_map(Site::parse)
    }
}

impl SqalMeasurementInput {
    pub fn validate(self) -> Result<SqalSample, ValidationError> {
        if let Some(kind) = &self.message_type
            && kind != "sensor_data"
        {
            return Err(ValidationError::new(
                "type",
                format!("must be \"sensor_data\" for a measurement (got {kind:?})"),
            ));
        }
        if self.device_id.trim().is_empty() {
            return Err(ValidationError::new("device_id", "must not be empty"));
        }
        let site_code = SqalSample::site_of_device(&self.device_id).ok_or_else(|| {
            ValidationError::new(
                "device_id",
                format!(
                    "must contain a site token LL, LS or MT, e.g. ESP32_LL_01 (got {:?})",
                    self.device_id
                ),
            )
        })?;
        if self.sample_id.trim().is_empty() {
            return Err(ValidationError::new("sample_id", "must not be empty"));
        }
        let timestamp = parse_timestamp(&self.timestamp, chrono_tz::UTC)
            .map_err(|rule| ValidationError::new("timestamp", rule))?;
        if let Some(lot) = &self.code_lot {
            code_lot("code_lot", lot)?;
        }
        let final_score = in_range("fusion.final_score", self.fusion.final_score, 0.0, 1.0)?;
        let grade = Grade::from_score(final_score);
        let tof = self.vl53l8ch;
        let spectral = self.as7341.unwrap_or_default();
        let volume_mm3 = optional_finite("vl53l8ch.volume_mm3", tof.volume_mm3)?;
        Ok(SqalSample {
            distance_matrix: matrix("vl53l8ch.distance_matrix", &tof.distance_matrix, 4000)?,
            reflectance_matrix: matrix(
                "vl53l8ch.reflectance_matrix",
                &tof.reflectance_matrix,
                255,
            )?,
            amplitude_matrix: matrix("vl53l8ch.amplitude_matrix", &tof.amplitude_matrix, 4095)?,
            ambient_matrix: matrix("vl53l8ch.ambient_matrix", &tof.ambient_matrix, 4095)?,
            status_matrix: matrix("vl53l8ch.status_matrix", &tof.status_matrix, 255)?,
            poids_foie_estime_g: volume_mm3.map(|v| v / 1000.0 * LIVER_DENSITY_G_PER_CM3),
            volume_mm3,
            surface_uniformity: optional_finite(
                "vl53l8ch.surface_uniformity",
                tof.surface_uniformity,
            )?,
            vl53l8ch_quality_score: optional_finite("vl53l8ch.quality_score", tof.quality_score)?,
            vl53l8ch_grade: tof.grade,
            avg_distance_mm: optional_finite("vl53l8ch.avg_distance_mm", tof.avg_distance_mm)?,
            std_distance_mm: optional_finite("vl53l8ch.std_distance_mm", tof.std_distance_mm)?,
            defects: tof.defects,
            channels: spectral.channels.unwrap_or_default(),
            freshness_index: optional_finite("as7341.freshness_index", spectral.freshness_index)?,
            fat_quality_index: optional_finite(
                "as7341.fat_quality_index",
                spectral.fat_quality_index,
            )?,
            oxidation_index: optional_finite("as7341.oxidation_index", spectral.oxidation_index)?,
            as7341_quality_score: optional_finite("as7341.quality_score", spectral.quality_score)?,
            is_compliant: self.fusion.is_compliant.unwrap_or(grade != Grade::Reject),
            tof_score: optional_finite("fusion.tof_score", self.fusion.tof_score)?,
            spectral_score: optional_finite("fusion.spectral_score", self.fusion.spectral_score)?,
            reported_grade: self.fusion.final_grade,
            final_score,
            grade,
            device_id: self.device_id,
            sample_id: self.sample_id,
            timestamp,
            site_code,
            location: self.location,
            code_lot: self.code_lot,
            meta: self.meta,
        })
    }
}

fn optional_finite(path: &str, value: Option<f64>) -> Result<Option<f64>, ValidationError> {
    value.map(|v| finite(path, v)).transpose()
}

/// Checks the 8×8 shape, then rounds every value to an integer and clamps it to `0..=max`.
fn matrix(path: &str, rows: &[Vec<f64>], max: i32) -> Result<Matrix8x8, ValidationError> {
    if rows.len() != 8 {
        return Err(ValidationError::new(
            path,
            format!("must have 8 rows (got {})", rows.len()),
        ));
    }
    let mut out = [[0i32; 8]; 8];
    for (r, row) in rows.iter().enumerate() {
        if row.len() != 8 {
            return Err(ValidationError::new(
                format!("{path}[{r}]"),
                format!("must have 8 values (got {})", row.len()),
            ));
        }
        for (c, value) in row.iter().enumerate() {
            if !value.is_finite() {
                return Err(ValidationError::new(
                    format!("{path}[{r}][{c}]"),
                    "must be a finite number",
                ));
            }
            out[r][c] = value.round().clamp(0.0, f64::from(max)) as i32;
        }
    }
    Ok(out)
}

fn text_or_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matrix_of(value: f64) -> serde_json::Value {
        json!(vec![vec![value; 8]; 8])
    }

    fn valid() -> serde_json::Value {
        json!({
            "type": "sensor_data",
            "device_id": "ESP32_LL_01",
            "sample_id": "S-0001",
            "timestamp": "2026-01-20T10:00:00Z",
            "vl53l8ch": {
                "distance_matrix": matrix_of(5000.4),
                "reflectance_matrix": matrix_of(-3.0),
                "amplitude_matrix": matrix_of(1200.6),
                "ambient_matrix": matrix_of(12.0),
                "status_matrix": matrix_of(5.0),
                "volume_mm3": 700000.0,
                "bins_matrix": [[[1, 2, 3]]]
            },
            "vl53l8ch_raw": {"bins_matrix": vec![vec![vec![0; 128]; 8]; 8]},
            "as7341": {"channels": {"F1_415nm": 120.0, "NIR": 40.0}, "oxidation_index": 0.2},
            "fusion": {"final_score": 0.8, "final_grade": "B"}
        })
    }

    #[test]
    fn normalises_matrices_grade_site_and_weight() {
        let sample = SqalSample::decode(valid().to_string().as_bytes()).unwrap();
        assert_eq!(sample.site_code, Site::LL);
        assert_eq!(sample.distance_matrix[0][0], 4000);
        assert_eq!(sample.reflectance_matrix[7][7], 0);
        assert_eq!(sample.amplitude_matrix[3][3], 1201);
        assert_eq!(sample.grade, Grade::A);
        assert_eq!(sample.reported_grade.as_deref(), Some("B"));
        assert!(sample.is_compliant);
        assert!((sample.poids_foie_estime_g.unwrap() - 662.9).abs() < 1e-9);
        assert_eq!(sample.channels.F1_415nm, Some(120.0));
    }

    #[test]
    fn grade_thresholds() {
        for (score, grade) in [
            (0.85, Grade::APlus),
            (0.849, Grade::A),
            (0.75, Grade::A),
            (0.6, Grade::B),
            (0.45, Grade::C),
            (0.4499, Grade::Reject),
        ] {
            assert_eq!(Grade::from_score(score), grade, "{score}");
        }
    }

    #[test]
    fn reject_is_not_compliant_by_default() {
        let mut record = valid();
        record["fusion"]["final_score"] = json!(0.2);
        let sample = SqalSample::decode(record.to_string().as_bytes()).unwrap();
        assert_eq!(sample.grade, Grade::Reject);
        assert!(!sample.is_compliant);
    }

    #[test]
    fn bad_shapes_name_their_path() {
        let mut record = valid();
        record["vl53l8ch"]["status_matrix"][2] = json!([1, 2, 3]);
        let err = SqalSample::decode(record.to_string().as_bytes())
            .unwrap_err()
            .expect_invalid();
        assert_eq!(err.path, "vl53l8ch.status_matrix[2]");

        let mut record = valid();
        record["vl53l8ch"]["distance_matrix"][3][7] = json!("far");
        let err = SqalSample::decode(record.to_string().as_bytes())
            .unwrap_err()
            .expect_invalid();
        assert_eq!(err.path, "vl53l8ch.distance_matrix[3][7]");

        let mut record = valid();
        record["fusion"]
            .as_object_mut()
            .unwrap()
            .remove("final_score");
        let err = SqalSample::decode(record.to_string().as_bytes())
            .unwrap_err()
            .expect_invalid();
        assert_eq!(err.to_string(), "fusion.final_score: is required");

        let mut record = valid();
        record["fusion"]["final_score"] = json!(1.5);
        let err = SqalSample::decode(record.to_string().as_bytes())
            .unwrap_err()
            .expect_invalid();
        assert_eq!(err.path, "fusion.final_score");

        let mut record = valid();
        record["device_id"] = json!("ESP32_XX_01");
        let err = SqalSample::decode(record.to_string().as_bytes())
            .unwrap_err()
            .expect_invalid();
        assert_eq!(err.path, "device_id");
    }

    #[test]
    fn integer_sample_ids_are_text() {
        let mut record = valid();
        record["sample_id"] = json!(42);
        let sample = SqalSample::decode(record.to_string().as_bytes()).unwrap();
        assert_eq!(sample.sample_id, "42");
    }
}
