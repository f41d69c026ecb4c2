//! Exactly-once output across a worker crash (issue 16, phase 2).
//!
//! `read(2)` takes bytes out of a container's pipe and leaves the only copy
//! in the reader's memory: a worker killed before they reach the log loses
//! them. A journaled pipe is never read. Its bytes are spliced into a
//! **journal**, a memory file the keeper holds too, at the file's own
//! position: the kernel moves the bytes and advances the position in one
//! call, so at every instant the position counts exactly what left the
//! pipe. The worker logs them from a shared mapping of the journal and then
//! records, in the container's **ledger** (one shared page, also held by the
//! keeper), how far each log file now reaches and how much of the journal
//! those logs hold. Only then is the journal's position put back to 0.
//!
//! One round for stream `s` (position 0 and `committed[s]` 0 before it):
//! 1. splice: position `n`;
//! 2. the logs are written from journal bytes `0..n`;
//! 3. the ledger gets the logs' ends and `committed[s] = n` (one slot
//!    written, then one 8-byte store switches to it);
//! 4. position back to 0, then `committed[s] = 0`.
//!
//! A worker that resumes the container reads the position `p` and the
//! ledger: each log is cut back to its recorded end (a record written after
//! step 3, or torn, goes), and journal bytes `committed[s]..p` (if `p` is
//! larger) are logged again. A kill at any point of the round leaves exactly
//! one of: `p = n > committed = 0` (steps 1-2: the round is logged again
//! after cutting what it wrote), `p = n = committed` (after 3: logged once),
//! `p = 0` (after 4). The next splice only comes after step 4, so a
//! `committed[s]` larger than `p` always means "nothing pending".
//!
//! Pipes only: a pty master cannot be spliced. Journald logs cannot be cut
//! back, so a replayed round may appear twice there; file logs (CRI, JSON)
//! are exact, unless a `max_size` truncation happened in the lost round.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sys::shm::{self, SharedMap};

/// Bytes one splice may move, and the journal's size: a default pipe (64
/// KiB) in one call, a grown one (1 MiB) in four.
pub const JOURNAL_LEN: usize = 256 * 1024;

/// The ledger's size: one page.
pub const LEDGER_LEN: usize = 4096;

/// Log files whose ends a ledger records; further ones are logged, but not
/// cut back on resume (more than a couple per container is not seen).
pub const MAX_LOG_ENDS: usize = 8;

/// Streams with a journal: stdout (0) and stderr (1).
pub const JOURNALED_STREAMS: usize = 2;

const MAGIC: u64 = u64::from_be_bytes(*b"RMLEDGR1");
/// committed[2], count, then (dev, ino, end) per log.
const SLOT_WORDS: usize = JOURNALED_STREAMS + 1 + 3 * MAX_LOG_ENDS;
const WORD: usize = 8;
const SEQ_WORD: usize = 1;
const SLOTS_AT: usize = 2;

pub use crate::log::LogEnd;

/// What a ledger says (its live slot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerState {
    /// Per journaled stream: journal bytes `0..committed` are in the logs.
    pub committed: [u64; JOURNALED_STREAMS],
    /// The log files' ends, at most [`MAX_LOG_ENDS`].
    pub ends: Vec<LogEnd>,
}

/// A ledger page that is not one this build wrote.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("journal ledger: {0}")]
pub struct BadLedger(pub String);

fn word(bytes: &[u8], index: usize) -> u64 {
    let at = index * WORD;
    let mut raw = [0u8; WORD];
    raw.copy_from_slice(&bytes[at..at + WORD]);
    u64::from_ne_bytes(raw)
}

impl LedgerState {
    /// Reads the live slot of a ledger page (written by another process,
    /// so nothing in it is trusted). Pure.
    pub fn decode(page: &[u8]) -> Result<LedgerState, BadLedger> {
        let needed = (SLOTS_AT + 2 * SLOT_WORDS) * WORD;
        if page.len() < needed {
            return Err(BadLedger(format!(
                "{} bytes, a ledger needs {needed}",
                page.len()
            )));
        }
        let magic = word(page, 0);
        if magic != MAGIC {
            return Err(BadLedger(format!("magic {magic:#x}, expected {MAGIC:#x}")));
        }
        let slot = SLOTS_AT + (word(page, SEQ_WORD) % 2) as usize * SLOT_WORDS;
        let mut committed = [0u64; JOURNALED_STREAMS];
        for (s, c) in committed.iter_mut().enumerate() {
            *c = word(page, slot + s);
            if *c > JOURNAL_LEN as u64 {
                return Err(BadLedger(format!(
                    "committed[{s}] = {c}, past the journal's {JOURNAL_LEN} bytes"
                )));
            }
        }
        let count = word(page, slot + JOURNALED_STREAMS);
        if count > MAX_LOG_ENDS as u64 {
            return Err(BadLedger(format!(
                "{count} log ends, at most {MAX_LOG_ENDS}"
            )));
        }
        let ends = (0..count as usize)
            .map(|i| {
                let at = slot + JOURNALED_STREAMS + 1 + 3 * i;
                LogEnd {
                    dev: word(page, at),
                    ino: word(page, at + 1),
                    end: word(page, at + 2),
                }
            })
            .collect();
        Ok(LedgerState { committed, ends })
    }

    /// The words of one slot holding `self`. Pure.
    fn slot_words(&self) -> [u64; SLOT_WORDS] {
        let mut words = [0u64; SLOT_WORDS];
        words[..JOURNALED_STREAMS].copy_from_slice(&self.committed);
        let ends = &self.ends[..self.ends.len().min(MAX_LOG_ENDS)];
        words[JOURNALED_STREAMS] = ends.len() as u64;
        for (i, e) in ends.iter().enumerate() {
            let at = JOURNALED_STREAMS + 1 + 3 * i;
            words[at] = e.dev;
            words[at + 1] = e.ino;
            words[at + 2] = e.end;
        }
        words
    }

    /// A whole ledger page holding `self` (tests, and the fuzz target's
    /// round trip). Pure.
    pub fn encode_page(&self, seq: u64) -> Vec<u8> {
        let mut page = vec![0u8; LEDGER_LEN];
        let mut put = |index: usize, value: u64| {
            page[index * WORD..(index + 1) * WORD].copy_from_slice(&value.to_ne_bytes());
        };
        put(0, MAGIC);
        put(SEQ_WORD, seq);
        let slot = SLOTS_AT + (seq % 2) as usize * SLOT_WORDS;
        for (i, w) in self.slot_words().iter().enumerate() {
            put(slot + i, *w);
        }
        page
    }
}

/// A container's ledger: a one-page memory file, mapped shared. Written by
/// the engine worker that serves the container (routing after each logged
/// chunk, the journal after each reset), read by the worker that resumes it.
pub struct Ledger {
    fd: OwnedFd,
    map: SharedMap,
    /// What the live slot holds, and its sequence number.
    state: Mutex<(LedgerState, u64)>,
}

impl Ledger {
    /// A new ledger: every stream committed 0, no log ends.
    pub fn create() -> io::Result<Ledger> {
        let fd = shm::memfd(c"ringmon-ledger", LEDGER_LEN)?;
        let map = SharedMap::new(fd.as_fd(), LEDGER_LEN)?;
        let ledger = Ledger {
            fd,
            map,
            state: Mutex::new((LedgerState::default(), 0)),
        };
        ledger.store(0, MAGIC);
        ledger.publish(|_| {});
        Ok(ledger)
    }

    /// The ledger an earlier worker kept in `fd`, and what it says.
    pub fn open(fd: OwnedFd) -> io::Result<(Ledger, LedgerState)> {
        let map = SharedMap::new(fd.as_fd(), LEDGER_LEN)?;
        let state = LedgerState::decode(map.bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let seq = word(map.bytes(), SEQ_WORD);
        let ledger = Ledger {
            fd,
            map,
            state: Mutex::new((state.clone(), seq)),
        };
        Ok((ledger, state))
    }

    fn atomic(&self, index: usize) -> &AtomicU64 {
        debug_assert!((index + 1) * WORD <= self.map.len());
        // SAFETY: the index is inside the mapping (checked above in debug
        // builds; every caller uses the fixed layout's indices); the mapping
        // is page-aligned, so every word is 8-byte aligned; the mapping lives
        // as long as `self`, and every access to the page goes through
        // atomics.
        unsafe { &*self.map.as_ptr().add(index * WORD).cast::<AtomicU64>() }
    }

    fn store(&self, index: usize, value: u64) {
        self.atomic(index).store(value, Ordering::Relaxed);
    }

    /// Changes the state with `change`, writes it to the slot that is not
    /// live, then makes that slot live with one store: a kill at any moment
    /// leaves one whole slot live.
    fn publish(&self, change: impl FnOnce(&mut LedgerState)) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, seq) = &mut *guard;
        change(state);
        let next = seq.wrapping_add(1);
        let slot = SLOTS_AT + (next % 2) as usize * SLOT_WORDS;
        for (i, w) in state.slot_words().iter().enumerate() {
            self.store(slot + i, *w);
        }
        self.atomic(SEQ_WORD).store(next, Ordering::Release);
        *seq = next;
    }

    /// After logging journal bytes `0..len` of `stream`: the logs now end
    /// at `ends` and hold them. Called once per logged chunk: the ends are
    /// copied into the state's own list, which allocates only when it grows.
    pub fn commit(&self, stream: usize, len: usize, ends: &[LogEnd]) {
        self.publish(|s| {
            s.committed[stream] = len as u64;
            s.ends.clear();
            s.ends.extend_from_slice(ends);
        });
    }

    /// The logs end at `ends` (after a resume cut and replayed them).
    pub fn set_ends(&self, ends: Vec<LogEnd>) {
        self.publish(|s| s.ends = ends);
    }

    /// `stream`'s journal is back at position 0.
    fn reset(&self, stream: usize) {
        self.publish(|s| s.committed[stream] = 0);
    }

    /// Makes the page unreadable as a ledger (its magic word zeroed): for a
    /// worker that gives up on the journal and logs the pipes directly, so
    /// that a later resume that still finds this page does not cut the logs
    /// back to its old ends.
    pub fn invalidate(&self) {
        self.atomic(0).store(0, Ordering::Release);
    }

    /// What the live slot says now.
    pub fn state(&self) -> LedgerState {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

impl AsFd for Ledger {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What one [`Journal::splice_round`] did.
#[derive(Debug)]
pub enum SpliceRound {
    /// This many bytes left the pipe, were reported, and the journal is
    /// reset. Fewer than [`JOURNAL_LEN`]: the pipe held no more.
    Moved(usize),
    /// The pipe is empty (`EAGAIN`).
    Empty,
    /// A signal cut the splice; nothing moved.
    Interrupted,
    /// No writer is left and the pipe is empty.
    Eof,
    /// The splice or the reset failed: the source is done.
    Failed(io::Error),
}

/// One journaled stream of a container: its memory file, mapped shared.
pub struct Journal {
    fd: OwnedFd,
    map: SharedMap,
    ledger: Arc<Ledger>,
    /// Index into the ledger's `committed`: 0 stdout, 1 stderr.
    stream: usize,
}

impl Journal {
    /// A new, empty journal for `stream` (0 stdout, 1 stderr).
    pub fn create(ledger: Arc<Ledger>, stream: usize) -> io::Result<Journal> {
        let name: &CStr = if stream == 0 {
            c"ringmon-journal-stdout"
        } else {
            c"ringmon-journal-stderr"
        };
        let fd = shm::memfd(name, JOURNAL_LEN)?;
        Journal::open(fd, ledger, stream)
    }

    /// The journal an earlier worker kept in `fd`.
    pub fn open(fd: OwnedFd, ledger: Arc<Ledger>, stream: usize) -> io::Result<Journal> {
        assert!(stream < JOURNALED_STREAMS, "journal stream {stream}");
        let map = SharedMap::new(fd.as_fd(), JOURNAL_LEN)?;
        Ok(Journal {
            fd,
            map,
            ledger,
            stream,
        })
    }

    /// Bytes that left the pipe but are not in the logs according to
    /// `state` (the ledger as the earlier worker left it): what a resume
    /// logs again before reading the pipe.
    pub fn pending(&self, state: &LedgerState) -> io::Result<&[u8]> {
        let position = shm::position(self.fd.as_fd())?.min(JOURNAL_LEN as u64) as usize;
        let committed = state.committed[self.stream] as usize;
        Ok(if position > committed {
            &self.map.bytes()[committed..position]
        } else {
            &[]
        })
    }

    /// Moves what `pipe` holds (up to [`JOURNAL_LEN`]) into the journal;
    /// the bytes are then `self.bytes(n)` until [`Journal::consumed`]. Never
    /// blocks: `EAGAIN` when the pipe is empty; `Ok(0)` at its end.
    pub fn splice_from(&mut self, pipe: BorrowedFd<'_>) -> io::Result<usize> {
        shm::splice_to_position(pipe, self.fd.as_fd(), JOURNAL_LEN)
    }

    /// The first `len` bytes of the journal (what the last splice moved).
    pub fn bytes(&self, len: usize) -> &[u8] {
        &self.map.bytes()[..len.min(JOURNAL_LEN)]
    }

    /// The bytes of the last splice (or of a resume's replay) were handled:
    /// logged, with the ledger committing them. Position back to 0.
    pub fn consumed(&mut self) -> io::Result<()> {
        shm::seek_to(self.fd.as_fd(), 0)?;
        self.ledger.reset(self.stream);
        Ok(())
    }

    /// One round of the protocol for a backend: splices what `pipe` holds,
    /// hands the bytes to `report` (which logs them and commits them in the
    /// ledger), then resets the journal.
    pub fn splice_round(
        &mut self,
        pipe: BorrowedFd<'_>,
        report: impl FnOnce(&[u8]),
    ) -> SpliceRound {
        match self.splice_from(pipe) {
            Ok(0) => SpliceRound::Eof,
            Ok(len) => {
                report(self.bytes(len));
                match self.consumed() {
                    Ok(()) => SpliceRound::Moved(len),
                    Err(err) => {
                        // Never splice again into a journal that was not
                        // reset: its bytes would count twice.
                        tracing::warn!("resetting an output journal: {err}");
                        SpliceRound::Failed(err)
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => SpliceRound::Empty,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => SpliceRound::Interrupted,
            Err(err) => SpliceRound::Failed(err),
        }
    }

    /// Gives the journal's pages back (idle output).
    pub fn release_memory(&self) {
        let _ = shm::punch_hole(self.fd.as_fd(), JOURNAL_LEN);
    }

    /// The ledger stream index this journal commits to.
    pub fn stream(&self) -> usize {
        self.stream
    }

    /// The container's ledger, which the routing commits this journal's
    /// logged chunks to.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }
}

impl AsFd for Journal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_page_round_trip_and_checks() {
        let state = LedgerState {
            committed: [5, 0],
            ends: vec![LogEnd {
                dev: 1,
                ino: 2,
                end: 3,
            }],
        };
        for seq in [0, 1, 7] {
            assert_eq!(
                LedgerState::decode(&state.encode_page(seq)),
                Ok(state.clone())
            );
        }
        assert!(LedgerState::decode(&[0u8; 16]).is_err());
        assert!(LedgerState::decode(&[0u8; LEDGER_LEN]).is_err());
        let mut page = state.encode_page(0);
        page[SLOTS_AT * WORD..SLOTS_AT * WORD + 8]
            .copy_from_slice(&(JOURNAL_LEN as u64 + 1).to_ne_bytes());
        assert!(LedgerState::decode(&page).is_err());
    }

    #[test]
    fn a_round_and_what_a_resume_sees_at_each_step() {
        let ledger = Arc::new(Ledger::create().unwrap());
        let mut journal = Journal::create(Arc::clone(&ledger), 0).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let resume_view = |journal: &Journal, ledger: &Ledger| {
            let copy = ledger.as_fd().try_clone_to_owned().unwrap();
            let (_, state) = Ledger::open(copy).unwrap();
            journal.pending(&state).unwrap().to_vec()
        };
        nix::unistd::write(&w, b"line 1\n").unwrap();
        let n = journal.splice_from(r.as_fd()).unwrap();
        assert_eq!(journal.bytes(n), b"line 1\n");
        // Killed before the commit: the round is pending.
        assert_eq!(resume_view(&journal, &ledger), b"line 1\n");
        let end = LogEnd {
            dev: 9,
            ino: 8,
            end: 40,
        };
        ledger.commit(0, n, &[end]);
        assert_eq!(resume_view(&journal, &ledger), b"");
        journal.consumed().unwrap();
        assert_eq!(resume_view(&journal, &ledger), b"");
        assert_eq!(ledger.state().ends, vec![end]);
        assert_eq!(ledger.state().committed, [0, 0]);
        nix::unistd::write(&w, b"x").unwrap();
        assert_eq!(journal.splice_from(r.as_fd()).unwrap(), 1);
        assert_eq!(resume_view(&journal, &ledger), b"x");
    }
}
