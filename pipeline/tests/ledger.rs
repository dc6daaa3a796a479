//! The traceability ledger end to end (SPEC §8): records published to the real binary become
//! signed, chained entries under `data/ledger/`, `gaveurs ledger verify` checks them offline
//! and names the first entry that was tampered with or removed, a restart continues the
//! chain, and a SIGKILL under load neither loses nor repeats an event.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use gaveurs_loadgen::producer::MqttVersion;
use serde_json::Value;
use support::records::{meal, outcome};
use support::*;

fn topic(record: &Value, kind: &str) -> (String, Vec<u8>, u8) {
    let site = record["site"].as_str().unwrap();
    let gaveur = record["gaveur_id"].as_i64().unwrap();
    (
        format!("gaveurs/{site}/{gaveur}/{kind}"),
        record.to_string().into_bytes(),
        1,
    )
}

/// A lot's two first days and, if `finished`, its outcome.
fn lot_records(code_lot: &str, gaveur_id: i64, finished: bool) -> Vec<(String, Vec<u8>, u8)> {
    let mut records: Vec<_> = [(1, "matin"), (1, "soir"), (2, "matin"), (2, "soir")]
        .into_iter()
        .map(|(jour, moment)| topic(&meal(code_lot, gaveur_id, "LL", jour, moment), "gavage"))
        .collect();
    if finished {
        records.push(topic(&outcome(code_lot, gaveur_id, "LL"), "outcome"));
    }
    records
}

fn ledger(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("ledger")
        .args(args)
        .output()
        .unwrap()
}

/// A command's standard output, once it has exited 0 (else its output and errors are shown).
fn succeeded(output: &Output) -> String {
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    said
}

fn verify(dir: &Path) -> Output {
    ledger(
        dir,
        &["verify", "--data", dir.join("data").to_str().unwrap()],
    )
}

/// The chain's entries, in file order.
fn entries(dir: &Path) -> Vec<Value> {
    let chain = dir.join("data/ledger/local");
    let mut files: Vec<_> = std::fs::read_dir(&chain)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

fn seqs(rows: &[serde_json::Map<String, Value>]) -> Vec<i64> {
    let mut seqs: Vec<i64> = rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    seqs.sort();
    seqs
}

fn of_type<'a>(entries: &'a [Value], kind: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lot_events_are_chained_verified_continued_after_a_restart_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mut records = lot_records("LL2612101", 1, true);
    records.extend(lot_records("LL2612102", 2, false));
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &records).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    gaveurs.stop_cleanly();

    let output = verify(dir.path());
    let said = succeeded(&output);
    assert!(said.contains("ledger ok: 7 entries"), "{said}");
    let chain = entries(dir.path());
    let kinds: Vec<&str> = chain.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "genesis",
            "lot_started",
            "day_closed",
            "day_closed",
            "lot_finished",
            // The second lot's day 2 stays open: no day 3 or outcome closed it.
            "lot_started",
            "day_closed"
        ],
        "{chain:#?}"
    );
    let finished = of_type(&chain, "lot_finished")[0];
    assert_eq!(finished["code_lot"], "LL2612101");
    // Mirrored in the `ledger` dataset, read back from its Parquet files.
    let mirrored = read_rows(&dir.path().join("data/parquet"), "ledger");
    assert_eq!(seqs(&mirrored), (1..=7).collect::<Vec<_>>());
    let row = mirrored
        .iter()
        .find(|r| r["type"] == "lot_finished")
        .unwrap();
    assert_eq!(row["hash"], finished["hash"]);
    assert_eq!(row["code_lot"], "LL2612101");
    assert!(
        row["payload"].as_str().unwrap().contains("\"itm\":1.62"),
        "{row:?}"
    );
    // Four meals of 218.5, 218.5, 238.5, 238.5 g; livers of 562.5 g.
    assert_eq!(finished["payload"]["itm"], 1.62);
    assert_eq!(finished["payload"]["pertes_pct"], 1.5);
    let day_one = of_type(&chain, "day_closed")[0];
    assert_eq!(day_one["payload"]["jour"], 1);
    assert_eq!(day_one["payload"]["repas"], 2);
    let key_file = dir.path().join(format!(
        "data/keys/ledger/{}.key",
        chain[0]["key"].as_str().unwrap()
    ));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A restart continues the chain: no second genesis, the next entries follow on. The
    // new lot's second meal is a refusal (50 of 240 g): a critical alert, chained as it
    // opens and as the lot's outcome clears it; its dose gap, a warning, is not chained.
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mut records = lot_records("LL2612103", 3, false);
    records.truncate(2);
    let mut refusal = meal("LL2612103", 3, "LL", 2, "matin");
    refusal["dose_reelle"] = 50.0.into();
    records.push(topic(&refusal, "gavage"));
    records.push(topic(&outcome("LL2612103", 3, "LL"), "outcome"));
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &records).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    gaveurs.stop_cleanly();
    let output = verify(dir.path());
    succeeded(&output);
    let chain = entries(dir.path());
    assert_eq!(of_type(&chain, "genesis").len(), 1);
    let added: Vec<(u64, &str)> = chain[7..]
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        added,
        [
            (8, "lot_started"),
            (9, "day_closed"),
            (10, "alert_opened"),
            (11, "day_closed"),
            (12, "lot_finished"),
            (13, "alert_cleared")
        ],
        "{chain:#?}"
    );
    let (opened, cleared) = (&chain[9], &chain[12]);
    assert_eq!(opened["code_lot"], "LL2612103");
    assert_eq!(opened["payload"]["rule"], "refus_alimentaire");
    assert_eq!(opened["payload"]["severity"], "critical");
    // The refusal's own time (07:00 in Paris), not the moment it was chained.
    assert_eq!(opened["time"], "2026-01-12T06:00:00.000Z");
    assert_eq!(
        cleared["payload"]["alert_id"],
        opened["payload"]["alert_id"]
    );
    let mirrored = read_rows(&dir.path().join("data/parquet"), "ledger");
    assert_eq!(
        seqs(&mirrored),
        (1..=13).collect::<Vec<_>>(),
        "each entry once"
    );

    // One byte changed in entry 5's payload: verify fails and names entry 5.
    let file = std::fs::read_dir(dir.path().join("data/ledger/local"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered = text.replacen("\"itm\":1.62", "\"itm\":1.72", 1);
    assert_ne!(text, tampered);
    std::fs::write(&file, &tampered).unwrap();
    let output = verify(dir.path());
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("entry 5 of chain local") && said.contains("altered"),
        "{said}"
    );

    // Entry 5 removed: verify names the break at entry 6.
    let removed: String = text
        .lines()
        .filter(|l| !l.contains("\"seq\":5,"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, removed).unwrap();
    let output = verify(dir.path());
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("entry 5 of chain local") && said.contains("entries 5 to 5 are missing"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_entries_are_appended_neither_loses_nor_repeats_an_event() {
    let dir = tempfile::tempdir().unwrap();
    // Saved seldom, so the chain runs ahead of the saved state when the process dies.
    let config = "[ledger]\nstate_save_interval_ms = 60000\n";
    let gaveurs = Gaveurs::start(dir.path(), config);
    const LOTS: usize = 150;
    let records: Vec<_> = (0..LOTS)
        .flat_map(|i| {
            lot_records(
                &format!("LL26{:05}", 13000 + i),
                1 + (i % 3) as i64,
                i % 2 == 0,
            )
        })
        .collect();
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &records).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    let appended_before_kill = entries(dir.path()).len();
    gaveurs.kill9();

    let gaveurs = Gaveurs::start(dir.path(), config);
    // The restart derives again what the saved state did not cover; a clean stop lets the
    // ledger catch up with the log.
    gaveurs.stop_cleanly();
    let output = verify(dir.path());
    succeeded(&output);
    let chain = entries(dir.path());
    assert!(chain.len() >= appended_before_kill);
    let mut events: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for entry in &chain[1..] {
        let key = (
            entry["type"].as_str().unwrap().to_string(),
            entry["code_lot"].as_str().unwrap().to_string(),
            entry["payload"]["jour"].to_string(),
        );
        *events.entry(key).or_default() += 1;
    }
    let repeated: Vec<_> = events.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "events chained twice: {repeated:?}");
    let count = |kind: &str| events.keys().filter(|k| k.0 == kind).count();
    assert_eq!(count("lot_started"), LOTS);
    // Every lot's day 1 (closed by day 2); a finished lot's day 2 too.
    assert_eq!(count("day_closed"), LOTS + LOTS / 2);
    assert_eq!(count("lot_finished"), LOTS / 2);
    assert_eq!(of_type(&chain, "genesis").len(), 1);
    // The restart did derive again what it had chained before the kill, and skipped it.
    let log = std::fs::read_to_string(dir.path().join("logs/ledger.log")).unwrap();
    let skipped: u64 = log
        .lines()
        .rfind(|l| l.contains("ledger stopped"))
        .and_then(|l| {
            l.split("skipped_as_chained=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        skipped as usize + 1 >= appended_before_kill && skipped > 0,
        "{skipped} skipped, {appended_before_kill} entries before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lots_certificate_survives_a_key_rotation_is_served_to_its_gaveur_and_checked_offline() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let records = lot_records("LL2612201", 1, true);
    let (meals, outcome) = records.split_at(4);
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, meals).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    gaveurs.stop_cleanly();

    // The key rotates while the pipeline is stopped; the restart signs with the new key.
    let config = dir.path().join("gaveurs.toml");
    let output = ledger(
        dir.path(),
        &["rotate-key", "--config", config.to_str().unwrap()],
    );
    let said = succeeded(&output);
    assert!(said.contains("entry 4 rotates key"), "{said}");
    let gaveurs = Gaveurs::start(dir.path(), "");
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, outcome).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");

    // The public keys, for anyone.
    eventually(
        Duration::from_secs(10),
        "the lot's end in the ledger",
        || {
            entries(dir.path())
                .iter()
                .any(|e| e["type"] == "lot_finished")
                .then_some(())
        },
    );
    let (status, body) = http_get(gaveurs.http, "/api/v1/ledger/keys").await;
    assert_eq!(status, 200, "{body}");
    let keys: Value = serde_json::from_str(&body).unwrap();
    let chain_keys = keys["chains"][0]["keys"].as_array().unwrap();
    assert_eq!(chain_keys.len(), 2, "{body}");
    assert_eq!(chain_keys[0]["retired_at"], 4);
    assert_eq!(keys["algorithm"], "Ed25519");

    // The certificate, for the lot's gaveur only (and supervisors, admins).
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let sophie = gaveurs.token("sophie.dubois@gaveur.fr");
    let path = "/api/v1/ledger/lots/LL2612201";
    let (status, served) = http_get_as(gaveurs.http, path, &jean).await;
    assert_eq!(status, 200, "{served}");
    let (status, _) = http_get_as(gaveurs.http, path, &sophie).await;
    assert_eq!(status, 403);
    let (status, _) = http_get_as(gaveurs.http, "/api/v1/ledger/lots/LL0000000", &jean).await;
    assert_eq!(status, 404);

    // A second rotation while the pipeline runs: the command asks it, and it rotates.
    let output = ledger(
        dir.path(),
        &["rotate-key", "--config", config.to_str().unwrap()],
    );
    let said = succeeded(&output);
    assert!(said.contains("entry 7 rotates key"), "{said}");
    let (_, body) = http_get(gaveurs.http, "/api/v1/ledger/keys").await;
    let keys: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        keys["chains"][0]["keys"].as_array().unwrap().len(),
        3,
        "{body}"
    );
    gaveurs.stop_cleanly();
    let served: Value = serde_json::from_str(&served).unwrap();
    let kinds: Vec<&str> = served["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["lot_started", "day_closed", "day_closed", "lot_finished"]
    );
    let signers: Vec<&str> = served["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_ne!(
        signers[0], signers[3],
        "signed before and after the rotation"
    );

    // Exported by the CLI, checked offline without the data dir, then tampered with.
    let file = dir.path().join("LL2612201.certificate.json");
    let output = ledger(
        dir.path(),
        &[
            "certificate",
            "--lot",
            "LL2612201",
            "--out",
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let said = succeeded(&output);
    assert!(
        said.contains("gaveurs-ledger:local/LL2612201?head="),
        "{said}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let check = |file: &Path| {
        ledger(
            elsewhere.path(),
            &["verify-certificate", file.to_str().unwrap()],
        )
    };
    let output = check(&file);
    let said = succeeded(&output);
    assert!(
        said.contains("certificate ok: lot LL2612201, 4 entries"),
        "{said}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, text.replacen("\"itm\":1.62", "\"itm\":1.92", 1)).unwrap();
    let output = check(&tampered);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("(lot_finished)") && said.contains("hash"),
        "{said}"
    );

    // Verified through the configuration: the verification is in ledger.log, beside the
    // rotations and the export.
    let output = ledger(
        dir.path(),
        &["verify", "--config", config.to_str().unwrap()],
    );
    let said = succeeded(&output);
    assert!(
        said.contains("ledger ok: 7 entries in 1 chain(s)"),
        "{said}"
    );
    let log = std::fs::read_to_string(dir.path().join("logs/ledger.log")).unwrap();
    for line in [
        "signing key rotated",
        "signing key rotated by the running pipeline on request",
        "certificate exported",
        "ledger verified",
    ] {
        assert!(
            log.contains(line),
            "{line:?} missing from ledger.log:\n{log}"
        );
    }
}
