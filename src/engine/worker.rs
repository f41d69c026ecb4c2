//! One engine worker: a thread that owns a backend, the containers assigned
//! to it and their log writers, and routes every chunk read to the sinks.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use super::backend::{Backend, BackendEvent, SourceId};
use super::{Assignments, ContainerKey, EngineEvent, Registration};
use crate::log::{LogWriter, StreamKind, TimestampCache};

/// Failed backend waits in a row after which a worker gives up (its handle
/// then reports `WorkerGone`).
const MAX_CONSECUTIVE_WAIT_FAILURES: u32 = 1000;

/// What the `Engine` handle asks a worker to do.
pub enum Command {
    Register(Registration),
    ReopenLogs {
        key: ContainerKey,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Flush every writer and exit.
    Shutdown,
}

/// A log writer and whether it already failed (then it is skipped: output
/// keeps being drained and discarded for it, the error was reported once).
struct Sink {
    writer: LogWriter,
    failed: bool,
}

struct Container {
    /// Sources that have not reached EOF yet.
    open_sources: usize,
    sinks: Vec<Sink>,
}

/// Everything but the backend, so that the backend's event callback can
/// borrow it mutably while the backend itself is borrowed.
struct Routing {
    worker_index: usize,
    containers: HashMap<ContainerKey, Container>,
    sources: HashMap<SourceId, (ContainerKey, StreamKind)>,
    timestamps: TimestampCache,
    events: UnboundedSender<EngineEvent>,
    assignments: Arc<Mutex<Assignments>>,
}

pub struct Worker<B: Backend> {
    backend: B,
    commands: mpsc::Receiver<Command>,
    routing: Routing,
}

impl<B: Backend> Worker<B> {
    pub fn new(
        worker_index: usize,
        backend: B,
        commands: mpsc::Receiver<Command>,
        events: UnboundedSender<EngineEvent>,
        assignments: Arc<Mutex<Assignments>>,
    ) -> Worker<B> {
        Worker {
            backend,
            commands,
            routing: Routing {
                worker_index,
                containers: HashMap::new(),
                sources: HashMap::new(),
                timestamps: TimestampCache::new(),
                events,
                assignments,
            },
        }
    }

    /// Runs until a `Shutdown` command (or until the `Engine` is gone).
    pub fn run(mut self) {
        let mut consecutive_failures = 0u32;
        loop {
            let mut woken = false;
            let routing = &mut self.routing;
            let waited = self.backend.wait(&mut |event| match event {
                BackendEvent::Wake => woken = true,
                BackendEvent::Data { source, bytes } => routing.on_data(source, bytes),
                BackendEvent::Eof { source, error } => routing.on_eof(source, error),
            });
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
            if woken && !self.handle_commands() {
                break;
            }
        }
        self.routing.flush_all();
    }

    /// Handles every queued command; false once the worker must stop.
    fn handle_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Register(registration)) => self.register(registration),
                Ok(Command::ReopenLogs { key, reply }) => {
                    let _ = reply.send(self.routing.reopen_logs(key));
                }
                Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn register(&mut self, registration: Registration) {
        let Registration { key, sources, logs } = registration;
        let routing = &mut self.routing;
        routing.containers.insert(
            key,
            Container {
                open_sources: 0,
                sinks: logs
                    .into_iter()
                    .map(|writer| Sink {
                        writer,
                        failed: false,
                    })
                    .collect(),
            },
        );
        for source in sources {
            match self.backend.add_source(source.fd, source.kind) {
                Ok(id) => {
                    routing.sources.insert(id, (key, source.stream));
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
        routing.finish_if_drained(key);
    }
}

impl Routing {
    fn on_data(&mut self, source: SourceId, bytes: &[u8]) {
        let Some(&(key, stream)) = self.sources.get(&source) else {
            return;
        };
        let Some(container) = self.containers.get_mut(&key) else {
            return;
        };
        self.timestamps.refresh();
        for sink in &mut container.sinks {
            if sink.failed {
                continue;
            }
            let written = sink
                .writer
                .write_chunk(stream, bytes, &self.timestamps)
                .and_then(|()| sink.writer.flush());
            if let Err(err) = written {
                sink.failed = true;
                let _ = self.events.send(EngineEvent::LogError {
                    key,
                    message: err.to_string(),
                });
            }
        }
    }

    fn on_eof(&mut self, source: SourceId, error: Option<std::io::Error>) {
        let Some((key, stream)) = self.sources.remove(&source) else {
            return;
        };
        if let Some(err) = error {
            tracing::warn!(
                key,
                stream = stream.as_str(),
                "reading container output: {err}"
            );
        }
        if let Some(container) = self.containers.get_mut(&key) {
            container.open_sources -= 1;
        }
        self.finish_if_drained(key);
    }

    /// Once every source of `key` hit EOF: flush its writers, drop its state
    /// (closing the log files), then report `Drained` — in this order, as the
    /// control thread writes exit files right after `Drained`.
    fn finish_if_drained(&mut self, key: ContainerKey) {
        if self.containers.get(&key).map(|c| c.open_sources) != Some(0) {
            return;
        }
        let Some(mut container) = self.containers.remove(&key) else {
            return;
        };
        self.flush_container(key, &mut container);
        drop(container);
        if let Ok(mut assignments) = self.assignments.lock() {
            assignments.release(key, self.worker_index);
        }
        let _ = self.events.send(EngineEvent::Drained { key });
    }

    fn flush_container(&self, key: ContainerKey, container: &mut Container) {
        for sink in &mut container.sinks {
            if sink.failed {
                continue;
            }
            if let Err(err) = sink.writer.flush() {
                sink.failed = true;
                let _ = self.events.send(EngineEvent::LogError {
                    key,
                    message: err.to_string(),
                });
            }
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
        for sink in &mut container.sinks {
            match sink.writer.reopen() {
                Ok(()) => sink.failed = false,
                // The writer keeps its old (renamed) file and stays usable.
                Err(err) => errors.push(err.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn flush_all(&mut self) {
        let mut containers = std::mem::take(&mut self.containers);
        for (key, container) in &mut containers {
            self.flush_container(*key, container);
        }
    }
}
