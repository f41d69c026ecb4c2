//! Process set-up of the two server roles issue 16 adds: becoming the
//! keeper, and becoming a worker the keeper started. `main` dispatches
//! here; the server itself is unchanged.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;

use tracing::{error, warn};

use super::KEEPER_PROCESS_NAME;
use crate::cli::ServerConfig;
use crate::sys::process;

/// The server process's name: clients and the journald queries look for it.
pub const WORKER_PROCESS_NAME: &std::ffi::CStr = c"conmonrs";

/// Becomes the keeper, after the fork, the closing of inherited
/// descriptors and the subreaper step: names itself, starts the server's
/// logs, binds `conmon.sock` (kept for ever, handed to each worker) and
/// runs the keeper loop with `argv` for the workers. Returns the exit code.
pub fn become_keeper(config: &ServerConfig, socket_path: &Path, argv: Vec<OsString>) -> i32 {
    let _ = process::set_process_name(KEEPER_PROCESS_NAME);
    crate::server_log::init(config.log_driver, config.log_level);
    // It holds every container's descriptors. Workers get the original
    // soft limit back (spawn_current_exe), so that what they start still
    // gets the client's limit.
    if let Err(e) = crate::sys::limits::raise_nofile_limit() {
        warn!("keeper: raise the soft RLIMIT_NOFILE: {e}");
    }
    let listener = match crate::sys::socket::bind_stream(socket_path) {
        Ok(l) => OwnedFd::from(l),
        Err(e) => {
            error!("bind {}: {e}", socket_path.display());
            eprintln!("Error: bind {}: {e}", socket_path.display());
            return 1;
        }
    };
    super::run::run(listener, argv)
}

/// Process set-up of a worker the keeper started (no fork: the keeper is
/// the pidfile's process): a subreaper like the single-process server, named
/// like it, and killed with the keeper.
pub fn become_worker() -> std::io::Result<()> {
    process::set_child_subreaper()?;
    process::kill_with_parent()?;
    let _ = process::set_process_name(WORKER_PROCESS_NAME);
    Ok(())
}
