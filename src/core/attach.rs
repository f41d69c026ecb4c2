//! Attach sockets on the control side (spec §5): the SEQPACKET listener at
//! the client's path, accepting connections, and forwarding what clients
//! write to the container's stdin. Output to the clients is the engine's
//! job: each accepted connection is duplicated and handed to the worker that
//! owns the container's streams.
//!
//! Stdin policy: input from every client goes through one bounded queue per
//! container and is written in arrival order, byte-exact. When the
//! container does not read its stdin the queue fills and the client readers
//! stop reading, so backpressure reaches the clients through their socket
//! buffers; input is never dropped.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::MAX_ATTACH_CLIENTS;
use crate::engine::{AttachListenerId, ContainerKey, Engine};
use crate::sys;

/// Pending stdin packets per container before client readers pause.
const STDIN_QUEUE_PACKETS: usize = 64;

/// Mode of attach sockets: only the owner (the engine that asked for the
/// socket) may connect.
const ATTACH_SOCKET_MODE: u32 = 0o700;

enum StdinMsg {
    Data(Vec<u8>),
    /// Close the container's stdin (stop-after-stdin-EOF).
    Close,
}

/// Where a container's stdin goes.
pub enum StdinTarget {
    /// The container has no stdin: client input is discarded.
    None,
    /// Pipe write end; closed on stop-after-stdin-EOF so the container sees EOF.
    Pipe(OwnedFd),
    /// A duplicate of the pty master; on stop-after-stdin-EOF forwarding stops.
    Pty(OwnedFd),
    /// Known once the process starts (the pty of an exec session created
    /// suspended); input that arrives before is queued. Dropping the sender
    /// discards it.
    Later(oneshot::Receiver<OwnedFd>),
}

/// The attach state of one monitored process.
pub struct Attach {
    key: ContainerKey,
    stdin: Option<mpsc::Sender<StdinMsg>>,
    /// Attach listeners by path.
    listeners: HashMap<PathBuf, Listener>,
    /// Id of the next listener (ids name listeners to the engine).
    next_listener: AttachListenerId,
    /// Cancelled when the container exits or a stop-after-stdin-EOF client
    /// hits EOF: every client reader of this container stops.
    readers: CancellationToken,
    /// Clients whose input is being read (bounded by `MAX_ATTACH_CLIENTS`).
    clients: Rc<Cell<usize>>,
}

impl Attach {
    /// Starts the stdin writer (if the container has stdin).
    pub fn new(key: ContainerKey, stdin: StdinTarget) -> Attach {
        Attach::with_stdin_closed(key, stdin, None)
    }

    /// [`Attach::new`], running `closed` once a stop-after-stdin-EOF client
    /// closed the container's stdin (so that the keeper closes its copy
    /// too, issue 16).
    pub fn with_stdin_closed(
        key: ContainerKey,
        stdin: StdinTarget,
        closed: Option<StdinClosed>,
    ) -> Attach {
        let stdin = match stdin {
            StdinTarget::None => None,
            StdinTarget::Pipe(fd) => Some(spawn_stdin_writer(fd, key, closed)),
            StdinTarget::Pty(fd) => Some(spawn_stdin_writer(fd, key, closed)),
            StdinTarget::Later(fd) => {
                let (tx, rx) = mpsc::channel(STDIN_QUEUE_PACKETS);
                tokio::task::spawn_local(async move {
                    if let Ok(fd) = fd.await {
                        write_stdin(fd, rx, key, closed).await;
                    }
                });
                Some(tx)
            }
        };
        Attach {
            key,
            stdin,
            listeners: HashMap::new(),
            next_listener: 0,
            readers: CancellationToken::new(),
            clients: Rc::new(Cell::new(0)),
        }
    }

    /// Clients connected now (whose input is read).
    pub fn client_count(&self) -> usize {
        self.clients.get()
    }

    /// Listeners (socket paths) this container has.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Whether a listener of this container serves `path` already.
    pub fn serves(&self, path: &Path) -> bool {
        self.listeners.contains_key(path)
    }

    /// Makes sure a listener serves `path`. An existing listener of this
    /// container at the same path is reused; a stale socket (of an earlier
    /// server) is replaced; anything else there (a symlink, a file) is
    /// refused and left alone.
    pub fn listen(
        &mut self,
        path: &Path,
        stop_after_stdin_eof: bool,
        engine: &Arc<Engine>,
    ) -> io::Result<()> {
        if let Some(l) = self.listeners.get(path) {
            if socket_ino(path) == Some(l.ino) {
                return Ok(());
            }
        }
        let listener = sys::socket::listen_seqpacket(path, ATTACH_SOCKET_MODE)
            .map_err(|e| io::Error::new(e.kind(), format!("socketPath: {e}")))?;
        let ino = std::fs::symlink_metadata(path)?.ino();
        let id = self.next_listener;
        self.next_listener += 1;
        // The worker accepts too, right before it routes output, so that a
        // client that connected is in place for all output produced after
        // its connect returned, however busy this thread is.
        let for_engine = listener.try_clone()?;
        let listener = sys::reactor::async_fd(listener, Interest::READABLE)?;
        let stop = self.readers.child_token();
        let ctx = ClientContext {
            key: self.key,
            stdin: self.stdin.clone(),
            stop_after_stdin_eof,
            readers: self.readers.clone(),
            engine: Arc::clone(engine),
            clients: Rc::clone(&self.clients),
        };
        let entry = Listener {
            ino,
            id,
            stop: stop.clone(),
            ctx: ctx.clone(),
        };
        if let Some(old) = self.listeners.insert(path.to_path_buf(), entry) {
            old.stop.cancel();
        }
        if let Err(e) = engine.watch_attach_listener(self.key, id, for_engine) {
            // The control thread's accept loop alone still serves it.
            warn!(
                key = self.key,
                "attach listener not watched by the engine: {e}"
            );
        }
        tokio::task::spawn_local(accept_loop(listener, stop, ctx));
        Ok(())
    }

    /// A connection the engine accepted on listener `id` (it already gets
    /// output): read its input for the container's stdin.
    pub fn accepted(&self, id: AttachListenerId, conn: OwnedFd) {
        match self.listeners.values().find(|l| l.id == id) {
            Some(l) if !l.stop.is_cancelled() => start_reader(conn, &l.ctx),
            // A listener replaced meanwhile: nobody can reach it by path, and
            // without its context the input is discarded.
            _ => debug!(
                key = self.key,
                "attach client of a closed listener: input ignored"
            ),
        }
    }

    /// The container is gone: stop readers and listeners, and remove the
    /// socket files that are still ours.
    pub fn close(&mut self) {
        self.readers.cancel();
        for (path, l) in self.listeners.drain() {
            if socket_ino(&path) == Some(l.ino) {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.stdin = None;
    }
}

/// The inode of the file at `path` itself (a symlink there is not followed).
fn socket_ino(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).map(|m| m.ino()).ok()
}

/// One attach listener of a container.
struct Listener {
    /// Inode of the socket file (is the file at the path still ours?).
    ino: u64,
    id: AttachListenerId,
    /// Stops its accept loop.
    stop: CancellationToken,
    ctx: ClientContext,
}

#[derive(Clone)]
struct ClientContext {
    key: ContainerKey,
    stdin: Option<mpsc::Sender<StdinMsg>>,
    stop_after_stdin_eof: bool,
    readers: CancellationToken,
    engine: Arc<Engine>,
    clients: Rc<Cell<usize>>,
}

async fn accept_loop(
    listener: tokio::io::unix::AsyncFd<OwnedFd>,
    stop: CancellationToken,
    ctx: ClientContext,
) {
    loop {
        let mut guard = tokio::select! {
            _ = stop.cancelled() => return,
            g = listener.readable() => match g {
                Ok(g) => g,
                Err(e) => {
                    warn!(key = ctx.key, "attach listener: {e}");
                    return;
                }
            },
        };
        loop {
            match sys::socket::accept_nonblocking(listener.get_ref()) {
                Ok(Some(conn)) => start_client(conn, &ctx),
                Ok(None) => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    warn!(key = ctx.key, "attach accept: {e}");
                    guard.clear_ready();
                    break;
                }
            }
        }
    }
}

fn start_client(conn: OwnedFd, ctx: &ClientContext) {
    if ctx.clients.get() >= MAX_ATTACH_CLIENTS {
        // Closed at once, before the engine sees it (no done packet).
        sys::socket::hang_up(&conn);
        warn!(
            key = ctx.key,
            "attach client refused: too many attach clients (limit {MAX_ATTACH_CLIENTS})"
        );
        return;
    }
    let output = match conn.try_clone() {
        Ok(fd) => fd,
        Err(e) => {
            warn!(key = ctx.key, "attach client: duplicate socket: {e}");
            return;
        }
    };
    if let Err(e) = ctx.engine.attach(ctx.key, output) {
        warn!(key = ctx.key, "attach client: {e}");
        return;
    }
    start_reader(conn, ctx);
}

/// Starts forwarding a connected client's input.
fn start_reader(conn: OwnedFd, ctx: &ClientContext) {
    if ctx.clients.get() >= MAX_ATTACH_CLIENTS {
        // The engine took it (its own count had room): it gets output, but
        // its input is not read.
        warn!(
            key = ctx.key,
            "attach client: input ignored, too many attach clients (limit {MAX_ATTACH_CLIENTS})"
        );
        return;
    }
    debug!(key = ctx.key, "attach client connected");
    match sys::reactor::async_fd(conn, Interest::READABLE) {
        Ok(conn) => {
            ctx.clients.set(ctx.clients.get() + 1);
            let ctx = ctx.clone();
            tokio::task::spawn_local(async move {
                read_client(conn, ctx.clone()).await;
                ctx.clients.set(ctx.clients.get() - 1);
            });
        }
        Err(e) => warn!(key = ctx.key, "attach client: {e}"),
    }
}

/// Forwards one client's packets to the container's stdin until EOF.
async fn read_client(conn: tokio::io::unix::AsyncFd<OwnedFd>, ctx: ClientContext) {
    loop {
        let mut guard = tokio::select! {
            _ = ctx.readers.cancelled() => return,
            g = conn.readable() => match g {
                Ok(g) => g,
                Err(_) => return,
            },
        };
        loop {
            match sys::socket::recv_packet(conn.get_ref()) {
                Ok(None) => {
                    guard.clear_ready();
                    break;
                }
                Ok(Some(packet)) if packet.is_empty() => {
                    if ctx.stop_after_stdin_eof {
                        debug!(key = ctx.key, "attach stdin EOF: closing container stdin");
                        if let Some(tx) = &ctx.stdin {
                            let _ = tx.send(StdinMsg::Close).await;
                        }
                        ctx.readers.cancel();
                    }
                    return;
                }
                Ok(Some(packet)) => {
                    if let Some(tx) = &ctx.stdin {
                        // Waits while the queue is full: backpressure.
                        let _ = tx.send(StdinMsg::Data(packet)).await;
                    }
                }
                Err(e) => {
                    debug!(key = ctx.key, "attach client read: {e}");
                    return;
                }
            }
        }
    }
}

/// Run when a client's EOF closed a container's stdin.
pub type StdinClosed = Box<dyn FnOnce()>;

fn spawn_stdin_writer(
    fd: OwnedFd,
    key: ContainerKey,
    closed: Option<StdinClosed>,
) -> mpsc::Sender<StdinMsg> {
    let (tx, rx) = mpsc::channel(STDIN_QUEUE_PACKETS);
    tokio::task::spawn_local(write_stdin(fd, rx, key, closed));
    tx
}

async fn write_stdin(
    fd: OwnedFd,
    mut rx: mpsc::Receiver<StdinMsg>,
    key: ContainerKey,
    closed: Option<StdinClosed>,
) {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)
        .map(OFlag::from_bits_truncate)
        .unwrap_or(OFlag::empty());
    if let Err(e) = fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)) {
        warn!(key, "container stdin: set non-blocking: {e}");
        return;
    }
    let fd = match sys::reactor::async_fd(fd, Interest::WRITABLE) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(key, "container stdin: {e}");
            return;
        }
    };
    while let Some(msg) = rx.recv().await {
        let data = match msg {
            StdinMsg::Data(d) => d,
            StdinMsg::Close => {
                drop(fd);
                if let Some(closed) = closed {
                    closed();
                }
                return;
            }
        };
        let mut rest = &data[..];
        while !rest.is_empty() {
            let mut guard = match fd.writable().await {
                Ok(g) => g,
                Err(_) => return,
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), rest).map_err(io::Error::from))
            {
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) => {
                    // EPIPE: the container closed its stdin; input is moot.
                    debug!(key, "container stdin write: {e}");
                    return;
                }
                Err(_would_block) => {}
            }
        }
    }
}
