//! The embedded listener's reading of a connection: frames are cut from the byte stream as it
//! arrives, the CONNECT's protocol level is read, and each frame is decoded in both MQTT
//! versions.
#![no_main]

use bytes::BytesMut;
use gaveurs_connectors::sources::mqtt_embedded::codec::{self, Protocol};
use libfuzzer_sys::fuzz_target;

/// The listener's limit on a packet (SPEC §9: 1 MiB records, plus headers).
const MAX_PACKET: usize = 2 * 1024 * 1024;

fuzz_target!(|stream: &[u8]| {
    let mut rest = stream;
    while let Ok(Some(len)) = codec::frame_len(rest, MAX_PACKET) {
        let frame = &rest[..len];
        let _ = codec::connect_level(frame);
        for protocol in [Protocol::V311, Protocol::V5] {
            let _ = codec::decode(protocol, BytesMut::from(frame));
        }
        rest = &rest[len..];
    }
});
