//! Local time zone offset for log timestamps.
//!
//! CRI log timestamps are written in the server's local time zone (spec
//! §4.2). The C library is the authority on the local zone (TZ, /etc/localtime
//! and its DST rules), so the offset is asked from `localtime_r(3)` instead of
//! re-implementing tzfile parsing.

/// Offset of the local time zone from UTC at `unix_secs`, in seconds east of
/// UTC (`+02:00` → 7200). Falls back to 0 (UTC) if the C library cannot
/// convert the instant (out of range for `time_t`).
pub fn local_utc_offset_secs(unix_secs: i64) -> i32 {
    // `time_t` is 64 bits on every target ringmon supports.
    let time = unix_secs as libc::time_t;
    let mut broken_down = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `time` is a valid, initialised `time_t` on our stack and
    // `broken_down` points to writable memory sized and aligned for a `tm`;
    // `localtime_r` is the reentrant variant that writes only into the
    // caller-provided struct and keeps no reference to either pointer.
    let converted = unsafe { libc::localtime_r(&time, broken_down.as_mut_ptr()) };
    if converted.is_null() {
        return 0;
    }
    // SAFETY: `localtime_r` returned non-null, which means it filled in every
    // field of `broken_down` (and the memory was zeroed before anyway, which
    // is a valid `tm`: integers and a nullable `tm_zone` pointer).
    let broken_down = unsafe { broken_down.assume_init() };
    // Real zone offsets are within ±26 h, so this never saturates in practice.
    i32::try_from(broken_down.tm_gmtoff).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_a_plausible_zone_offset() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let offset = local_utc_offset_secs(now);
        assert!((-26 * 3600..=26 * 3600).contains(&offset), "{offset}");
    }
}
