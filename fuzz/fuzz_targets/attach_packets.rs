//! The attach socket's packets, both directions, over a real
//! SOCK_SEQPACKET connection made with ringmon's own socket helpers.
//!
//! - Output (`ringmon::engine::attach::PacketQueue`): chunks of stdout and
//!   stderr and the done packet are queued and flushed (also when the
//!   socket fills up, so the ring buffer wraps); the client must read
//!   exactly one packet per 8191-byte piece, type byte first, in order.
//! - Input: what a client writes is read by the server with
//!   `sys::socket::recv_packet`, as the attach readers do; every packet
//!   must arrive whole and unchanged (a client's stdin bytes have no
//!   framing of their own; an empty packet is EOF).
//!
//! Input: a list of operations (op byte, a length, bytes).
#![no_main]

use std::os::fd::{AsFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use ringmon::engine::attach::{
    PacketQueue, MAX_PACKET_PAYLOAD, PACKET_DONE, PACKET_STDERR, PACKET_STDOUT,
};
use ringmon::sys::socket;
use ringmon_fuzz::Bytes;

/// Output bytes queued per input at most: enough to fill the socket (and
/// wrap the queue's ring buffer), small enough to keep the
/// executions fast.
const OUTPUT_PER_INPUT: usize = 256 * 1024;

/// One connected attach socket: the server's end and the client's.
struct Connection {
    server: OwnedFd,
    client: OwnedFd,
}

thread_local! {
    static CONNECTION: Connection = connect();
}

fn connect() -> Connection {
    let dir = std::env::temp_dir().join(format!("ringmon-fuzz-attach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create socket directory");
    let path = dir.join("attach");
    let _ = std::fs::remove_file(&path);
    let listener = socket::listen_seqpacket(&path, 0o700).expect("listen");
    let client = socket::connect_seqpacket(&path).expect("connect");
    let server = socket::accept_nonblocking(&listener)
        .expect("accept")
        .expect("a pending connection");
    let _ = std::fs::remove_dir_all(&dir);
    ringmon::sys::fd::set_nonblocking(client.as_fd()).expect("non-blocking client");
    Connection { server, client }
}

/// Reads every packet that is queued on `fd`.
fn drain(fd: &OwnedFd, into: &mut Vec<Vec<u8>>) {
    while let Some(packet) = socket::recv_packet(fd).expect("recv") {
        assert!(!packet.is_empty(), "the peer never closes here");
        into.push(packet);
    }
}

fuzz_target!(|data: &[u8]| {
    CONNECTION.with(|c| run(c, data));
});

fn run(c: &Connection, data: &[u8]) {
    let mut input = Bytes::new(data);
    let mut queue = PacketQueue::default();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let mut received: Vec<Vec<u8>> = Vec::new();
    let mut queued_payload = 0usize;
    let mut total_output = 0usize;
    while !input.is_empty() {
        let op = input.u8();
        match op % 5 {
            // Output chunks: the bytes, repeated up to a length of up to
            // 32 KiB (one engine read) so that chunks span several packets.
            kind @ (0 | 1) => {
                let packet_type = [PACKET_STDOUT, PACKET_STDERR][usize::from(kind)];
                let len = usize::from(input.u16()) % (32 * 1024 + 1);
                let pattern = input.short_bytes();
                if pattern.is_empty() || total_output + len > OUTPUT_PER_INPUT {
                    // An empty chunk queues nothing.
                    queue.push_chunk(packet_type, &[]);
                    continue;
                }
                let chunk: Vec<u8> = pattern.iter().copied().cycle().take(len).collect();
                total_output += len;
                queue.push_chunk(packet_type, &chunk);
                queued_payload += chunk.len();
                for piece in chunk.chunks(MAX_PACKET_PAYLOAD) {
                    let mut packet = vec![packet_type];
                    packet.extend_from_slice(piece);
                    expected.push(packet);
                }
            }
            2 => {
                queue.push_done();
                expected.push(vec![PACKET_DONE]);
            }
            3 => {
                let progress = queue.flush(c.server.as_fd()).expect("flush");
                if progress.complete {
                    assert!(queue.is_empty());
                }
                drain(&c.client, &mut received);
            }
            // Client input.
            _ => {
                let packet = input.short_bytes();
                if packet.is_empty() {
                    continue;
                }
                assert!(socket::send_packet(&c.client, packet).expect("client send"));
                let got = socket::recv_packet(&c.server)
                    .expect("server recv")
                    .expect("a queued packet");
                assert_eq!(got, packet);
            }
        }
        assert_eq!(
            queue.payload_len() + received_payload(&received),
            queued_payload
        );
    }
    loop {
        let progress = queue.flush(c.server.as_fd()).expect("flush");
        let before = received.len();
        drain(&c.client, &mut received);
        if progress.complete {
            break;
        }
        assert!(
            progress.sent_any || received.len() > before,
            "flush is stuck"
        );
    }
    assert!(queue.is_empty());
    assert_eq!(queue.payload_len(), 0);
    assert!(
        received == expected,
        "packets differ from the queued chunks"
    );
}

/// Payload bytes of received output packets (type bytes excluded).
fn received_payload(received: &[Vec<u8>]) -> usize {
    received.iter().map(|p| p.len() - 1).sum()
}
