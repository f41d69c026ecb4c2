//! The JSON log format (spec §4.3), as pure functions over byte slices.
//!
//! One object per segment (segments as in [`super::cri::segments`]; a
//! partial tail is its own entry, without a marker):
//! `{"timestamp":<secs>,"pipe":"stdout","message":"<text>"}` + `\n`.
//! The text is the segment decoded as UTF-8 lossily (each invalid sequence
//! becomes U+FFFD) with leading and trailing whitespace trimmed. Everything
//! is done on the borrowed bytes: no per-line allocation.

use super::cri::segments;
use super::StreamKind;

/// Appends the entry for one segment to `out`.
pub fn encode_segment(out: &mut Vec<u8>, unix_secs: u64, stream: StreamKind, segment: &[u8]) {
    out.extend_from_slice(b"{\"timestamp\":");
    push_decimal(out, unix_secs);
    out.extend_from_slice(b",\"pipe\":\"");
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":\"");
    for chunk in trim_lossy(segment).utf8_chunks() {
        push_escaped(out, chunk.valid());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.extend_from_slice(b"\"}\n");
}

/// Upper bound of the entry size for a segment of `segment_len` bytes: every
/// byte may become a 6-byte `\u00XX` escape (an invalid byte becomes a 3-byte
/// U+FFFD), plus the fixed keys and a 20-digit timestamp.
pub fn max_entry_len(segment_len: usize) -> usize {
    const FIXED: usize = r#"{"timestamp":,"pipe":"stdout","message":""}"#.len() + 20 + 1;
    segment_len * 6 + FIXED
}

/// Appends the entries of a whole chunk to `out` (all sharing `unix_secs`).
pub fn encode(out: &mut Vec<u8>, unix_secs: u64, stream: StreamKind, chunk: &[u8]) {
    for segment in segments(chunk) {
        encode_segment(out, unix_secs, stream, segment.bytes);
    }
}

/// The sub-slice whose lossy decoding equals the trimmed lossy decoding of
/// `bytes`. Invalid sequences decode to U+FFFD, which is not whitespace, so
/// they end trimming like any visible character.
fn trim_lossy(bytes: &[u8]) -> &[u8] {
    let mut start = bytes.len();
    let mut offset = 0;
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let rest = valid.trim_start();
        if !rest.is_empty() || !chunk.invalid().is_empty() {
            start = offset + (valid.len() - rest.len());
            break;
        }
        offset += valid.len();
    }
    let bytes = &bytes[start..];

    let mut end = 0;
    let mut offset = 0;
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let kept = valid.trim_end();
        if !kept.is_empty() {
            end = offset + kept.len();
        }
        offset += valid.len() + chunk.invalid().len();
        if !chunk.invalid().is_empty() {
            end = offset;
        }
    }
    &bytes[..end]
}

/// JSON string escaping as serde_json does it: `"` and `\`, the short forms
/// for `\b \f \n \r \t`, `\u00XX` for other control characters, everything
/// else (including non-ASCII) verbatim.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut copied_up_to = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[copied_up_to..index]);
        copied_up_to = index + 1;
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[copied_up_to..]);
}

fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(stream: StreamKind, chunk: &[u8]) -> String {
        let mut out = Vec::new();
        encode(&mut out, 1_787_317_753, stream, chunk);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_line() {
        assert_eq!(
            encoded(StreamKind::Stdout, b"hello world\n"),
            "{\"timestamp\":1787317753,\"pipe\":\"stdout\",\"message\":\"hello world\"}\n"
        );
    }

    #[test]
    fn lines_partial_tail_and_trimming() {
        assert_eq!(
            encoded(StreamKind::Stderr, b"  a b \r\n\n\ttail"),
            concat!(
                "{\"timestamp\":1787317753,\"pipe\":\"stderr\",\"message\":\"a b\"}\n",
                "{\"timestamp\":1787317753,\"pipe\":\"stderr\",\"message\":\"\"}\n",
                "{\"timestamp\":1787317753,\"pipe\":\"stderr\",\"message\":\"tail\"}\n",
            )
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(
            encoded(
                StreamKind::Stdout,
                b"q\"b\\s/\x08\x0c\x01\x1f\0\x7f\ttab x\n"
            ),
            "{\"timestamp\":1787317753,\"pipe\":\"stdout\",\
             \"message\":\"q\\\"b\\\\s/\\b\\f\\u0001\\u001f\\u0000\u{7f}\\ttab x\"}\n"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_stops_trimming() {
        assert_eq!(
            encoded(StreamKind::Stdout, b" \xff h\xc3\xa9 \xe2\x82 \n"),
            "{\"timestamp\":1787317753,\"pipe\":\"stdout\",\
             \"message\":\"\u{FFFD} h\u{e9} \u{FFFD}\"}\n"
        );
    }

    #[test]
    fn unicode_whitespace_is_trimmed_like_str_trim() {
        let chunk = "\u{3000}\u{a0}wide\u{2003}\n".as_bytes();
        let mut out = Vec::new();
        encode_segment(&mut out, 0, StreamKind::Stdout, chunk);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"timestamp\":0,\"pipe\":\"stdout\",\"message\":\"wide\"}\n"
        );
    }

    #[test]
    fn empty_chunk_writes_nothing() {
        assert_eq!(encoded(StreamKind::Stdout, b""), "");
    }

    #[test]
    fn max_entry_len_is_an_upper_bound() {
        for segment in [&b"\x01\x01\x01"[..], b"\xff\xff", b"", b"\"\"\n"] {
            let mut out = Vec::new();
            encode_segment(&mut out, u64::MAX, StreamKind::Stderr, segment);
            assert!(out.len() <= max_entry_len(segment.len()), "{segment:?}");
        }
    }

    #[test]
    fn trim_matches_lossy_trim() {
        let cases: [&[u8]; 6] = [
            b"",
            b"   ",
            b"\xff",
            b" \xe2\x82\xac \xf0\x9f ",
            b"\t\xc3\n\xa9 ",
            b"plain",
        ];
        for case in cases {
            let lossy = String::from_utf8_lossy(case);
            let ours = String::from_utf8_lossy(trim_lossy(case)).into_owned();
            assert_eq!(ours, lossy.trim(), "{case:?}");
        }
    }
}
