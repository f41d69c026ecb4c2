//! Long-running exec sessions (ringmon's schema extension for podman's
//! `exec -it`, `exec -d` and exec attach; spec §9.3): the validated request
//! and the state a client can query. The lifecycle itself lives with the
//! rest of the registry in `monitor::exec_sessions`.

use std::path::PathBuf;
use std::time::Duration;

use super::CgroupManager;
use crate::log::LogSpec;

/// Ended sessions whose exit code a container keeps for `execSessionStatus`;
/// beyond that the oldest ended one is forgotten (its exit files remain).
pub const ENDED_SESSIONS_KEPT: usize = 128;

/// Most exec sessions the server holds that have not ended (created,
/// suspended or running), over all containers: each holds an engine
/// registration, pipes or a pty, and a watcher. Past it
/// `createExecSession` fails; ended ones do not count (they are bounded per
/// container by [`ENDED_SESSIONS_KEPT`]).
pub const MAX_EXEC_SESSIONS: usize = 1024;

/// What a session runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecProcess {
    /// An argv.
    Command(Vec<String>),
    /// An OCI process JSON file (`runtime exec --process`).
    Spec(PathBuf),
}

/// A validated `createExecSession` request.
#[derive(Clone, Debug)]
pub struct CreateExecSession {
    /// The container, which must be monitored here.
    pub id: String,
    /// Unique within the container; empty: the server picks a UUID.
    pub session_id: String,
    pub process: ExecProcess,
    pub terminal: bool,
    pub stdin: bool,
    /// Added to the runtime's environment.
    pub env: Vec<(String, String)>,
    /// Added to the process's environment (`--env`).
    pub process_env: Vec<(String, String)>,
    pub cgroup_manager: CgroupManager,
    pub exit_paths: Vec<PathBuf>,
    pub cleanup_cmd: Vec<String>,
    pub cleanup_delay: Duration,
    pub logs: Vec<LogSpec>,
    /// fd-socket slots whose fds become fd 3, 4, ... of the process.
    pub additional_fds: Vec<u64>,
    /// Create only; `startExecSession` runs it.
    pub suspended: bool,
    /// Runtime arguments before `exec` (conmon mode's `--runtime-arg`s).
    pub global_args: Vec<String>,
    /// Options of `runtime exec` after ringmon's own (conmon mode's
    /// `--runtime-opt`s).
    pub runtime_opts: Vec<String>,
    /// The runtime's `--pid-file` (kept afterwards); `None`: a file of
    /// ringmon's own in the runtime dir, removed once read.
    pub pid_file: Option<PathBuf>,
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Created suspended, not started yet.
    Created,
    Running {
        pid: u32,
    },
    /// Its output drained and its exit files are written.
    Exited {
        pid: u32,
        exit_code: i32,
    },
}

impl SessionState {
    pub fn pid(self) -> u32 {
        match self {
            SessionState::Created => 0,
            SessionState::Running { pid } | SessionState::Exited { pid, .. } => pid,
        }
    }

    pub fn has_exited(self) -> bool {
        matches!(self, SessionState::Exited { .. })
    }
}

/// Checks a session id: it names the session in errors and logs, so it is
/// printable; the server never builds paths from it.
pub fn check_session_id(id: &str) -> Result<(), &'static str> {
    if id.len() > 256 {
        return Err("must be at most 256 bytes");
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert!(check_session_id("").is_ok());
        assert!(check_session_id("3f1c0a-podman-exec").is_ok());
        assert!(check_session_id("a\nb").is_err());
        assert!(check_session_id(&"x".repeat(257)).is_err());
    }

    #[test]
    fn state_pids() {
        assert_eq!(SessionState::Created.pid(), 0);
        assert_eq!(SessionState::Running { pid: 7 }.pid(), 7);
        let exited = SessionState::Exited {
            pid: 7,
            exit_code: 3,
        };
        assert_eq!(exited.pid(), 7);
        assert!(exited.has_exited() && !SessionState::Running { pid: 7 }.has_exited());
    }
}
