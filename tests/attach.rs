//! Socket attach (`attachContainer`) through the real binary and runtimes,
//! with a raw SOCK_SEQPACKET client speaking the packet protocol directly:
//! output packets `[type, payload...]` (2 stdout, 3 stderr, a lone 0x00 =
//! done), input packets forwarded byte-exact to the container's stdin.
//!
//! Every container is started only after its attach client connected, so no
//! output is missed (the server does not replay earlier output).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::attach_client::*;
use common::*;

/// A server whose control socket is known to accept connections.
fn start_server(rt: &Path) -> Server {
    let server = Server::start(rt);
    server.wait_ready();
    server
}

// ---------------------------------------------------------------------------
// RPC helpers (each opens its own connection)
// ---------------------------------------------------------------------------

fn create(server: &Server, req: &CreateRequest) {
    run_local(async {
        let pid = server
            .client()
            .await
            .create_container(req)
            .await
            .unwrap_or_else(|e| panic!("createContainer {}: {e}", req.id));
        assert!(pid > 0);
    });
}

fn try_attach(
    server: &Server,
    id: &str,
    path: &Path,
    stop_after_stdin_eof: bool,
) -> Result<(), String> {
    let mut res = Ok(());
    run_local(async {
        res = server
            .client()
            .await
            .attach_container(id, path, "", stop_after_stdin_eof)
            .await
            .map_err(|e| e.to_string());
    });
    res
}

fn attach(server: &Server, id: &str, path: &Path, stop_after_stdin_eof: bool) {
    if let Err(e) = try_attach(server, id, path, stop_after_stdin_eof) {
        panic!("attachContainer {id} at {}: {e}", path.display());
    }
}

fn window_size(server: &Server, id: &str, width: u16, height: u16) -> Result<(), String> {
    let mut res = Ok(());
    run_local(async {
        res = server
            .client()
            .await
            .set_window_size(id, width, height)
            .await
            .map_err(|e| e.to_string());
    });
    res
}

fn exit_code(dir: &Path) -> String {
    String::from_utf8(wait_for_file(&dir.join("exit"), WAIT)).unwrap()
}

fn runtime_status(server: &Server, id: &str) -> String {
    let out = server.runtime_cmd(&["state", id]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("\"status\"")
        .nth(1)
        .and_then(|r| r.split('"').nth(1))
        .unwrap_or("")
        .to_string()
}

/// A request for `args` with stdin as given.
fn request(dir: &Path, id: &str, args: &[&str], terminal: bool, stdin: bool) -> CreateRequest {
    let bundle = make_bundle(dir, args, terminal);
    let mut req = basic_request(dir, id, &bundle, terminal);
    req.stdin = stdin;
    req
}

/// Deterministic pseudo-random bytes (xorshift), with plenty of NULs.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if i % 7 == 0 {
                0
            } else {
                seed as u8
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The four terminal × stdin combinations (spec 5.5): which packet types
/// arrive, that input reaches the container only with stdin, and that done
/// comes after all output.
#[test]
fn terminal_and_stdin_combinations() {
    for_each_runtime(|rt| {
        let server = start_server(rt);
        for (terminal, stdin) in [(false, true), (false, false), (true, true), (true, false)] {
            eprintln!("terminal={terminal} stdin={stdin}");
            let dir = TempDir::new("att-combo");
            let id = container_id();
            let script = "echo start; read -r -t 5 line; echo \"got:$line\"; echo to-stderr >&2";
            let req = request(dir.path(), &id, &["/bin/sh", "-c", script], terminal, stdin);
            create(&server, &req);
            let ws = window_size(&server, &id, 80, 25);
            if terminal {
                ws.unwrap();
            } else {
                let e = ws.unwrap_err();
                assert!(e.contains("container has no terminal"), "{e}");
            }

            let path = dir.path().join("attach");
            attach(&server, &id, &path, false);
            let mut conn = AttachConn::connect(&path, "client");
            server.start_container(&id);

            conn.read_until_out_contains("start");
            let sent = conn.send(b"ping\n");
            if stdin {
                assert_eq!(sent, Ok(5), "send with stdin=true");
            }
            conn.read_until_done();
            conn.expect_nothing_after_done();
            assert_eq!(exit_code(dir.path()), "0");

            let (want_out, want_err) = match (terminal, stdin) {
                (true, true) => ("start\r\nping\r\ngot:ping\r\nto-stderr\r\n", ""),
                (true, false) => ("start\r\ngot:\r\nto-stderr\r\n", ""),
                (false, true) => ("start\ngot:ping\n", "to-stderr\n"),
                (false, false) => ("start\ngot:\n", "to-stderr\n"),
            };
            assert_eq!(
                conn.got.out_str(),
                want_out,
                "stdout packets, terminal={terminal} stdin={stdin}"
            );
            assert_eq!(
                conn.got.err_str(),
                want_err,
                "stderr packets, terminal={terminal} stdin={stdin}"
            );
            server.runtime_cmd(&["delete", "-f", &id]);
        }
    });
}

/// Input packets reach the container byte-exact (NULs, a packet larger than
/// the output packet size), output comes back in packets of at most 8192
/// bytes, and EOF with stopAfterStdinEof closes the container's stdin.
#[test]
fn stdin_is_byte_exact_and_eof_closes_it() {
    for_each_runtime(|rt| {
        let server = start_server(rt);
        let dir = TempDir::new("att-bytes");
        let id = container_id();
        create(
            &server,
            &request(dir.path(), &id, &["/bin/cat"], false, true),
        );
        let path = dir.path().join("attach");
        attach(&server, &id, &path, true);
        let mut conn = AttachConn::connect(&path, "client");
        server.start_container(&id);

        let packets: Vec<Vec<u8>> = vec![
            noise(40 * 1024, 0x9E37_79B9_7F4A_7C15),
            vec![0],
            b"\0\0abc\0".to_vec(),
            noise(8191, 42),
            noise(32 * 1024, 7),
            b"tail\n".to_vec(),
        ];
        let mut want = Vec::new();
        for p in &packets {
            conn.send_all(p);
            want.extend_from_slice(p);
        }
        let total = want.len();
        conn.read_until(WAIT, &format!("{total} bytes of stdout"), |g| {
            g.out.len() >= total
        });
        assert!(conn.got.out == want, "stdout differs from the input");
        assert!(conn.got.err.is_empty(), "stderr: {:?}", conn.got.err_str());
        assert!(!conn.got.done);

        conn.shutdown_write();
        conn.read_until_done();
        conn.expect_nothing_after_done();
        assert_eq!(exit_code(dir.path()), "0");
        assert_eq!(conn.got.out.len(), total, "extra stdout after EOF");

        let (log_out, log_err) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert!(log_out == want, "CRI log stdout differs from the input");
        assert!(log_err.is_empty());
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// Without stopAfterStdinEof a client's EOF changes nothing: the container
/// keeps its stdin, other clients (and the half-closed one) keep working; a
/// second client sees only output produced after it connected.
#[test]
fn eof_without_stop_keeps_stdin_open() {
    for_each_runtime(|rt| {
        let server = start_server(rt);
        let dir = TempDir::new("att-keep");
        let id = container_id();
        create(
            &server,
            &request(dir.path(), &id, &["/bin/cat"], false, true),
        );
        let path = dir.path().join("attach");
        attach(&server, &id, &path, false);
        let mut c1 = AttachConn::connect(&path, "c1");
        server.start_container(&id);

        c1.send_all(b"one\n");
        c1.read_until_out_contains("one\n");
        c1.shutdown_write();

        // Attaching again to an existing path reuses the listener.
        attach(&server, &id, &path, false);
        let mut c2 = AttachConn::connect(&path, "c2");
        c2.send_all(b"two\n");
        c2.read_until_out_contains("two\n");
        c1.read_until_out_contains("two\n");
        assert_eq!(c1.got.out_str(), "one\ntwo\n");
        assert_eq!(
            c2.got.out_str(),
            "two\n",
            "output from before c2 connected was replayed"
        );
        assert_eq!(runtime_status(&server, &id), "running");

        // A listener with stopAfterStdinEof: its client's EOF ends cat.
        let stop_path = dir.path().join("attach-stop");
        attach(&server, &id, &stop_path, true);
        let mut c3 = AttachConn::connect(&stop_path, "c3");
        c3.send_all(b"three\n");
        for c in [&mut c1, &mut c2, &mut c3] {
            c.read_until_out_contains("three\n");
        }
        c3.shutdown_write();
        for c in [&mut c1, &mut c2, &mut c3] {
            c.read_until_done();
            c.expect_nothing_after_done();
        }
        assert_eq!(exit_code(dir.path()), "0");
        assert_eq!(c1.got.out_str(), "one\ntwo\nthree\n");
        assert_eq!(c2.got.out_str(), "two\nthree\n");
        assert_eq!(c3.got.out_str(), "three\n");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// Several clients (two on one socket, one on a second socket) each get
/// every byte; input from several clients is merged in arrival order.
#[test]
fn concurrent_clients_each_get_all_output() {
    for_each_runtime(|rt| {
        let server = start_server(rt);
        let dir = TempDir::new("att-multi");
        let id = container_id();
        let script = "read -r a; echo \"got $a\"; read -r b; echo \"got $b\"; \
                      /bin/busybox seq 1 50000; echo end >&2";
        create(
            &server,
            &request(dir.path(), &id, &["/bin/sh", "-c", script], false, true),
        );
        let path = dir.path().join("attach");
        let path2 = dir.path().join("second").join("attach");
        attach(&server, &id, &path, false);
        attach(&server, &id, &path2, false);
        let mut a = AttachConn::connect(&path, "a");
        let mut b = AttachConn::connect(&path, "b");
        let mut c = AttachConn::connect(&path2, "c");
        server.start_container(&id);

        a.send_all(b"from-a\n");
        for conn in [&mut a, &mut b, &mut c] {
            conn.read_until_out_contains("got from-a\n");
        }
        b.send_all(b"from-b\n");
        for conn in [&mut a, &mut b, &mut c] {
            conn.read_until_done();
        }
        assert_eq!(exit_code(dir.path()), "0");

        let mut want = String::from("got from-a\ngot from-b\n");
        for i in 1..=50000 {
            want.push_str(&format!("{i}\n"));
        }
        for conn in [&a, &b, &c] {
            assert!(
                conn.got.out_str() == want,
                "{}: stdout differs: {} bytes, want {}",
                conn.name,
                conn.got.out.len(),
                want.len()
            );
            assert_eq!(conn.got.err_str(), "end\n", "{}", conn.name);
        }
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// A client that never reads is dropped; the container, its log and a
/// reading client get everything; the server says so in its log.
///
/// A reader that lags more than the queue size would be dropped as well,
/// so the container writes 1 MiB blocks and waits for the reading client's
/// go-ahead (a line on stdin) after each: the reader is never more than one
/// block behind, while the stuck client falls behind by the whole stream.
#[test]
fn stuck_client_is_dropped_without_harm() {
    const BLOCK: usize = 1 << 20;
    const BLOCKS: usize = 64;
    const TOTAL: usize = BLOCK * BLOCKS;
    for_each_runtime(|rt| {
        let dir = TempDir::new("att-stuck");
        let server_log = dir.path().join("server.log");
        let server = Server::start_logging_to(rt, &[], &server_log);
        server.wait_ready();
        let id = container_id();
        // 1000-character lines keep the CRI log small in records.
        let script = format!(
            "l=0123456789; l=$l$l$l$l$l$l$l$l$l$l; l=$l$l$l$l$l$l$l$l$l$l; i=0; \
             while [ $i -lt {BLOCKS} ]; do \
               yes \"$l\" | head -c {BLOCK}; read -r go || exit 9; i=$((i+1)); \
             done"
        );
        create(
            &server,
            &request(dir.path(), &id, &["/bin/sh", "-c", &script], false, true),
        );
        let path = dir.path().join("attach");
        attach(&server, &id, &path, false);
        let stuck = AttachConn::connect(&path, "stuck");
        let mut reader = AttachConn::connect(&path, "reader");
        server.start_container(&id);

        let reader = std::thread::spawn(move || {
            for block in 1..=BLOCKS {
                let what = format!("block {block} of {BLOCKS}");
                reader.read_until(WAIT, &what, |g| g.out.len() >= block * BLOCK);
                reader.send_all(b"go\n");
            }
            reader.read_until_done();
            reader.got
        });
        let got = match reader.join() {
            Ok(got) => got,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        assert_eq!(exit_code(dir.path()), "0");

        let line = format!("{}\n", "0123456789".repeat(100));
        let block: Vec<u8> = line.bytes().cycle().take(BLOCK).collect();
        let want = block.repeat(BLOCKS);
        assert_eq!(got.out.len(), TOTAL, "reading client: stdout bytes");
        assert!(got.out == want, "reading client: stdout content differs");
        assert!(got.err.is_empty());

        let (log_out, log_err) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert_eq!(
            log_out.len(),
            TOTAL + 1,
            "CRI log stdout bytes (+ the closing line end)"
        );
        assert!(log_out == as_logged(&want), "CRI log content differs");
        assert!(log_err.is_empty());

        // The stuck client was disconnected: reading now yields at most what
        // was buffered, then EOF, and never the whole stream or done.
        let mut stuck = stuck;
        let deadline = Instant::now() + WAIT;
        while !stuck.got.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match stuck.recv_packet(left) {
                Some(p) => stuck.take(p),
                None => panic!(
                    "stuck client still connected after the container exited ({} bytes read)",
                    stuck.got.out.len()
                ),
            }
        }
        eprintln!(
            "stuck client: {} bytes before EOF; reader: {} packets",
            stuck.got.out.len(),
            got.packets
        );
        assert!(!stuck.got.done, "the dropped client got the done packet");
        assert!(stuck.got.out.len() < TOTAL);
        let stuck_out = &stuck.got.out;
        assert!(
            want.starts_with(stuck_out),
            "the dropped client's data is not a prefix of the output"
        );

        assert!(
            wait_until(WAIT, || fs::read_to_string(&server_log)
                .is_ok_and(|s| s.contains("attach client dropped"))),
            "server log {} does not mention 'attach client dropped'",
            server_log.display()
        );
        run_local(async {
            server.client().await.version(false).await.unwrap();
        });
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// The listener: long path with a parent directory created on demand, mode
/// 0700, reuse of an existing path; unknown containers are refused.
#[test]
fn listener_path_mode_and_unknown_container() {
    for_each_runtime(|rt| {
        let server = start_server(rt);
        let dir = TempDir::new("att-sock");
        let id = container_id();
        create(
            &server,
            &request(dir.path(), &id, &["/bin/cat"], false, true),
        );

        let path: PathBuf = dir
            .path()
            .join("a".repeat(60))
            .join("b".repeat(60))
            .join("attach");
        assert!(path.as_os_str().len() > 108);
        assert!(!path.parent().unwrap().exists());
        run_local(async {
            server
                .client()
                .await
                .attach_container(&id, &path, "", false)
                .await
                .expect("attach with a long path");
            // conmon-rs ignores an execSessionId; ringmon serves sessions, so
            // an unknown one is an error naming it.
            let err = server
                .client()
                .await
                .attach_container(&id, &path, "exec-session-1", false)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "exec session 'exec-session-1' not found in container '{id}'"
                )),
                "{err}"
            );
        });
        let meta = fs::metadata(&path).expect("attach socket exists");
        assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o700,
            "attach socket mode {:o}",
            meta.permissions().mode() & 0o7777
        );

        let mut conn = AttachConn::connect(&path, "client");
        // Attaching again to the same path keeps the existing listener.
        attach(&server, &id, &path, false);
        let mut conn2 = AttachConn::connect(&path, "client2");
        server.start_container(&id);
        conn.send_all(b"hello\n");
        conn.read_until_out_contains("hello\n");
        conn2.read_until_out_contains("hello\n");

        let nowhere = dir.path().join("nowhere").join("attach");
        let e = try_attach(&server, "no-such-container", &nowhere, true).unwrap_err();
        assert!(e.contains("child not available"), "{e}");
        assert!(!nowhere.exists(), "socket created for an unknown container");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// Detach (close) and reattach to a running container; after the container
/// exited, attaching is refused.
#[test]
fn reattach_and_attach_after_exit() {
    for_each_runtime(|rt| {
        let server = start_server(rt);
        let dir = TempDir::new("att-re");
        let id = container_id();
        create(
            &server,
            &request(dir.path(), &id, &["/bin/cat"], false, true),
        );
        let path = dir.path().join("attach");
        attach(&server, &id, &path, false);
        let mut c1 = AttachConn::connect(&path, "c1");
        server.start_container(&id);
        c1.send_all(b"one\n");
        c1.read_until_out_contains("one\n");
        drop(c1);

        // Like the Go client after a session: remove the socket file, then
        // attach again at the same path (a fresh listener, now with
        // stopAfterStdinEof).
        fs::remove_file(&path).unwrap();
        attach(&server, &id, &path, true);
        let mut c2 = AttachConn::connect(&path, "c2");
        assert_eq!(runtime_status(&server, &id), "running");
        c2.send_all(b"two\n");
        c2.read_until_out_contains("two\n");
        assert_eq!(
            c2.got.out_str(),
            "two\n",
            "output from before c2 connected was replayed"
        );
        assert_eq!(runtime_status(&server, &id), "running");

        c2.shutdown_write();
        c2.read_until_done();
        assert_eq!(exit_code(dir.path()), "0");

        // The child leaves the registry right after its exit files.
        let mut last = String::new();
        let mut n = 0;
        let refused = wait_until(WAIT, || {
            n += 1;
            let p = dir.path().join(format!("late-{n}"));
            match try_attach(&server, &id, &p, false) {
                Ok(()) => false,
                Err(e) => {
                    last = e;
                    true
                }
            }
        });
        assert!(refused, "attach after exit still accepted");
        assert!(last.contains("child not available"), "{last}");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// setWindowSizeContainer reaches the container's pty (`stty size` prints
/// "<rows> <columns>" = "<height> <width>").
#[test]
fn window_size_reaches_the_terminal() {
    for_each_runtime(|rt| {
        let server = start_server(rt);
        let dir = TempDir::new("att-ws");
        let id = container_id();
        create(&server, &request(dir.path(), &id, &["/bin/sh"], true, true));
        let path = dir.path().join("attach");
        attach(&server, &id, &path, true);
        let mut conn = AttachConn::connect(&path, "client");
        server.start_container(&id);
        conn.read_until_out_contains("# ");

        // Widths above the command line's length: a narrower terminal makes
        // the line editor wrap the echoed command.

        for (width, height) in [(97u16, 11u16), (123, 45)] {
            window_size(&server, &id, width, height).unwrap();
            conn.got.out.clear();
            conn.send_all(b"/bin/busybox stty size\n");
            conn.read_until_out_contains(&format!("\r\n{height} {width}\r\n"));
        }
        assert!(conn.got.err.is_empty());

        conn.send_all(b"exit\n");
        conn.read_until_done();
        assert_eq!(exit_code(dir.path()), "0");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}
