//! The messages on the keeper link, one per SOCK_SEQPACKET packet, with
//! descriptors as SCM_RIGHTS beside the payload. Pure: encoding and
//! decoding only (fuzz target `keeper_messages`).
//!
//! Layout: one tag byte, then fixed little-endian fields, then (for records)
//! the opaque record bytes up to the end of the packet.

use crate::sys::process::Exit;

/// A message from the worker to the keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToKeeper {
    /// Hold the descriptors sent with this packet and `record` for the
    /// container `key` whose process is `pid`, until [`ToKeeper::Release`].
    Hold { key: u64, pid: u32, record: Vec<u8> },
    /// The worker saw `key`'s process exit (peeked with WNOWAIT, not reaped
    /// yet): kept so that a new worker can finish its exit handling.
    Exited { key: u64, exit: Exit },
    /// `key`'s exit handling is over: close its descriptors, forget it.
    Release { key: u64 },
    /// A clean shutdown follows: do not start another worker when this one
    /// exits; exit with it.
    Stopping,
}

/// A message from the keeper to the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// A container an earlier worker held (its descriptors beside the
    /// packet), with its exit if that is known already.
    Resume {
        key: u64,
        pid: u32,
        exit: Option<Exit>,
        record: Vec<u8>,
    },
    /// The last message of the handover (also sent, alone, to the first
    /// worker).
    HandoverDone,
    /// The keeper reaped `pid`, a held container's process.
    Reaped { pid: u32, exit: Exit },
}

/// A packet that is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("empty packet")]
    Empty,
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("message tag {tag}: {len} bytes, too short for its fields")]
    Short { tag: u8, len: usize },
    #[error("message tag {tag}: {len} bytes where exactly {expected} are expected")]
    Length {
        tag: u8,
        len: usize,
        expected: usize,
    },
    #[error("exit kind {0} is neither a code (0) nor a signal (1)")]
    ExitKind(u8),
    #[error("record of {len} bytes exceeds {limit}")]
    RecordTooLarge { len: usize, limit: usize },
}

impl ToKeeper {
    /// The packet's payload.
    pub fn encode(&self) -> Vec<u8> {
        todo!("helper A")
    }

    /// Parses one packet's payload.
    pub fn decode(packet: &[u8]) -> Result<ToKeeper, ProtoError> {
        let _ = packet;
        todo!("helper A")
    }
}

impl ToWorker {
    /// The packet's payload.
    pub fn encode(&self) -> Vec<u8> {
        todo!("helper A")
    }

    /// Parses one packet's payload.
    pub fn decode(packet: &[u8]) -> Result<ToWorker, ProtoError> {
        let _ = packet;
        todo!("helper A")
    }
}
