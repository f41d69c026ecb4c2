//! Process model: version output, fork + pidfile, long socket paths,
//! legacy flags, shutdown.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn version_json_is_one_json_line() {
    let out = Command::new(binary())
        .arg("--version-json")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stderr.is_empty());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.ends_with("}\n") && s.lines().count() == 1, "{s}");
    assert!(s.starts_with("{\"verbose\":false,\"version\":\""), "{s}");
    assert!(s.contains("\"cargo_tree\":\"\""), "{s}");
    let full = Command::new(binary())
        .args(["--version-json", "full"])
        .output()
        .unwrap();
    let s = String::from_utf8(full.stdout).unwrap();
    assert!(s.starts_with("{\"verbose\":true"), "{s}");
    let text = Command::new(binary()).arg("--version").output().unwrap();
    let s = String::from_utf8(text.stdout).unwrap();
    // conmon's version line first (CRI-O's probe), then conmon-rs's text.
    assert!(s.starts_with("conmon version 2.1.6+ringmon."), "{s}");
    assert!(s.lines().nth(1).unwrap().starts_with("version: "), "{s}");
    assert!(s.contains("\ncommit: ") && s.contains("\nrustc "), "{s}");
}

#[test]
fn long_run_dir_and_legacy_cgroup_manager_flag() {
    let rt = &runtimes()[0];
    let long = "x".repeat(90);
    let dir = TempDir::new("long");
    let run_dir = dir.path().join(&long).join(&long);
    let status = Command::new(binary())
        .arg("--runtime")
        .arg(rt)
        .arg("--runtime-dir")
        .arg(&run_dir)
        .args(["--cgroup-manager", "cgroupfs", "--log-driver", "none"])
        .status()
        .unwrap();
    assert!(status.success());
    let pidfile = std::fs::read_to_string(run_dir.join("pidfile")).unwrap();
    assert!(!pidfile.ends_with('\n'));
    let pid: u32 = pidfile.parse().unwrap();
    let socket = run_dir.join("conmon.sock");
    assert!(socket.as_os_str().len() > 108);
    run_local(async {
        let start = Instant::now();
        let client = loop {
            match Client::connect(&socket).await {
                Ok(c) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(2) => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(client.version(false).await.unwrap().process_id, pid);
    });
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !socket.exists()));
}

#[test]
fn inherited_fds_are_closed_and_comm_is_conmonrs() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.serving_pid())).unwrap();
    assert_eq!(comm.trim(), "conmonrs");
}

/// Threads of a server as CRI-O runs it (one per pod): the control thread
/// alone while it holds no container, one engine worker with the first
/// containers, whatever `--engine-workers` allows (issue 17).
#[test]
fn engine_workers_start_with_the_containers() {
    let rt = &runtimes()[0];
    let dir = TempDir::new("lean");
    let server = Server::start_with(rt, &["--engine-workers", "4"]);
    let threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", server.serving_pid()))
            .unwrap()
            .map(|task| {
                let comm = task.unwrap().path().join("comm");
                std::fs::read_to_string(comm).unwrap().trim().to_string()
            })
            .collect()
    };
    assert_eq!(threads(), ["conmonrs"], "idle server");
    for name in ["first", "second"] {
        let bundle_dir = dir.path().join(name);
        std::fs::create_dir(&bundle_dir).unwrap();
        start_sleeping_container(&server, &bundle_dir);
    }
    let mut running = threads();
    running.sort();
    assert_eq!(running, ["conmonrs", "ringmon-io-0"], "two containers");
}
