//! ringmon: a conmon-rs wire-compatible container monitor.
//!
//! Layers, each using only the ones below it (see `docs/architecture.md`):
//! `control` (capnp-rpc server) → `rpc` (wire translation) → `core`
//! (registry, lifecycle, exit policy) → `engine` (stdio forwarding workers)
//! → `log` (pure encoders and log writers) → `sys` (every syscall wrapper and
//! all `unsafe`).

pub mod cli;
pub mod client;
pub mod conmon;
pub mod control;
pub mod core;
pub mod ctl;
pub mod engine;
pub mod fixture;
pub mod keeper;
pub mod log;
pub mod metrics;
pub mod otel;
pub mod role;
pub mod rpc;
pub mod server_log;
pub mod stream;
pub mod sys;
#[cfg(test)]
mod test_support;
pub mod version;

/// Generated wire types for `rpc/conmon.capnp`.
#[allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]
pub mod conmon_capnp {
    include!(concat!(env!("OUT_DIR"), "/conmon_capnp.rs"));
}

/// Generated readers for `rpc/conmon_legacy.capnp`: the conmon-rs ≤ 0.8.x
/// layout of the request structs that differ from v1 (see `rpc::legacy`).
#[allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]
pub mod conmon_legacy_capnp {
    include!(concat!(env!("OUT_DIR"), "/conmon_legacy_capnp.rs"));
}
