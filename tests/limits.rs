//! The server's bounds on what clients may hold at once (README "Faults
//! and limits"): attach clients per container, open exec sessions, and
//! concurrent execSync calls. Past each limit the client gets a clear error,
//! what runs already is not disturbed, and once some are given back new ones
//! work again.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::attach_client::*;
use common::*;
use ringmon::client::{CreateExecSessionRequest, ExecSyncRequest};

/// The limits as the README states them.
const ATTACH_CLIENTS: usize = 64;
const EXEC_SESSIONS: usize = 1024;
const EXEC_SYNCS: usize = 64;

fn run_local_value<T, F: std::future::Future<Output = T>>(f: F) -> T {
    let mut out = None;
    run_local(async { out = Some(f.await) });
    out.unwrap()
}

fn try_attach(server: &Server, id: &str, path: &Path) -> Result<(), String> {
    run_local_value(async {
        server
            .client()
            .await
            .attach_container(id, path, "", false)
            .await
            .map_err(|e| e.to_string())
    })
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

#[test]
fn attach_clients_past_the_limit_are_refused_and_closing_some_makes_room() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("lim-attach");
    let id = container_id();
    let bundle = make_bundle(
        dir.path(),
        &["/bin/sh", "-c", "while read -r l; do echo \"got:$l\"; done"],
        false,
    );
    let mut req = basic_request(dir.path(), &id, &bundle, false);
    req.stdin = true;
    run_local(async {
        server.client().await.create_container(&req).await.unwrap();
    });
    let path = dir.path().join("attach");
    try_attach(&server, &id, &path).expect("first attach");
    server.start_container(&id);

    let mut conns: Vec<AttachConn> = (0..ATTACH_CLIENTS)
        .map(|i| AttachConn::connect(&path, &format!("client{i}")))
        .collect();
    // The server takes connections asynchronously: wait until it counts
    // them all.
    let want = format!("too many attach clients for container {id}: limit {ATTACH_CLIENTS}");
    let mut last = Ok(());
    let refused = wait_until(Duration::from_secs(10), || {
        last = try_attach(&server, &id, &path);
        last.as_ref().is_err_and(|e| e.contains(&want))
    });
    assert!(
        refused,
        "attachContainer with {ATTACH_CLIENTS} clients connected: {last:?}"
    );
    // Another socket path for the same container is refused as well.
    let other = try_attach(&server, &id, &dir.path().join("attach2")).unwrap_err();
    assert!(other.contains(&want), "{other}");

    // A connection past the limit is closed at once, without output.
    let extra = AttachConn::connect(&path, "extra");
    match extra.recv_packet(Duration::from_secs(5)) {
        Some(Packet::Eof) => {}
        other => panic!("the connection past the limit got {other:?} instead of EOF"),
    }

    // The connected clients are undisturbed.
    conns[0].send_all(b"one\n");
    conns[0].read_until_out_contains("got:one\n");
    conns[ATTACH_CLIENTS - 1].read_until_out_contains("got:one\n");

    // Closing two gives room for new ones.
    drop(conns.drain(1..3));
    let mut last = Ok(());
    let room = wait_until(Duration::from_secs(10), || {
        last = try_attach(&server, &id, &path);
        last.is_ok()
    });
    assert!(room, "attachContainer after two clients left: {last:?}");
    let mut newcomer = AttachConn::connect(&path, "newcomer");
    newcomer.send_all(b"two\n");
    newcomer.read_until_out_contains("got:two\n");
    conns[0].read_until_out_contains("got:two\n");

    drop(conns);
    drop(newcomer);
    server.runtime_cmd(&["delete", "-f", &id]);
}

#[test]
fn exec_sessions_past_the_limit_are_refused_and_an_ended_one_makes_room() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("lim-sessions");
    let id = start_sleeping_container(&server, dir.path());
    let request = |n: usize| CreateExecSessionRequest {
        id: id.clone(),
        session_id: format!("s{n}"),
        command: vec!["/bin/true".into()],
        cgroup_manager: 1,
        // Suspended: nothing runs until started, so the limit is cheap to
        // reach.
        suspended: true,
        ..Default::default()
    };
    run_local(async {
        let c = server.client().await;
        for n in 0..EXEC_SESSIONS {
            c.create_exec_session(&request(n))
                .await
                .unwrap_or_else(|e| panic!("session {n}: {e}"));
        }
        let err = c
            .create_exec_session(&request(EXEC_SESSIONS))
            .await
            .expect_err("a session past the limit")
            .to_string();
        assert!(
            err.contains(&format!(
                "too many exec sessions for this server: limit {EXEC_SESSIONS}"
            )),
            "{err}"
        );
        // The sessions held are undisturbed: one of them runs to its end,
        // after which a new one fits.
        c.start_exec_session(&id, "s0").await.expect("start s0");
        let status = tokio::time::timeout(
            Duration::from_secs(30),
            c.exec_session_status(&id, "s0", true),
        )
        .await
        .expect("s0 ended")
        .expect("status of s0");
        assert_eq!(status.exit_code, 0, "{status:?}");
        c.create_exec_session(&request(EXEC_SESSIONS))
            .await
            .expect("a session after one ended");
        let err = c
            .create_exec_session(&request(EXEC_SESSIONS + 1))
            .await
            .expect_err("at the limit again")
            .to_string();
        assert!(err.contains("too many exec sessions"), "{err}");
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}

/// A runtime wrapper whose `exec` hangs (as `sleep 619`) while `dir/hold`
/// exists; everything else goes to the real runtime.
fn holding_wrapper(dir: &Path, real: &Path) -> PathBuf {
    let script = dir.join("runtime-wrapper");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             for a; do [ \"$a\" = exec ] && [ -f {d}/hold ] && exec sleep 619; done\n\
             exec {real} \"$@\"\n",
            d = dir.display(),
            real = real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn exec_syncs_past_the_limit_are_refused_and_a_finished_one_makes_room() {
    let real = &runtimes()[0];
    let rec = TempDir::new("lim-execsync");
    let server = Server::start(&holding_wrapper(rec.path(), real));
    let dir = TempDir::new("lim-execsyncc");
    let id = start_sleeping_container(&server, dir.path());
    let exec = |command: &[&str]| ExecSyncRequest {
        id: id.clone(),
        command: command.iter().map(|s| s.to_string()).collect(),
        cgroup_manager: 1,
        ..Default::default()
    };
    fs::write(rec.path().join("hold"), b"").unwrap();
    // Whatever happens, no held runtime outlives the test.
    struct KillHeld;
    impl Drop for KillHeld {
        fn drop(&mut self) {
            for pid in processes_with_argv(&["sleep", "619"]) {
                kill(pid);
            }
        }
    }
    let _kill_held = KillHeld;
    let held_req = exec(&["/bin/true"]);
    let sleeping = || processes_with_argv(&["sleep", "619"]);
    run_local(async {
        let c = server.client().await;
        let held = futures::future::join_all((0..EXEC_SYNCS).map(|_| c.exec_sync(&held_req)));
        let checks = async {
            // All of them are in the runtime.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while sleeping().len() < EXEC_SYNCS {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "only {} of {EXEC_SYNCS} execSync calls reached the runtime",
                    sleeping().len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let past = tokio::time::timeout(
                Duration::from_secs(10),
                c.exec_sync(&exec(&["/bin/echo", "past"])),
            )
            .await;
            let err = match past {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(reply)) => panic!("an execSync past the limit ran: {reply:?}"),
                Err(_) => panic!("an execSync past the limit waited instead of failing"),
            };
            assert!(
                err.contains(&format!(
                    "too many concurrent execSync calls for this server: limit {EXEC_SYNCS}"
                )),
                "{err}"
            );
            // Two finish (their runtime dies): room for a new one, which
            // runs for real.
            fs::remove_file(rec.path().join("hold")).unwrap();
            for pid in sleeping().into_iter().take(2) {
                kill(pid);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let reply = loop {
                match c.exec_sync(&exec(&["/bin/echo", "room"])).await {
                    Ok(reply) => break reply,
                    Err(e) => {
                        assert!(
                            e.to_string().contains("too many concurrent execSync calls")
                                && tokio::time::Instant::now() < deadline,
                            "{e}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            assert_eq!(reply.exit_code, 0, "{reply:?}");
            assert_eq!(reply.stdout, b"room\n");
            for pid in sleeping() {
                kill(pid);
            }
        };
        let (replies, ()) = tokio::join!(held, checks);
        // The held calls end as runtime failures (exit code -2), not errors.
        for reply in replies {
            assert_eq!(reply.expect("a held execSync").exit_code, -2);
        }
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}
