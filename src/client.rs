//! Rust client.
