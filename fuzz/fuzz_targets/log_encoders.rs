//! The container log encoders (`ringmon::log`): CRI, JSON, the journald
//! entry, and the RFC 3339 timestamp that CRI records start with. Output
//! bytes of a container are arbitrary, so none of these may panic, and each
//! must read back to what went in:
//! - CRI: the records parse back (timestamp, stream, F/P tag, content) and
//!   their contents concatenate to the chunk; `P` exactly for a tail
//!   without `\n`; each record is `record_len` long;
//! - JSON: every line is a JSON object (serde_json) whose message is the
//!   segment decoded lossily and trimmed, within `max_entry_len`;
//! - journald: the native-protocol entry carries the message unchanged.
//!
//! Input: stream byte, 8 bytes seconds, 4 bytes nanoseconds, 4 bytes zone
//! offset, then the chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::log::{cri, journald, json, timestamp, StreamKind};
use ringmon_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::new(data);
    let stream = if input.u8() & 1 == 0 {
        StreamKind::Stdout
    } else {
        StreamKind::Stderr
    };
    let secs = input.u64();
    let nanos = input.u32();
    let offset = input.u32() as i32;
    let chunk = input.rest();

    let ts = timestamp::format_rfc3339(secs as i64, nanos, offset);
    let ts = ts.as_bytes();
    check_timestamp(ts);
    check_cri(ts, stream, chunk);
    check_json(secs, stream, chunk);
    check_journald(chunk);
});

fn check_timestamp(ts: &[u8]) {
    assert!(ts.len() <= timestamp::MAX_TIMESTAMP_LEN);
    assert!(ts.len() >= "0000-00-00T00:00:00Z".len());
    assert!(ts
        .iter()
        .all(|b| b.is_ascii_digit() || b"-T:.Z+".contains(b)));
    let text = std::str::from_utf8(ts).unwrap();
    let month: u32 = text[5..7].parse().unwrap();
    let day: u32 = text[8..10].parse().unwrap();
    let hour: u32 = text[11..13].parse().unwrap();
    let minute: u32 = text[14..16].parse().unwrap();
    let second: u32 = text[17..19].parse().unwrap();
    assert!((1..=12).contains(&month) && (1..=31).contains(&day));
    assert!(hour < 24 && minute < 60 && second < 60);
}

fn check_cri(ts: &[u8], stream: StreamKind, chunk: &[u8]) {
    let mut out = Vec::new();
    cri::encode(&mut out, ts, stream, chunk);
    let expected_len: usize = cri::segments(chunk).map(|s| s.record_len(ts.len())).sum();
    assert_eq!(out.len(), expected_len);

    let mut content = Vec::new();
    let mut rest = &out[..];
    let mut records = 0;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .expect("record ends with \\n");
        let (record, after) = rest.split_at(end + 1);
        rest = after;
        let (record_ts, record) = record.split_at(ts.len());
        assert_eq!(record_ts, ts);
        let prefix = format!(" {} ", stream.as_str());
        assert!(record.starts_with(prefix.as_bytes()));
        let record = &record[prefix.len()..];
        let (tag, text) = (record[0], &record[2..]);
        assert_eq!(record[1], b' ');
        match tag {
            b'F' => content.extend_from_slice(text),
            b'P' => {
                // Only the chunk's tail is partial.
                assert!(rest.is_empty());
                assert!(!chunk.ends_with(b"\n"));
                content.extend_from_slice(&text[..text.len() - 1]);
            }
            other => panic!("unknown CRI tag {other}"),
        }
        records += 1;
    }
    assert_eq!(
        content, chunk,
        "CRI records do not concatenate to the chunk"
    );
    assert_eq!(records, cri::segments(chunk).count());
}

fn check_json(secs: u64, stream: StreamKind, chunk: &[u8]) {
    let mut out = Vec::new();
    json::encode(&mut out, secs, stream, chunk);
    let text = std::str::from_utf8(&out).expect("JSON log is UTF-8");
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let segments: Vec<cri::Segment<'_>> = cri::segments(chunk).collect();
    assert_eq!(lines.len(), segments.len());
    for (line, segment) in lines.iter().zip(&segments) {
        assert!(line.len() < json::max_entry_len(segment.bytes.len()));
        let entry: serde_json::Value = serde_json::from_str(line).expect("entry is JSON");
        assert_eq!(entry["timestamp"].as_u64(), Some(secs));
        assert_eq!(entry["pipe"].as_str(), Some(stream.as_str()));
        let lossy = String::from_utf8_lossy(segment.bytes);
        assert_eq!(entry["message"].as_str(), Some(lossy.trim()));
        assert_eq!(entry.as_object().map(|o| o.len()), Some(3));
    }
}

fn check_journald(message: &[u8]) {
    let mut out = Vec::new();
    journald::encode_entry(&mut out, message);
    let rest = out
        .strip_prefix(b"PRIORITY=5\nMESSAGE\n".as_slice())
        .expect("fields in order");
    let (len, rest) = rest.split_at(8);
    let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
    assert_eq!(len, message.len());
    assert_eq!(&rest[..len], message);
    assert_eq!(&rest[len..], b"\n");
}
