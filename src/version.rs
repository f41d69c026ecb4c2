//! Build info.
