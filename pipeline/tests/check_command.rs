//! `gaveurs check`: the documented example passes; mistakes are named.

mod support;

use std::process::Command;

fn check(path: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(support::BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_example_config_is_accepted() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gaveurs.example.toml");
    let (ok, output) = check(&example, &[]);
    assert!(ok, "{output}");
    assert!(output.contains("ok"));
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[storage]\ndata_dir = \"d\"\nrol_interval_s = 5\n").unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(!ok);
    assert!(output.contains("rol_interval_s"), "{output}");
    assert!(output.contains("line 3"), "{output}");
}

#[test]
fn bad_values_and_bad_overrides_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[mqtt]\nbroker = \"amqp://x\"\n").unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(!ok && output.contains("mqtt://"), "{output}");

    std::fs::write(&path, "").unwrap();
    let (ok, output) = check(&path, &[("GAVEURS_STORAGE__ROLL_INTERVAL_S", "soon")]);
    assert!(!ok && output.contains("roll_interval_s"), "{output}");
    let (ok, output) = check(&path, &[("GAVEURS_STORAGE__ROLL_INTERVAL_S", "5")]);
    assert!(ok, "{output}");
    let missing = dir.path().join("missing.toml");
    let (ok, output) = check(&missing, &[]);
    assert!(!ok && output.contains("cannot read"), "{output}");
}

#[test]
fn a_kpi_query_that_does_not_plan_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[analytics.kpis.heavy_doses]\nsql = \"SELECT code_lot, gaveur_id, dose_reelle FROM batch_meals WHERE dose_reelle > 450\"\n",
    )
    .unwrap();
    let (ok, output) = check(&good, &[]);
    assert!(ok, "{output}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[analytics.kpis.heavy_doses]\nsql = \"SELECT code_lot, dose_totale FROM batch_meals\"\n",
    )
    .unwrap();
    let (ok, output) = check(&bad, &[]);
    assert!(!ok);
    assert!(output.contains("heavy_doses"), "{output}");
    assert!(output.contains("dose_totale"), "{output}");
}

#[test]
fn alert_rules_and_the_phone_directory_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.toml");
    let phones = dir.path().join("phones.csv");
    std::fs::write(&phones, "gaveur_id,phone\n1,+33612345678\n").unwrap();
    let config = |rules: &str| format!("[sms]\ndirectory = \"{}\"\n{rules}", phones.display());
    std::fs::write(
        &path,
        config("[alerts.rules.temperature]\ncritical = { low = 12, high = 30 }\n"),
    )
    .unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(ok, "{output}");

    std::fs::write(
        &path,
        config("[alerts.rules.temperatur]\nenabled = false\n"),
    )
    .unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(
        !ok && output.contains("temperatur") && output.contains("no such rule"),
        "{output}"
    );
    std::fs::write(&path, config("[alerts.rules.temperature]\nwarning = 25\n")).unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(!ok && output.contains("band"), "{output}");

    std::fs::write(&phones, "gaveur_id,phone\n1,+33612345678\n2,0612345678\n").unwrap();
    std::fs::write(&path, config("")).unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(
        !ok && output.contains("0612345678") && output.contains("line 3"),
        "{output}"
    );
}

#[test]
fn an_anomaly_model_artifact_is_checked() {
    use gaveurs_operators::anomalies::DEFAULT_MEAL_MODEL;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[ml]\nmeal_model = \"{}\"\n", model.display()),
    )
    .unwrap();

    std::fs::write(&model, DEFAULT_MEAL_MODEL).unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(ok, "{output}");

    std::fs::write(&model, &DEFAULT_MEAL_MODEL[..300]).unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(
        !ok && output.contains("not a meal model artifact"),
        "{output}"
    );

    let edited = DEFAULT_MEAL_MODEL.replacen("\"threshold\": ", "\"threshold\": 1", 1);
    std::fs::write(&model, edited).unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(
        !ok && output.contains("does not match its contents"),
        "{output}"
    );
    assert!(output.contains("[ml] meal_model"), "{output}");

    // The SQAL model's artifact too.
    use gaveurs_operators::anomalies::DEFAULT_SQAL_MODEL;
    let sqal = dir.path().join("sqal.json");
    std::fs::write(
        &path,
        format!("[ml]\nsqal_model = \"{}\"\n", sqal.display()),
    )
    .unwrap();
    std::fs::write(&sqal, DEFAULT_SQAL_MODEL).unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(ok, "{output}");
    std::fs::write(&sqal, DEFAULT_MEAL_MODEL).unwrap();
    let (ok, output) = check(&path, &[]);
    assert!(
        !ok && output.contains("[ml] sqal_model") && output.contains("not a SQAL model artifact"),
        "{output}"
    );
}
