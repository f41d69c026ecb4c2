//! The worker's end of the keeper link. Lives on the control thread.
//!
//! Sends are blocking with a short send timeout: the keeper reads its link
//! all the time, so a send only waits if the keeper is wedged, and then the
//! worker goes on without it (the container is then not crash-safe, which
//! is logged).

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use tracing::{error, warn};

use super::proto::{ToKeeper, ToWorker};
use super::{
    KeeperError, LINK_FD_ENV, LISTENER_FD_ENV, MAX_FDS_PER_CONTAINER, MAX_HELD_CONTAINERS,
    MAX_PACKET_BYTES, MAX_RECORD_BYTES,
};
use crate::sys::process::Exit;
use crate::sys::socket;

/// How long one send to the keeper may wait for room (see the module
/// docs).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the handover may pause between two packets: the keeper sends
/// it right after starting us.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Blocking, with a send timeout: sends come from the control thread.
    /// [`KeeperLink::serve`] reads a duplicate with MSG_DONTWAIT.
    fd: OwnedFd,
    /// Exits the keeper reported, by pid, until someone takes them (at
    /// most [`MAX_HELD_CONTAINERS`]).
    reaped: RefCell<HashMap<u32, Exit>>,
    /// Woken on every report.
    reaped_notify: tokio::sync::Notify,
    /// The keeper's pid (our parent, the pidfile's process).
    keeper_pid: u32,
}

impl KeeperLink {
    /// In a worker started by a keeper (the environment names the link and
    /// the listener): takes both descriptors, clears the variables, and
    /// reads the handover (blocking, bounded by a timeout) before anything
    /// else runs. `Ok(None)`: not started by a keeper.
    ///
    /// Must run while the process has one thread and before it opens
    /// descriptors of its own: every other inherited descriptor above
    /// stderr is closed.
    pub fn from_env() -> Result<Option<(Rc<KeeperLink>, WorkerHandover)>, KeeperError> {
        let link_value = std::env::var_os(LINK_FD_ENV);
        let listener_value = std::env::var_os(LISTENER_FD_ENV);
        if link_value.is_none() && listener_value.is_none() {
            return Ok(None);
        }
        // The handover brings every held container's descriptors; the
        // original limit is remembered for what this worker starts.
        if let Err(e) = crate::sys::limits::raise_nofile_limit() {
            warn!("raise the soft RLIMIT_NOFILE: {e}");
        }
        // Nothing this worker starts (runtimes, pause, exec'd tools) must
        // see them.
        crate::sys::process::remove_env_var(LINK_FD_ENV);
        crate::sys::process::remove_env_var(LISTENER_FD_ENV);
        let link_fd = parse_fd(LINK_FD_ENV, link_value)?;
        let listener_fd = parse_fd(LISTENER_FD_ENV, listener_value)?;
        let mut inherited = crate::sys::fd::take_inherited_fds(&[link_fd, listener_fd])
            .map_err(|e| KeeperError::io("take the keeper's descriptors", e))?;
        // Anything else inherited is not ours (the keeper passes only these
        // two): closed here.
        drop(std::mem::take(&mut inherited.others));
        let mut named = inherited.named.into_iter();
        let missing = |name: &'static str, fd: RawFd| KeeperError::BadEnv {
            name,
            value: format!("{fd} (not an open descriptor)"),
        };
        let fd = named
            .next()
            .flatten()
            .ok_or_else(|| missing(LINK_FD_ENV, link_fd))?;
        let listener = named
            .next()
            .flatten()
            .ok_or_else(|| missing(LISTENER_FD_ENV, listener_fd))?;
        let link = KeeperLink {
            fd,
            reaped: RefCell::new(HashMap::new()),
            reaped_notify: tokio::sync::Notify::new(),
            keeper_pid: crate::sys::process::parent_pid(),
        };
        let held = link.read_handover()?;
        socket::set_send_timeout(link.fd.as_fd(), SEND_TIMEOUT)
            .map_err(|e| KeeperError::io("set the keeper link's send timeout", e))?;
        Ok(Some((Rc::new(link), WorkerHandover { listener, held })))
    }

    /// The keeper's pid: the server's pid as clients know it (the pidfile
    /// names it; `version` reports it).
    pub fn keeper_pid(&self) -> u32 {
        self.keeper_pid
    }

    /// Reads Resume packets until HandoverDone.
    fn read_handover(&self) -> Result<Vec<HeldContainer>, KeeperError> {
        socket::set_receive_timeout(self.fd.as_fd(), HANDOVER_TIMEOUT)
            .map_err(|e| KeeperError::io("set the keeper link's receive timeout", e))?;
        let mut held = Vec::new();
        loop {
            let packet = socket::recv_with_fds_blocking(&self.fd, MAX_PACKET_BYTES)
                .map_err(|e| KeeperError::io("read the keeper's handover", e))?;
            if packet.len == 0 && packet.fds.is_empty() {
                return Err(KeeperError::Closed);
            }
            if packet.len > MAX_PACKET_BYTES {
                return Err(KeeperError::TooLarge {
                    what: "a handover packet",
                    value: packet.len,
                    limit: MAX_PACKET_BYTES,
                });
            }
            match ToWorker::decode(&packet.payload)? {
                ToWorker::Resume {
                    key,
                    pid,
                    exit,
                    record,
                } => {
                    if packet.fds_truncated {
                        // Some of its descriptors are missing: it cannot be
                        // resumed. It is not released either: the keeper
                        // keeps it for a next worker.
                        error!(
                            key,
                            pid,
                            fds = packet.fds.len(),
                            "keeper link: container handed over without all its descriptors, not resumed"
                        );
                        continue;
                    }
                    if held.len() >= MAX_HELD_CONTAINERS {
                        return Err(KeeperError::TooLarge {
                            what: "the number of handed-over containers",
                            value: held.len() + 1,
                            limit: MAX_HELD_CONTAINERS,
                        });
                    }
                    held.push(HeldContainer {
                        key,
                        pid,
                        exit,
                        record,
                        fds: packet.fds,
                    });
                }
                ToWorker::HandoverDone => break,
                ToWorker::Reaped { pid, exit } => self.note_reaped(pid, exit),
            }
        }
        socket::set_receive_timeout(self.fd.as_fd(), Duration::ZERO)
            .map_err(|e| KeeperError::io("clear the keeper link's receive timeout", e))?;
        Ok(held)
    }

    fn send(&self, message: &ToKeeper, fds: &[BorrowedFd<'_>]) -> Result<(), KeeperError> {
        socket::send_with_fds_blocking(self.fd.as_fd(), &message.encode(), fds)
            .map_err(|e| KeeperError::io("send to the keeper", e))
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
        if fds.len() > MAX_FDS_PER_CONTAINER {
            return Err(KeeperError::TooLarge {
                what: "the number of descriptors to hold",
                value: fds.len(),
                limit: MAX_FDS_PER_CONTAINER,
            });
        }
        if record.len() > MAX_RECORD_BYTES {
            return Err(KeeperError::TooLarge {
                what: "the record's size",
                value: record.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        self.send(
            &ToKeeper::Hold {
                key,
                pid,
                record: record.to_vec(),
            },
            fds,
        )
    }

    /// Tells the keeper that `key`'s process exited with `exit` (seen, not
    /// reaped yet).
    pub fn exited(&self, key: u64, exit: Exit) -> Result<(), KeeperError> {
        self.send(&ToKeeper::Exited { key, exit }, &[])
    }

    /// `key`'s exit handling is over: the keeper closes its copies.
    pub fn release(&self, key: u64) -> Result<(), KeeperError> {
        self.send(&ToKeeper::Release { key }, &[])
    }

    /// A clean shutdown follows: the keeper exits when this worker does.
    pub fn stopping(&self) {
        if let Err(e) = self.send(&ToKeeper::Stopping, &[]) {
            warn!("tell the keeper about the shutdown: {e}");
        }
    }

    /// Resolves with the exit of `pid` (a resumed container, the keeper's
    /// child) once the keeper reaped it; at once if it already did. One
    /// waiter per pid: the exit is handed out once.
    pub async fn wait_reaped(&self, pid: u32) -> Exit {
        loop {
            // Single-threaded: nothing can report between this check and
            // the creation of `notified`, which sees every later report.
            let notified = self.reaped_notify.notified();
            if let Some(exit) = self.reaped.borrow_mut().remove(&pid) {
                return exit;
            }
            notified.await;
        }
    }

    fn note_reaped(&self, pid: u32, exit: Exit) {
        let mut reaped = self.reaped.borrow_mut();
        if reaped.len() >= MAX_HELD_CONTAINERS && !reaped.contains_key(&pid) {
            warn!(
                pid,
                limit = MAX_HELD_CONTAINERS,
                "dropped an exit from the keeper: too many nobody waits for"
            );
            return;
        }
        reaped.insert(pid, exit);
        drop(reaped);
        self.reaped_notify.notify_waiters();
    }

    /// Reads the keeper's messages until the link closes; must run on the
    /// control thread's `LocalSet` for [`KeeperLink::wait_reaped`] to
    /// resolve. A closed link means the keeper is gone: the worker then
    /// shuts down (it was killed with the keeper anyway: PDEATHSIG).
    pub async fn serve(self: Rc<Self>) {
        let why = match self.read_until_closed().await {
            Ok(()) => "the keeper closed the link".to_string(),
            Err(e) => e.to_string(),
        };
        error!("keeper link lost ({why}): shutting down");
        if let Err(e) = crate::sys::process::send_signal(std::process::id(), libc::SIGTERM) {
            error!("raise SIGTERM: {e}");
        }
    }

    async fn read_until_closed(&self) -> Result<(), KeeperError> {
        let dup = self
            .fd
            .try_clone()
            .map_err(|e| KeeperError::io("duplicate the keeper link", e))?;
        // The description stays blocking (for the sends); reads use
        // MSG_DONTWAIT, which is all the reactor needs.
        let fd = crate::sys::reactor::async_fd(dup, tokio::io::Interest::READABLE)
            .map_err(|e| KeeperError::io("register the keeper link", e))?;
        loop {
            let mut guard = fd
                .readable()
                .await
                .map_err(|e| KeeperError::io("wait on the keeper link", e))?;
            loop {
                let packet = match socket::recv_with_fds(fd.get_ref(), MAX_PACKET_BYTES) {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => return Err(KeeperError::io("read the keeper link", e)),
                };
                if packet.len == 0 && packet.fds.is_empty() {
                    return Ok(());
                }
                match ToWorker::decode(&packet.payload) {
                    Ok(ToWorker::Reaped { pid, exit }) => self.note_reaped(pid, exit),
                    Ok(other) => warn!("keeper link: ignored {other:?} after the handover"),
                    Err(e) => warn!("keeper link: ignored a packet: {e}"),
                }
            }
        }
    }
}

fn parse_fd(name: &'static str, value: Option<std::ffi::OsString>) -> Result<RawFd, KeeperError> {
    let value = value.unwrap_or_default();
    value
        .to_str()
        .and_then(|v| v.parse::<RawFd>().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| KeeperError::BadEnv {
            name,
            value: value.to_string_lossy().into_owned(),
        })
}
