//! RFC 3339 timestamps for log records, cached per worker.
//!
//! Formatting a timestamp (clock read, zone lookup, civil date arithmetic) for
//! every line would dominate the cost of small lines, and the spec (§4.2)
//! allows a timestamp to be up to ~100 ms old: the cache is checked once per
//! chunk and re-formatted only when 100 ms passed since the last refresh.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest timestamp we produce: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+HH:MM`.
pub const MAX_TIMESTAMP_LEN: usize = 35;

/// A formatted RFC 3339 timestamp held inline (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormattedTimestamp {
    bytes: [u8; MAX_TIMESTAMP_LEN],
    len: u8,
}

impl FormattedTimestamp {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn push(&mut self, byte: u8) {
        self.bytes[usize::from(self.len)] = byte;
        self.len += 1;
    }

    fn push_digits(&mut self, value: u32, width: u32) {
        for position in (0..width).rev() {
            self.push(b'0' + (value / 10u32.pow(position) % 10) as u8);
        }
    }
}

/// Formats `unix_secs` + `nanos` as RFC 3339 in a zone `utc_offset_secs`
/// east of UTC: `YYYY-MM-DDTHH:MM:SS`, then `.` and 1–9 fraction digits with
/// trailing zeros removed (nothing when `nanos == 0`), then `Z` for a zero
/// offset or `±HH:MM`.
///
/// Years outside 0000–9999 are clamped (RFC 3339 has four year digits; the
/// clock of a running server never gets there). Sub-minute zone offsets
/// (historic local mean time) are truncated to minutes, as RFC 3339 requires.
pub fn format_rfc3339(unix_secs: i64, nanos: u32, utc_offset_secs: i32) -> FormattedTimestamp {
    format_with(unix_secs, nanos, utc_offset_secs, false)
}

/// The C conmon's form of the same instant (its k8s-file records): always
/// nine fraction digits and always a numeric offset (`+00:00`, never `Z`),
/// e.g. `2026-12-02T16:12:20.871038020+00:00`. Readers of the format
/// (podman, CRI-O, the kubelet) parse both forms; conmon mode writes this
/// one so that its logs are what its callers' tools were tested with.
pub fn format_rfc3339_conmon(
    unix_secs: i64,
    nanos: u32,
    utc_offset_secs: i32,
) -> FormattedTimestamp {
    format_with(unix_secs, nanos, utc_offset_secs, true)
}

fn format_with(
    unix_secs: i64,
    nanos: u32,
    utc_offset_secs: i32,
    fixed: bool,
) -> FormattedTimestamp {
    let local_secs = unix_secs.saturating_add(i64::from(utc_offset_secs));
    let days = local_secs.div_euclid(86_400);
    let second_of_day = local_secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let year = year.clamp(0, 9999) as u32;

    let mut out = FormattedTimestamp {
        bytes: [0; MAX_TIMESTAMP_LEN],
        len: 0,
    };
    out.push_digits(year, 4);
    out.push(b'-');
    out.push_digits(month, 2);
    out.push(b'-');
    out.push_digits(day, 2);
    out.push(b'T');
    out.push_digits(second_of_day / 3600, 2);
    out.push(b':');
    out.push_digits(second_of_day / 60 % 60, 2);
    out.push(b':');
    out.push_digits(second_of_day % 60, 2);

    let nanos = nanos.min(999_999_999);
    if fixed {
        out.push(b'.');
        out.push_digits(nanos, 9);
    } else if nanos != 0 {
        let mut fraction = nanos;
        let mut digits = 9;
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        out.push(b'.');
        out.push_digits(fraction, digits);
    }

    if utc_offset_secs == 0 && !fixed {
        out.push(b'Z');
    } else {
        out.push(if utc_offset_secs < 0 { b'-' } else { b'+' });
        let offset_minutes = utc_offset_secs.unsigned_abs() / 60;
        out.push_digits((offset_minutes / 60).min(99), 2);
        out.push(b':');
        out.push_digits(offset_minutes % 60, 2);
    }
    out
}

/// Proleptic Gregorian (year, month, day) of `days` since 1970-01-01.
///
/// Works in 400-year eras (146 097 days each) counted from 0000-03-01, so that
/// the leap day is the last day of a "year" and month lengths follow a simple
/// linear pattern from March on.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    const DAYS_FROM_0000_03_01_TO_EPOCH: i64 = 719_468;
    const DAYS_PER_ERA: i64 = 146_097;

    let days = days + DAYS_FROM_0000_03_01_TO_EPOCH;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days.rem_euclid(DAYS_PER_ERA);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * march_based_month + 2) / 5 + 1) as u32;
    let month = if march_based_month < 10 {
        march_based_month + 3
    } else {
        march_based_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Per-worker cache of the current timestamp (see the module docs).
#[derive(Debug)]
pub struct TimestampCache {
    formatted: FormattedTimestamp,
    /// The same instant in the C conmon's form (conmon mode's logs).
    conmon: FormattedTimestamp,
    unix_secs: u64,
    refreshed_at: Instant,
}

impl TimestampCache {
    /// How old a cached timestamp may get before `refresh` re-formats it.
    pub const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

    /// A cache holding the current time.
    pub fn new() -> TimestampCache {
        let mut cache = TimestampCache {
            formatted: format_rfc3339(0, 0, 0),
            conmon: format_rfc3339_conmon(0, 0, 0),
            unix_secs: 0,
            refreshed_at: Instant::now(),
        };
        cache.force_refresh();
        cache
    }

    /// A cache pinned to a given instant and zone (tests, benchmarks).
    /// `refresh` keeps it until `REFRESH_INTERVAL` passed.
    pub fn fixed(unix_secs: i64, nanos: u32, utc_offset_secs: i32) -> TimestampCache {
        TimestampCache {
            formatted: format_rfc3339(unix_secs, nanos, utc_offset_secs),
            conmon: format_rfc3339_conmon(unix_secs, nanos, utc_offset_secs),
            unix_secs: unix_secs.max(0) as u64,
            refreshed_at: Instant::now(),
        }
    }

    /// Re-formats the timestamp if it is `REFRESH_INTERVAL` or more old.
    /// Called once per chunk by the engine worker.
    pub fn refresh(&mut self) {
        if self.refreshed_at.elapsed() >= Self::REFRESH_INTERVAL {
            self.force_refresh();
        }
    }

    /// Re-formats the timestamp from the wall clock now.
    pub fn force_refresh(&mut self) {
        self.refreshed_at = Instant::now();
        // A wall clock before 1970 is a broken host; log the epoch then.
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let unix_secs = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
        let offset = crate::sys::time::local_utc_offset_secs(unix_secs);
        self.formatted = format_rfc3339(unix_secs, since_epoch.subsec_nanos(), offset);
        self.conmon = format_rfc3339_conmon(unix_secs, since_epoch.subsec_nanos(), offset);
        self.unix_secs = since_epoch.as_secs();
    }

    /// The cached RFC 3339 timestamp (CRI records).
    pub fn as_bytes(&self) -> &[u8] {
        self.formatted.as_bytes()
    }

    /// The cached timestamp in the C conmon's form (conmon mode's k8s-file
    /// records).
    pub fn conmon_bytes(&self) -> &[u8] {
        self.conmon.as_bytes()
    }

    /// The cached time in whole Unix seconds (JSON records).
    pub fn unix_secs(&self) -> u64 {
        self.unix_secs
    }
}

impl Default for TimestampCache {
    fn default() -> Self {
        TimestampCache::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-08-21T13:09:13Z
    const SAMPLE_SECS: i64 = 1_787_317_753;

    fn fmt(secs: i64, nanos: u32, offset: i32) -> String {
        String::from_utf8(format_rfc3339(secs, nanos, offset).as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn positive_offset_with_full_fraction() {
        assert_eq!(
            fmt(SAMPLE_SECS, 123_456_789, 7200),
            "2026-08-21T15:09:13.123456789+02:00"
        );
    }

    #[test]
    fn utc_with_trimmed_fraction() {
        assert_eq!(
            fmt(SAMPLE_SECS, 123_400_000, 0),
            "2026-08-21T13:09:13.1234Z"
        );
    }

    #[test]
    fn exact_second_has_no_fraction() {
        assert_eq!(fmt(SAMPLE_SECS, 0, 0), "2026-08-21T13:09:13Z");
        assert_eq!(fmt(SAMPLE_SECS, 0, 3600), "2026-08-21T14:09:13+01:00");
    }

    #[test]
    fn fraction_keeps_leading_zeros() {
        assert_eq!(fmt(SAMPLE_SECS, 1, 0), "2026-08-21T13:09:13.000000001Z");
        assert_eq!(fmt(SAMPLE_SECS, 50_000_000, 0), "2026-08-21T13:09:13.05Z");
    }

    #[test]
    fn negative_offsets_cross_the_date_line() {
        // 13:09 UTC is 02:39 the same day at -10:30.
        assert_eq!(
            fmt(SAMPLE_SECS, 0, -(10 * 3600 + 30 * 60)),
            "2026-08-21T02:39:13-10:30"
        );
        // Midnight UTC is the previous day in New York (EDT).
        assert_eq!(
            fmt(1_787_270_400, 5, -4 * 3600),
            "2026-08-20T20:00:00.000000005-04:00"
        );
    }

    #[test]
    fn calendar_edges() {
        assert_eq!(fmt(0, 0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt(951_782_400, 0, 0), "2000-02-29T00:00:00Z");
        assert_eq!(fmt(1_709_251_199, 0, 0), "2024-02-29T23:59:59Z");
        assert_eq!(fmt(1_735_689_599, 0, 0), "2024-12-31T23:59:59Z");
        assert_eq!(fmt(4_107_542_400, 0, 0), "2100-03-01T00:00:00Z");
        assert_eq!(fmt(-1, 0, 0), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn conmon_form_has_nine_digits_and_a_numeric_offset() {
        let conmon = |secs, nanos, offset| {
            String::from_utf8(
                format_rfc3339_conmon(secs, nanos, offset)
                    .as_bytes()
                    .to_vec(),
            )
            .unwrap()
        };
        assert_eq!(
            conmon(SAMPLE_SECS, 871_038_020, 0),
            "2026-08-21T13:09:13.871038020+00:00"
        );
        assert_eq!(
            conmon(SAMPLE_SECS, 0, -4 * 3600),
            "2026-08-21T09:09:13.000000000-04:00"
        );
    }

    #[test]
    fn longest_form_fits() {
        let longest = format_rfc3339(253_402_300_799, 999_999_999, -(14 * 3600));
        assert_eq!(longest.as_bytes().len(), MAX_TIMESTAMP_LEN);
    }

    #[test]
    fn cache_refresh_keeps_a_fresh_value() {
        let mut cache = TimestampCache::fixed(SAMPLE_SECS, 0, 0);
        cache.refresh();
        // Refreshed at most once per interval; a test cannot rely on timing,
        // so only check that the value stays well-formed either way.
        assert!(cache.as_bytes().starts_with(b"20"));
        cache.force_refresh();
        assert!(cache.unix_secs() > SAMPLE_SECS as u64 - 10 * 365 * 86_400);
    }
}
