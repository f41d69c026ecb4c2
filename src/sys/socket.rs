//! Unix socket helpers: long-path binds and fd passing.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use nix::fcntl::AtFlags;
use nix::sys::socket::sockopt::PeerCredentials;
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, recv, recvmsg, socket, AddressFamily, Backlog,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
use nix::unistd::linkat;

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

/// Creates a listening SOCK_SEQPACKET socket at `path`, non-blocking and
/// close-on-exec, reachable by path only once it has `mode`.
///
/// The directory is reached with [`super::fs::open_dir`] (no symlink but
/// system ones; missing directories created 0700). Only a stale socket at
/// `path` is removed; anything else there (a symlink, a file) is refused.
/// The socket is bound in a private 0700 directory next to `path`, gets
/// `mode` there (nobody else can reach or swap the name in between), starts
/// listening, and is then hard-linked to `path`, which fails instead of
/// replacing anything that appeared there meanwhile. No chmod ever goes
/// through `path`.
pub fn listen_seqpacket(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let (dir, name) = super::fs::open_parent(path, Some(0o700))?;
    super::fs::remove_stale_socket(&dir, name, path)?;
    let mut private = super::fs::PrivateDir::create(&dir, path)?;
    let bound = private.short_path("socket");
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let addr = UnixAddr::new(&bound).map_err(io::Error::from)?;
    bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    fchmodat(
        private.fd(),
        "socket",
        Mode::from_bits_truncate(mode),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(io::Error::from)?;
    listen(&fd, Backlog::MAXCONN).map_err(io::Error::from)?;
    linkat(private.fd(), "socket", &dir, name, AtFlags::empty()).map_err(|e| {
        let io = io::Error::from(e);
        io::Error::new(io.kind(), format!("'{}': {io}", path.display()))
    })?;
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

/// Accepts one pending connection (non-blocking, close-on-exec) from an
/// allowed peer (see [`peer_allowed`]); connections of other users are
/// closed on the spot and the next one is tried. `Ok(None)`: nothing
/// pending.
pub fn accept_nonblocking(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    loop {
        match accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(fd) => {
                // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
                let conn = unsafe { OwnedFd::from_raw_fd(fd) };
                if peer_allowed(conn.as_fd(), "an attach or fd socket") {
                    return Ok(Some(conn));
                }
            }
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the peer of the connected unix socket `conn` may talk to the
/// server: root or the server's own effective user (`SO_PEERCRED`). The
/// socket file modes already keep others out; this holds when a mode or a
/// directory is looser than meant. A refused peer is logged (at most one
/// line per second, with the count of the ones not logged) naming `socket`.
pub fn peer_allowed(conn: BorrowedFd<'_>, socket: &str) -> bool {
    let creds = match getsockopt(&conn, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            warn_refused(socket, format_args!("no peer credentials: {e}"));
            return false;
        }
    };
    let uid = creds.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    warn_refused(
        socket,
        format_args!(
            "peer uid {uid} (pid {}) is neither root nor the server's uid",
            creds.pid()
        ),
    );
    false
}

/// Seconds (since the first refusal) of the last refusal logged, plus one;
/// 0 = none logged yet.
static LAST_REFUSAL_LOGGED: AtomicU64 = AtomicU64::new(0);
/// Refusals not logged since the last line.
static REFUSALS_NOT_LOGGED: AtomicU64 = AtomicU64::new(0);

fn warn_refused(socket: &str, why: std::fmt::Arguments<'_>) {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1;
    let last = LAST_REFUSAL_LOGGED.load(Ordering::Relaxed);
    let due = last == 0 || now > last;
    if due
        && LAST_REFUSAL_LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let skipped = REFUSALS_NOT_LOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            refusals_not_logged = skipped,
            "refused a connection on {socket}: {why}"
        );
    } else {
        REFUSALS_NOT_LOGGED.fetch_add(1, Ordering::Relaxed);
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

/// Ends the sending direction of a connected socket: the peer reads EOF
/// after the packets already sent, and can still send to us.
pub fn shut_down_writing(fd: impl AsFd) -> io::Result<()> {
    nix::sys::socket::shutdown(fd.as_fd().as_raw_fd(), nix::sys::socket::Shutdown::Write)
        .map_err(io::Error::from)
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
    recv_with_fds_flags(fd, max_payload, MsgFlags::MSG_DONTWAIT)
}

/// [`recv_with_fds`] with `extra` flags (MSG_DONTWAIT or none).
fn recv_with_fds_flags(
    fd: &OwnedFd,
    max_payload: usize,
    extra: MsgFlags,
) -> io::Result<Option<PacketWithFds>> {
    let mut payload = vec![0u8; max_payload];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_PACKET]);
    let msg = match recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        // MSG_TRUNC: report the packet's real length, also when it is longer
        // than the buffer.
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC | extra,
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

/// Receives one packet from a blocking SOCK_SEQPACKET socket into `buf`
/// (a longer packet is truncated to it), waiting for one; retries after a
/// signal. `Ok(0)`: the peer closed or shut down writing.
pub fn recv_packet_blocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Sends one packet on a blocking socket, waiting for room, without raising
/// SIGPIPE; retries after a signal.
pub fn send_packet_blocking(fd: BorrowedFd<'_>, packet: &[u8]) -> io::Result<()> {
    loop {
        match nix::sys::socket::send(fd.as_raw_fd(), packet, MsgFlags::MSG_NOSIGNAL) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map(|_| ()).map_err(io::Error::from),
        }
    }
}

/// A connected pair of blocking, close-on-exec SOCK_SEQPACKET sockets (the
/// keeper link: one packet per message, descriptors beside it).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Bounds how long a blocking send on `fd` waits for room (SO_SNDTIMEO);
/// a send that times out fails with `TimedOut`.
pub fn set_send_timeout(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs() as libc::time_t,
        timeout.subsec_micros() as libc::suseconds_t,
    );
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SendTimeout, &tv)
        .map_err(io::Error::from)
}

/// Bounds how long a blocking receive on `fd` waits (SO_RCVTIMEO); zero
/// waits for ever.
pub fn set_receive_timeout(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs() as libc::time_t,
        timeout.subsec_micros() as libc::suseconds_t,
    );
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(io::Error::from)
}

/// Sends one packet with `fds` beside it (SCM_RIGHTS: the peer gets
/// duplicates, ours stay open), waiting for room up to the socket's send
/// timeout ([`set_send_timeout`]), without raising SIGPIPE; retries after
/// a signal. A timeout fails with `TimedOut`.
pub fn send_with_fds_blocking(
    fd: BorrowedFd<'_>,
    packet: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [io::IoSlice::new(packet)];
    let rights = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
    let cmsgs: &[nix::sys::socket::ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    loop {
        match nix::sys::socket::sendmsg::<()>(
            fd.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer read nothing within the send timeout",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet and its descriptors from a blocking SOCK_SEQPACKET
/// socket, waiting up to the socket's receive timeout
/// ([`set_receive_timeout`]; a timeout fails with `TimedOut`); retries
/// after a signal. A payload of length 0 with no descriptors: the peer
/// closed.
pub fn recv_with_fds_blocking(fd: &OwnedFd, max_payload: usize) -> io::Result<PacketWithFds> {
    loop {
        match recv_with_fds_flags(fd, max_payload, MsgFlags::empty()) {
            Ok(Some(packet)) => return Ok(packet),
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing arrived within the receive timeout",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
