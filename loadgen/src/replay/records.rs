//! From CSV rows to records: every meal as a full gavage record (SPEC §1.1) and every lot's
//! outcome (SPEC §1.3), each with its MQTT topic.
//!
//! Values are passed on as the files have them, impossible ones included (a negative dose):
//! the pipeline refuses those, and its dead-letter row says why. Only a row that cannot be
//! made into a record at all — a number or date that does not parse, a meal of a lot the lots
//! file lacks, a `moment` that is neither `matin` nor `soir` (it sets the hour) — is skipped
//! here and reported.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use chrono::{NaiveDate, NaiveTime, TimeDelta};
use serde_json::{Map, Value, json};

use super::csv::{BadRow, CsvReader, Row};

/// Hour of the morning meal: the CSV has a day and a moment, not a time. Timestamps are the
/// site's local time, without an offset (SPEC §1.1).
pub const MORNING_HOUR: u32 = 7;
/// Hour of the evening meal.
pub const EVENING_HOUR: u32 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Meal,
    Outcome,
}

/// One record to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub kind: Kind,
    pub topic: String,
    pub payload: Bytes,
    /// What it is and where it came from, for reports: `meal LL3806565 jour 2 soir (meals
    /// line 5)`.
    pub label: String,
}

/// A CSV row that became no record.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// `lots` or `meals`.
    pub file: &'static str,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.reason)
    }
}

/// Everything a replay publishes, in order: meals in file order, then outcomes in lots-file
/// order.
#[derive(Debug, Default)]
pub struct Plan {
    pub meals: Vec<Outgoing>,
    pub outcomes: Vec<Outgoing>,
    pub skipped: Vec<Skipped>,
}

/// What a lot row gives its meals.
struct Lot {
    site: String,
    gaveur_id: i64,
    date_debut: NaiveDate,
    genetique: Option<String>,
}

/// Reads both files. Errors are about the files themselves (missing, unreadable, without a
/// needed column); a bad row is skipped and listed in the plan.
pub fn plan(meals: &Path, lots: &Path) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let lots = read_lots(lots, &mut plan)?;
    read_meals(meals, &lots, &mut plan)?;
    Ok(plan)
}

/// Lots by `code_lot`: the line of their row, and the lot unless that row was skipped.
type Lots = HashMap<String, (usize, Option<Lot>)>;

fn read_lots(path: &Path, plan: &mut Plan) -> anyhow::Result<Lots> {
    let mut csv = CsvReader::open(path)?;
    let [
        code_lot,
        site,
        gaveur_id,
        date_debut,
        date_fin,
        mis,
        accroches,
    ] = csv.require([
        "code_lot",
        "site",
        "gaveur_id",
        "date_debut",
        "date_fin",
        "nb_canards_mis_en_gavage",
        "nb_canards_accroches",
    ])?;
    let souche = csv.column("souche");
    let poids_foie = csv.column("poids_foie_moyen_g");
    let mut lots: Lots = HashMap::new();
    while let Some(row) = csv.next_row()? {
        let row = match row {
            Ok(row) => row,
            Err(BadRow { line, reason }) => {
                plan.skip("lots", line, reason);
                continue;
            }
        };
        let code = row.get(code_lot).trim().to_string();
        if code.is_empty() {
            plan.skip("lots", row.line, "code_lot is empty".into());
            continue;
        }
        if let Some((line, _)) = lots.get(&code) {
            plan.skip(
                "lots",
                row.line,
                format!("lot {code} is already on line {line}"),
            );
            continue;
        }
        let lot = (|| -> Result<(Lot, Result<Outgoing, String>), String> {
            let site = topic_level("site", row.get(site))?;
            let gaveur_id = integer("gaveur_id", row.get(gaveur_id))?;
            let date_debut = date("date_debut", row.get(date_debut))?;
            let genetique = souche
                .map(|c| row.get(c).trim())
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let outcome = (|| -> Result<Outgoing, String> {
                let mut record = Map::new();
                record.insert("code_lot".into(), json!(code));
                record.insert("gaveur_id".into(), json!(gaveur_id));
                record.insert("site".into(), json!(site));
                record.insert(
                    "nb_canards_mis_en_gavage".into(),
                    json!(integer("nb_canards_mis_en_gavage", row.get(mis))?),
                );
                record.insert(
                    "nb_canards_accroches".into(),
                    json!(integer("nb_canards_accroches", row.get(accroches))?),
                );
                if let Some(column) = poids_foie
                    && !row.get(column).trim().is_empty()
                {
                    record.insert(
                        "poids_foie_moyen_g".into(),
                        json!(number("poids_foie_moyen_g", row.get(column))?),
                    );
                }
                let date_fin = date("date_fin", row.get(date_fin))?;
                record.insert("date_fin".into(), json!(date_fin.to_string()));
                Ok(Outgoing {
                    kind: Kind::Outcome,
                    topic: format!("gaveurs/{site}/{gaveur_id}/outcome"),
                    payload: Value::Object(record).to_string().into(),
                    label: format!("outcome {code} (lots line {})", row.line),
                })
            })();
            Ok((
                Lot {
                    site,
                    gaveur_id,
                    date_debut,
                    genetique,
                },
                outcome,
            ))
        })();
        match lot {
            Ok((lot, outcome)) => {
                match outcome {
                    Ok(outcome) => plan.outcomes.push(outcome),
                    Err(reason) => {
                        plan.skip("lots", row.line, format!("no outcome for {code}: {reason}"))
                    }
                }
                lots.insert(code, (row.line, Some(lot)));
            }
            Err(reason) => {
                plan.skip("lots", row.line, format!("lot {code}: {reason}"));
                lots.insert(code, (row.line, None));
            }
        }
    }
    Ok(lots)
}

fn read_meals(path: &Path, lots: &Lots, plan: &mut Plan) -> anyhow::Result<()> {
    let mut csv = CsvReader::open(path)?;
    let [code_lot, jour, moment, dose_theorique, dose_reelle] = csv.require([
        "code_lot",
        "jour",
        "moment",
        "dose_theorique_g",
        "dose_reelle_g",
    ])?;
    // The records, and per lot the index of its last meal so far (by day, then moment).
    let mut records: Vec<(Map<String, Value>, Outgoing)> = Vec::new();
    let mut last_of_lot: HashMap<String, (i64, u8, usize)> = HashMap::new();
    while let Some(row) = csv.next_row()? {
        let row = match row {
            Ok(row) => row,
            Err(BadRow { line, reason }) => {
                plan.skip("meals", line, reason);
                continue;
            }
        };
        let columns = [code_lot, jour, moment, dose_theorique, dose_reelle];
        match meal(&row, columns, lots) {
            Ok(Meal {
                record,
                rank,
                outgoing,
            }) => {
                let code = record["code_lot"].as_str().unwrap_or_default().to_string();
                let index = records.len();
                let last = last_of_lot.entry(code).or_insert((rank.0, rank.1, index));
                if (rank.0, rank.1) >= (last.0, last.1) {
                    *last = (rank.0, rank.1, index);
                }
                records.push((record, outgoing));
            }
            Err(reason) => plan.skip("meals", row.line, reason),
        }
    }
    let last: std::collections::HashSet<usize> = last_of_lot.values().map(|l| l.2).collect();
    plan.meals = records
        .into_iter()
        .enumerate()
        .map(|(i, (mut record, mut outgoing))| {
            record.insert("pret_abattage".into(), json!(last.contains(&i)));
            outgoing.payload = Value::Object(record).to_string().into();
            outgoing
        })
        .collect();
    Ok(())
}

/// A meal record before `pret_abattage` is known.
struct Meal {
    record: Map<String, Value>,
    /// Its place in the lot: day, then 0 for matin and 1 for soir.
    rank: (i64, u8),
    outgoing: Outgoing,
}

/// A meal record (without `pret_abattage`), its rank within the lot, and its topic and label.
fn meal(
    row: &Row,
    [code_lot, jour, moment, dose_theorique, dose_reelle]: [usize; 5],
    lots: &Lots,
) -> Result<Meal, String> {
    let code = row.get(code_lot).trim();
    let lot = match lots.get(code) {
        Some((_, Some(lot))) => lot,
        Some((line, None)) => {
            return Err(format!(
                "lot {code} was skipped (lots line {line}), so are its meals"
            ));
        }
        None if code.is_empty() => return Err("code_lot is empty".into()),
        None => return Err(format!("lot {code} is not in the lots file")),
    };
    let day = integer("jour", row.get(jour))?;
    let (moment, hour, rank) = match row.get(moment).trim().to_lowercase().as_str() {
        "matin" => ("matin", MORNING_HOUR, 0),
        "soir" => ("soir", EVENING_HOUR, 1),
        other => return Err(format!("moment {other:?} is neither matin nor soir")),
    };
    let date = TimeDelta::try_days(day - 1)
        .and_then(|offset| lot.date_debut.checked_add_signed(offset))
        .ok_or_else(|| format!("jour {day} is out of range"))?;
    let timestamp = date.and_time(NaiveTime::from_hms_opt(hour, 0, 0).expect("a valid hour"));
    let mut record = Map::new();
    record.insert("code_lot".into(), json!(code));
    record.insert("gaveur_id".into(), json!(lot.gaveur_id));
    record.insert("site".into(), json!(lot.site));
    if let Some(genetique) = &lot.genetique {
        record.insert("genetique".into(), json!(genetique));
    }
    record.insert("jour".into(), json!(day));
    record.insert("moment".into(), json!(moment));
    record.insert(
        "dose_theorique".into(),
        json!(number("dose_theorique_g", row.get(dose_theorique))?),
    );
    record.insert(
        "dose_reelle".into(),
        json!(number("dose_reelle_g", row.get(dose_reelle))?),
    );
    record.insert(
        "timestamp".into(),
        json!(timestamp.format("%Y-%m-%dT%H:%M:%S").to_string()),
    );
    let outgoing = Outgoing {
        kind: Kind::Meal,
        topic: format!("gaveurs/{}/{}/gavage", lot.site, lot.gaveur_id),
        payload: Bytes::new(),
        label: format!("meal {code} jour {day} {moment} (meals line {})", row.line),
    };
    Ok(Meal {
        record,
        rank: (day, rank),
        outgoing,
    })
}

impl Plan {
    fn skip(&mut self, file: &'static str, line: usize, reason: String) {
        self.skipped.push(Skipped { file, line, reason });
    }
}

/// A whole number; `12.0` is accepted (spreadsheets write counts so).
fn integer(column: &str, text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{column} is empty"));
    }
    if let Ok(n) = text.parse::<i64>() {
        return Ok(n);
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(x as i64),
        _ => Err(format!("{column} {text:?} is not a whole number")),
    }
}

fn number(column: &str, text: &str) -> Result<f64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{column} is empty"));
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("{column} {text:?} is not a number")),
    }
}

fn date(column: &str, text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{column} {:?} is not a date (YYYY-MM-DD)", text.trim()))
}

/// A value that goes into a topic: it cannot be empty or hold `/`, `+`, `#` (the pipeline
/// refuses what it does not know, but a wildcard in a PUBLISH topic breaks the connection).
fn topic_level(column: &str, text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() || text.contains(['/', '+', '#', '\0']) {
        return Err(format!("{column} {text:?} cannot be a topic level"));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn json(outgoing: &Outgoing) -> Value {
        serde_json::from_slice(&outgoing.payload).unwrap()
    }

    #[test]
    fn meals_get_their_lot_day_and_hour_and_the_last_one_is_ready_for_slaughter() {
        let dir = tempfile::tempdir().unwrap();
        let lots = write(
            dir.path(),
            "lots.csv",
            "souche,code_lot,gaveur_id,site,date_debut,date_fin,nb_canards_mis_en_gavage,nb_canards_accroches,poids_foie_moyen_g\n\
             Mulard,LL1,6,LL,2023-03-25,2023-03-27,100,97,512.5\n\
             ,MT1,7,MT,2023-01-31,2023-02-01,50,49,\n",
        );
        let meals = write(
            dir.path(),
            "meals.csv",
            "code_lot,repas,jour,moment,dose_theorique_g,dose_reelle_g\n\
             LL1,2,1,soir,230,232.5\n\
             LL1,3,2,matin,250,-4\n\
             LL1,1,1,matin,210,212\n\
             MT1,1,1,matin,200,200\n\
             MT1,2,1,Soir,220,219\n",
        );
        let plan = plan(&meals, &lots).unwrap();
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
        let meals: Vec<Value> = plan.meals.iter().map(json).collect();
        assert_eq!(
            meals[0],
            serde_json::json!({
                "code_lot": "LL1", "gaveur_id": 6, "site": "LL", "genetique": "Mulard",
                "jour": 1, "moment": "soir", "dose_theorique": 230.0, "dose_reelle": 232.5,
                "timestamp": "2023-03-25T17:00:00", "pret_abattage": false
            })
        );
        assert_eq!(plan.meals[0].topic, "gaveurs/LL/6/gavage");
        assert_eq!(plan.meals[0].label, "meal LL1 jour 1 soir (meals line 2)");
        // Impossible values go out as they are: the pipeline refuses them.
        assert_eq!(meals[1]["dose_reelle"], -4.0);
        assert_eq!(meals[1]["timestamp"], "2023-03-26T07:00:00");
        assert_eq!(meals[1]["pret_abattage"], true, "jour 2 is LL1's last");
        assert_eq!(meals[2]["pret_abattage"], false);
        assert!(meals[3].get("genetique").is_none(), "an empty souche");
        assert_eq!(meals[4]["moment"], "soir");
        assert_eq!(meals[4]["pret_abattage"], true);
        assert_eq!(plan.meals[4].topic, "gaveurs/MT/7/gavage");

        let outcomes: Vec<Value> = plan.outcomes.iter().map(json).collect();
        assert_eq!(
            outcomes[0],
            serde_json::json!({
                "code_lot": "LL1", "gaveur_id": 6, "site": "LL",
                "nb_canards_mis_en_gavage": 100, "nb_canards_accroches": 97,
                "poids_foie_moyen_g": 512.5, "date_fin": "2023-03-27"
            })
        );
        assert_eq!(plan.outcomes[0].topic, "gaveurs/LL/6/outcome");
        assert!(outcomes[1].get("poids_foie_moyen_g").is_none());
    }

    #[test]
    fn rows_that_make_no_record_are_skipped_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let lots = write(
            dir.path(),
            "lots.csv",
            "code_lot,site,gaveur_id,date_debut,date_fin,nb_canards_mis_en_gavage,nb_canards_accroches\n\
             LL1,LL,6,2023-03-25,2023-03-27,100,97\n\
             LL2,LL,x,2023-03-25,2023-03-27,100,97\n\
             LL3,LL,6,2023-03-25,someday,100,97\n\
             LL1,LL,6,2023-03-25,2023-03-27,100,97\n\
             LL4,L/L,6,2023-03-25,2023-03-27,100,97\n",
        );
        let meals = write(
            dir.path(),
            "meals.csv",
            "code_lot,jour,moment,dose_theorique_g,dose_reelle_g\n\
             LL1,1,matin,210,abc\n\
             LL2,1,matin,210,212\n\
             ZZ9,1,matin,210,212\n\
             LL1,1,midi,210,212\n\
             LL3,1.0,matin,210,212\n\
             LL1,2,soir,210\n",
        );
        let plan = plan(&meals, &lots).unwrap();
        let skipped: Vec<String> = plan.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "lots line 3: lot LL2: gaveur_id \"x\" is not a whole number",
                "lots line 4: no outcome for LL3: date_fin \"someday\" is not a date (YYYY-MM-DD)",
                "lots line 5: lot LL1 is already on line 2",
                "lots line 6: lot LL4: site \"L/L\" cannot be a topic level",
                "meals line 2: dose_reelle_g \"abc\" is not a number",
                "meals line 3: lot LL2 was skipped (lots line 3), so are its meals",
                "meals line 4: lot ZZ9 is not in the lots file",
                "meals line 5: moment \"midi\" is neither matin nor soir",
                "meals line 7: 4 fields where the header has 5",
            ]
        );
        // LL3 has no outcome, but its meals go: `1.0` is day 1.
        assert_eq!(plan.meals.len(), 1);
        assert_eq!(json(&plan.meals[0])["jour"], 1);
        assert_eq!(plan.outcomes.len(), 1);
    }

    #[test]
    fn a_file_without_a_needed_column_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let lots = write(dir.path(), "lots.csv", "code_lot,site\nLL1,LL\n");
        let meals = write(dir.path(), "meals.csv", "code_lot\n");
        let err = plan(&meals, &lots).unwrap_err().to_string();
        assert!(err.contains("no column gaveur_id, date_debut"), "{err}");
        let lots = write(
            dir.path(),
            "lots.csv",
            "code_lot,site,gaveur_id,date_debut,date_fin,nb_canards_mis_en_gavage,nb_canards_accroches\n",
        );
        let err = plan(&dir.path().join("nope.csv"), &lots).unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
    }
}
