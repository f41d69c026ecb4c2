//! Serves `GET /metrics` on the control thread's runtime (no thread of its
//! own): on `metrics.sock` in the runtime dir, and on `--metrics-address`
//! if the operator asked for it. Bounds: at most
//! [`MAX_CONNECTIONS_PER_LISTENER`] connections at a time on each listener
//! (one more is closed at once; each listener has its own budget, so TCP
//! peers holding idle connections cannot starve `metrics.sock`, which
//! `ringmon ctl` reads), each one answered or closed within
//! [`CONNECTION_TIMEOUT`], its request head at most
//! [`super::http::MAX_REQUEST_HEAD`]. What the TCP listener serves is
//! rendered at most once per [`TCP_BODY_TTL`], however many scrape it.
//!
//! A listener that cannot be set up is not fatal: [`start`] warns and the
//! server runs without it. The metrics must never cost the containers their
//! monitor, and after the fork nobody would see the error anyway (the
//! parent already exited 0 and the client already expects `conmon.sock`).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{http, render, MetricsError, Sources};

/// Serves the metrics on `metrics.sock` at `path` and, if asked, on
/// `address` (port 0: a free port, logged); returns the listeners' tasks.
/// A listener that cannot be set up is warned about (naming its path or
/// address and the error) and left out. Must run inside a `LocalSet`.
pub async fn start(
    path: &Path,
    address: Option<SocketAddr>,
    sources: Sources,
) -> Vec<JoinHandle<()>> {
    let metrics = MetricsServer::new(sources);
    let mut tasks = Vec::new();
    match bind_unix(path) {
        Ok(unix) => tasks.push(tokio::task::spawn_local(
            Rc::clone(&metrics).serve_unix(unix),
        )),
        Err(err) => warn!("{err}; metrics are not served on this socket"),
    }
    if let Some(address) = address {
        match bind_tcp(address).await {
            Ok((tcp, bound)) => {
                info!("metrics served unauthenticated on http://{bound}/metrics");
                tasks.push(tokio::task::spawn_local(metrics.serve_tcp(tcp)));
            }
            Err(err) => warn!("{err}; metrics are not served over TCP"),
        }
    }
    tasks
}

async fn bind_tcp(address: SocketAddr) -> Result<(TcpListener, SocketAddr), MetricsError> {
    let tcp = TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::BindAddress { address, source })?;
    let bound = tcp
        .local_addr()
        .map_err(|source| MetricsError::LocalAddr { address, source })?;
    Ok((tcp, bound))
}

/// Scrape connections served at a time on one listener. A scraper makes
/// one per scrape; a few operators with curl (or `ringmon ctl`) on top are
/// far below.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 4;

/// How long a body rendered for the TCP listener is served again: whoever
/// reaches the address (unauthenticated) can make the control thread
/// render at most once a second.
pub const TCP_BODY_TTL: Duration = Duration::from_secs(1);

/// How long a connection may take from accept to the end of the response
/// (a client that sends its head slowly, or reads the response slowly).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Which listener a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Unix,
    Tcp,
}

/// The listeners' shared state.
pub struct MetricsServer {
    sources: Sources,
    /// Connections being served, per listener.
    unix_connections: Cell<usize>,
    tcp_connections: Cell<usize>,
    /// The body last rendered for the TCP listener, and when.
    tcp_body: RefCell<Option<(Instant, String)>>,
}

impl MetricsServer {
    pub fn new(sources: Sources) -> Rc<MetricsServer> {
        Rc::new(MetricsServer {
            sources,
            unix_connections: Cell::new(0),
            tcp_connections: Cell::new(0),
            tcp_body: RefCell::new(None),
        })
    }

    fn connections(&self, listener: Listener) -> &Cell<usize> {
        match listener {
            Listener::Unix => &self.unix_connections,
            Listener::Tcp => &self.tcp_connections,
        }
    }

    /// The metrics now; for TCP, the body rendered within the last
    /// [`TCP_BODY_TTL`] if there is one.
    fn body(&self, listener: Listener) -> String {
        if listener == Listener::Unix {
            return render(&self.sources.snapshot());
        }
        let mut cached = self.tcp_body.borrow_mut();
        match &*cached {
            Some((at, body)) if at.elapsed() < TCP_BODY_TTL => body.clone(),
            _ => {
                let body = render(&self.sources.snapshot());
                *cached = Some((Instant::now(), body.clone()));
                body
            }
        }
    }

    /// Serves `metrics.sock` forever; a peer that is neither root nor the
    /// server's user is closed at once (as on conmon.sock). Must run inside
    /// a `LocalSet`.
    pub async fn serve_unix(self: Rc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if crate::sys::socket::peer_allowed(stream.as_fd(), super::SOCKET_NAME) {
                        self.spawn_connection(stream, Listener::Unix);
                    }
                }
                Err(err) => {
                    warn!("accept on {}: {err}", super::SOCKET_NAME);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Serves the `--metrics-address` listener forever (unauthenticated:
    /// whoever can reach the address can read the metrics).
    pub async fn serve_tcp(self: Rc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => self.spawn_connection(stream, Listener::Tcp),
                Err(err) => {
                    warn!("accept on the metrics address: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn spawn_connection<S>(self: &Rc<Self>, stream: S, listener: Listener)
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let connections = self.connections(listener);
        if connections.get() >= MAX_CONNECTIONS_PER_LISTENER {
            debug!(
                "metrics connection ({listener:?}) refused: \
                 {MAX_CONNECTIONS_PER_LISTENER} are served already"
            );
            return;
        }
        connections.set(connections.get() + 1);
        let server = Rc::clone(self);
        tokio::task::spawn_local(async move {
            match tokio::time::timeout(CONNECTION_TIMEOUT, server.answer(stream, listener)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!("metrics connection: {err}"),
                Err(_) => debug!(
                    "metrics connection closed after {} s",
                    CONNECTION_TIMEOUT.as_secs()
                ),
            }
            let connections = server.connections(listener);
            connections.set(connections.get() - 1);
        });
    }

    /// Reads one request head and answers it.
    async fn answer<S>(&self, mut stream: S, listener: Listener) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        let answer = loop {
            // `parse_request` answers once the head is complete or too long,
            // so `head` stays within MAX_REQUEST_HEAD plus one chunk.
            if let Some((answer, _)) = http::parse_request(&head) {
                break answer;
            }
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(());
            }
            head.extend_from_slice(&chunk[..read]);
        };
        let response = http::respond(answer, || self.body(listener));
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        drain(&mut stream).await;
        Ok(())
    }
}

/// Longest a connection is drained after its response, and how much.
const DRAIN_TIME: Duration = Duration::from_millis(200);
const DRAIN_BYTES: usize = 64 * 1024;

/// Reads and drops what the client sent past the head (a body, a pipelined
/// request), briefly and bounded, until it closes: closing a socket with
/// unread bytes makes the kernel send RST, and a client may then lose the
/// response it has not read yet.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while drained < DRAIN_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(read) => drained += read,
            }
        }
    })
    .await;
}

/// Binds `metrics.sock` at `path`, mode 0600: the metrics name every
/// container the server runs, which is for its owner (and root) only, and
/// nobody else has any business connecting. A stale socket file left by a
/// server that died is replaced; anything else at that path is refused.
pub fn bind_unix(path: &Path) -> Result<UnixListener, MetricsError> {
    bind_unix_io(path).map_err(|source| MetricsError::BindSocket {
        path: path.to_path_buf(),
        source,
    })
}

fn bind_unix_io(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = crate::sys::socket::bind_stream(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}
