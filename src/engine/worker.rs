//! One engine worker: a thread that owns a backend, the containers assigned
//! to it, their log writers and attach clients, and routes every chunk read
//! to them.
//!
//! A loop turn has three phases:
//! 1. `Backend::wait` reports events to [`Routing`] (which cannot use the
//!    backend meanwhile): chunks are written to the log writers and copied
//!    into the queue of every attach client of the container.
//! 2. Commands that need the backend (registrations) are applied.
//! 3. Attach clients with something queued are flushed with non-blocking
//!    sends, armed for writability, closed or dropped.
//!
//! Commands are taken from the queue inside phase 1 too, before every chunk
//! is routed: a client whose `Engine::attach` returned before some output
//! was produced is then always in place when that output is routed, even if
//! the output completes in the same batch as the wake-up (commands that
//! cannot be applied there wait in `deferred`, in order per container).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::Shutdown;
use tokio::sync::mpsc::UnboundedSender;

use super::attach::{PacketQueue, MAX_ATTACH_CLIENTS, PACKET_STDERR, PACKET_STDOUT};
use super::backend::{Backend, BackendEvent, SinkId, SourceId};
use super::counters::{bump, ContainerCounters, WorkerCounters};
use super::journal::{Ledger, LogEnd, MAX_LOG_ENDS};
use super::{
    Assignments, AttachListenerId, ContainerKey, EngineEvent, Registration, SourceKind,
    StreamSource, ATTACH_LINGER_TIMEOUT, ATTACH_QUEUE_LIMIT,
};
use crate::log::{LogError, LogWriter, StreamKind, TimestampCache};

/// Failed backend waits in a row after which a worker gives up (its handle
/// then reports `WorkerGone`).
const MAX_CONSECUTIVE_WAIT_FAILURES: u32 = 1000;

/// What the `Engine` handle asks a worker to do.
pub enum Command {
    Register(Registration, Arc<ContainerCounters>),
    /// Register a container whose sources come later ([`Command::AddSources`]):
    /// until then it holds one pending source, so it is not drained and its
    /// attach clients stay connected (an exec session created suspended).
    RegisterPending(Registration, Arc<ContainerCounters>),
    /// The sources of a container registered pending (none if the process
    /// never started: the container then drains).
    AddSources {
        key: ContainerKey,
        sources: Vec<StreamSource>,
    },
    /// Add an attach client (a connected non-blocking SOCK_SEQPACKET socket)
    /// to `key`.
    Attach {
        key: ContainerKey,
        client: OwnedFd,
    },
    ReopenLogs {
        key: ContainerKey,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Accept pending attach connections of `key` from this listener before
    /// routing its output (`Engine::watch_attach_listener`).
    AttachListener {
        key: ContainerKey,
        id: AttachListenerId,
        listener: OwnedFd,
    },
    /// Flush every writer, close every attach client and exit.
    Shutdown,
}

/// How often a failed log writer is tried again (a full disk that gets
/// space back, a log directory that was restored).
const LOG_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A log writer and, once a write failed, its failure: output for it is
/// then discarded (and counted) rather than queued — the container must
/// never block on its log — and the writer is tried again every
/// `LOG_RETRY_INTERVAL`. The failure is reported once, the recovery once.
struct LogSink {
    writer: LogWriter,
    failure: Option<LogFailure>,
}

struct LogFailure {
    last_attempt: Instant,
    /// Output bytes discarded since the failure (the failed chunk included).
    dropped: u64,
}

/// What an attempt to use a log writer came to.
enum LogAttempt {
    Done,
    /// The writer failed just now (report it).
    Failed(LogError),
    /// A failed writer works again (report it).
    Resumed {
        dropped: u64,
    },
    /// A failed writer was left alone (not time to retry) or failed again.
    Skipped,
}

impl LogSink {
    fn new(writer: LogWriter) -> LogSink {
        LogSink {
            writer,
            failure: None,
        }
    }

    /// Runs `write` (which carries `bytes` of container output) unless the
    /// writer is failing and not due for a retry.
    /// Discarded bytes and failed writes are counted in `counters`.
    fn attempt(
        &mut self,
        bytes: usize,
        counters: &ContainerCounters,
        write: impl FnOnce(&mut LogWriter) -> Result<(), LogError>,
    ) -> LogAttempt {
        if let Some(failure) = &mut self.failure {
            let now = Instant::now();
            if now.duration_since(failure.last_attempt) < LOG_RETRY_INTERVAL {
                failure.dropped += bytes as u64;
                bump(&counters.discarded_bytes, bytes as u64);
                return LogAttempt::Skipped;
            }
            failure.last_attempt = now;
        }
        let written = write(&mut self.writer);
        if written.is_err() {
            bump(&counters.log_write_errors, 1);
            bump(&counters.discarded_bytes, bytes as u64);
        }
        match (written, &mut self.failure) {
            (Ok(()), None) => LogAttempt::Done,
            (Ok(()), Some(failure)) => {
                let dropped = failure.dropped;
                self.failure = None;
                LogAttempt::Resumed { dropped }
            }
            (Err(err), None) => {
                self.failure = Some(LogFailure {
                    last_attempt: Instant::now(),
                    dropped: bytes as u64,
                });
                LogAttempt::Failed(err)
            }
            (Err(_), Some(failure)) => {
                failure.dropped += bytes as u64;
                LogAttempt::Skipped
            }
        }
    }
}

struct Container {
    /// Sources that have not reached EOF yet.
    open_sources: usize,
    /// What the metrics read about it.
    counters: Arc<ContainerCounters>,
    logs: Vec<LogSink>,
    attach_clients: Vec<ClientId>,
    /// Attach listeners whose pending connections are accepted before each
    /// chunk is routed.
    attach_listeners: Vec<(AttachListenerId, OwnedFd)>,
    /// An exec session: someone waits for its output (never coalesced).
    exec_session: bool,
    /// The batch (`Routing::batch`) that `streams_in_batch` describes.
    batch: u64,
    /// Streams that had output in that batch (bit 0 stdout, bit 1 stderr).
    streams_in_batch: u8,
    /// Until when it counts as writing both streams at once (see
    /// `INTERLEAVING_HOLD`).
    interleaving_until: Option<Instant>,
}

/// How long a container that wrote to stdout and stderr within one batch
/// is read without the batch window. Two pipes carry no order between them:
/// whatever both hold when the worker reads is logged stream by stream. A
/// window would widen that to the window's length, so such a container is
/// read at once, as before coalescing, for a while after it last did so.
const INTERLEAVING_HOLD: Duration = Duration::from_secs(10);

impl Container {
    /// Whether a person or a program is waiting on this output right now, or
    /// its two streams interleave, so that it must not wait for the batch
    /// window.
    fn is_interactive(&self) -> bool {
        self.exec_session
            || !self.attach_clients.is_empty()
            || !self.attach_listeners.is_empty()
            || self
                .interleaving_until
                .is_some_and(|until| Instant::now() < until)
    }

    /// Notes output on `stream` in batch `batch`.
    fn note_output(&mut self, stream: StreamKind, batch: u64) {
        if self.batch != batch {
            self.batch = batch;
            self.streams_in_batch = 0;
        }
        self.streams_in_batch |= match stream {
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
        };
        if self.streams_in_batch == 3 {
            self.interleaving_until = Some(Instant::now() + INTERLEAVING_HOLD);
        }
    }
}

/// Worker-local id of an attach client.
type ClientId = u64;

/// Who holds an attach client's socket.
enum ClientSocket {
    /// The worker: the client never had to wait for writability, so the
    /// backend has not seen it (most clients keep up and stay here).
    Held(OwnedFd),
    /// The backend, which watches it for writability.
    Registered(SinkId),
}

struct AttachClient {
    key: ContainerKey,
    /// Its container's counters (it may outlive the container: lingering).
    counters: Option<Arc<ContainerCounters>>,
    socket: ClientSocket,
    queue: PacketQueue,
    /// A writability notification is armed: sending before it fires would
    /// only fail with EAGAIN again.
    awaiting_writable: bool,
    /// The done packet is queued: the container is gone and the client is
    /// closed once its queue is sent. While packets remain it is
    /// *lingering*, bounded by `ATTACH_LINGER_TIMEOUT` without progress.
    done_queued: bool,
    /// When a packet was last sent (or the client started lingering).
    last_progress: Instant,
    /// Set when the backend could not watch the socket; the client is
    /// dropped in the next service phase.
    failure: Option<String>,
    /// Listed in `Routing::scheduled`.
    scheduled: bool,
}

impl AttachClient {
    fn is_lingering(&self) -> bool {
        self.done_queued && !self.queue.is_empty()
    }
}

/// Per source: its container, its stream and the attach packet type.
struct SourceRoute {
    key: ContainerKey,
    stream: StreamKind,
    packet_type: u8,
    /// A journaled pipe: its container's ledger, and the ledger's index of
    /// the stream. Each chunk is committed there once it is logged.
    ledger: Option<(Arc<Ledger>, usize)>,
}

/// Everything but the backend, so that the backend's event callback can
/// borrow it mutably while the backend itself is borrowed.
struct Routing {
    worker_index: usize,
    /// See `EngineConfig::attach_done_packet`.
    attach_done_packet: bool,
    commands: mpsc::Receiver<Command>,
    /// Commands taken from the queue that need the backend, or that concern
    /// a container whose registration is among them; applied in order after
    /// the current batch of events.
    deferred: VecDeque<Command>,
    /// A `Shutdown` was taken (or the `Engine` is gone): take no more.
    stopping: bool,
    containers: HashMap<ContainerKey, Container>,
    sources: HashMap<SourceId, SourceRoute>,
    clients: HashMap<ClientId, AttachClient>,
    next_client_id: ClientId,
    client_of_sink: HashMap<SinkId, ClientId>,
    /// Clients to flush, close or drop after the current batch.
    scheduled: Vec<ClientId>,
    /// Engine-wide count of dropped attach clients.
    attach_drops: Arc<AtomicU64>,
    timestamps: TimestampCache,
    /// Counts backend waits (see `Container::note_output`).
    batch: u64,
    /// The log ends a ledger commit records, reused for every chunk.
    log_ends: Vec<LogEnd>,
    events: UnboundedSender<EngineEvent>,
    assignments: Arc<Mutex<Assignments>>,
}

pub struct Worker<B: Backend> {
    // Declared first so that it is dropped first: the backend's in-flight
    // operations are cancelled before anything else goes.
    backend: B,
    routing: Routing,
    /// What the metrics read about this worker.
    counters: Arc<WorkerCounters>,
    /// See `EngineConfig::batch_window`.
    batch_window: Duration,
    /// When the last chunk larger than [`LIGHT_CHUNK`] was routed, since the
    /// buffers were last given back (`None`: none since).
    heavy_output_at: Option<Instant>,
}

/// A read at least this large means a busy stream: the worker then reads
/// again at once instead of pausing for the batch window, so a default
/// 64 KiB pipe does not fill while the worker sleeps. A steady stream that
/// stays below it writes under 160 KB/s at the default 100 ms window; it
/// would need 640 KB/s to fill the pipe within one window.
pub(super) const BUSY_READ: usize = 16 * 1024;

/// A chunk up to this size touches only the first page of the read buffer
/// and of a log writer's encoding buffer, which stay resident anyway; a
/// larger one makes their other pages resident until the worker gives them
/// back ([`IDLE_MEMORY_RELEASE_AFTER`]).
const LIGHT_CHUNK: usize = 4096;

/// How long the pages a burst made resident (read buffer, log writers'
/// encoding buffers) are kept after the last chunk larger than
/// [`LIGHT_CHUNK`]: long enough that a stream writing a burst every few
/// seconds does not fault them in each time, short enough that a pod's
/// server is lean again soon after its container's start-up output.
pub(super) const IDLE_MEMORY_RELEASE_AFTER: Duration = Duration::from_secs(10);

/// What one backend wait brought, to decide whether the next read may wait
/// for the batch window.
#[derive(Default)]
struct BatchLoad {
    /// Some output was routed.
    data: bool,
    /// A chunk was larger than [`LIGHT_CHUNK`].
    heavy: bool,
    /// Something in the batch must not wait: a command, an EOF (an exit
    /// file waits on it), an attach socket event or a busy read. (Whether a
    /// container is interactive is looked at in `pause_for_batch`, for all
    /// of them.)
    urgent: bool,
}

impl BatchLoad {
    fn may_coalesce(&self) -> bool {
        self.data && !self.urgent
    }
}

impl<B: Backend> Worker<B> {
    pub fn new(
        worker_index: usize,
        backend: B,
        commands: mpsc::Receiver<Command>,
        events: UnboundedSender<EngineEvent>,
        assignments: Arc<Mutex<Assignments>>,
        attach_drops: Arc<AtomicU64>,
    ) -> Worker<B> {
        Worker {
            backend,
            routing: Routing {
                worker_index,
                commands,
                deferred: VecDeque::new(),
                stopping: false,
                containers: HashMap::new(),
                sources: HashMap::new(),
                clients: HashMap::new(),
                next_client_id: 0,
                client_of_sink: HashMap::new(),
                scheduled: Vec::new(),
                attach_drops,
                timestamps: TimestampCache::new(),
                batch: 0,
                log_ends: Vec::with_capacity(MAX_LOG_ENDS),
                events,
                assignments,
                attach_done_packet: true,
            },
            counters: Arc::default(),
            batch_window: Duration::ZERO,
            heavy_output_at: None,
        }
    }

    /// Counts into `counters` (read by `Engine::worker_stats`).
    pub fn with_counters(mut self, counters: Arc<WorkerCounters>) -> Worker<B> {
        self.counters = counters;
        self
    }

    /// Whether attach clients get the done packet at the end of output
    /// (see `EngineConfig::attach_done_packet`).
    pub fn with_attach_done_packet(mut self, send: bool) -> Worker<B> {
        self.routing.attach_done_packet = send;
        self
    }

    /// Lets light output accumulate for `window` between reads (zero: never).
    pub fn with_batch_window(mut self, window: Duration) -> Worker<B> {
        self.batch_window = window;
        self
    }

    /// Runs until a `Shutdown` command (or until the `Engine` is gone).
    pub fn run(mut self) {
        let mut consecutive_failures = 0u32;
        loop {
            let deadline = [
                self.routing.next_linger_deadline(),
                self.idle_memory_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout =
                deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            let routing = &mut self.routing;
            routing.batch += 1;
            let mut load = BatchLoad::default();
            let wait_started = Instant::now();
            let waited = self.backend.wait(timeout, &mut |event| match event {
                BackendEvent::Wake => {
                    load.urgent = true;
                    routing.take_commands();
                }
                BackendEvent::Data { source, bytes } => {
                    load.urgent |= routing.take_commands() || bytes.len() >= BUSY_READ;
                    load.data = true;
                    load.heavy |= bytes.len() > LIGHT_CHUNK;
                    routing.on_data(source, bytes);
                }
                BackendEvent::Eof { source, error } => {
                    load.urgent = true;
                    routing.on_eof(source, error);
                }
                BackendEvent::Writable { sink } => {
                    load.urgent = true;
                    routing.on_writable(sink);
                }
                BackendEvent::SinkFailed { sink, error } => {
                    load.urgent = true;
                    routing.on_sink_failed(sink, error);
                }
                BackendEvent::PipeResized { source, capacity } => {
                    routing.on_pipe_resized(source, capacity);
                }
            });
            bump(&self.counters.wakeups, 1);
            if load.data {
                bump(&self.counters.batches, 1);
            }
            let waited_ok = waited.is_ok();
            match waited {
                Ok(()) => consecutive_failures = 0,
                // Usually transient (ENOMEM, a full completion queue); the
                // completions that did arrive were handled, so try again, but
                // do not spin forever on a backend that is broken for good.
                Err(err) if consecutive_failures < MAX_CONSECUTIVE_WAIT_FAILURES => {
                    consecutive_failures += 1;
                    tracing::warn!(worker = self.routing.worker_index, "engine wait: {err}");
                }
                Err(err) => {
                    tracing::error!(
                        worker = self.routing.worker_index,
                        "engine backend keeps failing, stopping the worker: {err}"
                    );
                    break;
                }
            }
            if load.heavy {
                self.heavy_output_at = Some(Instant::now());
            }
            // Output that comes in bursts more than a window apart (a pod's
            // one container logging now and then) gains nothing from a
            // pause: the burst usually came in one piece, and a pause would
            // add a wake-up to each. A wait that ended within a window (the
            // pipes held output again right after the last batch or pause:
            // many containers, or a steady stream of small writes) shows
            // output worth letting accumulate.
            let frequent = wait_started.elapsed() < self.batch_window;
            if frequent && load.may_coalesce() && waited_ok {
                self.pause_for_batch();
            }
            if !self.apply_deferred_commands() {
                break;
            }
            self.routing.service_clients(&mut self.backend);
            self.routing.drop_stalled_lingering(&mut self.backend);
            if self
                .idle_memory_deadline()
                .is_some_and(|due| due <= Instant::now())
            {
                self.backend.release_idle_memory();
                self.routing.release_idle_memory();
                self.heavy_output_at = None;
            }
        }
        self.routing.flush_all();
        self.routing.close_all_clients(&mut self.backend);
    }

    /// Wake-up coalescing: after a batch of light, unwatched output, sleeps
    /// for the batch window (a command ends it early) so that the next wait
    /// takes the output of every container that wrote meanwhile in one
    /// wake-up. The bytes wait in the kernel's pipes, not in ringmon.
    ///
    /// The pause holds back every source of the worker, so it is skipped
    /// while any of its containers is interactive, not only those that
    /// wrote in this batch: an attached shell's echo must not wait for a
    /// neighbour's window.
    fn pause_for_batch(&mut self) {
        if self.batch_window.is_zero()
            || self.routing.take_commands()
            || !self.routing.deferred.is_empty()
            || !self.routing.scheduled.is_empty()
            || self
                .routing
                .containers
                .values()
                .any(Container::is_interactive)
        {
            return;
        }
        self.backend.pause(self.batch_window);
    }

    /// When the pages a burst made resident are given back, if it did.
    fn idle_memory_deadline(&self) -> Option<Instant> {
        self.heavy_output_at
            .map(|at| at + IDLE_MEMORY_RELEASE_AFTER)
    }

    /// Applies the commands that had to wait for the backend; false once the
    /// worker must stop.
    fn apply_deferred_commands(&mut self) -> bool {
        self.routing.take_commands();
        while let Some(command) = self.routing.deferred.pop_front() {
            match command {
                Command::Register(registration, counters) => {
                    self.register(registration, counters, false)
                }
                Command::RegisterPending(registration, counters) => {
                    self.register(registration, counters, true)
                }
                Command::AddSources { key, sources } => {
                    if let Some(container) = self.routing.containers.get_mut(&key) {
                        // The pending source is released below.
                        container.open_sources -= 1;
                        self.add_sources(key, sources);
                    }
                    self.routing.finish_if_drained(key);
                }
                Command::Attach { key, client } => self.routing.attach(key, client),
                Command::ReopenLogs { key, reply } => {
                    let _ = reply.send(self.routing.reopen_logs(key));
                }
                Command::AttachListener { key, id, listener } => {
                    self.routing.add_attach_listener(key, id, listener);
                }
                Command::Shutdown => return false,
            }
        }
        true
    }

    /// Starts serving a container; `pending`: its sources come later.
    fn register(
        &mut self,
        registration: Registration,
        counters: Arc<ContainerCounters>,
        pending: bool,
    ) {
        let Registration { key, sources, logs } = registration;
        self.routing.containers.insert(
            key,
            Container {
                open_sources: usize::from(pending),
                counters,
                logs: logs.into_iter().map(LogSink::new).collect(),
                attach_clients: Vec::new(),
                attach_listeners: Vec::new(),
                exec_session: pending,
                batch: 0,
                streams_in_batch: 0,
                interleaving_until: None,
            },
        );
        self.add_sources(key, sources);
        self.routing.finish_if_drained(key);
    }

    fn add_sources(&mut self, key: ContainerKey, sources: Vec<StreamSource>) {
        let routing = &mut self.routing;
        // The container's ledgers (one, shared by its journals).
        let mut ledgers: Vec<Arc<Ledger>> = Vec::new();
        for source in sources {
            let packet_type = match (source.kind, source.stream) {
                (SourceKind::Pty, _) | (SourceKind::Pipe, StreamKind::Stdout) => PACKET_STDOUT,
                (SourceKind::Pipe, StreamKind::Stderr) => PACKET_STDERR,
            };
            let capacity = match source.kind {
                SourceKind::Pipe => crate::sys::fd::pipe_capacity(source.fd.as_fd()).ok(),
                SourceKind::Pty => None,
            };
            if let (Some(capacity), Some(container)) = (capacity, routing.containers.get(&key)) {
                container
                    .counters
                    .stream(source.stream)
                    .pipe_size
                    .store(capacity as u64, Ordering::Relaxed);
            }
            let journal = match (source.kind, source.journal) {
                (SourceKind::Pipe, journal) => journal,
                (SourceKind::Pty, Some(_)) => {
                    // A pty master cannot be spliced: read it as always.
                    tracing::warn!(key, "a journal for a pty source, ignored");
                    None
                }
                (SourceKind::Pty, None) => None,
            };
            let ledger = journal
                .as_ref()
                .map(|journal| (Arc::clone(journal.ledger()), journal.stream()));
            if let Some((ledger, _)) = &ledger {
                if !ledgers.iter().any(|known| Arc::ptr_eq(known, ledger)) {
                    ledgers.push(Arc::clone(ledger));
                }
            }
            match self.backend.add_source(source.fd, source.kind, journal) {
                Ok(id) => {
                    routing.sources.insert(
                        id,
                        SourceRoute {
                            key,
                            stream: source.stream,
                            packet_type,
                            ledger,
                        },
                    );
                    if let Some(container) = routing.containers.get_mut(&key) {
                        container.open_sources += 1;
                    }
                }
                Err(err) => {
                    // The fd is closed; the container must still drain.
                    tracing::error!(key, stream = source.stream.as_str(), "engine source: {err}");
                }
            }
        }
        // Where the logs start out, so that a kill before the first commit
        // still finds them in the ledger: a record written and not
        // committed then is cut on resume, not logged twice.
        if let Some(container) = routing.containers.get(&key) {
            for ledger in &ledgers {
                record_log_ends(ledger, &container.logs);
            }
        }
    }
}

impl Routing {
    /// Takes every queued command; applies those that need no backend at
    /// once (unless they must stay behind a deferred registration of their
    /// container) and defers the rest. True if there was any.
    fn take_commands(&mut self) -> bool {
        let mut took = false;
        while !self.stopping {
            let command = match self.commands.try_recv() {
                Ok(command) => command,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => Command::Shutdown,
            };
            took = true;
            match command {
                Command::Attach { key, client } if !self.registration_deferred(key) => {
                    self.attach(key, client);
                }
                Command::ReopenLogs { key, reply } if !self.registration_deferred(key) => {
                    let _ = reply.send(self.reopen_logs(key));
                }
                Command::AttachListener { key, id, listener }
                    if !self.registration_deferred(key) =>
                {
                    self.add_attach_listener(key, id, listener);
                }
                Command::Shutdown => {
                    self.stopping = true;
                    self.deferred.push_back(Command::Shutdown);
                }
                command => self.deferred.push_back(command),
            }
        }
        took
    }

    fn registration_deferred(&self, key: ContainerKey) -> bool {
        self.deferred
            .iter()
            .any(|command| {
                matches!(command, Command::Register(r, _) | Command::RegisterPending(r, _) if r.key == key)
            })
    }

    /// Adds an attach client to `key`, or, if `key` is not (or no longer)
    /// served here, queues the done packet for it at once.
    fn attach(&mut self, key: ContainerKey, client: OwnedFd) {
        let id = self.next_client_id;
        self.next_client_id += 1;
        if self
            .containers
            .get(&key)
            .is_some_and(|c| c.attach_clients.len() >= MAX_ATTACH_CLIENTS)
        {
            self.forget_hung_up_clients(key);
        }
        if self
            .containers
            .get(&key)
            .is_some_and(|c| c.attach_clients.len() >= MAX_ATTACH_CLIENTS)
        {
            // Closed without a done packet: the client sees the end of the
            // stream before any output. Nothing else changes.
            crate::sys::socket::hang_up(&client);
            tracing::warn!(
                key,
                "attach client refused: too many attach clients for this container \
                 (limit {MAX_ATTACH_CLIENTS})"
            );
            return;
        }
        let mut attach_client = AttachClient {
            key,
            counters: self.containers.get(&key).map(|c| c.counters.clone()),
            socket: ClientSocket::Held(client),
            queue: PacketQueue::default(),
            awaiting_writable: false,
            done_queued: false,
            last_progress: Instant::now(),
            failure: None,
            scheduled: false,
        };
        match self.containers.get_mut(&key) {
            Some(container) => {
                container.attach_clients.push(id);
                container
                    .counters
                    .attach_clients
                    .store(container.attach_clients.len() as u64, Ordering::Relaxed);
            }
            None => {
                if self.attach_done_packet {
                    attach_client.queue.push_done();
                }
                attach_client.done_queued = true;
            }
        }
        let done_queued = attach_client.done_queued;
        self.clients.insert(id, attach_client);
        if done_queued {
            self.schedule(id);
        }
    }

    /// Forgets `key`'s clients that closed their connection while their
    /// socket was held here. Such a client only shows up when output is
    /// sent to it; a container that is quiet would keep its slot taken.
    /// (A client registered with the backend is reported by it.)
    fn forget_hung_up_clients(&mut self, key: ContainerKey) {
        let Some(container) = self.containers.get_mut(&key) else {
            return;
        };
        let clients = &mut self.clients;
        container.attach_clients.retain(|id| {
            let hung_up = clients.get(id).is_some_and(|client| {
                matches!(&client.socket, ClientSocket::Held(fd)
                    if crate::sys::socket::peer_hung_up(fd.as_fd()))
            });
            if hung_up {
                clients.remove(id);
            }
            !hung_up
        });
        container
            .counters
            .attach_clients
            .store(container.attach_clients.len() as u64, Ordering::Relaxed);
    }

    /// Keeps `listener` with `key` (dropped at once if `key` is not here).
    fn add_attach_listener(&mut self, key: ContainerKey, id: AttachListenerId, listener: OwnedFd) {
        if let Some(container) = self.containers.get_mut(&key) {
            container.attach_listeners.push((id, listener));
        }
    }

    /// Accepts the connections pending on `key`'s attach listeners and adds
    /// them as clients, reporting each to the control thread (which reads
    /// its stdin). Called right before `key`'s output is routed: the
    /// control thread accepts too, but may not have been scheduled since a
    /// client connected, and output routed before a client is added is
    /// never sent to it.
    fn accept_pending_clients(&mut self, key: ContainerKey) {
        let Some(container) = self.containers.get(&key) else {
            return;
        };
        let mut accepted = Vec::new();
        for (id, listener) in &container.attach_listeners {
            loop {
                match crate::sys::socket::accept_nonblocking(listener) {
                    Ok(Some(conn)) => accepted.push((*id, conn)),
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(key, "attach accept on the worker: {err}");
                        break;
                    }
                }
            }
        }
        for (listener, conn) in accepted {
            match conn.try_clone() {
                Ok(stdin_side) => {
                    let _ = self.events.send(EngineEvent::AttachAccepted {
                        key,
                        listener,
                        client: stdin_side,
                    });
                }
                Err(err) => tracing::warn!(key, "attach client: duplicate socket: {err}"),
            }
            self.attach(key, conn);
        }
    }

    fn schedule(&mut self, id: ClientId) {
        if let Some(client) = self.clients.get_mut(&id) {
            if !client.scheduled {
                client.scheduled = true;
                self.scheduled.push(id);
            }
        }
    }

    fn on_data(&mut self, source: SourceId, bytes: &[u8]) {
        let Some(route) = self.sources.get(&source) else {
            return;
        };
        let (key, stream, packet_type) = (route.key, route.stream, route.packet_type);
        self.accept_pending_clients(key);
        let Some(container) = self.containers.get_mut(&key) else {
            return;
        };
        container.note_output(stream, self.batch);
        container.counters.note_chunk(stream, bytes);
        self.timestamps.refresh();
        let timestamps = &self.timestamps;
        let counters = &container.counters;
        for sink in &mut container.logs {
            let attempt = sink.attempt(bytes.len(), counters, |writer| {
                writer
                    .write_chunk(stream, bytes, timestamps)
                    .and_then(|()| writer.flush())
            });
            report_log_attempt(&self.events, key, attempt);
        }
        if let Some(SourceRoute {
            ledger: Some((ledger, journal_stream)),
            ..
        }) = self.sources.get(&source)
        {
            // The chunk is handled (logged, or discarded for a failed
            // writer, which a replay would not cure): record where the logs
            // end now, so that a worker that resumes the container neither
            // logs it again nor keeps a partial record written after this.
            self.log_ends.clear();
            self.log_ends.extend(
                container
                    .logs
                    .iter()
                    .filter_map(|sink| sink.writer.file_end()),
            );
            ledger.commit(*journal_stream, bytes.len(), &self.log_ends);
        }
        for &id in &container.attach_clients {
            let Some(client) = self.clients.get_mut(&id) else {
                continue;
            };
            client.queue.push_chunk(packet_type, bytes);
            if !client.scheduled {
                client.scheduled = true;
                self.scheduled.push(id);
            }
        }
    }

    fn on_eof(&mut self, source: SourceId, error: Option<std::io::Error>) {
        let Some(route) = self.sources.remove(&source) else {
            return;
        };
        if let Some(err) = error {
            tracing::warn!(
                key = route.key,
                stream = route.stream.as_str(),
                "reading container output: {err}"
            );
        }
        if let Some(container) = self.containers.get_mut(&route.key) {
            container.open_sources -= 1;
            self.timestamps.refresh();
            let timestamps = &self.timestamps;
            let counters = &container.counters;
            let journaled = route.ledger.is_some();
            for sink in &mut container.logs {
                let attempt = sink.attempt(0, counters, |writer| {
                    writer.end_stream(route.stream, timestamps)?;
                    // A journaled stream's ends are recorded below, and must
                    // hold the record that closes an open line: a resume
                    // cuts each log back to its recorded end.
                    if journaled {
                        writer.flush()
                    } else {
                        Ok(())
                    }
                });
                report_log_attempt(&self.events, route.key, attempt);
            }
            if let Some((ledger, _)) = &route.ledger {
                // Both journals are between rounds (at position 0).
                record_log_ends(ledger, &container.logs);
            }
        }
        self.finish_if_drained(route.key);
    }

    fn on_pipe_resized(&mut self, source: SourceId, capacity: usize) {
        let Some(route) = self.sources.get(&source) else {
            return;
        };
        if let Some(container) = self.containers.get(&route.key) {
            container
                .counters
                .stream(route.stream)
                .pipe_size
                .store(capacity as u64, Ordering::Relaxed);
        }
    }

    fn on_writable(&mut self, sink: SinkId) {
        let Some(&id) = self.client_of_sink.get(&sink) else {
            return;
        };
        if let Some(client) = self.clients.get_mut(&id) {
            client.awaiting_writable = false;
        }
        self.schedule(id);
    }

    fn on_sink_failed(&mut self, sink: SinkId, error: std::io::Error) {
        let Some(&id) = self.client_of_sink.get(&sink) else {
            return;
        };
        if let Some(client) = self.clients.get_mut(&id) {
            client.awaiting_writable = false;
            client.failure = Some(format!(
                "watching the socket for writability failed: {error} ({} bytes queued)",
                client.queue.payload_len()
            ));
        }
        self.schedule(id);
    }

    /// Once every source of `key` hit EOF: flush its writers, drop its state
    /// (closing the log files), queue the done packet for its attach clients
    /// (sent after this batch; clients that cannot take it yet linger
    /// without holding anything up), then report `Drained` — in this order,
    /// as the control thread writes exit files right after `Drained`.
    fn finish_if_drained(&mut self, key: ContainerKey) {
        if self.containers.get(&key).map(|c| c.open_sources) != Some(0) {
            return;
        }
        let Some(mut container) = self.containers.remove(&key) else {
            return;
        };
        self.flush_container(key, &mut container);
        let log_files = container
            .logs
            .iter()
            .filter_map(|sink| sink.writer.duplicate_file())
            .collect();
        // Its clients linger at most; none is attached to a live container.
        container
            .counters
            .attach_clients
            .store(0, Ordering::Relaxed);
        let now = Instant::now();
        for &id in &container.attach_clients {
            if let Some(client) = self.clients.get_mut(&id) {
                if self.attach_done_packet {
                    client.queue.push_done();
                }
                client.done_queued = true;
                client.last_progress = now;
            }
            self.schedule(id);
        }
        drop(container);
        if let Ok(mut assignments) = self.assignments.lock() {
            assignments.release(key, self.worker_index);
        }
        let _ = self.events.send(EngineEvent::Drained { key, log_files });
    }

    fn flush_container(&self, key: ContainerKey, container: &mut Container) {
        let counters = &container.counters;
        for sink in &mut container.logs {
            if sink.failure.is_some() {
                continue;
            }
            let attempt = sink.attempt(0, counters, LogWriter::flush);
            report_log_attempt(&self.events, key, attempt);
        }
    }

    /// Reopens every writer of `key`. A writer that failed earlier gets a
    /// fresh file too, and is used again if that works (rotation is the
    /// usual cure for a full or removed log); its failure is then reported
    /// again should it recur.
    fn reopen_logs(&mut self, key: ContainerKey) -> Result<(), String> {
        let Some(container) = self.containers.get_mut(&key) else {
            return Ok(());
        };
        let mut errors = Vec::new();
        for sink in &mut container.logs {
            match sink.writer.reopen() {
                Ok(()) => sink.failure = None,
                // The writer keeps its old (renamed) file and stays usable.
                Err(err) => errors.push(err.to_string()),
            }
        }
        // A journaled container's ledger must name the new files at once: a
        // resume cuts back only the files it names, so a round written to a
        // new file and lost before its commit would otherwise stay and be
        // logged again. Commands run between rounds: the logs hold exactly
        // what the ledger committed.
        let ledger = self
            .sources
            .values()
            .find(|route| route.key == key)
            .and_then(|route| route.ledger.as_ref());
        if let Some((ledger, _)) = ledger {
            record_log_ends(ledger, &container.logs);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Gives back the encoding buffers' pages that a burst made resident.
    fn release_idle_memory(&mut self) {
        for container in self.containers.values_mut() {
            for sink in &mut container.logs {
                sink.writer.release_idle_memory();
            }
        }
    }

    fn flush_all(&mut self) {
        let mut containers = std::mem::take(&mut self.containers);
        for (key, container) in &mut containers {
            self.flush_container(*key, container);
        }
    }

    /// Flushes every scheduled attach client without blocking; arms a
    /// writability notification for those the socket could not take, closes
    /// those that sent their done packet and drops those over the queue
    /// limit or whose socket failed.
    fn service_clients(&mut self, backend: &mut dyn Backend) {
        let now = Instant::now();
        for id in std::mem::take(&mut self.scheduled) {
            let Some(client) = self.clients.get_mut(&id) else {
                continue;
            };
            client.scheduled = false;
            if let Some(reason) = client.failure.take() {
                self.drop_client(id, reason, backend);
                continue;
            }
            if !client.awaiting_writable {
                let socket = match &client.socket {
                    ClientSocket::Held(fd) => fd.as_fd(),
                    ClientSocket::Registered(sink) => backend.sink_fd(*sink),
                };
                match client.queue.flush(socket) {
                    Ok(progress) if progress.sent_any => client.last_progress = now,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                        // The client hung up (a detach): not a policy drop.
                        tracing::debug!(key = client.key, "attach client detached");
                        self.close_client(id, Release::PeerGone, backend);
                        continue;
                    }
                    Err(errno) => {
                        let reason = format!(
                            "sending failed: {} ({} bytes queued)",
                            errno.desc(),
                            client.queue.payload_len()
                        );
                        self.drop_client(id, reason, backend);
                        continue;
                    }
                }
            }
            if client.queue.is_empty() {
                if client.done_queued {
                    self.close_client(id, Release::HangUp, backend);
                }
                continue;
            }
            if client.queue.payload_len() > ATTACH_QUEUE_LIMIT {
                let reason = format!(
                    "not reading: {} bytes queued, over the limit of {ATTACH_QUEUE_LIMIT}",
                    client.queue.payload_len()
                );
                self.drop_client(id, reason, backend);
                continue;
            }
            if !client.awaiting_writable {
                if let Err(err) =
                    Self::watch_writable(client, id, backend, &mut self.client_of_sink)
                {
                    let reason = format!(
                        "cannot watch the socket for writability: {err} ({} bytes queued)",
                        client.queue.payload_len()
                    );
                    self.drop_client(id, reason, backend);
                }
            }
        }
    }

    /// Hands the client's socket to the backend (first time only) and arms
    /// its writability notification.
    fn watch_writable(
        client: &mut AttachClient,
        id: ClientId,
        backend: &mut dyn Backend,
        client_of_sink: &mut HashMap<SinkId, ClientId>,
    ) -> std::io::Result<()> {
        let sink = match &client.socket {
            ClientSocket::Registered(sink) => *sink,
            ClientSocket::Held(_) => {
                let ClientSocket::Held(fd) =
                    std::mem::replace(&mut client.socket, ClientSocket::Registered(SinkId(0)))
                else {
                    unreachable!("matched as held above");
                };
                let sink = backend.add_sink(fd);
                client.socket = ClientSocket::Registered(sink);
                client_of_sink.insert(sink, id);
                sink
            }
        };
        backend.want_writable(sink)?;
        client.awaiting_writable = true;
        Ok(())
    }

    /// Drops lingering clients that made no progress for
    /// `ATTACH_LINGER_TIMEOUT`.
    fn drop_stalled_lingering(&mut self, backend: &mut dyn Backend) {
        if self.clients.is_empty() {
            return;
        }
        let now = Instant::now();
        let stalled: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, client)| {
                client.is_lingering()
                    && now.duration_since(client.last_progress) >= ATTACH_LINGER_TIMEOUT
            })
            .map(|(&id, _)| id)
            .collect();
        for id in stalled {
            let queued = self.clients[&id].queue.payload_len();
            let reason = format!(
                "no progress for {} s after the container's output ended ({queued} bytes queued)",
                ATTACH_LINGER_TIMEOUT.as_secs()
            );
            self.drop_client(id, reason, backend);
        }
    }

    /// When the earliest lingering client times out, if any lingers.
    fn next_linger_deadline(&self) -> Option<Instant> {
        self.clients
            .values()
            .filter(|client| client.is_lingering())
            .map(|client| client.last_progress + ATTACH_LINGER_TIMEOUT)
            .min()
    }

    /// Disconnects a client by policy or failure, and reports it.
    fn drop_client(&mut self, id: ClientId, reason: String, backend: &mut dyn Backend) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        let key = client.key;
        if let Some(counters) = &client.counters {
            bump(&counters.attach_drops, 1);
        }
        self.release_client(id, client, Release::HangUp, backend);
        let dropped_total = self.attach_drops.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.events.send(EngineEvent::AttachClientDropped {
            key,
            dropped_total,
            reason,
        });
    }

    /// Disconnects a client that is done, detached, or at shutdown.
    fn close_client(&mut self, id: ClientId, how: Release, backend: &mut dyn Backend) {
        if let Some(client) = self.clients.remove(&id) {
            self.release_client(id, client, how, backend);
        }
    }

    fn release_client(
        &mut self,
        id: ClientId,
        client: AttachClient,
        how: Release,
        backend: &mut dyn Backend,
    ) {
        if let Some(container) = self.containers.get_mut(&client.key) {
            container.attach_clients.retain(|&other| other != id);
            container
                .counters
                .attach_clients
                .store(container.attach_clients.len() as u64, Ordering::Relaxed);
        }
        match client.socket {
            ClientSocket::Held(fd) => how.apply(fd.as_fd()),
            ClientSocket::Registered(sink) => {
                how.apply(backend.sink_fd(sink));
                self.client_of_sink.remove(&sink);
                backend.remove_sink(sink);
            }
        }
    }

    fn close_all_clients(&mut self, backend: &mut dyn Backend) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            self.close_client(id, Release::HangUp, backend);
        }
    }
}

/// Writes where `logs` end now into a journaled container's ledger, outside
/// a round (nothing logged and not committed).
fn record_log_ends(ledger: &Ledger, logs: &[LogSink]) {
    ledger.set_ends(
        logs.iter()
            .filter_map(|sink| sink.writer.file_end())
            .collect(),
    );
}

/// Reports a log writer's failure or recovery to the control thread.
fn report_log_attempt(
    events: &UnboundedSender<EngineEvent>,
    key: ContainerKey,
    attempt: LogAttempt,
) {
    let event = match attempt {
        LogAttempt::Done | LogAttempt::Skipped => return,
        LogAttempt::Failed(err) => EngineEvent::LogError {
            key,
            message: err.to_string(),
        },
        LogAttempt::Resumed { dropped } => EngineEvent::LogResumed {
            key,
            dropped_bytes: dropped,
        },
    };
    let _ = events.send(event);
}

/// How the engine lets go of an attach socket. Closing our fd alone is not
/// enough for the client to see EOF: the control thread keeps its own
/// descriptor of the same socket to read the client's stdin.
#[derive(Clone, Copy)]
enum Release {
    /// The client hung up (EPIPE/ECONNRESET on send): end our direction
    /// only; the control thread still reads whatever input the client sent
    /// before it left, up to its EOF.
    PeerGone,
    /// The client is still there (done, dropped, or shutdown): end both
    /// directions and discard unread input, so that our last close cannot
    /// turn into ECONNRESET ahead of the packets the client has yet to read
    /// (see `sys::socket::hang_up`).
    HangUp,
}

impl Release {
    fn apply(self, socket: BorrowedFd<'_>) {
        match self {
            // ENOTCONN: the client is gone already, which is just as good.
            Release::PeerGone => {
                let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), Shutdown::Write);
            }
            Release::HangUp => crate::sys::socket::hang_up(socket),
        }
    }
}
