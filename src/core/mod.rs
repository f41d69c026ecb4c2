//! Container registry, lifecycle, exit and OOM policy, runtime argv
//! building. Knows nothing of capnp or io_uring: the RPC layer hands it
//! validated core types, the engine moves the bytes.

use std::path::PathBuf;

use crate::log::LogSpec;

pub mod attach;
pub mod bundle;
pub mod exec;
pub mod exec_session;
pub mod exit_files;
pub mod fd_socket;
pub mod listing;
pub mod monitor;
pub mod namespaces;
pub mod oom;
pub mod pause;
pub mod runtime;

pub use exec::{ExecOutcome, ExecSync};
pub use monitor::Monitor;
pub use runtime::CgroupManager;

/// A validated `createContainer` request.
#[derive(Clone, Debug, Default)]
pub struct CreateContainer {
    pub id: String,
    pub bundle: PathBuf,
    pub terminal: bool,
    pub stdin: bool,
    pub exit_paths: Vec<PathBuf>,
    pub oom_exit_paths: Vec<PathBuf>,
    pub logs: Vec<LogSpec>,
    pub cleanup_cmd: Vec<String>,
    pub global_args: Vec<String>,
    pub command_args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cgroup_manager: CgroupManager,
    /// fd-socket slots whose fds the runtime gets as fd 3, 4, ... in order.
    pub additional_fds: Vec<u64>,
    /// fd-socket slots whose fds are held open until the container exits.
    pub leak_fds: Vec<u64>,
    /// The runtime's `--pid-file`; `None`: `<bundle>/pidfile`.
    pub pid_file: Option<PathBuf>,
    /// Sync the log files to disk before writing the exit files.
    pub sync_logs: bool,
}

/// Errors of the core layer. The messages are what RPC clients see.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Lookup of an unknown or exited container.
    #[error("child not available")]
    ChildNotAvailable,
    /// A container with this id is already monitored.
    #[error("container id '{0}' is already in use")]
    DuplicateId(String),
    /// Bad request content found by the core (the RPC layer checks shapes).
    #[error("invalid {field} '{value}': {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The runtime exited non-zero; `stderr` is its diagnostic output.
    #[error("child command exited with: {code}{}", stderr_suffix(.stderr))]
    RuntimeFailed { code: i32, stderr: String },
    #[error("child command exited with signal {signal}{}", stderr_suffix(.stderr))]
    RuntimeSignaled { signal: i32, stderr: String },
    /// The runtime ran past `--runtime-timeout` and was killed.
    #[error("runtime did not finish within {}s and was killed (--runtime-timeout){}", .timeout.as_secs(), stderr_suffix(.stderr))]
    RuntimeTimedOut {
        timeout: std::time::Duration,
        stderr: String,
    },
    #[error("grandchild pid read error {path}: {source}")]
    PidRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("grandchild pid parse error {path}: invalid pid '{content}'")]
    PidParse { path: PathBuf, content: String },
    #[error("runtime did not pass a terminal fd over the console socket")]
    NoConsole,
    #[error("container has no terminal")]
    NoTerminal,
    #[error("log reopen: {0}")]
    Reopen(String),
    #[error(transparent)]
    NoSuchSlot(#[from] fd_socket::NoSuchSlot),
    /// Lookup of an exec session the container does not have (any more).
    #[error("exec session '{session}' not found in container '{id}'")]
    NoSuchSession { id: String, session: String },
    #[error("exec session '{session}' already exists in container '{id}'")]
    SessionExists { id: String, session: String },
    /// A bounded resource is at its limit (attach clients, exec sessions,
    /// concurrent execSync calls); see README "Faults and limits".
    #[error("too many {what} for {scope}: limit {limit}")]
    TooMany {
        what: &'static str,
        scope: String,
        limit: usize,
    },
    /// A keeper record (issue 16) that cannot be resumed: `field` is the
    /// first missing or wrong one.
    #[error("keeper record field '{field}': {reason}")]
    BadRecord { field: &'static str, reason: String },
    /// A session call that its state does not allow.
    #[error("exec session '{session}' is {state}")]
    SessionState {
        session: String,
        state: &'static str,
    },
}

/// `: <stderr>` for an error message, or nothing when `stderr` is blank.
pub(crate) fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim_end();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl CoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The hyphenated version-4 UUID made of 16 random bytes.
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
