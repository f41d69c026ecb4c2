//! Attach packets and the bounded queue of one attach client.
//!
//! Wire format (spec §5.3): every SOCK_SEQPACKET packet is one type byte
//! followed by at most [`MAX_PACKET_PAYLOAD`] payload bytes; a chunk of
//! output larger than that becomes consecutive packets of the same type.
//! The done packet is the single byte [`PACKET_DONE`].
//!
//! The queue keeps its packets back to back in one `VecDeque<u8>` (type byte
//! plus payload) with their lengths in a second `VecDeque<u16>`, so queueing
//! never allocates per packet and the memory is reused from chunk to chunk.
//! A packet that wraps around the end of the ring buffer is sent with two
//! iovecs instead of being copied.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, MsgFlags};

/// Packet type: the container's output ended (the packet is just this byte).
pub const PACKET_DONE: u8 = 0;
/// Packet type: stdout, and all output of a terminal.
pub const PACKET_STDOUT: u8 = 2;
/// Packet type: stderr.
pub const PACKET_STDERR: u8 = 3;

/// Payload bytes per packet: the Go client reads packets into an 8193-byte
/// buffer and upstream sends at most 8192 bytes including the type byte.
pub const MAX_PACKET_PAYLOAD: usize = 8191;

/// Most attach clients one container (or exec session) serves at once.
/// Each holds a socket and an output queue of its own: past this, a new
/// connection is closed at once (no done packet) and `attachContainer`
/// answers with an error. Far above what a CRI engine opens (one or two
/// `kubectl attach` at a time).
pub const MAX_ATTACH_CLIENTS: usize = 64;

/// Queue capacity kept by a client whose queue ran empty; a larger backlog
/// buffer is given back, so a client that once lagged does not keep
/// megabytes for the rest of the container's life.
const RETAINED_QUEUE_CAPACITY: usize = 256 * 1024;

/// What one [`PacketQueue::flush`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushProgress {
    /// At least one packet was sent.
    pub sent_any: bool,
    /// The queue is empty now (otherwise the socket is full).
    pub complete: bool,
}

/// Packets waiting to be sent to one attach client, oldest first.
#[derive(Default)]
pub struct PacketQueue {
    /// The queued packets back to back, each its type byte plus payload.
    bytes: VecDeque<u8>,
    /// Length of each queued packet, type byte included (at most 8192).
    packet_lens: VecDeque<u16>,
    /// Payload bytes queued (type bytes excluded): what the limit bounds.
    payload_len: usize,
}

impl PacketQueue {
    /// Appends `chunk` as packets of `packet_type` (nothing for an empty
    /// chunk).
    pub fn push_chunk(&mut self, packet_type: u8, chunk: &[u8]) {
        for payload in chunk.chunks(MAX_PACKET_PAYLOAD) {
            self.bytes.push_back(packet_type);
            self.bytes.extend(payload);
            // 1 + MAX_PACKET_PAYLOAD fits in u16.
            self.packet_lens.push_back(1 + payload.len() as u16);
            self.payload_len += payload.len();
        }
    }

    /// Appends the done packet.
    pub fn push_done(&mut self) {
        self.bytes.push_back(PACKET_DONE);
        self.packet_lens.push_back(1);
    }

    pub fn is_empty(&self) -> bool {
        self.packet_lens.is_empty()
    }

    /// Payload bytes queued (type bytes excluded).
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// Sends queued packets to `socket` (a connected SOCK_SEQPACKET socket)
    /// without blocking, until the queue is empty or the socket is full.
    /// Any other send error is returned; the queue is then unusable for that
    /// socket (the client must be dropped).
    pub fn flush(&mut self, socket: BorrowedFd<'_>) -> Result<FlushProgress, Errno> {
        let mut sent_any = false;
        while let Some(&packet_len) = self.packet_lens.front() {
            let packet_len = usize::from(packet_len);
            let (front, back) = self.bytes.as_slices();
            let (first, second) = if front.len() >= packet_len {
                (&front[..packet_len], &back[..0])
            } else {
                (front, &back[..packet_len - front.len()])
            };
            let iov = [IoSlice::new(first), IoSlice::new(second)];
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match sendmsg::<()>(socket.as_raw_fd(), &iov, &[], flags, None) {
                Ok(sent) if sent == packet_len => {}
                // A packet socket sends whole packets or nothing; anything
                // else (a stream socket) would lose the packet boundaries.
                Ok(_) => return Err(Errno::EMSGSIZE),
                Err(Errno::EAGAIN) => {
                    return Ok(FlushProgress {
                        sent_any,
                        complete: false,
                    })
                }
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno),
            }
            sent_any = true;
            self.packet_lens.pop_front();
            self.bytes.drain(..packet_len);
            // The done packet has no payload; every other byte but the type
            // byte is payload.
            self.payload_len -= packet_len - 1;
        }
        if self.bytes.capacity() > RETAINED_QUEUE_CAPACITY {
            self.bytes.shrink_to(RETAINED_QUEUE_CAPACITY);
        }
        Ok(FlushProgress {
            sent_any,
            complete: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::sys::socket::{recv, socketpair, AddressFamily, SockFlag, SockType};

    use super::*;

    fn seqpacket_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    /// Reads every packet available without blocking.
    fn read_packets(socket: BorrowedFd<'_>) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        let mut buffer = [0u8; 8193];
        loop {
            match recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
                Ok(0) | Err(Errno::EAGAIN) => return packets,
                Ok(len) => packets.push(buffer[..len].to_vec()),
                Err(errno) => panic!("recv: {errno}"),
            }
        }
    }

    #[test]
    fn chunks_are_split_into_packets_of_at_most_8192_bytes() {
        let (ours, theirs) = seqpacket_pair();
        let mut queue = PacketQueue::default();
        let chunk: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        queue.push_chunk(PACKET_STDERR, &chunk);
        queue.push_chunk(PACKET_STDOUT, b"");
        queue.push_done();
        assert_eq!(queue.payload_len(), 20_000);
        let progress = queue.flush(ours.as_fd()).unwrap();
        assert!(progress.sent_any && progress.complete);
        assert_eq!(queue.payload_len(), 0);
        let packets = read_packets(theirs.as_fd());
        let lens: Vec<usize> = packets.iter().map(Vec::len).collect();
        assert_eq!(lens, [8192, 8192, 20_000 - 2 * 8191 + 1, 1]);
        assert_eq!(packets[3], [PACKET_DONE]);
        let payload: Vec<u8> = packets[..3]
            .iter()
            .inspect(|packet| assert_eq!(packet[0], PACKET_STDERR))
            .flat_map(|packet| packet[1..].to_vec())
            .collect();
        assert_eq!(payload, chunk);
    }

    #[test]
    fn a_full_socket_keeps_the_rest_queued_and_wrapped_packets_stay_whole() {
        let (ours, theirs) = seqpacket_pair();
        let mut queue = PacketQueue::default();
        let mut expected = Vec::new();
        let mut received = Vec::new();
        // Interleave filling and draining so that the ring buffer wraps.
        for round in 0..200u32 {
            let chunk: Vec<u8> = (0..5_000 + round * 37).map(|i| (i ^ round) as u8).collect();
            queue.push_chunk(PACKET_STDOUT, &chunk);
            expected.extend_from_slice(&chunk);
            if round % 3 == 0 {
                queue.flush(ours.as_fd()).unwrap();
                for packet in read_packets(theirs.as_fd()) {
                    assert_eq!(packet[0], PACKET_STDOUT);
                    received.extend_from_slice(&packet[1..]);
                }
            }
        }
        loop {
            let progress = queue.flush(ours.as_fd()).unwrap();
            for packet in read_packets(theirs.as_fd()) {
                received.extend_from_slice(&packet[1..]);
            }
            if progress.complete {
                break;
            }
        }
        assert!(received == expected);
        assert_eq!(queue.payload_len(), 0);
    }

    #[test]
    fn a_closed_peer_is_an_error() {
        let (ours, theirs) = seqpacket_pair();
        drop(theirs);
        let mut queue = PacketQueue::default();
        queue.push_chunk(PACKET_STDOUT, b"x");
        assert_eq!(queue.flush(ours.as_fd()), Err(Errno::EPIPE));
    }
}
