//! `ringmon ctl logs`'s readers of log files (`ringmon::ctl::log_lines`):
//! one CRI or JSON line, its RFC 3339 timestamp, and `--since` values.
//!
//! Input: a kind byte (even: CRI, odd: JSON), then lines. Checked: no
//! panic (overflow included: the fuzz build has debug assertions); a CRI
//! record's message is the tail of its line; a timestamp that parses
//! parses the same inside a CRI line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::ctl::log_lines::{parse_line, parse_rfc3339, parse_since, LogFileKind};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let kind = if kind % 2 == 0 {
        LogFileKind::Cri
    } else {
        LogFileKind::Json
    };
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(record) = parse_line(kind, line) {
            if kind == LogFileKind::Cri {
                assert!(line.ends_with(&record.message));
            }
        }
        if let Ok(text) = std::str::from_utf8(line) {
            let _ = parse_since(text, i64::MAX);
            let _ = parse_since(text, i64::MIN);
            if let Some(t) = parse_rfc3339(text) {
                let cri = format!("{text} stdout F x");
                let r = parse_line(LogFileKind::Cri, cri.as_bytes());
                assert_eq!(r.map(|r| r.unix_nanos).ok(), Some(t));
            }
        }
    }
});
