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

/// Takes ownership of descriptor `raw`, which this process inherited (a
/// number its caller named, such as conmon's `_OCI_SYNCPIPE`), and marks it
/// close-on-exec so that no child inherits it by accident. Fails if `raw`
/// is not an open descriptor, or is one of 0-2.
pub fn take_inherited(raw: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if raw < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is stdin, stdout or stderr"),
        ));
    }
    // SAFETY: F_GETFD only reads the flags of `raw`; an fd that is not open
    // fails with EBADF and nothing is taken.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is open (checked above) and was inherited: no object of
    // this process owns it, and the caller takes it once.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    fcntl(&fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(fd)
}

/// Reads one byte from `fd`, waiting at most `timeout`. `Ok(None)`: end of
/// file (the writer went away without writing). Blocking; for the start of
/// a process, before any runtime exists.
pub fn read_byte_within(
    fd: BorrowedFd<'_>,
    timeout: std::time::Duration,
) -> io::Result<Option<u8>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing to read within {}s", timeout.as_secs()),
            ));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let mut byte = [0u8; 1];
        match nix::unistd::read(fd, &mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `bytes` to `fd` (a pipe or a socket of either type) with
/// plain `write(2)` calls: one call for a message that fits, which keeps it
/// one record on a SOCK_SEQPACKET socket.
pub fn write_all(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        match nix::unistd::write(fd, &bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
