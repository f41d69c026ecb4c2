//! ringmon-demo: the README's first command. Starts ringmon the way CRI-O's
//! client does, runs one busybox container through it, attaches to it, runs
//! an execSync in it while it waits for input, types a line into it through
//! the attach socket, and prints what the attach client received, the
//! container's CRI log and its exit code.
//!
//! Usage: ringmon-demo [--binary PATH] [--runtime PATH]

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::MsgFlags;
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
            "echo hello from $(hostname); echo to stderr >&2; read -r line; \
             echo \"attach said: $line\"; exit 7",
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
        let mut request = ringmon::fixture::cri_request(&id, &bundle, &exit, &log);
        request.stdin = true;
        let cpid = client
            .create_container(&request)
            .await
            .expect("createContainer");
        println!("createContainer: container {id} has pid {cpid}");

        let attach_path = base.join("attach");
        client
            .attach_container(&id, &attach_path, "", false)
            .await
            .expect("attachContainer");
        let attach = connect_seqpacket(&attach_path);
        println!("attachContainer: attached at {}", attach_path.display());

        run(&runtime, &root, &["start", &id]);
        // The container now waits for a line on its stdin.
        let exec = client
            .exec_sync(&ringmon::client::ExecSyncRequest {
                id: id.clone(),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo hello from exec in $(hostname)".into(),
                ],
                timeout_sec: 10,
                cgroup_manager: 1,
                ..Default::default()
            })
            .await
            .expect("execSyncContainer");
        println!(
            "execSyncContainer: exit code {}, stdout {:?}",
            exec.exit_code,
            String::from_utf8_lossy(&exec.stdout)
        );

        nix::sys::socket::send(
            attach.as_raw_fd(),
            b"hi from the attach client\n",
            MsgFlags::empty(),
        )
        .expect("send through the attach socket");
        println!("--- attach client received:");
        let mut buf = vec![0u8; 8192];
        loop {
            let n = nix::sys::socket::recv(attach.as_raw_fd(), &mut buf, MsgFlags::empty())
                .expect("recv from the attach socket");
            match buf[..n].first() {
                None | Some(0) => break,
                Some(2) => print!("[stdout] {}", String::from_utf8_lossy(&buf[1..n])),
                Some(3) => print!("[stderr] {}", String::from_utf8_lossy(&buf[1..n])),
                Some(other) => println!("[packet type {other}]"),
            }
        }
        println!("--- attach: done packet (the container's output ended)");
    });

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

/// A blocking SOCK_SEQPACKET connection to the attach socket at `path`.
fn connect_seqpacket(path: &Path) -> OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = UnixAddr::new(path).expect("attach socket path");
    connect(fd.as_raw_fd(), &addr).expect("connect to the attach socket");
    fd
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
