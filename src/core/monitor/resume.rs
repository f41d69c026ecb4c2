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
use crate::engine::journal::{Journal, Ledger, LedgerState, JOURNALED_STREAMS};
use crate::engine::{ContainerKey, SourceKind, StreamSource};
use crate::keeper::{HeldContainer, KeeperLink, MAX_FDS_PER_CONTAINER};
use crate::log::{LogEnd, LogWriter, StreamKind, TimestampCache};
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
    /// Its output, about to be registered with the engine: its pipes get
    /// their journals here when the container is held.
    pub sources: &'a mut [StreamSource],
    /// Its logs, just opened (their ends start the ledger).
    pub logs: &'a [LogWriter],
    pub stdin: &'a StdinTarget,
}

/// The held output journals of a resumed container and what its ledger
/// said when the worker that wrote it died.
struct Journaled {
    ledger: Arc<Ledger>,
    state: LedgerState,
    journals: Vec<Journal>,
}

fn journal_role(stream: usize) -> FdRole {
    if stream == 0 {
        FdRole::StdoutJournal
    } else {
        FdRole::StderrJournal
    }
}

fn stream_kind(stream: usize) -> StreamKind {
    if stream == 0 {
        StreamKind::Stdout
    } else {
        StreamKind::Stderr
    }
}

fn log_ends(logs: &[LogWriter]) -> Vec<LogEnd> {
    logs.iter().filter_map(LogWriter::file_end).collect()
}

/// Journal bytes `0..len` of `stream` are in `logs` now.
fn commit_logged(ledger: &Ledger, stream: usize, len: usize, logs: &[LogWriter]) {
    ledger.commit(stream, len, &log_ends(logs));
}

/// Gives each output pipe of a container about to be held a journal, all
/// sharing one ledger (see `engine::journal`), so that what leaves a pipe
/// reaches the logs exactly once even if this worker is killed. `None`
/// (and no journal anywhere) when a memory file cannot be made: the
/// container is held without (phase 1: a kill may lose a chunk).
fn journal_pipes(
    id: &str,
    sources: &mut [StreamSource],
    logs: &[LogWriter],
) -> Option<Arc<Ledger>> {
    let made = (|| -> io::Result<_> {
        let ledger = Arc::new(Ledger::create()?);
        let mut journals = Vec::with_capacity(sources.len());
        for (index, source) in sources.iter().enumerate() {
            if source.kind != SourceKind::Pipe {
                continue;
            }
            let stream = match source.stream {
                StreamKind::Stdout => 0,
                StreamKind::Stderr => 1,
            };
            journals.push((index, Journal::create(Arc::clone(&ledger), stream)?));
        }
        Ok((ledger, journals))
    })();
    let (ledger, journals) = match made {
        Ok(made) => made,
        Err(e) => {
            warn!(
                %id,
                "cannot make the output journal; a crash of this server may lose \
                 a chunk of the container's output: {e}"
            );
            return None;
        }
    };
    if journals.is_empty() {
        return None;
    }
    // A kill before the first commit cuts the logs back to here.
    ledger.set_ends(log_ends(logs));
    for (index, journal) in journals {
        sources[index].journal = Some(journal);
    }
    Some(ledger)
}

/// Opens the journals an earlier worker kept: the ledger in `ledger_fd`,
/// the journals (stdout, stderr) in `journal_fds`.
fn open_journals(
    ledger_fd: OwnedFd,
    journal_fds: [Option<OwnedFd>; JOURNALED_STREAMS],
) -> io::Result<Journaled> {
    let (ledger, state) = Ledger::open(ledger_fd)?;
    let ledger = Arc::new(ledger);
    let mut journals = Vec::with_capacity(JOURNALED_STREAMS);
    for (stream, fd) in journal_fds.into_iter().enumerate() {
        if let Some(fd) = fd {
            journals.push(Journal::open(fd, Arc::clone(&ledger), stream)?);
        }
    }
    Ok(Journaled {
        ledger,
        state,
        journals,
    })
}

/// Logs again what left a journaled pipe but, by the ledger, never
/// reached the logs (already cut back to the ledger's ends), then empties
/// the journals. Each stream's replay is a round of the journal protocol:
/// logged, committed with the logs' new ends, then consumed, so a kill in
/// the middle of it leaves a state the next resume handles the same way.
fn replay_journals(id: &str, journaled: &mut Journaled, logs: &mut [LogWriter]) -> io::Result<()> {
    let ts = TimestampCache::new();
    for journal in &mut journaled.journals {
        let stream = journal.stream();
        let pending = journal.pending(&journaled.state)?;
        if !pending.is_empty() {
            let kind = stream_kind(stream);
            for log in logs.iter_mut() {
                if let Err(e) = log
                    .write_chunk(kind, pending, &ts)
                    .and_then(|()| log.flush())
                {
                    warn!(%id, stream = kind.as_str(), "replayed output not logged there: {e}");
                }
            }
            info!(
                %id,
                stream = kind.as_str(),
                bytes = pending.len(),
                "logged the output a killed worker had taken but not logged"
            );
            let logged = journaled.state.committed[stream] as usize + pending.len();
            commit_logged(&journaled.ledger, stream, logged, logs);
        }
        journal.consumed()?;
    }
    journaled.ledger.set_ends(log_ends(logs));
    Ok(())
}

/// Removes the descriptor of `role` from `fds`.
fn take_fd(fds: &mut Vec<(FdRole, OwnedFd)>, role: FdRole) -> Option<OwnedFd> {
    let index = fds.iter().position(|(r, _)| *r == role)?;
    Some(fds.remove(index).1)
}

impl Monitor {
    /// From now on, every container this monitor creates is held by the
    /// keeper behind `link` (its stdio descriptors and what resuming it
    /// needs), and its exit is reported there before it is reaped.
    pub fn use_keeper(&self, link: Rc<KeeperLink>) {
        *self.keeper.borrow_mut() = Some(link);
    }

    /// Hands a container just created to the keeper, if there is one, with
    /// journals for its output pipes (put into `c.sources`). Returns where
    /// its exit comes from and, for a stdin pipe the keeper holds, what to
    /// do when a client closes it. A failed hold only costs the container
    /// its crash safety.
    pub(super) fn hold_created(
        self: &Rc<Self>,
        c: HoldCreated<'_>,
    ) -> (ExitSource, Option<StdinClosed>) {
        let Some(link) = self.keeper.borrow().clone() else {
            return (ExitSource::OwnChild, None);
        };
        let ledger = if c.req.terminal {
            None
        } else {
            journal_pipes(&c.req.id, c.sources, c.logs)
        };
        let mut roles = Vec::with_capacity(MAX_FDS_PER_CONTAINER);
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(MAX_FDS_PER_CONTAINER);
        for source in c.sources.iter() {
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
        for journal in c.sources.iter().filter_map(|s| s.journal.as_ref()) {
            roles.push(journal_role(journal.stream()));
            fds.push(journal.as_fd());
        }
        if let Some(ledger) = &ledger {
            roles.push(FdRole::Ledger);
            fds.push(ledger.as_fd());
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
                let outputs = record
                    .fds
                    .iter()
                    .zip(fds)
                    .filter(|(role, _)| **role != FdRole::Stdin)
                    .map(|(_, fd)| fd);
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
                // Nobody would read a journal after a crash: read the pipes.
                for source in c.sources.iter_mut() {
                    source.journal = None;
                }
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
        outputs: impl Iterator<Item = BorrowedFd<'a>>,
    ) -> Option<StdinClosed> {
        record.fd_index(FdRole::Stdin)?;
        let outputs = match outputs
            .map(|fd| fd.try_clone_to_owned())
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

    /// A resumed container whose journals cannot be used: the keeper holds
    /// it again without them (`fds`: what it keeps, in the order of
    /// `record` once the journals are out of it), so that a later resume
    /// does not cut the logs back to this stale ledger's ends.
    fn hold_without_journals(
        &self,
        link: &KeeperLink,
        record: &mut HeldRecord,
        fds: &[(FdRole, OwnedFd)],
    ) {
        record.fds.retain(|role| {
            !matches!(
                role,
                FdRole::StdoutJournal | FdRole::StderrJournal | FdRole::Ledger
            )
        });
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| fd.as_fd()).collect();
        if let Err(e) = link.hold(record.key, record.pid, &record.encode(), &fds) {
            warn!(
                id = %record.id,
                "the keeper still holds the container's stale output journal; a later \
                 resume may cut its logs back: {e}"
            );
        }
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
        let mut record = record;
        let mut held_fds: Vec<(FdRole, OwnedFd)> =
            record.fds.iter().copied().zip(held.fds).collect();
        let ledger_fd = take_fd(&mut held_fds, FdRole::Ledger);
        let journal_fds = [
            take_fd(&mut held_fds, FdRole::StdoutJournal),
            take_fd(&mut held_fds, FdRole::StderrJournal),
        ];
        let mut journaled = match ledger_fd.map(|fd| open_journals(fd, journal_fds)) {
            None => None,
            Some(Ok(journaled)) => Some(journaled),
            Some(Err(e)) => {
                warn!(
                    %id,
                    "cannot read the output journal; output the killed worker had not \
                     logged is lost: {e}"
                );
                self.hold_without_journals(link, &mut record, &held_fds);
                None
            }
        };
        let ends = journaled.as_ref().map_or(&[][..], |j| &j.state.ends[..]);
        let mut logs = Vec::with_capacity(record.logs.len());
        for spec in &record.logs {
            match LogWriter::open_resumed_at(spec, ends) {
                Ok((writer, cut)) => {
                    if cut > 0 {
                        info!(
                            %id,
                            path = %spec.path.display(),
                            cut,
                            journaled = journaled.is_some(),
                            "cut a resumed log back to its last logged record"
                        );
                    }
                    logs.push(writer);
                }
                Err(e) => warn!(%id, "resumed container's output is not logged there: {e}"),
            }
        }
        // Before the engine reads the pipes again: what they gave first
        // comes first in the logs.
        if let Some(j) = &mut journaled {
            if let Err(e) = replay_journals(&id, j, &mut logs) {
                warn!(%id, "cannot replay the output journal: {e}");
                j.ledger.invalidate();
                journaled = None;
                self.hold_without_journals(link, &mut record, &held_fds);
            }
        }
        let duplicate =
            |what| move |e| CoreError::io(format!("duplicate the pty master ({what})"), e);
        // In the order of the record (what the keeper holds).
        let outputs: Vec<BorrowedFd<'_>> = record
            .fds
            .iter()
            .filter_map(|role| match role {
                FdRole::Stdin => None,
                FdRole::Ledger => journaled.as_ref().map(|j| j.ledger.as_fd()),
                FdRole::StdoutJournal | FdRole::StderrJournal => journaled
                    .as_ref()?
                    .journals
                    .iter()
                    .find(|journal| journal_role(journal.stream()) == *role)
                    .map(|journal| journal.as_fd()),
                other => held_fds
                    .iter()
                    .find(|(r, _)| r == other)
                    .map(|(_, fd)| fd.as_fd()),
            })
            .collect();
        let stdin_closed = self.stdin_closed_hook(link, &record, outputs.into_iter());
        let mut journals = journaled.map_or_else(Vec::new, |j| j.journals);
        let mut terminal = None;
        let mut stdin_target = StdinTarget::None;
        let mut sources = Vec::with_capacity(2);
        for (role, fd) in held_fds {
            match role {
                FdRole::Stdout | FdRole::Stderr => {
                    let stream = if role == FdRole::Stdout { 0 } else { 1 };
                    let journal = journals
                        .iter()
                        .position(|j| j.stream() == stream)
                        .map(|index| journals.swap_remove(index));
                    sources.push(StreamSource {
                        fd,
                        stream: stream_kind(stream),
                        kind: SourceKind::Pipe,
                        journal,
                    });
                }
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
                // Taken out above.
                FdRole::StdoutJournal | FdRole::StderrJournal | FdRole::Ledger => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogFormat, LogSpec};
    use crate::test_support::TempDir;

    /// The stdout and stderr content of a CRI log.
    fn cri_streams(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut streams = (Vec::new(), Vec::new());
        for record in log.split_inclusive(|b| *b == b'\n') {
            let fields: Vec<&[u8]> = record.splitn(4, |b| *b == b' ').collect();
            let content = match fields[2] {
                b"F" => fields[3],
                _ => &fields[3][..fields[3].len() - 1],
            };
            match fields[1] {
                b"stdout" => streams.0.extend_from_slice(content),
                _ => streams.1.extend_from_slice(content),
            }
        }
        streams
    }

    fn copy(fd: &impl AsFd) -> OwnedFd {
        fd.as_fd().try_clone_to_owned().unwrap()
    }

    /// One worker logs a whole stdout round, a stderr round it commits but
    /// does not reset, and half of a stdout round it never commits, then
    /// dies: the next worker's resume cuts the log and logs every byte the
    /// pipes gave exactly once, and a resume right after it has nothing to
    /// cut or replay.
    #[test]
    fn a_resume_logs_what_a_killed_worker_took_exactly_once() {
        let dir = TempDir::new("resume", "journal");
        let spec = LogSpec::new(LogFormat::Cri, dir.path("ctr.log"), 0);
        let ledger = Arc::new(Ledger::create().unwrap());
        let mut out = Journal::create(Arc::clone(&ledger), 0).unwrap();
        let mut err = Journal::create(Arc::clone(&ledger), 1).unwrap();
        let mut logs = vec![LogWriter::open(&spec).unwrap()];
        ledger.set_ends(log_ends(&logs));
        let ts = TimestampCache::new();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();

        nix::unistd::write(&out_w, b"one\n").unwrap();
        let n = out.splice_from(out_r.as_fd()).unwrap();
        logs[0]
            .write_chunk(StreamKind::Stdout, out.bytes(n), &ts)
            .unwrap();
        logs[0].flush().unwrap();
        commit_logged(&ledger, 0, n, &logs);
        out.consumed().unwrap();

        nix::unistd::write(&err_w, b"err\n").unwrap();
        let n = err.splice_from(err_r.as_fd()).unwrap();
        logs[0]
            .write_chunk(StreamKind::Stderr, err.bytes(n), &ts)
            .unwrap();
        logs[0].flush().unwrap();
        commit_logged(&ledger, 1, n, &logs);

        nix::unistd::write(&out_w, b"two\nthree\n").unwrap();
        let n = out.splice_from(out_r.as_fd()).unwrap();
        logs[0]
            .write_chunk(StreamKind::Stdout, &out.bytes(n)[..5], &ts)
            .unwrap();
        logs[0].flush().unwrap();
        drop(logs);

        let resume = || {
            let journaled =
                open_journals(copy(&*ledger), [Some(copy(&out)), Some(copy(&err))]).unwrap();
            let (writer, cut) = LogWriter::open_resumed_at(&spec, &journaled.state.ends).unwrap();
            (journaled, vec![writer], cut)
        };
        let (mut journaled, mut logs, cut) = resume();
        assert!(cut > 0, "the uncommitted half round is cut");
        replay_journals("c", &mut journaled, &mut logs).unwrap();
        drop(logs);
        let log = std::fs::read(&spec.path).unwrap();
        assert_eq!(
            cri_streams(&log),
            (b"one\ntwo\nthree\n".to_vec(), b"err\n".to_vec())
        );

        let (journaled, _, cut) = resume();
        assert_eq!(cut, 0);
        assert_eq!(journaled.state.committed, [0, 0]);
        for journal in &journaled.journals {
            assert_eq!(journal.pending(&journaled.state).unwrap(), b"");
        }
    }
}
