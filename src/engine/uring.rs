//! The io_uring backend: one ring per worker, one operation in flight per
//! source.
//!
//! Deliberately the simplest correct shape, to be optimised later:
//! * pipes (blocking fds): one `IORING_OP_READ` into the source's own 64 KiB
//!   buffer, re-armed after each completion; 0 bytes = EOF. Since Linux 6.4
//!   such reads wait on the pipe's poll queue instead of a kernel worker.
//! * ptys (non-blocking fds): `IORING_OP_POLL_ADD(POLLIN)`, then `read(2)`
//!   until `EAGAIN` (bounded, for fairness), then re-arm the poll; `EIO` or 0
//!   bytes = EOF. A pipe that turns out to be non-blocking (`EAGAIN` from a
//!   ring read) is switched to the same mode instead of spinning.
//! * the worker's wake-up eventfd is read through the ring like a pipe.
//! * sinks (attach sockets): `IORING_OP_POLL_ADD(POLLOUT)` on request. A sink
//!   removed while its poll is in flight keeps its slot and fd until the
//!   cancelled poll's completion is reaped, so neither the slot nor the
//!   descriptor number can be reused under the kernel.
//!
//! Later work (not needed for correctness): multishot reads with provided
//! buffer rings (6.7+), `F_SETPIPE_SZ`, registered files, batching
//! completions of one container before flushing.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::eventfd::EventFd;

use super::backend::{Backend, BackendEvent, SinkId, SourceId};
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

/// Submission queue size; completions beyond it are kept by the kernel.
const RING_ENTRIES: u32 = 256;

/// How a source's bytes are fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadMode {
    /// `IORING_OP_READ` does the read (blocking fds).
    RingRead,
    /// `IORING_OP_POLL_ADD` for readability, then `read(2)` (non-blocking fds).
    PollThenRead,
}

struct UringSource {
    fd: OwnedFd,
    mode: ReadMode,
    kind: SourceKind,
    /// Pipe growth was tried already (see `PipeSizer`).
    grown: bool,
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
            (ReadMode::RingRead, Ok(0)) => self.close(slot, None, on_event),
            (ReadMode::RingRead, Ok(len)) => {
                if len as usize >= FULL_DEFAULT_PIPE {
                    self.grow_once(slot);
                }
                on_event(BackendEvent::Data {
                    source: source_id,
                    bytes: &self.ring.buffer(slot)[..len as usize],
                });
                self.rearm_or_close(slot, on_event);
            }
            (ReadMode::RingRead, Err(Errno::EAGAIN)) => {
                // A non-blocking pipe: wait for readability instead.
                if let Some(SlotUser::Source(source)) = &mut self.slot_users[slot.index()] {
                    source.mode = ReadMode::PollThenRead;
                }
                self.rearm_or_close(slot, on_event);
            }
            (ReadMode::PollThenRead, Ok(_revents)) => self.read_until_drained(slot, on_event),
            (_, Err(Errno::EINTR)) => self.rearm_or_close(slot, on_event),
            (ReadMode::RingRead | ReadMode::PollThenRead, Err(errno)) => {
                let error = (errno != Errno::EIO).then(|| io::Error::from(errno));
                self.close(slot, error, on_event);
            }
        }
    }

    /// A read filled the whole buffer: the producer outruns the worker, so
    /// grow its pipe (once per source; see `PipeSizer`).
    fn grow_once(&mut self, slot: SlotId) {
        if let Some(SlotUser::Source(source)) = &mut self.slot_users[slot.index()] {
            if !source.grown {
                source.grown = true;
                if source.kind == SourceKind::Pipe {
                    self.pipe_sizer.grow(source.fd.as_fd());
                }
            }
        }
    }

    /// `read(2)` a readable non-blocking source until `EAGAIN` (then re-arm
    /// the poll) or EOF, at most `MAX_READS_PER_POLL` times.
    fn read_until_drained(&mut self, slot: SlotId, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        let source_id = SourceId(slot.index() as u32);
        for _ in 0..MAX_READS_PER_POLL {
            let Some(source) = source_at(&self.slot_users, slot) else {
                return;
            };
            match nix::unistd::read(&source.fd, self.ring.buffer_mut(slot)) {
                Ok(0) => return self.close(slot, None, on_event),
                Ok(len) => {
                    if len >= FULL_DEFAULT_PIPE {
                        self.grow_once(slot);
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

    fn add_source(&mut self, fd: OwnedFd, kind: SourceKind) -> io::Result<SourceId> {
        let mode = match kind {
            SourceKind::Pipe => ReadMode::RingRead,
            SourceKind::Pty => ReadMode::PollThenRead,
        };
        let slot = self.add_slot_user(
            SOURCE_BUFFER_LEN,
            SlotUser::Source(UringSource {
                fd,
                mode,
                kind,
                grown: false,
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
        while let Some(completion) = self.ring.pop_completion() {
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
        Ok(())
    }

    fn pause(&mut self, duration: Duration) {
        super::backend::pause_until_woken(self.waker.as_fd(), duration);
    }
}
