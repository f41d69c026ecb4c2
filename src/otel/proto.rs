//! The protobuf encoding of an OTLP `ExportTraceServiceRequest`, written by
//! hand: ringmon sends few fields, and a generated codec would cost more
//! binary than this whole file. Field numbers are those of
//! `opentelemetry/proto/{collector/trace,trace,common,resource}/v1/*.proto`.

use super::{SpanData, SpanKind, Value};

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, WIRE_LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A nested message: encoded by `f` into a scratch buffer, then length
/// prefixed.
fn message_field(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes_field(out, field, &inner);
}

/// `common.v1.KeyValue { key = 1; value = 2 (AnyValue) }`;
/// `AnyValue { string_value = 1; bool_value = 2; int_value = 3 }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message_field(out, field, |kv| {
        bytes_field(kv, 1, key.as_bytes());
        message_field(kv, 2, |any| match value {
            Value::Str(s) => bytes_field(any, 1, s.as_bytes()),
            Value::Bool(b) => {
                tag(any, 2, WIRE_VARINT);
                varint(any, u64::from(*b));
            }
            Value::Int(i) => {
                tag(any, 3, WIRE_VARINT);
                varint(any, *i as u64);
            }
        });
    });
}

/// `trace.v1.Span`.
fn span(out: &mut Vec<u8>, s: &SpanData) {
    bytes_field(out, 1, &s.trace_id);
    bytes_field(out, 2, &s.span_id);
    if let Some(parent) = &s.parent_span_id {
        bytes_field(out, 4, parent);
    }
    bytes_field(out, 5, s.name.as_bytes());
    tag(out, 6, WIRE_VARINT);
    varint(
        out,
        match s.kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        },
    );
    tag(out, 7, WIRE_FIXED64);
    out.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    tag(out, 8, WIRE_FIXED64);
    out.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    for (k, v) in &s.attributes {
        key_value(out, 9, k, v);
    }
    // `Status { message = 2; code = 3 }`: OK is left unset (the
    // convention for instrumentation), an error says why.
    if let Some(msg) = &s.error {
        message_field(out, 15, |st| {
            bytes_field(st, 2, msg.as_bytes());
            tag(st, 3, WIRE_VARINT);
            varint(st, 2);
        });
    }
    // `flags` (fixed32): bit 8 "has remote-parent info", bit 9 "parent is
    // remote"; the low byte carries the W3C trace flags.
    tag(out, 16, WIRE_FIXED32);
    out.extend_from_slice(&s.flags.to_le_bytes());
}

/// One span's `trace.v1.Span` message, to be placed in a request by
/// [`export_request_encoded`] (encoded apart so that the exporter knows a
/// batch's size before building it).
pub fn span_message(s: &SpanData) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    span(&mut out, s);
    out
}

/// Encodes `ExportTraceServiceRequest { resource_spans = 1 }` holding one
/// `ResourceSpans { resource = 1; scope_spans = 2 }` with one
/// `ScopeSpans { scope = 1; spans = 2 }`.
pub fn export_request(
    resource: &[(&str, Value)],
    scope: (&str, &str),
    spans: &[SpanData],
) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = spans.iter().map(span_message).collect();
    export_request_encoded(resource, scope, &encoded)
}

/// [`export_request`] of spans already encoded by [`span_message`].
pub fn export_request_encoded(
    resource: &[(&str, Value)],
    scope: (&str, &str),
    spans: &[Vec<u8>],
) -> Vec<u8> {
    let size: usize = spans.iter().map(|s| s.len() + 8).sum();
    let mut out = Vec::with_capacity(256 + size);
    message_field(&mut out, 1, |rs| {
        message_field(rs, 1, |r| {
            for (k, v) in resource {
                key_value(r, 1, k, v);
            }
        });
        message_field(rs, 2, |ss| {
            // `InstrumentationScope { name = 1; version = 2 }`.
            message_field(ss, 1, |sc| {
                bytes_field(sc, 1, scope.0.as_bytes());
                bytes_field(sc, 2, scope.1.as_bytes());
            });
            for s in spans {
                bytes_field(ss, 2, s);
            }
        });
    });
    out
}

/// A gRPC message frame: uncompressed flag, big-endian length, message;
/// `None` for a message longer than the 32-bit length can say.
pub fn grpc_frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(message.len()).ok()?;
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for (v, want) in [
            (0u64, &[0u8][..]),
            (1, &[1]),
            (127, &[0x7f]),
            (128, &[0x80, 1]),
            (300, &[0xac, 2]),
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, want, "{v}");
        }
    }

    #[test]
    fn key_value_layout() {
        let mut out = Vec::new();
        key_value(&mut out, 9, "k", &Value::Str("v".into()));
        // field 9 len 8 { field 1 "k", field 2 len 3 { field 1 "v" } }
        assert_eq!(out, [0x4a, 8, 0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']);
        let mut out = Vec::new();
        key_value(&mut out, 1, "n", &Value::Int(-1));
        // A negative int64 is a 10-byte varint.
        assert_eq!(out.len(), 2 + 3 + 2 + 1 + 10);
    }

    #[test]
    fn frame() {
        assert_eq!(grpc_frame(b"ab").unwrap(), [0, 0, 0, 0, 2, b'a', b'b']);
    }
}
