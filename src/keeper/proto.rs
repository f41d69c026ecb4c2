//! The messages on the keeper link, one per SOCK_SEQPACKET packet, with
//! descriptors as SCM_RIGHTS beside the payload. Pure: encoding and
//! decoding only (fuzz target `keeper_messages`).
//!
//! Layout: one tag byte, then fixed little-endian fields, then (for records)
//! the opaque record bytes up to the end of the packet.

use super::MAX_RECORD_BYTES;
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
    #[error("exit signal number {0} is outside 1..={max}", max = MAX_SIGNAL)]
    SignalNumber(i32),
    #[error("exit presence byte {0} is neither absent (0) nor present (1)")]
    ExitPresence(u8),
    #[error("record of {len} bytes exceeds {limit}")]
    RecordTooLarge { len: usize, limit: usize },
}

const TAG_HOLD: u8 = 1;
const TAG_EXITED: u8 = 2;
const TAG_RELEASE: u8 = 3;
const TAG_STOPPING: u8 = 4;

const TAG_RESUME: u8 = 1;
const TAG_HANDOVER_DONE: u8 = 2;
const TAG_REAPED: u8 = 3;

/// The largest signal number Linux has (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;

const EXIT_CODE: u8 = 0;
const EXIT_SIGNAL: u8 = 1;
/// An exit on the wire: kind byte, then the value (i32 LE).
const EXIT_BYTES: usize = 5;

/// Hold: tag, key, pid, record.
const HOLD_HEADER: usize = 1 + 8 + 4;
/// Exited: tag, key, exit.
const EXITED_LEN: usize = 1 + 8 + EXIT_BYTES;
/// Release: tag, key.
const RELEASE_LEN: usize = 1 + 8;
/// Resume: tag, key, pid, exit-present byte, [exit], record.
const RESUME_HEADER: usize = 1 + 8 + 4 + 1;
/// Reaped: tag, pid, exit.
const REAPED_LEN: usize = 1 + 4 + EXIT_BYTES;

fn put_exit(out: &mut Vec<u8>, exit: Exit) {
    let (kind, value) = match exit {
        Exit::Code(c) => (EXIT_CODE, c),
        Exit::Signal(s) => (EXIT_SIGNAL, s),
    };
    out.push(kind);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Reads fixed fields front to back; the caller checked the length.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        head.try_into().expect("split_at gave N bytes")
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn exit(&mut self) -> Result<Exit, ProtoError> {
        let kind = self.u8();
        let value = i32::from_le_bytes(self.take());
        match kind {
            EXIT_CODE => Ok(Exit::Code(value)),
            // Exit::code adds 128: only a real signal number may pass.
            EXIT_SIGNAL if (1..=MAX_SIGNAL).contains(&value) => Ok(Exit::Signal(value)),
            EXIT_SIGNAL => Err(ProtoError::SignalNumber(value)),
            other => Err(ProtoError::ExitKind(other)),
        }
    }

    fn record(self) -> Result<Vec<u8>, ProtoError> {
        if self.bytes.len() > MAX_RECORD_BYTES {
            return Err(ProtoError::RecordTooLarge {
                len: self.bytes.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        Ok(self.bytes.to_vec())
    }
}

/// The tag and the fields after it, checking the length: exactly
/// `fixed` bytes, or at least `fixed` when a record follows.
fn fields(packet: &[u8], fixed: usize, record_follows: bool) -> Result<Fields<'_>, ProtoError> {
    let tag = packet[0];
    let len = packet.len();
    if record_follows && len < fixed {
        return Err(ProtoError::Short { tag, len });
    }
    if !record_follows && len != fixed {
        return Err(ProtoError::Length {
            tag,
            len,
            expected: fixed,
        });
    }
    Ok(Fields {
        bytes: &packet[1..],
    })
}

impl ToKeeper {
    /// The packet's payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToKeeper::Hold { key, pid, record } => {
                let mut out = Vec::with_capacity(HOLD_HEADER + record.len());
                out.push(TAG_HOLD);
                out.extend_from_slice(&key.to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(record);
                out
            }
            ToKeeper::Exited { key, exit } => {
                let mut out = Vec::with_capacity(EXITED_LEN);
                out.push(TAG_EXITED);
                out.extend_from_slice(&key.to_le_bytes());
                put_exit(&mut out, *exit);
                out
            }
            ToKeeper::Release { key } => {
                let mut out = Vec::with_capacity(RELEASE_LEN);
                out.push(TAG_RELEASE);
                out.extend_from_slice(&key.to_le_bytes());
                out
            }
            ToKeeper::Stopping => vec![TAG_STOPPING],
        }
    }

    /// Parses one packet's payload.
    pub fn decode(packet: &[u8]) -> Result<ToKeeper, ProtoError> {
        let Some(&tag) = packet.first() else {
            return Err(ProtoError::Empty);
        };
        match tag {
            TAG_HOLD => {
                let mut f = fields(packet, HOLD_HEADER, true)?;
                let key = f.u64();
                let pid = f.u32();
                let record = f.record()?;
                Ok(ToKeeper::Hold { key, pid, record })
            }
            TAG_EXITED => {
                let mut f = fields(packet, EXITED_LEN, false)?;
                let key = f.u64();
                let exit = f.exit()?;
                Ok(ToKeeper::Exited { key, exit })
            }
            TAG_RELEASE => {
                let mut f = fields(packet, RELEASE_LEN, false)?;
                Ok(ToKeeper::Release { key: f.u64() })
            }
            TAG_STOPPING => {
                fields(packet, 1, false)?;
                Ok(ToKeeper::Stopping)
            }
            other => Err(ProtoError::UnknownTag(other)),
        }
    }
}

impl ToWorker {
    /// The packet's payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToWorker::Resume {
                key,
                pid,
                exit,
                record,
            } => {
                let mut out = Vec::with_capacity(RESUME_HEADER + EXIT_BYTES + record.len());
                out.push(TAG_RESUME);
                out.extend_from_slice(&key.to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
                match exit {
                    Some(exit) => {
                        out.push(1);
                        put_exit(&mut out, *exit);
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(record);
                out
            }
            ToWorker::HandoverDone => vec![TAG_HANDOVER_DONE],
            ToWorker::Reaped { pid, exit } => {
                let mut out = Vec::with_capacity(REAPED_LEN);
                out.push(TAG_REAPED);
                out.extend_from_slice(&pid.to_le_bytes());
                put_exit(&mut out, *exit);
                out
            }
        }
    }

    /// Parses one packet's payload.
    pub fn decode(packet: &[u8]) -> Result<ToWorker, ProtoError> {
        let Some(&tag) = packet.first() else {
            return Err(ProtoError::Empty);
        };
        match tag {
            TAG_RESUME => {
                let mut f = fields(packet, RESUME_HEADER, true)?;
                let key = f.u64();
                let pid = f.u32();
                let exit = match f.u8() {
                    0 => None,
                    1 => {
                        if f.bytes.len() < EXIT_BYTES {
                            return Err(ProtoError::Short {
                                tag,
                                len: packet.len(),
                            });
                        }
                        Some(f.exit()?)
                    }
                    other => return Err(ProtoError::ExitPresence(other)),
                };
                let record = f.record()?;
                Ok(ToWorker::Resume {
                    key,
                    pid,
                    exit,
                    record,
                })
            }
            TAG_HANDOVER_DONE => {
                fields(packet, 1, false)?;
                Ok(ToWorker::HandoverDone)
            }
            TAG_REAPED => {
                let mut f = fields(packet, REAPED_LEN, false)?;
                let pid = f.u32();
                let exit = f.exit()?;
                Ok(ToWorker::Reaped { pid, exit })
            }
            other => Err(ProtoError::UnknownTag(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_keeper_messages() -> Vec<ToKeeper> {
        vec![
            ToKeeper::Hold {
                key: 7,
                pid: 4242,
                record: br#"{"id":"abc"}"#.to_vec(),
            },
            ToKeeper::Hold {
                key: u64::MAX,
                pid: u32::MAX,
                record: vec![0xff; MAX_RECORD_BYTES],
            },
            ToKeeper::Hold {
                key: 0,
                pid: 1,
                record: Vec::new(),
            },
            ToKeeper::Exited {
                key: 3,
                exit: Exit::Code(-1),
            },
            ToKeeper::Exited {
                key: 3,
                exit: Exit::Signal(9),
            },
            ToKeeper::Release { key: 1 << 40 },
            ToKeeper::Stopping,
        ]
    }

    fn to_worker_messages() -> Vec<ToWorker> {
        vec![
            ToWorker::Resume {
                key: 9,
                pid: 100,
                exit: None,
                record: b"r".to_vec(),
            },
            ToWorker::Resume {
                key: 9,
                pid: 100,
                exit: Some(Exit::Code(137)),
                record: Vec::new(),
            },
            ToWorker::Resume {
                key: 1,
                pid: 2,
                exit: Some(Exit::Signal(15)),
                record: vec![1; MAX_RECORD_BYTES],
            },
            ToWorker::HandoverDone,
            ToWorker::Reaped {
                pid: 77,
                exit: Exit::Code(0),
            },
            ToWorker::Reaped {
                pid: 77,
                exit: Exit::Signal(MAX_SIGNAL),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_fits_a_packet() {
        for m in to_keeper_messages() {
            let bytes = m.encode();
            assert!(bytes.len() <= crate::keeper::MAX_PACKET_BYTES, "{m:?}");
            assert_eq!(ToKeeper::decode(&bytes), Ok(m));
        }
        for m in to_worker_messages() {
            let bytes = m.encode();
            assert!(bytes.len() <= crate::keeper::MAX_PACKET_BYTES, "{m:?}");
            assert_eq!(ToWorker::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn an_empty_packet_and_unknown_tags_are_refused() {
        assert_eq!(ToKeeper::decode(&[]), Err(ProtoError::Empty));
        assert_eq!(ToWorker::decode(&[]), Err(ProtoError::Empty));
        assert_eq!(ToKeeper::decode(&[0]), Err(ProtoError::UnknownTag(0)));
        assert_eq!(ToKeeper::decode(&[5, 1]), Err(ProtoError::UnknownTag(5)));
        assert_eq!(ToWorker::decode(&[4]), Err(ProtoError::UnknownTag(4)));
    }

    #[test]
    fn fixed_messages_need_their_exact_length() {
        let exited = ToKeeper::Exited {
            key: 1,
            exit: Exit::Code(0),
        }
        .encode();
        assert_eq!(
            ToKeeper::decode(&exited[..exited.len() - 1]),
            Err(ProtoError::Length {
                tag: TAG_EXITED,
                len: EXITED_LEN - 1,
                expected: EXITED_LEN
            })
        );
        let mut long = exited.clone();
        long.push(0);
        assert!(matches!(
            ToKeeper::decode(&long),
            Err(ProtoError::Length { len, .. }) if len == EXITED_LEN + 1
        ));
        assert!(matches!(
            ToKeeper::decode(&[TAG_RELEASE, 1, 2]),
            Err(ProtoError::Length {
                tag: TAG_RELEASE,
                len: 3,
                expected: RELEASE_LEN
            })
        ));
        assert!(matches!(
            ToKeeper::decode(&[TAG_STOPPING, 0]),
            Err(ProtoError::Length { expected: 1, .. })
        ));
        assert!(matches!(
            ToWorker::decode(&[TAG_HANDOVER_DONE, 0]),
            Err(ProtoError::Length { expected: 1, .. })
        ));
        assert!(matches!(
            ToWorker::decode(&[TAG_REAPED, 1, 0, 0, 0, 0]),
            Err(ProtoError::Length {
                tag: TAG_REAPED,
                len: 6,
                expected: REAPED_LEN
            })
        ));
    }

    #[test]
    fn messages_with_a_record_need_their_header() {
        assert_eq!(
            ToKeeper::decode(&[TAG_HOLD; HOLD_HEADER - 1]),
            Err(ProtoError::Short {
                tag: TAG_HOLD,
                len: HOLD_HEADER - 1
            })
        );
        assert_eq!(
            ToWorker::decode(&[TAG_RESUME, 0, 0]),
            Err(ProtoError::Short {
                tag: TAG_RESUME,
                len: 3
            })
        );
        // The exit is announced but cut off.
        let mut resume = ToWorker::Resume {
            key: 1,
            pid: 2,
            exit: None,
            record: Vec::new(),
        }
        .encode();
        resume[RESUME_HEADER - 1] = 1;
        resume.extend_from_slice(&[0, 1]);
        assert_eq!(
            ToWorker::decode(&resume),
            Err(ProtoError::Short {
                tag: TAG_RESUME,
                len: RESUME_HEADER + 2
            })
        );
    }

    #[test]
    fn bad_exit_kinds_and_presence_bytes_are_refused() {
        let mut exited = ToKeeper::Exited {
            key: 1,
            exit: Exit::Code(0),
        }
        .encode();
        exited[9] = 2;
        assert_eq!(ToKeeper::decode(&exited), Err(ProtoError::ExitKind(2)));
        let mut reaped = ToWorker::Reaped {
            pid: 1,
            exit: Exit::Signal(9),
        }
        .encode();
        reaped[5] = 0xff;
        assert_eq!(ToWorker::decode(&reaped), Err(ProtoError::ExitKind(0xff)));
        let mut resume = ToWorker::Resume {
            key: 1,
            pid: 2,
            exit: None,
            record: b"x".to_vec(),
        }
        .encode();
        resume[RESUME_HEADER - 1] = 2;
        assert_eq!(ToWorker::decode(&resume), Err(ProtoError::ExitPresence(2)));
    }

    #[test]
    fn signal_numbers_outside_linux_range_are_refused() {
        for signal in [0, -1, MAX_SIGNAL + 1, i32::MIN, i32::MAX] {
            let reaped = ToWorker::Reaped {
                pid: 1,
                exit: Exit::Signal(signal),
            }
            .encode();
            assert_eq!(
                ToWorker::decode(&reaped),
                Err(ProtoError::SignalNumber(signal))
            );
            let exited = ToKeeper::Exited {
                key: 1,
                exit: Exit::Signal(signal),
            }
            .encode();
            assert_eq!(
                ToKeeper::decode(&exited),
                Err(ProtoError::SignalNumber(signal))
            );
        }
    }

    #[test]
    fn records_above_the_limit_are_refused() {
        let hold = ToKeeper::Hold {
            key: 1,
            pid: 2,
            record: vec![0; MAX_RECORD_BYTES + 1],
        }
        .encode();
        assert_eq!(
            ToKeeper::decode(&hold),
            Err(ProtoError::RecordTooLarge {
                len: MAX_RECORD_BYTES + 1,
                limit: MAX_RECORD_BYTES
            })
        );
        let resume = ToWorker::Resume {
            key: 1,
            pid: 2,
            exit: Some(Exit::Code(1)),
            record: vec![0; MAX_RECORD_BYTES + 1],
        }
        .encode();
        assert!(matches!(
            ToWorker::decode(&resume),
            Err(ProtoError::RecordTooLarge { .. })
        ));
    }
}
