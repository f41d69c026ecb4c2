//! The I/O backend a worker runs on: the seam between the worker's routing
//! logic (which bytes go to which sinks) and the kernel interface that
//! produces the bytes (io_uring today, epoll later).

use std::io;
use std::os::fd::OwnedFd;

use super::SourceKind;

/// A source registered with a backend. Unique per backend while the source
/// is open; may be reused after its `Eof` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(pub u32);

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
}

/// A readiness/completion loop over a worker's sources.
pub trait Backend {
    /// "io_uring" or "epoll", as reported by `Engine::backend_name`.
    fn name(&self) -> &'static str;

    /// Takes ownership of `fd` and starts reading it. The backend closes the
    /// fd when it reports the source's `Eof` (or when it is dropped).
    fn add_source(&mut self, fd: OwnedFd, kind: SourceKind) -> io::Result<SourceId>;

    /// Blocks until something happened, then reports every event that is
    /// ready to `on_event`, in order. Bytes of one source are reported in
    /// stream order.
    fn wait(&mut self, on_event: &mut dyn FnMut(BackendEvent<'_>)) -> io::Result<()>;
}
