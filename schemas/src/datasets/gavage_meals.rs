use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use serde::Serialize;

use super::envelope_columns::EnvelopeColumns;
use super::{Dataset, field, schema_with_envelope, utc_micros, wrong_dataset};
use crate::event::Event;
use crate::records::Record;

pub(super) fn schema() -> Schema {
    schema_with_envelope(vec![
        field("code_lot", DataType::Utf8, false),
        field("gaveur_id", DataType::Int64, false),
        field("gaveur_nom", DataType::Utf8, true),
        field("site", DataType::Utf8, false),
        field("genetique", DataType::Utf8, true),
        field("jour", DataType::Int64, false),
        field("moment", DataType::Utf8, false),
        field("dose_theorique", DataType::Float64, false),
        field("dose_reelle", DataType::Float64, false),
        field("poids_moyen", DataType::Float64, true),
        field("nb_canards_vivants", DataType::Int64, true),
        field("taux_mortalite", DataType::Float64, true),
        field("temperature_stabule", DataType::Float64, true),
        field("humidite_stabule", DataType::Float64, true),
        field("timestamp", utc_micros(), false),
        field("pret_abattage", DataType::Boolean, false),
    ])
}

#[derive(Serialize)]
pub(super) struct Row<'a> {
    code_lot: &'a str,
    gaveur_id: i64,
    gaveur_nom: Option<&'a str>,
    site: &'static str,
    genetique: Option<&'a str>,
    jour: i64,
    moment: &'static str,
    dose_theorique: f64,
    dose_reelle: f64,
    poids_moyen: Option<f64>,
    nb_canards_vivants: Option<i64>,
    taux_mortalite: Option<f64>,
    temperature_stabule: Option<f64>,
    humidite_stabule: Option<f64>,
    timestamp: i64,
    pret_abattage: bool,
    #[serde(flatten)]
    envelope: EnvelopeColumns<'a>,
}

pub(super) fn rows<'a>(events: &[&'a Event]) -> Result<Vec<Row<'a>>, ArrowError> {
    events
        .iter()
        .map(|event| {
            let Record::Gavage(m) = &event.record else {
                return Err(wrong_dataset(Dataset::GavageMeals));
            };
            Ok(Row {
                code_lot: &m.code_lot,
                gaveur_id: m.gaveur_id,
                gaveur_nom: m.gaveur_nom.as_deref(),
                site: m.site.as_str(),
                genetique: m.genetique.as_deref(),
                jour: m.jour,
                moment: m.moment.as_str(),
                dose_theorique: m.dose_theorique,
                dose_reelle: m.dose_reelle,
                poids_moyen: m.poids_moyen,
                nb_canards_vivants: m.nb_canards_vivants,
                taux_mortalite: m.taux_mortalite,
                temperature_stabule: m.temperature_stabule,
                humidite_stabule: m.humidite_stabule,
                timestamp: m.timestamp.timestamp_micros(),
                pret_abattage: m.pret_abattage,
                envelope: EnvelopeColumns::new(&event.envelope),
            })
        })
        .collect()
}
