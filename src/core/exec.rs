//! execSyncContainer pieces (spec §3.3): the request and reply types, the
//! per-stream output cap and the reader that collects an exec process's
//! output on the control thread.
//!
//! Exec output never goes through the engine: it is not logged, it is small
//! and short-lived, and the caller wants it whole in one reply. Each stream
//! is read with non-blocking reads driven by the tokio reactor, so a slow
//! exec never blocks the control thread.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::Interest;

use super::CgroupManager;
use crate::sys;

/// Per-stream limit of collected output: a stream keeps at most
/// `OUTPUT_LIMIT - 1` bytes (spec §3.3 step 6).
pub const OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// Most execSync calls the server runs at once: each may hold two
/// [`OUTPUT_LIMIT`] buffers. Past it a call fails at once (an RPC error,
/// not an exit code) and leaves the running ones alone.
pub const MAX_CONCURRENT_EXEC_SYNC: usize = 64;

/// `exitCode` when the runtime failed to start the process.
pub const EXIT_RUNTIME_FAILED: i32 = -2;

/// `exitCode` when the process was killed at its deadline.
pub const EXIT_TIMED_OUT: i32 = -3;

/// Size of one read from an exec stream (the pipe's default capacity).
const CHUNK: usize = 64 * 1024;

/// A validated `execSyncContainer` request.
#[derive(Clone, Debug, Default)]
pub struct ExecSync {
    pub id: String,
    pub command: Vec<String>,
    /// `None`: no deadline (`timeoutSec = 0` on the wire).
    pub timeout: Option<Duration>,
    pub terminal: bool,
    /// Added to the runtime's environment (later entries win).
    pub env: Vec<(String, String)>,
    pub cgroup_manager: CgroupManager,
}

/// The reply to `execSyncContainer`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

impl ExecOutcome {
    /// The reply when the runtime could not start the process: not an RPC
    /// error, an exit code of -2 with no output.
    pub fn runtime_failed() -> ExecOutcome {
        ExecOutcome {
            exit_code: EXIT_RUNTIME_FAILED,
            ..ExecOutcome::default()
        }
    }
}

/// Collected output of one stream, capped as upstream caps it: the first
/// chunk that would make the buffer reach [`OUTPUT_LIMIT`] is dropped and
/// collection of that stream stops (later chunks are read and discarded, so
/// the process never blocks on a full pipe).
#[derive(Debug, Default)]
pub struct CappedOutput {
    buf: Vec<u8>,
    full: bool,
}

impl CappedOutput {
    pub fn push(&mut self, chunk: &[u8]) {
        if self.full {
            return;
        }
        if self.buf.len() + chunk.len() >= OUTPUT_LIMIT {
            self.full = true;
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Whether collection stopped at the limit.
    pub fn is_full(&self) -> bool {
        self.full
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// What kind of descriptor an exec stream is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStream {
    Pipe,
    /// A pty master: EIO means every slave fd is closed (end of output).
    Pty,
}

/// Reads `fd` until end of output, appending every chunk to `out`. Chunks
/// already collected stay in `out` if the future is dropped (deadline).
pub async fn collect(fd: OwnedFd, kind: ExecStream, out: &mut CappedOutput) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let fd = sys::reactor::async_fd(fd, Interest::READABLE)?;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| nix::unistd::read(f.get_ref(), &mut chunk).map_err(io::Error::from))
        {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => out.push(&chunk[..n]),
            Ok(Err(e)) if kind == ExecStream::Pty && e.raw_os_error() == Some(libc::EIO) => {
                return Ok(())
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_chunks_below_the_limit() {
        let mut o = CappedOutput::default();
        o.push(&vec![1u8; OUTPUT_LIMIT - 2]);
        o.push(b"x");
        assert!(!o.is_full());
        assert_eq!(o.into_bytes().len(), OUTPUT_LIMIT - 1);
    }

    #[test]
    fn cap_drops_the_chunk_that_would_reach_the_limit_and_stops() {
        let mut o = CappedOutput::default();
        o.push(&vec![1u8; OUTPUT_LIMIT - 4096]);
        o.push(&[2u8; 4096]); // would reach 16 MiB exactly: dropped
        assert!(o.is_full());
        o.push(b"y"); // would fit, but collection has stopped
        let b = o.into_bytes();
        assert_eq!(b.len(), OUTPUT_LIMIT - 4096);
        assert!(b.iter().all(|x| *x == 1));
    }

    #[test]
    fn cap_with_exactly_limit_minus_one_bytes_is_not_full() {
        let mut o = CappedOutput::default();
        o.push(&vec![0u8; OUTPUT_LIMIT - 1]);
        assert!(!o.is_full());
        o.push(b"z");
        assert!(o.is_full());
        assert_eq!(o.into_bytes().len(), OUTPUT_LIMIT - 1);
    }

    #[test]
    fn runtime_failure_reply() {
        let r = ExecOutcome::runtime_failed();
        assert_eq!(r.exit_code, -2);
        assert!(r.stdout.is_empty() && r.stderr.is_empty() && !r.timed_out);
    }

    fn run_local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn collect_reads_a_pipe_to_eof_past_the_cap() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::from(w);
            let block = vec![7u8; 1024 * 1024];
            for _ in 0..17 {
                f.write_all(&block).unwrap();
            }
        });
        let mut out = CappedOutput::default();
        run_local(collect(r, ExecStream::Pipe, &mut out)).unwrap();
        writer.join().unwrap(); // the writer never blocked for good
        assert!(out.is_full());
        let b = out.into_bytes();
        assert!(b.len() < OUTPUT_LIMIT && b.len() >= OUTPUT_LIMIT - CHUNK);
    }
}
