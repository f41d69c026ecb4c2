//! The monitors under test (a ringmon server; one process per container
//! started with the C conmon's command line, which is the C conmon or
//! ringmon in its conmon mode), the runtime commands the tool runs itself,
//! the container bundles, and the registry that lets an interrupted run
//! remove everything it started.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use ringmon::client::Client;

use crate::procfs;

/// The OCI runtime with the state root of one measurement session.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub path: PathBuf,
    pub root: PathBuf,
}

impl Runtime {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        c
    }

    /// `runtime start ID`: the container's process begins running.
    pub fn start(&self, id: &str) -> Result<(), String> {
        let out = self
            .command()
            .args(["start", id])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("run {} start: {e}", self.path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} start {id}: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `runtime create` without a monitor: the container's stdio is
    /// /dev/null (the no-monitor baseline of the idle workload).
    pub fn create_unmonitored(&self, id: &str, bundle: &Path) -> Result<(), String> {
        let out = self
            .command()
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(bundle.join("pidfile"))
            .arg(id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("run {} create: {e}", self.path.display()))?;
        out.success()
            .then_some(())
            .ok_or_else(|| format!("{} create {id}: {out}", self.path.display()))
    }

    /// `runtime delete -f ID`; errors are ignored (already gone is fine).
    pub fn delete(&self, id: &str) {
        let _ = self
            .command()
            .args(["delete", "-f", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Ids of every container under this root, whatever its state.
    pub fn list(&self) -> Vec<String> {
        if !self.root.exists() {
            return Vec::new();
        }
        self.command()
            .args(["list", "-q"])
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One busybox rootfs shared by every container (a per-container copy of
/// busybox would write gigabytes for 1000 containers), and the bundle
/// config template built by the test fixture.
pub struct Rootfs {
    pub dir: PathBuf,
    template: String,
}

const ARGS_MARK: &str = "@ARGS@";

impl Rootfs {
    pub fn prepare(base: &Path) -> Rootfs {
        let template_bundle =
            ringmon::fixture::make_bundle(&base.join("template"), &[ARGS_MARK], false);
        let template = fs::read_to_string(template_bundle.join("config.json"))
            .expect("read the fixture's config.json");
        let dir = template_bundle.join("rootfs");
        fs::create_dir_all(dir.join("sync")).expect("create rootfs/sync");
        Rootfs { dir, template }
    }

    /// Writes `dir/config.json` running `args` on the shared rootfs.
    pub fn bundle(&self, dir: &Path, args: &[&str]) -> PathBuf {
        fs::create_dir_all(dir).expect("create bundle dir");
        let args_json = args
            .iter()
            .map(|a| ringmon::version::json_string(a))
            .collect::<Vec<_>>()
            .join(", ");
        let quoted_mark = ringmon::version::json_string(ARGS_MARK);
        let relative_root = "\"path\": \"rootfs\"";
        assert!(
            self.template.contains(&quoted_mark) && self.template.contains(relative_root),
            "the fixture's config.json changed shape; update Rootfs::bundle"
        );
        let config = self.template.replace(&quoted_mark, &args_json).replace(
            relative_root,
            &format!(
                "\"path\": {}",
                ringmon::version::json_string(&self.dir.display().to_string())
            ),
        );
        fs::write(dir.join("config.json"), config).expect("write config.json");
        dir.to_path_buf()
    }
}

/// Waits for `pid` (our child: the tool is a child subreaper) to exit, up
/// to `limit`; true if it exited and was reaped.
pub fn reap_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            // Not our child (should not happen): fall back to /proc.
            Err(_) if !procfs::is_running(pid) => return true,
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps.
pub fn terminate(pid: u32, grace: Duration) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if !reap_within(pid, grace) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        reap_within(pid, Duration::from_secs(5));
    }
    forget_monitor(pid);
}

/// Reaps every exited child that is left (orphans reparented to the tool).
/// Only called when the tool has no `std::process::Child` outstanding, so
/// no status is taken from under it.
pub fn reap_orphans() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// A ringmon server launched as the Go client launches it.
pub struct RingmonServer {
    pub pid: u32,
    pub client: Client,
    pub runtime: Runtime,
    /// The scratch directory holding its `--runtime-dir` and runtime root.
    pub dir: PathBuf,
    /// From just before the launch until the first `version` answered.
    pub launch_to_version: Duration,
}

impl RingmonServer {
    /// Launches `binary` with `--io-backend backend`; an error carries the
    /// server's own message (e.g. a backend it refuses).
    pub async fn launch(
        binary: &Path,
        runtime: &Path,
        dir: &Path,
        backend: &str,
        workers: Option<usize>,
    ) -> Result<RingmonServer, String> {
        let run_dir = dir.join("run");
        fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
        let runtime = Runtime {
            path: runtime.to_path_buf(),
            root: dir.join("root"),
        };
        register_runtime(&runtime);
        // The daemon keeps the launcher's stdout and stderr: its error
        // messages (and only those, at this level) land in this file.
        let out_path = dir.join("server.out");
        let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
        // The Go client's argv order and its own process group; the log
        // driver is `stdout` (CRI-O's default is `none`) so that the
        // server's error lines reach `server.out`.
        let mut cmd = Command::new(binary);
        cmd.arg("--runtime")
            .arg(runtime.path.as_os_str())
            .arg("--runtime-dir")
            .arg(&run_dir)
            .arg("--runtime-root")
            .arg(&runtime.root)
            .args(["--log-level", "error", "--log-driver", "stdout"])
            .args(["--io-backend", backend])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out);
        if let Some(n) = workers {
            cmd.args(["--engine-workers", &n.to_string()]);
        }
        let launched = Instant::now();
        let status = cmd
            .status()
            .map_err(|e| format!("launch {}: {e}", binary.display()))?;
        // The server's error lines, without its start-up notices.
        let server_output = || {
            let text = fs::read_to_string(&out_path).unwrap_or_default();
            let errors: Vec<&str> = text.lines().filter(|l| l.contains("rror")).collect();
            if errors.is_empty() {
                text.trim().replace('\n', " / ")
            } else {
                errors.join(" / ")
            }
        };
        if !status.success() {
            return Err(format!("ringmon exited with {status}: {}", server_output()));
        }
        let pid: u32 = fs::read_to_string(run_dir.join("pidfile"))
            .map_err(|e| format!("read pidfile: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("pidfile: {e}"))?;
        register_monitor(pid);
        let socket = run_dir.join("conmon.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !procfs::is_running(pid) {
                reap_within(pid, Duration::from_secs(1));
                forget_monitor(pid);
                return Err(format!(
                    "ringmon --io-backend {backend} exited: {}",
                    server_output()
                ));
            }
            if let Ok(client) = Client::connect(&socket).await {
                if client.version(false).await.is_ok() {
                    return Ok(RingmonServer {
                        pid,
                        client,
                        runtime,
                        dir: dir.to_path_buf(),
                        launch_to_version: launched.elapsed(),
                    });
                }
            }
            if Instant::now() > deadline {
                terminate(pid, Duration::from_secs(2));
                return Err(format!("ringmon did not answer on {}", socket.display()));
            }
            // A blocking pause: tokio's timer rounds up to whole
            // milliseconds, which would quantise the launch → `version`
            // time the pods workload reports. Nothing else needs this
            // thread while a server starts.
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The server's processes whose resources are counted: the one the
    /// pidfile names and, when that is a keeper (issue 16), its worker,
    /// which does all the work.
    pub fn process_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        pids.extend(procfs::children_named(self.pid, "conmonrs"));
        pids
    }

    /// createContainer with one CRI log and one exit file.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        log: &Path,
        exit_file: &Path,
    ) -> Result<(), String> {
        self.client
            .create_container(&ringmon::fixture::cri_request(id, bundle, exit_file, log))
            .await
            .map(|_| ())
            .map_err(|e| format!("createContainer {id}: {e}"))
    }

    /// Deletes `ids`, then stops the server (SIGTERM) and reaps it.
    pub fn shut_down(self, ids: &[String]) {
        for id in ids {
            self.runtime.delete(id);
        }
        drop(self.client);
        terminate(self.pid, Duration::from_secs(10));
    }
}

/// Launches one monitor process per container with the C conmon's command
/// line, as podman gives it: the C conmon itself, or ringmon in its conmon
/// mode (the same argv, pipes and waits; only the program differs).
pub struct Conmon {
    /// The row label, also used in error messages.
    pub label: String,
    pub binary: PathBuf,
    pub runtime: Runtime,
    pub dir: PathBuf,
    /// Keep the fsync of the log after the container exits (podman's
    /// default: no `--no-sync-log`); off by default because the ringmon
    /// server does not fsync logs.
    pub sync_log: bool,
}

/// One container's monitor process.
pub struct ConmonContainer {
    /// The long-lived monitor process (the launcher forks it and exits).
    pub pid: u32,
    pub exit_file: PathBuf,
}

impl Conmon {
    pub fn new(label: &str, binary: &Path, runtime: &Path, dir: &Path, sync_log: bool) -> Conmon {
        let runtime = Runtime {
            path: runtime.to_path_buf(),
            root: dir.join("root"),
        };
        register_runtime(&runtime);
        fs::create_dir_all(dir.join("exits")).expect("create exit dir");
        Conmon {
            label: label.to_string(),
            binary: binary.to_path_buf(),
            runtime,
            dir: dir.to_path_buf(),
            sync_log,
        }
    }

    /// Starts the monitor, which runs `runtime create`; returns once it
    /// reported the container pid on its sync pipe, as podman waits for it.
    /// With `exit_snapshot`, the monitor's exit command records its CPU time
    /// and peak RSS there (see `procfs::write_parent_snapshot`).
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        log: &Path,
        exit_snapshot: Option<&Path>,
    ) -> Result<ConmonContainer, String> {
        let persist = self.dir.join("persist").join(id);
        fs::create_dir_all(&persist).map_err(|e| e.to_string())?;
        let conmon_pidfile = bundle.join("conmon.pid");
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--api-version", "1", "-c", id, "-u", id])
            .arg("-r")
            .arg(&self.runtime.path)
            .arg("-b")
            .arg(bundle)
            .arg("-p")
            .arg(bundle.join("pidfile"))
            .args(["-n", id])
            .arg("--exit-dir")
            .arg(self.dir.join("exits"))
            .arg("--persist-dir")
            .arg(&persist)
            .arg("--full-attach")
            .arg("-l")
            .arg(format!("k8s-file:{}", log.display()))
            .args(["--log-level", "error"])
            .arg("--runtime-arg")
            .arg(format!("--root={}", self.runtime.root.display()))
            .arg("--conmon-pidfile")
            .arg(&conmon_pidfile);
        if !self.sync_log {
            cmd.arg("--no-sync-log");
        }
        if let Some(snapshot) = exit_snapshot {
            let me = std::env::current_exe().map_err(|e| e.to_string())?;
            cmd.arg("--exit-command")
                .arg(me)
                .args(["--exit-command-arg", crate::SNAPSHOT_SUBCOMMAND])
                .arg("--exit-command-arg")
                .arg(snapshot);
        }
        // The sync pipe is how podman learns that `runtime create` is done
        // and the container's pid. The monitor finds its write end by number in
        // _OCI_SYNCPIPE, so that end is created inheritable and closed here
        // right after the spawn; the read end stays close-on-exec.
        let (sync_read, sync_write) =
            nix::unistd::pipe2(OFlag::empty()).map_err(|e| format!("pipe: {e}"))?;
        fcntl(&sync_read, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| format!("fcntl: {e}"))?;
        let launcher_err = self.dir.join(format!("monitor-{id}.err"));
        cmd.env("_OCI_SYNCPIPE", sync_write.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&launcher_err).map_err(|e| e.to_string())?);
        let mut launcher = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        drop(sync_write);
        let message = read_sync_message(&sync_read, Duration::from_secs(60));
        // The launcher writes the monitor's pidfile, then exits right away.
        let status = launcher.wait().map_err(|e| e.to_string())?;
        let message = message.map_err(|e| {
            let err = fs::read_to_string(&launcher_err).unwrap_or_default();
            format!("{} for {id}: {e} ({status}; {})", self.label, err.trim())
        })?;
        let container_pid = sync_data(&message).ok_or_else(|| {
            format!(
                "{} for {id}: unexpected sync message {message:?}",
                self.label
            )
        })?;
        if container_pid <= 0 {
            return Err(format!("{} for {id}: create failed: {message}", self.label));
        }
        let pid: u32 = fs::read_to_string(&conmon_pidfile)
            .map_err(|e| format!("read {}: {e}", conmon_pidfile.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("{} pidfile: {e}", self.label))?;
        register_monitor(pid);
        let _ = fs::remove_file(launcher_err);
        Ok(ConmonContainer {
            pid,
            exit_file: self.dir.join("exits").join(id),
        })
    }
}

/// Reads conmon's first sync message (a JSON object), waiting up to `limit`.
fn read_sync_message(fd: &std::os::fd::OwnedFd, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut message = Vec::new();
    let mut file = fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
    while !message.contains(&b'}') {
        if crate::interrupted() {
            return Err("interrupted".into());
        }
        if Instant::now() > deadline {
            return Err("no sync message in time".into());
        }
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(fd),
            PollFlags::POLLIN | PollFlags::POLLHUP,
        )];
        if poll(&mut fds, PollTimeout::from(100u16)).map_err(|e| e.to_string())? == 0 {
            continue;
        }
        let mut buf = [0u8; 512];
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("sync pipe closed without a message".into());
        }
        message.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&message).into_owned())
}

/// The number after `"data":` in a conmon sync message.
fn sync_data(message: &str) -> Option<i64> {
    let rest = &message[message.find("\"data\"")? + "\"data\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// What an interrupted or finished run must remove.
struct Registry {
    runtimes: Vec<Runtime>,
    monitors: Vec<u32>,
    base: Option<PathBuf>,
    keep_base: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    runtimes: Vec::new(),
    monitors: Vec::new(),
    base: None,
    keep_base: false,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register_base(base: &Path, keep: bool) {
    let mut r = registry();
    r.base = Some(base.to_path_buf());
    r.keep_base = keep;
}

pub fn register_runtime(runtime: &Runtime) {
    registry().runtimes.push(runtime.clone());
}

pub fn register_monitor(pid: u32) {
    registry().monitors.push(pid);
}

pub fn forget_monitor(pid: u32) {
    registry().monitors.retain(|p| *p != pid);
}

/// Held for the whole of a cleanup: a forced cleanup from the signal
/// watcher waits for one the main thread already began, instead of exiting
/// the process half-way through it.
static CLEANING: Mutex<()> = Mutex::new(());

/// Deletes every container under every runtime root the run used, stops
/// every monitor it started and removes its scratch directory. Safe to call
/// more than once, and from more than one thread.
pub fn cleanup_all() {
    let _one_at_a_time = CLEANING.lock().unwrap_or_else(|e| e.into_inner());
    let (runtimes, monitors, base, keep) = {
        let mut r = registry();
        (
            std::mem::take(&mut r.runtimes),
            std::mem::take(&mut r.monitors),
            r.base.take(),
            r.keep_base,
        )
    };
    let delete_all = |runtimes: &[Runtime]| {
        for rt in runtimes {
            for id in rt.list() {
                rt.delete(&id);
            }
        }
    };
    delete_all(&runtimes);
    for &pid in &monitors {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while monitors.iter().any(|&p| procfs::is_running(p)) && Instant::now() < deadline {
        reap_orphans();
        std::thread::sleep(Duration::from_millis(10));
    }
    for &pid in monitors.iter().filter(|&&p| procfs::is_running(p)) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(50));
    reap_orphans();
    // A create that was in flight when the monitors were stopped.
    delete_all(&runtimes);
    reap_orphans();
    if let (Some(base), false) = (base, keep) {
        let _ = fs::remove_dir_all(base);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sync_message_data() {
        assert_eq!(super::sync_data("{\"data\": 4242}\n"), Some(4242));
        assert_eq!(
            super::sync_data("{\"data\": -1, \"message\": \"x\"}"),
            Some(-1)
        );
        assert_eq!(super::sync_data("{}"), None);
    }
}
