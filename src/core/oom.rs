//! OOM detection for a container cgroup (v1 and v2).
//!
//! An [`OomWatcher`] is started when a container is registered (spec §3.2) and
//! finished by the exit watcher once the container process is gone (§3.0.7).
//! `finish` returns the verdict; writing the OOM exit files is the caller's job.
//!
//! Layouts handled:
//! * unified (`/sys/fs/cgroup` is a cgroup2 mount): `<cgroup>/memory.events`,
//!   watched through kernfs change notification (`EPOLLPRI` on the open file,
//!   the event inotify reports as `IN_MODIFY`);
//! * legacy / hybrid (`/sys/fs/cgroup` is a tmpfs): the memory controller's v1
//!   hierarchy at `/sys/fs/cgroup/memory` (eventfd registered through
//!   `cgroup.event_control`, plus the `oom_kill` counter of `memory.oom_control`);
//!   when no v1 hierarchy carries `memory`, the v2 tree at `/sys/fs/cgroup/unified`
//!   is used if the memory controller is enabled there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use nix::unistd::{lseek, read, Whence};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::sys::reactor::async_fd;

/// Mount point of the cgroup file systems.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// v1 memory hierarchy (legacy and hybrid layouts).
const V1_MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";
/// v2 hierarchy in the hybrid layout.
const HYBRID_UNIFIED_ROOT: &str = "/sys/fs/cgroup/unified";

const MEMORY_EVENTS: &str = "memory.events";
const OOM_CONTROL: &str = "memory.oom_control";
const EVENT_CONTROL: &str = "cgroup.event_control";

/// Errors while setting up OOM watching. Every variant names the path involved
/// and carries the OS error.
#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error("read cgroup file '{path}': {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("statfs '{path}': {source}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("open '{path}': {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("create eventfd for '{path}': {source}")]
    EventFd {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("register OOM eventfd via '{path}': {source}")]
    RegisterEvent {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("register OOM watch fd for '{path}' with the tokio reactor: {source}")]
    Reactor {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------
// Pure parsers
// ---------------------------------------------------------------------------

/// One line of `/proc/<pid>/cgroup`: `hierarchy-ID:controller-list:cgroup-path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroupEntry {
    pub hierarchy_id: u32,
    /// Controllers bound to the hierarchy (`name=systemd` style entries kept
    /// verbatim); empty for the v2 hierarchy.
    pub controllers: Vec<String>,
    /// Path relative to the hierarchy root; may itself contain `:`.
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`. Malformed lines are skipped.
pub fn parse_proc_cgroup(content: &str) -> Vec<ProcCgroupEntry> {
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let hierarchy_id = fields.next()?.trim().parse().ok()?;
            let controllers = fields
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let path = fields.next()?.to_owned();
            Some(ProcCgroupEntry {
                hierarchy_id,
                controllers,
                path,
            })
        })
        .collect()
}

/// Path of the cgroup in the v1 hierarchy carrying the `memory` controller.
pub fn v1_memory_path(entries: &[ProcCgroupEntry]) -> Option<&str> {
    entries
        .iter()
        .find(|e| e.controllers.iter().any(|c| c == "memory"))
        .map(|e| e.path.as_str())
}

/// Path of the cgroup in the v2 hierarchy (`0::<path>`).
pub fn unified_path(entries: &[ProcCgroupEntry]) -> Option<&str> {
    entries
        .iter()
        .find(|e| e.hierarchy_id == 0 && e.controllers.is_empty())
        .map(|e| e.path.as_str())
}

/// The OOM related counters of a v2 `memory.events` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub oom: Option<u64>,
    pub oom_kill: Option<u64>,
}

impl MemoryEvents {
    /// True if any counter grew compared with `baseline` (a counter absent
    /// from the baseline counts from zero).
    pub fn increased_since(&self, baseline: &MemoryEvents) -> bool {
        grew(baseline.oom, self.oom) || grew(baseline.oom_kill, self.oom_kill)
    }

    /// True if any OOM counter is non-zero.
    pub fn any_nonzero(&self) -> bool {
        self.oom.unwrap_or(0) > 0 || self.oom_kill.unwrap_or(0) > 0
    }
}

fn grew(before: Option<u64>, now: Option<u64>) -> bool {
    match now {
        Some(now) => now > before.unwrap_or(0),
        None => false,
    }
}

/// Parses `key value` lines, returning the value of `key` if present and numeric.
fn flat_keyed_value(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        if it.next()? == key {
            it.next()?.parse().ok()
        } else {
            None
        }
    })
}

/// Parses a v2 `memory.events` file (`oom` and `oom_kill` lines).
pub fn parse_memory_events(content: &str) -> MemoryEvents {
    MemoryEvents {
        oom: flat_keyed_value(content, "oom"),
        oom_kill: flat_keyed_value(content, "oom_kill"),
    }
}

/// The fields of a v1 `memory.oom_control` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomControl {
    pub oom_kill_disable: Option<bool>,
    pub under_oom: Option<bool>,
    /// Only present on kernels >= 4.13.
    pub oom_kill: Option<u64>,
}

/// Parses a v1 `memory.oom_control` file.
pub fn parse_oom_control(content: &str) -> OomControl {
    OomControl {
        oom_kill_disable: flat_keyed_value(content, "oom_kill_disable").map(|v| v != 0),
        under_oom: flat_keyed_value(content, "under_oom").map(|v| v != 0),
        oom_kill: flat_keyed_value(content, "oom_kill"),
    }
}

/// Joins a `/proc/<pid>/cgroup` path (absolute, `/`-rooted) onto a mount point.
/// Returns `None` for paths escaping the mount (`/..` prefixes show up when the
/// target lives outside our cgroup namespace).
fn join_cgroup_path(root: &Path, cgroup: &str) -> Option<PathBuf> {
    let rel = cgroup.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    })
}

fn is_vanished(err: &io::Error) -> bool {
    // ENODEV: kernfs node deactivated (cgroup removed while a file was open).
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENODEV)
}

fn read_file(path: &Path) -> Result<String, OomError> {
    fs::read_to_string(path).map_err(|source| OomError::Read {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------
// Watcher
// ---------------------------------------------------------------------------

/// Watches one container's memory cgroup for OOM kills.
#[derive(Debug)]
pub struct OomWatcher {
    kind: Kind,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Seen>>,
}

#[derive(Debug)]
enum Kind {
    V1 {
        dir: PathBuf,
        /// `oom_kill` of `memory.oom_control` at start (`None` on kernels < 4.13).
        baseline_kill: Option<u64>,
    },
    V2 {
        dir: PathBuf,
        baseline: MemoryEvents,
        parent: Option<ParentBaseline>,
    },
}

/// Parent cgroup state recorded at start (v2 only). The parent's counters are
/// hierarchical, so they also count OOMs of sibling containers; they are only
/// consulted when the container's own file is gone and the container was the
/// parent's only child cgroup.
#[derive(Debug)]
struct ParentBaseline {
    dir: PathBuf,
    events: MemoryEvents,
    only_child: bool,
}

/// What the background task observed.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    oom: bool,
}

impl OomWatcher {
    /// Starts watching the cgroup of `pid` (the container's init process).
    ///
    /// Returns `Ok(None)` when there is nothing to watch (no `/proc/<pid>/cgroup`,
    /// no memory controller for the process). Must be called inside a tokio
    /// runtime; it spawns a task that `finish` stops.
    pub fn start(pid: u32) -> Result<Option<OomWatcher>, OomError> {
        let proc_path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let content = match fs::read_to_string(&proc_path) {
            Ok(c) => c,
            Err(e) if is_vanished(&e) || e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(source) => {
                return Err(OomError::Read {
                    path: proc_path,
                    source,
                })
            }
        };
        let entries = parse_proc_cgroup(&content);

        let root = Path::new(CGROUP_ROOT);
        let fs_type = statfs(root)
            .map_err(|source| OomError::Statfs {
                path: root.to_path_buf(),
                source,
            })?
            .filesystem_type();

        if fs_type == CGROUP2_SUPER_MAGIC {
            let Some(dir) = unified_path(&entries).and_then(|p| join_cgroup_path(root, p)) else {
                return Ok(None);
            };
            return Self::start_v2(dir);
        }

        if let Some(dir) = v1_memory_path(&entries)
            .and_then(|p| join_cgroup_path(Path::new(V1_MEMORY_ROOT), p))
            .filter(|d| d.join(OOM_CONTROL).exists())
        {
            return Self::start_v1(dir).map(Some);
        }

        // Hybrid layout with the memory controller on the v2 side.
        match unified_path(&entries)
            .and_then(|p| join_cgroup_path(Path::new(HYBRID_UNIFIED_ROOT), p))
        {
            Some(dir) => Self::start_v2(dir),
            None => Ok(None),
        }
    }

    /// Called after the process has exited: performs the final check and
    /// returns true if an OOM kill happened during the container's life (seen
    /// by the event watch) or is visible in the final check.
    pub async fn finish(mut self) -> bool {
        let seen = self.stop_task().await;
        let verdict = match &self.kind {
            Kind::V1 { dir, baseline_kill } => final_check_v1(dir, *baseline_kill, seen),
            Kind::V2 {
                dir,
                baseline,
                parent,
            } => final_check_v2(dir, baseline, parent.as_ref(), seen),
        };
        tracing::debug!(oom = verdict, cgroup = %self.dir().display(), "OOM watch finished");
        verdict
    }

    fn dir(&self) -> &Path {
        match &self.kind {
            Kind::V1 { dir, .. } | Kind::V2 { dir, .. } => dir,
        }
    }

    async fn stop_task(&mut self) -> Seen {
        if let Some(stop) = self.stop.take() {
            // The task may already have ended (verdict reached or cgroup removed).
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(seen) => seen,
                Err(e) => {
                    tracing::warn!(error = %e, cgroup = %self.dir().display(), "OOM watch task failed");
                    Seen::default()
                }
            },
            None => Seen::default(),
        }
    }

    fn start_v1(dir: PathBuf) -> Result<OomWatcher, OomError> {
        let control_path = dir.join(OOM_CONTROL);
        let baseline_kill = parse_oom_control(&read_file(&control_path)?).oom_kill;

        let (stop, task) = match register_oom_eventfd(&dir, &control_path) {
            Ok(efd) => {
                let (stop, stop_rx) = oneshot::channel();
                let task = tokio::spawn(watch_v1(efd, control_path, stop_rx));
                (Some(stop), Some(task))
            }
            // The oom_kill counter alone still gives a reliable verdict.
            Err(e) if baseline_kill.is_some() => {
                tracing::warn!(error = %e, "OOM eventfd unavailable, relying on the oom_kill counter");
                (None, None)
            }
            Err(e) => return Err(e),
        };
        Ok(OomWatcher {
            kind: Kind::V1 { dir, baseline_kill },
            stop,
            task,
        })
    }

    fn start_v2(dir: PathBuf) -> Result<Option<OomWatcher>, OomError> {
        let events_path = dir.join(MEMORY_EVENTS);
        let file = match File::open(&events_path) {
            Ok(f) => f,
            // No memory controller enabled for this cgroup (or the root cgroup).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(OomError::Open {
                    path: events_path,
                    source,
                })
            }
        };
        // Read through the watched descriptor: this also acknowledges any
        // notification pending on it.
        let baseline = parse_memory_events(&reread(&file).map_err(|source| OomError::Read {
            path: events_path.clone(),
            source,
        })?);
        let parent = dir.parent().and_then(|p| parent_baseline(p, &dir));

        let file = async_fd(OwnedFd::from(file), Interest::PRIORITY).map_err(|source| {
            OomError::Reactor {
                path: events_path.clone(),
                source,
            }
        })?;
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(watch_v2(file, events_path, baseline, stop_rx));
        Ok(Some(OomWatcher {
            kind: Kind::V2 {
                dir,
                baseline,
                parent,
            },
            stop: Some(stop),
            task: Some(task),
        }))
    }
}

impl Drop for OomWatcher {
    fn drop(&mut self) {
        // Dropping the sender ends the task; abort covers a task stuck elsewhere.
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Registers a new eventfd for OOM notifications of the v1 cgroup `dir`.
fn register_oom_eventfd(dir: &Path, control_path: &Path) -> Result<AsyncFd<OwnedFd>, OomError> {
    let control = File::open(control_path).map_err(|source| OomError::Open {
        path: control_path.to_path_buf(),
        source,
    })?;
    let efd =
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(|source| {
            OomError::EventFd {
                path: control_path.to_path_buf(),
                source,
            }
        })?;

    let event_control = dir.join(EVENT_CONTROL);
    let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
    OpenOptions::new()
        .write(true)
        .open(&event_control)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|source| OomError::RegisterEvent {
            path: event_control,
            source,
        })?;
    // The kernel only needs `control` while registering; the event lives until
    // the eventfd is closed or the cgroup is removed.
    drop(control);

    async_fd(OwnedFd::from(efd), Interest::READABLE).map_err(|source| OomError::Reactor {
        path: control_path.to_path_buf(),
        source,
    })
}

fn parent_baseline(parent: &Path, child: &Path) -> Option<ParentBaseline> {
    let events = parse_memory_events(&fs::read_to_string(parent.join(MEMORY_EVENTS)).ok()?);
    Some(ParentBaseline {
        dir: parent.to_path_buf(),
        events,
        only_child: has_no_sibling_cgroups(parent, child),
    })
}

/// True if `parent` has no child cgroup other than `child` (which may be gone).
fn has_no_sibling_cgroups(parent: &Path, child: &Path) -> bool {
    let Ok(rd) = fs::read_dir(parent) else {
        return false;
    };
    let child_name = child.file_name();
    for entry in rd {
        let Ok(entry) = entry else { return false };
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(true);
        if is_dir && Some(entry.file_name().as_os_str()) != child_name {
            return false;
        }
    }
    true
}

/// v1 verdict. The `oom_kill` counter (kernel >= 4.13) is authoritative while the
/// cgroup exists: the eventfd also fires when an *ancestor* hits its limit and
/// kills a sibling's task, which is not this container's OOM. Without the
/// counter, or once the cgroup is gone, the eventfd observation decides.
fn final_check_v1(dir: &Path, baseline_kill: Option<u64>, seen: Seen) -> bool {
    let path = dir.join(OOM_CONTROL);
    match fs::read_to_string(&path) {
        Ok(c) => match (baseline_kill, parse_oom_control(&c).oom_kill) {
            (Some(before), Some(now)) => now > before,
            _ => seen.oom,
        },
        Err(e) => {
            if !is_vanished(&e) {
                tracing::warn!(path = %path.display(), error = %e, "final OOM check failed");
            }
            seen.oom
        }
    }
}

/// v2 verdict: the event watch's observation, or an increase in the
/// container's own counters. If the container's file is gone, the parent's
/// counters are only trusted when the container was the parent's only child.
fn final_check_v2(
    dir: &Path,
    baseline: &MemoryEvents,
    parent: Option<&ParentBaseline>,
    seen: Seen,
) -> bool {
    if seen.oom {
        return true;
    }
    let path = dir.join(MEMORY_EVENTS);
    match fs::read_to_string(&path) {
        Ok(c) => parse_memory_events(&c).increased_since(baseline),
        Err(e) => {
            if !is_vanished(&e) {
                tracing::warn!(path = %path.display(), error = %e, "final OOM check failed");
            }
            let Some(parent) = parent else { return false };
            if !parent.only_child || !has_no_sibling_cgroups(&parent.dir, dir) {
                return false;
            }
            fs::read_to_string(parent.dir.join(MEMORY_EVENTS))
                .map(|c| parse_memory_events(&c).increased_since(&parent.events))
                .unwrap_or(false)
        }
    }
}

/// Re-reads a cgroup file from the start through an open descriptor. Reading
/// through the polled descriptor is what re-arms kernfs change notification.
fn reread(fd: impl AsFd) -> io::Result<String> {
    let fd = fd.as_fd();
    lseek(fd, 0, Whence::SeekSet)?;
    let mut content = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => content.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    String::from_utf8(content).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads and resets the counter of a non-blocking eventfd.
fn read_eventfd(fd: impl AsFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let n = read(fd.as_fd(), &mut buf)?;
    if n != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short eventfd read",
        ));
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Outcome of handling a batch of notifications.
enum Step {
    Continue,
    Done,
}

async fn watch_v1(
    efd: AsyncFd<OwnedFd>,
    control_path: PathBuf,
    mut stop: oneshot::Receiver<()>,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                // Pick up a notification that raced with the exit.
                if let Ok(n) = read_eventfd(efd.get_ref()) {
                    on_v1_event(n, &control_path, &mut seen);
                }
                return seen;
            }
            ready = efd.readable() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(path = %control_path.display(), error = %e, "OOM eventfd poll failed");
                        return seen;
                    }
                };
                match guard.try_io(|fd| read_eventfd(fd.get_ref())) {
                    Ok(Ok(n)) => {
                        if let Step::Done = on_v1_event(n, &control_path, &mut seen) {
                            return seen;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(path = %control_path.display(), error = %e, "OOM eventfd read failed");
                        return seen;
                    }
                    Err(_would_block) => continue,
                }
            }
        }
    }
}

/// The kernel also signals the eventfd when the cgroup is removed, so an event
/// only counts while `memory.oom_control` is still readable.
fn on_v1_event(count: u64, control_path: &Path, seen: &mut Seen) -> Step {
    if count == 0 {
        return Step::Continue;
    }
    match fs::read_to_string(control_path) {
        Ok(_) => {
            tracing::debug!(path = %control_path.display(), "OOM event");
            seen.oom = true;
            Step::Done
        }
        // Cgroup removed: the watch is over, nothing more can happen.
        Err(_) => Step::Done,
    }
}

/// Waits for kernfs change notifications on `memory.events` (a change raises
/// `EPOLLPRI`/`EPOLLERR` on the open file — the same event that inotify reports
/// as `IN_MODIFY`) and re-reads the counters on each.
async fn watch_v2(
    file: AsyncFd<OwnedFd>,
    events_path: PathBuf,
    baseline: MemoryEvents,
    mut stop: oneshot::Receiver<()>,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            biased;
            // The final check re-reads the file; nothing to drain here.
            _ = &mut stop => return seen,
            ready = file.ready(Interest::PRIORITY) => {
                match ready {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        tracing::warn!(path = %events_path.display(), error = %e, "OOM watch poll failed");
                        return seen;
                    }
                }
                let content = reread(file.get_ref());
                if let Step::Done = on_v2_change(content, &events_path, &baseline, &mut seen) {
                    return seen;
                }
            }
        }
    }
}

/// Handles one change notification given the re-read content of `memory.events`.
fn on_v2_change(
    content: io::Result<String>,
    events_path: &Path,
    baseline: &MemoryEvents,
    seen: &mut Seen,
) -> Step {
    match content {
        Ok(c) => {
            if parse_memory_events(&c).increased_since(baseline) {
                tracing::debug!(path = %events_path.display(), "OOM event");
                seen.oom = true;
                Step::Done
            } else {
                Step::Continue
            }
        }
        // The counters changed and the cgroup vanished before they could be
        // read ("slice removal race"): assume OOM.
        Err(e) if is_vanished(&e) => {
            seen.oom = true;
            Step::Done
        }
        Err(e) => {
            tracing::warn!(path = %events_path.display(), error = %e, "re-reading memory.events failed");
            Step::Done
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn proc_cgroup_v1_hybrid() {
        let content = "10:hugetlb:/\n9:name=systemd:/\n4:memory:/pod/abc\n2:cpu,cpuacct:/x\n0::/\n";
        let entries = parse_proc_cgroup(content);
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1].controllers, vec!["name=systemd".to_string()]);
        assert_eq!(entries[3].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(v1_memory_path(&entries), Some("/pod/abc"));
        assert_eq!(unified_path(&entries), Some("/"));
    }

    #[test]
    fn proc_cgroup_v2_only() {
        let entries = parse_proc_cgroup("0::/kubepods/pod1/ctr\n");
        assert_eq!(
            entries,
            vec![ProcCgroupEntry {
                hierarchy_id: 0,
                controllers: vec![],
                path: "/kubepods/pod1/ctr".into()
            }]
        );
        assert_eq!(v1_memory_path(&entries), None);
        assert_eq!(unified_path(&entries), Some("/kubepods/pod1/ctr"));
    }

    #[test]
    fn proc_cgroup_path_with_colon_and_garbage() {
        let entries = parse_proc_cgroup("garbage\n5:memory,blkio:/a:b/c\nx:y:z\n\n");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, "/a:b/c");
        assert_eq!(v1_memory_path(&entries), Some("/a:b/c"));
        // "memory" must be a whole controller name.
        let entries = parse_proc_cgroup("3:memoryx:/a\n");
        assert_eq!(v1_memory_path(&entries), None);
    }

    #[test]
    fn join_paths() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(join_cgroup_path(root, "/"), Some(root.to_path_buf()));
        assert_eq!(join_cgroup_path(root, "/a/b"), Some(root.join("a/b")));
        assert_eq!(join_cgroup_path(root, "/../x"), None);
    }

    #[test]
    fn memory_events() {
        let c = "low 0\nhigh 3\nmax 10\noom 2\noom_kill 1\noom_group_kill 0\n";
        let ev = parse_memory_events(c);
        assert_eq!(
            ev,
            MemoryEvents {
                oom: Some(2),
                oom_kill: Some(1)
            }
        );
        assert!(ev.any_nonzero());
        assert!(!ev.increased_since(&ev));
        let more = parse_memory_events("oom 2\noom_kill 2\n");
        assert!(more.increased_since(&ev));
        let oom_only = parse_memory_events("oom 3\noom_kill 1\n");
        assert!(oom_only.increased_since(&ev));
        // oom_group_kill must not be mistaken for oom_kill.
        let ev = parse_memory_events("oom_group_kill 4\n");
        assert_eq!(ev, MemoryEvents::default());
        assert!(!ev.any_nonzero());
        // Missing baseline counters count from zero.
        assert!(parse_memory_events("oom_kill 1\n").increased_since(&MemoryEvents::default()));
        assert!(!parse_memory_events("").increased_since(&MemoryEvents::default()));
    }

    #[test]
    fn oom_control() {
        let c = "oom_kill_disable 0\nunder_oom 1\noom_kill 7\n";
        assert_eq!(
            parse_oom_control(c),
            OomControl {
                oom_kill_disable: Some(false),
                under_oom: Some(true),
                oom_kill: Some(7)
            }
        );
        // Pre-4.13 kernels: no oom_kill line.
        let old = parse_oom_control("oom_kill_disable 1\nunder_oom 0\n");
        assert_eq!(old.oom_kill, None);
        assert_eq!(old.oom_kill_disable, Some(true));
        assert_eq!(parse_oom_control("oom_kill x\n").oom_kill, None);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn vanished() -> io::Error {
        io::Error::from_raw_os_error(libc::ENODEV)
    }

    #[test]
    fn v2_change_handling() {
        let path = Path::new("/x/memory.events");
        let base = parse_memory_events("oom 1\noom_kill 1\n");
        let mut seen = Seen::default();
        // Unrelated counter change.
        let step = on_v2_change(
            Ok("max 9\noom 1\noom_kill 1\n".into()),
            path,
            &base,
            &mut seen,
        );
        assert!(matches!(step, Step::Continue) && !seen.oom);
        // OOM counter increase.
        let step = on_v2_change(Ok("oom 2\noom_kill 1\n".into()), path, &base, &mut seen);
        assert!(matches!(step, Step::Done) && seen.oom);
        // Slice removal race.
        let mut seen = Seen::default();
        let step = on_v2_change(Err(vanished()), path, &base, &mut seen);
        assert!(matches!(step, Step::Done) && seen.oom);
        // Other read errors end the watch without a verdict.
        let mut seen = Seen::default();
        let err = io::Error::from_raw_os_error(libc::EIO);
        let step = on_v2_change(Err(err), path, &base, &mut seen);
        assert!(matches!(step, Step::Done) && !seen.oom);
    }

    #[test]
    fn v2_final_check_and_sibling_quirk() {
        let dir = std::env::temp_dir().join(format!("ringmon-oom-fake-{}", std::process::id()));
        let ctr = dir.join("ctr");
        fs::create_dir_all(&ctr).unwrap();
        fs::write(dir.join(MEMORY_EVENTS), "oom 0\noom_kill 0\n").unwrap();
        let events = ctr.join(MEMORY_EVENTS);
        fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        let base = parse_memory_events("oom 1\noom_kill 1\n");
        let no = Seen::default();
        let yes = Seen { oom: true };

        assert!(!final_check_v2(&ctr, &base, None, no));
        assert!(final_check_v2(&ctr, &base, None, yes));
        fs::write(&events, "oom 1\noom_kill 2\n").unwrap();
        assert!(final_check_v2(&ctr, &base, None, no));

        // Container file gone, parent counters grew.
        let parent = parent_baseline(&dir, &ctr).unwrap();
        assert!(parent.only_child);
        fs::remove_file(&events).unwrap();
        fs::write(dir.join(MEMORY_EVENTS), "oom 1\noom_kill 1\n").unwrap();
        assert!(final_check_v2(&ctr, &base, Some(&parent), no));
        // ... but not when a sibling could have caused it.
        let sibling = dir.join("sibling");
        fs::create_dir(&sibling).unwrap();
        assert!(!final_check_v2(&ctr, &base, Some(&parent), no));
        fs::remove_dir(&sibling).unwrap();
        fs::write(dir.join(MEMORY_EVENTS), "oom 0\noom_kill 0\n").unwrap();
        fs::create_dir(&sibling).unwrap();
        let parent = parent_baseline(&dir, &ctr).unwrap();
        assert!(!parent.only_child);
        fs::remove_dir(&sibling).unwrap();
        fs::write(dir.join(MEMORY_EVENTS), "oom 1\noom_kill 1\n").unwrap();
        assert!(!final_check_v2(&ctr, &base, Some(&parent), no));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The v2 watch relies on kernfs raising EPOLLPRI on an open cgroup file
    /// when it changes. Checked on `cgroup.events` (`populated` flips when a
    /// process joins), which needs no memory controller in the v2 tree.
    #[test]
    fn kernfs_change_notification() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: not root");
            return;
        }
        let unified = match statfs(CGROUP_ROOT) {
            Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => PathBuf::from(CGROUP_ROOT),
            _ => PathBuf::from(HYBRID_UNIFIED_ROOT),
        };
        if !unified.join("cgroup.procs").exists() {
            eprintln!("skipping: no cgroup2 hierarchy");
            return;
        }
        let dir = unified.join(format!("ringmon-oom-test-{}-poll", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            eprintln!("skipping: cannot create {}: {e}", dir.display());
            return;
        }
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let rt = runtime();
        let result = rt.block_on(async {
            let file = File::open(dir.join("cgroup.events")).unwrap();
            assert!(reread(&file).unwrap().contains("populated 0"));
            let file = async_fd(OwnedFd::from(file), Interest::PRIORITY).unwrap();
            // Nothing changed yet: no notification.
            let idle =
                tokio::time::timeout(Duration::from_millis(200), file.ready(Interest::PRIORITY))
                    .await;
            assert!(idle.is_err(), "spurious notification");
            fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
            let mut guard =
                tokio::time::timeout(Duration::from_secs(5), file.ready(Interest::PRIORITY))
                    .await
                    .expect("no kernfs notification")
                    .unwrap();
            guard.clear_ready();
            reread(file.get_ref()).unwrap()
        });
        let _ = child.kill();
        let _ = child.wait();
        for _ in 0..50 {
            if fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(result.contains("populated 1"), "{result}");
    }

    #[test]
    fn start_without_proc_entry_is_none() {
        let rt = runtime();
        rt.block_on(async {
            // PIDs above pid_max never exist.
            assert!(OomWatcher::start(u32::MAX).unwrap().is_none());
        });
    }

    /// A v1 memory cgroup created for a test, removed on drop.
    struct TestCgroup {
        dir: PathBuf,
        child: Option<Child>,
    }

    impl TestCgroup {
        fn create(tag: &str) -> Option<TestCgroup> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipping: not root");
                return None;
            }
            let is_v2 = statfs(CGROUP_ROOT)
                .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
                .unwrap_or(false);
            let base = if is_v2 {
                let ctrl =
                    fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.subtree_control"))
                        .unwrap_or_default();
                if !ctrl.split_whitespace().any(|c| c == "memory") {
                    eprintln!("skipping: memory controller not enabled in cgroup2 root");
                    return None;
                }
                PathBuf::from(CGROUP_ROOT)
            } else {
                let base = PathBuf::from(V1_MEMORY_ROOT);
                if !base.join(OOM_CONTROL).exists() {
                    eprintln!("skipping: no v1 memory cgroup");
                    return None;
                }
                base
            };
            let dir = base.join(format!("ringmon-oom-test-{}-{tag}", std::process::id()));
            if let Err(e) = fs::create_dir(&dir) {
                eprintln!("skipping: cannot create {}: {e}", dir.display());
                return None;
            }
            let cg = TestCgroup { dir, child: None };
            let limit = (4u64 << 20).to_string();
            if is_v2 {
                fs::write(cg.dir.join("memory.max"), &limit).unwrap();
                let _ = fs::write(cg.dir.join("memory.swap.max"), "0");
            } else {
                // memsw must stay >= the memory limit, so set the memory limit first.
                fs::write(cg.dir.join("memory.limit_in_bytes"), &limit).unwrap();
                let memsw = cg.dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    fs::write(&memsw, &limit).unwrap();
                }
            }
            Some(cg)
        }

        /// Spawns `sh -c script` (waiting for a line on stdin first), moves it
        /// into the cgroup and returns its PID.
        fn spawn(&mut self, script: &str) -> u32 {
            let child = Command::new("sh")
                .arg("-c")
                .arg(format!("read _go; {script}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            self.child = Some(child);
            fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
            pid
        }

        fn go(&mut self) {
            let stdin = self.child.as_mut().unwrap().stdin.as_mut().unwrap();
            stdin.write_all(b"go\n").unwrap();
        }

        async fn wait(&mut self) -> std::process::ExitStatus {
            let deadline = Instant::now() + Duration::from_secs(60);
            let child = self.child.as_mut().unwrap();
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                assert!(Instant::now() < deadline, "child did not exit");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            for _ in 0..50 {
                if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("warning: could not remove {}", self.dir.display());
        }
    }

    #[test]
    fn real_cgroup_oom_kill_detected() {
        let Some(mut cg) = TestCgroup::create("oom") else {
            return;
        };
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let pid = cg.spawn("exec tail /dev/zero");
            let watcher = OomWatcher::start(pid)
                .unwrap()
                .expect("memory cgroup should be watched");
            cg.go();
            let status = cg.wait().await;
            assert_eq!(status.signal(), Some(libc::SIGKILL), "status {status:?}");
            let mut watcher = watcher;
            // The event watch itself must have seen it, not only the final check.
            assert!(watcher.stop_task().await.oom, "OOM event not seen");
            assert!(watcher.finish().await, "OOM kill not detected");
        });
    }

    #[test]
    fn real_cgroup_normal_exit_is_not_oom() {
        let Some(mut cg) = TestCgroup::create("ok") else {
            return;
        };
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let pid = cg.spawn("exit 0");
            let watcher = OomWatcher::start(pid)
                .unwrap()
                .expect("memory cgroup should be watched");
            cg.go();
            let status = cg.wait().await;
            assert_eq!(status.code(), Some(0));
            assert!(!watcher.finish().await, "false OOM");
        });
    }

    /// Removing a v1 cgroup also signals the registered eventfd; that must not
    /// be taken for an OOM.
    #[test]
    fn real_cgroup_removed_before_finish_is_not_oom() {
        let Some(mut cg) = TestCgroup::create("rm") else {
            return;
        };
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let pid = cg.spawn("exit 0");
            let watcher = OomWatcher::start(pid)
                .unwrap()
                .expect("memory cgroup should be watched");
            cg.go();
            assert_eq!(cg.wait().await.code(), Some(0));
            fs::remove_dir(&cg.dir).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!watcher.finish().await, "cgroup removal taken for OOM");
        });
    }
}
