//! Unix socket helpers: long-path binds and fd passing.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    accept4, bind, listen, recv, recvmsg, socket, AddressFamily, Backlog, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, UnixAddr,
};

/// A parent directory kept open so that a socket path longer than
/// `sun_path` (108 bytes) can be reached as `/proc/self/fd/<dirfd>/<name>`.
pub struct LongPath {
    _dir: std::fs::File,
    short: PathBuf,
}

impl LongPath {
    /// Creates the parent directory if missing and opens it (for binds).
    pub fn new(path: &Path) -> io::Result<LongPath> {
        std::fs::create_dir_all(Self::parent(path))?;
        Self::open(path)
    }

    /// Opens the parent directory, which must exist (for connects).
    pub fn open(path: &Path) -> io::Result<LongPath> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name")
        })?;
        let dir = std::fs::File::open(Self::parent(path))?;
        let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(LongPath { _dir: dir, short })
    }

    fn parent(path: &Path) -> &Path {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
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

/// Creates a listening SOCK_SEQPACKET socket at `path` (long-path rule,
/// parent created), non-blocking and close-on-exec. The file mode is set
/// between bind and listen, so no client can connect before it applies.
pub fn listen_seqpacket(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    use std::os::unix::fs::PermissionsExt;
    let long = LongPath::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let addr = UnixAddr::new(long.path()).map_err(io::Error::from)?;
    bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listen(&fd, Backlog::MAXCONN).map_err(io::Error::from)?;
    Ok(fd)
}

/// Connects a blocking, close-on-exec SOCK_SEQPACKET socket to `path`
/// (long-path rule): the client side of attach and fd sockets, for tests
/// and tools.
pub fn connect_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    let long = LongPath::open(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let addr = UnixAddr::new(long.path()).map_err(io::Error::from)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(fd)
}

/// Accepts one pending connection (non-blocking, close-on-exec).
/// `Ok(None)`: nothing pending.
pub fn accept_nonblocking(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    match accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    ) {
        // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Receives one whole packet from a non-blocking SOCK_SEQPACKET socket,
/// whatever its size (the size is peeked first, so nothing is truncated).
/// `Ok(None)`: nothing pending; `Ok(Some(empty))`: the peer closed or shut
/// down writing.
pub fn recv_packet(fd: &OwnedFd) -> io::Result<Option<Vec<u8>>> {
    let mut probe = [0u8; 1];
    let len = match recv(
        fd.as_raw_fd(),
        &mut probe,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut buf = vec![0u8; len.max(1)];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
    buf.truncate(n.min(len));
    Ok(Some(buf))
}

/// Ends both directions of a connected SOCK_SEQPACKET socket and discards
/// the input still queued on it.
///
/// Why the discard: when the last descriptor of a unix socket is closed
/// with unread data in its receive queue, the kernel sets ECONNRESET on the
/// peer, and the peer's next `recv` reports that error *before* the packets
/// already queued for it. An attach client that typed something we never
/// read would lose the tail of the output and the done packet. Shutting
/// down reading first means nothing can arrive after the discard.
pub fn hang_up(fd: impl AsFd) {
    let raw = fd.as_fd().as_raw_fd();
    // ENOTCONN: the peer is gone already, which is just as good.
    let _ = nix::sys::socket::shutdown(raw, nix::sys::socket::Shutdown::Both);
    let mut sink = [0u8; 1];
    // Each recv removes one packet (truncated into `sink`); 0 means the
    // queue is empty now that reading is shut down.
    while let Ok(1..) = recv(raw, &mut sink, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC) {}
}

/// One packet received with [`recv_with_fds`].
#[derive(Debug)]
pub struct PacketWithFds {
    /// The payload, at most the buffer's size.
    pub payload: Vec<u8>,
    /// The packet's real length (larger than `payload` when it did not fit).
    pub len: usize,
    /// The descriptors that arrived with it (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// More descriptors were sent than the control buffer holds
    /// (MSG_CTRUNC): the kernel closed the excess.
    pub fds_truncated: bool,
}

/// Most descriptors [`recv_with_fds`] takes from one packet. 253 is what
/// SCM_RIGHTS allows per message (`SCM_MAX_FD` is 253).
pub const MAX_FDS_PER_PACKET: usize = 253;

/// Receives one packet and the descriptors sent with it (SCM_RIGHTS) from a
/// non-blocking SOCK_SEQPACKET socket, reading at most `max_payload` bytes.
/// `Ok(None)`: nothing pending.
pub fn recv_with_fds(fd: &OwnedFd, max_payload: usize) -> io::Result<Option<PacketWithFds>> {
    let mut payload = vec![0u8; max_payload];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_PACKET]);
    let msg = match recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        // MSG_TRUNC: report the packet's real length, also when it is longer
        // than the buffer.
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    ) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = msg.bytes;
    let fds_truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
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
    payload.truncate(len);
    Ok(Some(PacketWithFds {
        payload,
        len,
        fds,
        fds_truncated,
    }))
}

/// Sends one packet on a non-blocking socket without raising SIGPIPE.
/// `Ok(false)`: the socket buffer is full (try again when writable).
pub fn send_packet(fd: &OwnedFd, packet: &[u8]) -> io::Result<bool> {
    match nix::sys::socket::send(
        fd.as_raw_fd(),
        packet,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    ) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether the peer of a connected unix socket has closed it (POLLHUP: both
/// directions are shut down). A peer that only shut down writing still
/// reads, and is not hung up.
pub fn peer_hung_up(fd: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1..))
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}
