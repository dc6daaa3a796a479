use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use serde::Serialize;

use super::envelope_columns::EnvelopeColumns;
use super::{Dataset, field, schema_with_envelope, wrong_dataset};
use crate::event::Event;
use crate::records::Record;

pub(super) fn schema() -> Schema {
    schema_with_envelope(vec![
        field("code_lot", DataType::Utf8, false),
        field("gaveur_id", DataType::Int64, false),
        field("site", DataType::Utf8, false),
        field("nb_canards_mis_en_gavage", DataType::Int64, false),
        field("nb_canards_accroches", DataType::Int64, false),
        field("poids_foie_moyen_g", DataType::Float64, true),
        field("date_fin", DataType::Date32, false),
    ])
}

#[derive(Serialize)]
pub(super) struct Row<'a> {
    code_lot: &'a str,
    gaveur_id: i64,
    site: &'static str,
    nb_canards_mis_en_gavage: i64,
    nb_canards_accroches: i64,
    poids_foie_moyen_g: Option<f64>,
    date_fin: String,
    #[serde(flatten)]
    envelope: EnvelopeColumns<'a>,
}

pub(super) fn rows<'a>(events: &[&'a Event]) -> Result<Vec<Row<'a>>, ArrowError> {
    events
        .iter()
        .map(|event| {
            let Record::LotOutcome(o) = &event.record else {
                return Err(wrong_dataset(Dataset::LotOutcomes));
            };
            Ok(Row {
                code_lot: &o.code_lot,
                gaveur_id: o.gaveur_id,
                site: o.site.as_str(),
                nb_canards_mis_en_gavage: o.nb_canards_mis_en_gavage,
                nb_canards_accroches: o.nb_canards_accroches,
                poids_foie_moyen_g: o.poids_foie_moyen_g,
                date_fin: o.date_fin.to_string(),
                envelope: EnvelopeColumns::new(&event.envelope),
            })
        })
        .collect()
}
