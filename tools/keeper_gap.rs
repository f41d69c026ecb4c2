//! ringmon-keeper-gap: how long a `kill -9` of the worker interrupts the
//! service (issue 16).
//!
//! Starts a ringmon server the way the Go client does (the pidfile names the
//! keeper), one container that writes a short line every millisecond, and
//! then `--kills` times: SIGKILL to the worker (the keeper's child named
//! `conmonrs`) and two clocks started at the kill:
//!
//! - **next log byte**: once the killed worker is gone (no later write can
//!   come from it), the log's size is taken; the gap ends when the log grows
//!   past it (polled every 100 µs; past the smaller size if the new worker
//!   first cut a torn last record), i.e. when the new worker wrote the
//!   container's next output.
//! - **version**: a second thread dials `conmon.sock` and calls `version`
//!   until one answers (each attempt over a new connection, as CRI-O dials
//!   per call; the keeper's listener queues the connection meanwhile).
//!
//! Each worker serves `--worker-age-ms` (default 2 s) before it is killed:
//! the keeper restarts a worker at once unless workers keep dying within 1 s
//! of their start (a crash loop), when it backs off; shorter ages measure
//! that back-off instead. 20 kills take about a minute.
//! The table gives median and max of each gap, and the keeper's RSS at the
//! end. The container is a busybox shell loop (`usleep 1000`), so "every
//! millisecond" is at least a millisecond: the log gap includes up to one
//! line period. Run it on a quiet machine; it measures wall time.
//!
//! With `--burst-mib N` it measures loss instead: one container writes N MiB
//! of numbered lines as fast as busybox can (`seq -w | sed`), the worker is
//! killed `--kills` times at even steps of the log's growth, and once the
//! container exited the CRI log is read back record by record and compared
//! with what the container wrote: bytes lost, lines duplicated or out of
//! order, malformed records.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use ringmon::client::Client;

#[derive(Parser)]
#[command(
    name = "ringmon-keeper-gap",
    about = "Time from a kill -9 of ringmon's worker to the next log byte and to `version` answering",
    after_help = "Examples:\n  \
        cargo build --release --bin ringmon --bin ringmon-keeper-gap\n  \
        target/release/ringmon-keeper-gap\n  \
        target/release/ringmon-keeper-gap --runtime /usr/bin/crun --kills 20\n  \
        target/release/ringmon-keeper-gap --binary /usr/local/bin/ringmon --kills 50\n  \
        target/release/ringmon-keeper-gap --worker-age-ms 200   # the crash-loop back-off"
)]
struct Args {
    /// The ringmon binary (default: `ringmon` beside this program).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The OCI runtime.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// How many kills to measure.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Least time a worker serves before it is killed. The keeper restarts
    /// a worker at once unless workers keep dying within 1 s of their
    /// start; then it backs off (100 ms doubling up to 5 s). Below 1000
    /// this measures that back-off, not the resumption.
    #[arg(long, default_value_t = 2_000)]
    worker_age_ms: u64,
    /// Bound on each wait (new worker, log growth, version answer).
    #[arg(long, default_value_t = 20)]
    timeout_secs: u64,
    /// Measure loss instead of gaps: a burst of this many MiB of numbered
    /// lines with the kills spread over it (the log is checked line by line
    /// afterwards; it takes about 2.3 times the burst on disk).
    #[arg(long)]
    burst_mib: Option<u64>,
}

/// Padding after each burst line's number.
const BURST_PAD: &str = "abcdefghijklmnopqrstuvw";

/// What a burst's log held, compared with what the container wrote.
#[derive(Default)]
struct BurstReport {
    written_lines: u64,
    written_bytes: u64,
    logged_bytes: u64,
    lines: u64,
    missing_lines: u64,
    duplicate_or_reordered: u64,
    malformed: u64,
    kills: usize,
    seconds: f64,
}

/// Reads a CRI log's stdout lines (P records joined) and checks them
/// against `1..=lines`, each `{n:0width$} {BURST_PAD}`.
fn check_burst_log(
    log: &Path,
    lines: u64,
    width: usize,
    report: &mut BurstReport,
) -> Result<(), String> {
    use std::io::BufRead;
    let file = fs::File::open(log).map_err(|e| format!("open {}: {e}", log.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut record = Vec::new();
    let mut line = Vec::new();
    let mut expected = 1u64;
    let mut check_line = |line: &[u8], report: &mut BurstReport| {
        report.logged_bytes += line.len() as u64 + 1;
        let number = (line.len() == width + 1 + BURST_PAD.len()
            && line[width] == b' '
            && &line[width + 1..] == BURST_PAD.as_bytes())
        .then(|| {
            std::str::from_utf8(&line[..width])
                .ok()?
                .parse::<u64>()
                .ok()
        })
        .flatten();
        match number {
            None => report.malformed += 1,
            Some(n) if n < expected => report.duplicate_or_reordered += 1,
            Some(n) => {
                report.missing_lines += n - expected;
                report.lines += 1;
                expected = n + 1;
            }
        }
    };
    loop {
        record.clear();
        let n = reader
            .read_until(b'\n', &mut record)
            .map_err(|e| format!("read {}: {e}", log.display()))?;
        if n == 0 {
            break;
        }
        if record.last() != Some(&b'\n') {
            report.malformed += 1;
            break;
        }
        let mut fields = record[..record.len() - 1].splitn(4, |&b| b == b' ');
        let (Some(_ts), Some(stream), Some(tag), Some(content)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            report.malformed += 1;
            continue;
        };
        if stream != b"stdout" {
            continue;
        }
        line.extend_from_slice(content);
        if tag == b"F" {
            check_line(&line, report);
            line.clear();
        }
    }
    if !line.is_empty() {
        check_line(&line, report);
    }
    report.missing_lines += (lines + 1).saturating_sub(expected);
    Ok(())
}

/// The loss over `--kills` kills spread across a `--burst-mib` burst.
fn burst(
    args: &Args,
    keeper: u32,
    base: &Path,
    socket: &Path,
    root: &Path,
    id: &str,
    mib: u64,
) -> Result<BurstReport, String> {
    let limit = Duration::from_secs(args.timeout_secs);
    wait_for(limit, Duration::from_millis(1), || worker_of(keeper))
        .ok_or_else(|| format!("keeper {keeper} started no worker (is this a keeper build?)"))?;
    version_answer_time(socket, limit).ok_or("the server does not answer version")?;
    // About 32 bytes a line; `seq -w` pads every number to the width of
    // the last one.
    let lines = ((mib << 20) / 32).max(1);
    let width = lines.to_string().len();
    let script = format!("/bin/busybox seq -w 1 {lines} | /bin/busybox sed 's/$/ {BURST_PAD}/'");
    let bundle = ringmon::fixture::make_bundle(base, &["/bin/sh", "-c", &script], false);
    let log = base.join("ctr.log");
    let req = ringmon::fixture::cri_request(id, &bundle, &base.join("exit"), &log);
    create_container(socket, &req)?;
    let started = Instant::now();
    if !runtime_cmd(&args.runtime, root, &["start", id]).success() {
        return Err(format!("runtime start {id} failed"));
    }
    let mut report = BurstReport {
        written_lines: lines,
        written_bytes: lines * (width as u64 + 1 + BURST_PAD.len() as u64 + 1),
        ..BurstReport::default()
    };
    // The CRI log is about 2.3 times the output (a timestamp, the stream
    // and the tag per line); kill at even steps of a little less.
    let log_total = report.written_bytes * 11 / 5;
    let step = log_total / (args.kills as u64 + 1);
    let exit = base.join("exit");
    for n in 1..=args.kills as u64 {
        let reached = wait_for(Duration::from_secs(600), Duration::from_millis(2), || {
            (log_size(&log) >= n * step || exit.exists()).then_some(())
        });
        if reached.is_none() || exit.exists() {
            break;
        }
        let worker = worker_of(keeper).ok_or("no worker to kill")?;
        kill(Pid::from_raw(worker as i32), Signal::SIGKILL)
            .map_err(|e| format!("kill -9 {worker}: {e}"))?;
        report.kills += 1;
        wait_for(limit, Duration::from_micros(50), || {
            gone(worker).then_some(())
        })
        .ok_or_else(|| format!("worker {worker} did not die"))?;
        wait_for(limit, Duration::from_millis(1), || {
            worker_of(keeper).filter(|&w| w != worker)
        })
        .ok_or_else(|| format!("kill {n}: no new worker"))?;
        eprintln!("kill {n:>3} at {} MiB of log", log_size(&log) >> 20);
    }
    wait_for(Duration::from_secs(900), Duration::from_millis(10), || {
        exit.exists().then_some(())
    })
    .ok_or("the burst container did not exit")?;
    report.seconds = started.elapsed().as_secs_f64();
    let code = fs::read_to_string(&exit).unwrap_or_default();
    if code.trim() != "0" {
        return Err(format!("the burst container exited with {code:?}"));
    }
    check_burst_log(&log, lines, width, &mut report)?;
    Ok(report)
}

/// The keeper's worker: its child whose process name is `conmonrs`.
fn worker_of(keeper: u32) -> Option<u32> {
    let entries = fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(e.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        let ppid: u32 = fields.next()?.parse().ok()?;
        (ppid == keeper && name == "conmonrs" && state != "Z").then_some(pid)
    })
}

/// Whether `pid` no longer runs (gone or a zombie).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

fn wait_for<T>(limit: Duration, step: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}

fn log_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Calls `version` over new connections until one answers; returns when.
fn version_answer_time(socket: &Path, limit: Duration) -> Option<Instant> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let deadline = Instant::now() + limit;
    tokio::task::LocalSet::new().block_on(&rt, async {
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let call = async {
                let client = Client::connect(socket).await?;
                client.version(false).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(left, call).await {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        None
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `createContainer` over a new connection.
fn create_container(socket: &Path, req: &ringmon::client::CreateRequest) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new()
        .block_on(&rt, async {
            Client::connect(socket)
                .await?
                .create_container(req)
                .await
                .map(|_| ())
        })
        .map_err(|e| format!("createContainer: {e}"))
}

fn runtime_cmd(runtime: &Path, root: &Path, args: &[&str]) -> std::process::ExitStatus {
    Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", runtime.display()))
}

/// The gaps of `--kills` kills (kill → next log byte, kill → `version`).
fn measure(
    args: &Args,
    keeper: u32,
    base: &Path,
    socket: &Path,
    root: &Path,
    id: &str,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let limit = Duration::from_secs(args.timeout_secs);
    let first_worker = wait_for(limit, Duration::from_millis(1), || worker_of(keeper))
        .ok_or_else(|| format!("keeper {keeper} started no worker (is this a keeper build?)"))?;
    version_answer_time(socket, limit).ok_or("the server does not answer version")?;

    let bundle = ringmon::fixture::make_bundle(
        base,
        &[
            "/bin/sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); /bin/busybox usleep 1000; done",
        ],
        false,
    );
    let log = base.join("ctr.log");
    let req = ringmon::fixture::cri_request(id, &bundle, &base.join("exit"), &log);
    create_container(socket, &req)?;
    if !runtime_cmd(&args.runtime, root, &["start", id]).success() {
        return Err(format!("runtime start {id} failed"));
    }
    wait_for(limit, Duration::from_millis(1), || {
        (log_size(&log) > 0).then_some(())
    })
    .ok_or("the container does not log")?;

    let (mut log_gaps, mut version_gaps) = (Vec::new(), Vec::new());
    let mut worker = first_worker;
    let mut worker_seen = Instant::now();
    let age = Duration::from_millis(args.worker_age_ms);
    for n in 1..=args.kills {
        std::thread::sleep(age.saturating_sub(worker_seen.elapsed()));
        let socket_for_thread = socket.to_path_buf();
        let (tx, rx) = mpsc::channel();
        let killed_at = Instant::now();
        kill(Pid::from_raw(worker as i32), Signal::SIGKILL)
            .map_err(|e| format!("kill -9 {worker}: {e}"))?;
        std::thread::spawn(move || {
            let _ = tx.send(version_answer_time(&socket_for_thread, limit));
        });
        wait_for(limit, Duration::from_micros(50), || {
            gone(worker).then_some(())
        })
        .ok_or_else(|| format!("worker {worker} did not die"))?;
        // The new worker may first cut a torn last record: growth counts
        // from the smallest size seen.
        let mut smallest = log_size(&log);
        let grew = wait_for(limit, Duration::from_micros(100), || {
            let now = log_size(&log);
            smallest = smallest.min(now);
            (now > smallest).then(Instant::now)
        })
        .ok_or_else(|| format!("kill {n}: the log did not grow within {limit:?}"))?;
        let answered = rx
            .recv()
            .ok()
            .flatten()
            .ok_or_else(|| format!("kill {n}: version did not answer within {limit:?}"))?;
        log_gaps.push(grew - killed_at);
        version_gaps.push(answered - killed_at);
        let old = worker;
        worker = wait_for(limit, Duration::from_millis(1), || {
            worker_of(keeper).filter(|&w| w != old)
        })
        .ok_or_else(|| format!("kill {n}: no new worker"))?;
        worker_seen = Instant::now();
        eprintln!(
            "kill {n:>3}: next log byte {}, version {}",
            ms(grew - killed_at),
            ms(answered - killed_at)
        );
    }

    Ok((log_gaps, version_gaps))
}

/// Deletes the container, stops the keeper and removes the scratch
/// directory (also after a failed step: `measure` returns its error).
struct Cleanup {
    runtime: PathBuf,
    root: PathBuf,
    id: String,
    keeper: u32,
    base: PathBuf,
    limit: Duration,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        runtime_cmd(&self.runtime, &self.root, &["delete", "-f", &self.id]);
        let _ = kill(Pid::from_raw(self.keeper as i32), Signal::SIGTERM);
        let keeper = self.keeper;
        let _ = wait_for(self.limit, Duration::from_millis(5), || {
            gone(keeper).then_some(())
        });
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn main() {
    let args = Args::parse();
    assert!(args.kills > 0, "--kills must be at least 1");
    let binary = args.binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ringmon")))
            .unwrap_or_else(|| PathBuf::from("ringmon"))
    });
    let limit = Duration::from_secs(args.timeout_secs);
    let base = std::env::temp_dir().join(format!("ringmon-keeper-gap-{}", std::process::id()));
    let run_dir = base.join("run");
    let root = base.join("root");
    fs::create_dir_all(&run_dir).unwrap();
    let socket = run_dir.join("conmon.sock");

    let keeper = ringmon::fixture::launch_server(&binary, &args.runtime, &run_dir, &root);
    let id = format!("keeper-gap-{}", std::process::id());
    let cleanup = Cleanup {
        runtime: args.runtime.clone(),
        root: root.clone(),
        id: id.clone(),
        keeper,
        base: base.clone(),
        limit,
    };
    if let Some(mib) = args.burst_mib {
        let report = burst(&args, keeper, &base, &socket, &root, &id, mib);
        // The keeper sheds the pages the container's exit made it touch
        // once it has been quiet for 5 s: its settled size.
        std::thread::sleep(Duration::from_secs(6));
        let rss = vm_rss_kib(keeper);
        drop(cleanup);
        let report = report.unwrap_or_else(|e| {
            eprintln!("ringmon-keeper-gap: {e}");
            std::process::exit(1)
        });
        println!(
            "runtime: {}   burst: {mib} MiB   kills: {}   binary: {}   {:.1} s",
            args.runtime.display(),
            report.kills,
            binary.display(),
            report.seconds
        );
        println!(
            "written by the container: {} bytes, {} lines",
            report.written_bytes, report.written_lines
        );
        println!(
            "logged:                   {} bytes, {} lines",
            report.logged_bytes, report.lines
        );
        println!(
            "lost lines: {}   duplicated or reordered lines: {}   malformed lines: {}",
            report.missing_lines, report.duplicate_or_reordered, report.malformed
        );
        if let Some(rss) = rss {
            println!("keeper RSS 6 s after the container's exit: {rss} KiB");
        }
        let exact = report.missing_lines == 0
            && report.duplicate_or_reordered == 0
            && report.malformed == 0
            && report.logged_bytes == report.written_bytes;
        std::process::exit(if exact { 0 } else { 1 });
    }
    let measured = measure(&args, keeper, &base, &socket, &root, &id);
    let rss = vm_rss_kib(keeper);
    runtime_cmd(&args.runtime, &root, &["kill", &id, "KILL"]);
    let _ = wait_for(limit, Duration::from_millis(5), || {
        base.join("exit").exists().then_some(())
    });
    // Before any exit: the release profile aborts on panic, which would
    // leave the server and the container behind.
    drop(cleanup);
    let (mut log_gaps, mut version_gaps) = measured.unwrap_or_else(|e| {
        eprintln!("ringmon-keeper-gap: {e}");
        std::process::exit(1)
    });

    let (log_median, log_max) = median_max(&mut log_gaps);
    let (version_median, version_max) = median_max(&mut version_gaps);
    println!(
        "runtime: {}   kills: {}   binary: {}",
        args.runtime.display(),
        args.kills,
        binary.display()
    );
    println!(
        "{:<28} {:>10} {:>10}",
        "gap from the kill to", "median", "max"
    );
    println!(
        "{:<28} {:>10} {:>10}",
        "the next log byte",
        ms(log_median),
        ms(log_max)
    );
    println!(
        "{:<28} {:>10} {:>10}",
        "`version` answering",
        ms(version_median),
        ms(version_max)
    );
    if let Some(rss) = rss {
        println!("keeper RSS after the kills: {rss} KiB");
    }
}
