//! File-descriptor flags and pipe capacity.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

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

/// The descriptors above stderr a process inherited, taken once.
pub struct InheritedFds {
    /// The descriptors asked for by number, in the order asked; `None` for
    /// a number that is not open.
    pub named: Vec<Option<std::os::fd::OwnedFd>>,
    /// Every other descriptor above stderr that was open (what the caller
    /// passed on purpose after the named ones, such as podman's port
    /// reservation sockets, and whatever it leaked).
    pub others: Vec<std::os::fd::OwnedFd>,
}

/// Takes ownership of every descriptor above stderr this process holds,
/// the numbers in `named` separately, and marks them all close-on-exec so
/// that none reaches a child by accident. Fails if `named` repeats a
/// number or names 0-2, and on a second call: the descriptors are taken
/// exactly once, before anything else in the process opens one.
pub fn take_inherited_fds(named: &[std::os::fd::RawFd]) -> io::Result<InheritedFds> {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    for (i, fd) in named.iter().enumerate() {
        if *fd < 3 || named[..i].contains(fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {fd} named twice, or one of stdin, stdout and stderr"),
            ));
        }
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("inherited descriptors were taken already"));
    }
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &RawFd| *fd > 2)
        .collect();
    // The listing's own descriptor is closed now; test which are still
    // open (it was among them).
    let mut taken: Vec<(RawFd, OwnedFd)> = Vec::with_capacity(open.len());
    for fd in open {
        // SAFETY: F_GETFD only reads the flags of `fd`; a closed one fails.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            continue;
        }
        // SAFETY: `fd` is open, and no object of this process owns it: this
        // runs once (TAKEN), before the process opens descriptors of its
        // own, so every descriptor above 2 was inherited; each number is
        // taken once (the listing has no repeats).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        fcntl(&owned, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        taken.push((fd, owned));
    }
    let mut result = InheritedFds {
        named: Vec::with_capacity(named.len()),
        others: Vec::new(),
    };
    let mut by_number: std::collections::HashMap<RawFd, OwnedFd> = taken.into_iter().collect();
    for fd in named {
        result.named.push(by_number.remove(fd));
    }
    let mut others: Vec<(RawFd, OwnedFd)> = by_number.into_iter().collect();
    others.sort_by_key(|(fd, _)| *fd);
    result.others = others.into_iter().map(|(_, fd)| fd).collect();
    Ok(result)
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

/// Duplicates of this process's stdin, stdout and stderr (close-on-exec),
/// to hand them on after fds 0-2 themselves are replaced.
pub fn duplicate_stdio() -> io::Result<[std::os::fd::OwnedFd; 3]> {
    Ok([
        std::io::stdin().as_fd().try_clone_to_owned()?,
        std::io::stdout().as_fd().try_clone_to_owned()?,
        std::io::stderr().as_fd().try_clone_to_owned()?,
    ])
}
