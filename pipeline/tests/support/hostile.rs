//! Inputs no producer should send, generated: every one of them must be refused with a reason
//! and a dead-letter row. Deterministic: the n-th input is always the same.

use serde_json::{Value, json};

use super::records;

/// Where an input is sent: the topic decides the stream on MQTT; on the WebSocket ingest and
/// Kafka the endpoint or topic does, so a topic that contradicts the record cannot be tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Mqtt,
    WebSocket,
    Kafka,
}

/// One bad input: what kind of bad, the MQTT topic it goes to (its stream elsewhere), and the
/// bytes.
#[derive(Debug, Clone)]
pub struct BadInput {
    pub kind: &'static str,
    pub topic: String,
    pub payload: Vec<u8>,
}

impl BadInput {
    /// Whether it belongs to the SQAL stream (`/ws/sensors/`, the SQAL topic).
    pub fn is_sqal(&self) -> bool {
        self.topic.starts_with("sqal/")
    }
}

const MEALS: &str = "gaveurs/LL/1/gavage";
const OUTCOMES: &str = "gaveurs/LL/1/outcome";
const SAMPLES: &str = "sqal/LL/ESP32_LL_01/measurements";

/// The `n`-th bad input for `transport`.
pub fn bad_input(n: usize, transport: Transport) -> BadInput {
    let kinds: &[fn(usize) -> BadInput] = &[
        truncated,
        deeply_nested,
        invalid_utf8,
        not_a_number,
        huge_number,
        duplicate_key,
        wrong_type,
        impossible_timestamp,
        not_a_record,
        bad_sample,
        bad_outcome,
        topic_mismatch,
    ];
    // Topic mismatches only exist where the topic is the producer's to choose.
    let usable = if transport == Transport::Mqtt {
        kinds.len()
    } else {
        kinds.len() - 1
    };
    let make = kinds[n % usable];
    // A few oversize ones in every thousand; more would only test the network. Kafka's own
    // limit (1 MB by default) refuses them at the producer, before the pipeline sees them.
    if n % 1000 == 999 && transport != Transport::Kafka {
        return oversize(n);
    }
    make(n / usable)
}

/// A valid meal of lot `LLBAD<n>`, to be spoiled.
fn meal(n: usize) -> Value {
    records::meal(
        &format!("LLBAD{n:05}"),
        1,
        "LL",
        1 + (n % 14) as i64,
        "matin",
    )
}

fn input(kind: &'static str, topic: &str, payload: impl Into<Vec<u8>>) -> BadInput {
    BadInput {
        kind,
        topic: topic.to_string(),
        payload: payload.into(),
    }
}

fn truncated(n: usize) -> BadInput {
    let whole = meal(n).to_string();
    // Any strict prefix of an object is unfinished JSON.
    let cut = 1 + n % (whole.len() - 1);
    input("truncated", MEALS, &whole.as_bytes()[..cut])
}

fn deeply_nested(n: usize) -> BadInput {
    let depth = 200 + n % 5000;
    let text = if n.is_multiple_of(2) {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        format!(
            "{}{}{}",
            r#"{"code_lot":"#.repeat(depth),
            "1",
            "}".repeat(depth)
        )
    };
    input("deeply_nested", MEALS, text)
}

fn invalid_utf8(n: usize) -> BadInput {
    let text = meal(n).to_string();
    let mut bytes = text.into_bytes();
    // Inside the lot code's string: "LLBAD…" becomes "LL\xff\xfe…".
    let at = bytes.windows(5).position(|w| w == b"LLBAD").unwrap() + 2;
    bytes[at] = 0xff;
    bytes[at + 1] = 0xfe;
    input("invalid_utf8", MEALS, bytes)
}

fn not_a_number(n: usize) -> BadInput {
    let spelled = ["NaN", "Infinity", "-Infinity", "nan", "inf"][n % 5];
    let text = meal(n).to_string().replace(
        "\"dose_reelle\":",
        &format!("\"dose_reelle\":{spelled},\"was\":"),
    );
    input("nan_infinity", MEALS, text)
}

fn huge_number(n: usize) -> BadInput {
    let (field, value) = [
        ("dose_reelle", "1e999"),
        ("gaveur_id", "123456789012345678901234567890"),
        ("jour", "4294967296999"),
        ("dose_theorique", "-1e400"),
        ("jour", "18446744073709551616"),
    ][n % 5];
    let text = meal(n)
        .to_string()
        .replacen('{', &format!("{{\"{field}\":{value},"), 1);
    // The original field comes after: a duplicate too, but the number is read first.
    input("huge_number", MEALS, text)
}

fn duplicate_key(n: usize) -> BadInput {
    let (field, value) = [
        ("code_lot", "\"LLBADTWIN\""),
        ("jour", "3"),
        ("dose_reelle", "10.0"),
        ("moment", "\"soir\""),
    ][n % 4];
    let text = meal(n)
        .to_string()
        .replacen('{', &format!("{{\"{field}\":{value},"), 1);
    input("duplicate_key", MEALS, text)
}

fn wrong_type(n: usize) -> BadInput {
    let mut record = meal(n);
    let (field, value) = [
        ("jour", json!("trois")),
        ("site", json!(42)),
        ("dose_reelle", json!("beaucoup")),
        ("moment", json!(1)),
        ("timestamp", json!(1_767_225_600)),
        ("code_lot", Value::Null),
        ("gaveur_id", json!([1])),
        ("dose_theorique", json!({"g": 200})),
    ][n % 8]
        .clone();
    record[field] = value;
    input("wrong_type", MEALS, record.to_string())
}

fn impossible_timestamp(n: usize) -> BadInput {
    let mut record = meal(n);
    record["timestamp"] = json!(
        [
            "9999-12-31T23:59:59",
            "0000-01-01T00:00:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "+10000-01-01T00:00:00",
            "-0001-01-01T00:00:00",
            "1970-01-01T00:00:00Z",
            "2026-02-30T10:00:00",
            "2026-01-10T25:00:00",
            "demain",
        ][n % 10]
    );
    input("impossible_timestamp", MEALS, record.to_string())
}

fn not_a_record(n: usize) -> BadInput {
    let payload: Vec<u8> = match n % 8 {
        0 => Vec::new(),
        1 => b"   \n\t ".to_vec(),
        2 => b"null".to_vec(),
        3 => b"[]".to_vec(),
        4 => format!("{n}").into_bytes(),
        5 => format!("\"meal {n}\"").into_bytes(),
        6 => b"{}".to_vec(),
        // Bytes that are nothing at all.
        _ => (0..64).map(|i| ((n * 31 + i * 7) % 251) as u8).collect(),
    };
    input("not_a_record", MEALS, payload)
}

fn bad_sample(n: usize) -> BadInput {
    let mut sample = records::sqal("ESP32_LL_01", &format!("SBAD{n}"), 0.8);
    match n % 4 {
        0 => sample["fusion"]["final_score"] = json!("excellent"),
        1 => {
            sample.as_object_mut().unwrap().remove("device_id");
        }
        2 => sample["timestamp"] = json!("9999-12-31T23:59:59Z"),
        _ => sample["sample_id"] = json!({"id": n}),
    }
    input("bad_sample", SAMPLES, sample.to_string())
}

fn bad_outcome(n: usize) -> BadInput {
    let mut outcome = records::outcome(&format!("LLBADO{n:05}"), 1, "LL");
    match n % 4 {
        0 => outcome["date_fin"] = json!("hier"),
        1 => outcome["date_fin"] = json!("0000-01-01"),
        2 => outcome["nb_canards_accroches"] = json!(-5),
        _ => outcome["nb_canards_mis_en_gavage"] = json!("mille"),
    }
    input("bad_outcome", OUTCOMES, outcome.to_string())
}

fn topic_mismatch(n: usize) -> BadInput {
    match n % 4 {
        // The record says LS; the topic says LL.
        0 => input(
            "topic_mismatch",
            MEALS,
            records::meal(&format!("LSBAD{n:05}"), 1, "LS", 1, "matin").to_string(),
        ),
        // Gaveur 2's meal on gaveur 1's topic.
        1 => input(
            "topic_mismatch",
            MEALS,
            records::meal(&format!("LLBAD{n:05}"), 2, "LL", 1, "matin").to_string(),
        ),
        // A meal where samples go.
        2 => input("topic_mismatch", SAMPLES, meal(n).to_string()),
        // A topic of no stream.
        _ => input(
            "topic_mismatch",
            "gaveurs/LL/1/gavage/extra",
            meal(n).to_string(),
        ),
    }
}

fn oversize(n: usize) -> BadInput {
    let mut record = meal(n);
    record["notes"] = json!("x".repeat(1024 * 1024 + n % 100));
    input("oversize", MEALS, record.to_string())
}
