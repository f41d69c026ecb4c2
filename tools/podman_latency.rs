//! ringmon-podman-latency: wall time of `podman run -d IMAGE true` and of
//! `podman run --rm IMAGE true` with each monitor as podman's `conmon_path`
//! (the stock C conmon and ringmon in its conmon mode), medians and p90.
//!
//! Each monitor gets its own isolated podman store, identical but for
//! `conmon_path`: its own containers.conf (`CONTAINERS_CONF`: cgroupfs,
//! file events, file locks instead of the SHM segment every root podman on
//! the machine shares, `default_ulimits` within this machine's hard limits,
//! no network), storage.conf (`CONTAINERS_STORAGE_CONF`: own graphroot and
//! runroot; `--storage-driver`, overlay by default), an empty
//! registries.conf, `--root/--runroot/--tmpdir` on every call, and its own
//! working directory (stock conmon drops an `oom` file there). The image is
//! the busybox-static rootfs of the test fixtures, brought in with `podman
//! import` (no registry). Nothing outside the stores is read or written, so
//! another podman user on the machine is not disturbed; the stores are
//! removed at the end (mounts left under them are unmounted first).
//!
//! Before measuring, `podman info` must name the monitor under test (podman
//! silently falls back to a `conmon` in `$PATH` when it rejects
//! `conmon_path`). Runs are interleaved: each round runs every podman
//! command once with each monitor, the monitors' order alternating between
//! rounds, so drifting background load spreads over both. A `run -d` is
//! timed until podman returns (container started, id printed); then,
//! untimed, `podman wait` and `podman rm -f` remove it before the next run.
//! `--warmups` untimed rounds come first (page cache, podman's first-use
//! setup). p90 is by nearest rank.

#[path = "sidebyside/interrupt.rs"]
mod interrupt;
#[path = "sidebyside/probe.rs"]
mod probe;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

/// The image every store imports.
const IMAGE: &str = "localhost/ringmon-busybox:latest";
/// Longest one podman call may take before it is killed and the row fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `podman run -d --network none IMAGE true`
    Detach,
    /// `podman run --rm --network none IMAGE true`
    Rm,
}

impl Mode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Detach => &["run", "-d", "--network", "none", IMAGE, "true"],
            Mode::Rm => &["run", "--rm", "--network", "none", IMAGE, "true"],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Detach => "podman run -d IMAGE true",
            Mode::Rm => "podman run --rm IMAGE true",
        }
    }
}

/// `podman run` latency with the stock conmon and with ringmon's conmon mode.
#[derive(Debug, Parser)]
#[command(name = "ringmon-podman-latency")]
struct Args {
    /// Timed runs per podman command and monitor.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed rounds before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmups: usize,
    /// OCI runtime podman runs (`--runtime`).
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// ringmon binary (default: `ringmon` next to this tool).
    #[arg(long)]
    ringmon: Option<PathBuf>,
    /// The stock C conmon.
    #[arg(long, default_value = "/usr/bin/conmon")]
    conmon: PathBuf,
    /// The podman binary.
    #[arg(long, default_value = "podman")]
    podman: PathBuf,
    /// Storage driver of both stores (podman's own default as root; `vfs`
    /// where overlay mounts are not allowed, at the cost of a rootfs copy
    /// per container).
    #[arg(long, default_value = "overlay")]
    storage_driver: String,
    /// podman commands to time.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "detach,rm")]
    modes: Vec<Mode>,
    /// Keep the stores (for inspection) instead of removing them.
    #[arg(long)]
    keep: bool,
}

use interrupt::interrupted;

/// What one podman call left.
struct CallOutput {
    success: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// One isolated podman store whose `conmon_path` is `monitor`.
struct Store {
    label: String,
    monitor: PathBuf,
    dir: PathBuf,
    podman: PathBuf,
    runtime: PathBuf,
    storage_driver: String,
}

impl Store {
    /// Writes the store's config files under `dir` (which must be short:
    /// podman refuses a runroot longer than 50 characters).
    fn create(label: &str, monitor: &Path, dir: PathBuf, args: &Args) -> Result<Store, String> {
        for sub in ["graph", "run", "tmp", "net", "cwd"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let d = dir.display();
        let containers_conf = format!(
            r#"[containers]
# podman's default asks for nofile/nproc above this machine's hard limits
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
log_driver = "k8s-file"

[engine]
conmon_path = [{monitor}]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{d}/tmp"
image_copy_tmp_dir = "{d}/tmp"
volume_path = "{d}/graph/volumes"
static_dir = "{d}/graph/libpod"
# locks in files of this store, not in the SHM segment all root podmans share
lock_type = "file"

[network]
network_config_dir = "{d}/net"
"#,
            monitor = ringmon::version::json_string(&monitor.display().to_string()),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"{}\"\ngraphroot = \"{d}/graph\"\nrunroot = \"{d}/run\"\n",
            args.storage_driver
        );
        for (name, text) in [
            ("containers.conf", containers_conf.as_str()),
            ("storage.conf", storage_conf.as_str()),
            ("registries.conf", ""),
        ] {
            fs::write(dir.join(name), text).map_err(|e| format!("write {name}: {e}"))?;
        }
        Ok(Store {
            label: label.to_string(),
            monitor: monitor.to_path_buf(),
            dir,
            podman: args.podman.clone(),
            runtime: args.runtime.clone(),
            storage_driver: args.storage_driver.clone(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.podman);
        cmd.current_dir(self.dir.join("cwd"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            )
            .env("TMPDIR", self.dir.join("tmp"))
            .arg("--root")
            .arg(self.dir.join("graph"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", &self.storage_driver])
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `podman <args>` to completion, killed after `CALL_TIMEOUT`;
    /// `took` is the wall time from just before the spawn to its exit.
    fn call(&self, args: &[&str]) -> Result<CallOutput, String> {
        // Output goes to files, not pipes, so a chatty podman cannot block
        // on a full pipe while we poll for its exit.
        let out_path = self.dir.join("call.out");
        let err_path = self.dir.join("call.err");
        let file =
            |p: &Path| fs::File::create(p).map_err(|e| format!("create {}: {e}", p.display()));
        let mut cmd = self.command(args);
        cmd.stdout(file(&out_path)?).stderr(file(&err_path)?);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.podman.display()))?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if started.elapsed() > CALL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "podman {} ({}): no exit within {}s",
                    args.join(" "),
                    self.label,
                    CALL_TIMEOUT.as_secs()
                ));
            }
            // A short sleep: the poll interval bounds the timing error.
            std::thread::sleep(Duration::from_micros(200));
        };
        let took = started.elapsed();
        Ok(CallOutput {
            success: status.success(),
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
            took,
        })
    }

    /// Like `call`, but a failure is an error naming the command and podman's
    /// stderr.
    fn ok(&self, args: &[&str]) -> Result<CallOutput, String> {
        let out = self.call(args)?;
        if out.success {
            Ok(out)
        } else {
            Err(format!(
                "podman {} ({}): {}",
                args.join(" "),
                self.label,
                out.stderr.trim()
            ))
        }
    }

    /// Imports the image and checks that podman uses the monitor under test.
    fn prepare(&self, image_tar: &Path) -> Result<(), String> {
        self.ok(&["import", &image_tar.display().to_string(), IMAGE])?;
        let info = self.ok(&["info", "--format", "{{.Host.Conmon.Path}}"])?;
        let used = info.stdout.trim();
        if Path::new(used) != self.monitor {
            return Err(format!(
                "{}: podman uses '{used}', not the monitor under test '{}' (it rejected \
                 conmon_path?)",
                self.label,
                self.monitor.display()
            ));
        }
        Ok(())
    }

    /// One timed `mode` run; the container is gone again when this returns.
    fn timed_run(&self, mode: Mode) -> Result<Duration, String> {
        let out = self.ok(mode.args())?;
        if mode == Mode::Detach {
            let id = out.stdout.trim().to_string();
            if id.is_empty() {
                return Err(format!("podman run -d ({}): printed no id", self.label));
            }
            self.ok(&["wait", &id])?;
            self.ok(&["rm", "-f", &id])?;
        }
        Ok(out.took)
    }

    /// Removes every container, unmounts what podman left mounted under
    /// the store, and deletes it (unless `keep`).
    fn remove(&self, keep: bool) {
        let _ = self.call(&["rm", "-a", "-f", "-t", "0"]);
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = format!("{}/", self.dir.display());
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        // Deepest first.
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if !keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The fixtures' busybox-static rootfs, with the files podman reads, as a
/// tar for `podman import`.
fn image_tar(base: &Path) -> Result<PathBuf, String> {
    let bundle = ringmon::fixture::make_bundle(&base.join("image"), &["/bin/sh"], false);
    let rootfs = bundle.join("rootfs");
    for sub in ["etc", "root", "run"] {
        fs::create_dir_all(rootfs.join(sub)).map_err(|e| e.to_string())?;
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| e.to_string())?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").map_err(|e| e.to_string())?;
    let tar = base.join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| format!("run tar: {e}"))?;
    status
        .success()
        .then_some(tar)
        .ok_or_else(|| format!("tar of the rootfs: {status}"))
}

/// Nearest-rank percentile `p` (0–100) of sorted `v`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// Timed samples and the first failure of one (mode, monitor) row.
#[derive(Default)]
struct Row {
    samples: Vec<Duration>,
    error: Option<String>,
}

fn main() {
    let args = Args::parse();
    interrupt::install_watcher(
        || eprintln!("\ninterrupted: stopping after this podman call"),
        || std::process::exit(130),
    );

    let ringmon = args
        .ringmon
        .clone()
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("ringmon")))
        })
        .unwrap_or_else(|| PathBuf::from("ringmon"));
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let monitors = [
        ("conmon (C)", absolute(&args.conmon)),
        ("ringmon (conmon mode)", absolute(&ringmon)),
    ];
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let load_at_start = read("/proc/loadavg");
    // Short: the runroot inside must stay under podman's 50 characters.
    let base = std::env::temp_dir().join(format!("rmlat-{}", std::process::id()));
    fs::create_dir_all(&base).expect("create scratch dir");
    let mut stores = Vec::new();
    let setup = (|| {
        let tar = image_tar(&base)?;
        for (i, (label, monitor)) in monitors.iter().enumerate() {
            let store = Store::create(label, monitor, base.join(format!("s{i}")), &args)?;
            // Pushed before `prepare`, so a failed one is removed too.
            stores.push(store);
            stores[i].prepare(&tar)?;
        }
        Ok::<(), String>(())
    })();

    let mut rows: Vec<Vec<Row>> = args
        .modes
        .iter()
        .map(|_| monitors.iter().map(|_| Row::default()).collect())
        .collect();
    let outcome = setup.and_then(|()| {
        let rounds = args.warmups + args.runs;
        for round in 0..rounds {
            let timed = round >= args.warmups;
            for (m, &mode) in args.modes.iter().enumerate() {
                let mut order: Vec<usize> = (0..stores.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for s in order {
                    if interrupted() {
                        return Err("interrupted".to_string());
                    }
                    let row = &mut rows[m][s];
                    if row.error.is_some() {
                        continue;
                    }
                    match stores[s].timed_run(mode) {
                        Ok(took) if timed => row.samples.push(took),
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("{}: {e}", mode.label());
                            row.error = Some(e);
                        }
                    }
                }
            }
            eprintln!(
                "{} {}/{}",
                if timed { "round" } else { "warm-up" },
                if timed {
                    round - args.warmups + 1
                } else {
                    round + 1
                },
                if timed { args.runs } else { args.warmups }
            );
        }
        Ok(())
    });
    for store in &stores {
        store.remove(args.keep);
    }
    if !args.keep {
        let _ = fs::remove_dir_all(&base);
    }

    println!(
        "```sh\n{}\n```\n",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("- kernel: {}", read("/proc/sys/kernel/osrelease"));
    println!("- load average at start: {load_at_start}");
    println!(
        "- podman: {}",
        probe::first_line_of(&args.podman, "--version")
    );
    println!(
        "- runtime: {} ({})",
        args.runtime.display(),
        probe::first_line_of(&args.runtime, "--version")
    );
    for (label, monitor) in &monitors {
        println!(
            "- {label}: {} ({})",
            monitor.display(),
            probe::first_line_of(monitor, "--version")
        );
    }
    println!("- storage driver: {}\n", args.storage_driver);
    println!(
        "| podman command | monitor | runs | median ms | p90 ms | min ms | max ms | median − stock conmon's ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (m, mode) in args.modes.iter().enumerate() {
        let stock_median = {
            let mut s = rows[m][0].samples.clone();
            s.sort();
            (!s.is_empty()).then(|| median(&s))
        };
        for (s, (label, _)) in monitors.iter().enumerate() {
            let row = &rows[m][s];
            let mut sorted = row.samples.clone();
            sorted.sort();
            if let Some(e) = &row.error {
                println!(
                    "| `{}` | {label} | {} | failed: {} | — | — | — | — |",
                    mode.label(),
                    sorted.len(),
                    e.replace('|', "/").replace('\n', " ")
                );
            } else if sorted.is_empty() {
                println!("| `{}` | {label} | 0 | — | — | — | — | — |", mode.label());
            } else {
                let med = median(&sorted);
                let diff = match stock_median {
                    Some(stock) if s != 0 => {
                        format!("{:+.1}", (med.as_secs_f64() - stock.as_secs_f64()) * 1e3)
                    }
                    _ => "—".to_string(),
                };
                println!(
                    "| `{}` | {label} | {} | {} | {} | {} | {} | {diff} |",
                    mode.label(),
                    sorted.len(),
                    ms(med),
                    ms(percentile(&sorted, 90)),
                    ms(sorted[0]),
                    ms(sorted[sorted.len() - 1]),
                );
            }
        }
    }
    if let Err(e) = outcome {
        eprintln!("stopped: {e}");
        std::process::exit(if interrupted() { 130 } else { 1 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 90), Duration::from_millis(18));
        assert_eq!(percentile(&v, 100), Duration::from_millis(20));
        assert_eq!(percentile(&v[..3], 90), Duration::from_millis(3));
        assert_eq!(percentile(&v[..1], 90), Duration::from_millis(1));
        assert_eq!(median(&v[..3]), Duration::from_millis(2));
        assert_eq!(median(&v[..4]), Duration::from_micros(2500));
    }
}
