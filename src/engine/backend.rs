//! The I/O backend a worker runs on: the seam between the worker's routing
//! logic (which bytes go to which sinks) and the kernel interface that
//! produces the bytes (io_uring today, epoll later).
//!
//! Two kinds of descriptors are registered with a backend:
//! * **sources** are read by the backend, which reports their bytes;
//! * **sinks** (attach client sockets) are written by the worker itself with
//!   non-blocking sends; the backend only owns them and, on request, reports
//!   once when one becomes writable again. The backend owns a sink's fd so
//!   that it can keep it open while the kernel still watches it (a closed
//!   and reused descriptor number must never be watched by mistake).
//!
//! How an epoll backend maps onto this trait: `add_source` registers the fd
//! for `EPOLLIN` and reads it on readiness; `add_sink` keeps the fd without
//! registering it; `want_writable` adds (or re-arms with `EPOLL_CTL_MOD`) the
//! fd for `EPOLLOUT | EPOLLONESHOT`; `remove_sink` does `EPOLL_CTL_DEL` and
//! closes the fd at once (epoll has nothing in flight); the `wait` timeout
//! is `epoll_wait`'s timeout and the wake-up eventfd is one more `EPOLLIN`
//! registration.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use super::journal::Journal;
use super::SourceKind;

/// A source registered with a backend. Unique per backend while the source
/// is open; may be reused after its `Eof` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(pub u32);

/// A sink (a descriptor the worker writes) registered with a backend.
/// Unique per backend until `remove_sink`; may be reused afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SinkId(pub u32);

/// What `Backend::wait` reports.
#[derive(Debug)]
pub enum BackendEvent<'a> {
    /// The worker's wake-up eventfd fired: commands are waiting.
    Wake,
    /// Bytes read from a source (never empty). The slice is only valid for
    /// the duration of the callback.
    Data { source: SourceId, bytes: &'a [u8] },
    /// The source reached EOF (or failed, see `error`); the backend already
    /// closed it and will never report it again.
    Eof {
        source: SourceId,
        error: Option<io::Error>,
    },
    /// The sink became writable, or has an error or hang-up pending (which
    /// the next send reports). Answers exactly one `want_writable`.
    Writable { sink: SinkId },
    /// Watching the sink for writability failed; no `Writable` will follow
    /// for that request. The sink stays registered until `remove_sink`.
    SinkFailed { sink: SinkId, error: io::Error },
    /// The source's pipe was grown to `capacity` bytes (at most once per
    /// source; reported for the pipe size metric).
    PipeResized { source: SourceId, capacity: usize },
}

/// A readiness/completion loop over a worker's sources and sinks.
pub trait Backend {
    /// "io_uring" or "epoll", as reported by `Engine::backend_name`.
    fn name(&self) -> &'static str;

    /// Takes ownership of `fd` and starts reading it. The backend closes the
    /// fd when it reports the source's `Eof` (or when it is dropped).
    ///
    /// With a `journal` (pipes only) the pipe is never read: each readiness
    /// splices its bytes into the journal, `Data` reports them from the
    /// journal's mapping, and only after that callback returned is the
    /// journal reset (`Journal::consumed`), so the callback must have
    /// handled them (logged, and committed in the ledger) by then. A journal
    /// that cannot be reset ends the source (`Eof` with the error): it is
    /// never spliced into again.
    fn add_source(
        &mut self,
        fd: OwnedFd,
        kind: SourceKind,
        journal: Option<Journal>,
    ) -> io::Result<SourceId>;

    /// Takes ownership of `fd` (a non-blocking socket the worker writes).
    /// Nothing is watched until `want_writable`, so this cannot fail. The fd
    /// is closed by `remove_sink` (possibly a little later, once the kernel
    /// no longer watches it) or when the backend is dropped.
    fn add_sink(&mut self, fd: OwnedFd) -> SinkId;

    /// The sink's descriptor, for sending.
    ///
    /// # Panics
    /// If `sink` is not registered (an engine bug).
    fn sink_fd(&self, sink: SinkId) -> BorrowedFd<'_>;

    /// Arms a one-shot writability notification: a later `wait` reports
    /// `Writable` (or `SinkFailed`) for `sink` once. Asking again before it
    /// was reported is a no-op.
    fn want_writable(&mut self, sink: SinkId) -> io::Result<()>;

    /// Unregisters `sink` and closes its fd; nothing is reported for it any
    /// more, even a notification that was armed.
    fn remove_sink(&mut self, sink: SinkId);

    /// Blocks until something happened or `timeout` (if any) passed, then
    /// reports every event that is ready to `on_event`, in order. Bytes of
    /// one source are reported in stream order. A timeout is not an error
    /// and may report nothing.
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(BackendEvent<'_>),
    ) -> io::Result<()>;

    /// Sleeps until `duration` passed or the worker's wake-up eventfd fired,
    /// reporting nothing: output keeps accumulating in the kernel's pipes
    /// meanwhile, to be taken by the next `wait` in one batch (the worker's
    /// wake-up coalescing). The wake-up itself is still reported by the next
    /// `wait`.
    fn pause(&mut self, duration: Duration);

    /// Gives back memory that only busy streams needed (the pages of a read
    /// buffer, or of a journal, that a burst made resident). The worker
    /// calls it once its output has been light for a while.
    fn release_idle_memory(&mut self) {}
}

/// `Backend::pause` for a backend whose wake-up eventfd is `waker`: a
/// `poll(2)` on the eventfd alone. Both backends leave the eventfd's counter
/// for their `wait` to consume, so a wake-up during (or just before) the
/// pause ends it at once. io_uring: the ring's pending read of the eventfd
/// completes through task work that only runs when the worker waits on the
/// ring (`DEFER_TASKRUN`), so the
/// counter is still set when `poll` looks at it. Rings without
/// `DEFER_TASKRUN` (kernels before 6.1) do not pause at all (see the
/// io_uring backend's `pause`).
pub(super) fn pause_until_woken(waker: BorrowedFd<'_>, duration: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let millis = u16::try_from(duration.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(waker, PollFlags::POLLIN)];
    // EINTR (a signal, or task work) just ends the pause early.
    let _ = poll(&mut fds, PollTimeout::from(millis));
}
