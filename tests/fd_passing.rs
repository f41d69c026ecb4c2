//! fd passing (spec §6.3): `startFdSocket`, the fd socket's byte protocol,
//! and `createContainer`'s `additionalFds` / `leakFds`, through the real
//! binary with real containers.

mod common;

use std::fs;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags};

use common::*;

const EXIT_WAIT: Duration = Duration::from_secs(15);

/// A raw client of the fd socket, speaking the protocol byte by byte.
struct FdClient(OwnedFd);

impl FdClient {
    fn connect(path: &Path) -> FdClient {
        FdClient(ringmon::sys::socket::connect_seqpacket(path).unwrap())
    }

    /// Sends one packet with `fds` in one SCM_RIGHTS message per group.
    fn send(&self, payload: &[u8], groups: &[&[RawFd]]) {
        let iov = [IoSlice::new(payload)];
        let cmsgs: Vec<ControlMessage> = groups
            .iter()
            .filter(|g| !g.is_empty())
            .map(|g| ControlMessage::ScmRights(g))
            .collect();
        sendmsg::<()>(self.0.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
    }

    /// Receives one reply packet (waits at most 10 s).
    fn reply(&self) -> (u64, Vec<u8>) {
        let tv = nix::sys::time::TimeVal::new(10, 0);
        nix::sys::socket::setsockopt(&self.0, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("a reply");
        assert!(n >= 8, "reply of {n} bytes");
        let header = u64::from_le_bytes(buf[..8].try_into().unwrap());
        (header, buf[8..n].to_vec())
    }

    /// Sends `fds` as request `id` and returns their slots.
    fn store(&self, id: u32, fds: &[RawFd]) -> Vec<u64> {
        let header = (u64::from(id) << 32) | fds.len() as u64;
        self.send(&header.to_le_bytes(), &[fds]);
        let (echo, body) = self.reply();
        assert_eq!(
            echo,
            header,
            "error reply: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(body.len(), 8 * fds.len());
        body.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Expects an error reply to request `id`; returns its message.
    fn error(&self, id: u32) -> String {
        let (header, body) = self.reply();
        assert_eq!(
            header,
            (u64::from(id) << 32) | 0xffff_ffff,
            "not an error reply"
        );
        String::from_utf8(body).unwrap()
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn fd_socket(server: &Server) -> std::path::PathBuf {
    let mut path = None;
    run_local(async {
        let c = server.client().await;
        let first = c.start_fd_socket().await.unwrap();
        // Started once; later calls answer the same path.
        assert_eq!(c.start_fd_socket().await.unwrap(), first);
        path = Some(first);
    });
    let path = path.unwrap();
    assert_eq!(path, server.socket.with_file_name("conmon-fd.sock"));
    path
}

fn create(server: &Server, req: &CreateRequest) -> Result<u32, String> {
    let mut out = None;
    run_local(async {
        let c = server.client().await;
        out = Some(c.create_container(req).await.map_err(|e| e.to_string()));
    });
    out.unwrap()
}

#[test]
fn container_reads_additional_fds_in_order_and_leak_fds_live_until_exit() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let sock = fd_socket(&server);
        let dir = TempDir::new("fds");
        let id = container_id();
        // fd 3 and fd 4 of the container are the read ends of two pipes; it
        // copies both to stdout, in that order, then exits.
        let bundle = make_bundle(dir.path(), &["/bin/sh", "-c", "cat <&3; cat <&4"], false);
        let (r1, mut w1) = {
            let (r, w) = pipe();
            (r, fs::File::from(w))
        };
        let (r2, mut w2) = {
            let (r, w) = pipe();
            (r, fs::File::from(w))
        };
        // Held by the server while the container lives.
        let (leak_r, leak_w) = pipe();
        let client = FdClient::connect(&sock);
        let slots = client.store(1, &[r1.as_raw_fd(), r2.as_raw_fd(), leak_w.as_raw_fd()]);
        assert_eq!(slots.len(), 3);
        assert!(slots.iter().all(|s| *s != 0));
        drop((r1, r2, leak_w));

        let mut req = basic_request(dir.path(), &id, &bundle, false);
        req.command_args = vec!["--preserve-fds".into(), "2".into()];
        req.additional_fds = slots[..2].to_vec();
        req.leak_fds = vec![slots[2]];
        assert!(create(&server, &req).unwrap() > 0);
        drop(client);
        server.start_container(&id);

        // The container is blocked in `cat <&3`: the leaked write end is
        // still open in the server, so the test's read end sees no EOF.
        let mut leak_r = fs::File::from(leak_r);
        nix::fcntl::fcntl(
            &leak_r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut byte = [0u8; 1];
        let early = leak_r.read(&mut byte);
        assert_eq!(
            early.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "leak fd closed while the container runs"
        );

        w1.write_all(b"through fd 3\n").unwrap();
        drop(w1);
        w2.write_all(b"through fd 4\n").unwrap();
        drop(w2);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
        let (out, err) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert_eq!(out, b"through fd 3\nthrough fd 4\n");
        assert_eq!(err, b"");
        // Forgotten with the container: the leaked fd is closed.
        assert!(
            wait_until(Duration::from_secs(5), || matches!(
                leak_r.read(&mut byte),
                Ok(0)
            )),
            "leak fd still open after the container exited"
        );
        server.runtime_cmd(&["delete", "-f", &id]);
        assert!(server.shutdown());
        assert!(!sock.exists(), "conmon-fd.sock left after shutdown");
    });
}

#[test]
fn unknown_reused_and_released_slots_are_refused_by_name() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let sock = fd_socket(&server);
    let dir = TempDir::new("slots");
    let bundle = make_bundle(dir.path(), &["/bin/true"], false);
    let devnull = fs::File::open("/dev/null").unwrap();
    let refused = |slots: Vec<u64>, leak: bool| -> String {
        let mut req = basic_request(dir.path(), &container_id(), &bundle, false);
        if leak {
            req.leak_fds = slots;
        } else {
            req.additional_fds = slots;
        }
        create(&server, &req).expect_err("create with a bad slot succeeded")
    };

    let e = refused(vec![9999], false);
    assert!(e.contains("no file descriptor in slot 9999"), "{e}");
    let e = refused(vec![0], true);
    assert!(e.contains("no file descriptor in slot 0"), "{e}");

    // A slot is spent by the first request naming it, even a failed one.
    let client = FdClient::connect(&sock);
    let slots = client.store(1, &[devnull.as_raw_fd(), devnull.as_raw_fd()]);
    let e = refused(vec![slots[0], 9999], false);
    assert!(e.contains("no file descriptor in slot 9999"), "{e}");
    let e = refused(vec![slots[0]], false);
    assert!(
        e.contains(&format!("no file descriptor in slot {}", slots[0])),
        "{e}"
    );
    let e = refused(vec![slots[1], slots[1]], true);
    assert!(
        e.contains("leakFds[1]") && e.contains("slot named twice"),
        "{e}"
    );

    // An empty request (header 0) closes the connection's unclaimed fds.
    let slots = client.store(2, &[devnull.as_raw_fd()]);
    client.send(&0u64.to_le_bytes(), &[]);
    let later = client.store(3, &[devnull.as_raw_fd(); 100]);
    assert_ne!(later, slots);
    let e = refused(slots.clone(), false);
    assert!(
        e.contains(&format!("no file descriptor in slot {}", slots[0])),
        "{e}"
    );

    // Closing the connection closes its unclaimed fds too, once the server
    // has seen the close. Each probe names one more of them before a slot
    // that never existed: it fails either way and spends at most that one
    // fd, and it names that fd as missing once the close was handled.
    drop(client);
    let mut probes = later.iter();
    assert!(wait_until(Duration::from_secs(5), || {
        let slot = *probes
            .next()
            .expect("the closed connection's fds are still held after 100 probes");
        let e = refused(vec![slot, 9999], false);
        // (Slot 9 would match "slot 9999" too.)
        e.contains(&format!("no file descriptor in slot {slot}")) && !e.contains("slot 9999")
    }));
}

#[test]
fn malformed_fd_socket_requests_get_error_replies() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let sock = fd_socket(&server);
    let devnull = fs::File::open("/dev/null").unwrap();
    let fd = devnull.as_raw_fd();
    let client = FdClient::connect(&sock);

    // The count in the header differs from the fds sent.
    client.send(&((7u64 << 32) | 2).to_le_bytes(), &[&[fd]]);
    assert_eq!(client.error(7), "received 1 fds, but expected 2 fds");

    // A packet that is not an 8-byte header, shorter or longer.
    client.send(&[1, 2, 3], &[]);
    let e = client.error(0);
    assert!(e.contains("expected an 8-byte header, got 3 bytes"), "{e}");
    let mut long = ((8u64 << 32) | 1).to_le_bytes().to_vec();
    long.extend_from_slice(&[0; 100]);
    client.send(&long, &[&[fd]]);
    let e = client.error(8);
    assert!(e.contains("got 108 bytes"), "{e}");

    // More fds than one request may carry (the kernel refuses to send more
    // than 253 in one message, so only the header can claim more).
    client.send(&((9u64 << 32) | 254).to_le_bytes(), &[&[fd]]);
    assert!(client.error(9).contains("too many fds in one request"));
    // The most there can be, sent in two SCM_RIGHTS messages (the kernel
    // joins them), are all stored.
    let many: Vec<OwnedFd> = (0..253)
        .map(|_| devnull.try_clone().unwrap().into())
        .collect();
    let raw: Vec<RawFd> = many.iter().map(|f| f.as_raw_fd()).collect();
    let header = (10u64 << 32) | 253;
    client.send(&header.to_le_bytes(), &[&raw[..130], &raw[130..]]);
    let (echo, body) = client.reply();
    assert_eq!(echo, header);
    assert_eq!(body.len(), 8 * 253);

    // The connection still serves good requests, and the server still
    // answers RPCs.
    assert_eq!(client.store(11, &[fd]).len(), 1);
    run_local(async {
        server.client().await.version(false).await.unwrap();
    });
}

/// An exec session's `additionalFds` become fd 3, 4, ... of its process
/// (`--preserve-fds`).
#[test]
fn exec_session_gets_additional_fds() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("fd-session");
        let id = start_sleeping_container(&server, dir.path());
        let client = FdClient::connect(&fd_socket(&server));
        let (first_r, first_w) = pipe();
        let (second_r, second_w) = pipe();
        let slots = client.store(1, &[first_w.as_raw_fd(), second_w.as_raw_fd()]);
        drop((first_w, second_w));
        let req = ringmon::client::CreateExecSessionRequest {
            id: id.clone(),
            session_id: "fds".into(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo first >&3; echo second >&4".into(),
            ],
            additional_fds: slots.clone(),
            cgroup_manager: 1,
            ..Default::default()
        };
        run_local(async {
            let c = server.client().await;
            c.create_exec_session(&req).await.unwrap();
            let status = c.exec_session_status(&id, "fds", true).await.unwrap();
            assert_eq!(status.exit_code, 0);
            // The slots were spent by the session.
            let err = c.create_exec_session(&req).await.unwrap_err().to_string();
            assert!(err.contains(&format!("{}", slots[0])), "{err}");
        });
        for (r, want) in [(first_r, "first\n"), (second_r, "second\n")] {
            let mut got = String::new();
            fs::File::from(r).read_to_string(&mut got).unwrap();
            assert_eq!(got, want);
        }
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}
