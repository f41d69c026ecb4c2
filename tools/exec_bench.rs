//! ringmon-exec-bench: what execSyncContainer costs on top of the runtime.
//!
//! For each runtime a ringmon server runs one busybox container
//! (`sleep 600`). Then, alternating, `--samples` times each:
//! - an execSync of `/busybox true` over one RPC connection (round trip as
//!   the client sees it), and
//! - a bare `<runtime> --root R exec <id> /busybox true` (what any monitor
//!   has to pay; the runtime waits for the process itself).
//!
//! Reported: medians and p99 of both and their difference (the overhead of
//! ringmon: exec -d, pid file, reaping, output collection, RPC). Then
//! `--execs` sequential execSyncs (half of them with a terminal) and the
//! server's VmRSS before and after them.
//!
//! Exec sessions (the createExecSession extension) the same way: a third
//! sample set, alternating with the two above, times a detached session of
//! `/busybox true` from createExecSession to the answer of a waiting
//! execSessionStatus (start, exit, drained output, exit file); then
//! `--sessions` sequential sessions (every other one with a terminal) and
//! the RSS before and after (the server keeps the last 128 ended sessions
//! of a container).
//!
//! Usage: ringmon-exec-bench [--binary PATH] [--runtime PATH]... [--samples N] [--execs N] [--sessions N]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringmon::client::{Client, CreateExecSessionRequest, ExecSyncRequest};

struct Args {
    binary: PathBuf,
    runtimes: Vec<PathBuf>,
    samples: usize,
    execs: usize,
    sessions: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        binary: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ringmon")))
            .unwrap_or_else(|| PathBuf::from("ringmon")),
        runtimes: Vec::new(),
        samples: 50,
        execs: 1000,
        sessions: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--binary" => a.binary = v.into(),
            "--runtime" => a.runtimes.push(v.into()),
            "--samples" => a.samples = v.parse().expect("--samples N"),
            "--execs" => a.execs = v.parse().expect("--execs N"),
            "--sessions" => a.sessions = v.parse().expect("--sessions N"),
            other => panic!("unknown argument {other}"),
        }
    }
    if a.runtimes.is_empty() {
        a.runtimes = ["/usr/sbin/runc", "/usr/bin/crun"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
    }
    assert!(a.samples > 0, "--samples must be positive");
    a
}

/// VmRSS of the server's processes (keeper and worker), summed.
fn rss_kib(pid: u32) -> u64 {
    ringmon::fixture::server_processes(pid)
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Median and p99 (nearest rank) of `v`, in milliseconds.
fn stats(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = if v.len() % 2 == 1 {
        ms(v[v.len() / 2])
    } else {
        (ms(v[v.len() / 2 - 1]) + ms(v[v.len() / 2])) / 2.0
    };
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    (median, ms(v[rank.clamp(1, v.len()) - 1]))
}

fn runtime(rt: &Path, root: &Path) -> Command {
    let mut c = Command::new(rt);
    c.arg("--root").arg(root);
    c
}

struct Row {
    runtime: String,
    exec_sync: (f64, f64),
    bare: (f64, f64),
    rss_before: u64,
    rss_after: u64,
    execs_secs: f64,
    session: (f64, f64),
    sessions_rss_after: u64,
    sessions_secs: f64,
}

fn bench(args: &Args, rt: &Path) -> Row {
    let name = rt.file_name().unwrap().to_string_lossy().into_owned();
    let base =
        std::env::temp_dir().join(format!("ringmon-exec-bench-{name}-{}", std::process::id()));
    let run_dir = base.join("srv");
    let root = base.join("root");
    std::fs::create_dir_all(&base).unwrap();
    let pid = ringmon::fixture::launch_server(&args.binary, rt, &run_dir, &root);
    let id = format!("exec-bench-{name}-{}", std::process::id());
    let bundle = ringmon::fixture::make_bundle(&base, &["/bin/sleep", "600"], false);
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let row = tokio::task::LocalSet::new().block_on(&tokio_rt, async {
        let client =
            Client::connect_when_ready(&run_dir.join("conmon.sock"), Duration::from_secs(10))
                .await
                .expect("ringmon answers on its socket");
        client
            .create_container(&ringmon::fixture::cri_request(
                &id,
                &bundle,
                &base.join("exit"),
                &base.join("ctr.log"),
            ))
            .await
            .expect("createContainer");
        let out = runtime(rt, &root).args(["start", &id]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let req = |terminal: bool| ExecSyncRequest {
            id: id.clone(),
            command: vec!["/busybox".into(), "true".into()],
            timeout_sec: 30,
            terminal,
            cgroup_manager: 1,
            ..Default::default()
        };
        let pipes = req(false);
        let exec_sync = |r: ExecSyncRequest| {
            let client = &client;
            async move {
                let t = Instant::now();
                let reply = client.exec_sync(&r).await.expect("execSync");
                assert_eq!(reply.exit_code, 0, "{reply:?}");
                t.elapsed()
            }
        };
        let bare = || {
            let t = Instant::now();
            let out = runtime(rt, &root)
                .args(["exec", &id, "/busybox", "true"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed()
        };
        let session_no = std::cell::Cell::new(0u64);
        let session = |terminal: bool| {
            let client = &client;
            let no = session_no.get();
            session_no.set(no + 1);
            let req = CreateExecSessionRequest {
                id: id.clone(),
                session_id: format!("bench-{no}"),
                command: vec!["/busybox".into(), "true".into()],
                terminal,
                cgroup_manager: 1,
                exit_paths: vec![base.join("session.exit").display().to_string()],
                ..Default::default()
            };
            async move {
                let t = Instant::now();
                let (sid, _) = client
                    .create_exec_session(&req)
                    .await
                    .expect("createExecSession");
                let status = client
                    .exec_session_status(&req.id, &sid, true)
                    .await
                    .expect("execSessionStatus");
                assert_eq!(status.exit_code, 0, "{status:?}");
                t.elapsed()
            }
        };
        // Warm up every path (page cache, allocator pools).
        for _ in 0..5 {
            exec_sync(pipes.clone()).await;
            session(false).await;
            bare();
        }
        let (mut ours, mut sessions, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..args.samples {
            if i % 2 == 0 {
                ours.push(exec_sync(pipes.clone()).await);
                sessions.push(session(false).await);
                theirs.push(bare());
            } else {
                theirs.push(bare());
                sessions.push(session(false).await);
                ours.push(exec_sync(pipes.clone()).await);
            }
        }
        let rss_before = rss_kib(pid);
        let t = Instant::now();
        for i in 0..args.execs {
            exec_sync(req(i % 2 == 1)).await;
        }
        let execs_secs = t.elapsed().as_secs_f64();
        let rss_after = rss_kib(pid);
        let t = Instant::now();
        for i in 0..args.sessions {
            session(i % 2 == 1).await;
        }
        let sessions_secs = t.elapsed().as_secs_f64();
        Row {
            runtime: name.clone(),
            exec_sync: stats(&mut ours),
            bare: stats(&mut theirs),
            rss_before,
            rss_after,
            execs_secs,
            session: stats(&mut sessions),
            sessions_rss_after: rss_kib(pid),
            sessions_secs,
        }
    });
    let _ = runtime(rt, &root).args(["delete", "-f", &id]).output();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&base);
    row
}

fn main() {
    let args = parse_args();
    let rows: Vec<Row> = args.runtimes.iter().map(|rt| bench(&args, rt)).collect();
    println!(
        "execSync of `/busybox true` vs bare `<runtime> exec`: {} samples each, alternating; \
         then {} sequential execSyncs (every other one with a terminal)",
        args.samples, args.execs
    );
    println!();
    println!(
        "| runtime | execSync median ms | bare exec median ms | overhead median ms \
         | execSync p99 ms | bare exec p99 ms | overhead p99 ms \
         | server RSS before KiB | RSS after {} execs KiB | execs/s |",
        args.execs
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2} | {:+.2} | {:.2} | {:.2} | {:+.2} | {} | {} | {:.0} |",
            r.runtime,
            r.exec_sync.0,
            r.bare.0,
            r.exec_sync.0 - r.bare.0,
            r.exec_sync.1,
            r.bare.1,
            r.exec_sync.1 - r.bare.1,
            r.rss_before,
            r.rss_after,
            args.execs as f64 / r.execs_secs,
        );
    }
    println!();
    println!(
        "Exec sessions: createExecSession + waiting execSessionStatus of `/busybox true` ({} samples, \
         alternating with the above); then {} sequential sessions (every other one with a terminal)",
        args.samples, args.sessions
    );
    println!();
    println!(
        "| runtime | session median ms | overhead vs bare exec median ms | session p99 ms \
         | overhead p99 ms | RSS before KiB | RSS after {} sessions KiB | sessions/s |",
        args.sessions
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:+.2} | {:.2} | {:+.2} | {} | {} | {:.0} |",
            r.runtime,
            r.session.0,
            r.session.0 - r.bare.0,
            r.session.1,
            r.session.1 - r.bare.1,
            r.rss_after,
            r.sessions_rss_after,
            args.sessions as f64 / r.sessions_secs,
        );
    }
}
