//! Exec sessions (ringmon's `createExecSession` / `startExecSession` /
//! `execSessionStatus` extension) through the real binary, socket and
//! runtimes, played the way podman drives them: `exec -it` (create
//! suspended with a terminal, attach, start, type, resize, detach,
//! reattach, exit code) and `exec -d` (detached, output in the session's
//! log, exit code and cleanup command later), plus the errors a client can
//! run into.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::attach_client::*;
use common::*;
use ringmon::client::{CreateExecSessionRequest, ExecSessionStatus};
use ringmon::conmon_capnp::conmon::ExecSessionState;

/// A server with one running busybox container (`sleep 600`, pipes).
struct Running {
    server: Server,
    dir: TempDir,
    id: String,
}

impl Running {
    fn start(rt: &Path) -> Running {
        let server = Server::start(rt);
        let dir = TempDir::new("sessions");
        let id = start_sleeping_container(&server, dir.path());
        Running { server, dir, id }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A session request running `script` with `sh -c`, logging to
    /// `<name>.log` and writing its exit code to `<name>.exit`.
    fn request(&self, name: &str, script: &str) -> CreateExecSessionRequest {
        CreateExecSessionRequest {
            id: self.id.clone(),
            session_id: name.to_string(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            cgroup_manager: 1,
            exit_paths: vec![self.path(&format!("{name}.exit"))],
            log_drivers: vec![LogDriver {
                kind: 0,
                path: self.path(&format!("{name}.log")),
                max_size: 0,
            }],
            ..Default::default()
        }
    }

    fn create(&self, req: &CreateExecSessionRequest) -> Result<(String, u32), String> {
        let mut out = None;
        run_local(async {
            let c = self.server.client().await;
            out = Some(c.create_exec_session(req).await.map_err(|e| e.to_string()));
        });
        out.unwrap()
    }

    fn start_session(&self, sid: &str) -> Result<u32, String> {
        let mut out = None;
        run_local(async {
            let c = self.server.client().await;
            out = Some(
                c.start_exec_session(&self.id, sid)
                    .await
                    .map_err(|e| e.to_string()),
            );
        });
        out.unwrap()
    }

    fn status(&self, sid: &str, wait: bool) -> Result<ExecSessionStatus, String> {
        let mut out = None;
        run_local(async {
            let c = self.server.client().await;
            let call = c.exec_session_status(&self.id, sid, wait);
            out = Some(match tokio::time::timeout(WAIT, call).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "execSessionStatus {sid} did not answer in {WAIT:?}"
                )),
            });
        });
        out.unwrap()
    }

    fn attach(&self, sid: &str, socket: &Path) -> Result<(), String> {
        self.attach_with(sid, socket, false)
    }

    fn attach_with(
        &self,
        sid: &str,
        socket: &Path,
        stop_after_stdin_eof: bool,
    ) -> Result<(), String> {
        let mut out = None;
        run_local(async {
            let c = self.server.client().await;
            out = Some(
                c.attach_container(&self.id, socket, sid, stop_after_stdin_eof)
                    .await
                    .map_err(|e| e.to_string()),
            );
        });
        out.unwrap()
    }

    fn resize(&self, sid: &str, width: u16, height: u16) -> Result<(), String> {
        let mut out = None;
        run_local(async {
            let c = self.server.client().await;
            out = Some(
                c.resize_exec_session(&self.id, sid, width, height)
                    .await
                    .map_err(|e| e.to_string()),
            );
        });
        out.unwrap()
    }

    /// The session pid files left in the server's runtime dir.
    fn leftover_pid_files(&self) -> Vec<String> {
        fs::read_dir(self.server.dir.path().join("run"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("exec_session"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.runtime_cmd(&["delete", "-f", &self.id]);
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// podman `exec -it`: nothing the process writes before the client typed
/// anything is lost, input, resize, detach and reattach work, and the exit
/// code arrives through the exit file and the status call.
#[test]
fn interactive_session_like_podman_exec_it() {
    for_each_runtime(|rt| {
        let c = Running::start(rt);
        let script =
            "echo early; read a; echo got:$a; read b; stty size; read c; echo bye:$c; exit 5";
        let req = CreateExecSessionRequest {
            terminal: true,
            stdin: true,
            suspended: true,
            ..c.request("it", script)
        };
        let (sid, pid) = c.create(&req).unwrap();
        assert_eq!((sid.as_str(), pid), ("it", 0));
        let st = c.status("it", false).unwrap();
        assert_eq!((st.state, st.pid), (ExecSessionState::Created, 0));

        let socket = c.dir.path().join("it.attach");
        c.attach("it", &socket).unwrap();
        let mut first = AttachConn::connect(&socket, "first");
        // Typed before the process exists: queued, not lost.
        first.send_all(b"hello\n");
        let pid = c.start_session("it").unwrap();
        assert!(pid > 1);
        let err = c.start_session("it").unwrap_err();
        assert!(
            err.contains("exec session 'it' is already running"),
            "{err}"
        );
        let st = c.status("it", false).unwrap();
        assert_eq!((st.state, st.pid), (ExecSessionState::Running, pid));

        first.read_until_out_contains("got:hello");
        assert!(
            contains(&first.got.out, "early"),
            "output before any input was lost: {}",
            first.got.summary()
        );
        c.resize("it", 100, 30).unwrap();
        first.send_all(b"x\n");
        first.read_until_out_contains("30 100");
        assert!(first.got.err.is_empty(), "a terminal has no stderr");

        // Detach, then reattach through the same path and a second one.
        drop(first);
        c.attach("it", &socket).unwrap();
        let other = c.dir.path().join("it.attach2");
        c.attach("it", &other).unwrap();
        let mut again = AttachConn::connect(&socket, "again");
        let mut watcher = AttachConn::connect(&other, "watcher");
        // Both are attached once the output they wait for comes after this.
        std::thread::sleep(Duration::from_millis(200));
        again.send_all(b"end\n");
        again.read_until_out_contains("bye:end");
        again.read_until_done();
        watcher.read_until_out_contains("bye:end");
        watcher.read_until_done();

        let st = c.status("it", true).unwrap();
        assert_eq!(
            (st.state, st.pid, st.exit_code),
            (ExecSessionState::Exited, pid, 5)
        );
        assert_eq!(fs::read_to_string(c.path("it.exit")).unwrap(), "5");
        let (log, _) = parse_cri(&fs::read(c.path("it.log")).unwrap());
        assert!(contains(&log, "early") && contains(&log, "bye:end"));
        assert!(
            c.leftover_pid_files().is_empty(),
            "{:?}",
            c.leftover_pid_files()
        );
        assert!(
            !socket.exists() && !other.exists(),
            "attach sockets left behind"
        );
        let err = c.attach("it", &socket).unwrap_err();
        assert!(err.contains("already exited"), "{err}");
    });
}

/// podman `exec -d`: the call returns at once with the pid, output goes to
/// the session's log, the exit code and the delayed cleanup command come
/// later.
#[test]
fn detached_session_like_podman_exec_d() {
    for_each_runtime(|rt| {
        let c = Running::start(rt);
        let cleaned = c.path("cleaned");
        let req = CreateExecSessionRequest {
            cleanup_cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("date +%s%N > {cleaned}"),
            ],
            cleanup_delay_sec: 1,
            process_env: vec![("GREETING".into(), "hi there".into())],
            ..c.request("d", "echo out:$GREETING; echo err >&2; sleep 1; exit 3")
        };
        let t0 = Instant::now();
        let (sid, pid) = c.create(&req).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "exec -d waited for the process"
        );
        assert_eq!(sid, "d");
        assert!(pid > 1);
        assert_eq!(
            c.status("d", false).unwrap().state,
            ExecSessionState::Running
        );
        let st = c.status("d", true).unwrap();
        assert_eq!((st.state, st.exit_code), (ExecSessionState::Exited, 3));
        let exited_at = std::time::SystemTime::now();
        assert_eq!(fs::read_to_string(c.path("d.exit")).unwrap(), "3");
        let (out, err) = parse_cri(&fs::read(c.path("d.log")).unwrap());
        assert_eq!(out, b"out:hi there\n");
        assert_eq!(err, b"err\n");
        // The shell creates the file before `date` writes into it.
        let written = || fs::read_to_string(&cleaned).unwrap_or_default();
        assert!(
            wait_until(WAIT, || written().ends_with('\n')),
            "cleanup command did not run"
        );
        let stamp: u128 = written().trim().parse().unwrap();
        let exited_ns = exited_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        // The delay starts after the status was sent, a moment before we
        // read the clock.
        assert!(
            stamp + 100_000_000 >= exited_ns + 1_000_000_000,
            "cleanup ran before its 1 s delay"
        );
        // Sessions with no id get one; several run side by side.
        let sids: Vec<String> = (0..3)
            .map(|i| {
                let req = CreateExecSessionRequest {
                    session_id: String::new(),
                    ..c.request(&format!("n{i}"), &format!("exit {i}"))
                };
                c.create(&req).unwrap().0
            })
            .collect();
        for (i, sid) in sids.iter().enumerate() {
            assert_eq!(sid.len(), 36, "{sid}");
            assert_eq!(c.status(sid, true).unwrap().exit_code, i as i32);
        }
        assert!(c.leftover_pid_files().is_empty());
    });
}

/// podman `exec -i` without a terminal: stdin through a pipe, stdout and
/// stderr apart, and the client's EOF closing the process's stdin
/// (stopAfterStdinEof).
#[test]
fn piped_stdin_session_ends_at_client_eof() {
    for_each_runtime(|rt| {
        let c = Running::start(rt);
        let req = CreateExecSessionRequest {
            stdin: true,
            suspended: true,
            ..c.request("i", "echo started >&2; cat; echo after-eof >&2")
        };
        c.create(&req).unwrap();
        let socket = c.dir.path().join("i.attach");
        c.attach_with("i", &socket, true).unwrap();
        let mut client = AttachConn::connect(&socket, "stdin");
        c.start_session("i").unwrap();
        let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in input.chunks(7000) {
            client.send_all(chunk);
        }
        client.shutdown_write();
        client.read_until_done();
        assert!(
            client.got.out == input,
            "stdout: {} of {} bytes",
            client.got.out.len(),
            input.len()
        );
        assert_eq!(client.got.err_str(), "started\nafter-eof\n");
        assert_eq!(c.status("i", true).unwrap().exit_code, 0);
    });
}

/// A full OCI process spec instead of an argv (podman passes `--process`).
#[test]
fn session_from_a_process_spec() {
    for_each_runtime(|rt| {
        let c = Running::start(rt);
        let spec = c.path("process.json");
        fs::write(
            &spec,
            r#"{"terminal":false,"user":{"uid":0,"gid":0},"cwd":"/tmp",
                "args":["/bin/sh","-c","echo spec:$FOO:$(pwd)"],
                "env":["PATH=/bin:/usr/bin","FOO=bar"]}"#,
        )
        .unwrap();
        let req = CreateExecSessionRequest {
            command: Vec::new(),
            process_path: spec,
            ..c.request("spec", "")
        };
        c.create(&req).unwrap();
        assert_eq!(c.status("spec", true).unwrap().exit_code, 0);
        let (out, _) = parse_cri(&fs::read(c.path("spec.log")).unwrap());
        assert_eq!(out, b"spec:bar:/tmp\n");
    });
}

/// What a client can get wrong, and sessions ending with their container.
#[test]
fn session_errors_and_container_end() {
    for_each_runtime(|rt| {
        let c = Running::start(rt);
        let unknown = CreateExecSessionRequest {
            id: "not-here".into(),
            ..c.request("x", "true")
        };
        let err = c.create(&unknown).unwrap_err();
        assert!(err.contains("child not available"), "{err}");
        let neither = CreateExecSessionRequest {
            command: Vec::new(),
            ..c.request("x", "")
        };
        let err = c.create(&neither).unwrap_err();
        assert!(
            err.contains("invalid command") && err.contains("processPath"),
            "{err}"
        );
        let both = CreateExecSessionRequest {
            process_path: "/etc/hostname".into(),
            ..c.request("x", "true")
        };
        let err = c.create(&both).unwrap_err();
        assert!(err.contains("invalid processPath '/etc/hostname'"), "{err}");
        let bad_exit = CreateExecSessionRequest {
            exit_paths: vec!["/no/such/dir/exit".into()],
            ..c.request("x", "true")
        };
        let err = c.create(&bad_exit).unwrap_err();
        assert!(
            err.contains("invalid exitPaths[0] '/no/such/dir/exit'"),
            "{err}"
        );
        for (what, err) in [
            ("status", c.status("nope", false).map(|_| ())),
            ("start", c.start_session("nope").map(|_| ())),
            ("attach", c.attach("nope", &c.dir.path().join("a.sock"))),
            ("resize", c.resize("nope", 10, 10)),
        ] {
            let err = err.unwrap_err();
            assert!(
                err.contains(&format!(
                    "exec session 'nope' not found in container '{}'",
                    c.id
                )),
                "{what}: {err}"
            );
        }

        let long = CreateExecSessionRequest {
            exit_paths: vec![c.path("long.exit")],
            ..c.request("long", "sleep 600")
        };
        c.create(&long).unwrap();
        let err = c.create(&long).unwrap_err();
        assert!(err.contains("exec session 'long' already exists"), "{err}");
        let err = c.resize("long", 10, 10).unwrap_err();
        assert!(err.contains("no terminal"), "{err}");
        let suspended = CreateExecSessionRequest {
            suspended: true,
            ..c.request("never", "true")
        };
        c.create(&suspended).unwrap();
        let err = c.resize("never", 10, 10).unwrap_err();
        assert!(err.contains("not started yet"), "{err}");

        // A missing binary: the runtime refuses, or the process fails.
        let missing = CreateExecSessionRequest {
            command: vec!["/nonexistent".into()],
            ..c.request("missing", "")
        };
        match c.create(&missing) {
            Err(err) => {
                assert!(
                    err.contains("nonexistent") || err.contains("exited with"),
                    "{err}"
                );
                assert!(
                    c.status("missing", false).is_err(),
                    "a failed start is forgotten"
                );
            }
            Ok(_) => assert_ne!(c.status("missing", true).unwrap().exit_code, 0),
        }

        // The container ends: its sessions are killed and forgotten.
        let out = c.server.runtime_cmd(&["kill", &c.id, "KILL"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for_file(&c.dir.path().join("exit"), WAIT);
        let code = wait_for_file(Path::new(&c.path("long.exit")), WAIT);
        assert_ne!(String::from_utf8_lossy(&code), "0");
        assert!(wait_until(WAIT, || c.status("long", false).is_err()));
        let err = c.status("never", false).unwrap_err();
        assert!(err.contains("not found"), "{err}");
        assert!(c.leftover_pid_files().is_empty());
    });
}
