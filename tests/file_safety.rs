//! Files and sockets at client-given paths (issue 15, findings 8, 9, 10, 14):
//! symlinks are not followed (but for system ones in the directory chain),
//! stale sockets alone are replaced, log files are 0600, exit files are
//! fsynced, and peers other than root and the server's user are refused on
//! every socket. Against the real binary and real containers.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The uid and gid the foreign-peer checks connect as.
const NOBODY: u32 = 65534;

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A directory `link` -> `real` inside `dir` whose symlink belongs to
/// nobody: not a system symlink, so never followed.
fn foreign_dir_symlink(dir: &Path) -> (PathBuf, PathBuf) {
    let real = dir.join("real");
    fs::create_dir(&real).unwrap();
    let link = dir.join("linkdir");
    symlink(&real, &link).unwrap();
    lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    (real, link)
}

// ---------------------------------------------------------------------------
// Finding 9: exit and OOM files
// ---------------------------------------------------------------------------

/// Runs a container of `/bin/true` with `req` tweaked by `tweak`; waits for
/// `dir/exit`.
fn run_true_container(server: &Server, dir: &Path, tweak: impl FnOnce(&mut CreateRequest)) {
    let id = container_id();
    let bundle = make_bundle(dir, &["/bin/true"], false);
    let mut req = basic_request(dir, &id, &bundle, false);
    tweak(&mut req);
    run_local(async {
        server.client().await.create_container(&req).await.unwrap();
    });
    server.start_container(&id);
    assert_eq!(
        wait_for_file(&dir.join("exit"), Duration::from_secs(20)),
        b"0"
    );
    server.runtime_cmd(&["delete", "-f", &id]);
}

#[test]
fn exit_files_never_write_through_symlinks() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("exit-link");
    let precious = dir.path().join("precious");
    fs::write(&precious, b"keep me").unwrap();
    // A symlink where the exit file goes: replaced, not followed.
    let at_path = dir.path().join("exit2");
    symlink(&precious, &at_path).unwrap();
    // Symlinks at the temporary names a predictable scheme would use.
    for name in ["exit", "exit2"] {
        let tmp = dir
            .path()
            .join(format!(".{name}.{}.tmp", server.serving_pid()));
        symlink(&precious, &tmp).unwrap();
    }
    // A directory reached through a symlink nobody trustworthy made.
    let (real, link) = foreign_dir_symlink(dir.path());
    run_true_container(&server, dir.path(), |req| {
        req.exit_paths = vec![
            dir.path().join("exit").display().to_string(),
            at_path.display().to_string(),
            link.join("exit").display().to_string(),
        ];
    });
    assert_eq!(fs::read(&precious).unwrap(), b"keep me");
    assert!(!fs::symlink_metadata(&at_path).unwrap().is_symlink());
    assert_eq!(fs::read(&at_path).unwrap(), b"0");
    assert!(
        !real.join("exit").exists(),
        "exit file written through a foreign symlinked directory"
    );
    // Each exit file is a fresh file with the usual mode.
    assert_eq!(mode_of(&dir.path().join("exit")), 0o644);
}

/// Whether the server's main thread (with `all`: every thread) is traced.
fn traced_threads(pid: u32, all: bool) -> bool {
    let traced = |status: &str| {
        fs::read_to_string(status).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|t| t.trim() != "0")
        })
    };
    if !all {
        return traced(&format!("/proc/{pid}/status"));
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .all(|task| traced(&format!("{}/status", task.path().display())))
}

/// Runs a `/bin/true` container (see `run_true_container`) while strace,
/// with `args`, follows the server; returns the trace.
fn trace_true_container(server: &Server, dir: &Path, args: &[&str]) -> String {
    let trace = dir.join("trace");
    let serving = server.serving_pid();
    let mut strace = Command::new("strace")
        .arg("-qq")
        .args(args)
        .arg("-o")
        .arg(&trace)
        .arg("-p")
        .arg(serving.to_string())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    // Until strace has attached (to every thread with -f, else to the main
    // one), it prints nothing: wait for the kernel to show it as the tracer.
    let follow_threads = args.contains(&"-f");
    let attached = wait_until(Duration::from_secs(20), || {
        traced_threads(serving, follow_threads)
    });
    assert!(attached, "strace did not attach to the server within 20 s");
    run_true_container(server, dir, |_| {});
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill").arg(strace.id().to_string()).status();
    let _ = strace.wait();
    fs::read_to_string(&trace).unwrap()
}

/// The trace of the server's control thread while a container exits shows
/// the exit file fsynced before its rename and the directory fsynced after.
#[test]
fn exit_file_is_fsynced_before_rename_and_directory_after() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("exit-sync");
    // The control thread (the one the exit files are written on) is the
    // daemon's main thread: its tid is the pid.
    let text = trace_true_container(
        &server,
        dir.path(),
        &[
            "-e",
            "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
        ],
    );
    let lines: Vec<&str> = text.lines().collect();
    // The temporary file of `exit`: an open with O_CREAT of `.exit...`.
    let open = lines
        .iter()
        .position(|l| l.starts_with("openat(") && l.contains(".exit.") && l.contains("O_CREAT"))
        .unwrap_or_else(|| panic!("no open of the exit file's temporary file in:\n{text}"));
    let fd = lines[open].rsplit("= ").next().unwrap().trim();
    let rename = (open..lines.len())
        .find(|&i| lines[i].starts_with("rename") && lines[i].contains("exit\""))
        .unwrap_or_else(|| panic!("no rename of the exit file in:\n{text}"));
    assert!(
        lines[open..rename]
            .iter()
            .any(|l| l.starts_with(&format!("fsync({fd})"))
                || l.starts_with(&format!("fdatasync({fd})"))),
        "exit file not fsynced before its rename:\n{text}"
    );
    assert!(
        lines[rename..].iter().any(|l| l.starts_with("fsync(")),
        "directory not fsynced after the rename:\n{text}"
    );
}

/// The trace of every thread of the server while a container exits shows
/// its log file synced before its exit file is renamed into place: whoever
/// reads the exit code after a host crash also finds the last lines.
#[test]
fn log_file_is_synced_before_the_exit_file_appears() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("log-sync");
    // -f: the sync runs on a blocking-pool thread started later; -y: fds
    // are shown with their paths.
    let text = trace_true_container(
        &server,
        dir.path(),
        &[
            "-f",
            "-y",
            "-e",
            "trace=fdatasync,fsync,rename,renameat,renameat2",
        ],
    );
    let lines: Vec<&str> = text.lines().collect();
    let log = dir.path().join("ctr.log").display().to_string();
    let synced = lines
        .iter()
        .position(|l| l.contains("fdatasync(") && l.contains(&format!("<{log}>")))
        .unwrap_or_else(|| panic!("log file {log} never synced:\n{text}"));
    let renamed = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("\"exit\""))
        .unwrap_or_else(|| panic!("no rename of the exit file in:\n{text}"));
    assert!(
        synced < renamed,
        "log file synced after the exit file appeared:\n{text}"
    );
}

async fn create_error(c: &Client, req: &CreateRequest) -> String {
    let e = c.create_container(req).await.unwrap_err().to_string();
    // The server still answers.
    c.version(false).await.unwrap();
    e
}

// ---------------------------------------------------------------------------
// Finding 10: log files
// ---------------------------------------------------------------------------

#[test]
fn log_paths_through_symlinks_are_refused_naming_log_path() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("log-link");
    let bundle = make_bundle(dir.path(), &["/bin/true"], false);
    let precious = dir.path().join("precious");
    fs::write(&precious, b"keep me").unwrap();
    let final_link = dir.path().join("link.log");
    symlink(&precious, &final_link).unwrap();
    let (real, link) = foreign_dir_symlink(dir.path());
    run_local(async {
        let c = server.client().await;
        for kind in [0, 1] {
            // The final component is a symlink.
            let mut req = basic_request(dir.path(), &container_id(), &bundle, false);
            req.log_drivers[0].kind = kind;
            req.log_drivers[0].path = final_link.display().to_string();
            let e = create_error(&c, &req).await;
            assert!(
                e.contains("logPath") && e.contains("link.log") && e.contains("symlink"),
                "kind {kind}: {e}"
            );
            // A parent is a symlink nobody trustworthy made.
            let mut req = basic_request(dir.path(), &container_id(), &bundle, false);
            req.log_drivers[0].kind = kind;
            let through = link.join(format!("ctr-{kind}.log"));
            req.log_drivers[0].path = through.display().to_string();
            let e = create_error(&c, &req).await;
            assert!(
                e.contains("logPath") && e.contains("linkdir") && e.contains("symlink"),
                "kind {kind}: {e}"
            );
            assert!(!real.join(format!("ctr-{kind}.log")).exists());
        }
    });
    assert_eq!(fs::read(&precious).unwrap(), b"keep me");
}

#[test]
fn log_files_are_0600_and_system_symlinked_parents_work() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("log-mode");
    // A symlink made by root in a directory only root writes (like
    // /var/run -> /run) is followed.
    fs::create_dir(dir.path().join("logs")).unwrap();
    symlink(dir.path().join("logs"), dir.path().join("system-link")).unwrap();
    // An existing file keeps no wider mode either.
    let json = dir.path().join("system-link/ctr.json");
    fs::write(&json, b"old").unwrap();
    fs::set_permissions(&json, fs::Permissions::from_mode(0o644)).unwrap();
    let cri = dir.path().join("system-link/ctr.log");
    run_true_container(&server, dir.path(), |req| {
        req.log_drivers = vec![
            LogDriver {
                kind: 0,
                path: cri.display().to_string(),
                max_size: 0,
            },
            LogDriver {
                kind: 1,
                path: json.display().to_string(),
                max_size: 0,
            },
        ];
    });
    assert_eq!(mode_of(&dir.path().join("logs/ctr.log")), 0o600, "CRI log");
    assert_eq!(
        mode_of(&dir.path().join("logs/ctr.json")),
        0o600,
        "JSON log"
    );
}

// ---------------------------------------------------------------------------
// Finding 8: attach socket setup
// ---------------------------------------------------------------------------

#[test]
fn attach_refuses_a_symlink_at_socket_path_and_leaves_it() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("attach-link");
    let id = start_sleeping_container(&server, dir.path());
    let precious = dir.path().join("precious");
    fs::write(&precious, b"keep me").unwrap();
    let link = dir.path().join("attach");
    symlink(&precious, &link).unwrap();
    let regular = dir.path().join("attach-file");
    fs::write(&regular, b"mine").unwrap();
    run_local(async {
        let c = server.client().await;
        let e = c
            .attach_container(&id, &link, "", false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("socketPath") && e.contains("symlink") && e.contains("attach"),
            "{e}"
        );
        let e = c
            .attach_container(&id, &regular, "", false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("regular file"), "{e}");
        c.version(false).await.unwrap();
    });
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(fs::read(&precious).unwrap(), b"keep me");
    assert_eq!(fs::read(&regular).unwrap(), b"mine");
    server.runtime_cmd(&["delete", "-f", &id]);
}

#[test]
fn attach_socket_and_new_parents_are_private_and_stale_sockets_replaced() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("attach-mode");
    let id = start_sleeping_container(&server, dir.path());
    let path = dir.path().join("new/sub/attach");
    // A stale socket of an earlier server is replaced.
    let stale = dir.path().join("stale");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    run_local(async {
        let c = server.client().await;
        c.attach_container(&id, &path, "", false).await.unwrap();
        c.attach_container(&id, &stale, "", false).await.unwrap();
    });
    assert_eq!(mode_of(&path), 0o700, "attach socket mode");
    assert_eq!(mode_of(&dir.path().join("new")), 0o700, "created parent");
    assert_eq!(
        mode_of(&dir.path().join("new/sub")),
        0o700,
        "created parent"
    );
    assert!(fs::symlink_metadata(&stale)
        .unwrap()
        .file_type()
        .is_socket());
    // Nothing but the socket is left next to it (no private bind dir).
    let names: Vec<_> = fs::read_dir(dir.path().join("new/sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("attach")]);
    ringmon::sys::socket::connect_seqpacket(&path).expect("attach socket accepts");
    server.runtime_cmd(&["delete", "-f", &id]);
}

// ---------------------------------------------------------------------------
// Finding 14: peer credentials
// ---------------------------------------------------------------------------

/// What a probe connection saw within its timeout.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// The server closed the connection.
    Closed,
    /// The connection stayed open, waiting for the client.
    Open,
    Other(String),
}

/// Connects to `path` (a stream or a seqpacket socket) and waits a moment
/// for the server to close it.
fn probe(path: &Path, seqpacket: bool) -> Probe {
    let conn = if seqpacket {
        match ringmon::sys::socket::connect_seqpacket(path) {
            Ok(fd) => std::os::unix::net::UnixStream::from(fd),
            Err(e) => return Probe::Other(format!("connect: {e}")),
        }
    } else {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => s,
            Err(e) => return Probe::Other(format!("connect: {e}")),
        }
    };
    let mut conn = conn;
    conn.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => Probe::Closed,
        Ok(n) => Probe::Other(format!("{n} bytes")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Probe::Open
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Probe::Closed,
        Err(e) => Probe::Other(format!("read: {e}")),
    }
}

/// Not a test of its own: the body of the probe run as another user (this
/// test binary started again with `RINGMON_PEER_PROBE` set). Does nothing
/// otherwise.
#[test]
fn peer_probe_helper() {
    let Some(path) = std::env::var_os("RINGMON_PEER_PROBE") else {
        return;
    };
    let seqpacket = std::env::var_os("RINGMON_PEER_PROBE_SEQPACKET").is_some();
    println!("PROBE-RESULT {:?}", probe(Path::new(&path), seqpacket));
}

/// Runs [`probe`] as uid/gid nobody (no supplementary groups) from a copy of
/// this test binary that nobody may run.
fn probe_as_nobody(exe: &Path, path: &Path, seqpacket: bool) -> String {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "peer_probe_helper",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("RINGMON_PEER_PROBE", path)
    .uid(NOBODY)
    .gid(NOBODY)
    .current_dir("/");
    if seqpacket {
        cmd.env("RINGMON_PEER_PROBE_SEQPACKET", "1");
    }
    let out = cmd.output().expect("run the probe as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("PROBE-RESULT ").map(|(_, r)| r.trim()))
        .unwrap_or_else(|| {
            panic!(
                "probe printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

/// Gives everyone access to `path` and the directories above it up to `/`
/// (search only for directories), so that only the peer check can refuse.
fn open_up(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap();
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() || dir == Path::new("/") {
            break;
        }
        let mode = mode_of(dir);
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o005)).unwrap();
    }
}

#[test]
fn other_users_are_refused_on_every_socket_and_root_still_served() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("peer");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("probe");
    fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let id = start_sleeping_container(&server, dir.path());
    let attach = dir.path().join("attach");
    let fd_socket = run_local_value(async {
        let c = server.client().await;
        c.attach_container(&id, &attach, "", false).await.unwrap();
        c.start_fd_socket().await.unwrap()
    });
    let sockets = [
        ("conmon.sock", server.socket.clone(), false),
        ("fd socket", fd_socket, true),
        ("attach socket", attach, true),
    ];
    for (name, path, seqpacket) in &sockets {
        open_up(path);
        assert_eq!(
            probe_as_nobody(&exe, path, *seqpacket),
            "Closed",
            "{name}: a connection of uid {NOBODY} must be closed"
        );
        // Root is still served on the same socket.
        assert_eq!(probe(path, *seqpacket), Probe::Open, "{name} as root");
    }
    run_local(async {
        server.client().await.version(false).await.unwrap();
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}

fn run_local_value<T: 'static, F: std::future::Future<Output = T>>(f: F) -> T {
    let mut out = None;
    run_local(async {
        out = Some(f.await);
    });
    out.unwrap()
}
