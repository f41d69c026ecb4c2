//! The keeper's loop (see the module docs of `crate::keeper`).

use std::ffi::OsString;
use std::os::fd::OwnedFd;

/// Becomes the keeper: starts a worker (this binary, `worker_argv`, with the
/// link and `listener` inherited), holds what workers hand it, reaps
/// children, restarts a worker that died without announcing a clean
/// shutdown, and forwards SIGTERM and SIGINT to the worker. Returns the
/// process's exit code once a worker shut down cleanly.
pub fn run(listener: OwnedFd, worker_argv: Vec<OsString>) -> i32 {
    let _ = (listener, worker_argv);
    todo!("helper A")
}
