//! Container lifecycle through the real binary, socket and runtimes.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const EXIT_WAIT: Duration = Duration::from_secs(15);

#[test]
fn version_and_pidfile() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        run_local(async {
            let c = server.client().await;
            let v = c.version(false).await.unwrap();
            assert_eq!(v.process_id, server.pid);
            // The conmon-rs feature level, ringmon's version as build metadata.
            assert_eq!(
                v.version,
                format!("0.7.0+ringmon.{}", env!("CARGO_PKG_VERSION"))
            );
            for f in [
                &v.commit,
                &v.build_date,
                &v.target,
                &v.rust_version,
                &v.cargo_version,
            ] {
                assert!(!f.is_empty());
            }
            assert!(v.cargo_tree.is_empty());
            assert!(!c.version(true).await.unwrap().cargo_tree.is_empty());
        });
    });
}

#[test]
fn logs_and_exit_code() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("life");
        let id = container_id();
        let bundle = make_bundle(
            dir.path(),
            &[
                "/bin/sh",
                "-c",
                "echo hello world; echo oops >&2; printf 'no newline'; exit 3",
            ],
            false,
        );
        let req = basic_request(dir.path(), &id, &bundle, false);
        run_local(async {
            let c = server.client().await;
            let pid = c.create_container(&req).await.unwrap();
            assert!(pid > 0);
        });
        server.start_container(&id);
        let exit = wait_for_file(&dir.path().join("exit"), EXIT_WAIT);
        assert_eq!(exit, b"3");
        let log = fs::read(dir.path().join("ctr.log")).unwrap();
        let (out, err) = parse_cri(&log);
        // The line left open at EOF is closed by an F record.
        assert_eq!(out, b"hello world\nno newline\n");
        // The last stdout record is that closing F. (Only stdout's: two
        // pipes carry no order between them, so where stderr's record falls
        // depends on when the monitor read each pipe.)
        let text = String::from_utf8_lossy(&log);
        assert!(
            text.lines()
                .rfind(|record| record.split(' ').nth(1) == Some("stdout"))
                .is_some_and(|record| record.ends_with(" stdout F ")),
            "no closing F record: {text}"
        );
        assert_eq!(err, b"oops\n");
        let text = String::from_utf8(log).unwrap();
        assert!(
            text.lines().any(|l| l.ends_with(" stdout F hello world")),
            "{text}"
        );
        assert!(!dir.path().join("oom").exists());
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn terminal_output_is_logged_as_stdout_with_crlf() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("tty");
        let id = container_id();
        let bundle = make_bundle(dir.path(), &["/bin/echo", "hello tty"], true);
        let req = basic_request(dir.path(), &id, &bundle, true);
        run_local(async {
            let c = server.client().await;
            c.create_container(&req).await.unwrap();
            c.set_window_size(&id, 80, 24).await.unwrap();
        });
        server.start_container(&id);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
        let (out, err) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert_eq!(out, b"hello tty\r\n");
        assert!(err.is_empty());
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn window_size_needs_a_terminal() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("ws");
        let id = container_id();
        let bundle = make_bundle(dir.path(), &["/bin/true"], false);
        let req = basic_request(dir.path(), &id, &bundle, false);
        run_local(async {
            let c = server.client().await;
            c.create_container(&req).await.unwrap();
            let e = c
                .set_window_size(&id, 10, 20)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("container has no terminal"), "{e}");
            let e = c
                .set_window_size("unknown", 10, 20)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("child not available"), "{e}");
        });
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn signal_exit_code_and_cleanup_command() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("sig");
        let id = container_id();
        // A pid namespace's init ignores signals from inside: kill it from
        // outside, through the runtime.
        let bundle = make_bundle(dir.path(), &["/bin/sleep", "1000"], false);
        let marker = dir.path().join("cleaned");
        let mut req = basic_request(dir.path(), &id, &bundle, false);
        req.exit_paths
            .push(dir.path().join("exit2").display().to_string());
        req.cleanup_cmd = vec!["/usr/bin/touch".into(), marker.display().to_string()];
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        let out = server.runtime_cmd(&["kill", &id, "KILL"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The first exit path appears last, so once it exists both do.
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"137");
        assert_eq!(fs::read(dir.path().join("exit2")).unwrap(), b"137");
        assert!(
            wait_until(Duration::from_secs(5), || marker.exists()),
            "cleanup command ran"
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn runtime_errors_reach_the_caller() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        for terminal in [false, true] {
            let dir = TempDir::new("inv");
            let id = container_id();
            let bundle = make_bundle(dir.path(), &["invalid"], terminal);
            let req = basic_request(dir.path(), &id, &bundle, terminal);
            run_local(async {
                let c = server.client().await;
                let e = c.create_container(&req).await.unwrap_err().to_string();
                assert!(e.contains("child command exited with"), "{e}");
                assert!(
                    e.contains("not found"),
                    "runtime stderr is in the error: {e}"
                );
                // The server is still up and answers.
                c.version(false).await.unwrap();
            });
            server.runtime_cmd(&["delete", "-f", &id]);
        }
    });
}

#[test]
fn reopen_and_max_size() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("reopen");
        let id = container_id();
        let bundle = make_bundle(
            dir.path(),
            &["/bin/sh", "-c", "echo hello; echo world"],
            false,
        );
        let mut req = basic_request(dir.path(), &id, &bundle, false);
        req.log_drivers[0].max_size = 50;
        run_local(async {
            let c = server.client().await;
            c.create_container(&req).await.unwrap();
            c.reopen_log(&id).await.unwrap();
            let e = c.reopen_log("nope").await.unwrap_err().to_string();
            assert!(e.contains("child not available"), "{e}");
        });
        server.start_container(&id);
        wait_for_file(&dir.path().join("exit"), EXIT_WAIT);
        let log = String::from_utf8(fs::read(dir.path().join("ctr.log")).unwrap()).unwrap();
        assert!(log.contains("world"), "{log}");
        assert!(!log.contains("hello"), "{log}");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn shutdown_kills_created_containers_and_writes_exit_files() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("shut");
        let id = container_id();
        let bundle = make_bundle(dir.path(), &["/bin/sleep", "1000"], false);
        let req = basic_request(dir.path(), &id, &bundle, false);
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        assert!(server.shutdown(), "server exits within 10 s");
        assert_eq!(fs::read(dir.path().join("exit")).unwrap(), b"137");
        assert!(!server.socket.exists(), "socket removed at shutdown");
        let state = server.runtime_cmd(&["state", &id]);
        let text = String::from_utf8_lossy(&state.stdout);
        let status = text
            .lines()
            .find(|l| l.contains("\"status\""))
            .unwrap_or_default()
            .to_string();
        assert!(
            !status.contains("created"),
            "container still created: {text}"
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn lossless_output_at_exit() {
    // The container writes 8 MiB and exits at once: every byte must be in
    // the log before the exit file appears.
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("drain");
        let id = container_id();
        let bundle = make_bundle(
            dir.path(),
            &[
                "/bin/sh",
                "-c",
                "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 8388608",
            ],
            false,
        );
        let req = basic_request(dir.path(), &id, &bundle, false);
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
        let (out, _) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
        // 8 MiB cut mid-line, plus the closing F record's line end.
        assert_eq!(out.len(), 8 * 1024 * 1024 + 1);
        assert!(out
            .chunks(37)
            .all(|l| l.len() < 37 || l == b"0123456789abcdefghijklmnopqrstuvwxyz\n"));
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn no_zombies_after_many_containers() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("zomb");
    for i in 0..5 {
        let id = format!("zombie-test-{i}-{}", std::process::id());
        let sub = dir.path().join(i.to_string());
        fs::create_dir_all(&sub).unwrap();
        let bundle = make_bundle(&sub, &["/bin/true"], false);
        let req = basic_request(&sub, &id, &bundle, false);
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        wait_for_file(&sub.join("exit"), EXIT_WAIT);
        server.runtime_cmd(&["delete", "-f", &id]);
    }
    let zombies = || -> Vec<String> {
        fs::read_dir(format!("/proc/{}/task", server.serving_pid()))
            .unwrap()
            .flatten()
            .map(|t| fs::read_to_string(t.path().join("children")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| s.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .map(String::from)
            .collect()
    };
    assert!(
        common::wait_until(Duration::from_secs(3), || zombies().is_empty()),
        "zombie children: {:?}",
        zombies()
    );
}
