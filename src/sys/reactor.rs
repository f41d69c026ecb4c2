//! Registration of owned descriptors with the tokio reactor.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Wraps an owned descriptor for readiness polling on the current runtime.
pub fn async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns an open descriptor, closes it only on drop, and
    // its `as_raw_fd` always returns that same descriptor, which is exactly
    // the contract `register_with_interest` requires.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}
