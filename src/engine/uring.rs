//! The io_uring backend: one ring per worker, one operation in flight per
//! source.
//!
//! * pipes: one `IORING_OP_READ_MULTISHOT` into the ring's provided buffers
//!   (64 × 16 KiB per worker, where the kernel has multishot reads: probed),
//!   armed once and re-armed only when the kernel ends it (no free buffer, a
//!   signal); 0 bytes = EOF. A light source then needs no submission per
//!   read and no buffer of its own. A read that fills a whole provided
//!   buffer marks a busy source: its multishot read is cancelled and it
//!   moves to the single-read mode below with a 256 KiB buffer of its own
//!   (large reads mean few completions and large log writes, and a busy
//!   stream cycling through the shared buffers would make every one of them
//!   resident). Measured (ringmon-sidebyside, 500 logging containers):
//!   per-container RSS 25 → 18 KiB, CPU per line the same within noise
//!   (0.80 → 0.78 µs), throughput the same within noise.
//! * pipes without multishot reads, and busy ones: one `IORING_OP_READ` into
//!   the source's own 256 KiB buffer, re-armed after each completion. Since
//!   Linux 6.4 such reads wait on the pipe's poll queue instead of a kernel
//!   worker.
//! * ptys (non-blocking fds): `IORING_OP_POLL_ADD(POLLIN)`, then `read(2)`
//!   until `EAGAIN` (bounded, for fairness), then re-arm the poll; `EIO` or 0
//!   bytes = EOF. A pipe that turns out to be non-blocking (`EAGAIN` from a
//!   ring read) is switched to the same mode instead of spinning.
//! * journaled pipes (`StreamSource::journal`, see `engine::journal`): never
//!   read, by the ring or otherwise. `IORING_OP_POLL_ADD(POLLIN)` like a pty,
//!   then `splice(2)` into the journal until `EAGAIN` (bounded, for
//!   fairness), each splice reported from the journal's mapping and the
//!   journal reset after the report; 0 bytes = EOF. No read buffer.
//! * the worker's wake-up eventfd is read through the ring like a pipe.
//! * sinks (attach sockets): `IORING_OP_POLL_ADD(POLLOUT)` on request. A sink
//!   removed while its poll is in flight keeps its slot and fd until the
//!   cancelled poll's completion is reaped, so neither the slot nor the
//!   descriptor number can be reused under the kernel.
//! * the ring runs with `DEFER_TASKRUN` (see `sys::uring::Ring::new`), so a
//!   wait first posts finished completions and only then submits (keeping
//!   the order sources became ready in), and keeps fetching completion work
//!   until none is left, for up to `MAX_COMPLETION_ROUNDS` rounds (the
//!   kernel runs a bounded amount per entry).
//!
//! Why io_uring is not cheaper than epoll here (BENCHMARKS.md, "Density"):
//! with wake-ups coalesced, a logged burst costs mostly the buffered ext4
//! `write(2)` of the log record (~40 % of the worker's CPU, a third of that
//! the inode time update) and the pipe read itself (~20 %), which are the
//! same kernel work on either backend; io_uring saves the read syscalls'
//! entry and exit, which is not enough to show. Not done: registered files,
//! log writes through the ring.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::eventfd::EventFd;

use super::backend::{Backend, BackendEvent, SinkId, SourceId};
use super::journal::{Journal, SpliceRound, JOURNAL_LEN};
use super::pipe_size::{PipeSizer, FULL_DEFAULT_PIPE};
use super::SourceKind;
use crate::sys::uring::{Completion, Ring, SlotId};

/// Per-source read buffer: large reads mean few completions and large log
/// writes; 256 KiB drains a default pipe in one read and a grown (1 MiB)
/// one in four. Only the pages a source actually fills become resident, so
/// an idle container's buffers cost address space, not memory.
const SOURCE_BUFFER_LEN: usize = 256 * 1024;

/// `read(2)` calls per readiness notification before re-arming the poll, so a
/// chatty pty cannot starve the worker's other sources.
const MAX_READS_PER_POLL: usize = 16;

/// Rounds of completion work one `wait` runs (see `Backend::wait` below).
const MAX_COMPLETION_ROUNDS: usize = 8;

/// Submission queue size; completions beyond it are kept by the kernel.
const RING_ENTRIES: u32 = 256;

/// Provided buffers per worker for multishot reads, and their size. A
/// multishot read that fills a whole buffer marks a busy source (by the
/// worker's own measure, `BUSY_READ`: 16 KiB), which then moves to reads into a
/// `SOURCE_BUFFER_LEN` buffer of its own: large reads and writes are what a
/// busy stream needs, and a busy stream cycling through all the shared
/// buffers would make every one of them resident. So the buffers hold light
/// output only: 64 of them serve 64 sources becoming ready within one wait
/// (more get `ENOBUFS` and are re-armed), and at most 1 MiB of them is ever
/// resident per worker.
const PROVIDED_BUFFERS: u16 = 64;
const PROVIDED_BUFFER_LEN: u32 = super::worker::BUSY_READ as u32;

/// How a source's bytes are fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadMode {
    /// One `IORING_OP_READ_MULTISHOT` into the provided buffers, armed once
    /// for as long as the source stays light (pipes, where the kernel has
    /// them). `leaving`: it is being cancelled to move to `RingRead`.
    Multishot { leaving: bool },
    /// `IORING_OP_READ` does the read (blocking fds).
    RingRead,
    /// `IORING_OP_POLL_ADD` for readability, then `read(2)` (non-blocking
    /// fds), or `splice(2)` into the source's journal (journaled pipes).
    PollThenRead,
}

struct UringSource {
    fd: OwnedFd,
    mode: ReadMode,
    kind: SourceKind,
    /// Pipe growth was tried already (see `PipeSizer`).
    grown: bool,
    /// Journaled pipe: spliced into this, never read (mode `PollThenRead`).
    journal: Option<Journal>,
}

struct UringSink {
    fd: OwnedFd,
    /// A `POLLOUT` poll is in flight.
    polling: bool,
}

/// What a ring slot is used for.
enum SlotUser {
    Source(UringSource),
    Sink(UringSink),
    /// A removed sink whose cancelled poll has not completed yet: the fd
    /// stays open (and the slot taken) until that completion is reaped.
    RemovedSink {
        /// Held only to be closed on drop.
        _fd: OwnedFd,
    },
}

pub struct UringBackend {
    // Declared first so that it is dropped first: dropping the ring cancels
    // and reaps the operations in flight before the fds below are closed.
    ring: Ring,
    waker: Arc<EventFd>,
    wake_slot: SlotId,
    /// Whether the eventfd read is in flight (re-armed lazily if arming
    /// failed, so that the worker can still be woken).
    wake_armed: bool,
    /// Indexed by slot index; a source's `SourceId` and a sink's `SinkId`
    /// are its slot index.
    slot_users: Vec<Option<SlotUser>>,
    pipe_sizer: PipeSizer,
}

/// The source using `slot`, if a source does (a free function so that the
/// ring can be borrowed mutably alongside).
fn source_at(slot_users: &[Option<SlotUser>], slot: SlotId) -> Option<&UringSource> {
    match &slot_users[slot.index()] {
        Some(SlotUser::Source(source)) => Some(source),
        _ => None,
    }
}

impl UringBackend {
    /// Sets up the ring and starts reading `waker` (which must be a blocking
    /// eventfd).
    pub fn new(waker: Arc<EventFd>, pipe_sizer: PipeSizer) -> io::Result<UringBackend> {
        let mut ring = Ring::new(RING_ENTRIES)?;
        if let Err(err) = ring.enable_provided_buffers(PROVIDED_BUFFERS, PROVIDED_BUFFER_LEN) {
            tracing::debug!("io_uring multishot reads unavailable, pipes use single reads: {err}");
        }
        let wake_slot = ring.add_slot(std::mem::size_of::<u64>());
        ring.read(wake_slot, waker.as_fd())?;
        Ok(UringBackend {
            ring,
            waker,
            wake_slot,
            wake_armed: true,
            slot_users: Vec::new(),
            pipe_sizer,
        })
    }

    fn sink_mut(&mut self, sink: SinkId) -> &mut UringSink {
        match self.slot_users.get_mut(sink.0 as usize) {
            Some(Some(SlotUser::Sink(sink))) => sink,
            _ => panic!("{sink:?} is not a registered sink"),
        }
    }

    /// Allocates a slot (buffer of `buffer_len` bytes) for `user`.
    fn add_slot_user(&mut self, buffer_len: usize, user: SlotUser) -> SlotId {
        let slot = self.ring.add_slot(buffer_len);
        if self.slot_users.len() <= slot.index() {
            self.slot_users.resize_with(slot.index() + 1, || None);
        }
        self.slot_users[slot.index()] = Some(user);
        slot
    }

    /// Frees an idle slot, closing whatever fd its user owned.
    fn free_slot(&mut self, slot: SlotId) {
        self.slot_users[slot.index()] = None;
        self.ring.remove_slot(slot);
    }

    fn arm(&mut self, slot: SlotId) -> io::Result<()> {
        let source = source_at(&self.slot_users, slot).expect("arming a closed source");
        match source.mode {
            ReadMode::Multishot { .. } => self.ring.read_multishot(slot, source.fd.as_fd()),
            ReadMode::RingRead => self.ring.read(slot, source.fd.as_fd()),
            ReadMode::PollThenRead => self.ring.poll_readable(slot, source.fd.as_fd()),
        }
    }

    /// Closes the source, frees its slot and reports its EOF.
    fn close(
        &mut self,
        slot: SlotId,
        error: Option<io::Error>,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) {
        self.free_slot(slot);
        on_event(BackendEvent::Eof {
            source: SourceId(slot.index() as u32),
            error,
        });
    }

    /// Re-arms the source, or closes it if even that fails (the ring is
    /// unusable for it; reporting EOF keeps the container from hanging).
    fn rearm_or_close(&mut self, slot: SlotId, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        if let Err(err) = self.arm(slot) {
            self.close(slot, Some(err), on_event);
        }
    }

    fn complete_source(
        &mut self,
        completion: Completion,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) {
        let slot = completion.slot;
        let source_id = SourceId(slot.index() as u32);
        let mode = match source_at(&self.slot_users, slot) {
            Some(source) => source.mode,
            None => return,
        };
        match (mode, completion.outcome()) {
            (ReadMode::Multishot { leaving }, _) => {
                self.complete_multishot(completion, leaving, on_event)
            }
            (ReadMode::RingRead, Ok(0)) => self.close(slot, None, on_event),
            (ReadMode::RingRead, Ok(len)) => {
                if len as usize >= FULL_DEFAULT_PIPE {
                    self.grow_once(slot, on_event);
                }
                on_event(BackendEvent::Data {
                    source: source_id,
                    bytes: &self.ring.buffer(slot)[..len as usize],
                });
                self.rearm_or_close(slot, on_event);
            }
            (ReadMode::RingRead, Err(Errno::EAGAIN)) => {
                // A non-blocking pipe: wait for readability instead.
                self.set_mode(slot, ReadMode::PollThenRead);
                self.rearm_or_close(slot, on_event);
            }
            (ReadMode::PollThenRead, Ok(_revents)) => self.read_until_drained(slot, on_event),
            (_, Err(Errno::EINTR)) => self.rearm_or_close(slot, on_event),
            (_, Err(errno)) => self.close_failed(slot, errno, on_event),
        }
    }

    /// Closes a source whose read failed with `errno`; `EIO` (a pty master
    /// whose slave side closed) is a plain EOF.
    fn close_failed(
        &mut self,
        slot: SlotId,
        errno: Errno,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) {
        let error = (errno != Errno::EIO).then(|| io::Error::from(errno));
        self.close(slot, error, on_event);
    }

    /// Moves an idle source to single reads into a buffer of its own.
    fn switch_to_single_reads(&mut self, slot: SlotId, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        self.ring.replace_buffer(slot, SOURCE_BUFFER_LEN);
        self.set_mode(slot, ReadMode::RingRead);
        self.rearm_or_close(slot, on_event);
    }

    /// A completion of a source's multishot read.
    fn complete_multishot(
        &mut self,
        completion: Completion,
        leaving: bool,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) {
        let slot = completion.slot;
        let mut busy = false;
        if let Some(bid) = completion.buffer {
            if let Ok(len) = completion.outcome() {
                on_event(BackendEvent::Data {
                    source: SourceId(slot.index() as u32),
                    bytes: self.ring.provided_buffer(bid, len as usize),
                });
                busy = len >= PROVIDED_BUFFER_LEN;
            }
            self.ring.recycle(bid);
        }
        if completion.more {
            if busy && !leaving {
                // Busy: move to reads into a large buffer of its own once
                // the cancelled multishot read has posted its last completion.
                self.set_mode(slot, ReadMode::Multishot { leaving: true });
                if let Err(err) = self.ring.cancel(slot) {
                    tracing::warn!("cancelling a multishot read: {err}");
                    self.set_mode(slot, ReadMode::Multishot { leaving: false });
                }
            }
            return;
        }
        // The multishot read ended (the kernel also ends it after a read
        // that filled the buffer); the slot is idle.
        match completion.outcome() {
            Ok(0) if completion.buffer.is_none() => self.close(slot, None, on_event),
            _ if leaving || busy => self.switch_to_single_reads(slot, on_event),
            // Data without `more` (the kernel stopped it), no free buffer,
            // a signal: arm it again.
            Ok(_) | Err(Errno::ENOBUFS | Errno::EINTR | Errno::ECANCELED) => {
                self.rearm_or_close(slot, on_event)
            }
            // A file that cannot do multishot reads: single reads then.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP | Errno::EBADFD) => {
                self.switch_to_single_reads(slot, on_event)
            }
            Err(errno) => self.close_failed(slot, errno, on_event),
        }
    }

    fn set_mode(&mut self, slot: SlotId, mode: ReadMode) {
        if let Some(SlotUser::Source(source)) = &mut self.slot_users[slot.index()] {
            source.mode = mode;
        }
    }

    /// A read filled the whole buffer: the producer outruns the worker, so
    /// grow its pipe (once per source; see `PipeSizer`).
    fn grow_once(&mut self, slot: SlotId, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        if let Some(SlotUser::Source(source)) = &mut self.slot_users[slot.index()] {
            if !source.grown {
                source.grown = true;
                if source.kind == SourceKind::Pipe {
                    if let Some(capacity) = self.pipe_sizer.grow(source.fd.as_fd()) {
                        on_event(BackendEvent::PipeResized {
                            source: SourceId(slot.index() as u32),
                            capacity,
                        });
                    }
                }
            }
        }
    }

    /// `read(2)` a readable non-blocking source until `EAGAIN` (then re-arm
    /// the poll) or EOF, at most `MAX_READS_PER_POLL` times.
    fn read_until_drained(&mut self, slot: SlotId, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        if source_at(&self.slot_users, slot).is_some_and(|source| source.journal.is_some()) {
            return self.splice_until_drained(slot, on_event);
        }
        let source_id = SourceId(slot.index() as u32);
        for _ in 0..MAX_READS_PER_POLL {
            let Some(source) = source_at(&self.slot_users, slot) else {
                return;
            };
            match nix::unistd::read(&source.fd, self.ring.buffer_mut(slot)) {
                Ok(0) => return self.close(slot, None, on_event),
                Ok(len) => {
                    if len >= FULL_DEFAULT_PIPE {
                        self.grow_once(slot, on_event);
                    }
                    on_event(BackendEvent::Data {
                        source: source_id,
                        bytes: &self.ring.buffer(slot)[..len],
                    })
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                // A pty master reads EIO once every slave fd is closed.
                Err(Errno::EIO) => return self.close(slot, None, on_event),
                Err(errno) => return self.close(slot, Some(errno.into()), on_event),
            }
        }
        self.rearm_or_close(slot, on_event);
    }

    /// Splices a readable journaled pipe into its journal until `EAGAIN`
    /// (then re-arms the poll) or EOF, at most `MAX_READS_PER_POLL` times.
    /// Each splice is reported, then the journal is reset: the next splice
    /// must find it at position 0 (see `engine::journal`).
    fn splice_until_drained(&mut self, slot: SlotId, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        let source_id = SourceId(slot.index() as u32);
        for _ in 0..MAX_READS_PER_POLL {
            let Some(SlotUser::Source(UringSource {
                fd,
                journal: Some(journal),
                ..
            })) = &mut self.slot_users[slot.index()]
            else {
                return;
            };
            let round = journal.splice_round(fd.as_fd(), |bytes| {
                on_event(BackendEvent::Data {
                    source: source_id,
                    bytes,
                })
            });
            match round {
                SpliceRound::Moved(len) => {
                    if len >= FULL_DEFAULT_PIPE {
                        // The pipe was full (or the journal filled).
                        self.grow_once(slot, on_event);
                    }
                    if len < JOURNAL_LEN {
                        // It moved all the pipe held: another splice would
                        // only say EAGAIN. Output written meanwhile makes
                        // the re-armed poll complete at once.
                        break;
                    }
                }
                SpliceRound::Empty => break,
                SpliceRound::Interrupted => {}
                SpliceRound::Eof => return self.close(slot, None, on_event),
                SpliceRound::Failed(err) => return self.close(slot, Some(err), on_event),
            }
        }
        self.rearm_or_close(slot, on_event);
    }

    fn complete_sink(
        &mut self,
        completion: Completion,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) {
        let sink = SinkId(completion.slot.index() as u32);
        self.sink_mut(sink).polling = false;
        match completion.outcome() {
            // POLLOUT, or POLLERR/POLLHUP: the next send tells which.
            Ok(_revents) => on_event(BackendEvent::Writable { sink }),
            Err(errno) => on_event(BackendEvent::SinkFailed {
                sink,
                error: errno.into(),
            }),
        }
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn add_source(
        &mut self,
        fd: OwnedFd,
        kind: SourceKind,
        journal: Option<Journal>,
    ) -> io::Result<SourceId> {
        let mode = match kind {
            // Spliced on readiness: a ring read would take the bytes out of
            // the pipe into memory only this process has.
            _ if journal.is_some() => ReadMode::PollThenRead,
            SourceKind::Pipe if self.ring.has_provided_buffers() => {
                ReadMode::Multishot { leaving: false }
            }
            SourceKind::Pipe => ReadMode::RingRead,
            SourceKind::Pty => ReadMode::PollThenRead,
        };
        // A multishot source reads into the provided buffers: it gets a
        // buffer of its own only once it turns out busy. A journaled one
        // needs none: the journal is its buffer.
        let buffer_len = match mode {
            _ if journal.is_some() => 0,
            ReadMode::Multishot { .. } => 0,
            ReadMode::RingRead | ReadMode::PollThenRead => SOURCE_BUFFER_LEN,
        };
        let slot = self.add_slot_user(
            buffer_len,
            SlotUser::Source(UringSource {
                fd,
                mode,
                kind,
                grown: false,
                journal,
            }),
        );
        if let Err(err) = self.arm(slot) {
            self.free_slot(slot);
            return Err(err);
        }
        Ok(SourceId(slot.index() as u32))
    }

    fn add_sink(&mut self, fd: OwnedFd) -> SinkId {
        // A poll needs no buffer.
        let slot = self.add_slot_user(0, SlotUser::Sink(UringSink { fd, polling: false }));
        SinkId(slot.index() as u32)
    }

    fn sink_fd(&self, sink: SinkId) -> BorrowedFd<'_> {
        match self.slot_users.get(sink.0 as usize) {
            Some(Some(SlotUser::Sink(sink))) => sink.fd.as_fd(),
            _ => panic!("{sink:?} is not a registered sink"),
        }
    }

    fn want_writable(&mut self, sink: SinkId) -> io::Result<()> {
        let slot = SlotId::from_index(sink.0);
        let UringSink { fd, polling } = match &mut self.slot_users[slot.index()] {
            Some(SlotUser::Sink(sink)) => sink,
            _ => panic!("{sink:?} is not a registered sink"),
        };
        if *polling {
            return Ok(());
        }
        self.ring.poll_writable(slot, fd.as_fd())?;
        *polling = true;
        Ok(())
    }

    fn remove_sink(&mut self, sink: SinkId) {
        let slot = SlotId::from_index(sink.0);
        match self.slot_users[slot.index()].take() {
            Some(SlotUser::Sink(UringSink { fd, polling: true })) => {
                if let Err(err) = self.ring.cancel(slot) {
                    // The poll then ends when the socket becomes writable
                    // or the ring is dropped; the fd stays open until then.
                    tracing::warn!("cancelling an attach socket poll: {err}");
                }
                self.slot_users[slot.index()] = Some(SlotUser::RemovedSink { _fd: fd });
            }
            Some(SlotUser::Sink(UringSink { polling: false, .. })) => self.ring.remove_slot(slot),
            other => {
                self.slot_users[slot.index()] = other;
                debug_assert!(false, "{sink:?} is not a registered sink");
            }
        }
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) -> io::Result<()> {
        if !self.wake_armed {
            self.ring.read(self.wake_slot, self.waker.as_fd())?;
            self.wake_armed = true;
        }
        self.ring.post_finished_completions()?;
        match timeout {
            None => self.ring.submit_and_wait(1)?,
            Some(timeout) => self.ring.submit_and_wait_timeout(1, timeout)?,
        }
        for round in 1.. {
            let mut reaped = 0usize;
            while let Some(completion) = self.ring.pop_completion() {
                reaped += 1;
                if completion.slot == self.wake_slot {
                    // The counter value is irrelevant: commands are in the queue.
                    on_event(BackendEvent::Wake);
                    self.wake_armed = false;
                    self.ring.read(self.wake_slot, self.waker.as_fd())?;
                    self.wake_armed = true;
                    continue;
                }
                match &self.slot_users[completion.slot.index()] {
                    Some(SlotUser::Source(_)) => self.complete_source(completion, on_event),
                    Some(SlotUser::Sink(_)) => self.complete_sink(completion, on_event),
                    // The cancelled poll of a removed sink is over: now the fd
                    // may be closed and the slot reused.
                    Some(SlotUser::RemovedSink { .. }) => self.free_slot(completion.slot),
                    None => {}
                }
            }
            // With deferred task work the kernel runs a bounded number of
            // completions per entry (20 on recent kernels); fetch the rest
            // now, not one wait (and one batch window) later: at 500
            // containers that backlog lagged the logs by ~4 %.
            // Bounded, so that a worker kept busy by many sources still
            // submits its re-arms and returns to its commands.
            if reaped == 0 || round >= MAX_COMPLETION_ROUNDS || !self.ring.run_completion_work()? {
                break;
            }
        }
        Ok(())
    }

    fn pause(&mut self, duration: Duration) {
        // Without deferred task work (kernels before 6.1) the ring's read of
        // the eventfd can consume a wake-up just before the poll looks at
        // it, and the pause would then hold a command for the whole window:
        // such rings do not coalesce.
        if self.ring.has_deferred_taskrun() {
            super::backend::pause_until_woken(self.waker.as_fd(), duration);
        }
    }

    fn release_idle_memory(&mut self) {
        // A journal's pages belong to its memory file: a burst leaves them
        // resident until a hole punch gives them back (its bytes are all
        // handled: the journal is at position 0 between splices).
        for user in self.slot_users.iter().flatten() {
            if let SlotUser::Source(UringSource {
                journal: Some(journal),
                ..
            }) = user
            {
                journal.release_memory();
            }
        }
    }
}
