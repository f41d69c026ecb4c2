//! Cached RFC 3339 local-time timestamps for CRI records (filled in by the log implementation).

/// The worker's timestamp cache (refreshed at most every 100 ms).
pub struct TimestampCache {
    _private: (),
}
