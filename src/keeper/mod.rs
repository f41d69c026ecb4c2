//! The keeper: the process a client launches (the pidfile names it), which
//! holds everything that must outlive a crash of the server process (the
//! *worker*) and starts a new worker when one dies (issue 16).
//!
//! The keeper is small on purpose: it holds descriptors and short opaque
//! records, reaps children and keeps their exit statuses, and forwards
//! termination signals. It parses no container output and serves no RPC,
//! so almost nothing in it can fail.
//!
//! - [`proto`]: the messages on the keeper link (pure; fuzzed).
//! - [`link`]: the worker's end of the link (control thread).
//! - [`run`]: the keeper's own loop.

pub mod link;
pub mod proto;
pub mod run;
pub mod start;

pub use link::{HeldContainer, KeeperLink, WorkerHandover};

/// Environment variable naming the worker's end of the keeper link (a
/// SOCK_SEQPACKET socket) in a worker the keeper started.
pub const LINK_FD_ENV: &str = "RINGMON_KEEPER_LINK_FD";

/// Environment variable naming the inherited `conmon.sock` listener in a
/// worker the keeper started.
pub const LISTENER_FD_ENV: &str = "RINGMON_KEEPER_LISTENER_FD";

/// The keeper's process name (the worker keeps `conmonrs`, which clients
/// and journald queries look for).
pub const KEEPER_PROCESS_NAME: &std::ffi::CStr = c"conmonrs-keeper";

/// Largest opaque record one held container carries.
pub const MAX_RECORD_BYTES: usize = 60 * 1024;

/// Largest packet on the link (a record plus its header).
pub const MAX_PACKET_BYTES: usize = 64 * 1024;

/// Most descriptors one held container carries.
pub const MAX_FDS_PER_CONTAINER: usize = 8;

/// Most containers the keeper holds at once (each costs a record and a few
/// descriptors).
pub const MAX_HELD_CONTAINERS: usize = 16 * 1024;

/// Errors of the keeper and of the worker's link to it.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("keeper link: {0}")]
    Proto(#[from] proto::ProtoError),
    #[error("environment variable {name}={value:?} is not a descriptor number")]
    BadEnv { name: &'static str, value: String },
    #[error("keeper link closed")]
    Closed,
    #[error("{what} is {value}, above the limit {limit}")]
    TooLarge {
        what: &'static str,
        value: usize,
        limit: usize,
    },
}

impl KeeperError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> KeeperError {
        KeeperError::Io {
            context: context.into(),
            source,
        }
    }
}
