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

/// Splits the websocket: a writer task for the sink, the stream for the
/// caller.
fn start(ws: Ws) -> (Out, SplitStream<Ws>, tokio::task::JoinHandle<()>) {
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
    (Out(tx), stream, writer)
}

/// Reads the client's next binary message as (channel, payload), until the
/// client closes or goes away (`None`). Pings are answered by the websocket
/// layer; text and empty messages are logged and ignored. Cancel-safe.
async fn next_message(stream: &mut SplitStream<Ws>) -> Option<(u8, Vec<u8>)> {
    loop {
        match stream.next().await? {
            Ok(Message::Binary(data)) => match proto::split_channel(&data) {
                Some((channel, payload)) => return Some((channel, payload.to_vec())),
                None => continue,
            },
            Ok(Message::Close(_)) => return None,
            Ok(Message::Text(_)) => debug!("websocket text message ignored"),
            Ok(_) => {}
            Err(e) => {
                debug!("websocket read: {e}");
                return None;
            }
        }
    }
}

/// The client's next remotecommand input; `None` when it closed or left.
/// Unknown channels and bad resize messages are logged and skipped.
async fn next_input(stream: &mut SplitStream<Ws>, framing: Framing) -> Option<Input> {
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
    stream: &mut SplitStream<Ws>,
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
    let started = monitor
        .exec_streaming(
            &req.id,
            &req.command,
            req.tty,
            req.stdin,
            req.cgroup_manager,
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
pub(super) async fn attach(monitor: Rc<Monitor>, req: AttachRequest, ws: Ws, framing: Framing) {
    let (out, mut stream, writer) = start(ws);
    let conn = match attach_socket(&monitor, &req.id) {
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
    loop {
        tokio::select! {
            _ = &mut output => break,
            input = next_input(&mut stream, framing) => match input {
                None => {
                    client_open = false;
                    break;
                }
                Some(Input::Stdin(data)) if req.stdin => {
                    if let Err(e) = attach_send(&conn, &data).await {
                        debug!(id = %req.id, "streaming attach stdin: {e}");
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

/// Makes the container's private streaming attach listener (one per
/// container, reused) and connects to it.
fn attach_socket(
    monitor: &Monitor,
    id: &str,
) -> Result<tokio::io::unix::AsyncFd<OwnedFd>, crate::core::CoreError> {
    let dir = monitor.runtime_dir().join("attach-streams");
    std::fs::create_dir_all(&dir)
        .map_err(|e| crate::core::CoreError::io(format!("create {}", dir.display()), e))?;
    let path: PathBuf = dir.join(id);
    monitor.attach_container(id, "", &path, false)?;
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
pub(super) async fn port_forward(req: PortForwardRequest, ports: Vec<u16>, ws: Ws) {
    let (out, mut stream, writer) = start(ws);
    let (eof_tx, mut eof_rx) = mpsc::unbounded_channel::<usize>();
    let mut writers: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    let mut open = 0usize;
    for (i, &port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let err_ch = data_ch + 1;
        out.send(data_ch, &port.to_le_bytes()).await;
        out.send(err_ch, &port.to_le_bytes()).await;
        match connect_in_netns(&req, port).await {
            Ok(tcp) => {
                let (r, w) = tcp.into_split();
                writers.push(Some(w));
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
                // The remote side finished: finish ours too.
                if let Some(mut w) = writers[i].take() {
                    let _ = w.shutdown().await;
                }
            }
            msg = next_message(&mut stream) => match msg {
                None => {
                    client_open = false;
                    break;
                }
                Some((ch, data)) if ch % 2 == 0 => {
                    let i = usize::from(ch / 2);
                    if let Some(Some(w)) = writers.get_mut(i) {
                        if let Err(e) = w.write_all(&data).await {
                            debug!(port = ports[i], "port-forward write: {e}");
                            writers[i] = None;
                        }
                    }
                }
                Some((ch, _)) => debug!(channel = ch, "port-forward: message ignored"),
            }
        }
    }
    drop(writers);
    finish(out, writer, &mut stream, client_open).await;
}

async fn connect_in_netns(req: &PortForwardRequest, port: u16) -> io::Result<TcpStream> {
    if req.net_ns_path.as_os_str().is_empty() {
        return Err(io::Error::other("the session has no network namespace"));
    }
    let tcp = sys::namespace::connect_loopback_in_netns(&req.net_ns_path, port)
        .await
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

/// What the SPDY port-forward loop hears from its helper tasks.
enum SpdyEvent {
    /// The connect for this data stream finished.
    Connected(u32, io::Result<TcpStream>),
    /// The forwarded connection of this data stream reached EOF.
    Eof(u32),
}

/// Where a SPDY data stream's client data goes.
enum DataStream {
    /// Connecting: data (and the client's FIN) kept until connected.
    Connecting {
        pending: Vec<Vec<u8>>,
        fin: bool,
    },
    Open(tokio::net::tcp::OwnedWriteHalf),
    Done,
}

/// Port-forward for client-go's port-forwarder (SPDY/3.1 tunnelled
/// through the websocket, `SPDY/3.1+portforward.k8s.io`): per forwarded
/// connection the client opens an error stream and a data stream carrying
/// `port` and `requestid` headers; the data stream is connected to
/// `127.0.0.1:<port>` in the session's network namespace, errors are
/// written on the error stream. Ends when the client closes the tunnel.
pub(super) async fn spdy_port_forward(req: PortForwardRequest, ws: Ws) {
    use super::spdy::{self, Frame};
    use std::collections::HashMap;

    let (out, mut stream, writer) = start(ws);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<SpdyEvent>();
    let mut decoder = spdy::Decoder::default();
    let mut encoder = spdy::Encoder::default();
    let mut streams: HashMap<u32, DataStream> = HashMap::new();
    // requestid → error stream, data stream → its error stream.
    let mut error_of_request: HashMap<String, u32> = HashMap::new();
    let mut error_of_data: HashMap<u32, u32> = HashMap::new();
    let mut client_open = true;
    'session: loop {
        tokio::select! {
            Some(event) = ev_rx.recv() => match event {
                SpdyEvent::Connected(id, Ok(tcp)) => {
                    let (pending, fin) = match streams.remove(&id) {
                        Some(DataStream::Connecting { pending, fin }) => (pending, fin),
                        // Reset by the client meanwhile: drop the connection.
                        _ => {
                            streams.insert(id, DataStream::Done);
                            continue;
                        }
                    };
                    let (r, mut w) = tcp.into_split();
                    for chunk in pending {
                        let _ = w.write_all(&chunk).await;
                    }
                    if fin {
                        let _ = w.shutdown().await;
                    }
                    streams.insert(id, DataStream::Open(w));
                    let out = out.clone();
                    let ev = ev_tx.clone();
                    tokio::task::spawn_local(async move {
                        spdy_tcp_reader(r, id, &out).await;
                        let _ = ev.send(SpdyEvent::Eof(id));
                    });
                }
                SpdyEvent::Connected(id, Err(e)) => {
                    warn!(netns = %req.net_ns_path.display(), "port-forward: {e}");
                    streams.insert(id, DataStream::Done);
                    if let Some(&err_id) = error_of_data.get(&id) {
                        out.raw(spdy::data(err_id, false, e.to_string().as_bytes())).await;
                        out.raw(spdy::data(err_id, true, &[])).await;
                    }
                    out.raw(spdy::data(id, true, &[])).await;
                }
                SpdyEvent::Eof(id) => {
                    out.raw(spdy::data(id, true, &[])).await;
                    if let Some(err_id) = error_of_data.remove(&id) {
                        out.raw(spdy::data(err_id, true, &[])).await;
                    }
                }
            },
            msg = stream.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => { client_open = false; break; }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        debug!("port-forward tunnel read: {e}");
                        client_open = false;
                        break;
                    }
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
                            out.raw(encoder.syn_reply(stream_id)).await;
                            let request = header("requestid").unwrap_or("").to_string();
                            match header("streamtype") {
                                Some("error") => {
                                    error_of_request.insert(request, stream_id);
                                }
                                Some("data") => {
                                    if let Some(&err_id) = error_of_request.get(&request) {
                                        error_of_data.insert(stream_id, err_id);
                                    }
                                    match header("port").and_then(|p| p.parse::<u16>().ok()).filter(|&p| p > 0) {
                                        Some(port) => {
                                            streams.insert(stream_id, DataStream::Connecting { pending: Vec::new(), fin: false });
                                            let req = req.clone();
                                            let ev = ev_tx.clone();
                                            tokio::task::spawn_local(async move {
                                                let res = connect_in_netns(&req, port).await.map_err(|e| {
                                                    io::Error::new(e.kind(), format!("error forwarding port {port}: {e}"))
                                                });
                                                let _ = ev.send(SpdyEvent::Connected(stream_id, res));
                                            });
                                        }
                                        None => {
                                            let e = io::Error::new(io::ErrorKind::InvalidInput, format!("invalid port '{}'", header("port").unwrap_or("")));
                                            let _ = ev_tx.send(SpdyEvent::Connected(stream_id, Err(e)));
                                        }
                                    }
                                }
                                other => {
                                    debug!(?other, "port-forward: unknown stream type");
                                    out.raw(spdy::rst_stream(stream_id, spdy::RST_REFUSED_STREAM)).await;
                                }
                            }
                        }
                        Frame::Data { stream_id, flags, data } => {
                            let fin = flags & spdy::FLAG_FIN != 0;
                            match streams.get_mut(&stream_id) {
                                Some(DataStream::Connecting { pending, fin: f }) => {
                                    if !data.is_empty() {
                                        pending.push(data);
                                    }
                                    *f |= fin;
                                }
                                Some(DataStream::Open(w)) => {
                                    if !data.is_empty() && w.write_all(&data).await.is_err() {
                                        streams.insert(stream_id, DataStream::Done);
                                    } else if fin {
                                        let _ = w.shutdown().await;
                                    }
                                }
                                // Error streams and finished ones.
                                _ => {}
                            }
                        }
                        Frame::RstStream { stream_id, .. } => {
                            streams.insert(stream_id, DataStream::Done);
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
    drop(streams);
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
