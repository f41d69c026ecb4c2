//! The fd-socket request parser (`ringmon::core::fd_socket`) and the
//! replies built from its result.
//!
//! Input: the fd count that came with the packet, a flags byte (bit 0: the
//! kernel truncated the fds), then the packet. As the server receives it,
//! the parser sees at most the first 9 bytes and the packet's real length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::core::fd_socket::{self, ProtocolError, Request};
use ringmon::sys::socket::MAX_FDS_PER_PACKET;
use ringmon_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::new(data);
    let fds = usize::from(input.u8());
    let truncated = input.u8() & 1 == 1;
    let packet = input.rest();
    let received = &packet[..packet.len().min(9)];
    match fd_socket::parse_request(received, packet.len(), fds, truncated) {
        Ok(Request::ReleaseUnclaimed) => {
            assert_eq!(packet, [0; 8]);
        }
        Ok(Request::Store { header, request_id }) => {
            assert_eq!(packet.len(), 8);
            assert_eq!(header.to_le_bytes(), packet);
            assert_eq!(u64::from(request_id), header >> 32);
            assert_eq!(header & 0xffff_ffff, fds as u64);
            assert!(fds <= MAX_FDS_PER_PACKET && !truncated);
            let slots: Vec<u64> = (1..=fds as u64).collect();
            let reply = fd_socket::encode_slots(header, &slots);
            assert_eq!(reply.len(), 8 * (1 + fds));
            assert_eq!(reply[..8], header.to_le_bytes());
        }
        Err((request_id, error)) => {
            match error {
                ProtocolError::BadLength(len) => assert!(len == packet.len() && len != 8),
                ProtocolError::TooManyFds => {
                    let header = u64::from_le_bytes(packet.try_into().unwrap());
                    assert!(truncated || header & 0xffff_ffff > MAX_FDS_PER_PACKET as u64);
                }
                ProtocolError::CountMismatch { received, expected } => {
                    assert_eq!(received, fds);
                    assert_ne!(expected, fds as u64);
                }
                ProtocolError::TableFull(_) => panic!("the parser never reports a full table"),
            }
            if packet.len() >= 8 {
                let header = u64::from_le_bytes(packet[..8].try_into().unwrap());
                assert_eq!(u64::from(request_id), header >> 32);
            } else {
                assert_eq!(request_id, 0);
            }
            let message = error.to_string();
            let reply = fd_socket::encode_error(request_id, &message);
            let header = u64::from_le_bytes(reply[..8].try_into().unwrap());
            assert_eq!(header, (u64::from(request_id) << 32) | 0xffff_ffff);
            assert_eq!(&reply[8..], message.as_bytes());
        }
    }
});
