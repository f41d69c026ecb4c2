//! Pod namespaces (spec §3.7, §6.2): the request type, the pinns file
//! layout, the `pause` argv, and the registry of pinned pods with their
//! creation (running `ringmon pause`) and release (unmount, delete, stop the
//! pause process).
//!
//! One pause process per (base path, pod id): a repeat call for the same
//! pod reuses it and answers the same paths (conmon-rs keeps one pause per
//! server lifetime and answers the first instance's base path with the new
//! pod id, which points at files nobody created).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use super::{stderr_suffix, Monitor};
use crate::sys;
use crate::sys::namespace::CloneFlags;

/// Where pins go when the request names no base path (the Go client sends
/// this value itself when its `BasePath` is empty).
pub const DEFAULT_BASE_PATH: &str = "/var/run";

/// How long the server waits for `ringmon pause` to pin the namespaces.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a release waits for the pause process to exit after SIGTERM
/// before it sends SIGKILL.
const PAUSE_STOP_GRACE: Duration = Duration::from_secs(2);

/// A namespace kind that can be pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Namespace {
    Ipc,
    Pid,
    Net,
    User,
    Uts,
}

impl Namespace {
    /// The order pins are created in and replied in (spec §3.7 step 6).
    pub const ALL: [Namespace; 5] = [
        Namespace::Ipc,
        Namespace::Pid,
        Namespace::Net,
        Namespace::User,
        Namespace::Uts,
    ];

    /// The name used in `/proc/<pid>/ns/<name>` and `<base>/<name>ns/`.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Ipc => "ipc",
            Namespace::Pid => "pid",
            Namespace::Net => "net",
            Namespace::User => "user",
            Namespace::Uts => "uts",
        }
    }

    /// The `unshare(2)` flag that creates this namespace.
    pub fn clone_flag(self) -> CloneFlags {
        match self {
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::User => CloneFlags::CLONE_NEWUSER,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// A validated `createNamespaces` request, also the configuration of the
/// `pause` subcommand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateNamespaces {
    pub pod_id: String,
    pub base_path: PathBuf,
    /// Namespaces to create, in request order (repeats are harmless).
    pub namespaces: Vec<Namespace>,
    /// `CONTAINER_ID HOST_ID SIZE` lines for the user namespace.
    pub uid_mappings: Vec<String>,
    pub gid_mappings: Vec<String>,
}

impl CreateNamespaces {
    pub fn wants(&self, ns: Namespace) -> bool {
        self.namespaces.contains(&ns)
    }
}

/// Errors of pinning and releasing namespaces. The messages are what RPC
/// clients (and the pause process's stderr) show.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("no pod ID provided")]
    NoPodId,
    #[error(
        "invalid pod ID '{0}': must be a plain file name (no '/', no '..', no control characters)"
    )]
    BadPodId(String),
    #[error("invalid base path '{0}': must be an absolute path without '..'")]
    BadBasePath(String),
    #[error("user ID mappings are empty")]
    UidMappingsEmpty,
    #[error("group ID mappings are empty")]
    GidMappingsEmpty,
    #[error("{kind} mapping '{mapping}' has wrong format: {reason}")]
    BadMapping {
        kind: &'static str,
        mapping: String,
        reason: &'static str,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("'{0}' is already a mount point (pinned by another pause process?)")]
    AlreadyPinned(PathBuf),
    #[error("namespace helper of pod '{pod_id}' exited before it was ready")]
    HelperLost { pod_id: String },
    #[error("namespace helper sent an unexpected message '{0}'")]
    HelperProtocol(String),
    #[error("pause process for pod '{pod_id}' failed ({status}){}", stderr_suffix(.stderr))]
    PauseFailed {
        pod_id: String,
        status: String,
        stderr: String,
    },
    #[error("pause process for pod '{pod_id}' did not finish within {}s", PAUSE_TIMEOUT.as_secs())]
    PauseTimeout { pod_id: String },
    #[error("pause pid file {path}: invalid pid '{content}'")]
    PidParse { path: PathBuf, content: String },
    #[error("namespaces of pod '{pod_id}' under '{}' are being created by another call", .base_path.display())]
    Busy { pod_id: String, base_path: PathBuf },
    #[error("no namespaces pinned for pod '{pod_id}' under '{}'", .base_path.display())]
    UnknownPod { pod_id: String, base_path: PathBuf },
}

impl NamespaceError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        NamespaceError::Io {
            context: context.into(),
            source,
        }
    }
}

/// `<base>/<name>ns/<podId>`, the pinns layout.
pub fn pin_path(base: &Path, ns: Namespace, pod_id: &str) -> PathBuf {
    base.join(format!("{}ns", ns.name())).join(pod_id)
}

/// `<base>/conmonrs/<podId>.pid`, the pause process's pid.
pub fn pid_file_path(base: &Path, pod_id: &str) -> PathBuf {
    base.join("conmonrs").join(format!("{pod_id}.pid"))
}

/// A pod id becomes a file name: non-empty, no `/`, no `..`, no control
/// characters.
pub fn check_pod_id(pod_id: &str) -> Result<(), NamespaceError> {
    if pod_id.is_empty() {
        return Err(NamespaceError::NoPodId);
    }
    if pod_id == "."
        || pod_id.contains("..")
        || pod_id.contains('/')
        || pod_id.chars().any(char::is_control)
    {
        return Err(NamespaceError::BadPodId(pod_id.to_string()));
    }
    Ok(())
}

/// One line of a uid_map / gid_map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdMapping {
    /// Parses `CONTAINER_ID HOST_ID SIZE` (whitespace-separated u32 values;
    /// a size of 0 is refused, the kernel would refuse it too). `kind` names
    /// the list in errors (`uid`, `gid`).
    pub fn parse(kind: &'static str, text: &str) -> Result<IdMapping, NamespaceError> {
        let bad = |reason| NamespaceError::BadMapping {
            kind,
            mapping: text.to_string(),
            reason,
        };
        const SHAPE: &str = "expected three whitespace-separated unsigned 32-bit numbers \
                             'CONTAINER_ID HOST_ID SIZE'";
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [c, h, s] = fields[..] else {
            return Err(bad(SHAPE));
        };
        let num = |f: &str| f.parse::<u32>().map_err(|_| bad(SHAPE));
        let mapping = IdMapping {
            container_id: num(c)?,
            host_id: num(h)?,
            size: num(s)?,
        };
        if mapping.size == 0 {
            return Err(bad("SIZE must be at least 1"));
        }
        Ok(mapping)
    }

    /// The line written to the map file.
    pub fn line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.size)
    }
}

/// Parses every mapping of a list; an empty list is an error named by
/// `empty`.
pub fn parse_mappings(
    kind: &'static str,
    list: &[String],
    empty: NamespaceError,
) -> Result<Vec<IdMapping>, NamespaceError> {
    if list.is_empty() {
        return Err(empty);
    }
    list.iter().map(|m| IdMapping::parse(kind, m)).collect()
}

/// Checks a request and builds the argv (after the program name) of the
/// `pause` subcommand for it: `pause --base-path <base> --pod-id=<id>`, then
/// one flag per requested namespace in request order, `--user` followed by
/// its `--uid-mappings=`/`--gid-mappings=` values.
pub fn pause_args(req: &CreateNamespaces) -> Result<Vec<String>, NamespaceError> {
    check_pod_id(&req.pod_id)?;
    if !req.base_path.is_absolute()
        || req
            .base_path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(NamespaceError::BadBasePath(
            req.base_path.display().to_string(),
        ));
    }
    let mut args = vec![
        "pause".to_string(),
        "--base-path".to_string(),
        req.base_path.display().to_string(),
        format!("--pod-id={}", req.pod_id),
    ];
    let mut seen = HashSet::new();
    for ns in &req.namespaces {
        if !seen.insert(*ns) {
            continue;
        }
        args.push(format!("--{}", ns.name()));
        if *ns == Namespace::User {
            parse_mappings("uid", &req.uid_mappings, NamespaceError::UidMappingsEmpty)?;
            parse_mappings("gid", &req.gid_mappings, NamespaceError::GidMappingsEmpty)?;
            args.extend(
                req.uid_mappings
                    .iter()
                    .map(|m| format!("--uid-mappings={m}")),
            );
            args.extend(
                req.gid_mappings
                    .iter()
                    .map(|m| format!("--gid-mappings={m}")),
            );
        }
    }
    Ok(args)
}

/// A pod whose namespaces are pinned by a running pause process.
struct PinnedPod {
    pid: u32,
    /// Signals the pause process without a pid reuse race (None on kernels
    /// without pidfds).
    pidfd: Option<OwnedFd>,
    pid_file: PathBuf,
    pins: Vec<(Namespace, PathBuf)>,
}

/// The pods pinned by this server, keyed by (base path, pod id).
#[derive(Default)]
pub struct PodNamespaces {
    pods: RefCell<HashMap<(PathBuf, String), PinnedPod>>,
    creating: RefCell<HashSet<(PathBuf, String)>>,
}

/// Removes a key from `creating` when the create call ends, however it ends.
struct CreatingGuard<'a> {
    set: &'a RefCell<HashSet<(PathBuf, String)>>,
    key: (PathBuf, String),
}

impl Drop for CreatingGuard<'_> {
    fn drop(&mut self) {
        self.set.borrow_mut().remove(&self.key);
    }
}

impl Monitor {
    /// Pins the requested namespaces of a pod with a `ringmon pause`
    /// process and returns all five pins in reply order. A pod already
    /// pinned under the same base path is answered from the registry (its
    /// first request's selection stands).
    pub async fn create_namespaces(
        &self,
        req: &CreateNamespaces,
    ) -> Result<Vec<(Namespace, PathBuf)>, NamespaceError> {
        let registry = &self.namespaces;
        let key = (req.base_path.clone(), req.pod_id.clone());
        if let Some(pod) = registry.pods.borrow().get(&key) {
            debug!(pod_id = %req.pod_id, pid = pod.pid, "createNamespaces: reusing pause process");
            return Ok(pod.pins.clone());
        }
        if !registry.creating.borrow_mut().insert(key.clone()) {
            return Err(NamespaceError::Busy {
                pod_id: req.pod_id.clone(),
                base_path: req.base_path.clone(),
            });
        }
        let _creating = CreatingGuard {
            set: &registry.creating,
            key: key.clone(),
        };
        let args = pause_args(req)?;
        std::fs::create_dir_all(&req.base_path).map_err(|e| {
            NamespaceError::io(format!("create base path {}", req.base_path.display()), e)
        })?;
        let pod = self.run_pause(req, &args).await?;
        info!(pod_id = %req.pod_id, pid = pod.pid, base = %req.base_path.display(), "namespaces pinned");
        let pins = pod.pins.clone();
        registry.pods.borrow_mut().insert(key, pod);
        Ok(pins)
    }

    async fn run_pause(
        &self,
        req: &CreateNamespaces,
        args: &[String],
    ) -> Result<PinnedPod, NamespaceError> {
        let (stderr_r, stderr_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| NamespaceError::io("create pause stderr pipe", e.into()))?;
        // /proc/self/exe is the running server even if its file was
        // replaced or deleted since; argv[0] shows the real path in `ps`.
        let mut cmd = Command::new("/proc/self/exe");
        if let Ok(exe) = std::env::current_exe() {
            cmd.arg0(exe);
        }
        // Its own process group: whatever a failed pause leaves behind (a
        // helper, a pinner not reported yet) goes with one killpg.
        cmd.args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_w));
        crate::sys::limits::restore_nofile_in_child(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| NamespaceError::io("spawn pause process", e))?;
        drop(cmd); // our copy of the stderr write end
        let pid = child.id();
        // Until its pins are known good, a timeout, a cancelled call
        // (dropping this future) or an unreadable pid file kills the pause
        // process group (the pinner is in it) and undoes its pins.
        let mut unfinished = UnfinishedPause {
            pid,
            req,
            armed: true,
        };
        let waiting = self.wait_spawned(pid);
        let pod_id = req.pod_id.clone();
        let exit = match tokio::time::timeout(PAUSE_TIMEOUT, waiting).await {
            Ok(exit) => {
                exit.map_err(|e| NamespaceError::io(format!("wait for pause pid {pid}"), e))?
            }
            // The abandoned wait handed the pid to the sweep, which reaps it
            // once `unfinished` killed it.
            Err(_) => return Err(NamespaceError::PauseTimeout { pod_id }),
        };
        if exit != sys::process::Exit::Code(0) {
            // It undid its own pins (and must not touch those of a pod it
            // refused as already pinned); only leftovers of its group go.
            unfinished.armed = false;
            let _ = sys::namespace::signal_group(pid, Signal::SIGKILL);
            let status = match exit {
                sys::process::Exit::Code(c) => format!("exit code {c}"),
                sys::process::Exit::Signal(s) => format!("killed by signal {s}"),
            };
            return Err(NamespaceError::PauseFailed {
                pod_id,
                status,
                // Its own descendants point their stdio at /dev/null, so only
                // the dead process's message is in the pipe.
                stderr: sys::fd::read_available(stderr_r.as_fd(), 16 * 1024),
            });
        }
        let pid_file = pid_file_path(&req.base_path, &req.pod_id);
        let content = std::fs::read_to_string(&pid_file)
            .map_err(|e| NamespaceError::io(format!("read {}", pid_file.display()), e))?;
        let pause_pid: u32 = content
            .trim()
            .parse()
            .map_err(|_| NamespaceError::PidParse {
                path: pid_file.clone(),
                content: content.clone(),
            })?;
        let pins = Namespace::ALL
            .iter()
            .map(|ns| (*ns, pin_path(&req.base_path, *ns, &req.pod_id)))
            .collect();
        unfinished.armed = false;
        Ok(PinnedPod {
            pid: pause_pid,
            pidfd: sys::process::pidfd_open(pause_pid).ok(),
            pid_file,
            pins,
        })
    }

    /// Unpins the namespaces of one pod and stops its pause process.
    pub async fn release_namespaces(
        &self,
        base_path: &Path,
        pod_id: &str,
    ) -> Result<(), NamespaceError> {
        let key = (base_path.to_path_buf(), pod_id.to_string());
        let Some(pod) = self.namespaces.pods.borrow_mut().remove(&key) else {
            return Err(NamespaceError::UnknownPod {
                pod_id: pod_id.to_string(),
                base_path: base_path.to_path_buf(),
            });
        };
        release(pod).await;
        info!(pod_id, base = %base_path.display(), "namespaces released");
        Ok(())
    }

    /// Releases every pinned pod (server shutdown, spec §1.8 step 1).
    pub(crate) async fn release_all_namespaces(&self) {
        let pods: Vec<_> = self.namespaces.pods.borrow_mut().drain().collect();
        let count = pods.len();
        futures::future::join_all(pods.into_iter().map(|(_, pod)| release(pod))).await;
        if count > 0 {
            info!(pods = count, "pinned namespaces released");
        }
    }
}

/// Unmounts and deletes the pins, stops the pause process (SIGTERM, then
/// SIGKILL after a grace period) and deletes its pid file.
async fn release(pod: PinnedPod) {
    for (_, path) in &pod.pins {
        remove_pin(path);
    }
    let signal = |sig| match &pod.pidfd {
        Some(fd) => {
            let _ = sys::namespace::pidfd_send_signal(fd, sig);
        }
        None => {
            let _ = sys::namespace::signal_process(pod.pid, sig);
        }
    };
    signal(Signal::SIGTERM);
    if !wait_gone(&pod, PAUSE_STOP_GRACE).await {
        warn!(
            pid = pod.pid,
            "pause process ignored SIGTERM; sending SIGKILL"
        );
        signal(Signal::SIGKILL);
        wait_gone(&pod, PAUSE_STOP_GRACE).await;
    }
    match std::fs::remove_file(&pod.pid_file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            warn!("remove {}: {e}", pod.pid_file.display());
        }
        _ => {}
    }
}

/// Waits until the pause process has exited (it is then a zombie for the
/// SIGCHLD sweep to reap, or gone); false if `limit` passed first.
async fn wait_gone(pod: &PinnedPod, limit: Duration) -> bool {
    if let Some(fd) = pod.pidfd.as_ref().and_then(|fd| fd.try_clone().ok()) {
        if let Ok(fd) = sys::reactor::async_fd(fd, tokio::io::Interest::READABLE) {
            // A pidfd turns readable when its process exits.
            return tokio::time::timeout(limit, fd.readable()).await.is_ok();
        }
    }
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if process_gone(pod.pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    process_gone(pod.pid)
}

/// Absent, or a zombie waiting to be reaped.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Unmounts (detached) and deletes one pin; errors other than "not there"
/// are logged.
pub(crate) fn remove_pin(path: &Path) {
    if let Err(e) = sys::namespace::detach_unmount(path) {
        // EINVAL: not a mount point; ENOENT: already gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            warn!("unmount {}: {e}", path.display());
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => warn!("remove {}: {e}", path.display()),
        _ => {}
    }
}

/// A pause process whose outcome the server could not take over (timeout,
/// cancelled call, bad pid file): dropping it kills the process group and
/// undoes the pins.
struct UnfinishedPause<'a> {
    pid: u32,
    req: &'a CreateNamespaces,
    /// Cleared once the pause process exited on its own.
    armed: bool,
}

impl Drop for UnfinishedPause<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        warn!(pod_id = %self.req.pod_id, pid = self.pid, "pause process abandoned; undoing its pins");
        // The pause process leads its group (process_group(0)), which
        // outlives it while the pinner is in it.
        let _ = sys::namespace::signal_group(self.pid, Signal::SIGKILL);
        undo_partial_pins(self.req);
    }
}

/// After a pause process was killed mid-way: undo what it may have pinned.
fn undo_partial_pins(req: &CreateNamespaces) {
    let pid_file = pid_file_path(&req.base_path, &req.pod_id);
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|c| c.trim().parse::<u32>().ok())
    {
        let _ = sys::namespace::signal_process(pid, Signal::SIGKILL);
    }
    for ns in Namespace::ALL {
        remove_pin(&pin_path(&req.base_path, ns, &req.pod_id));
    }
    let _ = std::fs::remove_file(pid_file);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(namespaces: &[Namespace]) -> CreateNamespaces {
        CreateNamespaces {
            pod_id: "pod-1".into(),
            base_path: PathBuf::from("/var/run"),
            namespaces: namespaces.to_vec(),
            uid_mappings: vec!["0 1000 1".into()],
            gid_mappings: vec!["0 2000 1".into(), "1 3000 10".into()],
        }
    }

    #[test]
    fn mappings_parse_three_u32() {
        assert_eq!(
            IdMapping::parse("uid", " 0\t100000  65536 ").unwrap(),
            IdMapping {
                container_id: 0,
                host_id: 100000,
                size: 65536
            }
        );
        assert_eq!(IdMapping::parse("uid", "0 0 1").unwrap().line(), "0 0 1\n");
        for bad in [
            "",
            "0 0",
            "0 0 1 2",
            "a 0 1",
            "0 -1 1",
            "0 0 4294967296",
            "0,0,1",
        ] {
            let e = IdMapping::parse("gid", bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("gid mapping '{bad}' has wrong format")),
                "{e}"
            );
        }
        let e = IdMapping::parse("uid", "0 0 0").unwrap_err().to_string();
        assert!(e.contains("SIZE must be at least 1"), "{e}");
    }

    #[test]
    fn argv_follows_request_order_with_mappings_after_user() {
        let args = pause_args(&req(&[
            Namespace::Net,
            Namespace::User,
            Namespace::Ipc,
            Namespace::Net,
        ]))
        .unwrap();
        assert_eq!(
            args,
            [
                "pause",
                "--base-path",
                "/var/run",
                "--pod-id=pod-1",
                "--net",
                "--user",
                "--uid-mappings=0 1000 1",
                "--gid-mappings=0 2000 1",
                "--gid-mappings=1 3000 10",
                "--ipc",
            ]
        );
        assert_eq!(
            pause_args(&req(&[])).unwrap(),
            ["pause", "--base-path", "/var/run", "--pod-id=pod-1"]
        );
    }

    #[test]
    fn argv_checks() {
        let mut r = req(&[Namespace::User]);
        r.uid_mappings.clear();
        assert_eq!(
            pause_args(&r).unwrap_err().to_string(),
            "user ID mappings are empty"
        );
        let mut r = req(&[Namespace::User]);
        r.gid_mappings.clear();
        assert_eq!(
            pause_args(&r).unwrap_err().to_string(),
            "group ID mappings are empty"
        );
        // Mappings matter only for a user namespace.
        let mut r = req(&[Namespace::Net]);
        r.uid_mappings = vec!["junk".into()];
        assert!(pause_args(&r).is_ok());
        let mut r = req(&[Namespace::User]);
        r.uid_mappings = vec!["junk".into()];
        assert!(pause_args(&r)
            .unwrap_err()
            .to_string()
            .starts_with("uid mapping 'junk' has wrong format"));
        let mut r = req(&[]);
        r.pod_id.clear();
        assert_eq!(
            pause_args(&r).unwrap_err().to_string(),
            "no pod ID provided"
        );
        for bad in ["a/b", "..", "a..b", "."] {
            let mut r = req(&[]);
            r.pod_id = bad.into();
            assert!(matches!(pause_args(&r), Err(NamespaceError::BadPodId(_))));
        }
        let mut r = req(&[]);
        r.base_path = PathBuf::from("relative");
        assert!(matches!(
            pause_args(&r),
            Err(NamespaceError::BadBasePath(_))
        ));
    }

    #[test]
    fn layout() {
        let base = Path::new("/tmp/b");
        assert_eq!(
            pin_path(base, Namespace::Net, "p"),
            Path::new("/tmp/b/netns/p")
        );
        assert_eq!(
            pin_path(base, Namespace::User, "p"),
            Path::new("/tmp/b/userns/p")
        );
        assert_eq!(pid_file_path(base, "p"), Path::new("/tmp/b/conmonrs/p.pid"));
        let names: Vec<_> = Namespace::ALL.iter().map(|n| n.name()).collect();
        assert_eq!(names, ["ipc", "pid", "net", "user", "uts"]);
    }
}
