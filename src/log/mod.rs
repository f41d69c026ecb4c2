//! Container log drivers: pure encoders (`cri`, `json`) and the file writers
//! that the engine workers feed.
//!
//! INTERFACE CONTRACT (used by `core` and `engine`; keep these signatures).

use std::path::PathBuf;

pub mod cri;
pub mod json;
pub mod timestamp;

pub use timestamp::TimestampCache;

/// Which container stream a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// The log formats of `LogDriver.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Cri,
    Json,
    Journald,
}

/// One requested log driver, already validated by the RPC layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSpec {
    pub format: LogFormat,
    /// Absolute path (CRI, JSON); empty for journald.
    pub path: PathBuf,
    /// Bytes; 0 = unlimited.
    pub max_size: u64,
}

/// Errors of the log layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// open log file path '{path}': {source}
    #[error("open log file path '{path}': {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// write log file '{path}': {source}
    #[error("write log file '{path}': {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The driver is not available in this build.
    #[error("log driver {0:?} is not supported yet")]
    Unsupported(LogFormat),
}

/// An open log destination. Owned by exactly one engine worker once the
/// container is registered; opened on the control thread so that an open
/// error reaches the RPC caller.
pub struct LogWriter {
    // filled in by the log module implementation
    _private: (),
}

impl LogWriter {
    /// Opens (create + truncate) the destination described by `spec`.
    pub fn open(spec: &LogSpec) -> Result<LogWriter, LogError> {
        let _ = spec;
        todo!()
    }

    /// Encodes one chunk read from `stream` and writes it out. `ts` is the
    /// worker's timestamp cache, refreshed by the caller once per chunk.
    pub fn write_chunk(
        &mut self,
        stream: StreamKind,
        chunk: &[u8],
        ts: &TimestampCache,
    ) -> Result<(), LogError> {
        let _ = (stream, chunk, ts);
        todo!()
    }

    /// Flushes buffered records to the file.
    pub fn flush(&mut self) -> Result<(), LogError> {
        todo!()
    }

    /// Reopens the same path with truncation (kubelet rotation), resetting the
    /// size counter. No-op for journald.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        todo!()
    }
}
