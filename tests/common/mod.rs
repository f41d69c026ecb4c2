//! Fixtures for the integration tests: a real `ringmon` process launched the
//! way the Go client launches it, real busybox-static bundles, and the real
//! runc/crun binaries.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use ringmon::client::{Client, CreateRequest, LogDriver};

pub mod attach_client;
pub mod journal;
pub mod tmux;

/// The server binary under test.
pub fn binary() -> PathBuf {
    std::env::var_os("RINGMON_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ringmon")))
}

/// The OCI runtimes to test with (`RINGMON_TEST_RUNTIMES`, space separated,
/// else whichever of runc and crun is installed).
pub fn runtimes() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("RINGMON_TEST_RUNTIMES") {
        return list
            .to_string_lossy()
            .split_whitespace()
            .map(PathBuf::from)
            .collect();
    }
    ["/usr/sbin/runc", "/usr/bin/runc", "/usr/bin/crun"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// Runs `test` once per runtime under test, naming it in the output.
pub fn for_each_runtime(test: impl Fn(&Path)) {
    let runtimes = runtimes();
    assert!(
        !runtimes.is_empty(),
        "no OCI runtime found (install runc or crun)"
    );
    for rt in runtimes {
        eprintln!("--- runtime {}", rt.display());
        test(&rt);
    }
}

/// A unique scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::temp_dir().join(format!(
            "ringmon-test-{tag}-{}-{}",
            std::process::id(),
            ringmon::core::monitor::random_uuid()
        ));
        fs::create_dir_all(&base).unwrap();
        TempDir(base)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[allow(unused_imports)]
pub use ringmon::fixture::make_bundle;

/// A ringmon server started like the Go client starts one: fork, pidfile,
/// socket. Killed (SIGINT, then SIGKILL) on drop.
pub struct Server {
    pub dir: TempDir,
    pub runtime: PathBuf,
    pub pid: u32,
    pub socket: PathBuf,
    pub runtime_root: PathBuf,
}

impl Server {
    pub fn start(runtime: &Path) -> Server {
        Self::start_with(runtime, &[])
    }

    pub fn start_with(runtime: &Path, extra: &[&str]) -> Server {
        Self::launch(None, runtime, extra, None, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables for the
    /// server (e.g. its own `TMPDIR`).
    pub fn start_with_env(runtime: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Server {
        Self::launch(None, runtime, extra, None, env)
    }

    /// Like [`Server::start_with`], with the server's stdout and stderr (its
    /// own log, `--log-driver stdout`) appended to `log` instead of going to
    /// the test's stdout.
    pub fn start_logging_to(runtime: &Path, extra: &[&str], log: &Path) -> Server {
        Self::launch(None, runtime, extra, Some(log), &[])
    }

    /// Like [`Server::start_logging_to`], with the server started through
    /// `wrapper` (a program that runs its arguments as a command).
    pub fn start_wrapped(wrapper: &Path, runtime: &Path, extra: &[&str], log: &Path) -> Server {
        Self::launch(Some(wrapper), runtime, extra, Some(log), &[])
    }

    fn launch(
        wrapper: Option<&Path>,
        runtime: &Path,
        extra: &[&str],
        log: Option<&Path>,
        env: &[(&str, &Path)],
    ) -> Server {
        let dir = TempDir::new("srv");
        let run_dir = dir.path().join("run");
        let runtime_root = dir.path().join("root");
        let mut cmd = match wrapper {
            Some(wrapper) => {
                let mut cmd = Command::new(wrapper);
                cmd.arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        if let Some(log) = log {
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("open server log file");
            cmd.stdout(file.try_clone().unwrap()).stderr(file);
        }
        let status = cmd
            .envs(env.iter().copied())
            .arg("--runtime")
            .arg(runtime)
            .arg("--runtime-dir")
            .arg(&run_dir)
            .arg("--runtime-root")
            .arg(&runtime_root)
            .args(["--log-level", "debug", "--log-driver", "stdout"])
            .args(extra)
            .status()
            .expect("launch ringmon");
        assert!(status.success(), "ringmon launcher exited with {status}");
        let pidfile = fs::read_to_string(run_dir.join("pidfile")).expect("pidfile written");
        let pid: u32 = pidfile.parse().expect("pidfile is a bare decimal pid");
        let socket = run_dir.join("conmon.sock");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "socket {} never appeared",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let server = Server {
            dir,
            runtime: runtime.to_path_buf(),
            pid,
            socket,
            runtime_root,
        };
        // The socket file appears at bind(), a moment before listen().
        server.wait_ready();
        server
    }

    /// Waits (up to 5 s) until the control socket accepts connections.
    /// `start` only waits for the socket file, which exists from `bind()`
    /// on, a moment before `listen()`: a connect in between is refused.
    pub fn wait_ready(&self) {
        let mut last = None;
        let ready =
            wait_until(
                Duration::from_secs(5),
                || match std::os::unix::net::UnixStream::connect(&self.socket) {
                    Ok(_) => true,
                    Err(e) => {
                        last = Some(e);
                        false
                    }
                },
            );
        assert!(
            ready,
            "{} does not accept connections: {last:?}",
            self.socket.display()
        );
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.expect("connect")
    }

    /// Runs the runtime CLI with `--root` (start, delete, state...).
    pub fn runtime_cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.runtime_root)
            .args(args)
            .output()
            .expect("run runtime")
    }

    pub fn start_container(&self, id: &str) {
        let out = self.runtime_cmd(&["start", id]);
        assert!(
            out.status.success(),
            "runtime start {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server process itself (comm `conmonrs`): the child of the
    /// keeper the pidfile names (or the pidfile's process with
    /// `--no-keeper`). Waits up to 5 s for it, e.g. after a restart.
    pub fn worker_pid(&self) -> u32 {
        worker_pid_of(self.pid)
    }

    /// Sends SIGINT and waits up to 10 s for the process to go away.
    pub fn shutdown(&self) -> bool {
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        wait_until(Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{}", self.pid)).exists() || is_zombie(self.pid)
        })
    }
}

/// The server process under the keeper `pid` (the pidfile's), or `pid`
/// itself with `--no-keeper`; waits up to 5 s for it.
#[allow(dead_code)]
pub fn worker_pid_of(pid: u32) -> u32 {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(5), || {
        found = worker_of(pid);
        found.is_some()
    });
    assert!(ok, "no conmonrs process under the keeper {pid}");
    found.unwrap()
}

/// `pid` itself if it is the server (`--no-keeper`), else its child named
/// `conmonrs` that is not a zombie.
fn worker_of(pid: u32) -> Option<u32> {
    let comm = |p: u32| fs::read_to_string(format!("/proc/{p}/comm")).ok();
    if comm(pid)?.trim_end() == "conmonrs" {
        return Some(pid);
    }
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .find(|&c| comm(c).is_some_and(|n| n.trim_end() == "conmonrs") && !is_zombie(c))
}

/// Whether `pid` is a zombie (or gone: a reaped pid has no stat).
pub fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The short process name (`comm`) of `pid`, if it still exists.
pub fn process_name(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim_end_matches('\n').to_string())
}

/// The live children of `pid`: from `/proc/<pid>/task/<pid>/children` where
/// the kernel has it (CONFIG_PROC_CHILDREN), else by the parent field of
/// every `/proc/<n>/stat`.
pub fn children_of(pid: u32) -> Vec<u32> {
    if let Ok(list) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return list
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // After the `(comm)` field: state, then the parent pid.
            let ppid: u32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

impl Server {
    /// The keeper's worker: the keeper's (`self.pid`'s) live child named
    /// `conmonrs`, if there is one now.
    pub fn current_worker_pid(&self) -> Option<u32> {
        children_of(self.pid)
            .into_iter()
            .find(|&child| process_name(child).as_deref() == Some("conmonrs") && !is_zombie(child))
    }

    /// Waits for a worker whose pid differs from `old` (the keeper started a
    /// new one) and returns its pid. The bound is 5 s for the start plus the
    /// keeper's restart back-off, which reaches 5 s when workers keep dying
    /// within 10 s of their start (as in a test that kills them in a row).
    pub fn new_worker_pid(&self, old: u32) -> u32 {
        let mut found = None;
        let appeared = wait_until(Duration::from_secs(10), || {
            found = self.current_worker_pid().filter(|&pid| pid != old);
            found.is_some()
        });
        assert!(
            appeared,
            "no new worker under keeper {} within 10 s (old worker {old}, children {:?})",
            self.pid,
            children_of(self.pid)
        );
        found.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.shutdown() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for a file to exist and returns its content.
pub fn wait_for_file(path: &Path, limit: Duration) -> Vec<u8> {
    assert!(
        wait_until(limit, || path.exists()),
        "{} did not appear within {limit:?}",
        path.display()
    );
    fs::read(path).unwrap()
}

/// Runs an async test body on a current-thread runtime inside a LocalSet.
pub fn run_local<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f);
}

/// A random container id (64 hex characters, like CRI-O's).
pub fn container_id() -> String {
    let a = ringmon::core::monitor::random_uuid().replace('-', "");
    let b = ringmon::core::monitor::random_uuid().replace('-', "");
    format!("{a}{b}")
}

/// Parses a CRI log back into per-stream byte streams (P records joined,
/// F records keep their newline).
/// What a CRI log reassembles to (with [`parse_cri`]) for `data`: output
/// that ends mid-line is closed with an `F` record, a line end, at EOF.
pub fn as_logged(data: &[u8]) -> Vec<u8> {
    let mut logged = data.to_vec();
    if logged.last().is_some_and(|&byte| byte != b'\n') {
        logged.push(b'\n');
    }
    logged
}

pub fn parse_cri(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut out = (Vec::new(), Vec::new());
    for rec in log.split_inclusive(|b| *b == b'\n') {
        let mut parts = rec.splitn(4, |b| *b == b' ');
        let _ts = parts.next().unwrap();
        let stream = parts.next().expect("stream field");
        let tag = parts.next().expect("tag field");
        let content = parts.next().expect("content field");
        let content = match tag {
            b"F" => content,
            b"P" => &content[..content.len() - 1],
            other => panic!("bad tag {:?}", String::from_utf8_lossy(other)),
        };
        match stream {
            b"stdout" => out.0.extend_from_slice(content),
            b"stderr" => out.1.extend_from_slice(content),
            other => panic!("bad stream {:?}", String::from_utf8_lossy(other)),
        }
    }
    out
}

/// A create request for a bundle with a CRI log and an exit file in `dir`.
pub fn basic_request(dir: &Path, id: &str, bundle: &Path, terminal: bool) -> CreateRequest {
    CreateRequest {
        id: id.to_string(),
        bundle_path: bundle.display().to_string(),
        terminal,
        exit_paths: vec![dir.join("exit").display().to_string()],
        oom_exit_paths: vec![dir.join("oom").display().to_string()],
        log_drivers: vec![LogDriver {
            kind: 0,
            path: dir.join("ctr.log").display().to_string(),
            max_size: 0,
        }],
        cgroup_manager: 1,
        ..Default::default()
    }
}

/// Creates and starts a busybox container running `sleep 600` (pipes, a CRI
/// log and an exit file in `dir`); returns its id.
pub fn start_sleeping_container(server: &Server, dir: &Path) -> String {
    let id = container_id();
    let bundle = make_bundle(dir, &["/bin/sleep", "600"], false);
    let req = basic_request(dir, &id, &bundle, false);
    run_local(async {
        server.client().await.create_container(&req).await.unwrap();
    });
    server.start_container(&id);
    id
}

/// Pids of processes whose argv is exactly `argv`.
pub fn processes_with_argv(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
        })
        .collect()
}
