//! Adaptive pipe capacity: the monitor creates the containers' stdio pipes
//! with the kernel's default capacity (64 KiB) and grows one to
//! [`BUSY_PIPE_CAPACITY`] the first time a single read returns a full
//! default pipe ([`FULL_DEFAULT_PIPE`]), i.e. once the container has shown
//! that it writes faster than one wake-up of the worker drains.
//!
//! Why: with a 64 KiB pipe a busy producer fills it between two reads and
//! blocks, and both sides pay a wake-up per 64 KiB; at 1 MiB the worker
//! drains 16 reads per wake-up and the producer rarely blocks (measured
//! 1.6–2.6× throughput for one stream). Idle and chatty-but-slow containers
//! never fill a read and keep the default, so density does not pay for it.
//!
//! Kernel memory: a pipe holds one `struct pipe_buffer` (40 bytes) per page
//! of capacity (a 1 MiB pipe: 256 of them, 10 KiB) allocated at resize, and
//! data pages only while bytes are queued: a grown pipe that is drained
//! costs its 10 KiB array plus at most one cached page. A pipe is never
//! shrunk back (shrinking fails while more bytes are queued than fit, and
//! the cost of staying grown is that array). Growth beyond
//! `fs.pipe-max-size`, or past the per-user `pipe-user-pages-*` limits, is
//! refused by the kernel; the pipe then simply keeps its capacity.

use std::os::fd::BorrowedFd;

/// A read of at least this many bytes (the kernel's default pipe capacity)
/// found the pipe full: its producer outruns the worker.
pub const FULL_DEFAULT_PIPE: usize = 64 * 1024;

/// The capacity a busy pipe is grown to (capped by `fs.pipe-max-size`).
pub const BUSY_PIPE_CAPACITY: usize = 1024 * 1024;

/// Grows busy pipes; cheap to copy into every backend.
#[derive(Clone, Copy, Debug)]
pub struct PipeSizer {
    /// 0 disables growth.
    target: usize,
}

impl PipeSizer {
    /// Grows busy pipes to `bytes` (still capped by `fs.pipe-max-size`,
    /// read once here); 0 never grows anything (for measurements).
    pub fn with_target(bytes: usize) -> PipeSizer {
        let max = crate::sys::fd::pipe_max_size().unwrap_or(bytes);
        PipeSizer {
            target: bytes.min(max),
        }
    }

    /// Grows the pipe `fd` to the busy capacity unless it is that big
    /// already. Failure is harmless (the pipe keeps working) and only logged.
    /// Returns the capacity it grew the pipe to, if it did (for the pipe
    /// size metric).
    pub fn grow(&self, fd: BorrowedFd<'_>) -> Option<usize> {
        if self.target == 0 {
            return None;
        }
        match crate::sys::fd::pipe_capacity(fd) {
            Ok(capacity) if capacity >= self.target => None,
            _ => match crate::sys::fd::set_pipe_capacity(fd, self.target) {
                Ok(capacity) => {
                    tracing::debug!(capacity, "grew a busy container pipe");
                    Some(capacity)
                }
                Err(err) => {
                    tracing::debug!("growing a busy container pipe: {err}");
                    None
                }
            },
        }
    }
}
