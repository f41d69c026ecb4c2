//! File-descriptor flags and pipe capacity.

use std::io;
use std::os::fd::BorrowedFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// Sets `O_NONBLOCK` on the open file description of `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// The capacity of the pipe `fd`, in bytes.
pub fn pipe_capacity(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(fcntl(fd, FcntlArg::F_GETPIPE_SZ)? as usize)
}

/// Sets the capacity of the pipe `fd` (the kernel rounds it up to a power of
/// two pages); returns the capacity it got.
pub fn set_pipe_capacity(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let bytes = i32::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(fcntl(fd, FcntlArg::F_SETPIPE_SZ(bytes))? as usize)
}

/// `fs.pipe-max-size`: the largest capacity an unprivileged process may set.
pub fn pipe_max_size() -> io::Result<usize> {
    let text = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pipe-max-size {text:?}"),
        )
    })
}

/// Reads what is buffered in `fd` (a pipe whose writers are gone or idle)
/// without blocking, up to `max` bytes, as lossy UTF-8: the diagnostics a
/// failed runtime or pause process left on its stderr.
pub fn read_available(fd: BorrowedFd<'_>, max: usize) -> String {
    let _ = set_nonblocking(fd);
    let mut buf = vec![0u8; max];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(fd, &mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// One read from `fd` that never blocks: `Ok(0)` at EOF, `WouldBlock` when
/// nothing is buffered.
pub fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    set_nonblocking(fd)?;
    nix::unistd::read(fd, buf).map_err(io::Error::from)
}
