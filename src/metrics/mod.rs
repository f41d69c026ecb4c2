//! Prometheus metrics: what the engine's workers count as they work
//! (`engine::counters`), what the monitor holds, and the process itself,
//! read on demand when someone scrapes `GET /metrics` on `metrics.sock` or
//! `--metrics-address`.
//!
//! Nothing here runs unless someone scrapes: a scrape loads the workers'
//! relaxed atomics (no lock the workers take, no message to them), walks
//! the monitor's containers on the control thread and reads `/proc/self`.
//! Rendering ([`render`]) and the request parser ([`http`]) are pure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use crate::core::Monitor;
use crate::engine::WorkerStats;
use crate::stream::StreamServer;

pub mod http;
pub mod render;
pub mod server;

pub use render::render;

/// The file name of the metrics socket in the server's runtime dir.
pub const SOCKET_NAME: &str = "metrics.sock";

/// Errors of the metrics layer: a listener that could not be set up. None
/// of them stops the server (it serves without that listener).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics socket {path}: {source}")]
    BindSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--metrics-address {address}: bind: {source}")]
    BindAddress {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("--metrics-address {address}: local address of the bound listener: {source}")]
    LocalAddr {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything one scrape reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Monitored containers and the recently exited ones, by id.
    pub containers: Vec<ContainerSample>,
    pub workers: Vec<WorkerStats>,
    pub process: ProcessSample,
}

/// One container's counters at the time of the scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerSample {
    pub id: String,
    pub stdout: StreamSample,
    pub stderr: StreamSample,
    pub discarded_bytes: u64,
    pub log_write_errors: u64,
    pub attach_clients: u64,
    pub attach_drops: u64,
    /// Set once it exited.
    pub exit_code: Option<i32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSample {
    pub bytes: u64,
    pub lines: u64,
    /// 0: not a pipe (a terminal), or not known.
    pub pipe_size: u64,
}

/// The server process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    /// `None` when `/proc/self` could not be read.
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// Containers monitored now (exited ones not included).
    pub containers: u64,
    pub exec_sessions: u64,
    pub streaming_sessions: u64,
    /// Trace spans dropped (queue full, collector away); `None` without
    /// `--enable-tracing`.
    pub trace_spans_dropped: Option<u64>,
}

/// Where a scrape reads from; lives on the control thread.
pub struct Sources {
    pub monitor: Rc<Monitor>,
    pub streams: Rc<StreamServer>,
}

impl Sources {
    /// Reads every counter now.
    pub fn snapshot(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let listed = self.monitor.list_containers();
        let stream = |counters: &crate::engine::counters::StreamCounters| StreamSample {
            bytes: counters.bytes.load(Relaxed),
            lines: counters.lines.load(Relaxed),
            pipe_size: counters.pipe_size.load(Relaxed),
        };
        let containers: Vec<ContainerSample> = listed
            .iter()
            .map(|summary| {
                let counters = &summary.counters;
                ContainerSample {
                    id: summary.id.clone(),
                    stdout: stream(&counters.stdout),
                    stderr: stream(&counters.stderr),
                    discarded_bytes: counters.discarded_bytes.load(Relaxed),
                    log_write_errors: counters.log_write_errors.load(Relaxed),
                    attach_clients: counters.attach_clients.load(Relaxed),
                    attach_drops: counters.attach_drops.load(Relaxed),
                    exit_code: summary.exit.map(|exit| exit.code),
                }
            })
            .collect();
        let running = listed.iter().filter(|c| c.exit.is_none()).count();
        Snapshot {
            containers,
            workers: self.monitor.engine().worker_stats(),
            process: ProcessSample {
                resident_bytes: crate::sys::stats::resident_bytes().ok(),
                open_fds: crate::sys::stats::open_fds().ok(),
                containers: running as u64,
                exec_sessions: self.monitor.open_exec_sessions() as u64,
                streaming_sessions: self.streams.live_sessions() as u64,
                trace_spans_dropped: crate::otel::enabled().then(crate::otel::dropped_spans),
            },
        }
    }
}
