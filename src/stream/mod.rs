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

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::core::{CgroupManager, Monitor};
use proto::{Kind, Reject, SessionStore};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// The streaming server: its port (once started) and the pending sessions.
pub struct StreamServer {
    monitor: Rc<Monitor>,
    port: RefCell<Option<u16>>,
    sessions: RefCell<SessionStore<Session>>,
}

impl StreamServer {
    pub fn new(monitor: Rc<Monitor>) -> Rc<StreamServer> {
        Rc::new(StreamServer {
            monitor,
            port: RefCell::new(None),
            sessions: RefCell::new(SessionStore::new(proto::MAX_SESSIONS, proto::SESSION_TTL)),
        })
    }

    /// serveExecContainer: the container must be monitored.
    pub async fn serve_exec(self: &Rc<Self>, req: ExecRequest) -> Result<String, StreamError> {
        if !self.monitor.has_child(&req.id) {
            return Err(StreamError::ChildNotAvailable(req.id));
        }
        if req.command.is_empty() {
            return Err(StreamError::Invalid {
                field: "command",
                reason: "must not be empty",
            });
        }
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
        let token = crate::core::monitor::random_uuid();
        let url = format!(
            "http://127.0.0.1:{port}/{}/{token}",
            session.kind().path_prefix()
        );
        debug!(%url, "streaming session added");
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
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let server = Rc::clone(&self);
                    tokio::task::spawn_local(async move {
                        server.handle(stream).await;
                        debug!(%peer, "streaming connection done");
                    });
                }
                Err(e) => {
                    warn!("streaming server accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One HTTP connection: parse the head, reject or upgrade, run the
    /// session. Nothing here can take the server down.
    async fn handle(self: Rc<Self>, mut stream: TcpStream) {
        let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
            Ok(Ok(head)) => head,
            Ok(Err(reject)) => return reject_with(&mut stream, reject).await,
            Err(_) => return reject_with(&mut stream, Reject::new(408, "request timeout")).await,
        };
        let (upgrade, head_len, buf) = head;
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
        if let Err(e) = stream.write_all(&response).await {
            debug!("streaming upgrade response: {e}");
            return;
        }
        let rest = buf[head_len..].to_vec();
        let ws = tokio_tungstenite::WebSocketStream::from_partially_read(
            stream,
            rest,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
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
    }
}

/// Reads until a complete request head; returns it parsed, its length and
/// everything read.
async fn read_head(stream: &mut TcpStream) -> Result<(proto::Upgrade, usize, Vec<u8>), Reject> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
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
        if let Some((upgrade, len)) = proto::parse_head(&buf)? {
            return Ok((upgrade, len, buf));
        }
    }
}

async fn reject_with(stream: &mut TcpStream, reject: Reject) {
    debug!(status = reject.status, message = %reject.message, "streaming request rejected");
    let _ = stream.write_all(&reject.response()).await;
    let _ = stream.shutdown().await;
}
