//! ringmon-demo: the README's first command. Starts ringmon the way CRI-O's
//! client does, runs one busybox container through it, and prints the
//! container's CRI log and exit code.
//!
//! Usage: ringmon-demo [--binary PATH] [--runtime PATH]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ringmon::client::Client;

fn main() {
    let mut binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ringmon")))
        .unwrap_or_else(|| PathBuf::from("ringmon"));
    let mut runtime = PathBuf::from("/usr/sbin/runc");
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--binary", Some(v)) => binary = v.into(),
            ("--runtime", Some(v)) => runtime = v.into(),
            _ => {
                eprintln!("usage: ringmon-demo [--binary PATH] [--runtime PATH]");
                std::process::exit(2);
            }
        }
    }
    let base = std::env::temp_dir().join(format!("ringmon-demo-{}", std::process::id()));
    let run_dir = base.join("run");
    let root = base.join("root");
    std::fs::create_dir_all(&base).unwrap();

    println!(
        "$ {} --runtime {} --runtime-dir {}",
        binary.display(),
        runtime.display(),
        run_dir.display()
    );
    let pid = ringmon::fixture::launch_server(&binary, &runtime, &run_dir, &root);

    let bundle = ringmon::fixture::make_bundle(
        &base,
        &[
            "/bin/sh",
            "-c",
            "echo hello from $(hostname); echo to stderr >&2; exit 7",
        ],
        false,
    );
    let id = format!("ringmon-demo-{}", std::process::id());
    let log = base.join("ctr.log");
    let exit = base.join("exit");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let socket = run_dir.join("conmon.sock");
        let client = Client::connect_when_ready(&socket, Duration::from_secs(5))
            .await
            .expect("ringmon answers on its socket");
        let v = client.version(false).await.expect("version");
        println!(
            "ringmon {} (pid {}) answered version",
            v.version, v.process_id
        );
        let cpid = client
            .create_container(&ringmon::fixture::cri_request(&id, &bundle, &exit, &log))
            .await
            .expect("createContainer");
        println!("createContainer: container {id} has pid {cpid}");
    });

    run(&runtime, &root, &["start", &id]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !exit.exists() {
        assert!(Instant::now() < deadline, "no exit file");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("--- CRI log {}:", log.display());
    print!("{}", std::fs::read_to_string(&log).unwrap());
    println!("--- exit file: {}", std::fs::read_to_string(&exit).unwrap());
    run(&runtime, &root, &["delete", "-f", &id]);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = std::fs::remove_dir_all(&base);
}

fn run(runtime: &Path, root: &Path, args: &[&str]) {
    let out = Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("run runtime");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        runtime.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
