//! The configuration file, as `gaveurs run --config` and `gaveurs check` read it, with the
//! `GAVEURS_…` environment overrides applied to it.
#![no_main]

use gaveurs_pipeline::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let _ = Config::from_toml(text, "fuzz.toml", []);
    let overrides = [("GAVEURS_ALERTS__DOSE_DEVIATION_PCT".to_string(), "12".to_string())];
    let _ = Config::from_toml(text, "fuzz.toml", overrides);
});
