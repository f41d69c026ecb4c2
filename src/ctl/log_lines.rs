//! Reading container logs back for `ringmon ctl logs`: pure parsers of one
//! log line (the CRI format and the JSON driver's, `crate::log`), of the
//! RFC 3339 timestamps they carry, and of `--since`'s values. Lines come
//! from files a container's output filled, so anything may be in them: a
//! line that does not parse is reported, never a panic (fuzzed by
//! `fuzz/fuzz_targets/ctl_log_lines.rs`).

use std::borrow::Cow;

/// Which format a log file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFileKind {
    Cri,
    Json,
}

/// The stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// One record of a log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Nanoseconds since the Unix epoch (the JSON driver has whole seconds).
    pub unix_nanos: i64,
    pub pipe: Pipe,
    /// The message text, without a line end.
    pub message: Cow<'a, [u8]>,
    /// The line goes on in the next record (a CRI `P` record).
    pub partial: bool,
}

/// Why a log line was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogLineError {
    #[error("log line has no {0} field")]
    MissingField(&'static str),
    #[error("log line timestamp '{0}' is not RFC 3339")]
    Timestamp(String),
    #[error("log line stream '{0}' is neither stdout nor stderr")]
    Stream(String),
    #[error("log line tag '{0}' is neither P nor F")]
    Tag(String),
    #[error("JSON log line: {0}")]
    Json(String),
}

/// Parses one line (without its `\n`).
pub fn parse_line(kind: LogFileKind, line: &[u8]) -> Result<Record<'_>, LogLineError> {
    match kind {
        LogFileKind::Cri => parse_cri(line),
        LogFileKind::Json => parse_json(line),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pipe(name: &[u8]) -> Result<Pipe, LogLineError> {
    match name {
        b"stdout" => Ok(Pipe::Stdout),
        b"stderr" => Ok(Pipe::Stderr),
        other => Err(LogLineError::Stream(lossy(other))),
    }
}

/// `<RFC 3339> <stdout|stderr> <P|F> <message>`
fn parse_cri(line: &[u8]) -> Result<Record<'_>, LogLineError> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let ts = fields
        .next()
        .ok_or(LogLineError::MissingField("timestamp"))?;
    let stream = fields.next().ok_or(LogLineError::MissingField("stream"))?;
    let tag = fields.next().ok_or(LogLineError::MissingField("tag"))?;
    // `F` with nothing after it: an empty line (the space may be absent).
    let message = fields.next().unwrap_or_default();
    let unix_nanos =
        parse_rfc3339(std::str::from_utf8(ts).map_err(|_| LogLineError::Timestamp(lossy(ts)))?)
            .ok_or_else(|| LogLineError::Timestamp(lossy(ts)))?;
    let partial = match tag {
        b"P" => true,
        b"F" => false,
        other => return Err(LogLineError::Tag(lossy(other))),
    };
    Ok(Record {
        unix_nanos,
        pipe: pipe(stream)?,
        message: Cow::Borrowed(message),
        partial,
    })
}

/// `{"timestamp":<secs>,"pipe":"stdout","message":"<text>"}`
fn parse_json(line: &[u8]) -> Result<Record<'static>, LogLineError> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| LogLineError::Json(e.to_string()))?;
    let secs = value
        .get("timestamp")
        .and_then(|t| t.as_i64())
        .ok_or(LogLineError::MissingField("timestamp"))?;
    let stream = value
        .get("pipe")
        .and_then(|p| p.as_str())
        .ok_or(LogLineError::MissingField("pipe"))?;
    let message = value
        .get("message")
        .and_then(|m| m.as_str())
        .ok_or(LogLineError::MissingField("message"))?;
    Ok(Record {
        unix_nanos: secs.saturating_mul(1_000_000_000),
        pipe: pipe(stream.as_bytes())?,
        message: Cow::Owned(message.as_bytes().to_vec()),
        partial: false,
    })
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to nanoseconds since
/// the Unix epoch; `None` when it is not that or out of range.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || !s.is_char_boundary(19)
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = i64::from(digits(&s[0..4])?);
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let hour = i64::from(digits(&s[11..13])?);
    let minute = i64::from(digits(&s[14..16])?);
    let second = i64::from(digits(&s[17..19])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        for (i, c) in frac[..len].bytes().enumerate() {
            if i < 9 {
                nanos = nanos * 10 + i64::from(c - b'0');
            }
        }
        for _ in len..9 {
            nanos *= 10;
        }
        rest = &frac[len..];
    }
    let offset_secs = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(std::str::from_utf8(&[*h1, *h2]).ok()?)?;
            let m = digits(std::str::from_utf8(&[*m1, *m2]).ok()?)?;
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Why a `--since` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--since '{0}' is neither a duration (10s, 5m, 1h30m, 250ms) nor an RFC 3339 time")]
pub struct BadSince(pub String);

/// Parses `--since`: an RFC 3339 time, or a duration back from `now_nanos`
/// (`10s`, `5m`, `1h30m`, `250ms`, `2d`). Returns nanoseconds since the
/// epoch.
pub fn parse_since(value: &str, now_nanos: i64) -> Result<i64, BadSince> {
    if let Some(t) = parse_rfc3339(value) {
        return Ok(t);
    }
    let bad = || BadSince(value.to_string());
    let mut total: i64 = 0;
    let mut rest = value;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n_len = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
        if n_len == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..n_len].parse().map_err(|_| bad())?;
        rest = &rest[n_len..];
        let u_len = rest.bytes().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit: i64 = match &rest[..u_len] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[u_len..];
        total = n
            .checked_mul(unit)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(bad)?;
    }
    Ok(now_nanos.saturating_sub(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_of_both_dialects() {
        let r = parse_line(
            LogFileKind::Cri,
            b"2024-03-01T10:00:00.5Z stdout F hello world",
        )
        .unwrap();
        assert_eq!(r.pipe, Pipe::Stdout);
        assert!(!r.partial);
        assert_eq!(&*r.message, b"hello world");
        assert_eq!(r.unix_nanos, 1_709_287_200_500_000_000);
        let r = parse_line(
            LogFileKind::Cri,
            b"2024-03-01T11:00:00.500000000+01:00 stderr P part",
        )
        .unwrap();
        assert_eq!((r.pipe, r.partial), (Pipe::Stderr, true));
        assert_eq!(r.unix_nanos, 1_709_287_200_500_000_000);
        let r = parse_line(LogFileKind::Cri, b"2024-03-01T10:00:00Z stdout F").unwrap();
        assert!(r.message.is_empty());
    }

    #[test]
    fn bad_cri_lines_name_the_field() {
        assert_eq!(
            parse_line(LogFileKind::Cri, b"garbage"),
            Err(LogLineError::MissingField("stream"))
        );
        assert_eq!(
            parse_line(LogFileKind::Cri, b"2024-03-01T10:00:00Z stdin F x"),
            Err(LogLineError::Stream("stdin".into()))
        );
        assert_eq!(
            parse_line(LogFileKind::Cri, b"2024-03-01T10:00:00Z stdout X x"),
            Err(LogLineError::Tag("X".into()))
        );
        assert!(matches!(
            parse_line(LogFileKind::Cri, b"yesterday stdout F x"),
            Err(LogLineError::Timestamp(_))
        ));
    }

    #[test]
    fn json_lines() {
        let r = parse_line(
            LogFileKind::Json,
            br#"{"timestamp":1709287200,"pipe":"stderr","message":"a \"q\""}"#,
        )
        .unwrap();
        assert_eq!(r.pipe, Pipe::Stderr);
        assert_eq!(&*r.message, b"a \"q\"");
        assert_eq!(r.unix_nanos, 1_709_287_200_000_000_000);
        assert!(parse_line(LogFileKind::Json, b"{}").is_err());
    }

    #[test]
    fn rfc3339_edges() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59.123456789123-00:30"),
            // 2000-03-01T00:00:00Z is 951868800; -00:30 is 30 minutes behind.
            Some((951_868_799 + 1_800) * 1_000_000_000 + 123_456_789)
        );
        for bad in [
            "2000-13-01T00:00:00Z",
            "2000-01-01T00:00:00",
            "2000-01-01T00:00:00.Z",
            "2000-01-01T00:00:00+1:00",
            "é000-01-01T00:00:00Z",
            "2000-01-01T00:00:0é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn since_values() {
        let now = 1_000_000_000_000_000_000;
        assert_eq!(parse_since("10s", now), Ok(now - 10_000_000_000));
        assert_eq!(parse_since("1h30m", now), Ok(now - 5_400_000_000_000));
        assert_eq!(parse_since("250ms", now), Ok(now - 250_000_000));
        assert_eq!(parse_since("1970-01-01T00:00:01Z", now), Ok(1_000_000_000));
        for bad in ["", "10", "s", "5x", "-5s", "99999999999999999999d"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
