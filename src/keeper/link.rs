//! The worker's end of the keeper link. Lives on the control thread.
//!
//! Sends are blocking with a short send timeout: the keeper reads its link
//! all the time, so a send only waits if the keeper is wedged, and then the
//! worker goes on without it (the container is then not crash-safe, which
//! is logged).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::rc::Rc;

use super::KeeperError;
use crate::sys::process::Exit;

/// A container an earlier worker handed to the keeper, now handed to this
/// worker to resume.
#[derive(Debug)]
pub struct HeldContainer {
    pub key: u64,
    /// The container's process. After a handover it is the keeper's child,
    /// not ours: its exit arrives through [`KeeperLink::wait_reaped`].
    pub pid: u32,
    /// Its exit, if it was seen before this worker started.
    pub exit: Option<Exit>,
    /// What the earlier worker stored ([`KeeperLink::hold`]); opaque to the
    /// keeper.
    pub record: Vec<u8>,
    /// The descriptors, in the order they were held.
    pub fds: Vec<OwnedFd>,
}

/// What a worker started by a keeper inherits.
#[derive(Debug)]
pub struct WorkerHandover {
    /// The `conmon.sock` listener the keeper bound (a listening
    /// SOCK_STREAM socket; clients connected while no worker ran wait in
    /// its backlog).
    pub listener: OwnedFd,
    /// Containers earlier workers held (empty for the first worker).
    pub held: Vec<HeldContainer>,
}

/// The worker's end of the keeper link.
#[derive(Debug)]
pub struct KeeperLink {
    fd: OwnedFd,
}

impl KeeperLink {
    /// In a worker started by a keeper (the environment names the link and
    /// the listener): takes both descriptors, clears the variables, and
    /// reads the handover (blocking, bounded by a timeout) before anything
    /// else runs. `Ok(None)`: not started by a keeper.
    pub fn from_env() -> Result<Option<(Rc<KeeperLink>, WorkerHandover)>, KeeperError> {
        todo!("helper A")
    }

    /// Hands the keeper duplicates of `fds` (at most
    /// `MAX_FDS_PER_CONTAINER`) and `record` (at most `MAX_RECORD_BYTES`)
    /// for container `key` whose process is `pid`.
    pub fn hold(
        &self,
        key: u64,
        pid: u32,
        record: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), KeeperError> {
        let _ = (key, pid, record, fds, &self.fd);
        todo!("helper A")
    }

    /// Tells the keeper that `key`'s process exited with `exit` (seen, not
    /// reaped yet).
    pub fn exited(&self, key: u64, exit: Exit) -> Result<(), KeeperError> {
        let _ = (key, exit);
        todo!("helper A")
    }

    /// `key`'s exit handling is over: the keeper closes its copies.
    pub fn release(&self, key: u64) -> Result<(), KeeperError> {
        let _ = key;
        todo!("helper A")
    }

    /// A clean shutdown follows: the keeper exits when this worker does.
    pub fn stopping(&self) {
        todo!("helper A")
    }

    /// Resolves with the exit of `pid` (a resumed container, the keeper's
    /// child) once the keeper reaped it; at once if it already did.
    pub async fn wait_reaped(&self, pid: u32) -> Exit {
        let _ = pid;
        todo!("helper A")
    }

    /// Reads the keeper's messages until the link closes; must run on the
    /// control thread's `LocalSet` for [`KeeperLink::wait_reaped`] to
    /// resolve. A closed link means the keeper is gone: the worker then
    /// shuts down (it was killed with the keeper anyway: PDEATHSIG).
    pub async fn serve(self: Rc<Self>) {
        todo!("helper A")
    }
}
