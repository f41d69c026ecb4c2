//! A runtime that misbehaves during `create` (floods its stderr, hangs) or a
//! client that gives up on a create: the server answers, keeps the
//! container's log clean, frees the id and leaves nothing behind.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A runtime wrapper whose `create` misbehaves as the files in `dir` say:
/// `noisy` writes 200 KB and a marker line to stderr and a marker to stdout
/// first, `slow` sleeps 3 s first, `hang` never finishes (it becomes a
/// `sleep 613`); with `hang-delete`, `delete` never finishes (it becomes a
/// `sleep 617`). Every other call goes straight to the real runtime.
fn wrapper(dir: &Path, real: &Path) -> PathBuf {
    let script = dir.join("runtime-wrapper");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             for a; do [ \"$a\" = create ] && {{\n\
             [ -f {d}/noisy ] && {{ head -c 200000 /dev/zero | tr '\\0' x >&2; echo; echo RUNTIME-STDERR-MARK >&2; echo RUNTIME-STDOUT-MARK; }}\n\
             [ -f {d}/slow ] && sleep 3\n\
             [ -f {d}/hang ] && exec sleep 613\n\
             }}; [ \"$a\" = delete ] && [ -f {d}/hang-delete ] && exec sleep 617; done\n\
             exec {real} \"$@\"\n",
            d = dir.display(),
            real = real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Creates `req`, retrying while the id is still held by the cleanup of an
/// earlier abandoned create (at most `limit`).
fn create_retrying(server: &Server, req: &CreateRequest, limit: Duration) -> Result<u32, String> {
    let deadline = Instant::now() + limit;
    loop {
        let res = run_local_value(async { server.client().await.create_container(req).await });
        match res {
            Err(e) if e.to_string().contains("already in use") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

fn run_local_value<T, F: std::future::Future<Output = T>>(f: F) -> T {
    let mut out = None;
    run_local(async { out = Some(f.await) });
    out.unwrap()
}

#[test]
fn runtime_output_during_create_is_drained_and_kept_out_of_the_log() {
    for_each_runtime(|real| {
        let rec = TempDir::new("noisy");
        fs::write(rec.path().join("noisy"), b"").unwrap();
        let server = Server::start(&wrapper(rec.path(), real));
        let dir = TempDir::new("noisyc");
        let id = container_id();
        let bundle = make_bundle(
            dir.path(),
            &["/bin/echo", "hello from the container"],
            false,
        );
        let req = basic_request(dir.path(), &id, &bundle, false);
        // 200 KB is three pipes' worth: before the drain, create hung here.
        let created = run_local_value(async {
            let c = server.client().await;
            tokio::time::timeout(Duration::from_secs(30), c.create_container(&req)).await
        });
        let pid = created
            .expect("create finished although the runtime filled its stderr pipe")
            .expect("create succeeded");
        assert!(pid > 1);
        server.start_container(&id);
        wait_for_file(&dir.path().join("exit"), Duration::from_secs(20));
        let log = fs::read(dir.path().join("ctr.log")).unwrap();
        let (stdout, stderr) = parse_cri(&log);
        assert_eq!(stdout, b"hello from the container\n");
        assert!(
            stderr.is_empty(),
            "the runtime's stderr reached the container's log: {} bytes, starting {:?}",
            stderr.len(),
            String::from_utf8_lossy(&stderr[..stderr.len().min(80)])
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn a_failing_runtime_reports_the_end_of_a_long_stderr() {
    let real = &runtimes()[0];
    let rec = TempDir::new("noisyfail");
    fs::write(rec.path().join("noisy"), b"").unwrap();
    let server = Server::start(&wrapper(rec.path(), real));
    let dir = TempDir::new("noisyfailc");
    let id = container_id();
    // No config.json: the real runtime fails after the wrapper's noise.
    let bundle = dir.path().join("empty-bundle");
    fs::create_dir_all(&bundle).unwrap();
    let req = basic_request(dir.path(), &id, &bundle, false);
    let err = run_local_value(async {
        let c = server.client().await;
        tokio::time::timeout(Duration::from_secs(30), c.create_container(&req)).await
    })
    .expect("create finished")
    .expect_err("create of a bundle without config.json fails")
    .to_string();
    assert!(err.contains("child command exited with"), "{err}");
    // The runtime's own verdict comes after 200 KB of noise: it is kept.
    assert!(err.contains("RUNTIME-STDERR-MARK"), "{err:.300}");
    assert!(
        err.contains("config.json"),
        "{}",
        &err[err.len().saturating_sub(300)..]
    );
    assert!(err.len() < 70 * 1024, "error of {} bytes", err.len());
}

#[test]
fn a_hanging_runtime_is_killed_at_the_runtime_timeout() {
    let real = &runtimes()[0];
    let rec = TempDir::new("hang");
    fs::write(rec.path().join("hang"), b"").unwrap();
    let server = Server::start_with(&wrapper(rec.path(), real), &["--runtime-timeout", "2"]);
    let dir = TempDir::new("hangc");
    let id = container_id();
    let bundle = make_bundle(dir.path(), &["/bin/echo", "after the retry"], false);
    let req = basic_request(dir.path(), &id, &bundle, false);
    let started = Instant::now();
    let err = run_local_value(async {
        let c = server.client().await;
        tokio::time::timeout(Duration::from_secs(30), c.create_container(&req)).await
    })
    .expect("create finished although the runtime hangs")
    .expect_err("a hanging runtime fails the create")
    .to_string();
    assert!(
        err.contains("did not finish within 2s") && err.contains("--runtime-timeout"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(5), || processes_with_argv(&[
            "sleep", "613"
        ])
        .is_empty()),
        "the hung runtime still runs: {:?}",
        processes_with_argv(&["sleep", "613"])
    );
    // The server still serves, and the id is free again.
    fs::remove_file(rec.path().join("hang")).unwrap();
    create_retrying(&server, &req, Duration::from_secs(10)).expect("create after the timeout");
    server.start_container(&id);
    wait_for_file(&dir.path().join("exit"), Duration::from_secs(20));
    let (stdout, _) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
    assert_eq!(stdout, b"after the retry\n");
    server.runtime_cmd(&["delete", "-f", &id]);
}

#[test]
fn a_create_abandoned_by_its_client_frees_the_id_and_leaves_no_container() {
    for_each_runtime(|real| {
        let rec = TempDir::new("cancel");
        fs::write(rec.path().join("slow"), b"").unwrap();
        let server = Server::start(&wrapper(rec.path(), real));
        let dir = TempDir::new("cancelc");
        let id = container_id();
        let bundle = make_bundle(dir.path(), &["/bin/echo", "second try"], false);
        let req = basic_request(dir.path(), &id, &bundle, false);
        // The client gives up while the runtime is still in its create, and
        // its connection closes with the runtime that ran the test.
        let gave_up = run_local_value(async {
            let c = server.client().await;
            tokio::time::timeout(Duration::from_millis(500), c.create_container(&req))
                .await
                .is_err()
        });
        assert!(gave_up);
        // Past the wrapper's sleep: an unkilled runtime would have created it.
        std::thread::sleep(Duration::from_secs(4));
        let state = server.runtime_cmd(&["state", &id]);
        assert!(
            !state.status.success(),
            "the abandoned create left a container: {}",
            String::from_utf8_lossy(&state.stdout)
        );
        fs::remove_file(rec.path().join("slow")).unwrap();
        create_retrying(&server, &req, Duration::from_secs(10))
            .expect("the id of an abandoned create is free again");
        server.start_container(&id);
        wait_for_file(&dir.path().join("exit"), Duration::from_secs(20));
        let (stdout, _) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert_eq!(stdout, b"second try\n");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn a_hanging_delete_after_an_abandoned_create_is_killed_at_the_runtime_timeout() {
    let real = &runtimes()[0];
    let rec = TempDir::new("hangdel");
    fs::write(rec.path().join("slow"), b"").unwrap();
    fs::write(rec.path().join("hang-delete"), b"").unwrap();
    let server = Server::start_with(&wrapper(rec.path(), real), &["--runtime-timeout", "2"]);
    let dir = TempDir::new("hangdelc");
    let id = container_id();
    let bundle = make_bundle(dir.path(), &["/bin/echo", "after the hung delete"], false);
    let req = basic_request(dir.path(), &id, &bundle, false);
    // The client gives up during the (slow) create: the server deletes the
    // leftover through the runtime, whose delete hangs.
    let gave_up = run_local_value(async {
        let c = server.client().await;
        tokio::time::timeout(Duration::from_millis(500), c.create_container(&req))
            .await
            .is_err()
    });
    assert!(gave_up);
    assert!(
        wait_until(Duration::from_secs(5), || !processes_with_argv(&[
            "sleep", "617"
        ])
        .is_empty()),
        "the delete of the abandoned create never started"
    );
    // Past the 2 s runtime timeout (plus slack), the delete is killed.
    let killed = wait_until(Duration::from_secs(8), || {
        processes_with_argv(&["sleep", "617"]).is_empty()
    });
    let left = processes_with_argv(&["sleep", "617"]);
    for pid in &left {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(
        killed,
        "the hung delete still runs past the runtime timeout: {left:?}"
    );
    // The id is free again and the server still creates.
    fs::remove_file(rec.path().join("slow")).unwrap();
    fs::remove_file(rec.path().join("hang-delete")).unwrap();
    create_retrying(&server, &req, Duration::from_secs(10)).expect("create after the hung delete");
    server.start_container(&id);
    wait_for_file(&dir.path().join("exit"), Duration::from_secs(20));
    let (stdout, _) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
    assert_eq!(stdout, b"after the hung delete\n");
    server.runtime_cmd(&["delete", "-f", &id]);
}
