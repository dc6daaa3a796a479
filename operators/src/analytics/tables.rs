//! The tables KPI queries read, built fresh from the operator's state for each micro-batch.
//! Their names and columns are the user docs of `[analytics.kpis]`: see the module docs.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, NaiveDate, Utc};
use gaveurs_schemas::records::{LotOutcome, Site};

use super::state::{LotDay, Meal, SampleRow};

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn days_since_epoch(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// `meals`, `batch_meals` and, with `scope`/`key`/`day` in front, `window_meals`.
pub(super) fn meal_schema(scoped: bool) -> SchemaRef {
    let mut fields = Vec::new();
    if scoped {
        fields.push(Field::new("scope", DataType::Utf8, false));
        fields.push(Field::new("key", DataType::Utf8, false));
        fields.push(Field::new("day", DataType::Date32, false));
    }
    fields.extend([
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("gaveur_id", DataType::Int64, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("jour", DataType::Int64, false),
        Field::new("moment", DataType::Utf8, false),
        Field::new("dose_theorique", DataType::Float64, false),
        Field::new("dose_reelle", DataType::Float64, false),
        Field::new("poids_moyen", DataType::Float64, true),
        Field::new("nb_canards_vivants", DataType::Int64, true),
        Field::new("taux_mortalite", DataType::Float64, true),
        Field::new("temperature_stabule", DataType::Float64, true),
        Field::new("humidite_stabule", DataType::Float64, true),
        Field::new("event_time", utc(), false),
        Field::new("event_date", DataType::Date32, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// A meal of a lot, optionally under a window scope (`gaveur`/`site`, its key, and its day).
pub(super) struct MealRef<'a> {
    pub scope: Option<(&'static str, String, NaiveDate)>,
    pub code_lot: &'a str,
    pub gaveur_id: i64,
    pub site: Site,
    pub meal: &'a Meal,
}

pub(super) fn meals(rows: &[MealRef], scoped: bool) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let mut scope = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut day = Date32Builder::with_capacity(n);
    let mut code_lot = StringBuilder::new();
    let mut gaveur_id = Int64Builder::with_capacity(n);
    let mut site = StringBuilder::new();
    let mut jour = Int64Builder::with_capacity(n);
    let mut moment = StringBuilder::new();
    let mut dose_theorique = Float64Builder::with_capacity(n);
    let mut dose_reelle = Float64Builder::with_capacity(n);
    let mut poids_moyen = Float64Builder::with_capacity(n);
    let mut vivants = Int64Builder::with_capacity(n);
    let mut mortalite = Float64Builder::with_capacity(n);
    let mut temperature = Float64Builder::with_capacity(n);
    let mut humidite = Float64Builder::with_capacity(n);
    let mut event_time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut event_date = Date32Builder::with_capacity(n);
    for row in rows {
        let meal = row.meal;
        if let Some((s, k, d)) = &row.scope {
            scope.append_value(s);
            key.append_value(k);
            day.append_value(days_since_epoch(*d));
        }
        code_lot.append_value(row.code_lot);
        gaveur_id.append_value(row.gaveur_id);
        site.append_value(row.site.as_str());
        jour.append_value(meal.jour);
        moment.append_value(meal.moment.as_str());
        dose_theorique.append_value(meal.dose_theorique);
        dose_reelle.append_value(meal.dose_reelle);
        poids_moyen.append_option(meal.poids_moyen.get());
        vivants.append_option(meal.nb_canards_vivants);
        mortalite.append_option(meal.taux_mortalite.get());
        temperature.append_option(meal.temperature_stabule.get());
        humidite.append_option(meal.humidite_stabule.get());
        event_time.append_value(micros(meal.timestamp));
        event_date.append_value(days_since_epoch(meal.timestamp.date_naive()));
    }
    let mut columns: Vec<ArrayRef> = Vec::new();
    if scoped {
        columns.push(Arc::new(scope.finish()));
        columns.push(Arc::new(key.finish()));
        columns.push(Arc::new(day.finish()));
    }
    columns.extend([
        Arc::new(code_lot.finish()) as ArrayRef,
        Arc::new(gaveur_id.finish()),
        Arc::new(site.finish()),
        Arc::new(jour.finish()),
        Arc::new(moment.finish()),
        Arc::new(dose_theorique.finish()),
        Arc::new(dose_reelle.finish()),
        Arc::new(poids_moyen.finish()),
        Arc::new(vivants.finish()),
        Arc::new(mortalite.finish()),
        Arc::new(temperature.finish()),
        Arc::new(humidite.finish()),
        Arc::new(event_time.finish()),
        Arc::new(event_date.finish()),
    ]);
    RecordBatch::try_new(meal_schema(scoped), columns)
}

pub(super) fn outcome_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("gaveur_id", DataType::Int64, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("nb_canards_mis_en_gavage", DataType::Int64, false),
        Field::new("nb_canards_accroches", DataType::Int64, false),
        Field::new("poids_foie_moyen_g", DataType::Float64, true),
        Field::new("date_fin", DataType::Date32, false),
        Field::new("event_time", utc(), false),
    ]))
}

pub(super) fn outcomes(rows: &[&LotOutcome]) -> Result<RecordBatch, ArrowError> {
    let mut code_lot = StringBuilder::new();
    let mut gaveur_id = Int64Builder::new();
    let mut site = StringBuilder::new();
    let mut mis = Int64Builder::new();
    let mut accroches = Int64Builder::new();
    let mut poids = Float64Builder::new();
    let mut date_fin = Date32Builder::new();
    let mut event_time = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for outcome in rows {
        code_lot.append_value(&outcome.code_lot);
        gaveur_id.append_value(outcome.gaveur_id);
        site.append_value(outcome.site.as_str());
        mis.append_value(outcome.nb_canards_mis_en_gavage);
        accroches.append_value(outcome.nb_canards_accroches);
        poids.append_option(outcome.poids_foie_moyen_g);
        date_fin.append_value(days_since_epoch(outcome.date_fin));
        event_time.append_value(micros(outcome.event_time));
    }
    RecordBatch::try_new(
        outcome_schema(),
        vec![
            Arc::new(code_lot.finish()),
            Arc::new(gaveur_id.finish()),
            Arc::new(site.finish()),
            Arc::new(mis.finish()),
            Arc::new(accroches.finish()),
            Arc::new(poids.finish()),
            Arc::new(date_fin.finish()),
            Arc::new(event_time.finish()),
        ],
    )
}

pub(super) fn touched_days_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("jour", DataType::Int64, false),
    ]))
}

pub(super) fn touched_days(rows: &[(&str, i64)]) -> Result<RecordBatch, ArrowError> {
    let mut code_lot = StringBuilder::new();
    let mut jour = Int64Builder::new();
    for (lot, day) in rows {
        code_lot.append_value(lot);
        jour.append_value(*day);
    }
    RecordBatch::try_new(
        touched_days_schema(),
        vec![Arc::new(code_lot.finish()), Arc::new(jour.finish())],
    )
}

/// One row per (window, day it covers): windows are joined to daily data on equality.
pub(super) fn window_days_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("window_days", DataType::Int64, false),
        Field::new("window_start", DataType::Date32, false),
        Field::new("window_end", DataType::Date32, false),
        Field::new("day", DataType::Date32, false),
    ]))
}

pub(super) struct WindowRef {
    pub scope: &'static str,
    pub key: String,
    pub start: NaiveDate,
    pub days: i64,
}

pub(super) fn window_days(windows: &[WindowRef]) -> Result<RecordBatch, ArrowError> {
    let mut scope = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut days = Int64Builder::new();
    let mut start = Date32Builder::new();
    let mut end = Date32Builder::new();
    let mut day = Date32Builder::new();
    for window in windows {
        let first = days_since_epoch(window.start);
        for offset in 0..window.days as i32 {
            scope.append_value(window.scope);
            key.append_value(&window.key);
            days.append_value(window.days);
            start.append_value(first);
            end.append_value(first + window.days as i32);
            day.append_value(first + offset);
        }
    }
    RecordBatch::try_new(
        window_days_schema(),
        vec![
            Arc::new(scope.finish()),
            Arc::new(key.finish()),
            Arc::new(days.finish()),
            Arc::new(start.finish()),
            Arc::new(end.finish()),
            Arc::new(day.finish()),
        ],
    )
}

pub(super) fn finished_lots_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("day", DataType::Date32, false),
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("itm", DataType::Float64, true),
    ]))
}

pub(super) struct FinishedRef<'a> {
    pub scope: &'static str,
    pub key: String,
    pub day: NaiveDate,
    pub code_lot: &'a str,
    pub itm: Option<f64>,
}

pub(super) fn finished_lots(rows: &[FinishedRef]) -> Result<RecordBatch, ArrowError> {
    let mut scope = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut day = Date32Builder::new();
    let mut code_lot = StringBuilder::new();
    let mut itm = Float64Builder::new();
    for row in rows {
        scope.append_value(row.scope);
        key.append_value(&row.key);
        day.append_value(days_since_epoch(row.day));
        code_lot.append_value(row.code_lot);
        itm.append_option(row.itm);
    }
    RecordBatch::try_new(
        finished_lots_schema(),
        vec![
            Arc::new(scope.finish()),
            Arc::new(key.finish()),
            Arc::new(day.finish()),
            Arc::new(code_lot.finish()),
            Arc::new(itm.finish()),
        ],
    )
}

pub(super) fn window_lot_days_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("day", DataType::Date32, false),
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("ecart_abs_sum", DataType::Float64, true),
        Field::new("ecart_n", DataType::Int64, false),
        Field::new("mortalite", DataType::Float64, true),
    ]))
}

pub(super) struct LotDayRef<'a> {
    pub scope: &'static str,
    pub key: String,
    pub day: NaiveDate,
    pub code_lot: &'a str,
    pub sums: LotDay,
}

pub(super) fn window_lot_days(rows: &[LotDayRef]) -> Result<RecordBatch, ArrowError> {
    let mut scope = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut day = Date32Builder::with_capacity(rows.len());
    let mut code_lot = StringBuilder::new();
    let mut ecart_abs_sum = Float64Builder::with_capacity(rows.len());
    let mut ecart_n = Int64Builder::with_capacity(rows.len());
    let mut mortalite = Float64Builder::with_capacity(rows.len());
    for row in rows {
        scope.append_value(row.scope);
        key.append_value(&row.key);
        day.append_value(days_since_epoch(row.day));
        code_lot.append_value(row.code_lot);
        ecart_abs_sum.append_option(row.sums.ecart_abs_sum);
        ecart_n.append_value(row.sums.ecart_n);
        mortalite.append_option(row.sums.mortalite);
    }
    RecordBatch::try_new(
        window_lot_days_schema(),
        vec![
            Arc::new(scope.finish()),
            Arc::new(key.finish()),
            Arc::new(day.finish()),
            Arc::new(code_lot.finish()),
            Arc::new(ecart_abs_sum.finish()),
            Arc::new(ecart_n.finish()),
            Arc::new(mortalite.finish()),
        ],
    )
}

/// `sqal_scoped` (with `scope`, `key`, `period` in front) and `lot_samples`.
pub(super) fn sample_schema(scoped: bool) -> SchemaRef {
    let mut fields = Vec::new();
    if scoped {
        fields.push(Field::new("scope", DataType::Utf8, false));
        fields.push(Field::new("key", DataType::Utf8, false));
        fields.push(Field::new("period", DataType::Utf8, false));
    }
    fields.extend([
        Field::new("device_id", DataType::Utf8, false),
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("code_lot", DataType::Utf8, true),
        Field::new("grade", DataType::Utf8, false),
        Field::new("final_score", DataType::Float64, false),
        Field::new("is_compliant", DataType::Boolean, false),
        Field::new("poids_foie_estime_g", DataType::Float64, true),
        Field::new("event_time", utc(), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// A sample, optionally under a KPI scope (`device`/`site`/`lot`, its key, and its period).
pub(super) struct SampleRef<'a> {
    pub scope: Option<(&'static str, &'a str, String)>,
    pub row: &'a SampleRow,
}

pub(super) fn samples(rows: &[SampleRef], scoped: bool) -> Result<RecordBatch, ArrowError> {
    let mut scope = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut period = StringBuilder::new();
    let mut device_id = StringBuilder::new();
    let mut sample_id = StringBuilder::new();
    let mut site = StringBuilder::new();
    let mut code_lot = StringBuilder::new();
    let mut grade = StringBuilder::new();
    let mut final_score = Float64Builder::new();
    let mut compliant = BooleanBuilder::new();
    let mut poids = Float64Builder::new();
    let mut event_time = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for SampleRef {
        scope: scoping,
        row,
    } in rows
    {
        if let Some((s, k, p)) = scoping {
            scope.append_value(s);
            key.append_value(k);
            period.append_value(p);
        }
        device_id.append_value(&row.device_id);
        sample_id.append_value(&row.sample_id);
        site.append_value(row.site.as_str());
        code_lot.append_option(row.code_lot.as_deref());
        grade.append_value(row.grade.as_str());
        final_score.append_value(row.final_score);
        compliant.append_value(row.is_compliant);
        poids.append_option(row.poids_foie_estime_g);
        event_time.append_value(micros(row.event_time));
    }
    let mut columns: Vec<ArrayRef> = Vec::new();
    if scoped {
        columns.push(Arc::new(scope.finish()));
        columns.push(Arc::new(key.finish()));
        columns.push(Arc::new(period.finish()));
    }
    columns.extend([
        Arc::new(device_id.finish()) as ArrayRef,
        Arc::new(sample_id.finish()),
        Arc::new(site.finish()),
        Arc::new(code_lot.finish()),
        Arc::new(grade.finish()),
        Arc::new(final_score.finish()),
        Arc::new(compliant.finish()),
        Arc::new(poids.finish()),
        Arc::new(event_time.finish()),
    ]);
    RecordBatch::try_new(sample_schema(scoped), columns)
}
