//! The trace-context parsers (`ringmon::otel::context`): the W3C
//! `traceparent` value from a request's metadata map, the legacy JSON
//! metadata (`metadataOld`) and the `--tracing-endpoint` flag.
//!
//! Input: the bytes, used as a whole by every parser (as text where one
//! wants text). Checked: nothing panics; a parsed traceparent has non-zero
//! ids and prints back (as version 00) to a value that parses the same; the
//! JSON form agrees with the map form for the value it carries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::otel::context::{parse_endpoint, parse_traceparent, traceparent_from_json};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let from_json = traceparent_from_json(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(c) = parse_traceparent(text) {
        assert_ne!(c.trace_id, [0; 16]);
        assert_ne!(c.span_id, [0; 8]);
        let printed = format!(
            "00-{}-{}-{:02x}",
            hex(&c.trace_id),
            hex(&c.span_id),
            c.flags
        );
        assert_eq!(parse_traceparent(&printed), Some(c));
        let json = serde_json::json!({ "traceparent": text }).to_string();
        if json.len() <= ringmon::otel::context::MAX_JSON_METADATA_LEN {
            assert_eq!(traceparent_from_json(json.as_bytes()), Some(c));
        }
    }
    if let Some(c) = from_json {
        assert_ne!(c.trace_id, [0; 16]);
    }
    if let Ok(endpoint) = parse_endpoint(text) {
        assert!(endpoint.authority.contains(':'));
        assert!(!endpoint.authority.contains('/'));
    }
});
