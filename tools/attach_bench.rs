//! ringmon-attach-bench: container output throughput with attach clients.
//!
//! For each scenario a busybox container writes `--mib` MiB of 64-byte lines
//! (`yes | head -c`) through a ringmon server while attach clients read:
//! none, 1, 4 and 16 clients reading at full speed, and one client that
//! never reads. Reported: MB/s from `runtime start` to the exit file, and
//! for every reading client whether it received the exact byte stream. The
//! CRI log is checked to be complete in every run. Medians of `--runs`.
//!
//! Usage: ringmon-attach-bench [--binary PATH] [--runtime PATH] [--mib N] [--runs N]

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, MsgFlags};
use ringmon::client::Client;

const LINE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_\n";

struct Args {
    binary: PathBuf,
    runtime: PathBuf,
    mib: u64,
    runs: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        binary: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ringmon")))
            .unwrap_or_else(|| PathBuf::from("ringmon")),
        runtime: PathBuf::from("/usr/sbin/runc"),
        mib: 256,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--binary" => a.binary = v.into(),
            "--runtime" => a.runtime = v.into(),
            "--mib" => a.mib = v.parse().expect("--mib N"),
            "--runs" => a.runs = v.parse().expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Reads packets until the done packet (or EOF, which means the server
/// dropped this client); returns (stdout bytes, content matched, done seen).
fn read_client(fd: OwnedFd) -> (u64, bool, bool) {
    let mut buf = vec![0u8; 8193];
    let (mut total, mut exact) = (0u64, true);
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(_) => return (total, exact, false),
        };
        if n == 0 {
            return (total, exact, false); // dropped: EOF without done packet
        }
        match buf[0] {
            0 => return (total, exact, true),
            2 => {
                for (i, b) in buf[1..n].iter().enumerate() {
                    if *b != LINE[((total + i as u64) % LINE.len() as u64) as usize] {
                        exact = false;
                    }
                }
                total += (n - 1) as u64;
            }
            _ => exact = false,
        }
    }
}

struct RunResult {
    secs: f64,
    clients_exact: bool,
    dropped: usize,
    log_complete: bool,
}

async fn run_once(
    args: &Args,
    client: &Client,
    base: &Path,
    readers: usize,
    stuck: bool,
    n: usize,
) -> RunResult {
    let dir = base.join(format!("run-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = args.mib * 1024 * 1024;
    let script = format!(
        "yes {} | head -c {bytes}",
        std::str::from_utf8(&LINE[..LINE.len() - 1]).unwrap()
    );
    let bundle = ringmon::fixture::make_bundle(&dir, &["/bin/sh", "-c", &script], false);
    let id = format!("attach-bench-{}-{n}", std::process::id());
    let log = dir.join("ctr.log");
    let exit = dir.join("exit");
    client
        .create_container(&ringmon::fixture::cri_request(&id, &bundle, &exit, &log))
        .await
        .expect("createContainer");
    let sock = dir.join("attach");
    let mut threads = Vec::new();
    let mut stuck_fd = None;
    if readers > 0 || stuck {
        client
            .attach_container(&id, &sock, "", false)
            .await
            .expect("attach");
        for _ in 0..readers {
            let fd = ringmon::sys::socket::connect_seqpacket(&sock).unwrap();
            threads.push(std::thread::spawn(move || read_client(fd)));
        }
        if stuck {
            stuck_fd = Some(ringmon::sys::socket::connect_seqpacket(&sock).unwrap());
        }
        // Connections are accepted asynchronously; give the accept loop a
        // moment so that every client sees the stream from its first byte.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = Instant::now();
    let root = base.join("root");
    let out = Command::new(&args.runtime)
        .arg("--root")
        .arg(&root)
        .args(["start", &id])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    while !exit.exists() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(stuck_fd);
    let results: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    // A dropped client must still have received a correct prefix.
    let dropped = results.iter().filter(|(_, _, done)| !done).count();
    let clients_exact = results
        .iter()
        .all(|(total, exact, done)| *exact && (!done || *total == bytes));
    let log_complete = cri_payload_len(&log) == bytes;
    let _ = Command::new(&args.runtime)
        .arg("--root")
        .arg(&root)
        .args(["delete", "-f", &id])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    RunResult {
        secs,
        clients_exact,
        dropped,
        log_complete,
    }
}

/// Payload bytes in a CRI log (partial records lose their added newline).
fn cri_payload_len(log: &Path) -> u64 {
    let data = std::fs::read(log).unwrap_or_default();
    let mut total = 0u64;
    for rec in data.split_inclusive(|b| *b == b'\n') {
        let mut parts = rec.splitn(4, |b| *b == b' ');
        let (_, _, tag, content) = (parts.next(), parts.next(), parts.next(), parts.next());
        let len = content.map_or(0, |c| c.len()) as u64;
        total += if tag == Some(b"P") { len - 1 } else { len };
    }
    total
}

fn main() {
    let args = parse_args();
    let base = std::env::temp_dir().join(format!("ringmon-attach-bench-{}", std::process::id()));
    let run_dir = base.join("srv");
    std::fs::create_dir_all(&base).unwrap();
    let pid =
        ringmon::fixture::launch_server(&args.binary, &args.runtime, &run_dir, &base.join("root"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let socket = run_dir.join("conmon.sock");
        let client = Client::connect_when_ready(&socket, Duration::from_secs(10))
            .await
            .expect("ringmon answers on its socket");
        println!(
            "{} MiB of 64-byte lines per run, median of {} runs, runtime {}",
            args.mib,
            args.runs,
            args.runtime.display()
        );
        println!("| attach clients | MB/s | clients byte-exact | reading clients dropped | log complete |");
        println!("|---|---|---|---|---|");
        let mut n = 0;
        for (label, readers, stuck) in [
            ("none", 0, false),
            ("1 reading", 1, false),
            ("4 reading", 4, false),
            ("16 reading", 16, false),
            ("1 never reading", 0, true),
        ] {
            let mut secs = Vec::new();
            let (mut exact, mut complete, mut dropped) = (true, true, 0);
            for _ in 0..args.runs {
                let r = run_once(&args, &client, &base, readers, stuck, n).await;
                n += 1;
                secs.push(r.secs);
                exact &= r.clients_exact;
                dropped += r.dropped;
                complete &= r.log_complete;
            }
            secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mbps = (args.mib * 1024 * 1024) as f64 / secs[secs.len() / 2] / 1e6;
            let exact = if readers == 0 {
                "n/a".to_string()
            } else {
                exact.to_string()
            };
            println!("| {label} | {mbps:.0} | {exact} | {dropped} | {complete} |");
        }
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&base);
}
