use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use serde::Serialize;

use super::envelope_columns::EnvelopeColumns;
use super::{Dataset, field, schema_with_envelope, utc_micros, wrong_dataset};
use crate::event::Event;
use crate::records::{Matrix8x8, Record};

pub(super) const MATRICES: [&str; 5] = [
    "distance_matrix",
    "reflectance_matrix",
    "amplitude_matrix",
    "ambient_matrix",
    "status_matrix",
];

fn matrix_type() -> DataType {
    let row = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, false)));
    DataType::List(Arc::new(Field::new_list_field(row, false)))
}

pub(super) fn schema() -> Schema {
    let mut fields = vec![
        field("device_id", DataType::Utf8, false),
        field("sample_id", DataType::Utf8, false),
        field("timestamp", utc_micros(), false),
        field("site_code", DataType::Utf8, false),
        field("location", DataType::Utf8, true),
        field("code_lot", DataType::Utf8, true),
        field("final_score", DataType::Float64, false),
        field("grade", DataType::Utf8, false),
        field("reported_grade", DataType::Utf8, true),
        field("is_compliant", DataType::Boolean, false),
        field("tof_score", DataType::Float64, true),
        field("spectral_score", DataType::Float64, true),
        field("volume_mm3", DataType::Float64, true),
        field("poids_foie_estime_g", DataType::Float64, true),
        field("surface_uniformity", DataType::Float64, true),
        field("vl53l8ch_quality_score", DataType::Float64, true),
        field("vl53l8ch_grade", DataType::Utf8, true),
        field("avg_distance_mm", DataType::Float64, true),
        field("std_distance_mm", DataType::Float64, true),
        field("defects", DataType::Utf8, true),
    ];
    for channel in [
        "f1_415nm", "f2_445nm", "f3_480nm", "f4_515nm", "f5_555nm", "f6_590nm", "f7_630nm",
        "f8_680nm", "clear", "nir",
    ] {
        fields.push(field(channel, DataType::Float64, true));
    }
    fields.extend([
        field("freshness_index", DataType::Float64, true),
        field("fat_quality_index", DataType::Float64, true),
        field("oxidation_index", DataType::Float64, true),
        field("as7341_quality_score", DataType::Float64, true),
        field("meta", DataType::Utf8, true),
    ]);
    fields.extend(
        MATRICES
            .iter()
            .map(|name| field(name, matrix_type(), false)),
    );
    schema_with_envelope(fields)
}

#[derive(Serialize)]
pub(super) struct Row<'a> {
    device_id: &'a str,
    sample_id: &'a str,
    timestamp: i64,
    site_code: &'static str,
    location: Option<&'a str>,
    code_lot: Option<&'a str>,
    final_score: f64,
    grade: &'static str,
    reported_grade: Option<&'a str>,
    is_compliant: bool,
    tof_score: Option<f64>,
    spectral_score: Option<f64>,
    volume_mm3: Option<f64>,
    poids_foie_estime_g: Option<f64>,
    surface_uniformity: Option<f64>,
    vl53l8ch_quality_score: Option<f64>,
    vl53l8ch_grade: Option<&'a str>,
    avg_distance_mm: Option<f64>,
    std_distance_mm: Option<f64>,
    /// JSON text, to keep the dataset flat.
    defects: Option<String>,
    f1_415nm: Option<f64>,
    f2_445nm: Option<f64>,
    f3_480nm: Option<f64>,
    f4_515nm: Option<f64>,
    f5_555nm: Option<f64>,
    f6_590nm: Option<f64>,
    f7_630nm: Option<f64>,
    f8_680nm: Option<f64>,
    clear: Option<f64>,
    nir: Option<f64>,
    freshness_index: Option<f64>,
    fat_quality_index: Option<f64>,
    oxidation_index: Option<f64>,
    as7341_quality_score: Option<f64>,
    meta: Option<String>,
    distance_matrix: &'a Matrix8x8,
    reflectance_matrix: &'a Matrix8x8,
    amplitude_matrix: &'a Matrix8x8,
    ambient_matrix: &'a Matrix8x8,
    status_matrix: &'a Matrix8x8,
    #[serde(flatten)]
    envelope: EnvelopeColumns<'a>,
}

pub(super) fn rows<'a>(events: &[&'a Event]) -> Result<Vec<Row<'a>>, ArrowError> {
    events
        .iter()
        .map(|event| {
            let Record::Sqal(s) = &event.record else {
                return Err(wrong_dataset(Dataset::SqalSamples));
            };
            let c = &s.channels;
            Ok(Row {
                device_id: &s.device_id,
                sample_id: &s.sample_id,
                timestamp: s.timestamp.timestamp_micros(),
                site_code: s.site_code.as_str(),
                location: s.location.as_deref(),
                code_lot: s.code_lot.as_deref(),
                final_score: s.final_score,
                grade: s.grade.as_str(),
                reported_grade: s.reported_grade.as_deref(),
                is_compliant: s.is_compliant,
                tof_score: s.tof_score,
                spectral_score: s.spectral_score,
                volume_mm3: s.volume_mm3,
                poids_foie_estime_g: s.poids_foie_estime_g,
                surface_uniformity: s.surface_uniformity,
                vl53l8ch_quality_score: s.vl53l8ch_quality_score,
                vl53l8ch_grade: s.vl53l8ch_grade.as_deref(),
                avg_distance_mm: s.avg_distance_mm,
                std_distance_mm: s.std_distance_mm,
                defects: s.defects.as_ref().map(|v| v.to_string()),
                f1_415nm: c.F1_415nm,
                f2_445nm: c.F2_445nm,
                f3_480nm: c.F3_480nm,
                f4_515nm: c.F4_515nm,
                f5_555nm: c.F5_555nm,
                f6_590nm: c.F6_590nm,
                f7_630nm: c.F7_630nm,
                f8_680nm: c.F8_680nm,
                clear: c.Clear,
                nir: c.NIR,
                freshness_index: s.freshness_index,
                fat_quality_index: s.fat_quality_index,
                oxidation_index: s.oxidation_index,
                as7341_quality_score: s.as7341_quality_score,
                meta: s.meta.as_ref().map(|v| v.to_string()),
                distance_matrix: &s.distance_matrix,
                reflectance_matrix: &s.reflectance_matrix,
                amplitude_matrix: &s.amplitude_matrix,
                ambient_matrix: &s.ambient_matrix,
                status_matrix: &s.status_matrix,
                envelope: EnvelopeColumns::new(&event.envelope),
            })
        })
        .collect()
}
