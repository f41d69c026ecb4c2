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
//!
//! Later work (not needed for correctness): multishot reads with provided
//! buffer rings (6.7+), `F_SETPIPE_SZ`, registered files, batching
//! completions of one container before flushing.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::eventfd::EventFd;

use super::backend::{Backend, BackendEvent, SourceId};
use super::SourceKind;
use crate::sys::uring::{Completion, Ring, SlotId};

/// Per-source read buffer: large reads mean few completions and large log
/// writes; at 64 KiB a pipe's default capacity is drained in one read.
const SOURCE_BUFFER_LEN: usize = 64 * 1024;

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
    /// Indexed by slot index; a source's `SourceId` is its slot index.
    sources: Vec<Option<UringSource>>,
}

impl UringBackend {
    /// Sets up the ring and starts reading `waker` (which must be a blocking
    /// eventfd).
    pub fn new(waker: Arc<EventFd>) -> io::Result<UringBackend> {
        let mut ring = Ring::new(RING_ENTRIES)?;
        let wake_slot = ring.add_slot(std::mem::size_of::<u64>());
        ring.read(wake_slot, waker.as_fd())?;
        Ok(UringBackend {
            ring,
            waker,
            wake_slot,
            wake_armed: true,
            sources: Vec::new(),
        })
    }

    fn arm(&mut self, slot: SlotId) -> io::Result<()> {
        let source = self.sources[slot.index()]
            .as_ref()
            .expect("arming a closed source");
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
        self.sources[slot.index()] = None;
        self.ring.remove_slot(slot);
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
        let mode = match &self.sources[slot.index()] {
            Some(source) => source.mode,
            None => return,
        };
        match (mode, completion.outcome()) {
            (ReadMode::RingRead, Ok(0)) => self.close(slot, None, on_event),
            (ReadMode::RingRead, Ok(len)) => {
                on_event(BackendEvent::Data {
                    source: source_id,
                    bytes: &self.ring.buffer(slot)[..len as usize],
                });
                self.rearm_or_close(slot, on_event);
            }
            (ReadMode::RingRead, Err(Errno::EAGAIN)) => {
                // A non-blocking pipe: wait for readability instead.
                if let Some(source) = self.sources[slot.index()].as_mut() {
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

    /// `read(2)` a readable non-blocking source until `EAGAIN` (then re-arm
    /// the poll) or EOF, at most `MAX_READS_PER_POLL` times.
    fn read_until_drained(&mut self, slot: SlotId, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        let source_id = SourceId(slot.index() as u32);
        for _ in 0..MAX_READS_PER_POLL {
            let Some(source) = self.sources[slot.index()].as_ref() else {
                return;
            };
            match nix::unistd::read(&source.fd, self.ring.buffer_mut(slot)) {
                Ok(0) => return self.close(slot, None, on_event),
                Ok(len) => on_event(BackendEvent::Data {
                    source: source_id,
                    bytes: &self.ring.buffer(slot)[..len],
                }),
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                // A pty master reads EIO once every slave fd is closed.
                Err(Errno::EIO) => return self.close(slot, None, on_event),
                Err(errno) => return self.close(slot, Some(errno.into()), on_event),
            }
        }
        self.rearm_or_close(slot, on_event);
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn add_source(&mut self, fd: OwnedFd, kind: SourceKind) -> io::Result<SourceId> {
        let slot = self.ring.add_slot(SOURCE_BUFFER_LEN);
        if self.sources.len() <= slot.index() {
            self.sources.resize_with(slot.index() + 1, || None);
        }
        let mode = match kind {
            SourceKind::Pipe => ReadMode::RingRead,
            SourceKind::Pty => ReadMode::PollThenRead,
        };
        self.sources[slot.index()] = Some(UringSource { fd, mode });
        if let Err(err) = self.arm(slot) {
            self.sources[slot.index()] = None;
            self.ring.remove_slot(slot);
            return Err(err);
        }
        Ok(SourceId(slot.index() as u32))
    }

    fn wait(&mut self, on_event: &mut dyn FnMut(BackendEvent<'_>)) -> io::Result<()> {
        if !self.wake_armed {
            self.ring.read(self.wake_slot, self.waker.as_fd())?;
            self.wake_armed = true;
        }
        self.ring.submit_and_wait(1)?;
        while let Some(completion) = self.ring.pop_completion() {
            if completion.slot == self.wake_slot {
                // The counter value is irrelevant: commands are in the queue.
                on_event(BackendEvent::Wake);
                self.wake_armed = false;
                self.ring.read(self.wake_slot, self.waker.as_fd())?;
                self.wake_armed = true;
            } else {
                self.complete_source(completion, on_event);
            }
        }
        Ok(())
    }
}
