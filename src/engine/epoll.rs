//! The epoll backend: readiness instead of completions, for machines where
//! io_uring is unavailable (`kernel.io_uring_disabled`, a seccomp filter
//! answering `EPERM`/`ENOSYS`) or when `--io-backend epoll` asks for it.
//!
//! * Sources are switched to non-blocking mode and registered level-
//!   triggered for `EPOLLIN`; on readiness they are read until `EAGAIN`, at
//!   most `MAX_READS_PER_WAKE` times (a chatty source cannot starve the
//!   others; level triggering brings it back in the next wait). 0 bytes, or
//!   `EIO` from a pty master whose slave side is closed, is EOF.
//! * Every read goes into one buffer per backend: reads are synchronous, so
//!   nothing needs a buffer of its own, and an extra container costs no read
//!   buffer at all.
//! * Journaled pipes (`StreamSource::journal`, see `engine::journal`) are
//!   never read: on readiness they are spliced into their journal (same
//!   bounds), each splice reported from the journal's mapping and the
//!   journal reset after the report.
//! * Sinks (attach sockets) are kept unregistered until `want_writable`,
//!   which registers (or re-arms) them for `EPOLLOUT | EPOLLONESHOT`.
//!   `remove_sink` deletes and closes at once: epoll has nothing in flight.
//! * The worker's wake-up eventfd is one more `EPOLLIN` registration.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;

use super::backend::{Backend, BackendEvent, SinkId, SourceId};
use super::journal::{Journal, SpliceRound, JOURNAL_LEN};
use super::pipe_size::{PipeSizer, FULL_DEFAULT_PIPE};
use super::SourceKind;

/// The shared read buffer: 256 KiB drains a default pipe in one read and a
/// grown (1 MiB) one in four, and costs the same for any number of sources.
const READ_BUFFER_LEN: usize = 256 * 1024;

/// Reads per readiness report before moving on to the next ready source.
const MAX_READS_PER_WAKE: usize = 16;

/// Events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// Epoll data of the wake-up eventfd.
const WAKE_TOKEN: u64 = u64::MAX;

/// Sinks' epoll data have this bit set; sources' data are their index.
const SINK_TOKEN_BIT: u64 = 1 << 32;

struct EpollSource {
    fd: OwnedFd,
    kind: SourceKind,
    /// Pipe growth was tried already (see `PipeSizer`).
    grown: bool,
    /// Journaled pipe: spliced into this, never read.
    journal: Option<Journal>,
}

struct EpollSink {
    fd: OwnedFd,
    /// Added to the epoll set (then re-armed with `EPOLL_CTL_MOD`).
    registered: bool,
    /// A one-shot `EPOLLOUT` is armed and not reported yet.
    armed: bool,
}

pub struct EpollBackend {
    epoll: Epoll,
    waker: Arc<EventFd>,
    sources: Vec<Option<EpollSource>>,
    free_sources: Vec<u32>,
    sinks: Vec<Option<EpollSink>>,
    free_sinks: Vec<u32>,
    buffer: Box<[u8]>,
    events: Vec<EpollEvent>,
    pipe_sizer: PipeSizer,
}

impl EpollBackend {
    pub fn new(waker: Arc<EventFd>, pipe_sizer: PipeSizer) -> io::Result<EpollBackend> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            waker.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
        )?;
        Ok(EpollBackend {
            epoll,
            waker,
            sources: Vec::new(),
            free_sources: Vec::new(),
            sinks: Vec::new(),
            free_sinks: Vec::new(),
            buffer: vec![0u8; READ_BUFFER_LEN].into_boxed_slice(),
            events: vec![EpollEvent::empty(); EVENTS_PER_WAIT],
            pipe_sizer,
        })
    }

    /// Unregisters and closes the source, then reports its EOF.
    fn close(
        &mut self,
        index: u32,
        error: Option<io::Error>,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) {
        if let Some(source) = self.sources[index as usize].take() {
            // Closing the fd would remove it from the set too, unless the
            // container's process shares the open file (it never does: the
            // read ends are ours alone); delete explicitly anyway.
            let _ = self.epoll.delete(source.fd.as_fd());
            self.free_sources.push(index);
        }
        on_event(BackendEvent::Eof {
            source: SourceId(index),
            error,
        });
    }

    /// A full read (or splice): the producer outruns us; give it room, once.
    fn grow_once(
        pipe_sizer: &PipeSizer,
        index: u32,
        source: &mut EpollSource,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) {
        if source.grown {
            return;
        }
        source.grown = true;
        if source.kind == SourceKind::Pipe {
            if let Some(capacity) = pipe_sizer.grow(source.fd.as_fd()) {
                on_event(BackendEvent::PipeResized {
                    source: SourceId(index),
                    capacity,
                });
            }
        }
    }

    /// Reads a ready source until `EAGAIN`, EOF or the per-wake bound.
    fn read_ready(&mut self, index: u32, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        if matches!(&self.sources[index as usize], Some(source) if source.journal.is_some()) {
            return self.splice_ready(index, on_event);
        }
        for _ in 0..MAX_READS_PER_WAKE {
            let Some(source) = &mut self.sources[index as usize] else {
                return;
            };
            match nix::unistd::read(&source.fd, &mut self.buffer) {
                Ok(0) => return self.close(index, None, on_event),
                Ok(len) => {
                    if len >= FULL_DEFAULT_PIPE {
                        Self::grow_once(&self.pipe_sizer, index, source, on_event);
                    }
                    on_event(BackendEvent::Data {
                        source: SourceId(index),
                        bytes: &self.buffer[..len],
                    });
                    if len < self.buffer.len() {
                        // Most likely empty now; level triggering reports it
                        // again if not, so skip the EAGAIN round trip.
                        return;
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                // A pty master reads EIO once every slave fd is closed.
                Err(Errno::EIO) => return self.close(index, None, on_event),
                Err(errno) => return self.close(index, Some(errno.into()), on_event),
            }
        }
    }

    /// Splices a ready journaled pipe into its journal until `EAGAIN`, EOF
    /// or the per-wake bound. Each splice is reported, then the journal is
    /// reset: the next splice must find it at position 0 (see
    /// `engine::journal`).
    fn splice_ready(&mut self, index: u32, on_event: &mut dyn FnMut(BackendEvent<'_>)) {
        for _ in 0..MAX_READS_PER_WAKE {
            let Some(source) = &mut self.sources[index as usize] else {
                return;
            };
            let Some(journal) = &mut source.journal else {
                return;
            };
            let round = journal.splice_round(source.fd.as_fd(), |bytes| {
                on_event(BackendEvent::Data {
                    source: SourceId(index),
                    bytes,
                })
            });
            match round {
                SpliceRound::Moved(len) => {
                    if len >= FULL_DEFAULT_PIPE {
                        Self::grow_once(&self.pipe_sizer, index, source, on_event);
                    }
                    if len < JOURNAL_LEN {
                        // Most likely empty now (see `read_ready`).
                        return;
                    }
                }
                SpliceRound::Empty => return,
                SpliceRound::Interrupted => {}
                SpliceRound::Eof => return self.close(index, None, on_event),
                SpliceRound::Failed(err) => return self.close(index, Some(err), on_event),
            }
        }
    }
}

/// Allocates an index from `free` or at the end of `slots`.
fn allocate<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, value: T) -> u32 {
    match free.pop() {
        Some(index) => {
            slots[index as usize] = Some(value);
            index
        }
        None => {
            slots.push(Some(value));
            (slots.len() - 1) as u32
        }
    }
}

impl Backend for EpollBackend {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn add_source(
        &mut self,
        fd: OwnedFd,
        kind: SourceKind,
        journal: Option<Journal>,
    ) -> io::Result<SourceId> {
        crate::sys::fd::set_nonblocking(fd.as_fd())?;
        let index = allocate(
            &mut self.sources,
            &mut self.free_sources,
            EpollSource {
                fd,
                kind,
                grown: false,
                journal,
            },
        );
        let source = self.sources[index as usize].as_ref().expect("just added");
        if let Err(err) = self.epoll.add(
            source.fd.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, u64::from(index)),
        ) {
            self.sources[index as usize] = None;
            self.free_sources.push(index);
            return Err(err.into());
        }
        Ok(SourceId(index))
    }

    fn add_sink(&mut self, fd: OwnedFd) -> SinkId {
        let sink = EpollSink {
            fd,
            registered: false,
            armed: false,
        };
        SinkId(allocate(&mut self.sinks, &mut self.free_sinks, sink))
    }

    fn sink_fd(&self, sink: SinkId) -> BorrowedFd<'_> {
        match self.sinks.get(sink.0 as usize) {
            Some(Some(sink)) => sink.fd.as_fd(),
            _ => panic!("{sink:?} is not a registered sink"),
        }
    }

    fn want_writable(&mut self, sink: SinkId) -> io::Result<()> {
        let epoll = &self.epoll;
        let entry = match self.sinks.get_mut(sink.0 as usize) {
            Some(Some(entry)) => entry,
            _ => panic!("{sink:?} is not a registered sink"),
        };
        if entry.armed {
            return Ok(());
        }
        let mut event = EpollEvent::new(
            EpollFlags::EPOLLOUT | EpollFlags::EPOLLONESHOT,
            SINK_TOKEN_BIT | u64::from(sink.0),
        );
        if entry.registered {
            epoll.modify(entry.fd.as_fd(), &mut event)?;
        } else {
            epoll.add(entry.fd.as_fd(), event)?;
            entry.registered = true;
        }
        entry.armed = true;
        Ok(())
    }

    fn remove_sink(&mut self, sink: SinkId) {
        let Some(entry) = self.sinks.get_mut(sink.0 as usize).and_then(Option::take) else {
            debug_assert!(false, "{sink:?} is not a registered sink");
            return;
        };
        if entry.registered {
            let _ = self.epoll.delete(entry.fd.as_fd());
        }
        self.free_sinks.push(sink.0);
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) -> io::Result<()> {
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            // Round up so that a deadline is never woken for too early.
            Some(timeout) => {
                let millis = timeout.as_nanos().div_ceil(1_000_000);
                EpollTimeout::try_from(millis.min(i32::MAX as u128) as i32)
                    .unwrap_or(EpollTimeout::MAX)
            }
        };
        let ready = match self.epoll.wait(&mut self.events, timeout) {
            Ok(ready) => ready,
            Err(Errno::EINTR) => return Ok(()),
            Err(errno) => return Err(errno.into()),
        };
        for i in 0..ready {
            let event = self.events[i];
            let token = event.data();
            if token == WAKE_TOKEN {
                // The counter value is irrelevant: commands are in the
                // queue. Readable means the read cannot block.
                let _ = self.waker.read();
                on_event(BackendEvent::Wake);
            } else if token & SINK_TOKEN_BIT != 0 {
                let sink = SinkId((token & !SINK_TOKEN_BIT) as u32);
                // Removed since (cannot happen within one wait, but cheap).
                if let Some(Some(entry)) = self.sinks.get_mut(sink.0 as usize) {
                    if entry.armed {
                        entry.armed = false;
                        // EPOLLOUT, or EPOLLERR/EPOLLHUP: the next send tells.
                        on_event(BackendEvent::Writable { sink });
                    }
                }
            } else {
                self.read_ready(token as u32, on_event);
            }
        }
        Ok(())
    }

    fn pause(&mut self, duration: Duration) {
        super::backend::pause_until_woken(self.waker.as_fd(), duration);
    }

    fn release_idle_memory(&mut self) {
        crate::sys::process::discard_pages(&mut self.buffer);
        // A journal's pages belong to its memory file: only a hole punch
        // gives them back (its bytes are all handled: the journal is at
        // position 0 between splices).
        for source in self.sources.iter().flatten() {
            if let Some(journal) = &source.journal {
                journal.release_memory();
            }
        }
    }
}
