//! The stdio engine: worker threads that move container output into log
//! writers (and, later, attach clients).
//!
//! INTERFACE CONTRACT (used by `core`; keep these signatures).

use std::os::fd::OwnedFd;

use crate::log::{LogWriter, StreamKind};

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
}

/// What workers report to the control thread.
#[derive(Debug)]
pub enum EngineEvent {
    /// Every source of `key` reached EOF and everything read was written to
    /// (and flushed into) every log writer. Sent exactly once per key; the
    /// worker has dropped the container's state (fds, log files) by then.
    Drained { key: ContainerKey },
    /// A log writer failed; the stream keeps being drained (never blocks the
    /// container) and the error is reported once per writer.
    LogError { key: ContainerKey, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Setting up a worker failed.
    #[error("engine worker setup: {0}")]
    Setup(String),
    /// The worker thread is gone.
    #[error("engine worker {0} is not running")]
    WorkerGone(usize),
}

/// Handle to the worker threads. `Send + Sync`; methods never block on I/O.
pub struct Engine {
    _private: (),
}

impl Engine {
    /// Starts the workers. Events go to `events`.
    pub fn start(
        config: EngineConfig,
        events: tokio::sync::mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<Engine, EngineError> {
        let _ = (config, events);
        todo!()
    }

    /// Name of the backend actually running ("io_uring" or "epoll").
    pub fn backend_name(&self) -> &'static str {
        todo!()
    }

    /// Hands a container's sources and log writers to a worker.
    pub fn register(&self, registration: Registration) -> Result<(), EngineError> {
        let _ = registration;
        todo!()
    }

    /// Reopens every log writer of `key`. Resolves to Ok if the key is
    /// unknown (already drained).
    pub fn reopen_logs(
        &self,
        key: ContainerKey,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let _ = key;
        todo!()
    }

    /// Stops the workers after they flushed every log writer.
    pub fn shutdown(&self) {
        todo!()
    }
}
