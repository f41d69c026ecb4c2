//! Local time zone offset for log timestamps (filled in by the log implementation).
