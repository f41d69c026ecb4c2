//! The stdio engine: worker threads that move container output into log
//! writers and attach clients.
//!
//! Shape: up to `config.workers` threads (`ringmon-io-N`), started as
//! containers arrive ([`CONTAINERS_PER_WORKER`]), each owning one
//! [`Backend`](backend::Backend) (an io_uring, or an epoll set where
//! io_uring is unavailable or `--io-backend epoll` asks for it; see
//! `resolve_backend`) with every source of
//! the containers assigned to it, plus those containers' log writers and
//! attach clients. A container is assigned to the least-loaded worker at
//! registration and stays there, so its bytes never cross threads and need
//! no locks. The `Engine` handle talks to a worker through a command queue
//! plus an eventfd that the worker's ring reads, so a worker sleeps in
//! exactly one place (`io_uring_enter`) whether it waits for output, for
//! commands or for an attach socket to become writable.
//!
//! Per chunk read: refresh the timestamp cache once, encode + write + flush
//! into every writer (a failing writer is reported once and then skipped, the
//! stream keeps being drained so the container never blocks on a full pipe),
//! then copy the chunk, framed as attach packets (spec §5.3: type byte 2 for
//! stdout and all terminal output, 3 for stderr, at most 8191 payload bytes
//! per packet), into the queue of every attach client of the container.
//! When every source of a container hit EOF: flush, queue the done packet
//! (`0x00`) for its attach clients, drop the state (closing fds and files),
//! then send `Drained` exactly once — the control thread writes exit files
//! only after that, so no byte is lost.
//!
//! # Attach backpressure
//!
//! Attach clients are remote readers of unknown speed; the rule is that
//! they can never slow down the container, the logs, or each other:
//! * after each batch of output the worker sends queued packets with
//!   `send(MSG_DONTWAIT)`; what the socket does not take stays queued and the
//!   backend is asked for a one-shot writability notification;
//! * a client with more than [`ATTACH_QUEUE_LIMIT`] (16 MiB) of payload
//!   queued is dropped, as is one whose send fails with anything but
//!   `EAGAIN` (a client that hung up, `EPIPE`/`ECONNRESET`, is a detach and
//!   is just closed, not counted): both directions are shut down (the
//!   client reads what it got, then EOF) and `AttachClientDropped` is
//!   reported with an engine-wide running count. Why 16 MiB: a container
//!   writing flat out outruns any slower reader whatever the bound, which
//!   only sets the slack for a reader that is alive but descheduled. With
//!   busy pipes grown to 1 MiB and 256 KiB reads, a container on a 2-core
//!   machine writes ~150 MB/s; measured with `ringmon-attach-bench`, 4 MiB
//!   (~30 ms of such output) dropped a single full-speed reader in 2 runs
//!   out of 3 when it lost the CPU for a moment, 16 MiB (~100 ms) in none.
//!   Memory stays bounded at 16 MiB plus one batch of reads per client,
//!   checked after each batch so that a reader that keeps up is never
//!   dropped for the batching itself. Upstream stops a client 16 messages
//!   (≈ 64 KiB) behind and silently skips data; being more lenient only
//!   costs memory, never correctness;
//! * the done packet never delays `Drained` (exit files depend on it): a
//!   client whose queue is not empty at that point *lingers* — it keeps
//!   being flushed on writability and is closed once the done packet is
//!   out, or dropped after [`ATTACH_LINGER_TIMEOUT`] (30 s) without any
//!   progress, long enough for any reader that is alive and short enough
//!   not to pin memory for a client that will never read;
//! * a client whose `Engine::attach` returned gets every byte the container
//!   produces afterwards (commands are taken from the queue before each
//!   chunk is routed), and nothing routed before the worker took it (no
//!   replay of earlier output). Attaching to
//!   a container that is unknown or already drained gets the done packet at
//!   once.
//!
//! # Wake-up coalescing
//!
//! On a dense host most containers write a few lines now and then, and
//! what a logged line costs is then mostly the worker's wake-up (the sleep
//! and the wake through the scheduler), not the read, the encoding or the
//! write: with 100 containers each printing 20 lines a second, waking once
//! per burst cost ~2.5–4 µs per line, of which the wake-ups were about two
//! thirds (perf, BENCHMARKS.md "Density"). So after a batch of only light
//! output a worker sleeps for the batch window (`--engine-batch-window-ms`,
//! default [`DEFAULT_BATCH_WINDOW`]) before it reads again, and one wake-up
//! then takes the bursts of every container that wrote meanwhile. The bytes
//! wait in the kernel's pipes, never in ringmon, so nothing can be lost to
//! the pause. A batch whose wait lasted a window or more is not followed by
//! a pause: output that arrives in bursts seconds apart (a pod's server
//! with one container that logs now and then) was usually taken whole by
//! that one read, and a pause would only add a wake-up per burst; when the
//! pipes hold output again within a window (after a batch or a pause: many
//! containers, or a steady stream), the worker pauses. It never applies
//! where someone waits:
//! * a batch with a busy read ([`worker::BUSY_READ`], 16 KiB: a stream that
//!   could fill a default pipe within a window), a command, an EOF, or an
//!   attach socket event is followed by the next read at once;
//! * a worker does not pause at all while any of its containers has attach
//!   clients or an attach listener, is an exec session, or wrote to both
//!   stdout and stderr within one batch in the last 10 s (the pause holds
//!   back every source of the worker, so one attached shell turns it off for
//!   its neighbours too). Two pipes carry no order between them: whatever
//!   both hold when the worker reads is logged stream by stream, and a
//!   window would let up to a window of one stream overtake the other;
//! * a command ends a pause at once (it writes the worker's eventfd, which
//!   the pause polls), and so does [`Engine::expedite`], which the control
//!   thread calls when a container's (or exec session's) process exits: its
//!   exit files wait for the EOF, and must not wait for the window too;
//! * io_uring rings without `DEFER_TASKRUN` (kernels before 6.1) never
//!   pause (see `uring`).
//!
//! What it costs: unwatched log output reaches the log files up to one
//! window later; a container that goes from light output to more than a
//! pipe's capacity (64 KiB) within one window blocks in `write(2)` until the
//! window ends, once (the next read is busy, and grows the pipe).
//!
//! How each backend reads is described in `epoll` and `uring`; `uring` also
//! says why it is not the default.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::log::{LogWriter, StreamKind};

pub mod attach;
pub use attach::MAX_ATTACH_CLIENTS;
pub mod backend;
pub mod counters;
mod epoll;
pub mod journal;
pub mod pipe_size;
mod uring;
mod worker;

#[cfg(test)]
mod tests;

use counters::{ContainerCounters, WorkerCounters};
use worker::{Command, Worker};

/// Payload bytes an attach client may have queued before it is dropped (see
/// the module docs for the reasoning).
pub const ATTACH_QUEUE_LIMIT: usize = 16 * 1024 * 1024;

/// How long an attach client may make no progress after its container's
/// output ended before it is dropped (see the module docs).
pub const ATTACH_LINGER_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `EngineConfig::batch_window` (see "Wake-up coalescing").
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Identifies one monitored process (container or exec) across layers.
pub type ContainerKey = u64;

/// How the engine must read a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A pipe read end (blocking fd; EOF = read returns 0).
    Pipe,
    /// A pty master (non-blocking fd; EOF = EIO or 0 once every slave is closed).
    Pty,
}

/// One output source of a container.
pub struct StreamSource {
    pub fd: OwnedFd,
    pub stream: StreamKind,
    pub kind: SourceKind,
    /// A pipe whose output is journaled (exactly once across a worker
    /// crash, see [`journal`]): spliced into this journal, never read.
    pub journal: Option<journal::Journal>,
}

/// Everything a worker needs to serve one container.
pub struct Registration {
    pub key: ContainerKey,
    pub sources: Vec<StreamSource>,
    pub logs: Vec<LogWriter>,
}

/// Which I/O backend the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Uring,
    Epoll,
}

pub struct EngineConfig {
    /// Number of worker threads (>= 1).
    pub workers: usize,
    pub backend: BackendChoice,
    /// Capacity busy pipes are grown to (`None`: the default of
    /// [`pipe_size::BUSY_PIPE_CAPACITY`]; `Some(0)`: never grow).
    pub busy_pipe_size: Option<usize>,
    /// How long a worker lets light output accumulate before reading it
    /// (see "Wake-up coalescing" in the module docs); zero disables it.
    pub batch_window: Duration,
    /// Whether attach clients get the done packet (`0x00`) when output
    /// ends, before their connection is closed. conmon-rs clients wait for
    /// it; the C conmon's clients (podman) know only stdout and stderr
    /// packets and fail on any other, so conmon mode turns it off and the
    /// end of output is the end of the connection alone.
    pub attach_done_packet: bool,
}

/// The backend the workers actually run, once `Auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResolvedBackend {
    Uring,
    Epoll,
}

impl ResolvedBackend {
    fn name(self) -> &'static str {
        match self {
            ResolvedBackend::Uring => "io_uring",
            ResolvedBackend::Epoll => "epoll",
        }
    }
}

/// Whether an io_uring can be set up here (a ring is created and dropped).
/// Lets the server refuse `--io-backend uring` before it forks, where the
/// error still reaches whoever started it.
pub fn probe_io_uring() -> std::io::Result<()> {
    crate::sys::uring::Ring::new(8).map(drop)
}

/// Picks the backend for `choice` and says why. `Auto` prefers io_uring and
/// falls back to epoll when the kernel disables io_uring
/// (`kernel.io_uring_disabled`) or refuses to set up a ring (`EPERM` or
/// `ENOSYS` under seccomp, `ENOMEM` under a tight memlock limit on old
/// kernels): what matters is whether a ring can be created here, not the
/// kernel version.
fn resolve_backend(choice: BackendChoice) -> (ResolvedBackend, String) {
    match choice {
        BackendChoice::Uring => (ResolvedBackend::Uring, "forced by --io-backend".into()),
        BackendChoice::Epoll => (
            ResolvedBackend::Epoll,
            "--io-backend epoll (the default: cheaper per logged line than io_uring at density, \
             see BENCHMARKS.md)"
                .into(),
        ),
        BackendChoice::Auto => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .unwrap_or(0);
            if disabled == 2 {
                return (
                    ResolvedBackend::Epoll,
                    "auto: io_uring is disabled (kernel.io_uring_disabled = 2)".into(),
                );
            }
            match probe_io_uring() {
                Ok(()) => (ResolvedBackend::Uring, "auto: io_uring is available".into()),
                Err(err) => (
                    ResolvedBackend::Epoll,
                    format!("auto: io_uring is unavailable ({err})"),
                ),
            }
        }
    }
}

/// What workers report to the control thread.
#[derive(Debug)]
pub enum EngineEvent {
    /// Every source of `key` reached EOF and everything read was written to
    /// (and flushed into) every log writer. Sent exactly once per key; the
    /// worker has dropped the container's state by then; `log_files` are
    /// second handles on its log files, for the control thread to sync
    /// before it writes exit files (the worker never waits on the disk).
    Drained {
        key: ContainerKey,
        log_files: Vec<std::fs::File>,
    },
    /// A log writer failed; the stream keeps being drained (never blocks the
    /// container), its output for that writer is discarded, and the writer
    /// is retried every second. Reported once per failure.
    LogError { key: ContainerKey, message: String },
    /// A failed log writer works again; `dropped_bytes` of container output
    /// were discarded for it in between.
    LogResumed {
        key: ContainerKey,
        dropped_bytes: u64,
    },
    /// An attach client was disconnected by the engine: its queue exceeded
    /// `ATTACH_QUEUE_LIMIT` (a slow or stuck reader), sending to it failed
    /// (usually: the client went away), or it made no progress for
    /// `ATTACH_LINGER_TIMEOUT` after the container's output ended. `reason`
    /// names the cause and the bytes that were still queued.
    AttachClientDropped {
        key: ContainerKey,
        /// Total attach clients this engine has dropped so far.
        dropped_total: u64,
        reason: String,
    },
    /// The worker accepted a connection on an attach listener of `key` (see
    /// [`Engine::watch_attach_listener`]) and made it an attach client;
    /// `client` is a second descriptor of that socket for reading the
    /// client's stdin.
    AttachAccepted {
        key: ContainerKey,
        listener: AttachListenerId,
        client: OwnedFd,
    },
}

/// Names an attach listener among those of one container.
pub type AttachListenerId = u64;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Setting up a worker failed.
    #[error("engine worker setup: {0}")]
    Setup(String),
    /// The worker thread is gone.
    #[error("engine worker {0} is not running")]
    WorkerGone(usize),
}

/// Containers a worker serves before the next container starts another
/// worker (up to `EngineConfig::workers`); once several run, a new container
/// goes to the least-loaded one. A worker is a thread with its own stack,
/// malloc arena and read buffer: a pod's server holding one to three
/// containers needs only one, and a server that holds none yet runs none
/// (issue 17, BENCHMARKS.md "Density per pod"). Many light containers cost
/// less CPU per line on one worker (one wake-up serves them all); what a
/// second worker buys is a second core for heavy output, which only a
/// host-wide server with many containers is likely to need.
pub const CONTAINERS_PER_WORKER: usize = 32;

/// Handle to the worker threads. `Send + Sync`; methods never block on I/O
/// (registering a container may start a worker thread).
pub struct Engine {
    /// The workers started so far, and whether the engine is shut down.
    workers: Mutex<Workers>,
    /// What starting one more worker takes.
    spawner: WorkerSpawner,
    assignments: Arc<Mutex<Assignments>>,
    backend_name: &'static str,
    /// Why that backend runs (forced, or what the probe found).
    backend_reason: String,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The workers an `Engine` started (a worker's index is its position), and
/// whether it was shut down (then none starts any more).
struct Workers {
    started: Vec<WorkerHandle>,
    shut_down: bool,
}

/// The `Engine`'s side of one worker.
#[derive(Clone)]
struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    /// Written to after queueing a command; the worker's backend reads it.
    waker: Arc<EventFd>,
    /// What the worker counts (read by `Engine::worker_stats`).
    counters: Arc<WorkerCounters>,
}

/// One worker as the metrics see it ([`Engine::worker_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStats {
    pub index: usize,
    /// "io_uring" or "epoll".
    pub backend: &'static str,
    pub wakeups: u64,
    pub batches: u64,
    /// CPU time of the worker's thread (`None` if it could not be read:
    /// the thread is gone).
    pub cpu: Option<Duration>,
}

/// Which worker serves which container, and how many each serves. Shared
/// with the workers, which release a container right before its `Drained`.
#[derive(Debug)]
pub(crate) struct Assignments {
    worker_of: HashMap<ContainerKey, usize>,
    /// Containers per worker, for every worker that may run (started or not).
    load: Vec<usize>,
}

impl Assignments {
    fn new(workers: usize) -> Assignments {
        Assignments {
            worker_of: HashMap::new(),
            load: vec![0; workers],
        }
    }

    /// Assigns `key` to a worker, given that workers `0..started` run: the
    /// least-loaded of them (lowest index on ties), or worker `started` (to
    /// be started by the caller) when none runs or each already serves
    /// [`CONTAINERS_PER_WORKER`] and another may run.
    fn assign(&mut self, key: ContainerKey, started: usize) -> Result<usize, EngineError> {
        if self.worker_of.contains_key(&key) {
            return Err(EngineError::Setup(format!(
                "container key {key} is already registered"
            )));
        }
        let least_loaded = self.load[..started.min(self.load.len())]
            .iter()
            .enumerate()
            .min_by_key(|&(index, load)| (*load, index))
            .map(|(index, load)| (index, *load));
        let worker = match least_loaded {
            Some((index, load)) if load < CONTAINERS_PER_WORKER || started >= self.load.len() => {
                index
            }
            _ => started,
        };
        self.load[worker] += 1;
        self.worker_of.insert(key, worker);
        Ok(worker)
    }

    /// Forgets `key` if it is assigned to `worker`.
    pub(crate) fn release(&mut self, key: ContainerKey, worker: usize) {
        if self.worker_of.get(&key) == Some(&worker) {
            self.worker_of.remove(&key);
            self.load[worker] -= 1;
        }
    }
}

impl Engine {
    /// Sets up the engine; workers start with the first containers (see
    /// [`CONTAINERS_PER_WORKER`]). Events go to `events`.
    pub fn start(
        config: EngineConfig,
        events: tokio::sync::mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<Engine, EngineError> {
        let (backend, backend_reason) = resolve_backend(config.backend);
        let pipe_sizer = pipe_size::PipeSizer::with_target(
            config
                .busy_pipe_size
                .unwrap_or(pipe_size::BUSY_PIPE_CAPACITY),
        );
        let worker_count = config.workers.max(1);
        let assignments = Arc::new(Mutex::new(Assignments::new(worker_count)));
        Ok(Engine {
            workers: Mutex::new(Workers {
                started: Vec::with_capacity(worker_count),
                shut_down: false,
            }),
            spawner: WorkerSpawner {
                backend,
                pipe_sizer,
                options: WorkerOptions {
                    batch_window: config.batch_window,
                    attach_done_packet: config.attach_done_packet,
                },
                events,
                assignments: assignments.clone(),
                // Attach clients dropped so far, by every worker.
                attach_drops: Arc::new(AtomicU64::new(0)),
            },
            assignments,
            backend_name: backend.name(),
            backend_reason,
            threads: Mutex::new(Vec::with_capacity(worker_count)),
        })
    }

    /// How many worker threads run now.
    pub fn started_workers(&self) -> usize {
        self.lock_workers().started.len()
    }

    /// Name of the backend actually running ("io_uring" or "epoll").
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// Why `backend_name` runs: forced by configuration, or what the probe
    /// for io_uring found.
    pub fn backend_reason(&self) -> &str {
        &self.backend_reason
    }

    /// Hands a container's sources and log writers to a worker.
    pub fn register(&self, registration: Registration) -> Result<(), EngineError> {
        self.register_counted(registration, Arc::default())
    }

    /// [`Engine::register`], with the counters the worker keeps for the
    /// container (read by the metrics while it works).
    pub fn register_counted(
        &self,
        registration: Registration,
        counters: Arc<ContainerCounters>,
    ) -> Result<(), EngineError> {
        self.assign_and_send(registration.key, Command::Register(registration, counters))
    }

    /// What each started worker counted so far, in worker order, with the
    /// CPU time its thread used (read through the thread's CPU clock: the
    /// worker does nothing for it).
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        let counters: Vec<Arc<WorkerCounters>> = self
            .lock_workers()
            .started
            .iter()
            .map(|handle| handle.counters.clone())
            .collect();
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counters
            .iter()
            .enumerate()
            .map(|(index, counters)| WorkerStats {
                index,
                backend: self.backend_name,
                wakeups: counters.wakeups.load(std::sync::atomic::Ordering::Relaxed),
                batches: counters.batches.load(std::sync::atomic::Ordering::Relaxed),
                cpu: threads
                    .get(index)
                    .and_then(|thread| crate::sys::stats::thread_cpu_time(thread).ok()),
            })
            .collect()
    }

    /// Assigns `key` to a worker and sends it `command` (a registration).
    fn assign_and_send(&self, key: ContainerKey, command: Command) -> Result<(), EngineError> {
        let worker = {
            // Held across the start of a new worker, so that two
            // registrations never start the same one.
            let mut workers = self.lock_workers();
            let worker = self.lock_assignments().assign(key, workers.started.len())?;
            if worker == workers.started.len() {
                if let Err(err) = self.start_worker(worker, &mut workers) {
                    self.lock_assignments().release(key, worker);
                    return Err(err);
                }
            }
            worker
        };
        if let Err(err) = self.send(worker, command) {
            self.lock_assignments().release(key, worker);
            return Err(err);
        }
        Ok(())
    }

    /// Registers a container whose sources are not known yet (an exec
    /// session created suspended: its pty arrives when it starts). Until
    /// [`Engine::add_sources`] it is never drained, so attach clients that
    /// connect meanwhile stay and get all of its output.
    pub fn register_pending(
        &self,
        key: ContainerKey,
        logs: Vec<LogWriter>,
    ) -> Result<(), EngineError> {
        let registration = Registration {
            key,
            sources: Vec::new(),
            logs,
        };
        self.assign_and_send(key, Command::RegisterPending(registration, Arc::default()))
    }

    /// Gives a container registered with [`Engine::register_pending`] its
    /// sources, exactly once. With none (the process never started) it
    /// drains at once.
    pub fn add_sources(
        &self,
        key: ContainerKey,
        sources: Vec<StreamSource>,
    ) -> Result<(), EngineError> {
        let worker = self.lock_assignments().worker_of.get(&key).copied();
        match worker {
            Some(worker) => self.send(worker, Command::AddSources { key, sources }),
            None => Err(EngineError::Setup(format!(
                "container key {key} is not registered"
            ))),
        }
    }

    /// Adds an attach client (a connected SOCK_SEQPACKET socket) to `key`:
    /// from now on it receives every chunk the container's sources produce,
    /// framed as attach packets, and a done packet once every source reached
    /// EOF. If `key` is unknown (already drained) the client gets the done
    /// packet at once. Never blocks; on error the client is closed.
    ///
    /// The engine only writes to `client` (non-blocking sends) and shuts
    /// down its write side when done; the caller may keep a descriptor of
    /// the same socket to read the client's stdin.
    pub fn attach(&self, key: ContainerKey, client: OwnedFd) -> Result<(), EngineError> {
        let served_by = self.lock_assignments().worker_of.get(&key).copied();
        match served_by {
            Some(worker) => self.send(worker, Command::Attach { key, client }),
            None => {
                self.answer_unserved_attach(client);
                Ok(())
            }
        }
    }

    /// Ends an attach client of a key no worker serves (drained, or never
    /// registered) here instead of in a worker: a server holding no
    /// container must not start a worker thread, which would then stay, for
    /// a client that gets no output. The socket was just connected, so its
    /// buffer takes the one-byte done packet; if not, the client still sees
    /// the end of the stream.
    fn answer_unserved_attach(&self, client: OwnedFd) {
        if self.spawner.options.attach_done_packet {
            let _ = crate::sys::socket::send_packet(&client, &[attach::PACKET_DONE]);
        }
        let _ = crate::sys::socket::shut_down_writing(&client);
    }

    /// Gives the worker serving `key` a descriptor of one of its attach
    /// listeners. Right before the worker routes a chunk of `key`'s output it
    /// accepts every connection pending there and adds it as a client, so a
    /// client whose `connect` returned before that output was produced gets
    /// it, however late the control thread would have accepted it. Each
    /// connection accepted so is reported as [`EngineEvent::AttachAccepted`].
    /// The listener is dropped with the container. A key no worker serves
    /// drops it at once.
    pub fn watch_attach_listener(
        &self,
        key: ContainerKey,
        id: AttachListenerId,
        listener: OwnedFd,
    ) -> Result<(), EngineError> {
        let worker = self.lock_assignments().worker_of.get(&key).copied();
        match worker {
            Some(worker) => self.send(worker, Command::AttachListener { key, id, listener }),
            None => Ok(()),
        }
    }

    /// Reopens every log writer of `key`. Resolves to Ok if the key is
    /// unknown (already drained).
    pub fn reopen_logs(
        &self,
        key: ContainerKey,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        let worker = self.lock_assignments().worker_of.get(&key).copied();
        match worker {
            None => {
                let _ = reply.send(Ok(()));
            }
            Some(worker) => {
                // On failure the command (and its reply sender) is dropped
                // unsent; answer through a fresh channel instead.
                if let Err(err) = self.send(worker, Command::ReopenLogs { key, reply }) {
                    let (reply, receiver) = tokio::sync::oneshot::channel();
                    let _ = reply.send(Err(err.to_string()));
                    return receiver;
                }
            }
        }
        receiver
    }

    /// Stops the workers after they flushed every log writer; attach clients
    /// are closed (without a done packet). Idempotent.
    pub fn shutdown(&self) {
        let started = {
            // Set under the lock that starting a worker holds: no worker
            // starts after this, so `threads` below holds every one.
            let mut workers = self.lock_workers();
            workers.shut_down = true;
            workers.started.clone()
        };
        for handle in &started {
            // A worker that is already gone needs no stopping.
            let _ = handle.deliver(Command::Shutdown);
        }
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for thread in threads {
            let name = thread
                .thread()
                .name()
                .unwrap_or("engine worker")
                .to_string();
            if thread.join().is_err() {
                tracing::error!("{name} panicked");
            }
        }
    }

    /// The process of `key` exited: its worker reads what is left at once
    /// instead of after its batch window, so that exit files are not
    /// delayed by the wake-up coalescing. Does nothing for an unknown key.
    pub fn expedite(&self, key: ContainerKey) {
        let worker = self.lock_assignments().worker_of.get(&key).copied();
        if let Some(handle) = worker.and_then(|worker| self.handle(worker)) {
            // A wake-up with no command: the worker's pause ends and its
            // next batch counts as urgent.
            let _ = handle.waker.write(1);
        }
    }

    fn send(&self, worker: usize, command: Command) -> Result<(), EngineError> {
        self.handle(worker)
            .ok_or(EngineError::WorkerGone(worker))?
            .deliver(command)
            .map_err(|()| EngineError::WorkerGone(worker))
    }

    /// The handle of worker `worker`, if it was started.
    fn handle(&self, worker: usize) -> Option<WorkerHandle> {
        self.lock_workers().started.get(worker).cloned()
    }

    /// Starts worker `index` (the next one) and adds it to `workers`.
    fn start_worker(&self, index: usize, workers: &mut Workers) -> Result<(), EngineError> {
        debug_assert_eq!(index, workers.started.len());
        if workers.shut_down {
            return Err(EngineError::WorkerGone(index));
        }
        let (handle, thread) = self.spawner.spawn(index)?;
        tracing::debug!(worker = index, "engine worker started");
        workers.started.push(handle);
        self.threads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(thread);
        Ok(())
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, Workers> {
        // Only ever appended to: consistent even if a holder panicked.
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_assignments(&self) -> std::sync::MutexGuard<'_, Assignments> {
        // The assignment table stays consistent even if a holder panicked
        // (every update is a single insert/remove plus a counter).
        self.assignments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a worker thread starts with, besides its backend.
struct WorkerParts {
    index: usize,
    commands: mpsc::Receiver<Command>,
    events: tokio::sync::mpsc::UnboundedSender<EngineEvent>,
    assignments: Arc<Mutex<Assignments>>,
    attach_drops: Arc<AtomicU64>,
    counters: Arc<WorkerCounters>,
    options: WorkerOptions,
}

impl WorkerParts {
    /// Reports the outcome of setting up the backend (`built`, of kind
    /// `kind`) to the spawner through `ready`, then runs the worker on it
    /// (unless setup failed or nobody waits).
    fn serve<B: backend::Backend>(
        self,
        built: std::io::Result<B>,
        kind: ResolvedBackend,
        ready: &mpsc::SyncSender<Result<(), String>>,
    ) {
        let backend = match built {
            Ok(backend) => backend,
            Err(err) => {
                let _ = ready.send(Err(format!("{} setup: {err}", kind.name())));
                return;
            }
        };
        if ready.send(Ok(())).is_err() {
            return;
        }
        Worker::new(
            self.index,
            backend,
            self.commands,
            self.events,
            self.assignments,
            self.attach_drops,
        )
        .with_counters(self.counters)
        .with_batch_window(self.options.batch_window)
        .with_attach_done_packet(self.options.attach_done_packet)
        .run();
    }
}

impl WorkerHandle {
    /// Queues `command` and wakes the worker; fails if the worker is gone.
    fn deliver(&self, command: Command) -> Result<(), ()> {
        self.commands.send(command).map_err(|_| ())?;
        self.waker.write(1).map(drop).map_err(|_| ())
    }
}

/// Everything a new worker is started with.
struct WorkerSpawner {
    backend: ResolvedBackend,
    pipe_sizer: pipe_size::PipeSizer,
    options: WorkerOptions,
    events: tokio::sync::mpsc::UnboundedSender<EngineEvent>,
    assignments: Arc<Mutex<Assignments>>,
    attach_drops: Arc<AtomicU64>,
}

/// The `EngineConfig` settings each worker applies itself.
#[derive(Clone, Copy)]
struct WorkerOptions {
    batch_window: Duration,
    attach_done_packet: bool,
}

impl WorkerSpawner {
    /// Spawns worker `index`; returns once its backend is set up (or failed).
    fn spawn(&self, index: usize) -> Result<(WorkerHandle, JoinHandle<()>), EngineError> {
        // Blocking: the ring reads it like a pipe (a non-blocking eventfd would
        // make the ring read fail with EAGAIN instead of waiting).
        let waker = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .map_err(|errno| EngineError::Setup(format!("worker {index}: eventfd: {errno}")))?,
        );
        let (commands_tx, commands_rx) = mpsc::channel();
        let counters = Arc::new(WorkerCounters::default());
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        let parts = WorkerParts {
            index,
            commands: commands_rx,
            events: self.events.clone(),
            assignments: self.assignments.clone(),
            attach_drops: self.attach_drops.clone(),
            counters: counters.clone(),
            options: self.options,
        };
        let (backend, pipe_sizer, worker_waker) = (self.backend, self.pipe_sizer, waker.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ringmon-io-{index}"))
            .spawn(move || {
                // The ring (or epoll set) is created on the thread that uses it.
                match backend {
                    ResolvedBackend::Uring => parts.serve(
                        uring::UringBackend::new(worker_waker, pipe_sizer),
                        backend,
                        &ready_tx,
                    ),
                    ResolvedBackend::Epoll => parts.serve(
                        epoll::EpollBackend::new(worker_waker, pipe_sizer),
                        backend,
                        &ready_tx,
                    ),
                }
            })
            .map_err(|err| EngineError::Setup(format!("worker {index}: spawn thread: {err}")))?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err("worker thread exited during setup".to_string()));
        match ready {
            Ok(()) => Ok((
                WorkerHandle {
                    commands: commands_tx,
                    waker,
                    counters,
                },
                thread,
            )),
            Err(message) => {
                let _ = thread.join();
                Err(EngineError::Setup(format!("worker {index}: {message}")))
            }
        }
    }
}
