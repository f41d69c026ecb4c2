//! The journald log driver (spec §4.4): one journal entry per line, sent
//! with the native protocol to `/run/systemd/journal/socket`.
//!
//! Each entry has exactly two fields, `PRIORITY=5` and `MESSAGE=<line>`
//! where the line keeps its trailing `\n` (a partial tail is sent as it is).
//! Because the message contains a newline it uses the binary field form:
//! `MESSAGE\n` + little-endian u64 length + bytes + `\n`. An entry too large
//! for one datagram is written to a sealed memfd whose descriptor is sent
//! instead, as the protocol specifies.
//!
//! Deviation from upstream (documented quirk there): a chunk that is not
//! valid UTF-8 is still logged, as the bytes it holds (the journal accepts
//! binary fields), instead of failing the driver — a read boundary may split
//! a multi-byte character, so failing would lose well-formed output.
//!
//! A journald that stops reading (its queue is full) must not stall the
//! engine worker, which drains every other container it owns, yet one that
//! is only slower than a burst must not lose the burst (a datagram socket's
//! queue holds a few entries only). So a send waits for room at most
//! [`SEND_TIMEOUT`] (`SO_SNDTIMEO`); one that times out puts the sink in drop
//! mode for [`DROP_MODE`]: sends do not wait, an entry that does not fit is
//! dropped and counted ([`JournalSink::dropped`]), and the count is logged at
//! warn, at most every [`DROP_REPORT_INTERVAL`]. A stalled journal thus
//! costs a worker at most one [`SEND_TIMEOUT`] per [`DROP_MODE`]. A journal
//! that is gone (restarted, not running) is an error of the write; the
//! worker then retries once per second, and since every entry is sent to
//! the socket's path, the first retry after journald is back reaches the
//! new socket (nothing stays connected to the old one).

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

use super::cri::segments;
use super::StreamKind;

/// Dropped entries are reported (warn) at most this often.
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a send waits for room in the journal's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a sink whose send timed out drops instead of waiting.
pub const DROP_MODE: Duration = Duration::from_secs(1);

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Appends one native-protocol entry: `PRIORITY=5` and the binary-encoded
/// `MESSAGE` field.
pub fn encode_entry(out: &mut Vec<u8>, message: &[u8]) {
    out.extend_from_slice(b"PRIORITY=5\nMESSAGE\n");
    out.extend_from_slice(&(message.len() as u64).to_le_bytes());
    out.extend_from_slice(message);
    out.push(b'\n');
}

/// Appends one entry in the C conmon's form: `fields` (already encoded
/// `NAME=value` lines), `PRIORITY` (6 for stdout, 3 for stderr), the
/// message without its line end in the binary field form, and
/// `CONTAINER_PARTIAL_MESSAGE=true` when the line did not end.
pub fn encode_conmon_entry(
    out: &mut Vec<u8>,
    fields: &[u8],
    stream: StreamKind,
    line: &[u8],
    partial: bool,
) {
    out.extend_from_slice(fields);
    out.extend_from_slice(match stream {
        StreamKind::Stdout => b"PRIORITY=6\n",
        StreamKind::Stderr => b"PRIORITY=3\n",
    });
    if partial {
        out.extend_from_slice(b"CONTAINER_PARTIAL_MESSAGE=true\n");
    }
    let message = line.strip_suffix(b"\n").unwrap_or(line);
    out.extend_from_slice(b"MESSAGE\n");
    out.extend_from_slice(&(message.len() as u64).to_le_bytes());
    out.extend_from_slice(message);
    out.push(b'\n');
}

/// Encodes `NAME=value` journal fields, one per line; a value holding a
/// line end takes the binary form.
pub fn encode_fields(fields: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// A connectionless sender of journal entries.
pub struct JournalSink {
    /// Encoded fields of the C conmon's entries (conmon mode); `None`:
    /// conmon-rs's entries.
    conmon_fields: Option<Vec<u8>>,
    socket: UnixDatagram,
    socket_path: PathBuf,
    /// The entry being sent; reused.
    datagram: Vec<u8>,
    /// Entries dropped because the journal's queue was full, since the
    /// sink was made.
    dropped: u64,
    /// `dropped` when it was last reported, and when.
    reported: (u64, Option<Instant>),
    /// In drop mode until then: sends do not wait for room.
    drop_mode_until: Option<Instant>,
}

impl JournalSink {
    /// An unbound datagram socket that sends to `socket_path`. Nothing is
    /// checked about the journal here: a missing journald shows up as a
    /// write error (reported, the container keeps running).
    pub fn new(socket_path: &Path) -> io::Result<JournalSink> {
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(JournalSink {
            conmon_fields: None,
            socket,
            socket_path: socket_path.to_path_buf(),
            datagram: Vec::new(),
            dropped: 0,
            reported: (0, None),
            drop_mode_until: None,
        })
    }

    /// A sink whose entries have the C conmon's form, with `fields`.
    pub fn with_conmon_fields(
        socket_path: &Path,
        fields: &[(String, String)],
    ) -> io::Result<JournalSink> {
        let mut sink = JournalSink::new(socket_path)?;
        sink.conmon_fields = Some(encode_fields(fields));
        Ok(sink)
    }

    /// Entries dropped so far because the journal did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Entries dropped since the last call that returned `Some`, if any
    /// were and [`DROP_REPORT_INTERVAL`] passed since then: what to report.
    pub fn drops_to_report(&mut self) -> Option<u64> {
        let (reported, at) = self.reported;
        if self.dropped == reported || at.is_some_and(|at| at.elapsed() < DROP_REPORT_INTERVAL) {
            return None;
        }
        self.reported = (self.dropped, Some(Instant::now()));
        Some(self.dropped - reported)
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Sends one entry per line of `chunk` (the container log driver).
    /// Entries the journal has no room for are dropped and counted; the
    /// drops are logged at warn, rate-limited.
    pub fn send_chunk(&mut self, stream: StreamKind, chunk: &[u8]) -> io::Result<()> {
        for segment in segments(chunk) {
            match &self.conmon_fields {
                None => {
                    self.datagram.clear();
                    encode_entry(&mut self.datagram, segment.bytes);
                }
                Some(fields) => {
                    let mut datagram = std::mem::take(&mut self.datagram);
                    datagram.clear();
                    encode_conmon_entry(
                        &mut datagram,
                        fields,
                        stream,
                        segment.bytes,
                        segment.partial,
                    );
                    self.datagram = datagram;
                }
            }
            self.send_encoded()?;
        }
        if let Some(dropped) = self.drops_to_report() {
            tracing::warn!(
                socket = %self.socket_path.display(),
                dropped,
                dropped_total = self.dropped,
                "journal entries dropped: the journal did not keep up"
            );
        }
        Ok(())
    }

    /// Sends one entry whose `MESSAGE` is `message`, without blocking. A
    /// full journal queue drops it (counted, `Ok`); any other failure (no
    /// journal listens at the path) is the error.
    pub fn send_entry(&mut self, message: &[u8]) -> io::Result<()> {
        self.datagram.clear();
        encode_entry(&mut self.datagram, message);
        self.send_encoded()
    }

    /// Sends the entry in `datagram` (see [`JournalSink::send_entry`]).
    fn send_encoded(&mut self) -> io::Result<()> {
        let dropping = self
            .drop_mode_until
            .is_some_and(|until| Instant::now() < until);
        if self.drop_mode_until.is_some() && !dropping {
            self.socket.set_nonblocking(false)?;
            self.drop_mode_until = None;
        }
        match self.send_datagram(dropping) {
            // SO_SNDTIMEO ran out (or, in drop mode, there was no room).
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if !dropping {
                    self.socket.set_nonblocking(true)?;
                    self.drop_mode_until = Some(Instant::now() + DROP_MODE);
                }
                self.dropped += 1;
                Ok(())
            }
            other => other,
        }
    }

    fn send_datagram(&self, dropping: bool) -> io::Result<()> {
        match self.socket.send_to(&self.datagram, &self.socket_path) {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_via_memfd(dropping)
            }
            Err(err) => Err(err),
        }
    }

    /// The protocol's path for large entries: the entry goes into a memfd,
    /// sealed against modification, and only its descriptor is sent.
    fn send_via_memfd(&self, dropping: bool) -> io::Result<()> {
        let memfd = memfd_create(
            c"ringmon-journal",
            MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
        )?;
        let mut file = File::from(memfd);
        file.write_all(&self.datagram)?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let address = UnixAddr::new(&self.socket_path)?;
        let fds = [file.as_raw_fd()];
        let no_data: [IoSlice<'_>; 0] = [];
        sendmsg(
            self.socket.as_raw_fd(),
            &no_data,
            &[ControlMessage::ScmRights(&fds)],
            if dropping {
                MsgFlags::MSG_DONTWAIT
            } else {
                MsgFlags::empty()
            },
            Some(&address),
        )
        .map_err(|errno: Errno| io::Error::from(errno))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encoding() {
        let mut out = Vec::new();
        encode_entry(&mut out, b"hi\n");
        assert_eq!(out, b"PRIORITY=5\nMESSAGE\n\x03\0\0\0\0\0\0\0hi\n\n");
    }

    #[test]
    fn sends_one_datagram_per_line() {
        let dir = std::env::temp_dir().join(format!("ringmon-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let journal = UnixDatagram::bind(&path).unwrap();

        let mut sink = JournalSink::new(&path).unwrap();
        sink.send_chunk(StreamKind::Stdout, b"one\ntwo\npart")
            .unwrap();
        let mut received = Vec::new();
        for _ in 0..3 {
            let mut buffer = [0u8; 256];
            let len = journal.recv(&mut buffer).unwrap();
            received.push(buffer[..len].to_vec());
        }
        let expected: Vec<Vec<u8>> = [&b"one\n"[..], b"two\n", b"part"]
            .iter()
            .map(|line| {
                let mut entry = Vec::new();
                encode_entry(&mut entry, line);
                entry
            })
            .collect();
        assert_eq!(received, expected);

        // Too large for a datagram: sent as a sealed memfd.
        let huge = vec![b'z'; 1 << 20];
        sink.send_chunk(StreamKind::Stdout, &huge).unwrap();
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut no_data: [std::io::IoSliceMut<'_>; 0] = [];
        let message = nix::sys::socket::recvmsg::<UnixAddr>(
            journal.as_raw_fd(),
            &mut no_data,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let Some(nix::sys::socket::ControlMessageOwned::ScmRights(fds)) =
            message.cmsgs().unwrap().next()
        else {
            panic!("no fd received");
        };
        // Read it through procfs: taking ownership of a raw fd needs
        // `unsafe`, which stays in `sys` (the test leaks this one fd).
        let content = std::fs::read(format!("/proc/self/fd/{}", fds[0])).unwrap();
        let mut expected = Vec::new();
        encode_entry(&mut expected, &huge);
        assert!(content == expected);

        drop(journal);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(sink
            .send_chunk(StreamKind::Stdout, b"nobody listens\n")
            .is_err());
    }

    #[test]
    fn a_full_journal_drops_and_counts_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("ringmon-journal-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        // Never read: its queue fills.
        let journal = UnixDatagram::bind(&path).unwrap();
        let mut sink = JournalSink::new(&path).unwrap();
        let lines = b"line\n".repeat(10_000);
        sink.send_chunk(StreamKind::Stdout, &lines).unwrap();
        assert!(sink.dropped() > 0, "nothing dropped");
        assert!(sink.dropped() < 10_000, "nothing sent");
        // Reported once per interval.
        assert_eq!(sink.drops_to_report(), None);
        sink.reported = (0, None);
        assert_eq!(sink.drops_to_report(), Some(sink.dropped()));
        assert_eq!(sink.drops_to_report(), None);
        drop(journal);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
