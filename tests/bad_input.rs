//! Bad requests get a clear error naming the field and value, and the
//! server stays up.

mod common;

use std::process::Command;

use common::*;

async fn expect_error(c: &Client, req: &CreateRequest, needles: &[&str]) {
    let e = c.create_container(req).await.unwrap_err().to_string();
    for n in needles {
        assert!(e.contains(n), "error {e:?} should contain {n:?}");
    }
    // The server still answers.
    c.version(false).await.unwrap();
}

#[test]
fn create_rejects_bad_fields() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("bad");
    let bundle = make_bundle(dir.path(), &["/bin/sleep", "100"], false);
    let good = basic_request(dir.path(), &container_id(), &bundle, false);
    run_local(async {
        let c = server.client().await;
        let with = |f: &dyn Fn(&mut CreateRequest)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        expect_error(
            &c,
            &with(&|r| r.id.clear()),
            &["invalid id ''", "must not be empty"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.id = "a/b".into()),
            &["invalid id 'a/b'", "'/'"],
        )
        .await;
        expect_error(&c, &with(&|r| r.id = "..".into()), &["invalid id '..'"]).await;
        expect_error(
            &c,
            &with(&|r| r.bundle_path.clear()),
            &["invalid bundlePath ''"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.bundle_path = "rel/bundle".into()),
            &["invalid bundlePath 'rel/bundle'", "absolute"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.bundle_path = "/nonexistent/bundle".into()),
            &[
                "invalid bundlePath '/nonexistent/bundle'",
                "not a directory",
            ],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.exit_paths = vec!["exit".into()]),
            &["invalid exitPaths[0] 'exit'", "absolute"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.log_drivers[0].path = "/nonexistent-dir/x.log".into()),
            &[
                "invalid logDrivers[0].path '/nonexistent-dir/x.log'",
                "parent directory does not exist",
            ],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.log_drivers[0].path = "/tmp/../tmp/x.log".into()),
            &["logDrivers[0].path", "'..'"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.log_drivers[0].kind = 9),
            &["invalid logDrivers[0].type '9'", "unknown log driver"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.cgroup_manager = 7),
            &["invalid cgroupManager '7'"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.env_vars = vec![("A=B".into(), "x".into())]),
            &["invalid envVars[0].key 'A=B'"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.additional_fds = vec![77]),
            &["no file descriptor in slot 77"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.leak_fds = vec![3, 3]),
            &["invalid leakFds[1] '3'", "slot named twice"],
        )
        .await;
        // Lists past the bound are refused before an entry is read: one
        // message can carry millions (the slot check was quadratic).
        let many: Vec<u64> = (0..200_000).collect();
        expect_error(
            &c,
            &with(&|r| r.additional_fds = many.clone()),
            &["invalid additionalFds '200000 entries'", "limit of 65536"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.command_args = vec![String::new(); 70_000]),
            &["invalid commandArgs '70000 entries'", "limit of 65536"],
        )
        .await;
        expect_error(
            &c,
            &with(&|r| r.env_vars = vec![("K".into(), "v".into()); 70_000]),
            &["invalid envVars '70000 entries'", "limit of 65536"],
        )
        .await;

        // A valid create works after all that, and a second one with the
        // same id is refused while the first lives.
        c.create_container(&good).await.unwrap();
        expect_error(&c, &good, &["already in use", &good.id]).await;
    });
    server.runtime_cmd(&["delete", "-f", &good.id]);
}

#[test]
fn symlinked_log_path_is_refused() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("symlink");
    let bundle = make_bundle(dir.path(), &["/bin/true"], false);
    let target = dir.path().join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut req = basic_request(dir.path(), &container_id(), &bundle, false);
    req.log_drivers[0].path = link.display().to_string();
    run_local(async {
        let c = server.client().await;
        expect_error(&c, &req, &["open log file path", "link.log"]).await;
    });
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}

#[test]
fn server_flags_are_validated_before_forking() {
    let dir = TempDir::new("flags");
    let run = |args: &[&str]| {
        let out = Command::new(binary()).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let rd = dir.path().join("run").display().to_string();
    let (code, err) = run(&["--runtime-dir", &rd]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--runtime flag not set"), "{err}");
    let (code, err) = run(&["--runtime", "/usr/bin/true"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--runtime-dir flag not set"), "{err}");
    let (code, err) = run(&["--runtime", "/nonexistent/runc", "--runtime-dir", &rd]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--runtime '/nonexistent/runc' does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("run/conmon.sock").exists());
    let (code, err) = run(&[
        "--runtime",
        "/usr/bin/true",
        "--runtime-dir",
        &rd,
        "--log-level",
        "loud",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("loud"), "{err}");
    for (flag, value) in [("--io-backend", "fast"), ("--busy-pipe-size", "lots")] {
        let (code, err) = run(&[
            "--runtime",
            "/usr/bin/true",
            "--runtime-dir",
            &rd,
            flag,
            value,
        ]);
        assert_eq!(code, Some(2), "{flag} {value}");
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }
}

/// execSyncContainer: every bad field is an RPC error naming it and the
/// value, and the container is not disturbed (a good exec still works).
#[test]
fn exec_sync_rejects_bad_fields() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("badexec");
    let bundle = make_bundle(dir.path(), &["/bin/sleep", "100"], false);
    let id = container_id();
    let req = basic_request(dir.path(), &id, &bundle, false);
    run_local(async {
        let c = server.client().await;
        c.create_container(&req).await.unwrap();
        server.start_container(&id);
        let good = ringmon::client::ExecSyncRequest {
            id: id.clone(),
            command: vec!["/bin/echo".into(), "ok".into()],
            timeout_sec: 10,
            cgroup_manager: 1,
            ..Default::default()
        };
        let cases = [
            (
                ringmon::client::ExecSyncRequest {
                    command: Vec::new(),
                    ..good.clone()
                },
                "invalid command '': must not be empty",
            ),
            (
                ringmon::client::ExecSyncRequest {
                    id: "../escape".into(),
                    ..good.clone()
                },
                "invalid id '../escape'",
            ),
            (
                ringmon::client::ExecSyncRequest {
                    env_vars: vec![("A=B".into(), "x".into())],
                    ..good.clone()
                },
                "invalid envVars[0].key 'A=B'",
            ),
            (
                ringmon::client::ExecSyncRequest {
                    cgroup_manager: 7,
                    ..good.clone()
                },
                "invalid cgroupManager '7'",
            ),
        ];
        for (bad, want) in cases {
            let err = c.exec_sync(&bad).await.unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?}, got {err}");
        }
        let ok = c.exec_sync(&good).await.unwrap();
        assert_eq!((ok.exit_code, ok.stdout.as_slice()), (0, &b"ok\n"[..]));
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}

#[test]
fn attach_rejects_bad_fields() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("badattach");
    let bundle = make_bundle(dir.path(), &["/bin/sleep", "100"], false);
    let id = container_id();
    let req = basic_request(dir.path(), &id, &bundle, false);
    run_local(async {
        let c = server.client().await;
        c.create_container(&req).await.unwrap();
        let cases: [(&str, std::path::PathBuf, &str); 4] = [
            (&id, "rel/attach".into(), "invalid socketPath 'rel/attach'"),
            (
                &id,
                "/tmp/../tmp/attach".into(),
                "invalid socketPath '/tmp/../tmp/attach'",
            ),
            ("", dir.path().join("attach"), "invalid id ''"),
            ("a/b", dir.path().join("attach"), "invalid id 'a/b'"),
        ];
        for (target, path, needle) in cases {
            let e = c
                .attach_container(target, &path, "", false)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "error {e:?} should contain {needle:?}");
        }
        // The container and the server are unaffected.
        c.attach_container(&id, &dir.path().join("attach"), "", false)
            .await
            .unwrap();
        c.version(false).await.unwrap();
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}

/// Every field of the exec session extension with a wrong value: a clear
/// error naming field and value, no session left behind, the server up.
#[test]
fn exec_session_rejects_bad_fields() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("bad-session");
    let id = start_sleeping_container(&server, dir.path());
    let good = ringmon::client::CreateExecSessionRequest {
        id: id.clone(),
        session_id: "s".into(),
        command: vec!["/bin/true".into()],
        cgroup_manager: 1,
        ..Default::default()
    };
    run_local(async {
        let c = server.client().await;
        let with = |f: &dyn Fn(&mut ringmon::client::CreateExecSessionRequest)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        let cases: Vec<(ringmon::client::CreateExecSessionRequest, Vec<&str>)> = vec![
            (with(&|r| r.id = "a/b".into()), vec!["invalid id 'a/b'"]),
            (
                with(&|r| r.session_id = "a\nb".into()),
                vec!["invalid sessionId 'a\nb'", "control characters"],
            ),
            (
                with(&|r| r.session_id = "x".repeat(300)),
                vec!["invalid sessionId", "at most 256 bytes"],
            ),
            (
                with(&|r| {
                    r.command.clear();
                    r.process_path = "rel/process.json".into();
                }),
                vec!["invalid processPath 'rel/process.json'", "absolute"],
            ),
            (
                with(&|r| {
                    r.command.clear();
                    r.process_path = "/nonexistent/process.json".into();
                }),
                vec![
                    "invalid processPath '/nonexistent/process.json'",
                    "not a file",
                ],
            ),
            (
                with(&|r| r.process_env = vec![("A=B".into(), "x".into())]),
                vec!["invalid processEnv[0].key 'A=B'"],
            ),
            (
                with(&|r| r.env_vars = vec![(String::new(), "x".into())]),
                vec!["invalid envVars[0].key ''"],
            ),
            (
                with(&|r| r.exit_paths = vec!["relative/exit".into()]),
                vec!["invalid exitPaths[0] 'relative/exit'"],
            ),
            (
                with(&|r| {
                    r.log_drivers = vec![LogDriver {
                        kind: 7,
                        path: dir.path().join("s.log").display().to_string(),
                        max_size: 0,
                    }]
                }),
                vec!["invalid logDrivers[0].type '7'"],
            ),
            (
                with(&|r| r.cgroup_manager = 9),
                vec!["invalid cgroupManager '9'"],
            ),
            (
                with(&|r| r.additional_fds = vec![4, 4]),
                vec!["invalid additionalFds[1] '4'", "slot named twice"],
            ),
            (
                with(&|r| r.additional_fds = vec![77]),
                vec!["no file descriptor in slot 77"],
            ),
        ];
        for (req, needles) in cases {
            let e = c.create_exec_session(&req).await.unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "error {e:?} should contain {n:?}");
            }
        }
        // None of them left a session behind.
        let e = c
            .exec_session_status(&id, "s", false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("exec session 's' not found"), "{e}");
        for (sid, needle) in [("", "invalid sessionId ''"), ("a\tb", "control characters")] {
            let e = c
                .start_exec_session(&id, sid)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "start {sid:?}: {e}");
            let e = c
                .exec_session_status(&id, sid, true)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "status {sid:?}: {e}");
        }
        let e = c
            .resize_exec_session(&id, "a\u{7f}b", 80, 24)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid sessionId"), "{e}");
        c.version(false).await.unwrap();
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}

#[test]
fn a_zero_window_size_is_refused_naming_the_field() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("badwinsz");
    let bundle = make_bundle(dir.path(), &["/bin/sleep", "100"], true);
    let id = container_id();
    let req = basic_request(dir.path(), &id, &bundle, true);
    run_local(async {
        let c = server.client().await;
        c.create_container(&req).await.unwrap();
        for (w, h, want) in [
            (0, 24, "invalid width '0': must be at least 1"),
            (80, 0, "invalid height '0': must be at least 1"),
        ] {
            let err = c.set_window_size(&id, w, h).await.unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?}, got {err}");
        }
        c.set_window_size(&id, 80, 24).await.unwrap();
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}
