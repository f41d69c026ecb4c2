//! The fd-passing socket (`startFdSocket`, spec §6.3): clients hand file
//! descriptors to the server over `<runtime-dir>/conmon-fd.sock` and get
//! slot numbers back, which a later `createContainer` names in
//! `additionalFds` (passed to the runtime as fd 3, 4, ...) or `leakFds`
//! (held open while the container lives).
//!
//! Wire format, all integers little-endian u64, one SOCK_SEQPACKET packet
//! each way:
//! - request: 8 bytes `header = requestId << 32 | numFds`, the fds in one
//!   SCM_RIGHTS message; `header == 0` closes every unclaimed fd this
//!   connection sent (no reply);
//! - success: the header echoed, then one slot number per fd, in order;
//! - error: `requestId << 32 | 0xffffffff`, then a UTF-8 message.
//!
//! Unlike conmon-rs, which ignores a malformed packet (the client then waits
//! forever) and marks errors with `header | 0xff` (which the Go client
//! misreads as a count mismatch), every bad request here gets the
//! documented error reply naming what was wrong.
//!
//! Slots a connection sent and no `createContainer` took are closed when the
//! connection closes: a client keeps its connection open until its create
//! returned (the podman prototype does).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, warn};

use crate::sys;
use crate::sys::socket::MAX_FDS_PER_PACKET;

/// Mode of `conmon-fd.sock`: only the server's own user may pass fds.
const FD_SOCKET_MODE: u32 = 0o700;

/// Unclaimed descriptors the whole table holds at most. A client that keeps
/// sending without creating containers gets an error instead of exhausting
/// the server's descriptor limit.
pub const MAX_UNCLAIMED_FDS: usize = 4096;

/// Low 32 bits of an error reply's header.
const ERROR_MARKER: u64 = 0xffff_ffff;

/// Identifies one accepted fd-socket connection (the owner of its slots).
type ConnectionId = u64;

/// A decoded request packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Store the fds and reply with their slots.
    Store { header: u64, request_id: u32 },
    /// `header == 0`: close this connection's unclaimed fds, no reply.
    ReleaseUnclaimed,
}

/// Why a request packet is refused. The message is sent back to the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The header is not exactly 8 bytes.
    #[error("invalid request: expected an 8-byte header, got {0} bytes")]
    BadLength(usize),
    /// More fds than SCM_RIGHTS carries in one message were sent.
    #[error("too many fds in one request: at most {MAX_FDS_PER_PACKET} are allowed")]
    TooManyFds,
    /// The header's count differs from the fds that arrived.
    #[error("received {received} fds, but expected {expected} fds")]
    CountMismatch { received: usize, expected: u64 },
    /// The table is full.
    #[error("too many unclaimed fds held by the server (limit {0}); use them in createContainer or close the connection")]
    TableFull(usize),
}

/// Decodes a request packet: the start of its payload, its real length,
/// how many fds came with it, and whether more fds were sent than could be
/// received. Errors come with the request id to answer them with (0 when
/// the packet is too short to carry one).
pub fn parse_request(
    payload: &[u8],
    len: usize,
    fds: usize,
    fds_truncated: bool,
) -> Result<Request, (u32, ProtocolError)> {
    let first8 = payload.get(..8).map(|b| {
        let mut h = [0u8; 8];
        h.copy_from_slice(b);
        u64::from_le_bytes(h)
    });
    let header = match first8 {
        Some(h) if len == 8 => h,
        _ => return Err((first8.map_or(0, request_id), ProtocolError::BadLength(len))),
    };
    if header == 0 {
        return Ok(Request::ReleaseUnclaimed);
    }
    let id = request_id(header);
    let expected = header & ERROR_MARKER;
    if fds_truncated || expected > MAX_FDS_PER_PACKET as u64 {
        return Err((id, ProtocolError::TooManyFds));
    }
    if expected != fds as u64 {
        return Err((
            id,
            ProtocolError::CountMismatch {
                received: fds,
                expected,
            },
        ));
    }
    Ok(Request::Store {
        header,
        request_id: id,
    })
}

fn request_id(header: u64) -> u32 {
    (header >> 32) as u32
}

/// The success reply: the header echoed, then the slots.
pub fn encode_slots(header: u64, slots: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * (1 + slots.len()));
    out.extend_from_slice(&header.to_le_bytes());
    for s in slots {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The error reply: the request id with the error marker, then the message.
pub fn encode_error(request_id: u32, message: &str) -> Vec<u8> {
    let header = (u64::from(request_id) << 32) | ERROR_MARKER;
    let mut out = header.to_le_bytes().to_vec();
    out.extend_from_slice(message.as_bytes());
    out
}

/// A slot named by `createContainer` that holds no fd.
#[derive(Debug, thiserror::Error)]
#[error("no file descriptor in slot {0} (never sent, already used by a request, or its fd-socket connection closed)")]
pub struct NoSuchSlot(pub u64);

/// The server-wide table of received, unclaimed descriptors.
#[derive(Debug)]
pub struct FdSlots {
    /// The last slot number handed out (slots start at 1, never 0).
    last: u64,
    slots: HashMap<u64, (ConnectionId, OwnedFd)>,
    /// Most unclaimed fds held at once.
    limit: usize,
}

impl Default for FdSlots {
    fn default() -> Self {
        FdSlots::with_limit(MAX_UNCLAIMED_FDS)
    }
}

impl FdSlots {
    /// An empty table holding at most `limit` unclaimed fds.
    pub fn with_limit(limit: usize) -> FdSlots {
        FdSlots {
            last: 0,
            slots: HashMap::new(),
            limit,
        }
    }

    /// Stores `fds` for connection `conn`; returns their slots in order.
    pub fn insert(
        &mut self,
        conn: ConnectionId,
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<u64>, ProtocolError> {
        if self.slots.len() + fds.len() > self.limit {
            return Err(ProtocolError::TableFull(self.limit));
        }
        let mut out = Vec::with_capacity(fds.len());
        for fd in fds {
            let slot = self.next_free();
            self.slots.insert(slot, (conn, fd));
            out.push(slot);
        }
        Ok(out)
    }

    fn next_free(&mut self) -> u64 {
        loop {
            self.last = self.last.checked_add(1).unwrap_or(1);
            if !self.slots.contains_key(&self.last) {
                return self.last;
            }
        }
    }

    /// Takes the fds of `slots` out of the table, in order. Every named slot
    /// that holds an fd is consumed, also when another one is missing (the
    /// call fails then, and the fds taken are closed).
    pub fn take(&mut self, slots: &[u64]) -> Result<Vec<OwnedFd>, NoSuchSlot> {
        let mut missing = None;
        let mut fds = Vec::with_capacity(slots.len());
        for &slot in slots {
            match self.slots.remove(&slot) {
                Some((_, fd)) => fds.push(fd),
                None => {
                    missing.get_or_insert(slot);
                }
            }
        }
        match missing {
            Some(slot) => Err(NoSuchSlot(slot)),
            None => Ok(fds),
        }
    }

    /// Closes every unclaimed fd `conn` sent; returns how many.
    pub fn release_connection(&mut self, conn: ConnectionId) -> usize {
        let before = self.slots.len();
        self.slots.retain(|_, (owner, _)| *owner != conn);
        before - self.slots.len()
    }

    /// How many fds the table holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table holds no fd.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The running fd socket: its path and the slot table its connections fill.
pub struct FdSocket {
    path: PathBuf,
    slots: Rc<RefCell<FdSlots>>,
}

impl FdSocket {
    /// Binds `path` (a stale socket replaced, anything else there refused)
    /// and starts accepting; connections of users other than root and the
    /// server's are closed at accept. Must run inside a `LocalSet`.
    pub fn start(path: &Path) -> io::Result<FdSocket> {
        let listener = sys::socket::listen_seqpacket(path, FD_SOCKET_MODE)?;
        let listener = sys::reactor::async_fd(listener, Interest::READABLE)?;
        let slots = Rc::new(RefCell::new(FdSlots::default()));
        tokio::task::spawn_local(accept_loop(listener, Rc::clone(&slots)));
        debug!("fd socket listening on {}", path.display());
        Ok(FdSocket {
            path: path.to_path_buf(),
            slots,
        })
    }

    /// Where clients connect.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the fds of `slots` (see [`FdSlots::take`]).
    pub fn take(&self, slots: &[u64]) -> Result<Vec<OwnedFd>, NoSuchSlot> {
        self.slots.borrow_mut().take(slots)
    }
}

async fn accept_loop(listener: AsyncFd<OwnedFd>, slots: Rc<RefCell<FdSlots>>) {
    let mut next_conn: ConnectionId = 0;
    loop {
        let mut guard = match listener.readable().await {
            Ok(g) => g,
            Err(e) => {
                warn!("fd socket: {e}");
                return;
            }
        };
        match sys::socket::accept_nonblocking(listener.get_ref()) {
            Ok(Some(conn)) => {
                next_conn += 1;
                match sys::reactor::async_fd(conn, Interest::READABLE | Interest::WRITABLE) {
                    Ok(conn) => {
                        tokio::task::spawn_local(serve_connection(
                            conn,
                            next_conn,
                            Rc::clone(&slots),
                        ));
                    }
                    Err(e) => warn!("fd socket connection: {e}"),
                }
            }
            Ok(None) => guard.clear_ready(),
            Err(e) => {
                warn!("fd socket accept: {e}");
                guard.clear_ready();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one connection until it closes, then closes its unclaimed fds.
async fn serve_connection(conn: AsyncFd<OwnedFd>, id: ConnectionId, slots: Rc<RefCell<FdSlots>>) {
    if let Err(e) = serve_requests(&conn, id, &slots).await {
        debug!(connection = id, "fd socket connection ended: {e}");
    }
    let closed = slots.borrow_mut().release_connection(id);
    if closed > 0 {
        debug!(
            connection = id,
            closed, "closed unclaimed fds of a closed fd socket connection"
        );
    }
}

async fn serve_requests(
    conn: &AsyncFd<OwnedFd>,
    id: ConnectionId,
    slots: &RefCell<FdSlots>,
) -> io::Result<()> {
    loop {
        let packet = {
            let mut guard = conn.readable().await?;
            // One byte more than a header, to see a longer packet as such.
            match sys::socket::recv_with_fds(conn.get_ref(), 9)? {
                Some(p) => p,
                None => {
                    guard.clear_ready();
                    continue;
                }
            }
        };
        if packet.len == 0 {
            return Ok(()); // EOF (or an empty packet, which means the same)
        }
        let reply = match parse_request(
            &packet.payload,
            packet.len,
            packet.fds.len(),
            packet.fds_truncated,
        ) {
            Ok(Request::ReleaseUnclaimed) => {
                drop(packet.fds);
                let closed = slots.borrow_mut().release_connection(id);
                debug!(connection = id, closed, "released unclaimed fds on request");
                continue;
            }
            Ok(Request::Store { header, request_id }) => {
                match slots.borrow_mut().insert(id, packet.fds) {
                    Ok(s) => {
                        debug!(connection = id, request_id, slots = ?s, "stored fds");
                        encode_slots(header, &s)
                    }
                    Err(e) => encode_error(request_id, &e.to_string()),
                }
            }
            Err((request_id, e)) => {
                warn!(
                    connection = id,
                    request_id, "fd socket request refused: {e}"
                );
                encode_error(request_id, &e.to_string())
            }
        };
        send(conn, &reply).await?;
    }
}

async fn send(conn: &AsyncFd<OwnedFd>, packet: &[u8]) -> io::Result<()> {
    loop {
        if sys::socket::send_packet(conn.get_ref(), packet)? {
            return Ok(());
        }
        conn.writable().await?.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u32, n: u64) -> [u8; 8] {
        ((u64::from(id) << 32) | n).to_le_bytes()
    }

    #[test]
    fn parses_a_store_request() {
        assert_eq!(
            parse_request(&header(7, 2), 8, 2, false),
            Ok(Request::Store {
                header: (7 << 32) | 2,
                request_id: 7
            })
        );
    }

    #[test]
    fn zero_header_releases() {
        assert_eq!(
            parse_request(&[0; 8], 8, 0, false),
            Ok(Request::ReleaseUnclaimed)
        );
    }

    #[test]
    fn refuses_bad_packets_with_the_request_id() {
        assert_eq!(
            parse_request(&header(3, 2), 8, 1, false),
            Err((
                3,
                ProtocolError::CountMismatch {
                    received: 1,
                    expected: 2
                }
            ))
        );
        assert_eq!(
            parse_request(&[1, 2, 3], 3, 0, false),
            Err((0, ProtocolError::BadLength(3)))
        );
        let mut long = header(9, 1).to_vec();
        long.push(0);
        assert_eq!(
            parse_request(&long, 4096, 1, false),
            Err((9, ProtocolError::BadLength(4096)))
        );
        assert_eq!(
            parse_request(&header(4, 253), 8, 253, true),
            Err((4, ProtocolError::TooManyFds))
        );
        assert_eq!(
            parse_request(&header(4, 254), 8, 0, false),
            Err((4, ProtocolError::TooManyFds))
        );
    }

    #[test]
    fn encodes_replies() {
        let ok = encode_slots((5 << 32) | 2, &[1, 2]);
        assert_eq!(ok.len(), 24);
        assert_eq!(
            u64::from_le_bytes(ok[..8].try_into().unwrap()),
            (5 << 32) | 2
        );
        assert_eq!(u64::from_le_bytes(ok[16..].try_into().unwrap()), 2);
        let err = encode_error(5, "boom");
        assert_eq!(
            u64::from_le_bytes(err[..8].try_into().unwrap()),
            (5 << 32) | 0xffff_ffff
        );
        assert_eq!(&err[8..], b"boom");
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn slots_start_at_one_skip_used_and_are_taken_once() {
        let mut t = FdSlots::default();
        assert_eq!(t.insert(1, vec![devnull(), devnull()]).unwrap(), [1, 2]);
        assert_eq!(t.take(&[2]).unwrap().len(), 1);
        assert!(t.take(&[2]).is_err());
        t.last = u64::MAX - 1;
        // Wraps past u64::MAX to 1, which is still in use, and skips it.
        assert_eq!(
            t.insert(1, vec![devnull(), devnull()]).unwrap(),
            [u64::MAX, 2]
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_missing_slot_fails_and_consumes_the_others() {
        let mut t = FdSlots::default();
        t.insert(1, vec![devnull(), devnull()]).unwrap();
        let e = t.take(&[1, 9, 2]).unwrap_err();
        assert_eq!(e.0, 9);
        assert!(e.to_string().starts_with("no file descriptor in slot 9"));
        assert!(t.is_empty());
        assert!(t.take(&[0]).is_err());
    }

    #[test]
    fn a_closed_connection_releases_only_its_fds() {
        let mut t = FdSlots::default();
        t.insert(1, vec![devnull()]).unwrap();
        t.insert(2, vec![devnull(), devnull()]).unwrap();
        assert_eq!(t.release_connection(2), 2);
        assert_eq!(t.len(), 1);
        assert!(t.take(&[1]).is_ok());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = FdSlots::with_limit(2);
        t.insert(1, vec![devnull(), devnull()]).unwrap();
        assert_eq!(
            t.insert(1, vec![devnull()]),
            Err(ProtocolError::TableFull(2))
        );
        assert_eq!(t.len(), 2);
    }
}
