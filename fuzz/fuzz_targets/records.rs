//! A record as a producer sends it: a topic and a payload, routed, decoded (gavage meal, SQAL
//! sample, lot outcome, device status) and validated, as the intake does.
#![no_main]

use chrono::{TimeZone, Utc};
use gaveurs_connectors::topics;
use gaveurs_operators::validate::Validator;
use libfuzzer_sys::fuzz_target;

/// Topics of every stream, and one that matches none; the input's first byte picks one.
const TOPICS: [&str; 6] = [
    "gaveurs/LL/1/gavage",
    "gaveurs/LS/2/outcome",
    "sqal/LL/ESP32_LL_01/measurements",
    "sqal/MT/ESP32_MT_02/status",
    "gavage/LL/1",
    "gaveurs/LL/1/gavage/extra",
];

fuzz_target!(|input: &[u8]| {
    let Some((&pick, payload)) = input.split_first() else {
        return;
    };
    let route = topics::route(TOPICS[usize::from(pick) % TOPICS.len()]);
    let received_at = Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
    let _ = Validator::default().validate(&route, payload, received_at);
});
