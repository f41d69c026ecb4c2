//! The engine backend choice: where io_uring is denied (here by a seccomp
//! filter, as container runtimes' default profiles do) `auto` runs on epoll
//! and says why, containers are logged all the same, and a forced io_uring
//! fails with a clear error instead of limping on.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const EXIT_WAIT: Duration = Duration::from_secs(15);

fn without_io_uring() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ringmon-without-io-uring"))
}

#[test]
fn auto_falls_back_to_epoll_where_io_uring_is_denied() {
    let rt = &runtimes()[0];
    let dir = TempDir::new("backend");
    let server_log = dir.path().join("server.log");
    let server = Server::start_wrapped(
        &without_io_uring(),
        rt,
        &["--io-backend", "auto"],
        &server_log,
    );
    let id = container_id();
    let bundle = make_bundle(
        dir.path(),
        &["/bin/sh", "-c", "seq 1 20000; echo done >&2"],
        false,
    );
    let req = basic_request(dir.path(), &id, &bundle, false);
    run_local(async {
        let c = server.client().await;
        c.create_container(&req).await.unwrap();
    });
    server.start_container(&id);
    assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
    let (out, err) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
    let want: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    assert!(out == want.as_bytes(), "stdout incomplete");
    assert_eq!(err, b"done\n");
    server.runtime_cmd(&["delete", "-f", &id]);
    drop(server);

    let log = fs::read_to_string(&server_log).unwrap();
    let started = log
        .lines()
        .find(|line| line.contains("ringmon listening"))
        .unwrap_or_else(|| panic!("no startup line in the server log:\n{log}"));
    assert!(started.contains("backend=\"epoll\""), "{started}");
    assert!(
        started.contains("io_uring is unavailable") && started.contains("not permitted"),
        "the startup line must say why: {started}"
    );
}

#[test]
fn forced_io_uring_where_it_is_denied_fails_with_a_clear_error() {
    let rt = &runtimes()[0];
    let dir = TempDir::new("backend-forced");
    let output = Command::new(without_io_uring())
        .arg(binary())
        .arg("--runtime")
        .arg(rt)
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .args([
            "--skip-fork",
            "--log-driver",
            "stdout",
            "--io-backend",
            "uring",
        ])
        .output()
        .expect("run ringmon");
    // Refused before the fork: the launcher itself fails, as a client
    // starting the server would see.
    assert!(!output.status.success(), "ringmon must refuse to start");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("io_uring setup") && text.contains("not permitted"),
        "{text}"
    );
}
