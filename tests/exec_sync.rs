//! execSyncContainer through the real binary, socket and runtimes: exit
//! codes, output in pipe and terminal mode, timeouts, the 16 MiB cap, what
//! reaches the runtime, runtime failures, concurrency on one connection,
//! leftover files and memory.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use ringmon::client::{ExecSyncRequest, ExecSyncResponse};

/// A server with one running busybox container (`sleep 600`, pipes).
struct Running {
    server: Server,
    _dir: TempDir,
    id: String,
}

impl Running {
    fn start(rt: &Path) -> Running {
        Running::on(Server::start(rt))
    }

    fn on(server: Server) -> Running {
        let dir = TempDir::new("exec");
        let id = start_sleeping_container(&server, dir.path());
        Running {
            server,
            _dir: dir,
            id,
        }
    }

    fn req(&self, command: &[&str], terminal: bool, timeout_sec: u64) -> ExecSyncRequest {
        exec_req(&self.id, command, terminal, timeout_sec)
    }

    /// Runs one exec on a fresh connection.
    fn exec(&self, command: &[&str], terminal: bool, timeout_sec: u64) -> ExecSyncResponse {
        let req = self.req(command, terminal, timeout_sec);
        let mut out = None;
        run_local(async {
            out = Some(self.server.client().await.exec_sync(&req).await.unwrap());
        });
        out.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.runtime_cmd(&["delete", "-f", &self.id]);
    }
}

fn exec_req(id: &str, command: &[&str], terminal: bool, timeout_sec: u64) -> ExecSyncRequest {
    ExecSyncRequest {
        id: id.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout_sec,
        terminal,
        cgroup_manager: 1,
        ..Default::default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn output_and_exit_codes_with_pipes_and_terminal() {
    for_each_runtime(|rt| {
        let ctr = Running::start(rt);
        for terminal in [false, true] {
            eprintln!("terminal={terminal}");
            let r = ctr.exec(&["/busybox", "echo", "-n", "hello world"], terminal, 0);
            assert_eq!(
                r,
                ExecSyncResponse {
                    exit_code: 0,
                    stdout: b"hello world".to_vec(),
                    stderr: vec![],
                    timed_out: false
                }
            );

            let r = ctr.exec(&["/busybox", "sh", "-c", "exit 7"], terminal, 10);
            assert_eq!((r.exit_code, r.timed_out), (7, false));

            let r = ctr.exec(&["/busybox", "invalid"], terminal, 0);
            assert_eq!(r.exit_code, 127, "{r:?}");
            if terminal {
                assert_eq!(text(&r.stdout), "invalid: applet not found\r\n");
                assert!(r.stderr.is_empty(), "{r:?}");
            } else {
                assert_eq!(text(&r.stderr), "invalid: applet not found\n");
                assert!(r.stdout.is_empty(), "{r:?}");
            }

            let r = ctr.exec(
                &["/busybox", "sh", "-c", "echo out; echo err >&2; kill -9 $$"],
                terminal,
                0,
            );
            assert_eq!(r.exit_code, 128 + 9, "{r:?}");
            if terminal {
                assert_eq!(text(&r.stdout), "out\r\nerr\r\n");
                assert!(r.stderr.is_empty());
            } else {
                assert_eq!(text(&r.stdout), "out\n");
                assert_eq!(text(&r.stderr), "err\n");
            }
        }
    });
}

#[test]
fn timeout_kills_the_process() {
    for_each_runtime(|rt| {
        let ctr = Running::start(rt);
        for terminal in [false, true] {
            let t0 = Instant::now();
            let r = ctr.exec(
                &["/busybox", "sh", "-c", "echo started; exec sleep 5"],
                terminal,
                1,
            );
            let took = t0.elapsed();
            assert!(r.timed_out, "{r:?}");
            assert_eq!(r.exit_code, -3);
            assert!(text(&r.stdout).starts_with("started"), "{r:?}");
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(4),
                "took {took:?}"
            );
            // The process was killed, not left running in the container.
            let ps = ctr.exec(&["/busybox", "ps", "-o", "args"], false, 10);
            assert_eq!(ps.exit_code, 0, "{ps:?}");
            assert!(
                !text(&ps.stdout).contains("sleep 5"),
                "{}",
                text(&ps.stdout)
            );
        }
        // A timeout that is not reached changes nothing.
        let r = ctr.exec(&["/busybox", "echo", "-n", "in time"], false, 10);
        assert_eq!((r.exit_code, r.timed_out), (0, false));
        assert_eq!(r.stdout, b"in time");
    });
}

#[test]
fn output_is_capped_below_16_mib_per_stream() {
    const LIMIT: usize = 16 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let line_out = b"stdout-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST\n";
    let line_err = b"stderr-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST\n";
    assert_eq!(line_out.len(), 64);
    for_each_runtime(|rt| {
        let ctr = Running::start(rt);
        // 20 MiB on each stream: far past the cap, and the process must not
        // block once collection stopped (it exits 0 in time).
        let script = format!(
            "yes {} | head -c 20971520; yes {} | head -c 20971520 >&2",
            text(&line_out[..63]),
            text(&line_err[..63])
        );
        let r = ctr.exec(&["/busybox", "sh", "-c", &script], false, 60);
        assert_eq!((r.exit_code, r.timed_out), (0, false));
        for (got, line) in [(&r.stdout, line_out), (&r.stderr, line_err)] {
            // The first chunk that would reach 16 MiB is dropped with all
            // after it: less than 16 MiB, at most one read short of it.
            assert!(got.len() < LIMIT, "{} bytes", got.len());
            assert!(got.len() >= LIMIT - CHUNK, "{} bytes", got.len());
            // And what was kept is exactly the start of the stream.
            for (i, piece) in got.chunks(64).enumerate() {
                assert_eq!(piece, &line[..piece.len()], "at byte {}", i * 64);
            }
        }
    });
}

/// A runtime wrapper that records the argv and environment of `exec` calls,
/// then execs the real runtime.
fn wrapper(dir: &Path, real: &Path) -> PathBuf {
    let script = dir.join("runtime-wrapper");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a; do [ \"$a\" = exec ] && {{ printf '%s\\n' \"$@\" > {d}/argv.$$; env > {d}/env.$$; }}; done\nexec {real} \"$@\"\n",
            d = dir.display(),
            real = real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn take_recorded(dir: &Path) -> (Vec<String>, String) {
    let mut found = None;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("argv.") {
            assert!(found.is_none(), "more than one exec call recorded");
            let argv = fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(String::from)
                .collect();
            let env_path = dir.join(format!("env.{pid}"));
            let env = fs::read_to_string(&env_path).unwrap();
            fs::remove_file(e.path()).unwrap();
            fs::remove_file(env_path).unwrap();
            found = Some((argv, env));
        }
    }
    found.expect("no exec call recorded")
}

#[test]
fn argv_env_and_no_leftover_files() {
    let real = &runtimes()[0];
    let rec = TempDir::new("exec-rec");
    // The server's TMPDIR, for console sockets: short, since the runtime
    // connects to `<TMPDIR>/conmon-term-<uuid>.sock` by its plain path.
    let tmp = TempDir(PathBuf::from(format!(
        "/tmp/rmx-{}",
        &ringmon::core::monitor::random_uuid()[..8]
    )));
    fs::create_dir(tmp.path()).unwrap();
    let server = Server::start_with_env(&wrapper(rec.path(), real), &[], &[("TMPDIR", tmp.path())]);
    let run_dir = server.socket.parent().unwrap().to_path_buf();
    let root = server.runtime_root.display().to_string();
    let ctr = Running::on(server);
    let before = listing(&run_dir);

    for terminal in [false, true] {
        let mut req = ctr.req(&["/busybox", "sh", "-c", "echo -n $RINGMON_X"], terminal, 0);
        req.env_vars = vec![("RINGMON_EXEC_VAR".into(), "forty two".into())];
        let mut r = None;
        run_local(async {
            r = Some(ctr.server.client().await.exec_sync(&req).await.unwrap());
        });
        let r = r.unwrap();
        assert_eq!(r.exit_code, 0, "{r:?}");
        // envVars go to the runtime process, not into the container.
        assert!(r.stdout.is_empty(), "{r:?}");

        let (argv, env) = take_recorded(rec.path());
        assert!(
            env.lines().any(|l| l == "RINGMON_EXEC_VAR=forty two"),
            "{env}"
        );
        let pid_file = argv
            .iter()
            .find_map(|a| a.strip_prefix("--pid-file="))
            .expect("--pid-file=")
            .to_string();
        let name = Path::new(&pid_file).file_name().unwrap().to_string_lossy();
        assert_eq!(Path::new(&pid_file).parent(), Some(run_dir.as_path()));
        assert!(
            name.starts_with("exec_sync") && name.ends_with("pid") && name.len() == 9 + 36 + 3,
            "{name}"
        );
        let mut want = vec![format!("--root={root}"), "exec".into(), "-d".into()];
        if terminal {
            let sock = argv
                .iter()
                .find(|a| a.starts_with("--console-socket="))
                .expect("--console-socket=")
                .clone();
            assert!(sock.starts_with(&format!(
                "--console-socket={}/conmon-term-",
                tmp.path().display()
            )));
            want.push(sock);
            want.push("--tty".into());
        }
        want.push(format!("--pid-file={pid_file}"));
        want.push(ctr.id.clone());
        want.extend(["/busybox", "sh", "-c", "echo -n $RINGMON_X"].map(String::from));
        assert_eq!(argv, want);
        assert!(
            !Path::new(&pid_file).exists(),
            "pid file {pid_file} left behind"
        );
    }

    // Failures and timeouts clean up too.
    let r = ctr.exec(&["/busybox", "sleep", "5"], true, 1);
    assert!(r.timed_out);
    let _ = take_recorded(rec.path());
    run_local(async {
        let c = ctr.server.client().await;
        let r = c
            .exec_sync(&exec_req(
                "no-such-container",
                &["/busybox", "true"],
                true,
                0,
            ))
            .await
            .unwrap();
        assert_eq!(r.exit_code, -2);
    });
    let _ = take_recorded(rec.path());
    assert_eq!(listing(&run_dir), before, "files left in the runtime dir");
    assert!(
        listing(tmp.path()).is_empty(),
        "console sockets left: {:?}",
        listing(tmp.path())
    );
}

#[test]
fn runtime_failure_is_exit_code_minus_two_not_an_error() {
    for_each_runtime(|rt| {
        let ctr = Running::start(rt);
        run_local(async {
            let c = ctr.server.client().await;
            for terminal in [false, true] {
                // Unknown container: the runtime fails.
                let r = c
                    .exec_sync(&exec_req(
                        &container_id(),
                        &["/busybox", "true"],
                        terminal,
                        5,
                    ))
                    .await
                    .unwrap();
                assert_eq!(
                    r,
                    ExecSyncResponse {
                        exit_code: -2,
                        ..Default::default()
                    }
                );
                // A command missing in the container: the runtime fails too.
                let r = c
                    .exec_sync(&exec_req(&ctr.id, &["/no/such/binary"], terminal, 0))
                    .await
                    .unwrap();
                assert_eq!(
                    r,
                    ExecSyncResponse {
                        exit_code: -2,
                        ..Default::default()
                    }
                );
            }
            // Malformed requests are RPC errors naming the field.
            let e = c
                .exec_sync(&exec_req("a/b", &["/busybox", "true"], false, 0))
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid id 'a/b'"), "{e}");
            let e = c
                .exec_sync(&exec_req(&ctr.id, &[], false, 0))
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid command"), "{e}");
            let mut bad = exec_req(&ctr.id, &["/busybox", "true"], false, 0);
            bad.cgroup_manager = 7;
            let e = c.exec_sync(&bad).await.unwrap_err().to_string();
            assert!(e.contains("invalid cgroupManager '7'"), "{e}");
            // The server is still serving, and the container still runs.
            c.version(false).await.unwrap();
            let r = c
                .exec_sync(&exec_req(&ctr.id, &["/busybox", "true"], false, 0))
                .await
                .unwrap();
            assert_eq!(r.exit_code, 0);
        });
    });
}

#[test]
fn ten_concurrent_execs_on_one_connection() {
    for_each_runtime(|rt| {
        let ctr = Running::start(rt);
        run_local(async {
            let c = ctr.server.client().await;
            // A long exec must not hold up other calls on the connection.
            let slow_req = ctr.req(&["/busybox", "sleep", "3"], false, 0);
            let slow = c.exec_sync(&slow_req);
            let rest = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let t0 = Instant::now();
                c.version(false).await.unwrap();
                let version_took = t0.elapsed();
                let reqs: Vec<_> = (0..10)
                    .map(|i| {
                        let arg = format!("hello world {i}");
                        ctr.req(&["/busybox", "echo", "-n", &arg], i % 2 == 1, 30)
                    })
                    .collect();
                let t0 = Instant::now();
                let replies = futures::future::join_all(reqs.iter().map(|r| c.exec_sync(r))).await;
                (version_took, t0.elapsed(), replies)
            };
            let (slow, (version_took, all_took, replies)) = futures::join!(slow, rest);
            assert_eq!(slow.unwrap().exit_code, 0);
            assert!(
                version_took < Duration::from_millis(500),
                "version took {version_took:?}"
            );
            eprintln!("10 concurrent execs took {all_took:?}");
            for (i, r) in replies.into_iter().enumerate() {
                let r = r.unwrap();
                assert_eq!((r.exit_code, r.timed_out), (0, false), "exec {i}: {r:?}");
                assert_eq!(text(&r.stdout), format!("hello world {i}"));
            }
        });
    });
}

#[test]
fn cancelled_exec_is_killed_and_reaped() {
    let rt = &runtimes()[0];
    let ctr = Running::start(rt);
    run_local(async {
        let c = ctr.server.client().await;
        let req = ctr.req(&["/busybox", "sleep", "77"], false, 0);
        // Give up on the call (and drop the connection) after a moment.
        let r = tokio::time::timeout(Duration::from_millis(1500), c.exec_sync(&req)).await;
        assert!(r.is_err(), "sleep 77 returned early: {r:?}");
        drop(c);
    });
    let gone = wait_until(Duration::from_secs(10), || {
        let ps = ctr.exec(&["/busybox", "ps", "-o", "args"], false, 10);
        !text(&ps.stdout).contains("sleep 77")
    });
    assert!(gone, "the abandoned exec still runs");
    // ...and the server reaped it: no zombie children.
    let zombies = wait_until(Duration::from_secs(5), || {
        zombie_children(ctr.server.serving_pid()) == 0
    });
    assert!(zombies, "server has zombie children");
}

fn zombie_children(pid: u32) -> usize {
    let mut n = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
            {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn no_memory_growth_over_100_execs() {
    for_each_runtime(|rt| {
        let ctr = Running::start(rt);
        let pid = ctr.server.serving_pid();
        run_local(async {
            let c = ctr.server.client().await;
            let round = |i: usize| {
                let arg = format!("line {i}");
                let req = ctr.req(&["/busybox", "echo", &arg], i % 2 == 1, 10);
                let c = &c;
                async move {
                    let r = c.exec_sync(&req).await.unwrap();
                    assert_eq!(r.exit_code, 0, "{r:?}");
                }
            };
            for i in 0..30 {
                round(i).await; // warm-up: allocator pools, runtime caches
            }
            let before = rss_kib(pid);
            for i in 0..100 {
                round(i).await;
            }
            let after = rss_kib(pid);
            eprintln!("server VmRSS {before} KiB -> {after} KiB over 100 execs");
            assert!(
                after < before + 200,
                "RSS grew by {} KiB over 100 execs",
                after.saturating_sub(before)
            );
        });
        assert_eq!(zombie_children(pid), 0);
    });
}
