//! The three websocket session kinds. Each session has one writer task that
//! owns the websocket's sink (messages are queued to it in order) and reads
//! the client's messages itself; output sources are pumped by tasks of
//! their own so a slow client never blocks a process on a full pipe for
//! long, and a client that went away only makes the output be discarded.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use futures::stream::{SplitStream, StreamExt};
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use super::proto::{self, Framing, Input, CH_ERROR, CH_STDERR, CH_STDIN, CH_STDOUT};
use super::{AttachRequest, ExecRequest, PortForwardRequest};
use crate::core::exec::ExecStream;
use crate::core::Monitor;
use crate::sys;

type Ws = WebSocketStream<TcpStream>;

/// Queued outgoing messages per session.
const OUT_QUEUE: usize = 64;
/// Size of one output read.
const CHUNK: usize = 32 * 1024;
/// How long output may stay open after the process exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the client's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Largest stdin packet sent on an attach socket.
const ATTACH_PACKET: usize = 32 * 1024;

/// The sending side of a session: queues messages for the writer task.
#[derive(Clone)]
struct Out(mpsc::Sender<Message>);

impl Out {
    /// Queues a channel message; false once the client is gone.
    async fn send(&self, channel: u8, payload: &[u8]) -> bool {
        self.0
            .send(Message::Binary(proto::frame(channel, payload).into()))
            .await
            .is_ok()
    }

    /// Queues raw bytes as one binary message (the SPDY tunnel).
    async fn raw(&self, bytes: Vec<u8>) -> bool {
        self.0.send(Message::Binary(bytes.into())).await.is_ok()
    }

    /// Queues the final close frame (1000 "done").
    async fn close(&self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
    }
}

/// The client's side of a session's websocket. A message or frame past
/// the size limit ([`super::MAX_WEBSOCKET_MESSAGE`]) ends the session: the
/// client gets close code 1009 naming the limit.
pub(super) struct Incoming {
    stream: SplitStream<Ws>,
    out: Out,
}

impl Incoming {
    /// The client's next binary message; `None` once it closed, went away
    /// or broke a limit. Pings are answered by the websocket layer; text
    /// messages are logged and ignored. Cancel-safe.
    async fn next_binary(&mut self) -> Option<tokio_tungstenite::tungstenite::Bytes> {
        use tokio_tungstenite::tungstenite::Error as WsError;
        loop {
            match self.stream.next().await? {
                Ok(Message::Binary(data)) => return Some(data),
                Ok(Message::Close(_)) => return None,
                Ok(Message::Text(_)) => debug!("websocket text message ignored"),
                Ok(_) => {}
                Err(WsError::Capacity(e)) => {
                    debug!("websocket read: {e}");
                    let frame = CloseFrame {
                        code: CloseCode::Size,
                        reason: format!(
                            "{e}: messages and frames are limited to {} bytes",
                            super::MAX_WEBSOCKET_MESSAGE
                        )
                        .into(),
                    };
                    let _ = self.out.0.send(Message::Close(Some(frame))).await;
                    return None;
                }
                Err(e) => {
                    debug!("websocket read: {e}");
                    return None;
                }
            }
        }
    }
}

/// Splits the websocket: a writer task for the sink, the stream for the
/// caller.
fn start(ws: Ws) -> (Out, Incoming, tokio::task::JoinHandle<()>) {
    let (mut sink, stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let writer = tokio::task::spawn_local(async move {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if let Err(e) = sink.send(m).await {
                // Typically our close after the client's: the websocket
                // layer queued its close reply already; get it out.
                debug!("websocket write: {e}");
                let _ = sink.flush().await;
                // Keep taking messages so that producers never block.
                while rx.recv().await.is_some() {}
                return;
            }
            if last {
                break;
            }
        }
        let _ = sink.flush().await;
    });
    let out = Out(tx);
    let incoming = Incoming {
        stream,
        out: out.clone(),
    };
    (out, incoming, writer)
}

/// Reads the client's next binary message as (channel, payload), until the
/// client closes or goes away (`None`). Empty messages are ignored.
/// Cancel-safe.
async fn next_message(stream: &mut Incoming) -> Option<(u8, Vec<u8>)> {
    loop {
        let data = stream.next_binary().await?;
        if let Some((channel, payload)) = proto::split_channel(&data) {
            return Some((channel, payload.to_vec()));
        }
    }
}

/// The client's next remotecommand input; `None` when it closed or left.
/// Unknown channels and bad resize messages are logged and skipped.
async fn next_input(stream: &mut Incoming, framing: Framing) -> Option<Input> {
    loop {
        let (channel, payload) = next_message(stream).await?;
        match proto::client_input(framing, channel, payload) {
            Ok(input) => return Some(input),
            Err(skipped) => debug!(?skipped, "client message ignored"),
        }
    }
}

/// Sends the close frame and waits (bounded) for the writer to flush it and
/// for the client's close reply, so the closing handshake completes before
/// the connection is dropped.
async fn finish(
    out: Out,
    writer: tokio::task::JoinHandle<()>,
    stream: &mut Incoming,
    client_open: bool,
) {
    out.close().await;
    drop(out);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = writer.await;
        if client_open {
            while next_message(stream).await.is_some() {}
        }
    })
    .await;
}

/// A task writing stdin to a process (pipe or pty master); dropping the
/// returned sender closes the process's stdin (pipe) once queued input is
/// written.
fn stdin_task(fd: OwnedFd) -> io::Result<mpsc::Sender<Vec<u8>>> {
    sys::fd::set_nonblocking(fd.as_fd())?;
    let mut w = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    tokio::task::spawn_local(async move {
        while let Some(data) = rx.recv().await {
            if let Err(e) = w.write_all(&data).await {
                debug!("streaming stdin write: {e}");
                return;
            }
        }
    });
    Ok(tx)
}

/// Reads `fd` to its end, sending each chunk on `channel` (`None`: read and
/// discard). A pty reports its end with EIO. Once the client is gone the
/// output is still read (and dropped), so the process never blocks.
async fn pump(fd: OwnedFd, kind: ExecStream, channel: Option<u8>, out: Out) {
    if let Err(e) = sys::fd::set_nonblocking(fd.as_fd()) {
        warn!("streaming output: {e}");
        return;
    }
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd) {
        Ok(rx) => rx,
        Err(e) => {
            warn!("streaming output: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; CHUNK];
    let mut connected = true;
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if let (Some(ch), true) = (channel, connected) {
                    connected = out.send(ch, &buf[..n]).await;
                }
            }
            Err(e) if kind == ExecStream::Pty && e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("streaming output read: {e}");
                return;
            }
        }
    }
}

/// An exec session: start the process, stream its output, forward stdin
/// and resizes, report the exit status once the output is drained, close.
/// A client that leaves early does not stop the process.
pub(super) async fn exec(monitor: Rc<Monitor>, req: ExecRequest, ws: Ws, framing: Framing) {
    let (out, mut stream, writer) = start(ws);
    // Under the serveExecContainer call's span: its runtime exec child.
    let started = crate::otel::in_context(
        req.trace,
        monitor.exec_streaming(
            &req.id,
            &req.command,
            req.tty,
            req.stdin,
            req.cgroup_manager,
        ),
    )
    .await;
    let (process, io) = match started {
        Ok(s) => s,
        Err(e) => {
            warn!(id = %req.id, "streaming exec failed to start: {e}");
            let status = proto::failure_status_json(&format!("exec failed: {e}"));
            out.send(CH_ERROR, status.as_bytes()).await;
            finish(out, writer, &mut stream, true).await;
            return;
        }
    };
    let pid = process.pid();
    let mut pumps = vec![tokio::task::spawn_local(pump(
        io.stdout,
        io.stdout_kind,
        req.stdout.then_some(CH_STDOUT),
        out.clone(),
    ))];
    if let Some(fd) = io.stderr {
        pumps.push(tokio::task::spawn_local(pump(
            fd,
            ExecStream::Pipe,
            req.stderr.then_some(CH_STDERR),
            out.clone(),
        )));
    }
    let mut stdin = match io.stdin.map(stdin_task).transpose() {
        Ok(s) => s,
        Err(e) => {
            warn!(id = %req.id, pid, "streaming exec stdin: {e}");
            None
        }
    };
    let terminal = io.terminal;
    let completion = async {
        let code = process.wait().await;
        // Drain: the output that was written before the exit goes out
        // before the status (bounded, a descendant may hold the pipe).
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        for p in pumps {
            if tokio::time::timeout_at(deadline, p).await.is_err() {
                debug!(pid, "streaming exec output still open after exit");
            }
        }
        code
    };
    tokio::pin!(completion);
    let mut client_open = true;
    let code = loop {
        tokio::select! {
            code = &mut completion => break code,
            input = next_input(&mut stream, framing), if client_open => match input {
                None => {
                    debug!(pid, "streaming exec client left; the process keeps running");
                    client_open = false;
                    stdin = None;
                }
                Some(Input::Stdin(data)) => {
                    if let Some(tx) = &stdin {
                        if tx.send(data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(Input::CloseStream(CH_STDIN)) => {
                    // Stdin EOF reaches the process; the session goes on.
                    // A pty has no EOF of its own: send its EOF character.
                    if terminal.is_none() {
                        // Dropping the sender closes the pipe.
                        stdin = None;
                    } else if let Some(tx) = &stdin {
                        let _ = tx.send(vec![4]).await;
                    }
                }
                Some(Input::CloseStream(_)) => {}
                Some(Input::Resize(w, h)) => {
                    if let Some(t) = &terminal {
                        if let Err(e) = sys::tty::set_window_size(t, w, h) {
                            debug!(pid, "streaming exec resize: {e}");
                        }
                    }
                }
            }
        }
    };
    drop(stdin);
    debug!(id = %req.id, pid, code, "streaming exec done");
    if let Some(status) = proto::exit_status_json(code) {
        out.send(CH_ERROR, status.as_bytes()).await;
    }
    finish(out, writer, &mut stream, client_open).await;
}

/// An attach session: bridges a private attach socket of the container
/// (spec §5.3/§5.4) to the websocket. Ends when the container's output
/// ends (exit, stdin-once EOF) or the client leaves.
///
/// The client's close of stdin (v5 close-stream 0) ends the attach
/// socket's writing side. For a `stdin_once` container that socket's
/// listener stops after stdin EOF (the RPC attach's `stopAfterStdinEof`
/// path), so the container's stdin closes once the input sent before is
/// written, as with the kubelet; for other containers it only ends this
/// client's input. A stdin client leaving hangs the socket up, which is
/// the same EOF: Kubernetes closes a `stdin_once` container's stdin when
/// its attach disconnects.
pub(super) async fn attach(monitor: Rc<Monitor>, req: AttachRequest, ws: Ws, framing: Framing) {
    let (out, mut stream, writer) = start(ws);
    let conn = match attach_socket(&monitor, &req.id, req.stdin) {
        Ok(c) => Rc::new(c),
        Err(e) => {
            warn!(id = %req.id, "streaming attach: {e}");
            let status = proto::failure_status_json(&format!("attach failed: {e}"));
            out.send(CH_ERROR, status.as_bytes()).await;
            finish(out, writer, &mut stream, true).await;
            return;
        }
    };
    let output = tokio::task::spawn_local(attach_output(
        Rc::clone(&conn),
        req.stdout,
        req.stderr,
        out.clone(),
    ));
    tokio::pin!(output);
    let mut client_open = true;
    // Until the client closes its stdin.
    let mut stdin_open = req.stdin;
    loop {
        tokio::select! {
            _ = &mut output => break,
            input = next_input(&mut stream, framing) => match input {
                None => {
                    client_open = false;
                    break;
                }
                Some(Input::Stdin(data)) if stdin_open => {
                    if let Err(e) = attach_send(&conn, &data).await {
                        debug!(id = %req.id, "streaming attach stdin: {e}");
                    }
                }
                Some(Input::CloseStream(CH_STDIN)) if stdin_open => {
                    stdin_open = false;
                    debug!(id = %req.id, "streaming attach: the client closed stdin");
                    if let Err(e) = sys::socket::shut_down_writing(conn.get_ref()) {
                        debug!(id = %req.id, "streaming attach stdin close: {e}");
                    }
                }
                Some(Input::Stdin(_)) | Some(Input::CloseStream(_)) => {}
                Some(Input::Resize(w, h)) => {
                    if let Err(e) = monitor.set_window_size(&req.id, "", w, h) {
                        debug!(id = %req.id, "streaming attach resize: {e}");
                    }
                }
            }
        }
    }
    output.abort();
    sys::socket::hang_up(conn.get_ref());
    if client_open {
        finish(out, writer, &mut stream, true).await;
    }
}

/// Makes the container's private streaming attach listener and connects to
/// it. Two listeners per container, each made once and reused:
/// `attach-streams/<id>` for sessions whose stdin end changes nothing, and,
/// for the sessions with stdin of a `stdin_once` container,
/// `attach-streams-stdin-once/<id>`, which stops after stdin EOF. (Separate
/// directories: no container id can name the other's socket.)
fn attach_socket(
    monitor: &Monitor,
    id: &str,
    stdin: bool,
) -> Result<tokio::io::unix::AsyncFd<OwnedFd>, crate::core::CoreError> {
    let stop_after_stdin_eof = stdin && monitor.stdin_once(id)?;
    let dir = monitor.runtime_dir().join(if stop_after_stdin_eof {
        "attach-streams-stdin-once"
    } else {
        "attach-streams"
    });
    std::fs::create_dir_all(&dir)
        .map_err(|e| crate::core::CoreError::io(format!("create {}", dir.display()), e))?;
    let path: PathBuf = dir.join(id);
    monitor.attach_container(id, "", &path, stop_after_stdin_eof)?;
    let io_err = |e| crate::core::CoreError::io(format!("connect {}", path.display()), e);
    let fd = sys::socket::connect_seqpacket(&path).map_err(io_err)?;
    sys::fd::set_nonblocking(fd.as_fd()).map_err(io_err)?;
    sys::reactor::async_fd(
        fd,
        tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
    )
    .map_err(io_err)
}

/// Forwards attach packets (type 2 stdout, 3 stderr) until the done packet
/// or the end of the connection.
async fn attach_output(
    conn: Rc<tokio::io::unix::AsyncFd<OwnedFd>>,
    stdout: bool,
    stderr: bool,
    out: Out,
) {
    loop {
        let Ok(mut guard) = conn.readable().await else {
            return;
        };
        match sys::socket::recv_packet(guard.get_inner()) {
            Ok(None) => guard.clear_ready(),
            Ok(Some(p)) => match p.split_first() {
                None | Some((0, _)) => return,
                Some((2, data)) if stdout => {
                    out.send(CH_STDOUT, data).await;
                }
                Some((3, data)) if stderr => {
                    out.send(CH_STDERR, data).await;
                }
                Some(_) => {}
            },
            Err(e) => {
                debug!("streaming attach read: {e}");
                return;
            }
        }
    }
}

/// Writes stdin to the attach socket, one packet per 32 KiB.
async fn attach_send(conn: &tokio::io::unix::AsyncFd<OwnedFd>, data: &[u8]) -> io::Result<()> {
    for chunk in data.chunks(ATTACH_PACKET) {
        loop {
            let mut guard = conn.writable().await?;
            if sys::socket::send_packet(guard.get_inner(), chunk)? {
                break;
            }
            guard.clear_ready();
        }
    }
    Ok(())
}

/// A port-forward session (kubelet's websocket protocol): for the i-th
/// `port` query value, channel 2i carries data and 2i+1 errors; the first
/// message on each is the port number (2 bytes, little endian). Each port
/// is connected at `127.0.0.1:<port>` inside the session's network
/// namespace. Ends when every connection reached EOF or the client leaves.
///
/// Each port's backend is written by a task of its own, so a backend that
/// does not read holds up only its port: past [`MAX_BACKEND_QUEUED`] bytes
/// waiting for it, its further data is dropped with an error on its error
/// channel.
pub(super) async fn port_forward(req: PortForwardRequest, ports: Vec<u16>, ws: Ws) {
    let (out, mut stream, writer) = start(ws);
    // One EOF per port at most: bounded by the ports of the URL.
    let (eof_tx, mut eof_rx) = mpsc::unbounded_channel::<usize>();
    let mut writers: Vec<Option<BackendQueue>> = Vec::new();
    let mut writer_tasks = Vec::new();
    let mut open = 0usize;
    for (i, &port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let err_ch = data_ch + 1;
        out.send(data_ch, &port.to_le_bytes()).await;
        out.send(err_ch, &port.to_le_bytes()).await;
        match connect_in_netns(&req, port).await {
            Ok(tcp) => {
                let (r, w) = tcp.into_split();
                let (queue, pending) = BackendQueue::new();
                writers.push(Some(queue));
                writer_tasks.push(tokio::task::spawn_local(write_backend(w, pending, port)));
                open += 1;
                tokio::task::spawn_local(tcp_to_ws(r, data_ch, out.clone(), eof_tx.clone(), i));
            }
            Err(e) => {
                warn!(port, netns = %req.net_ns_path.display(), "port-forward: {e}");
                writers.push(None);
                let msg = format!("error forwarding port {port}: {e}");
                out.send(err_ch, msg.as_bytes()).await;
            }
        }
    }
    let mut client_open = true;
    while open > 0 {
        tokio::select! {
            Some(i) = eof_rx.recv() => {
                open -= 1;
                // The remote side finished: finish ours too, once the data
                // already queued is written.
                if let Some(queue) = writers[i].take() {
                    queue.finish();
                }
            }
            msg = next_message(&mut stream) => match msg {
                None => {
                    client_open = false;
                    break;
                }
                Some((ch, data)) if ch % 2 == 0 => {
                    let i = usize::from(ch / 2);
                    if let Some(Some(queue)) = writers.get(i) {
                        if !queue.push(data) {
                            debug!(port = ports[i], "port-forward: backend too slow, its data is dropped");
                            writers[i] = None;
                            let msg = format!(
                                "port-forward: more than {MAX_BACKEND_QUEUED} bytes waiting for port {}, its further data is dropped",
                                ports[i]
                            );
                            out.send(ch + 1, msg.as_bytes()).await;
                        }
                    }
                }
                Some((ch, _)) => debug!(channel = ch, "port-forward: message ignored"),
            }
        }
    }
    drop(writers);
    // Queued data gets a short while to reach backends that read.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        for task in &mut writer_tasks {
            let _ = task.await;
        }
    })
    .await;
    for task in writer_tasks {
        task.abort();
    }
    finish(out, writer, &mut stream, client_open).await;
}

/// Client bytes per forwarded connection waiting for its backend (still
/// connecting, or slow to read).
const MAX_BACKEND_QUEUED: usize = 1 << 20;

/// What goes to a forwarded connection's backend, in order.
enum ToBackend {
    Data(Vec<u8>),
    /// The client finished its direction.
    Fin,
}

/// The client's data for one forwarded connection, on its way to the
/// backend's writer ([`write_backend`]). Unbounded as a channel, bounded
/// in bytes by [`MAX_BACKEND_QUEUED`].
struct BackendQueue {
    queue: mpsc::UnboundedSender<ToBackend>,
    /// Bytes pushed and not written to the backend yet.
    queued: Rc<std::cell::Cell<usize>>,
}

/// The writer's end of a [`BackendQueue`].
struct BackendPending {
    queue: mpsc::UnboundedReceiver<ToBackend>,
    queued: Rc<std::cell::Cell<usize>>,
}

impl BackendQueue {
    fn new() -> (BackendQueue, BackendPending) {
        let (queue, rx) = mpsc::unbounded_channel();
        let queued = Rc::new(std::cell::Cell::new(0));
        let pending = BackendPending {
            queue: rx,
            queued: Rc::clone(&queued),
        };
        (BackendQueue { queue, queued }, pending)
    }

    /// Queues data; false (nothing queued) if that would exceed the bound.
    /// Data for a backend whose writer ended is dropped.
    fn push(&self, data: Vec<u8>) -> bool {
        if self.queued.get() + data.len() > MAX_BACKEND_QUEUED {
            return false;
        }
        if !data.is_empty() {
            self.queued.set(self.queued.get() + data.len());
            let _ = self.queue.send(ToBackend::Data(data));
        }
        true
    }

    /// The client finished: the backend's write side is shut down once
    /// the queued data is written.
    fn finish(&self) {
        let _ = self.queue.send(ToBackend::Fin);
    }
}

/// Writes a connection's queued client data to its backend, until the
/// client finished (then shuts the write side down), the queue is dropped
/// or a write fails.
async fn write_backend(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut pending: BackendPending,
    port: u16,
) {
    while let Some(item) = pending.queue.recv().await {
        match item {
            ToBackend::Data(data) => {
                let written = w.write_all(&data).await;
                pending
                    .queued
                    .set(pending.queued.get().saturating_sub(data.len()));
                if let Err(e) = written {
                    debug!(port, "port-forward write: {e}");
                    return;
                }
            }
            ToBackend::Fin => {
                let _ = w.shutdown().await;
                return;
            }
        }
    }
}

/// Namespace connects in flight in the whole daemon (each takes a thread
/// for up to [`CONNECT_TIMEOUT`]); more wait for a turn.
const MAX_CONNECTS_IN_FLIGHT: usize = 16;
static CONNECT_PERMITS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_CONNECTS_IN_FLIGHT);
/// How long a port-forward connect to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect_in_netns(req: &PortForwardRequest, port: u16) -> io::Result<TcpStream> {
    if req.net_ns_path.as_os_str().is_empty() {
        return Err(io::Error::other("the session has no network namespace"));
    }
    let _permit = CONNECT_PERMITS
        .acquire()
        .await
        .map_err(|_| io::Error::other("connect permits closed"))?;
    let connect =
        sys::namespace::connect_loopback_in_netns(&req.net_ns_path, port, CONNECT_TIMEOUT);
    // The thread gives up after CONNECT_TIMEOUT; this is a second guard.
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        .map_err(|_| io::Error::other("namespace thread failed"))??;
    tcp.set_nonblocking(true)?;
    TcpStream::from_std(tcp)
}

/// Copies one forwarded connection's data to its channel; reports EOF.
async fn tcp_to_ws(
    mut r: tokio::net::tcp::OwnedReadHalf,
    channel: u8,
    out: Out,
    eof: mpsc::UnboundedSender<usize>,
    index: usize,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if !out.send(channel, &buf[..n]).await {
                    break;
                }
            }
            Err(e) => {
                debug!("port-forward read: {e}");
                break;
            }
        }
    }
    let _ = eof.send(index);
}

/// Data streams plus error streams still waiting for their data stream,
/// per SPDY session; a SYN_STREAM past it is refused.
const MAX_SPDY_STREAMS: usize = 128;
/// A SPDY data stream: its own task connects the backend, writes the
/// queued client data to it and copies its output to the client, so that a
/// slow or hanging backend holds up nothing but its own stream.
struct SpdyDataStream {
    /// Client data for the backend; past [`MAX_BACKEND_QUEUED`] bytes
    /// waiting the stream is reset.
    backend: BackendQueue,
    task: tokio::task::AbortHandle,
    /// The error stream of the same request, if the client opened one.
    error_stream: Option<u32>,
}

/// One data stream's task: connect, then both directions until the backend
/// reached EOF and the client finished (or either side failed). Returns the
/// stream id and the connect error, if any; after a connect the task ends
/// the data stream and its error stream itself, as soon as the backend
/// reached EOF (client-go waits for the error stream's end before it
/// finishes its own direction).
async fn spdy_data_stream(
    req: PortForwardRequest,
    port: u16,
    (stream_id, error_stream): (u32, Option<u32>),
    pending: BackendPending,
    out: Out,
) -> (u32, Option<io::Error>) {
    let tcp = match connect_in_netns(&req, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let e = io::Error::new(e.kind(), format!("error forwarding port {port}: {e}"));
            return (stream_id, Some(e));
        }
    };
    let (r, w) = tcp.into_split();
    let to_client = async {
        spdy_tcp_reader(r, stream_id, &out).await;
        // The backend finished: so does our side of both streams.
        out.raw(super::spdy::data(stream_id, true, &[])).await;
        if let Some(err_id) = error_stream {
            out.raw(super::spdy::data(err_id, true, &[])).await;
        }
    };
    let to_backend = write_backend(w, pending, port);
    tokio::join!(to_client, to_backend);
    (stream_id, None)
}

/// Port-forward for client-go's port-forwarder (SPDY/3.1 tunnelled
/// through the websocket, `SPDY/3.1+portforward.k8s.io`): per forwarded
/// connection the client opens an error stream and a data stream carrying
/// `port` and `requestid` headers; the data stream is connected to
/// `127.0.0.1:<port>` in the session's network namespace, errors are
/// written on the error stream. Ends when the client closes the tunnel.
///
/// Bounded: at most [`MAX_SPDY_STREAMS`] streams (more are refused), at
/// most [`MAX_BACKEND_QUEUED`] bytes waiting per stream (more reset it), and
/// finished streams leave the session's maps.
pub(super) async fn spdy_port_forward(req: PortForwardRequest, ws: Ws) {
    use super::spdy::{self, Frame};
    use futures::stream::FuturesUnordered;
    use std::collections::HashMap;

    let (out, mut stream, writer) = start(ws);
    let mut decoder = spdy::Decoder::default();
    let mut encoder = spdy::Encoder::default();
    let mut streams: HashMap<u32, SpdyDataStream> = HashMap::new();
    // requestid → error stream, until the request's data stream comes.
    let mut waiting_errors: HashMap<String, u32> = HashMap::new();
    let mut tasks = FuturesUnordered::new();
    let mut client_open = true;
    'session: loop {
        tokio::select! {
            Some(done) = tasks.next(), if !tasks.is_empty() => {
                // Aborted tasks were removed from `streams` already.
                let Ok((id, failure)) = done else { continue };
                let Some(ds) = streams.remove(&id) else { continue };
                // Without a failure the task ended both streams itself.
                let Some(e): Option<io::Error> = failure else { continue };
                warn!(netns = %req.net_ns_path.display(), "port-forward: {e}");
                if let Some(err_id) = ds.error_stream {
                    out.raw(spdy::data(err_id, false, e.to_string().as_bytes())).await;
                    out.raw(spdy::data(err_id, true, &[])).await;
                }
                out.raw(spdy::data(id, true, &[])).await;
            },
            bytes = stream.next_binary() => {
                let Some(bytes) = bytes else {
                    client_open = false;
                    break;
                };
                decoder.push(&bytes);
                loop {
                    let frame = match decoder.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            warn!("port-forward: {e}");
                            break 'session;
                        }
                    };
                    match frame {
                        Frame::SynStream { stream_id, headers, .. } => {
                            let header = |name: &str| {
                                headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
                            };
                            let in_use = streams.contains_key(&stream_id)
                                || waiting_errors.values().any(|&e| e == stream_id);
                            if in_use {
                                debug!(stream_id, "port-forward: stream id reused");
                                out.raw(spdy::rst_stream(stream_id, spdy::RST_PROTOCOL_ERROR)).await;
                                continue;
                            }
                            if streams.len() + waiting_errors.len() >= MAX_SPDY_STREAMS {
                                debug!(stream_id, "port-forward: stream refused, {MAX_SPDY_STREAMS} open");
                                out.raw(spdy::rst_stream(stream_id, spdy::RST_REFUSED_STREAM)).await;
                                continue;
                            }
                            let request = header("requestid").unwrap_or("").to_string();
                            match header("streamtype") {
                                Some("error") => {
                                    out.raw(encoder.syn_reply(stream_id)).await;
                                    // A second error stream for a request
                                    // replaces the first, which gets its end.
                                    if let Some(old) = waiting_errors.insert(request, stream_id) {
                                        out.raw(spdy::data(old, true, &[])).await;
                                    }
                                }
                                Some("data") => {
                                    out.raw(encoder.syn_reply(stream_id)).await;
                                    let error_stream = waiting_errors.remove(&request);
                                    let port = header("port").and_then(|p| p.parse::<u16>().ok()).filter(|&p| p > 0);
                                    let (backend, pending) = BackendQueue::new();
                                    let task = match port {
                                        Some(port) => tokio::task::spawn_local(spdy_data_stream(
                                            req.clone(), port, (stream_id, error_stream), pending, out.clone(),
                                        )),
                                        None => {
                                            let e = io::Error::new(
                                                io::ErrorKind::InvalidInput,
                                                format!("invalid port '{}'", header("port").unwrap_or("")),
                                            );
                                            tokio::task::spawn_local(async move { (stream_id, Some(e)) })
                                        }
                                    };
                                    streams.insert(stream_id, SpdyDataStream {
                                        backend,
                                        task: task.abort_handle(),
                                        error_stream,
                                    });
                                    tasks.push(task);
                                }
                                other => {
                                    debug!(?other, "port-forward: unknown stream type");
                                    out.raw(encoder.syn_reply(stream_id)).await;
                                    out.raw(spdy::rst_stream(stream_id, spdy::RST_REFUSED_STREAM)).await;
                                }
                            }
                        }
                        Frame::Data { stream_id, flags, data } => {
                            let fin = flags & spdy::FLAG_FIN != 0;
                            // Error streams and finished ones: nothing to do.
                            let Some(ds) = streams.get(&stream_id) else { continue };
                            if !ds.backend.push(data) {
                                debug!(stream_id, "port-forward: backend too slow, stream reset");
                                if let Some(ds) = streams.remove(&stream_id) {
                                    ds.task.abort();
                                    out.raw(spdy::rst_stream(stream_id, spdy::RST_FLOW_CONTROL_ERROR)).await;
                                    if let Some(err_id) = ds.error_stream {
                                        let msg = format!("port-forward: more than {MAX_BACKEND_QUEUED} bytes waiting for the backend, stream reset");
                                        out.raw(spdy::data(err_id, false, msg.as_bytes())).await;
                                        out.raw(spdy::data(err_id, true, &[])).await;
                                    }
                                }
                                continue;
                            }
                            if fin {
                                ds.backend.finish();
                            }
                        }
                        Frame::RstStream { stream_id, .. } => {
                            if let Some(ds) = streams.remove(&stream_id) {
                                ds.task.abort();
                            }
                            waiting_errors.retain(|_, e| *e != stream_id);
                            for ds in streams.values_mut() {
                                if ds.error_stream == Some(stream_id) {
                                    ds.error_stream = None;
                                }
                            }
                        }
                        Frame::Ping { id } => {
                            out.raw(spdy::ping(id)).await;
                        }
                        Frame::GoAway => break 'session,
                        Frame::Other { .. } => {}
                    }
                }
            }
        }
    }
    for ds in streams.into_values() {
        ds.task.abort();
    }
    drop(tasks);
    finish(out, writer, &mut stream, client_open).await;
}

/// Copies a forwarded connection to its SPDY data stream.
async fn spdy_tcp_reader(mut r: tokio::net::tcp::OwnedReadHalf, stream_id: u32, out: &Out) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if !out
                    .raw(super::spdy::data(stream_id, false, &buf[..n]))
                    .await
                {
                    return;
                }
            }
            Err(e) => {
                debug!("port-forward read: {e}");
                return;
            }
        }
    }
}
