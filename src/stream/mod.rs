//! The streaming server (spec §3.9, §6.4): kubectl exec, attach and
//! port-forward over websocket, as CRI-O hands them to the monitor.
//!
//! Plain HTTP/1.1 on `127.0.0.1:<ephemeral port>`, started by the first
//! serve* call. Each serve* call stores a session under a random v4 UUID and
//! answers its URL; the client then upgrades that URL to a websocket that
//! speaks the Kubernetes channel protocol (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`) or, for port-forward, kubelet's websocket
//! port-forward protocol (data and error channel per port). Everything runs
//! on the control thread's `LocalSet`; request parsing and framing are the
//! pure functions of [`proto`].

pub mod proto;
mod session;
pub mod spdy;
pub mod spdy_dictionary;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, warn};

use crate::core::{CgroupManager, Monitor};
use proto::{Kind, Reject, SessionStore};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that have not upgraded yet (reading or answering the head),
/// in all and per peer address. Past them a connection gets a 503 and is
/// closed at once, so idle or slow clients cannot hold the daemon's
/// descriptors (every local user can reach the loopback port).
pub const MAX_PENDING_CONNECTIONS: usize = 64;
pub const MAX_PENDING_CONNECTIONS_PER_PEER: usize = 16;
/// Upgraded websocket sessions (exec, attach, port-forward) at a time.
pub const MAX_WEBSOCKET_SESSIONS: usize = 128;
/// Largest websocket message and frame accepted from a client; a larger
/// one ends the session with close code 1009.
pub const MAX_WEBSOCKET_MESSAGE: usize = 1 << 20;
/// Back-off after a failed accept: doubled on each failure in a row
/// (descriptor exhaustion keeps failing until something is closed).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one accept-failure warning per this period; the others are
/// counted and reported with the next one.
const ACCEPT_WARN_PERIOD: Duration = Duration::from_secs(10);

/// The websocket limits of every session.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_WEBSOCKET_MESSAGE))
        .max_frame_size(Some(MAX_WEBSOCKET_MESSAGE))
}

/// A validated `serveExecContainer` request.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub id: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub cgroup_manager: CgroupManager,
    /// The span of the serveExecContainer call (set by `serve_exec`): the
    /// exec runs later, on the client's connection, and its runtime
    /// invocation is a child of that call.
    pub trace: Option<crate::otel::SpanContext>,
}

/// A validated `serveAttachContainer` request.
#[derive(Clone, Debug, Default)]
pub struct AttachRequest {
    pub id: String,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A validated `servePortForwardContainer` request.
#[derive(Clone, Debug, Default)]
pub struct PortForwardRequest {
    /// The network namespace to connect in (`/proc/<pid>/ns/net`, a pinned
    /// namespace file, ...).
    pub net_ns_path: PathBuf,
}

/// A pending session.
#[derive(Debug)]
enum Session {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Session {
    fn kind(&self) -> Kind {
        match self {
            Session::Exec(_) => Kind::Exec,
            Session::Attach(_) => Kind::Attach,
            Session::PortForward(_) => Kind::PortForward,
        }
    }
}

/// Errors of the streaming layer (what serve* callers see).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The container is not monitored (never created, or exited).
    #[error("child not available: no running container '{0}'")]
    ChildNotAvailable(String),
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("start streaming server on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    /// No randomness for a session token (there is no weaker fallback).
    #[error("session token: getrandom: {0}")]
    Random(#[source] std::io::Error),
}

/// Counts live things of one kind; the count drops when the guard does.
struct CountGuard(Rc<Cell<usize>>);

impl CountGuard {
    /// A guard if fewer than `max` are live.
    fn try_new(count: &Rc<Cell<usize>>, max: usize) -> Option<CountGuard> {
        if count.get() >= max {
            return None;
        }
        count.set(count.get() + 1);
        Some(CountGuard(Rc::clone(count)))
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Connections not upgraded yet, in all and per peer address (an entry
/// exists only while its count is above zero, so the map is bounded by
/// [`MAX_PENDING_CONNECTIONS`]).
#[derive(Default)]
struct PendingConnections {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// A connection counted in [`PendingConnections`] until dropped.
struct PendingGuard {
    pending: Rc<RefCell<PendingConnections>>,
    peer: IpAddr,
}

impl PendingGuard {
    fn try_new(pending: &Rc<RefCell<PendingConnections>>, peer: IpAddr) -> Result<Self, Reject> {
        let mut p = pending.borrow_mut();
        if p.total >= MAX_PENDING_CONNECTIONS {
            return Err(Reject::new(
                503,
                format!(
                    "too many connections waiting to upgrade (at most {MAX_PENDING_CONNECTIONS})"
                ),
            ));
        }
        let of_peer = p.per_peer.entry(peer).or_insert(0);
        if *of_peer >= MAX_PENDING_CONNECTIONS_PER_PEER {
            return Err(Reject::new(
                503,
                format!(
                    "too many connections from {peer} waiting to upgrade (at most {MAX_PENDING_CONNECTIONS_PER_PEER})"
                ),
            ));
        }
        *of_peer += 1;
        p.total += 1;
        drop(p);
        Ok(PendingGuard {
            pending: Rc::clone(pending),
            peer,
        })
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut p = self.pending.borrow_mut();
        p.total -= 1;
        if let Some(n) = p.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                p.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Rate-limits the accept-failure warning.
struct AcceptWarnings {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptWarnings {
    fn report(&mut self, e: &std::io::Error, backoff: Duration) {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < ACCEPT_WARN_PERIOD => self.suppressed += 1,
            _ => {
                warn!(
                    suppressed = self.suppressed,
                    ?backoff,
                    "streaming server accept: {e} (further failures within {ACCEPT_WARN_PERIOD:?} are counted, not logged)"
                );
                self.last = Some(now);
                self.suppressed = 0;
            }
        }
    }
}

/// The streaming server: its port (once started) and the pending sessions.
pub struct StreamServer {
    monitor: Rc<Monitor>,
    port: RefCell<Option<u16>>,
    sessions: RefCell<SessionStore<Session>>,
    pending: Rc<RefCell<PendingConnections>>,
    websocket_sessions: Rc<Cell<usize>>,
}

impl StreamServer {
    pub fn new(monitor: Rc<Monitor>) -> Rc<StreamServer> {
        Rc::new(StreamServer {
            monitor,
            port: RefCell::new(None),
            sessions: RefCell::new(SessionStore::new(proto::MAX_SESSIONS, proto::SESSION_TTL)),
            pending: Rc::default(),
            websocket_sessions: Rc::default(),
        })
    }

    /// Upgraded streaming sessions (exec, attach, port-forward) open now.
    pub fn live_sessions(&self) -> usize {
        self.websocket_sessions.get()
    }

    /// serveExecContainer: the container must be monitored.
    pub async fn serve_exec(self: &Rc<Self>, mut req: ExecRequest) -> Result<String, StreamError> {
        if !self.monitor.has_child(&req.id) {
            return Err(StreamError::ChildNotAvailable(req.id));
        }
        if req.command.is_empty() {
            return Err(StreamError::Invalid {
                field: "command",
                reason: "must not be empty",
            });
        }
        req.trace = crate::otel::current();
        self.add(Session::Exec(req)).await
    }

    /// serveAttachContainer: the container must be monitored.
    pub async fn serve_attach(self: &Rc<Self>, req: AttachRequest) -> Result<String, StreamError> {
        if !self.monitor.has_child(&req.id) {
            return Err(StreamError::ChildNotAvailable(req.id));
        }
        self.add(Session::Attach(req)).await
    }

    /// servePortForwardContainer: the namespace is opened on connect.
    pub async fn serve_port_forward(
        self: &Rc<Self>,
        req: PortForwardRequest,
    ) -> Result<String, StreamError> {
        self.add(Session::PortForward(req)).await
    }

    async fn add(self: &Rc<Self>, session: Session) -> Result<String, StreamError> {
        let port = self.ensure_started().await?;
        let mut random = [0u8; 16];
        crate::sys::random::fill(&mut random).map_err(StreamError::Random)?;
        let token = crate::core::uuid_v4(random);
        let prefix = session.kind().path_prefix();
        let url = format!("http://127.0.0.1:{port}/{prefix}/{token}");
        // The token is the session's only credential: never log it whole.
        debug!(
            url = %format!("http://127.0.0.1:{port}/{prefix}/{}", proto::masked_token(&token)),
            "streaming session added"
        );
        self.sessions
            .borrow_mut()
            .insert(token, Instant::now(), session);
        Ok(url)
    }

    /// Starts the HTTP listener unless it runs; returns its port.
    async fn ensure_started(self: &Rc<Self>) -> Result<u16, StreamError> {
        if let Some(p) = *self.port.borrow() {
            return Ok(p);
        }
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(StreamError::Bind)?;
        let port = listener.local_addr().map_err(StreamError::Bind)?.port();
        // Another call may have started it while this one awaited the bind.
        if let Some(p) = *self.port.borrow() {
            return Ok(p);
        }
        *self.port.borrow_mut() = Some(port);
        tracing::info!(port, "streaming server listening on 127.0.0.1");
        tokio::task::spawn_local(Rc::clone(self).accept_loop(listener));
        Ok(port)
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut warnings = AcceptWarnings {
            last: None,
            suppressed: 0,
        };
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let guard = match PendingGuard::try_new(&self.pending, peer.ip()) {
                        Ok(g) => g,
                        Err(reject) => {
                            // Answer without waiting for the peer (the
                            // response fits the empty socket buffer), then
                            // close.
                            debug!(%peer, status = reject.status, message = %reject.message, "streaming connection refused");
                            let _ = stream.try_write(&reject.response());
                            continue;
                        }
                    };
                    let server = Rc::clone(&self);
                    tokio::task::spawn_local(async move {
                        server.handle(stream, guard).await;
                        debug!(%peer, "streaming connection done");
                    });
                }
                Err(e) => {
                    // EMFILE and friends stay until descriptors are freed:
                    // wait longer each time instead of spinning on the
                    // still-readable listener.
                    warnings.report(&e, backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    /// One HTTP connection: parse the head, reject or upgrade, run the
    /// session. Nothing here can take the server down. `pending` counts
    /// the connection until it upgrades.
    async fn handle(self: Rc<Self>, mut stream: TcpStream, pending: PendingGuard) {
        let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
            Ok(Ok(head)) => head,
            Ok(Err(reject)) => return reject_with(&mut stream, reject).await,
            Err(_) => return reject_with(&mut stream, Reject::new(408, "request timeout")).await,
        };
        let (upgrade, head_len, buf) = head;
        // Checked before the token is spent, so that the client may retry.
        let Some(live) = CountGuard::try_new(&self.websocket_sessions, MAX_WEBSOCKET_SESSIONS)
        else {
            let reject = Reject::new(
                503,
                format!("too many streaming sessions (at most {MAX_WEBSOCKET_SESSIONS})"),
            );
            return reject_with(&mut stream, reject).await;
        };
        let session = self
            .sessions
            .borrow_mut()
            .take(&upgrade.token, Instant::now());
        let session = match session {
            Some(s) if s.kind() == upgrade.kind => s,
            _ => {
                let reject = Reject::new(404, "unknown or expired session");
                return reject_with(&mut stream, reject).await;
            }
        };
        let (protocol, framing) = match proto::choose_protocol(upgrade.kind, &upgrade.protocols) {
            Ok(p) => p,
            Err(reject) => return reject_with(&mut stream, reject).await,
        };
        let response = proto::switching_protocols(&upgrade.key, protocol);
        match tokio::time::timeout(HEAD_TIMEOUT, stream.write_all(&response)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return debug!("streaming upgrade response: {e}"),
            Err(_) => return debug!("streaming upgrade response: timed out"),
        }
        drop(pending);
        let rest = buf[head_len..].to_vec();
        let ws = tokio_tungstenite::WebSocketStream::from_partially_read(
            stream,
            rest,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(websocket_config()),
        )
        .await;
        debug!(kind = ?upgrade.kind, ?protocol, "websocket session starts");
        match session {
            Session::Exec(req) => session::exec(Rc::clone(&self.monitor), req, ws, framing).await,
            Session::Attach(req) => {
                session::attach(Rc::clone(&self.monitor), req, ws, framing).await
            }
            Session::PortForward(req) if framing == proto::Framing::SpdyTunnel => {
                session::spdy_port_forward(req, ws).await;
            }
            Session::PortForward(req) => {
                session::port_forward(req, upgrade.ports, ws).await;
            }
        }
        drop(live);
    }
}

/// Reads until a complete request head; returns it parsed, its length and
/// everything read.
async fn read_head(stream: &mut TcpStream) -> Result<(proto::Upgrade, usize, Vec<u8>), Reject> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut scanner = proto::HeadScanner::default();
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Reject::new(400, format!("read request: {e}")))?;
        if n == 0 {
            return Err(Reject::new(
                400,
                "connection closed before the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !scanner.worth_parsing(&buf) {
            continue;
        }
        if let Some((upgrade, len)) = proto::parse_head(&buf)? {
            return Ok((upgrade, len, buf));
        }
    }
}

/// Sends the error response (bounded: a peer that does not read is left)
/// and closes.
async fn reject_with(stream: &mut TcpStream, reject: Reject) {
    debug!(status = reject.status, message = %reject.message, "streaming request rejected");
    let _ = tokio::time::timeout(HEAD_TIMEOUT, async {
        let _ = stream.write_all(&reject.response()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
