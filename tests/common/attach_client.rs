//! A raw SOCK_SEQPACKET attach client speaking the packet protocol
//! directly (spec §5.3/§5.4): output packets `[type, payload...]` (2 stdout,
//! 3 stderr, a lone 0x00 = done), input packets forwarded byte-exact.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, shutdown, MsgFlags, Shutdown};

/// Bound for anything a container should do promptly.
pub const WAIT: Duration = Duration::from_secs(20);
/// Largest packet the server may send: type byte + 8191 payload bytes.
pub const MAX_PACKET: usize = 8192;

/// One packet from the server.
#[derive(Debug)]
pub enum Packet {
    /// Stream type (2 or 3) and payload.
    Data(u8, Vec<u8>),
    /// The one-byte 0x00 packet.
    Done,
    /// The server closed the connection (or reset it).
    Eof,
}

/// Everything one client received so far.
#[derive(Debug, Default)]
pub struct Received {
    pub out: Vec<u8>,
    pub err: Vec<u8>,
    pub done: bool,
    pub eof: bool,
    pub packets: usize,
}

impl Received {
    pub fn out_str(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
    pub fn err_str(&self) -> String {
        String::from_utf8_lossy(&self.err).into_owned()
    }
    /// For messages: short content in full, long content as its tail.
    pub fn summary(&self) -> String {
        fn tail(b: &[u8]) -> String {
            let shown = &b[b.len().saturating_sub(300)..];
            let text = String::from_utf8_lossy(shown);
            if shown.len() == b.len() {
                format!("{text:?}")
            } else {
                format!("{} bytes ending in {text:?}", b.len())
            }
        }
        format!(
            "stdout {}, stderr {}, done {}",
            tail(&self.out),
            tail(&self.err),
            self.done
        )
    }
}

/// A SOCK_SEQPACKET attach client, connected the way the Go client does
/// (through `/proc/self/fd/<dirfd>/<name>`, so long paths work).
pub struct AttachConn {
    pub fd: OwnedFd,
    pub name: String,
    pub got: Received,
}

impl AttachConn {
    pub fn connect(path: &Path, name: &str) -> AttachConn {
        Self::try_connect(path, name)
            .unwrap_or_else(|e| panic!("{name}: connect to {}: {e}", path.display()))
    }

    pub fn try_connect(path: &Path, name: &str) -> std::io::Result<AttachConn> {
        let fd = ringmon::sys::socket::connect_seqpacket(path)?;
        Ok(AttachConn {
            fd,
            name: name.to_string(),
            got: Received::default(),
        })
    }

    /// Sends one packet.
    pub fn send(&self, data: &[u8]) -> nix::Result<usize> {
        send(self.fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL)
    }

    pub fn send_all(&self, data: &[u8]) {
        let n = self
            .send(data)
            .unwrap_or_else(|e| panic!("{}: send {} bytes: {e}", self.name, data.len()));
        assert_eq!(n, data.len(), "{}: short packet send", self.name);
    }

    /// Signals EOF on our input (the Go client's `CloseWrite`).
    pub fn shutdown_write(&self) {
        shutdown(self.fd.as_raw_fd(), Shutdown::Write)
            .unwrap_or_else(|e| panic!("{}: shutdown(write): {e}", self.name));
    }

    /// The next packet, or None if nothing arrived within `limit`. Checks
    /// the framing rules on the way.
    pub fn recv_packet(&self, limit: Duration) -> Option<Packet> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let step = left.min(Duration::from_millis(500));
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::try_from(step).unwrap()) {
                Ok(0) if left.is_zero() => return None,
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => break,
                Err(e) => panic!("{}: poll: {e}", self.name),
            }
        }
        let mut buf = vec![0u8; 65536];
        let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => n,
            // The kernel reports a reset ahead of packets still queued for
            // us: the server closed with our input unread, which it must
            // never do (output would be lost).
            Err(Errno::ECONNRESET) => panic!("{}: connection reset by the server", self.name),
            Err(Errno::EAGAIN) => return self.recv_packet(limit),
            Err(e) => panic!("{}: recv: {e}", self.name),
        };
        if n == 0 {
            return Some(Packet::Eof);
        }
        assert!(
            n <= MAX_PACKET,
            "{}: packet of {n} bytes (max {MAX_PACKET})",
            self.name
        );
        match buf[0] {
            0 => {
                assert_eq!(
                    n,
                    1,
                    "{}: done packet with {} extra bytes",
                    self.name,
                    n - 1
                );
                Some(Packet::Done)
            }
            t @ (2 | 3) => Some(Packet::Data(t, buf[1..n].to_vec())),
            t => panic!(
                "{}: packet with unexpected type byte {t} ({n} bytes)",
                self.name
            ),
        }
    }

    /// Receives packets into `self.got` until `cond` holds; panics after
    /// `limit`. Data after done is a protocol violation.
    pub fn read_until(&mut self, limit: Duration, what: &str, cond: impl Fn(&Received) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(&self.got) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !self.got.eof,
                "{}: connection closed while waiting for {what}; got {}",
                self.name,
                self.got.summary()
            );
            match self.recv_packet(left) {
                None => panic!(
                    "{}: timed out after {limit:?} waiting for {what}; got {}",
                    self.name,
                    self.got.summary()
                ),
                Some(p) => self.take(p),
            }
        }
    }

    pub fn take(&mut self, p: Packet) {
        match p {
            Packet::Eof => self.got.eof = true,
            Packet::Done => {
                assert!(!self.got.done, "{}: second done packet", self.name);
                self.got.done = true;
            }
            Packet::Data(t, payload) => {
                assert!(
                    !self.got.done,
                    "{}: {} payload bytes (type {t}) after the done packet: {:?}",
                    self.name,
                    payload.len(),
                    String::from_utf8_lossy(&payload)
                );
                self.got.packets += 1;
                if t == 2 {
                    self.got.out.extend_from_slice(&payload);
                } else {
                    self.got.err.extend_from_slice(&payload);
                }
            }
        }
    }

    pub fn read_until_out_contains(&mut self, needle: &str) {
        let what = format!("stdout containing {needle:?}");
        self.read_until(WAIT, &what, |g| {
            g.out.windows(needle.len()).any(|w| w == needle.as_bytes())
        });
    }

    pub fn read_until_done(&mut self) {
        self.read_until(WAIT, "the done packet", |g| g.done);
    }

    /// After done: nothing but (possibly) EOF may follow. Waits briefly.
    pub fn expect_nothing_after_done(&mut self) {
        assert!(self.got.done);
        match self.recv_packet(Duration::from_millis(300)) {
            None | Some(Packet::Eof) => {}
            Some(p) => panic!("{}: {p:?} after the done packet", self.name),
        }
    }
}
