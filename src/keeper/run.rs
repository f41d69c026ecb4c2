//! The keeper's loop (see the module docs of `crate::keeper`).
//!
//! One thread, no runtime: `poll` on the signalfd and the current worker's
//! link, with a timeout only while a restart is being delayed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{error, info, warn};

use super::proto::{ToKeeper, ToWorker};
use super::{
    KeeperError, LINK_FD_ENV, LISTENER_FD_ENV, MAX_FDS_PER_CONTAINER, MAX_HELD_CONTAINERS,
    MAX_PACKET_BYTES, MAX_RECORD_BYTES,
};
use crate::sys::process::{self, Exit, SignalReader};
use crate::sys::socket;

/// A worker that keeps dying sooner than this after its start is restarted
/// with a growing delay (a build that cannot start must not spin the
/// keeper). One that served longer is restarted at once, however often it
/// is killed: the containers wait on full pipes meanwhile.
const QUICK_DEATH: Duration = Duration::from_secs(1);
/// The delay after the second quick death in a row; it doubles after each
/// further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between two starts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one send to a worker may wait for room: the worker reads its
/// link all the time, so only a wedged worker makes it wait.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one handover send may wait: a new worker reads the handover
/// right after exec, which may take a while on a loaded machine.
const HANDOVER_SEND_TIMEOUT: Duration = Duration::from_secs(10);

const SIGCHLD: i32 = libc::SIGCHLD;
const SIGTERM: i32 = libc::SIGTERM;
const SIGINT: i32 = libc::SIGINT;

/// What the keeper holds for one container.
struct Held {
    pid: u32,
    exit: Option<Exit>,
    /// Whether the current worker knows `exit`: false for an exit the
    /// keeper reaped and could not send yet (retried when the link has
    /// room; a handover carries it anyway).
    exit_reported: bool,
    record: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// The running worker.
struct Worker {
    pid: u32,
    /// `None` once the worker closed its end.
    link: Option<OwnedFd>,
    started: Instant,
}

struct Keeper {
    listener: OwnedFd,
    argv: Vec<OsString>,
    held: BTreeMap<u64, Held>,
    worker: Option<Worker>,
    /// The worker announced a clean shutdown, or we forwarded SIGTERM or
    /// SIGINT to it: its exit ends the keeper.
    stopping: bool,
    /// Deaths in a row, each sooner than [`QUICK_DEATH`] after the start.
    quick_deaths: u32,
    /// When the next worker is due (while no worker runs).
    restart_at: Option<Instant>,
    /// SIGTERM or SIGINT that came while no worker ran but containers were
    /// held: the next worker is started at once and gets it (only a worker
    /// can stop the containers' monitoring cleanly).
    pending_signal: Option<i32>,
    /// One packet's payload, reused.
    buffer: Vec<u8>,
    /// When to shed memory again (see [`shed_memory`]): set by activity
    /// (a message, a signal), so that code pages a container's exit or a
    /// release touched leave the resident set once things are quiet.
    shed_at: Option<Instant>,
}

/// Quiet time after activity before the keeper sheds memory again.
const SHED_AFTER: Duration = Duration::from_secs(5);

/// Becomes the keeper: starts a worker (this binary, `worker_argv`, with the
/// link and `listener` inherited), holds what workers hand it, reaps
/// children, restarts a worker that died without announcing a clean
/// shutdown, and forwards SIGTERM and SIGINT to the worker. Returns the
/// process's exit code once a worker shut down cleanly.
pub fn run(listener: OwnedFd, worker_argv: Vec<OsString>) -> i32 {
    // SIGHUP is taken too (and never acted on): the keeper outlives the
    // terminal or session that started it, like the server did.
    let signals = [
        nix::sys::signal::Signal::SIGCHLD,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ];
    let mut signals = match SignalReader::new(&signals) {
        Ok(s) => s,
        Err(e) => {
            error!("keeper: signalfd: {e}");
            return 1;
        }
    };
    let mut keeper = Keeper::new(listener, worker_argv);
    if let Err(e) = keeper.start_worker() {
        error!("keeper: start the server process: {e}");
        return 1;
    }
    loop {
        if let Some(code) = keeper.turn(&mut signals) {
            return code;
        }
    }
}

impl Keeper {
    /// A keeper holding nothing, with no worker yet.
    fn new(listener: OwnedFd, argv: Vec<OsString>) -> Keeper {
        Keeper {
            listener,
            argv,
            held: BTreeMap::new(),
            worker: None,
            stopping: false,
            quick_deaths: 0,
            restart_at: None,
            pending_signal: None,
            buffer: vec![0; MAX_PACKET_BYTES],
            shed_at: None,
        }
    }

    /// Waits for one round of events and handles them. `Some(code)`: the
    /// keeper is done.
    fn turn(&mut self, signals: &mut SignalReader) -> Option<i32> {
        let timeout = match [self.restart_at, self.shed_at].into_iter().flatten().min() {
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let link_events = if self.has_unreported_exits() {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        let (signal_ready, link_ready, link_writable) = {
            let link = self.worker.as_ref().and_then(|w| w.link.as_ref());
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if let Some(link) = link {
                fds.push(PollFd::new(link.as_fd(), link_events));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return None,
                Err(e) => {
                    error!("keeper: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return None;
                }
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let writable = fds
                .get(1)
                .and_then(|fd| fd.revents())
                .is_some_and(|r| r.contains(PollFlags::POLLOUT));
            (ready(&fds[0]), fds.get(1).is_some_and(ready), writable)
        };
        if (link_ready || signal_ready) && self.shed_at.is_none() {
            self.shed_at = Some(Instant::now() + SHED_AFTER);
        }
        if self.shed_at.is_some_and(|at| Instant::now() >= at) {
            self.shed_at = None;
            shed_memory();
        }
        if link_ready {
            self.read_link();
        }
        if link_writable {
            self.report_exits();
        }
        if signal_ready {
            loop {
                match signals.pending() {
                    Ok(Some(SIGCHLD)) => {
                        if let Some(code) = self.reap() {
                            return Some(code);
                        }
                    }
                    Ok(Some(sig @ (SIGTERM | SIGINT))) => {
                        if let Some(code) = self.terminate(sig) {
                            return Some(code);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        error!("keeper: read the signalfd: {e}");
                        break;
                    }
                }
            }
        }
        if self.worker.is_none() && self.restart_at.is_some_and(|at| Instant::now() >= at) {
            self.restart_at = None;
            match self.start_worker() {
                Err(e) => {
                    error!("keeper: start the server process: {e}");
                    self.start_failed();
                }
                Ok(true) => {
                    if let Some(signal) = self.pending_signal.take() {
                        // The new worker keeps it blocked until its handler
                        // is installed: it is not killed by it, it shuts
                        // down.
                        self.forward(signal);
                    }
                }
                // Killed for a failed handover: the signal waits for the
                // next one (stopping now would drop the containers).
                Ok(false) => {}
            }
        }
        None
    }

    /// Starts a worker on a new link and hands it what is held. `Ok(false)`:
    /// the handover failed and the worker was killed (its exit restarts
    /// one).
    fn start_worker(&mut self) -> Result<bool, KeeperError> {
        let (ours, theirs) =
            socket::seqpacket_pair().map_err(|e| KeeperError::io("keeper link socketpair", e))?;
        let env = [
            (LINK_FD_ENV, theirs.as_raw_fd().to_string()),
            (LISTENER_FD_ENV, self.listener.as_raw_fd().to_string()),
        ];
        let pid =
            process::spawn_current_exe(&self.argv, &[theirs.as_fd(), self.listener.as_fd()], &env)
                .map_err(|e| KeeperError::io("spawn the server process", e))?;
        drop(theirs);
        info!(
            pid,
            held = self.held.len(),
            "keeper: started the server process"
        );
        self.worker = Some(Worker {
            pid,
            link: Some(ours),
            started: Instant::now(),
        });
        if let Err(e) = self.hand_over() {
            // The worker waits for the handover before it serves: without
            // it, it would serve without its containers. Start over.
            error!(
                pid,
                "keeper: handover to the server process failed, killing it: {e}"
            );
            let _ = process::send_signal(pid, libc::SIGKILL);
            return Ok(false);
        }
        shed_memory();
        Ok(true)
    }

    /// Sends every held container, then HandoverDone, to the new worker.
    fn hand_over(&mut self) -> Result<(), KeeperError> {
        let Some(link) = self.worker.as_ref().and_then(|w| w.link.as_ref()) else {
            return Err(KeeperError::Closed);
        };
        socket::set_send_timeout(link.as_fd(), HANDOVER_SEND_TIMEOUT)
            .map_err(|e| KeeperError::io("set the link's send timeout", e))?;
        for (&key, held) in &self.held {
            let message = ToWorker::Resume {
                key,
                pid: held.pid,
                exit: held.exit,
                record: held.record.clone(),
            };
            let fds: Vec<BorrowedFd<'_>> = held.fds.iter().map(|f| f.as_fd()).collect();
            socket::send_with_fds_blocking(link.as_fd(), &message.encode(), &fds)
                .map_err(|e| KeeperError::io(format!("send container {key}"), e))?;
        }
        socket::send_with_fds_blocking(link.as_fd(), &ToWorker::HandoverDone.encode(), &[])
            .map_err(|e| KeeperError::io("send the end of the handover", e))?;
        socket::set_send_timeout(link.as_fd(), SEND_TIMEOUT)
            .map_err(|e| KeeperError::io("set the link's send timeout", e))?;
        // Every Resume carried its exit.
        for held in self.held.values_mut() {
            held.exit_reported = true;
        }
        Ok(())
    }

    /// Handles every packet the worker has sent.
    fn read_link(&mut self) {
        loop {
            let Some(link) = self.worker.as_ref().and_then(|w| w.link.as_ref()) else {
                return;
            };
            let packet = match socket::recv_with_fds(link, self.buffer.len()) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    // ECONNRESET and the like: the worker is gone; its exit
                    // comes as SIGCHLD.
                    warn!("keeper: read the link: {e}");
                    self.close_link();
                    return;
                }
            };
            if packet.len == 0 && packet.fds.is_empty() {
                self.close_link();
                return;
            }
            if packet.len > self.buffer.len() || packet.fds_truncated {
                // Possibly a Hold: that container is not held.
                error!(
                    len = packet.len,
                    fds_truncated = packet.fds_truncated,
                    "keeper: ignored a packet over the link's bounds"
                );
                continue;
            }
            match ToKeeper::decode(&packet.payload) {
                Ok(message) => self.handle(message, packet.fds),
                Err(e) => warn!("keeper: ignored a packet: {e}"),
            }
        }
    }

    fn close_link(&mut self) {
        if let Some(worker) = &mut self.worker {
            worker.link = None;
        }
    }

    /// One message from the worker; `fds` came with it.
    fn handle(&mut self, message: ToKeeper, fds: Vec<OwnedFd>) {
        match message {
            ToKeeper::Hold { key, pid, record } => {
                if fds.len() > MAX_FDS_PER_CONTAINER || record.len() > MAX_RECORD_BYTES {
                    error!(
                        key,
                        fds = fds.len(),
                        record = record.len(),
                        "keeper: not holding a container over the bounds"
                    );
                    return;
                }
                if self.held.len() >= MAX_HELD_CONTAINERS && !self.held.contains_key(&key) {
                    error!(
                        key,
                        limit = MAX_HELD_CONTAINERS,
                        "keeper: not holding a container: already holding the most"
                    );
                    return;
                }
                // A second hold of a key replaces the first (the worker
                // re-holds without stdin once a client closed it), closing
                // the old descriptors; an exit already known is kept.
                let (exit, exit_reported) = self
                    .held
                    .get(&key)
                    .map_or((None, true), |h| (h.exit, h.exit_reported));
                self.held.insert(
                    key,
                    Held {
                        pid,
                        exit,
                        exit_reported,
                        record,
                        fds,
                    },
                );
            }
            ToKeeper::Exited { key, exit } => {
                if let Some(held) = self.held.get_mut(&key) {
                    held.exit.get_or_insert(exit);
                    // The worker has it (it sent it).
                    held.exit_reported = true;
                }
            }
            ToKeeper::Release { key } => {
                self.held.remove(&key);
            }
            ToKeeper::Stopping => self.stopping = true,
        }
    }

    /// Reaps every exited child. `Some(code)`: the worker shut down
    /// cleanly and the keeper is done.
    fn reap(&mut self) -> Option<i32> {
        // A Hold the worker sent just before the container exited may still
        // be unread: without it the exit below would be for an unknown pid,
        // reaped and lost.
        self.read_link();
        loop {
            let (pid, exit) = match process::reap_any() {
                Ok(Some(reaped)) => reaped,
                Ok(None) => return None,
                Err(e) => {
                    error!("keeper: waitpid: {e}");
                    return None;
                }
            };
            if self.worker.as_ref().is_some_and(|w| w.pid == pid) {
                if let Some(code) = self.worker_exited(exit) {
                    return Some(code);
                }
                continue;
            }
            let Some(held) = self
                .held
                .values_mut()
                .find(|h| h.pid == pid && h.exit.is_none())
            else {
                continue;
            };
            held.exit = Some(exit);
            held.exit_reported = false;
            self.report_exits();
        }
    }

    fn has_unreported_exits(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| w.link.is_some())
            && self
                .held
                .values()
                .any(|h| h.exit.is_some() && !h.exit_reported)
    }

    /// Sends the worker a Reaped for each exit it does not know yet,
    /// without waiting: what does not fit now is sent when the link has
    /// room (the loop polls for it), or carried by the next handover.
    fn report_exits(&mut self) {
        let Some(link) = self.worker.as_ref().and_then(|w| w.link.as_ref()) else {
            return;
        };
        let mut broken = false;
        for held in self.held.values_mut() {
            let Some(exit) = held.exit.filter(|_| !held.exit_reported) else {
                continue;
            };
            let message = ToWorker::Reaped {
                pid: held.pid,
                exit,
            };
            match socket::send_packet(link, &message.encode()) {
                Ok(true) => held.exit_reported = true,
                Ok(false) => return,
                Err(e) => {
                    warn!(
                        pid = held.pid,
                        "keeper: tell the server process about an exit: {e}"
                    );
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            // The worker is gone (its exit comes as SIGCHLD): what it sent
            // last is still read; the next handover carries the exits.
            self.read_link();
            self.close_link();
        }
    }

    /// The worker ended. `Some(code)`: so does the keeper.
    fn worker_exited(&mut self, exit: Exit) -> Option<i32> {
        let worker = self.worker.take()?;
        // Packets it sent just before dying (a Stopping, a last Exited).
        self.worker = Some(worker);
        self.read_link();
        let worker = self.worker.take()?;
        if self.stopping {
            info!(
                pid = worker.pid,
                code = exit.code(),
                "keeper: the server process stopped"
            );
            return Some(exit.code());
        }
        warn!(
            pid = worker.pid,
            status = ?exit,
            held = self.held.len(),
            "keeper: the server process died; starting a new one"
        );
        self.schedule_restart(worker.started.elapsed() < QUICK_DEATH);
        None
    }

    /// A worker could not even be spawned: that counts as a quick death,
    /// so the retries back off instead of spinning.
    fn start_failed(&mut self) {
        self.schedule_restart(true);
    }

    /// Sets when the next worker starts: at once the first time, then with
    /// a doubling delay while workers keep dying soon after their start.
    fn schedule_restart(&mut self, quick: bool) {
        self.quick_deaths = if quick { self.quick_deaths + 1 } else { 1 };
        let delay = restart_delay(self.quick_deaths);
        if !delay.is_zero() {
            warn!(
                delay_ms = delay.as_millis() as u64,
                deaths_in_a_row = self.quick_deaths,
                "keeper: delaying the next server process"
            );
        }
        self.restart_at = Some(Instant::now() + delay);
    }

    /// SIGTERM or SIGINT: passed to the worker, whose exit then ends the
    /// keeper. `Some(0)`: no worker runs; the keeper ends now.
    fn terminate(&mut self, signal: i32) -> Option<i32> {
        if self.worker.is_some() {
            self.forward(signal);
            return None;
        }
        if self.held.is_empty() {
            info!(signal, "keeper: stopping (no server process runs)");
            return Some(0);
        }
        // A restart is being delayed: start the worker now and let it shut
        // down the containers' monitoring (exit files, logs) properly.
        info!(
            signal,
            held = self.held.len(),
            "keeper: starting a server process now to stop it"
        );
        self.pending_signal = Some(signal);
        self.restart_at = Some(Instant::now());
        None
    }

    /// Passes `signal` to the running worker; its exit then ends the
    /// keeper.
    fn forward(&mut self, signal: i32) {
        let Some(worker) = &self.worker else {
            return;
        };
        self.stopping = true;
        if let Err(e) = process::send_signal(worker.pid, signal) {
            warn!(pid = worker.pid, "keeper: forward signal {signal}: {e}");
        }
    }
}

/// The delay before the next start after `quick_deaths` deaths in a row
/// (the first death counts as 1).
fn restart_delay(quick_deaths: u32) -> Duration {
    if quick_deaths <= 1 {
        return Duration::ZERO;
    }
    let doublings = (quick_deaths - 2).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// After a worker start (the first one follows the flag parsing and set-up;
/// each one runs the spawn and handover code once): gives malloc's free
/// pages back and drops the binary's clean file pages from the resident
/// set, which is then what the keeper's loop touches. The keeper lives as
/// long as the pod; the dropped pages stay shared with the workers.
fn shed_memory() {
    process::return_free_heap();
    if let Err(e) = process::drop_clean_file_pages() {
        tracing::debug!("keeper: drop clean file pages: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keeper with no worker and nothing held; its listener is a
    /// placeholder descriptor.
    fn idle_keeper() -> Keeper {
        let (listener, _) = socket::seqpacket_pair().unwrap();
        Keeper::new(listener, Vec::new())
    }

    #[test]
    fn reaped_exits_are_kept_until_the_link_takes_them() {
        let mut keeper = idle_keeper();
        let (ours, theirs) = socket::seqpacket_pair().unwrap();
        keeper.worker = Some(Worker {
            pid: 0,
            link: Some(ours),
            started: Instant::now(),
        });
        keeper.held.insert(
            7,
            Held {
                pid: 70,
                exit: Some(Exit::Code(3)),
                exit_reported: false,
                record: Vec::new(),
                fds: Vec::new(),
            },
        );
        // Fill the link so that the send cannot go through.
        let filler = ToWorker::HandoverDone.encode();
        let link = keeper.worker.as_ref().unwrap().link.as_ref().unwrap();
        while socket::send_packet(link, &filler).unwrap() {}
        keeper.report_exits();
        assert!(keeper.has_unreported_exits());
        // The worker reads: there is room again.
        while socket::recv_with_fds(&theirs, MAX_PACKET_BYTES)
            .unwrap()
            .is_some()
        {}
        keeper.report_exits();
        assert!(!keeper.has_unreported_exits());
    }

    #[test]
    fn a_stop_signal_without_a_worker_starts_one_only_for_held_containers() {
        let mut keeper = idle_keeper();
        assert_eq!(keeper.terminate(SIGTERM), Some(0));
        keeper.held.insert(
            7,
            Held {
                pid: 70,
                exit: None,
                exit_reported: true,
                record: Vec::new(),
                fds: Vec::new(),
            },
        );
        keeper.restart_at = Some(Instant::now() + MAX_BACKOFF);
        assert_eq!(keeper.terminate(SIGINT), None);
        assert_eq!(keeper.pending_signal, Some(SIGINT));
        assert!(keeper.restart_at.unwrap() <= Instant::now());
    }

    #[test]
    fn failed_spawns_back_off() {
        let mut keeper = idle_keeper();
        keeper.start_failed();
        keeper.start_failed();
        keeper.start_failed();
        assert_eq!(keeper.quick_deaths, 3);
        let delay = keeper
            .restart_at
            .unwrap()
            .saturating_duration_since(Instant::now());
        assert!(delay > FIRST_BACKOFF, "{delay:?}");
    }

    #[test]
    fn restarts_are_immediate_first_then_double_up_to_the_cap() {
        let delays: Vec<u64> = (1..=10)
            .map(|n| restart_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(restart_delay(u32::MAX), MAX_BACKOFF);
    }
}
