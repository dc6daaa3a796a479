use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow::error::ArrowError;

use super::columns::Columns;
use super::{Dataset, envelope_columns, wrong_dataset};
use crate::envelope::Envelope;
use crate::event::Event;
use crate::records::{GavageMeal, Record};

pub(super) fn schema() -> Schema {
    Schema::new(columns(&[]).finish().0)
}

pub(super) fn batch(events: &[&Event]) -> Result<RecordBatch, ArrowError> {
    let rows = events
        .iter()
        .map(|event| match &event.record {
            Record::Gavage(meal) => Ok(Row {
                meal,
                envelope: &event.envelope,
            }),
            _ => Err(wrong_dataset(Dataset::GavageMeals)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (_, arrays) = columns(&rows).finish();
    RecordBatch::try_new(Dataset::GavageMeals.schema(), arrays)
}

struct Row<'a> {
    meal: &'a GavageMeal,
    envelope: &'a Envelope,
}

fn columns<'r, 'a: 'r>(rows: &'r [Row<'a>]) -> Columns<'r, Row<'a>> {
    let columns = Columns::new(rows)
        .text("code_lot", |r| &r.meal.code_lot)
        .int64("gaveur_id", |r| r.meal.gaveur_id)
        .optional_text("gaveur_nom", |r| r.meal.gaveur_nom.as_deref())
        .text("site", |r| r.meal.site.as_str())
        .optional_text("genetique", |r| r.meal.genetique.as_deref())
        .int64("jour", |r| r.meal.jour)
        .text("moment", |r| r.meal.moment.as_str())
        .float64("dose_theorique", |r| r.meal.dose_theorique)
        .float64("dose_reelle", |r| r.meal.dose_reelle)
        .optional_float64("poids_moyen", |r| r.meal.poids_moyen)
        .optional_int64("nb_canards_vivants", |r| r.meal.nb_canards_vivants)
        .optional_float64("taux_mortalite", |r| r.meal.taux_mortalite)
        .optional_float64("temperature_stabule", |r| r.meal.temperature_stabule)
        .optional_float64("humidite_stabule", |r| r.meal.humidite_stabule)
        .instant("timestamp", |r| r.meal.timestamp)
        .boolean("pret_abattage", |r| r.meal.pret_abattage);
    envelope_columns::add(columns, |r| r.envelope)
}
