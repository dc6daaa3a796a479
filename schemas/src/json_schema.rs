//! JSON Schema documents for producers, generated from the wire types so they cannot disagree
//! with what the pipeline accepts. The checked-in copies under `schemas/json/` are compared
//! with fresh output by a test; `GAVEURS_UPDATE_SCHEMAS=1 cargo test -p gaveurs-schemas`
//! rewrites them.

use crate::records::{GavageMealInput, LotOutcomeInput, SqalMeasurementInput};

/// `(file name, pretty JSON)` for every producer-facing record.
pub fn documents() -> Vec<(&'static str, String)> {
    let render = |schema: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialise");
        text.push('\n');
        text
    };
    vec![
        (
            "gavage_meal.json",
            render(schemars::schema_for!(GavageMealInput)),
        ),
        (
            "sqal_measurement.json",
            render(schemars::schema_for!(SqalMeasurementInput)),
        ),
        (
            "lot_outcome.json",
            render(schemars::schema_for!(LotOutcomeInput)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn checked_in_json_schemas_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
        let update = std::env::var_os("GAVEURS_UPDATE_SCHEMAS").is_some();
        for (name, fresh) in super::documents() {
            let path = dir.join(name);
            if update {
                std::fs::write(&path, &fresh).unwrap();
                continue;
            }
            let stored = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                stored == fresh,
                "{} is out of date: run GAVEURS_UPDATE_SCHEMAS=1 cargo test -p gaveurs-schemas",
                path.display()
            );
        }
    }
}
