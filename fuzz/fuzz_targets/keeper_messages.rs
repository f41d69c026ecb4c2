//! The keeper link's messages (`ringmon::keeper::proto`), both directions,
//! from arbitrary packet bytes: decoding never panics, and whatever decodes
//! encodes to exactly the bytes it came from (the layout has one encoding
//! per message), so re-decoding gives the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::keeper::proto::{ToKeeper, ToWorker};
use ringmon::keeper::MAX_PACKET_BYTES;

fuzz_target!(|packet: &[u8]| {
    if let Ok(message) = ToKeeper::decode(packet) {
        let bytes = message.encode();
        assert_eq!(bytes, packet, "{message:?} re-encodes differently");
        assert!(bytes.len() <= MAX_PACKET_BYTES);
        assert_eq!(ToKeeper::decode(&bytes), Ok(message));
    }
    if let Ok(message) = ToWorker::decode(packet) {
        let bytes = message.encode();
        assert_eq!(bytes, packet, "{message:?} re-encodes differently");
        assert!(bytes.len() <= MAX_PACKET_BYTES);
        assert_eq!(ToWorker::decode(&bytes), Ok(message));
    }
});
