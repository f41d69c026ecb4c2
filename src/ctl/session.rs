//! `ringmon ctl exec` and `ringmon ctl attach`: connect this terminal (or
//! these pipes) to a container's or an exec session's attach socket.
//!
//! The server listens at a socket path ctl chooses (a fresh private
//! directory), ctl connects to it: output packets (type 2 stdout, 3 stderr,
//! a lone 0 when the process is done) go to stdout and stderr, stdin goes
//! in as packets. When stdin is a terminal it is put into raw mode, ctrl-p
//! ctrl-q detaches, and the window size follows it (SIGWINCH -> the
//! server's resize). The byte pumps are two plain threads (blocking I/O);
//! the control thread only waits for their end and forwards resizes.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::{CtlError, Server};
use crate::client::CreateExecSessionRequest;
use crate::engine::attach::{MAX_PACKET_PAYLOAD, PACKET_DONE, PACKET_STDERR};
use crate::sys;

/// Largest packet the server sends: the type byte and its payload.
const MAX_PACKET: usize = 1 + MAX_PACKET_PAYLOAD;
/// Stdin is read and sent in chunks of at most this.
const STDIN_CHUNK: usize = 4096;
/// Ctrl-p then ctrl-q: detach (as podman and docker).
const DETACH_KEYS: [u8; 2] = [0x10, 0x11];

pub struct ExecOptions {
    pub interactive: bool,
    pub tty: bool,
    pub systemd_cgroup: bool,
    pub command: Vec<String>,
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The process is done (done packet) or the server closed the socket.
    Done,
    /// The person typed the detach keys.
    Detached,
}

/// A private directory for the attach socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> Result<SocketDir, CtlError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!(
            "ringmon-ctl-{}-{}",
            std::process::id(),
            crate::core::monitor::random_uuid()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| CtlError::File {
                what: "create attach socket directory",
                path: path.display().to_string(),
                source,
            })?;
        Ok(SocketDir(path))
    }

    fn socket(&self) -> PathBuf {
        self.0.join("attach")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn connect(socket: &Path) -> Result<OwnedFd, CtlError> {
    sys::socket::connect_seqpacket(socket).map_err(|source| CtlError::File {
        what: "connect to attach socket",
        path: socket.display().to_string(),
        source,
    })
}

/// Runs a command in the container as an exec session: created suspended,
/// attached, then started, so no output is missed; returns its exit code.
pub async fn exec(server: &Server, id: &str, opts: ExecOptions) -> Result<i32, CtlError> {
    let container = server.find(id).await?;
    if !container.running {
        return Err(CtlError::NotRunning(container.id));
    }
    let request = CreateExecSessionRequest {
        id: container.id.clone(),
        command: opts.command.clone(),
        terminal: opts.tty,
        stdin: opts.interactive,
        suspended: true,
        cgroup_manager: if opts.systemd_cgroup { 0 } else { 1 },
        ..Default::default()
    };
    // Everything local that can fail comes before the session exists: a
    // suspended session left behind holds one of the container's slots.
    let dir = SocketDir::create()?;
    let socket = dir.socket();
    let (session_id, _) = server
        .call(
            "createExecSession",
            server.client.create_exec_session(&request),
        )
        .await?;
    // A piped stdin's end closes the process's stdin (`echo x | exec -i`).
    server
        .call(
            "attachContainer",
            server
                .client
                .attach_container(&container.id, &socket, &session_id, true),
        )
        .await?;
    let conn = connect(&socket)?;
    let resize = Resize {
        id: container.id.clone(),
        session_id: session_id.clone(),
    };
    let raw_terminal = opts.tty && std::io::stdin().is_terminal();
    server
        .call(
            "startExecSession",
            server.client.start_exec_session(&container.id, &session_id),
        )
        .await?;
    // The session's terminal exists once it runs.
    if opts.tty {
        resize.send(server).await;
    }
    let end = pump(server, conn, opts.interactive, raw_terminal, Some(&resize)).await?;
    if end == End::Detached {
        eprintln!(
            "\r\ndetached from exec session {session_id} of {}",
            container.id
        );
        return Ok(0);
    }
    let status = server
        .call(
            "execSessionStatus",
            server
                .client
                .exec_session_status(&container.id, &session_id, true),
        )
        .await?;
    Ok(status.exit_code)
}

/// Attaches to the container's stdio until it exits or the person detaches.
pub async fn attach(server: &Server, id: &str) -> Result<i32, CtlError> {
    let container = server.find(id).await?;
    if !container.running {
        return Err(CtlError::NotRunning(container.id));
    }
    let dir = SocketDir::create()?;
    let socket = dir.socket();
    server
        .call(
            "attachContainer",
            server
                .client
                .attach_container(&container.id, &socket, "", false),
        )
        .await?;
    let conn = connect(&socket)?;
    let stdin_tty = std::io::stdin().is_terminal();
    let resize = Resize {
        id: container.id.clone(),
        session_id: String::new(),
    };
    // A container without a terminal refuses resizes; that is no error here.
    if stdin_tty {
        resize.send(server).await;
    }
    let end = pump(server, conn, true, stdin_tty, stdin_tty.then_some(&resize)).await?;
    if end == End::Detached {
        eprintln!("\r\ndetached from {}", container.id);
    }
    Ok(0)
}

/// The terminal whose size is forwarded, and where to.
struct Resize {
    id: String,
    session_id: String,
}

impl Resize {
    /// Sends this terminal's size (stdout's, else stdin's) to the server;
    /// failures are ignored (no terminal there, or the process is gone).
    async fn send(&self, server: &Server) {
        let size = sys::tty::window_size(&std::io::stdout())
            .or_else(|_| sys::tty::window_size(&std::io::stdin()));
        if let Ok((width, height)) = size {
            let _ = server
                .call(
                    "setWindowSizeContainer",
                    server
                        .client
                        .resize_exec_session(&self.id, &self.session_id, width, height),
                )
                .await;
        }
    }
}

/// Moves bytes until the output ends or the person detaches.
async fn pump(
    server: &Server,
    conn: OwnedFd,
    forward_stdin: bool,
    raw_terminal: bool,
    resize: Option<&Resize>,
) -> Result<End, CtlError> {
    let io_err = |what: &str, e: std::io::Error| CtlError::Io(format!("{what}: {e}"));
    let _raw = if raw_terminal {
        Some(
            sys::tty::RawMode::enter(std::io::stdin())
                .map_err(|e| io_err("raw terminal mode", e))?,
        )
    } else {
        None
    };
    // Two events at most: the output's end and a detach.
    let (tx, mut rx) = mpsc::channel::<End>(2);
    let input = conn
        .try_clone()
        .map_err(|e| io_err("duplicate attach socket", e))?;
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            copy_output(&conn);
            let _ = tx.blocking_send(End::Done);
        });
    }
    if forward_stdin {
        std::thread::spawn(move || {
            if copy_input(&input, raw_terminal) {
                let _ = tx.blocking_send(End::Detached);
            }
        });
    }
    let mut winch = match resize {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .map_err(|e| io_err("watch SIGWINCH", e))?,
        ),
        None => None,
    };
    loop {
        tokio::select! {
            end = rx.recv() => return Ok(end.unwrap_or(End::Done)),
            Some(()) = async {
                match winch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(r) = resize {
                    r.send(server).await;
                }
            }
        }
    }
}

/// Writes the output packets to stdout and stderr until the done packet or
/// the end of the connection.
fn copy_output(conn: &OwnedFd) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let n = match sys::socket::recv_packet_blocking(conn.as_fd(), &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let written = match buf[0] {
            PACKET_DONE => return,
            PACKET_STDERR => write_flushed(&mut std::io::stderr().lock(), &buf[1..n]),
            _ => write_flushed(&mut std::io::stdout().lock(), &buf[1..n]),
        };
        if written.is_err() {
            return;
        }
    }
}

fn write_flushed(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    out.write_all(data)?;
    out.flush()
}

/// Sends stdin to the server until its end (then shuts down our writing,
/// so the server sees the end) or, on a raw terminal, the detach keys.
/// Returns whether the person detached.
fn copy_input(conn: &OwnedFd, detect_detach: bool) -> bool {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut keys = DetachKeys::default();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (data, detached) = if detect_detach {
            keys.filter(&buf[..n])
        } else {
            (buf[..n].to_vec(), false)
        };
        if !data.is_empty() && sys::socket::send_packet_blocking(conn.as_fd(), &data).is_err() {
            return false;
        }
        if detached {
            return true;
        }
    }
    let _ = sys::socket::shut_down_writing(conn);
    false
}

/// Finds ctrl-p ctrl-q in typed input, holding back a ctrl-p until the next
/// key shows whether it starts the sequence.
#[derive(Default)]
struct DetachKeys {
    held: bool,
}

impl DetachKeys {
    /// The bytes to send, and whether the detach keys were typed (bytes
    /// after them are dropped).
    fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len() + 1);
        for &b in input {
            if self.held {
                self.held = false;
                if b == DETACH_KEYS[1] {
                    return (out, true);
                }
                out.push(DETACH_KEYS[0]);
            }
            if b == DETACH_KEYS[0] {
                self.held = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_across_reads() {
        let mut k = DetachKeys::default();
        assert_eq!(k.filter(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(k.filter(b"\x11zz"), (Vec::new(), true));
        let mut k = DetachKeys::default();
        assert_eq!(k.filter(b"\x10x\x10\x10"), (b"\x10x\x10".to_vec(), false));
        assert_eq!(k.filter(b"\x11"), (Vec::new(), true));
    }
}
