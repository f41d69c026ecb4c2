//! Crash survival (issue 16): what the monitor hands the keeper, and how a
//! new worker resumes the containers an earlier one held.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::held::{FdRole, HeldRecord};
use super::{wait_exit, wait_exit_peeking, Child, ExitPolicy, Monitor};
use crate::core::attach::{Attach, StdinClosed, StdinTarget};
use crate::core::oom::OomWatcher;
use crate::core::{CoreError, CreateContainer};
use crate::engine::{ContainerKey, SourceKind, StreamSource};
use crate::keeper::{HeldContainer, KeeperLink};
use crate::log::{LogWriter, StreamKind};
use crate::sys::process::Exit;

/// Where a watched container's exit comes from.
pub(super) enum ExitSource {
    /// Our child, not held: reaped here (no keeper, or the hold failed).
    OwnChild,
    /// Our child, held by the keeper: its exit is peeked, reported to the
    /// keeper, then reaped here.
    HeldChild(Rc<KeeperLink>),
    /// A resumed container (the keeper's child): the keeper reaps it; its
    /// exit is known already or arrives through the link.
    Keeper {
        link: Rc<KeeperLink>,
        exit: Option<Exit>,
    },
}

impl ExitSource {
    /// The exit of container `key`, process `pid`.
    pub(super) async fn wait(&self, key: ContainerKey, pid: u32) -> io::Result<Exit> {
        match self {
            ExitSource::OwnChild => wait_exit(pid).await,
            ExitSource::HeldChild(link) => {
                wait_exit_peeking(pid, |exit| match link.exited(key, exit) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(key, pid, "cannot report the exit to the keeper: {e}");
                        false
                    }
                })
                .await
            }
            ExitSource::Keeper {
                exit: Some(exit), ..
            } => Ok(*exit),
            ExitSource::Keeper { link, exit: None } => Ok(link.wait_reaped(pid).await),
        }
    }

    /// Exit handling of `key` is over: the keeper closes what it holds.
    pub(super) fn release(&self, key: ContainerKey) {
        let link = match self {
            ExitSource::OwnChild => return,
            ExitSource::HeldChild(link) | ExitSource::Keeper { link, .. } => link,
        };
        if let Err(e) = link.release(key) {
            warn!(key, "cannot release the container at the keeper: {e}");
        }
    }
}

/// A container just created, for [`Monitor::hold_created`].
pub(super) struct HoldCreated<'a> {
    pub req: &'a CreateContainer,
    pub key: ContainerKey,
    pub pid: u32,
    pub stdin_once: bool,
    pub created: SystemTime,
    /// Its output, about to be registered with the engine.
    pub sources: &'a [StreamSource],
    pub stdin: &'a StdinTarget,
}

impl Monitor {
    /// From now on, every container this monitor creates is held by the
    /// keeper behind `link` (its stdio descriptors and what resuming it
    /// needs), and its exit is reported there before it is reaped.
    pub fn use_keeper(&self, link: Rc<KeeperLink>) {
        *self.keeper.borrow_mut() = Some(link);
    }

    /// Hands a container just created to the keeper, if there is one.
    /// Returns where its exit comes from and, for a stdin pipe the keeper
    /// holds, what to do when a client closes it. A failed hold only costs
    /// the container its crash safety.
    pub(super) fn hold_created(
        self: &Rc<Self>,
        c: HoldCreated<'_>,
    ) -> (ExitSource, Option<StdinClosed>) {
        let Some(link) = self.keeper.borrow().clone() else {
            return (ExitSource::OwnChild, None);
        };
        let mut roles = Vec::with_capacity(3);
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(3);
        for source in c.sources {
            roles.push(match (source.kind, source.stream) {
                (SourceKind::Pty, _) => FdRole::Pty,
                (SourceKind::Pipe, StreamKind::Stdout) => FdRole::Stdout,
                (SourceKind::Pipe, StreamKind::Stderr) => FdRole::Stderr,
            });
            fds.push(source.fd.as_fd());
        }
        if let StdinTarget::Pipe(stdin) = c.stdin {
            roles.push(FdRole::Stdin);
            fds.push(stdin.as_fd());
        }
        let record = HeldRecord {
            id: c.req.id.clone(),
            key: c.key,
            pid: c.pid,
            terminal: c.req.terminal,
            stdin: c.req.stdin,
            stdin_once: c.stdin_once,
            logs: c.req.logs.clone(),
            exit_paths: c.req.exit_paths.clone(),
            oom_exit_paths: c.req.oom_exit_paths.clone(),
            cleanup_cmd: c.req.cleanup_cmd.clone(),
            sync_logs: c.req.sync_logs,
            created: c
                .created
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            fds: roles,
        };
        match link.hold(c.key, c.pid, &record.encode(), &fds) {
            Ok(()) => {
                let outputs = c.sources.iter().map(|s| &s.fd);
                let closed = self.stdin_closed_hook(&link, &record, outputs);
                (ExitSource::HeldChild(link), closed)
            }
            Err(e) => {
                warn!(
                    id = %c.req.id,
                    pid = c.pid,
                    "the keeper does not hold the container, so it will not survive \
                     a crash of this server: {e}"
                );
                (ExitSource::OwnChild, None)
            }
        }
    }

    /// For a container whose stdin pipe the keeper holds: the hook that
    /// holds it again without stdin once a client closed stdin (the
    /// keeper's copy would keep the container from ever seeing EOF). The
    /// keeper replaces what it holds for the key, so it needs duplicates of
    /// the output descriptors, taken now. `None`: no stdin pipe held.
    fn stdin_closed_hook<'a>(
        self: &Rc<Self>,
        link: &Rc<KeeperLink>,
        record: &HeldRecord,
        outputs: impl Iterator<Item = &'a OwnedFd>,
    ) -> Option<StdinClosed> {
        record.fd_index(FdRole::Stdin)?;
        let outputs = match outputs
            .map(OwnedFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(fds) => fds,
            Err(e) => {
                warn!(
                    id = %record.id,
                    "cannot duplicate the output descriptors; the keeper keeps stdin \
                     open after a client closes it: {e}"
                );
                return None;
            }
        };
        let mut record = record.clone();
        record.fds.retain(|r| *r != FdRole::Stdin);
        let monitor = Rc::downgrade(self);
        let link = Rc::clone(link);
        Some(Box::new(move || {
            let Some(monitor) = monitor.upgrade() else {
                return;
            };
            // Exit handling is over and the keeper released it: holding
            // again would leave it held for ever.
            let listed = monitor
                .state
                .borrow()
                .children
                .values()
                .flatten()
                .any(|c| c.key == record.key);
            if !listed {
                return;
            }
            let fds: Vec<BorrowedFd<'_>> = outputs.iter().map(|f| f.as_fd()).collect();
            if let Err(e) = link.hold(record.key, record.pid, &record.encode(), &fds) {
                warn!(
                    id = %record.id,
                    "the keeper keeps the container's stdin open after a client closed it: {e}"
                );
            }
        }))
    }

    /// Resumes containers an earlier worker held: logging, attach, exit
    /// handling. Called once, before the RPC socket is served.
    pub fn resume(self: &Rc<Self>, held: Vec<HeldContainer>) {
        let Some(link) = self.keeper.borrow().clone() else {
            if !held.is_empty() {
                warn!(
                    count = held.len(),
                    "held containers but no keeper link; not resumed"
                );
            }
            return;
        };
        // New keys never collide with a held one, resumed or not.
        if let Some(max) = held.iter().map(|h| h.key).max() {
            if max >= self.next_key.get() {
                self.next_key.set(max + 1);
            }
        }
        for container in held {
            let (key, pid) = (container.key, container.pid);
            if let Err(e) = self.resume_one(&link, container) {
                warn!(
                    key,
                    pid, "cannot resume a held container; the keeper drops it: {e}"
                );
                if let Err(e) = link.release(key) {
                    warn!(key, "cannot release the container at the keeper: {e}");
                }
            }
        }
    }

    fn resume_one(
        self: &Rc<Self>,
        link: &Rc<KeeperLink>,
        held: HeldContainer,
    ) -> Result<(), CoreError> {
        let record = HeldRecord::decode(&held.record)?;
        let mismatch = |field, recorded: u64, held: u64| CoreError::BadRecord {
            field,
            reason: format!("{recorded}, but the keeper holds it as {held}"),
        };
        if record.key != held.key {
            return Err(mismatch("key", record.key, held.key));
        }
        if record.pid != held.pid {
            return Err(mismatch("pid", record.pid.into(), held.pid.into()));
        }
        if record.fds.len() != held.fds.len() {
            return Err(mismatch(
                "fds",
                record.fds.len() as u64,
                held.fds.len() as u64,
            ));
        }
        let HeldRecord { id, key, pid, .. } = record.clone();
        let duplicate =
            |what| move |e| CoreError::io(format!("duplicate the pty master ({what})"), e);
        let outputs = record
            .fds
            .iter()
            .zip(&held.fds)
            .filter(|(role, _)| **role != FdRole::Stdin)
            .map(|(_, fd)| fd);
        let stdin_closed = self.stdin_closed_hook(link, &record, outputs);
        let mut terminal = None;
        let mut stdin_target = StdinTarget::None;
        let mut sources = Vec::with_capacity(2);
        for (role, fd) in record.fds.iter().zip(held.fds) {
            match role {
                FdRole::Stdout | FdRole::Stderr => sources.push(StreamSource {
                    fd,
                    stream: if *role == FdRole::Stdout {
                        StreamKind::Stdout
                    } else {
                        StreamKind::Stderr
                    },
                    kind: SourceKind::Pipe,
                    journal: None,
                }),
                FdRole::Pty => {
                    terminal = Some(fd.try_clone().map_err(duplicate("resize"))?);
                    if record.stdin {
                        stdin_target =
                            StdinTarget::Pty(fd.try_clone().map_err(duplicate("stdin"))?);
                    }
                    sources.push(StreamSource {
                        fd,
                        stream: StreamKind::Stdout,
                        kind: SourceKind::Pty,
                        journal: None,
                    });
                }
                FdRole::Stdin => stdin_target = StdinTarget::Pipe(fd),
            }
        }
        let mut logs = Vec::with_capacity(record.logs.len());
        for spec in &record.logs {
            match LogWriter::open_resumed(spec) {
                Ok((writer, cut)) => {
                    if cut > 0 {
                        info!(
                            %id,
                            path = %spec.path.display(),
                            cut,
                            "cut the torn last record off a resumed log"
                        );
                    }
                    logs.push(writer);
                }
                Err(e) => warn!(%id, "resumed container's output is not logged there: {e}"),
            }
        }
        let (drained_rx, counters) = match self.register_output(key, sources, logs) {
            Ok(registered) => registered,
            Err(e) => {
                // Its exit is still handled (exit files), without waiting
                // for a drain that cannot come (a dropped sender ends that
                // wait at once).
                warn!(%id, "the resumed container's output is not read: {e}");
                (
                    oneshot::channel().1,
                    Arc::new(crate::engine::counters::ContainerCounters::default()),
                )
            }
        };
        let oom = match held.exit {
            Some(_) => None,
            None => OomWatcher::start(pid).unwrap_or_else(|e| {
                warn!(%id, "OOM watching unavailable: {e}");
                None
            }),
        };
        {
            let mut st = self.state.borrow_mut();
            st.tracked.insert(pid);
            st.children.entry(id.clone()).or_default().push(Child {
                key,
                pid,
                terminal,
                attach: Attach::with_stdin_closed(key, stdin_target, stdin_closed),
                stdin_once: record.stdin_once,
                // leakFds were the earlier worker's; they closed with it.
                _leaked: Vec::new(),
                forced_exit_code: None,
                created: UNIX_EPOCH + Duration::from_secs(record.created),
                logs: record
                    .logs
                    .iter()
                    .map(|l| (l.format, l.path.clone()))
                    .collect(),
                counters,
            });
            st.exited.forget(&id);
        }
        let policy = ExitPolicy {
            id: id.clone(),
            key,
            pid,
            exit_paths: record.exit_paths,
            oom_exit_paths: record.oom_exit_paths,
            cleanup_cmd: record.cleanup_cmd,
            sync_logs: record.sync_logs,
            trace: None,
        };
        let source = ExitSource::Keeper {
            link: Rc::clone(link),
            exit: held.exit,
        };
        let watcher =
            tokio::task::spawn_local(Rc::clone(self).watch(policy, source, drained_rx, oom));
        let mut st = self.state.borrow_mut();
        st.watchers.retain(|h| !h.is_finished());
        st.watchers.push(watcher);
        info!(%id, pid, "container resumed");
        Ok(())
    }
}
