//! The W3C trace context a client sends in a request's metadata: parsing
//! of the `traceparent` value, of the legacy JSON metadata and of the
//! `--tracing-endpoint` flag. All pure: the bytes come from clients (or
//! the command line) and a malformed value only means "no parent".

/// The trace and span a request's `traceparent` names (the remote parent
/// of the server's span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The trace flags byte (bit 0: sampled).
    pub flags: u8,
}

/// The metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Longest `traceparent` value read: version 00 is 55 characters, later
/// versions may append fields after a dash.
const MAX_TRACEPARENT_LEN: usize = 512;

/// Most bytes of legacy JSON metadata parsed (a real one is ~100 bytes).
pub const MAX_JSON_METADATA_LEN: usize = 4096;

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        // The W3C format is lowercase only.
        _ => None,
    }
}

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
}

/// Parses a W3C `traceparent` header value
/// (`version-traceid-spanid-flags`, lowercase hex). `None` for anything
/// malformed: version `ff`, all-zero ids, wrong lengths, version 00 with
/// extra fields. A later version may carry more fields after the flags,
/// which are ignored (as the recommendation says).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.len() > MAX_TRACEPARENT_LEN {
        return None;
    }
    let b = value.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let [version] = hex::<1>(&b[..2])?;
    if version == 0xff || (version == 0 && b.len() != 55) {
        return None;
    }
    if b.len() > 55 && b[55] != b'-' {
        return None;
    }
    let trace_id = hex::<16>(&b[3..35])?;
    let span_id = hex::<8>(&b[36..52])?;
    let [flags] = hex::<1>(&b[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        flags,
    })
}

/// Finds the trace context in the legacy `metadataOld` bytes: conmon-rs
/// ≤ 0.8.x clients put the propagator's text map there as one JSON object
/// of strings (`{"traceparent":"00-…"}`). `None` when the bytes are empty,
/// too long, not such an object or without a valid `traceparent`.
pub fn traceparent_from_json(bytes: &[u8]) -> Option<SpanContext> {
    if bytes.is_empty() || bytes.len() > MAX_JSON_METADATA_LEN {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    parse_traceparent(map.get(TRACEPARENT)?.as_str()?)
}

/// Where spans are exported: `host:port` of an OTLP/gRPC receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as given (a name is resolved at connect time).
    pub authority: String,
}

/// Why a `--tracing-endpoint` is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("invalid --tracing-endpoint '{value}': {reason}")]
    Invalid { value: String, reason: &'static str },
}

/// Parses `--tracing-endpoint`: `http://host:port` (conmon-rs's form, a
/// trailing `/` allowed) or a bare `host:port` (CRI-O's
/// `tracing_endpoint` setting). TLS (`https://`) is not supported.
pub fn parse_endpoint(value: &str) -> Result<Endpoint, EndpointError> {
    let invalid = |reason| EndpointError::Invalid {
        value: value.to_string(),
        reason,
    };
    let trimmed = value.trim();
    if trimmed.starts_with("https://") {
        return Err(invalid("TLS endpoints are not supported, use http://"));
    }
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains("://") {
        return Err(invalid("only the http scheme is supported"));
    }
    if rest.contains('/') {
        return Err(invalid(
            "a path is not supported (OTLP/gRPC has a fixed one)",
        ));
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(invalid("needs a port (host:port)"));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("needs a host (host:port)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(invalid("the port must be a number from 1 to 65535")),
    }
    Ok(Endpoint {
        authority: rest.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn valid_traceparent() {
        let c = parse_traceparent(VALID).unwrap();
        assert_eq!(c.trace_id[0], 0x0a);
        assert_eq!(c.trace_id[15], 0x9c);
        assert_eq!(c.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert_eq!(c.flags, 1);
        // A future version with an extra field.
        assert!(parse_traceparent(&format!("01{}-extra", &VALID[2..])).is_some());
        assert!(parse_traceparent(&format!(" {VALID}\t")).is_some());
    }

    #[test]
    fn malformed_traceparent_is_none() {
        for bad in [
            "",
            "00",
            &VALID[..54],
            &format!("{VALID}-x"),
            &format!("ff{}", &VALID[2..]),
            &VALID.to_uppercase(),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            &format!("01{}x", &VALID[2..]),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0é",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn legacy_json_metadata() {
        let json = format!(r#"{{"traceparent":"{VALID}","tracestate":"a=b"}}"#);
        assert_eq!(
            traceparent_from_json(json.as_bytes()),
            parse_traceparent(VALID)
        );
        for bad in [
            &b""[..],
            b"{}",
            b"null",
            b"[1,2]",
            b"{\"traceparent\":5}",
            b"{\"traceparent\":\"00-zz\"}",
            b"\xff\xfe",
        ] {
            assert_eq!(traceparent_from_json(bad), None, "{bad:?}");
        }
        let long = format!(r#"{{"traceparent":"{VALID}","x":"{}"}}"#, "a".repeat(5000));
        assert_eq!(traceparent_from_json(long.as_bytes()), None);
    }

    #[test]
    fn endpoints() {
        for (given, authority) in [
            ("http://127.0.0.1:4317", "127.0.0.1:4317"),
            ("http://localhost:4317/", "localhost:4317"),
            ("0.0.0.0:4317", "0.0.0.0:4317"),
            ("http://[::1]:4317", "[::1]:4317"),
        ] {
            assert_eq!(parse_endpoint(given).unwrap().authority, authority);
        }
        for bad in [
            "https://collector:4317",
            "http://collector",
            "http://collector:0",
            "http://collector:99999",
            "http://collector:4317/v1/traces",
            "grpc://collector:4317",
            ":4317",
        ] {
            let e = parse_endpoint(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
