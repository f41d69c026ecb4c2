//! Unix socket helpers: long-path binds and fd passing.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// A parent directory kept open so that a socket path longer than
/// `sun_path` (108 bytes) can be reached as `/proc/self/fd/<dirfd>/<name>`.
pub struct LongPath {
    _dir: std::fs::File,
    short: PathBuf,
}

impl LongPath {
    /// Creates the parent directory if missing and opens it.
    pub fn new(path: &Path) -> io::Result<LongPath> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name")
        })?;
        std::fs::create_dir_all(parent)?;
        let dir = std::fs::File::open(parent)?;
        let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(LongPath { _dir: dir, short })
    }

    /// The path to hand to bind/connect while this value lives.
    pub fn path(&self) -> &Path {
        &self.short
    }
}

/// Binds a SOCK_STREAM listener at `path` using the long-path rule.
pub fn bind_stream(path: &Path) -> io::Result<UnixListener> {
    let long = LongPath::new(path)?;
    UnixListener::bind(long.path())
}

/// Receives one message carrying file descriptors (SCM_RIGHTS) and returns
/// them as owned fds. The payload is ignored.
pub fn recv_fds(stream: &UnixStream) -> io::Result<Vec<OwnedFd>> {
    let mut payload = [0u8; 64];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        stream.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel installed these descriptors in our table
                // for this message; nothing else refers to them yet.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(fds)
}
