//! ringmon-sidebyside: ringmon (each engine backend), the C conmon and no
//! monitor at all, measured side by side on the same containers.
//!
//! Workloads (`--workload`, each repeated `--runs` times; the tables show
//! medians; within a run the rows take turns, so drifting background load
//! spreads over all of them):
//!
//! - **throughput**: one container writes `--bytes` of fixed-size lines
//!   (`--line-sizes`). MB/s is bytes divided by the time from the first byte
//!   seen in the log (its size polled every millisecond) to completion: the
//!   exit file for the monitors (both write it only after the log holds
//!   every byte), the exit of the last process for the no-monitor rows. The
//!   "from start" column times from `runtime start` (or the producer's spawn)
//!   instead, so it includes the runtime's start latency. Monitor CPU is the
//!   schedstat time of all its threads over that run (see `procfs`), per GB;
//!   peak RSS is `VmHWM` after a reset at the start of the run. Every log is
//!   compared byte by byte with the produced file.
//! - **density**: `--containers` containers each write `--line-rate`
//!   100-byte lines per second for `--duration` seconds, as one burst per
//!   second. All containers are created and started first and wait on a FIFO;
//!   released together, each first sleeps its own fraction of a second, so
//!   the bursts are spread evenly over every second. Monitor CPU, context
//!   switches and the logged line count are read over a window of whole
//!   seconds inside the steady state (all containers alive and logging).
//!   Each log must hold exactly `line-rate × duration` intact lines.
//! - **idle**: `--idle-containers` `sleep` containers: RSS and PSS of the
//!   monitor processes, fds and threads, and kernel memory
//!   (`Slab + PageTables + KernelStack` of /proc/meminfo, before creating
//!   the containers vs. with all of them running) per container. The same
//!   containers without any monitor (stdio on /dev/null) give the kernel
//!   memory baseline that the containers themselves cost; the column "above
//!   no monitor" is the monitor's share. /proc/meminfo is machine-wide, so
//!   run it on a quiet machine.
//! - **pods** (only with `--workload pods`, not part of `all`): CRI-O's
//!   model, one monitor per pod. For each `--pods` count N, N monitors each
//!   with one container: for the ringmon rows N servers, each launched as
//!   the conmon-rs Go client launches it (its argv order, its own process
//!   group, its own runtime dir and runtime root), the container created
//!   over its RPC; for the per-container rows one process per container, as
//!   in the other workloads. Each container is the density workload's
//!   logging script waiting on its FIFO: a shell blocked on a read, with no
//!   output, which to the monitor is the same as a `sleep`. After a 2 s
//!   settle, per pod (mean over the N pods): PSS, RSS, threads and fds of
//!   the pod's monitor process(es). Per launch: launch → first `version`
//!   answer (servers only; the per-container monitors have no RPC, their
//!   first answer is the sync pipe after `runtime create`), and launch →
//!   container created; median and p95 pooled over every launch of every
//!   run. Then the FIFOs are released and the logging phase runs exactly as
//!   the density workload's (`--line-rate`, `--duration`): CPU (schedstat)
//!   and context switches (voluntary + involuntary, all threads) of all the
//!   monitors per logged line, and every log checked line by line.
//!
//! The producer is busybox `cat` of a pre-generated file in the rootfs, the
//! same binary and file for every row (the no-monitor rows run it on the
//! host). It was the cheapest candidate measured: busybox `cat` moves a file
//! into a pipe with `sendfile(2)` (page references, no copy in user space),
//! 256 MiB of 1 KiB lines in 0.05–0.07 s on this machine, while `yes | head
//! -c` needs 1.8 s of CPU for the same bytes and `dd` copies through user
//! space. The cheaper the producer, the more of the measured cost is the
//! monitor's.
//!
//! Row families (`--monitors`): `ringmon` (the RPC server, one row per
//! `--backends` entry), `ringmon-conmon` ("ringmon (conmon mode)": the
//! ringmon binary started exactly as the C conmon rows start conmon),
//! `conmon` (the C conmon) and `raw` (no monitor).
//!
//! The C conmon is started as podman starts it (`--api-version 1`, `-c -u
//! -r -b -p -n --exit-dir --persist-dir --full-attach -l k8s-file:PATH
//! --log-level --runtime-arg --root=ROOT --conmon-pidfile`), and the tool
//! waits on conmon's sync pipe (`_OCI_SYNCPIPE`) for the container pid, as
//! podman does, before running `runtime start`. The conmon-mode rows run the
//! ringmon binary through that same launcher (`monitors::Conmon`), so argv,
//! pipes, waits and log checks are identical. Two deviations from podman:
//! its default makes conmon fsync the log after the container exits, which
//! the ringmon server does not do, so the tool passes `--no-sync-log` to
//! both per-container monitors (`--conmon-sync-log` restores podman's
//! default); and in the throughput workload an `--exit-command` (this
//! binary) records the monitor's CPU time and peak RSS just before it
//! exits, when /proc still has them.
//!
//! The tool is a child subreaper, so the daemonised monitors are its
//! children and are reaped; Ctrl-C (SIGINT, SIGTERM, SIGHUP) stops the run
//! at the next step and then deletes every container of every runtime root
//! it used and stops every monitor; a second Ctrl-C does that at once.

#[path = "sidebyside/cri.rs"]
mod cri;
#[path = "sidebyside/interrupt.rs"]
mod interrupt;
#[path = "sidebyside/monitors.rs"]
mod monitors;
#[path = "sidebyside/probe.rs"]
mod probe;
#[path = "sidebyside/procfs.rs"]
mod procfs;
#[path = "sidebyside/report.rs"]
mod report;

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use monitors::{Conmon, RingmonServer, Rootfs, Runtime};
use report::{DensityRow, IdleRow, PodsRow, Report, ThroughputRow};

/// The hidden first argument that makes this binary the C conmon's exit
/// command (see `procfs::write_parent_snapshot`).
pub const SNAPSHOT_SUBCOMMAND: &str = "__conmon-exit-snapshot";
pub const NO_MONITOR: &str = "no monitor";
const CONMON: &str = "conmon (C)";
const RINGMON_CONMON: &str = "ringmon (conmon mode)";
const BUSYBOX: &str = "/usr/bin/busybox";
/// Pipe size of the "1 MiB pipe" row (the machine's `fs.pipe-max-size`).
const BIG_PIPE: i32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Throughput,
    Density,
    Idle,
    /// One monitor per pod (CRI-O's model); only when asked for.
    Pods,
    /// Throughput, density and idle (not pods).
    All,
}

/// Families of rows; `ringmon` means one row per `--backends` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Family {
    /// The ringmon server (conmon-rs RPC), one row per backend.
    Ringmon,
    /// ringmon started as podman starts the C conmon: one process per
    /// container, conmon's command line and sync pipe.
    RingmonConmon,
    /// The C conmon, one process per container, podman's command line.
    Conmon,
    /// No monitor: the producer writing straight to a file or into `cat`.
    Raw,
}

/// Side-by-side benchmark of ringmon, the C conmon and no monitor.
#[derive(Debug, Parser)]
#[command(name = "ringmon-sidebyside")]
struct Args {
    /// Which workload to run.
    #[arg(long, value_enum, default_value = "all")]
    workload: Workload,
    /// Runs per row; tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// OCI runtime.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// ringmon binary (default: `ringmon` next to this tool).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The C conmon binary.
    #[arg(long, default_value = "/usr/bin/conmon")]
    conmon: PathBuf,
    /// Row families to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ringmon,ringmon-conmon,conmon,raw"
    )]
    monitors: Vec<Family>,
    /// ringmon `--io-backend` values, one row each; a backend the server
    /// refuses gives a failed row with its message.
    #[arg(long, value_delimiter = ',', default_value = "uring,epoll")]
    backends: Vec<String>,
    /// ringmon `--engine-workers` (default: the server's own default).
    #[arg(long)]
    engine_workers: Option<usize>,
    /// Throughput: bytes per container (suffixes K, M, G: powers of 1024).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    bytes: u64,
    /// Throughput: line sizes, each a row.
    #[arg(long, value_delimiter = ',', default_value = "100,1K,16K,64K", value_parser = parse_size)]
    line_sizes: Vec<u64>,
    /// Density: container counts, each a row.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    containers: Vec<usize>,
    /// Density: seconds each container logs (at least 3).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Density: 100-byte lines per second per container, written as one
    /// burst per second.
    #[arg(long, default_value_t = 20)]
    line_rate: u32,
    /// Idle: containers per run.
    #[arg(long, default_value_t = 1000)]
    idle_containers: usize,
    /// Pods: pod counts (one monitor and one container per pod), each a row.
    #[arg(long, value_delimiter = ',', default_value = "30,100")]
    pods: Vec<usize>,
    /// Also write results.md, CSV, JSON and SVG plots into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Let the C conmon fsync each log after its container exits (podman's
    /// default; ringmon never fsyncs logs).
    #[arg(long)]
    conmon_sync_log: bool,
    /// Keep the scratch directory (logs, bundles) for inspection.
    #[arg(long)]
    keep: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("size '{s}': {e} (use e.g. 100, 16K, 256M)"))?;
    Ok(n << shift)
}

pub use interrupt::interrupted;

/// The first termination signal asks the run to stop and clean up; a second
/// one (or a run that does not stop within a minute) cleans up from the
/// watcher thread and exits.
fn install_signal_watcher() {
    interrupt::install_watcher(
        || {
            eprintln!("\ninterrupted: removing containers and monitors (again to force)");
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(60));
                monitors::cleanup_all();
                std::process::exit(130);
            });
        },
        || {
            monitors::cleanup_all();
            std::process::exit(130);
        },
    );
}

type Failure = String;

fn check_interrupt() -> Result<(), Failure> {
    if interrupted() {
        Err("interrupted".to_string())
    } else {
        Ok(())
    }
}

/// Sleeps `d`, waking every 100 ms to stop early on Ctrl-C.
async fn pause(d: Duration) -> Result<(), Failure> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Median of one field over samples that have it.
fn median_of<S>(samples: &[S], f: impl Fn(&S) -> Option<f64>) -> Option<f64> {
    median(samples.iter().filter_map(f).collect())
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Shared state of one invocation.
struct Bench {
    args: Args,
    ringmon: PathBuf,
    base: PathBuf,
    rootfs: Rootfs,
    /// Unique suffix for ids, FIFOs and scratch directories.
    serial: u64,
}

impl Bench {
    fn next(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn has(&self, family: Family) -> bool {
        self.args.monitors.contains(&family)
    }

    fn scratch(&mut self, what: &str) -> PathBuf {
        let n = self.next();
        let dir = self.base.join(format!("{what}-{n}"));
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    async fn launch_ringmon(&mut self, backend: &str) -> Result<RingmonServer, Failure> {
        let dir = self.scratch(&format!("ringmon-{backend}"));
        RingmonServer::launch(
            &self.ringmon,
            &self.args.runtime,
            &dir,
            backend,
            self.args.engine_workers,
        )
        .await
    }

    /// A launcher of `kind`, one monitor process per container.
    fn conmon(&mut self, kind: PerContainer) -> Conmon {
        let (binary, scratch) = match kind {
            PerContainer::CConmon => (self.args.conmon.clone(), "conmon"),
            PerContainer::RingmonConmonMode => (self.ringmon.clone(), "ringmon-conmon"),
        };
        let dir = self.scratch(scratch);
        Conmon::new(
            kind.label(),
            &binary,
            &self.args.runtime,
            &dir,
            self.args.conmon_sync_log,
        )
    }

    /// The per-container monitors selected, in row order.
    fn per_container(&self) -> Vec<PerContainer> {
        let mut kinds = Vec::new();
        if self.has(Family::RingmonConmon) {
            kinds.push(PerContainer::RingmonConmonMode);
        }
        if self.has(Family::Conmon) {
            kinds.push(PerContainer::CConmon);
        }
        kinds
    }
}

/// The monitors started once per container with the C conmon's command
/// line (podman's argv and sync pipe). Both go through the same launcher
/// (`monitors::Conmon`); only the program and the label differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PerContainer {
    CConmon,
    RingmonConmonMode,
}

impl PerContainer {
    fn label(self) -> &'static str {
        match self {
            PerContainer::CConmon => CONMON,
            PerContainer::RingmonConmonMode => RINGMON_CONMON,
        }
    }
}

/// What one row of the density and idle workloads is measured with.
#[derive(Clone, Debug)]
enum RowMonitor {
    /// One ringmon server with this `--io-backend`.
    Server(String),
    PerContainer(PerContainer),
    /// The containers alone, stdio on /dev/null.
    Unmonitored,
}

impl RowMonitor {
    fn label(&self) -> String {
        match self {
            RowMonitor::Server(backend) => ringmon_label(backend),
            RowMonitor::PerContainer(kind) => kind.label().to_string(),
            RowMonitor::Unmonitored => NO_MONITOR.to_string(),
        }
    }
}

fn ringmon_label(backend: &str) -> String {
    format!("ringmon ({backend})")
}

// ---------------------------------------------------------------- throughput

/// One throughput run.
#[derive(Clone, Debug, Default)]
struct TransferSample {
    secs_from_first_byte: f64,
    secs_from_start: f64,
    cpu_ns: Option<u64>,
    peak_rss_kib: Option<u64>,
    exact: bool,
}

/// Seconds from the first byte seen in `output`, and from `started` (just
/// before `runtime start` or the producer was spawned), until `done` is
/// true, polled every millisecond; `runtime start` (if any) runs meanwhile
/// and must succeed.
async fn time_transfer(
    started: Instant,
    output: &Path,
    mut starter: Option<Child>,
    mut done: impl FnMut() -> bool,
    mut each_poll: impl FnMut(),
) -> Result<(f64, f64), Failure> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first_byte = None;
    loop {
        each_poll();
        let finished = done();
        let now = Instant::now();
        if first_byte.is_none() && (finished || file_len(output) > 0) {
            first_byte = Some(now);
        }
        if let Some(child) = starter.as_mut() {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                if !status.success() {
                    return Err(format!("runtime start failed: {status}"));
                }
                starter = None;
            }
        }
        if finished && starter.is_none() {
            let first = first_byte.unwrap_or(now);
            // A transfer finished within one poll has no measurable duration.
            let from_first = (now - first).as_secs_f64().max(1e-3);
            return Ok((from_first, (now - started).as_secs_f64()));
        }
        check_interrupt()?;
        if now > deadline {
            return Err("no completion within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn spawn_start(runtime: &Runtime, id: &str) -> Result<Child, Failure> {
    Command::new(&runtime.path)
        .arg("--root")
        .arg(&runtime.root)
        .args(["start", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn runtime start: {e}"))
}

async fn ringmon_transfer(
    bench: &mut Bench,
    server: &RingmonServer,
    data: &Path,
    in_rootfs: &str,
) -> Result<TransferSample, Failure> {
    let dir = bench.scratch("tp");
    let id = format!("tp-{}", bench.next());
    let bundle = bench.rootfs.bundle(&dir, &["/bin/cat", in_rootfs]);
    let (log, exit) = (dir.join("ctr.log"), dir.join("exit"));
    server.create(&id, &bundle, &log, &exit).await?;
    let result = async {
        let pids = server.process_pids();
        for pid in &pids {
            procfs::reset_peak_rss(*pid).map_err(|e| format!("clear_refs: {e}"))?;
        }
        let cpu = || -> Result<u64, Failure> {
            pids.iter()
                .map(|p| procfs::cpu_ns(*p).ok_or_else(|| Failure::from("ringmon is gone")))
                .sum()
        };
        let cpu0 = cpu()?;
        let started = Instant::now();
        let starter = spawn_start(&server.runtime, &id)?;
        let (from_first, from_start) =
            time_transfer(started, &log, Some(starter), || exit.exists(), || {}).await?;
        let cpu1 = cpu()?;
        let check = cri::check_cri_log(&log, data).map_err(|e| format!("read log: {e}"))?;
        Ok(TransferSample {
            secs_from_first_byte: from_first,
            secs_from_start: from_start,
            cpu_ns: Some(cpu1.saturating_sub(cpu0)),
            peak_rss_kib: pids
                .iter()
                .map(|p| procfs::status_field(*p, "VmHWM:"))
                .sum(),
            exact: check.exact,
        })
    }
    .await;
    server.runtime.delete(&id);
    let _ = fs::remove_dir_all(&dir);
    result
}

async fn conmon_transfer(
    bench: &mut Bench,
    conmon: &Conmon,
    data: &Path,
    in_rootfs: &str,
) -> Result<TransferSample, Failure> {
    let dir = bench.scratch("tp");
    let id = format!("tp-{}", bench.next());
    let bundle = bench.rootfs.bundle(&dir, &["/bin/cat", in_rootfs]);
    let (log, snapshot) = (dir.join("ctr.log"), dir.join("monitor.snapshot"));
    let ctr = conmon.create(&id, &bundle, &log, Some(&snapshot))?;
    let result = async {
        procfs::reset_peak_rss(ctr.pid).map_err(|e| format!("clear_refs: {e}"))?;
        let cpu0 = procfs::cpu_ns(ctr.pid).ok_or_else(|| format!("{} is gone", conmon.label))?;
        let started = Instant::now();
        let starter = spawn_start(&conmon.runtime, &id)?;
        let (from_first, from_start) = time_transfer(
            started,
            &log,
            Some(starter),
            || ctr.exit_file.exists(),
            || {},
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let (cpu1, hwm) = loop {
            if let Some(s) = procfs::read_snapshot(&snapshot) {
                break s;
            }
            check_interrupt()?;
            if Instant::now() > deadline {
                return Err(format!("{}'s exit command left no snapshot", conmon.label));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let check = cri::check_cri_log(&log, data).map_err(|e| format!("read log: {e}"))?;
        Ok(TransferSample {
            secs_from_first_byte: from_first,
            secs_from_start: from_start,
            cpu_ns: Some(cpu1.saturating_sub(cpu0)),
            peak_rss_kib: Some(hwm),
            exact: check.exact,
        })
    }
    .await;
    monitors::reap_within(ctr.pid, Duration::from_secs(10));
    monitors::forget_monitor(ctr.pid);
    conmon.runtime.delete(&id);
    let _ = fs::remove_dir_all(&dir);
    result
}

/// The no-monitor rows: `producer > out`, or `producer | cat > out` with
/// the pipe at its default size (64 KiB) or at `pipe_size`, set with
/// F_SETPIPE_SZ before either process starts. `cat` is GNU cat, the relay a
/// shell user would write.
#[derive(Clone, Copy, Debug)]
enum RawPath {
    Direct,
    Relay { pipe_size: Option<i32> },
}

impl RawPath {
    fn label(self) -> String {
        match self {
            RawPath::Direct => "no monitor: producer to file".into(),
            RawPath::Relay { pipe_size: None } => "no monitor: producer piped to cat".into(),
            RawPath::Relay { pipe_size: Some(n) } => {
                format!(
                    "no monitor: piped to cat, {} pipe",
                    report::size_label(n as u64)
                )
            }
        }
    }
}

/// True once `pid` (our child) exited; it stays a zombie, so its /proc
/// entries (schedstat) remain readable until it is reaped.
fn exited_unreaped(pid: u32) -> bool {
    matches!(
        waitid(
            Id::Pid(Pid::from_raw(pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
        ),
        Ok(status) if status != WaitStatus::StillAlive
    )
}

async fn raw_transfer(
    bench: &mut Bench,
    path: RawPath,
    data: &Path,
) -> Result<TransferSample, Failure> {
    let dir = bench.scratch("raw");
    let out = dir.join("out");
    let out_file = fs::File::create(&out).map_err(|e| e.to_string())?;
    let producer_cmd = |stdout: Stdio| {
        let mut c = Command::new(BUSYBOX);
        c.arg("cat").arg(data).stdin(Stdio::null()).stdout(stdout);
        c
    };
    let started = Instant::now();
    let result = match path {
        RawPath::Direct => {
            let mut producer = producer_cmd(out_file.into())
                .spawn()
                .map_err(|e| format!("spawn busybox: {e}"))?;
            let timing = time_transfer(
                started,
                &out,
                None,
                || matches!(producer.try_wait(), Ok(Some(_))),
                || {},
            )
            .await;
            let _ = producer.kill();
            let _ = producer.wait();
            timing.map(|(f, s)| (f, s, None, None))
        }
        RawPath::Relay { pipe_size } => {
            let (read_end, write_end): (OwnedFd, OwnedFd) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
            if let Some(size) = pipe_size {
                fcntl(&write_end, FcntlArg::F_SETPIPE_SZ(size))
                    .map_err(|e| format!("F_SETPIPE_SZ {size}: {e}"))?;
            }
            // Each Command owns its pipe end until dropped: both are
            // spawned and dropped here so only the children hold the pipe.
            let mut relay = Command::new("cat")
                .stdin(Stdio::from(read_end))
                .stdout(out_file)
                .spawn()
                .map_err(|e| format!("spawn cat: {e}"))?;
            let mut producer = match producer_cmd(Stdio::from(write_end)).spawn() {
                Ok(p) => p,
                Err(e) => {
                    let _ = relay.kill();
                    let _ = relay.wait();
                    return Err(format!("spawn busybox: {e}"));
                }
            };
            let relay_pid = relay.id();
            let mut peak = 0u64;
            let mut relay_cpu = None;
            let timing = time_transfer(
                started,
                &out,
                None,
                || {
                    if relay_cpu.is_none() && exited_unreaped(relay_pid) {
                        relay_cpu = procfs::cpu_ns(relay_pid);
                    }
                    relay_cpu.is_some() && matches!(producer.try_wait(), Ok(Some(_)))
                },
                || {
                    // The peak RSS of a process is gone once it exited.
                    if let Some(kib) = procfs::status_field(relay_pid, "VmHWM:") {
                        peak = peak.max(kib);
                    }
                },
            )
            .await;
            for child in [&mut producer, &mut relay] {
                let _ = child.kill();
                let _ = child.wait();
            }
            timing.map(|(f, s)| (f, s, relay_cpu, Some(peak)))
        }
    };
    let sample = result.and_then(|(from_first, from_start, cpu, peak)| {
        let check = cri::check_plain_file(&out, data).map_err(|e| format!("read output: {e}"))?;
        Ok(TransferSample {
            secs_from_first_byte: from_first,
            secs_from_start: from_start,
            cpu_ns: cpu,
            peak_rss_kib: peak,
            exact: check.exact,
        })
    });
    let _ = fs::remove_dir_all(&dir);
    sample
}

/// What a throughput row is measured with.
enum TransferRow {
    Ringmon(Result<RingmonServer, Failure>),
    Conmon(Conmon),
    Raw(RawPath),
}

fn throughput_row(
    label: String,
    line_size: u64,
    bytes: u64,
    samples: &[TransferSample],
    error: Option<Failure>,
    runs: usize,
) -> ThroughputRow {
    let gb = bytes as f64 / 1e9;
    let mut row = ThroughputRow {
        monitor: label,
        line_size,
        bytes,
        runs,
        error,
        ..Default::default()
    };
    if row.error.is_none() {
        row.mbps = median_of(samples, |s| {
            Some(bytes as f64 / s.secs_from_first_byte / 1e6)
        });
        row.mbps_from_start = median_of(samples, |s| Some(bytes as f64 / s.secs_from_start / 1e6));
        row.cpu_s_per_gb = median_of(samples, |s| s.cpu_ns.map(|ns| ns as f64 / 1e9 / gb));
        row.peak_rss_kib = median_of(samples, |s| s.peak_rss_kib.map(|k| k as f64));
        row.exact = Some(samples.iter().all(|s| s.exact));
    }
    row
}

async fn throughput(bench: &mut Bench, report: &mut Report) -> Result<(), Failure> {
    let mut rows: Vec<(String, TransferRow)> = Vec::new();
    if bench.has(Family::Ringmon) {
        for backend in bench.args.backends.clone() {
            let server = bench.launch_ringmon(&backend).await;
            rows.push((ringmon_label(&backend), TransferRow::Ringmon(server)));
        }
    }
    for kind in bench.per_container() {
        let conmon = bench.conmon(kind);
        rows.push((kind.label().to_string(), TransferRow::Conmon(conmon)));
    }
    if bench.has(Family::Raw) {
        for path in [
            RawPath::Direct,
            RawPath::Relay { pipe_size: None },
            RawPath::Relay {
                pipe_size: Some(BIG_PIPE),
            },
        ] {
            rows.push((path.label(), TransferRow::Raw(path)));
        }
    }
    let runs = bench.args.runs;
    let mut outcome = Ok(());
    'sizes: for line_size in bench.args.line_sizes.clone() {
        if line_size < 2 {
            return Err(format!("line size {line_size} is below 2 bytes"));
        }
        let lines = (bench.args.bytes / line_size).max(1);
        let name = format!("data-{line_size}");
        let data = bench.rootfs.dir.join(&name);
        let bytes = cri::write_data_file(&data, line_size as usize, lines)
            .map_err(|e| format!("write {}: {e}", data.display()))?;
        let in_rootfs = format!("/{name}");
        eprintln!("throughput: {} lines of {line_size} B", lines);
        let mut samples: Vec<Vec<TransferSample>> = vec![Vec::new(); rows.len()];
        let mut errors: Vec<Option<Failure>> = vec![None; rows.len()];
        for run in 0..runs {
            for (i, (label, row)) in rows.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                let sample = match row {
                    TransferRow::Ringmon(Ok(server)) => {
                        ringmon_transfer(bench, server, &data, &in_rootfs).await
                    }
                    TransferRow::Ringmon(Err(e)) => Err(e.clone()),
                    TransferRow::Conmon(conmon) => {
                        conmon_transfer(bench, conmon, &data, &in_rootfs).await
                    }
                    TransferRow::Raw(path) => raw_transfer(bench, *path, &data).await,
                };
                match sample {
                    Ok(s) => {
                        eprintln!(
                            "  run {}/{runs} {label}: {:.0} MB/s{}",
                            run + 1,
                            bytes as f64 / s.secs_from_first_byte / 1e6,
                            if s.exact { "" } else { ", LOG NOT BYTE-EXACT" }
                        );
                        samples[i].push(s);
                    }
                    Err(e) => {
                        eprintln!("  run {}/{runs} {label}: failed: {e}", run + 1);
                        errors[i] = Some(e);
                    }
                }
                if interrupted() {
                    outcome = Err("interrupted".to_string());
                    break;
                }
            }
            if outcome.is_err() {
                break;
            }
        }
        for (i, (label, _)) in rows.iter().enumerate() {
            report.throughput.push(throughput_row(
                label.clone(),
                line_size,
                bytes,
                &samples[i],
                errors[i].clone(),
                runs,
            ));
        }
        let _ = fs::remove_file(&data);
        if outcome.is_err() {
            break 'sizes;
        }
    }
    for (_, row) in rows {
        if let TransferRow::Ringmon(Ok(server)) = row {
            server.shut_down(&[]);
        }
    }
    monitors::reap_orphans();
    outcome
}

// ------------------------------------------------------------------- density

/// The monitor of one density or idle run.
enum Fleet {
    Ringmon(RingmonServer),
    Conmon(Conmon, Vec<u32>),
    /// Containers created by the runtime directly, stdio on /dev/null.
    Unmonitored(Runtime),
}

impl Fleet {
    async fn new(bench: &mut Bench, monitor: &RowMonitor) -> Result<Fleet, Failure> {
        match monitor {
            RowMonitor::Server(backend) => Ok(Fleet::Ringmon(bench.launch_ringmon(backend).await?)),
            RowMonitor::PerContainer(kind) => Ok(Fleet::Conmon(bench.conmon(*kind), Vec::new())),
            RowMonitor::Unmonitored => {
                let dir = bench.scratch("unmonitored");
                let runtime = Runtime {
                    path: bench.args.runtime.clone(),
                    root: dir.join("root"),
                };
                monitors::register_runtime(&runtime);
                Ok(Fleet::Unmonitored(runtime))
            }
        }
    }

    fn runtime(&self) -> &Runtime {
        match self {
            Fleet::Ringmon(s) => &s.runtime,
            Fleet::Conmon(c, _) => &c.runtime,
            Fleet::Unmonitored(r) => r,
        }
    }

    /// Creates a container logging to `log`; returns its exit file.
    async fn create(&mut self, id: &str, bundle: &Path, log: &Path) -> Result<PathBuf, Failure> {
        match self {
            Fleet::Ringmon(server) => {
                let exit = bundle.join("exit");
                server.create(id, bundle, log, &exit).await?;
                Ok(exit)
            }
            Fleet::Conmon(conmon, pids) => {
                let ctr = conmon.create(id, bundle, log, None)?;
                pids.push(ctr.pid);
                Ok(ctr.exit_file)
            }
            Fleet::Unmonitored(runtime) => {
                runtime.create_unmonitored(id, bundle)?;
                Ok(bundle.join("no-exit-file"))
            }
        }
    }

    /// The monitor processes whose resources are counted.
    fn pids(&self) -> Vec<u32> {
        match self {
            Fleet::Ringmon(s) => s.process_pids(),
            Fleet::Conmon(_, pids) => pids.clone(),
            Fleet::Unmonitored(_) => Vec::new(),
        }
    }

    /// Launch → first `version` answer, for a server.
    fn launch_to_version(&self) -> Option<Duration> {
        match self {
            Fleet::Ringmon(s) => Some(s.launch_to_version),
            Fleet::Conmon(..) | Fleet::Unmonitored(_) => None,
        }
    }

    /// Deletes `ids`, stops the monitor(s) and, unless `keep`, removes the
    /// monitor's scratch directory (runtime dir, runtime root).
    fn shut_down_and_remove(self, ids: &[String], keep: bool) {
        let dir = match &self {
            Fleet::Ringmon(s) => Some(s.dir.clone()),
            Fleet::Conmon(c, _) => Some(c.dir.clone()),
            Fleet::Unmonitored(_) => None,
        };
        self.shut_down(ids);
        if let (Some(dir), false) = (dir, keep) {
            let _ = fs::remove_dir_all(dir);
        }
    }

    /// Deletes `ids` and stops the monitor(s).
    fn shut_down(self, ids: &[String]) {
        match self {
            Fleet::Ringmon(server) => server.shut_down(ids),
            Fleet::Conmon(conmon, pids) => {
                for id in ids {
                    conmon.runtime.delete(id);
                }
                // Each conmon exits once its container is gone.
                for pid in pids {
                    if !monitors::reap_within(pid, Duration::from_secs(5)) {
                        monitors::terminate(pid, Duration::from_secs(2));
                    }
                    monitors::forget_monitor(pid);
                }
            }
            Fleet::Unmonitored(runtime) => {
                for id in ids {
                    runtime.delete(id);
                }
            }
        }
        monitors::reap_orphans();
    }
}

/// RSS and PSS in KiB, each summed over the pids that still answer.
fn total_rss_pss_kib(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|&p| procfs::rss_pss_kib(p))
        .fold((0, 0), |(r, p), (r1, p1)| (r + r1, p + p1))
}

/// Sum of `reading` over the pids that still answer.
fn total(pids: &[u32], reading: impl Fn(u32) -> Option<u64>) -> u64 {
    pids.iter().filter_map(|&p| reading(p)).sum()
}

#[derive(Clone, Debug, Default)]
struct DensitySample {
    lines_per_s: f64,
    cpu_pct: f64,
    us_per_line: f64,
    ctx_per_s: f64,
    ctx_per_line: f64,
    rss_per_ctr_kib: f64,
    pss_per_ctr_kib: f64,
    complete: bool,
}

/// A 100-byte line (99 characters and the newline).
const DENSITY_LINE: &str =
    "density-line-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789-abcdefghij";

fn density_script(fifo: &str, phase_ms: u64, duration: u64, rate: u32) -> String {
    let burst = vec!["\"$l\""; rate as usize].join(" ");
    format!(
        "read _ < {fifo}; sleep {}.{:03}; l={DENSITY_LINE}; n=0; \
         while [ $n -lt {duration} ]; do printf '%s\\n' {burst}; n=$((n+1)); sleep 1; done",
        phase_ms / 1000,
        phase_ms % 1000
    )
}

/// Opens every FIFO for writing once its container is waiting on it
/// (O_NONBLOCK fails with ENXIO until a reader has it open); the returned
/// fds hold the containers until dropped.
async fn wait_for_readers(fifos: &[PathBuf]) -> Result<Vec<OwnedFd>, Failure> {
    let deadline = Instant::now() + Duration::from_secs(60 + fifos.len() as u64 / 10);
    let mut held = Vec::with_capacity(fifos.len());
    for fifo in fifos {
        loop {
            match nix::fcntl::open(
                fifo,
                OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => {
                    held.push(fd);
                    break;
                }
                Err(nix::errno::Errno::ENXIO) => {}
                Err(e) => return Err(format!("open {}: {e}", fifo.display())),
            }
            check_interrupt()?;
            if Instant::now() > deadline {
                return Err(format!("no container opened {}", fifo.display()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(held)
}

/// One logging container: its FIFO (in the shared rootfs) and its bundle
/// running the density script, the `index`-th of `count` (its phase).
fn logging_bundle(
    bench: &Bench,
    dir: &Path,
    tag: u64,
    index: usize,
    count: usize,
) -> Result<(String, PathBuf, PathBuf), Failure> {
    let id = format!("dn{tag}-{index}");
    let fifo_name = format!("{tag}-{index}");
    let fifo = bench.rootfs.dir.join("sync").join(&fifo_name);
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("mkfifo: {e}"))?;
    let phase_ms = (index as u64 * 1000) / count as u64;
    let script = density_script(
        &format!("/sync/{fifo_name}"),
        phase_ms,
        bench.args.duration,
        bench.args.line_rate,
    );
    let bundle = bench
        .rootfs
        .bundle(&dir.join(&id), &["/bin/sh", "-c", &script]);
    Ok((id, bundle, fifo))
}

/// Removes the FIFOs `logging_bundle` made for `count` containers.
fn remove_fifos(bench: &Bench, tag: u64, count: usize) {
    for i in 0..count {
        let _ = fs::remove_file(bench.rootfs.dir.join("sync").join(format!("{tag}-{i}")));
    }
}

/// The logging phase shared by the density and pods workloads: releases
/// the containers waiting on their FIFOs (by dropping `held`), reads the
/// monitors' CPU and context switches over whole seconds of steady state,
/// waits for every exit file and checks every log.
async fn measure_logging(
    bench: &Bench,
    held: Vec<OwnedFd>,
    pids: &[u32],
    logs: &[PathBuf],
    exits: &[PathBuf],
) -> Result<DensitySample, Failure> {
    let (duration, rate) = (bench.args.duration, bench.args.line_rate);
    let containers = logs.len().max(1) as f64;
    drop(held);
    // One second for every container to begin its cycle (phases are
    // below one second), then whole seconds while all of them log.
    let window = Duration::from_secs(duration.saturating_sub(2).max(1));
    pause(Duration::from_secs(1)).await?;
    let bytes0: u64 = logs.iter().map(|l| file_len(l)).sum();
    let (cpu0, ctx0) = (
        total(pids, procfs::cpu_ns),
        total(pids, procfs::context_switches),
    );
    let t0 = Instant::now();
    pause(window).await?;
    let (cpu1, ctx1) = (
        total(pids, procfs::cpu_ns),
        total(pids, procfs::context_switches),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let bytes1: u64 = logs.iter().map(|l| file_len(l)).sum();
    let (rss, pss) = total_rss_pss_kib(pids);
    // All containers finish about `duration` seconds after the release.
    let deadline = Instant::now() + Duration::from_secs(duration + 60);
    while !exits.iter().all(|e| e.exists()) {
        check_interrupt()?;
        if Instant::now() > deadline {
            let missing = exits.iter().filter(|e| !e.exists()).count();
            return Err(format!("{missing} containers wrote no exit file"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let want = format!("{DENSITY_LINE}\n");
    let expected_lines = duration * u64::from(rate);
    let (mut complete, mut all_lines, mut all_bytes) = (true, 0u64, 0u64);
    for log in logs {
        let check = cri::check_repeated_lines(log, want.as_bytes())
            .map_err(|e| format!("read {}: {e}", log.display()))?;
        complete &= check.exact && check.lines == expected_lines;
        all_lines += check.lines;
        all_bytes += file_len(log);
    }
    // Lines logged in the window, from the growth of the log files and
    // the average size of a record in them.
    let window_lines = (bytes1 - bytes0) as f64 * all_lines as f64 / all_bytes.max(1) as f64;
    let cpu_ns = cpu1.saturating_sub(cpu0) as f64;
    let ctx = ctx1.saturating_sub(ctx0) as f64;
    Ok(DensitySample {
        lines_per_s: window_lines / elapsed,
        cpu_pct: cpu_ns / 1e9 / elapsed * 100.0,
        us_per_line: cpu_ns / 1e3 / window_lines.max(1.0),
        ctx_per_s: ctx / elapsed,
        ctx_per_line: ctx / window_lines.max(1.0),
        rss_per_ctr_kib: rss as f64 / containers,
        pss_per_ctr_kib: pss as f64 / containers,
        complete,
    })
}

async fn density_run(
    bench: &mut Bench,
    monitor: &RowMonitor,
    containers: usize,
) -> Result<DensitySample, Failure> {
    let dir = bench.scratch("density");
    let tag = bench.next();
    let mut fleet = Fleet::new(bench, monitor).await?;
    let mut ids = Vec::with_capacity(containers);
    let result = async {
        let (mut logs, mut exits, mut fifos) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..containers {
            check_interrupt()?;
            let (id, bundle, fifo) = logging_bundle(bench, &dir, tag, i, containers)?;
            fifos.push(fifo);
            let log = bundle.join("ctr.log");
            ids.push(id.clone());
            exits.push(fleet.create(&id, &bundle, &log).await?);
            logs.push(log);
        }
        for id in &ids {
            check_interrupt()?;
            fleet.runtime().start(id)?;
        }
        let held = wait_for_readers(&fifos).await?;
        measure_logging(bench, held, &fleet.pids(), &logs, &exits).await
    }
    .await;
    fleet.shut_down(&ids);
    let _ = fs::remove_dir_all(&dir);
    remove_fifos(bench, tag, containers);
    result
}

/// The monitor rows of the density and idle workloads.
fn monitor_rows(bench: &Bench) -> Vec<RowMonitor> {
    let mut rows = Vec::new();
    if bench.has(Family::Ringmon) {
        rows.extend(bench.args.backends.iter().cloned().map(RowMonitor::Server));
    }
    rows.extend(
        bench
            .per_container()
            .into_iter()
            .map(RowMonitor::PerContainer),
    );
    rows
}

/// The rows of one workload size, `bench.args.runs` times each, taking turns
/// within a run (so drifting background load spreads over all of them); a
/// row that fails once is not run again. `what` names the workload and size
/// in the progress lines, `summary` a sample. Returns, per row in order, its
/// samples and its failure.
async fn take_turns<S>(
    bench: &mut Bench,
    monitors: &[RowMonitor],
    what: &str,
    mut measure: impl AsyncFnMut(&mut Bench, &RowMonitor) -> Result<S, Failure>,
    summary: impl Fn(&S) -> String,
) -> Result<Vec<(Vec<S>, Option<Failure>)>, Failure> {
    let runs = bench.args.runs;
    let mut rows: Vec<(Vec<S>, Option<Failure>)> =
        monitors.iter().map(|_| (Vec::new(), None)).collect();
    for run in 0..runs {
        for (monitor, (samples, error)) in monitors.iter().zip(rows.iter_mut()) {
            if error.is_some() {
                continue;
            }
            eprintln!("{what}: run {}/{runs} {}", run + 1, monitor.label());
            match measure(bench, monitor).await {
                Ok(s) => {
                    eprintln!("  {}", summary(&s));
                    samples.push(s);
                }
                Err(e) => {
                    eprintln!("  failed: {e}");
                    *error = Some(e);
                }
            }
            check_interrupt()?;
        }
    }
    Ok(rows)
}

/// The monitor rows of a workload whose containers log (density, pods).
fn logging_rows(bench: &Bench) -> Result<Vec<RowMonitor>, Failure> {
    if bench.args.duration < 3 {
        return Err("--duration must be at least 3 seconds".into());
    }
    Ok(monitor_rows(bench))
}

async fn density(bench: &mut Bench, report: &mut Report) -> Result<(), Failure> {
    let monitors = logging_rows(bench)?;
    let runs = bench.args.runs;
    for containers in bench.args.containers.clone() {
        let rows = take_turns(
            bench,
            &monitors,
            &format!("density, {containers} containers"),
            async |bench, monitor| density_run(bench, monitor, containers).await,
            |s| {
                format!(
                    "{:.2} % CPU, {:.1} µs/line, {:.0} lines/s{}",
                    s.cpu_pct,
                    s.us_per_line,
                    s.lines_per_s,
                    if s.complete { "" } else { ", LOGS INCOMPLETE" }
                )
            },
        )
        .await?;
        for (monitor, (s, error)) in monitors.iter().zip(rows) {
            let mut row = DensityRow {
                monitor: monitor.label(),
                containers,
                runs,
                error,
                ..Default::default()
            };
            if row.error.is_none() {
                row.lines_per_s = median_of(&s, |x| Some(x.lines_per_s));
                row.cpu_pct = median_of(&s, |x| Some(x.cpu_pct));
                row.us_per_line = median_of(&s, |x| Some(x.us_per_line));
                row.ctx_per_s = median_of(&s, |x| Some(x.ctx_per_s));
                row.rss_per_ctr_kib = median_of(&s, |x| Some(x.rss_per_ctr_kib));
                row.pss_per_ctr_kib = median_of(&s, |x| Some(x.pss_per_ctr_kib));
                row.complete = Some(s.iter().all(|x| x.complete));
            }
            report.density.push(row);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------- idle

#[derive(Clone, Debug, Default)]
struct IdleSample {
    rss_per_ctr_kib: Option<f64>,
    pss_per_ctr_kib: Option<f64>,
    marginal_rss_kib: Option<f64>,
    kernel_per_ctr_kib: f64,
    fds_per_ctr: Option<f64>,
    threads_empty: Option<f64>,
    threads_full: Option<f64>,
}

async fn idle_run(
    bench: &mut Bench,
    monitor: &RowMonitor,
    containers: usize,
) -> Result<IdleSample, Failure> {
    let dir = bench.scratch("idle");
    let tag = bench.next();
    // Bundles first: their files and dentries are kernel memory too, and
    // must not count as the monitor's.
    let bundles: Vec<(String, PathBuf)> = (0..containers)
        .map(|i| {
            let id = format!("idle{tag}-{i}");
            let bundle = bench
                .rootfs
                .bundle(&dir.join(&id), &["/bin/sleep", "1000000"]);
            (id, bundle)
        })
        .collect();
    let kernel0 = procfs::kernel_memory_kib();
    let mut fleet = Fleet::new(bench, monitor).await?;
    let mut ids = Vec::with_capacity(containers);
    let result = async {
        let monitored = !matches!(fleet, Fleet::Unmonitored(_));
        let empty = fleet.pids();
        let rss_empty = total(&empty, |p| procfs::status_field(p, "VmRSS:"));
        let threads_empty = total(&empty, |p| procfs::status_field(p, "Threads:"));
        for (id, bundle) in &bundles {
            check_interrupt()?;
            fleet.create(id, bundle, &bundle.join("ctr.log")).await?;
            ids.push(id.clone());
            fleet.runtime().start(id)?;
        }
        // Let deferred frees (RCU, per-CPU caches) settle.
        pause(Duration::from_secs(2)).await?;
        let kernel1 = procfs::kernel_memory_kib();
        let pids = fleet.pids();
        let n = containers as f64;
        let (rss, pss) = total_rss_pss_kib(&pids);
        let per = |v: u64| monitored.then_some(v as f64 / n);
        Ok(IdleSample {
            rss_per_ctr_kib: per(rss),
            pss_per_ctr_kib: per(pss),
            marginal_rss_kib: monitored.then_some((rss as f64 - rss_empty as f64) / n),
            kernel_per_ctr_kib: (kernel1 as f64 - kernel0 as f64) / n,
            fds_per_ctr: per(total(&pids, procfs::fd_count)),
            threads_empty: (monitored && !empty.is_empty()).then_some(threads_empty as f64),
            threads_full: monitored
                .then_some(total(&pids, |p| procfs::status_field(p, "Threads:")) as f64),
        })
    }
    .await;
    fleet.shut_down(&ids);
    let _ = fs::remove_dir_all(&dir);
    result
}

async fn idle(bench: &mut Bench, report: &mut Report) -> Result<(), Failure> {
    // The no-monitor row is the kernel-memory baseline of the containers.
    let mut monitors = Vec::new();
    if bench.has(Family::Raw) {
        monitors.push(RowMonitor::Unmonitored);
    }
    monitors.extend(monitor_rows(bench));
    let (runs, containers) = (bench.args.runs, bench.args.idle_containers);
    let rows = take_turns(
        bench,
        &monitors,
        &format!("idle, {containers} containers"),
        async |bench, monitor| idle_run(bench, monitor, containers).await,
        |s| format!("kernel {:.0} KiB/container", s.kernel_per_ctr_kib),
    )
    .await?;
    for (monitor, (s, error)) in monitors.iter().zip(rows) {
        let mut row = IdleRow {
            monitor: monitor.label(),
            containers,
            runs,
            error,
            ..Default::default()
        };
        if row.error.is_none() {
            row.rss_per_ctr_kib = median_of(&s, |x| x.rss_per_ctr_kib);
            row.pss_per_ctr_kib = median_of(&s, |x| x.pss_per_ctr_kib);
            row.marginal_rss_kib = median_of(&s, |x| x.marginal_rss_kib);
            row.kernel_per_ctr_kib = median_of(&s, |x| Some(x.kernel_per_ctr_kib));
            row.fds_per_ctr = median_of(&s, |x| x.fds_per_ctr);
            row.threads_empty = median_of(&s, |x| x.threads_empty);
            row.threads_full = median_of(&s, |x| x.threads_full);
        }
        report.idle.push(row);
    }
    Ok(())
}

// ---------------------------------------------------------------------- pods

/// One pods run: N monitors, each with one container.
#[derive(Clone, Debug, Default)]
struct PodsSample {
    rss_per_pod_kib: f64,
    pss_per_pod_kib: f64,
    threads_per_pod: f64,
    fds_per_pod: f64,
    /// Launch → `version` answering, ms, one per server (none for the
    /// per-container monitors, which have no RPC).
    ready_ms: Vec<f64>,
    /// Launch (or spawn) → the container created, ms, one per pod.
    created_ms: Vec<f64>,
    logging: DensitySample,
}

/// CRI-O's model: one monitor per pod, each pod one container. Every
/// container waits on its FIFO (a shell blocked on a read, no output: to
/// the monitor the same as `sleep`) while the idle readings are taken,
/// then logs as in the density workload.
async fn pods_run(
    bench: &mut Bench,
    monitor: &RowMonitor,
    pods: usize,
) -> Result<PodsSample, Failure> {
    let dir = bench.scratch("pods");
    let tag = bench.next();
    let mut fleets: Vec<(Fleet, String)> = Vec::with_capacity(pods);
    let result = async {
        let (mut logs, mut exits, mut fifos) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ready_ms, mut created_ms) = (Vec::new(), Vec::new());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for i in 0..pods {
            check_interrupt()?;
            let (id, bundle, fifo) = logging_bundle(bench, &dir, tag, i, pods)?;
            fifos.push(fifo);
            let launched = Instant::now();
            let fleet = Fleet::new(bench, monitor).await?;
            ready_ms.extend(fleet.launch_to_version().map(ms));
            fleets.push((fleet, id.clone()));
            let log = bundle.join("ctr.log");
            let fleet = &mut fleets.last_mut().expect("just pushed").0;
            exits.push(fleet.create(&id, &bundle, &log).await?);
            created_ms.push(ms(launched.elapsed()));
            logs.push(log);
        }
        for (fleet, id) in &fleets {
            check_interrupt()?;
            fleet.runtime().start(id)?;
        }
        let held = wait_for_readers(&fifos).await?;
        // Let the monitors and the kernel settle after the start-up.
        pause(Duration::from_secs(2)).await?;
        let pids: Vec<u32> = fleets.iter().flat_map(|(f, _)| f.pids()).collect();
        let (rss, pss) = total_rss_pss_kib(&pids);
        let per_pod = |v: u64| v as f64 / pods as f64;
        let mut sample = PodsSample {
            rss_per_pod_kib: per_pod(rss),
            pss_per_pod_kib: per_pod(pss),
            threads_per_pod: per_pod(total(&pids, |p| procfs::status_field(p, "Threads:"))),
            fds_per_pod: per_pod(total(&pids, procfs::fd_count)),
            ready_ms,
            created_ms,
            ..Default::default()
        };
        sample.logging = measure_logging(bench, held, &pids, &logs, &exits).await?;
        Ok(sample)
    }
    .await;
    for (fleet, id) in fleets {
        fleet.shut_down_and_remove(&[id], bench.args.keep);
    }
    let _ = fs::remove_dir_all(&dir);
    remove_fifos(bench, tag, pods);
    result
}

/// The `q` quantile (nearest rank) of `v`.
fn quantile(mut v: Vec<f64>, q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

async fn pods(bench: &mut Bench, report: &mut Report) -> Result<(), Failure> {
    let monitors = logging_rows(bench)?;
    let runs = bench.args.runs;
    for pods in bench.args.pods.clone() {
        let rows = take_turns(
            bench,
            &monitors,
            &format!("pods, {pods} pods"),
            async |bench, monitor| pods_run(bench, monitor, pods).await,
            |s| {
                format!(
                    "idle {:.0} KiB PSS/pod, {:.1} threads/pod; logging {:.2} µs/line{}",
                    s.pss_per_pod_kib,
                    s.threads_per_pod,
                    s.logging.us_per_line,
                    if s.logging.complete {
                        ""
                    } else {
                        ", LOGS INCOMPLETE"
                    }
                )
            },
        )
        .await?;
        for (monitor, (s, error)) in monitors.iter().zip(rows) {
            report
                .pods
                .push(pods_row(monitor.label(), pods, runs, &s, error));
        }
    }
    Ok(())
}

/// The medians of one row's runs; launch times are pooled over every
/// launch of every run.
fn pods_row(
    monitor: String,
    pods: usize,
    runs: usize,
    s: &[PodsSample],
    error: Option<Failure>,
) -> PodsRow {
    if error.is_some() {
        return PodsRow {
            monitor,
            pods,
            runs,
            error,
            ..Default::default()
        };
    }
    let ready: Vec<f64> = s.iter().flat_map(|x| x.ready_ms.clone()).collect();
    let created: Vec<f64> = s.iter().flat_map(|x| x.created_ms.clone()).collect();
    PodsRow {
        rss_per_pod_kib: median_of(s, |x| Some(x.rss_per_pod_kib)),
        pss_per_pod_kib: median_of(s, |x| Some(x.pss_per_pod_kib)),
        threads_per_pod: median_of(s, |x| Some(x.threads_per_pod)),
        fds_per_pod: median_of(s, |x| Some(x.fds_per_pod)),
        ready_ms_median: median(ready.clone()),
        ready_ms_p95: quantile(ready, 0.95),
        created_ms_median: median(created.clone()),
        created_ms_p95: quantile(created, 0.95),
        lines_per_s: median_of(s, |x| Some(x.logging.lines_per_s)),
        us_per_line: median_of(s, |x| Some(x.logging.us_per_line)),
        ctx_per_line: median_of(s, |x| Some(x.logging.ctx_per_line)),
        pss_logging_per_pod_kib: median_of(s, |x| Some(x.logging.pss_per_ctr_kib)),
        complete: Some(s.iter().all(|x| x.logging.complete)),
        ..PodsRow {
            monitor,
            pods,
            runs,
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------- main

/// The command line as typed, quoted for a POSIX shell where needed.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn environment(args: &Args, ringmon: &Path) -> Vec<(String, String)> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    vec![
        (
            "CPU".into(),
            format!(
                "{} × {cpu_model}",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
        ),
        ("kernel".into(), read("/proc/sys/kernel/osrelease")),
        ("load average at start".into(), read("/proc/loadavg")),
        (
            "runtime".into(),
            format!(
                "{} ({})",
                args.runtime.display(),
                probe::first_line_of(&args.runtime, "--version")
            ),
        ),
        ("ringmon".into(), probe::first_line_of(ringmon, "--version")),
        (
            "conmon".into(),
            probe::first_line_of(&args.conmon, "--version"),
        ),
        (
            "fs.pipe-max-size".into(),
            read("/proc/sys/fs/pipe-max-size"),
        ),
        (
            "open files limit (soft)".into(),
            open_files_limit().map_or("unknown".into(), |n| n.to_string()),
        ),
    ]
}

/// The soft limit on open files, which the monitors inherit from the tool.
fn open_files_limit() -> Option<u64> {
    fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn write_outputs(dir: &Path, report: &Report) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("results.md"), report.markdown())?;
    fs::write(dir.join("results.json"), report.json())?;
    if !report.throughput.is_empty() {
        fs::write(dir.join("throughput.csv"), report.throughput_csv())?;
    }
    if !report.density.is_empty() {
        fs::write(dir.join("density.csv"), report.density_csv())?;
    }
    if !report.idle.is_empty() {
        fs::write(dir.join("idle.csv"), report.idle_csv())?;
    }
    if let Some(svg) = report.throughput_svg() {
        fs::write(dir.join("throughput-mbps.svg"), svg)?;
    }
    if let Some(svg) = report.density_svg() {
        fs::write(dir.join("density-cpu.svg"), svg)?;
    }
    if !report.pods.is_empty() {
        fs::write(dir.join("pods.csv"), report.pods_csv())?;
    }
    for (name, svg) in report.pods_svgs() {
        fs::write(dir.join(name), svg)?;
    }
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(SNAPSHOT_SUBCOMMAND) {
        // Run by the C conmon as its exit command; nothing else to do.
        let code = match argv
            .get(2)
            .map(|p| procfs::write_parent_snapshot(Path::new(p)))
        {
            Some(Ok(())) => 0,
            _ => 1,
        };
        std::process::exit(code);
    }
    let args = Args::parse();
    let command = command_line();

    install_signal_watcher();
    // Daemonised monitors (the ringmon server, each conmon) become our
    // children, so they can be reaped and their exits observed.
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        monitors::cleanup_all();
    }));

    // One ringmon server holds about six fds per container (pipes, log,
    // pidfd) and inherits this limit from the tool.
    let most_containers = args
        .containers
        .iter()
        .copied()
        .chain([args.idle_containers])
        .max()
        .unwrap_or(0) as u64;
    if let Some(limit) = open_files_limit().filter(|&l| l < 8 * most_containers + 256) {
        eprintln!(
            "warning: open files limit {limit} is too low for one ringmon server with \
             {most_containers} containers; run `ulimit -n {}` first",
            8 * most_containers + 256
        );
    }
    let ringmon = args.binary.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ringmon")))
            .unwrap_or_else(|| PathBuf::from("ringmon"))
    });
    let base = std::env::temp_dir().join(format!("ringmon-sidebyside-{}", std::process::id()));
    fs::create_dir_all(&base).expect("create scratch dir");
    monitors::register_base(&base, args.keep);
    let mut report = Report {
        command: command.clone(),
        environment: environment(&args, &ringmon),
        ..Default::default()
    };
    let rootfs = Rootfs::prepare(&base);
    let workload = args.workload;
    let mut bench = Bench {
        args,
        ringmon,
        base: base.clone(),
        rootfs,
        serial: 0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = tokio::task::LocalSet::new().block_on(&rt, async {
        let all = workload == Workload::All;
        if all || workload == Workload::Throughput {
            throughput(&mut bench, &mut report).await?;
        }
        if all || workload == Workload::Density {
            density(&mut bench, &mut report).await?;
        }
        if all || workload == Workload::Idle {
            idle(&mut bench, &mut report).await?;
        }
        if workload == Workload::Pods {
            pods(&mut bench, &mut report).await?;
        }
        Ok::<(), Failure>(())
    });
    monitors::cleanup_all();
    println!("{}", report.markdown());
    if let Some(dir) = &bench.args.out {
        match write_outputs(dir, &report) {
            Ok(()) => eprintln!("results written to {}", dir.display()),
            Err(e) => eprintln!("write {}: {e}", dir.display()),
        }
    }
    if let Err(e) = outcome {
        eprintln!("stopped: {e}");
        std::process::exit(if interrupted() { 130 } else { 1 });
    }
}

#[cfg(test)]
mod tests {
    use super::{median, quantile};

    #[test]
    fn p95_is_the_nearest_rank() {
        let launches: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(launches.clone(), 0.95), Some(95.0));
        assert_eq!(quantile(vec![3.0, 1.0, 2.0], 0.95), Some(3.0));
        assert_eq!(quantile(vec![7.0], 0.95), Some(7.0));
        assert_eq!(quantile(Vec::new(), 0.95), None);
        assert_eq!(median(launches), Some(50.5));
    }
}
