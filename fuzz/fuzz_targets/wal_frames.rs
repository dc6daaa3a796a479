//! The durable log's segment bytes as recovery reads them after a crash: frames found,
//! torn tails told from damage, and each entry decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    gaveurs_sinks::wal::fuzzing::segment_bytes(bytes);
});
