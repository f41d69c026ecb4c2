//! The monitor: spawns the runtime, registers containers with the engine,
//! waits for their exit and applies the exit policy (spec §3.0.3–§3.0.7).
//!
//! Runs on the control thread (a tokio current-thread runtime with a
//! `LocalSet`); state lives in `RefCell`s because nothing here is shared
//! across threads. Container bytes never pass through this module: the
//! engine owns the read ends of the container's stdio once it is
//! registered. Exec sync output (never logged) is the exception: it is
//! collected here by `core::exec`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use super::attach::{Attach, StdinTarget};
use super::exec::{
    self, CappedOutput, ExecOutcome, ExecStream, ExecSync, EXIT_TIMED_OUT, MAX_CONCURRENT_EXEC_SYNC,
};
use super::exit_files::{write_exit_files, write_oom_files};
use super::fd_socket::{FdSocket, NoSuchSlot};
use super::listing::{ContainerExit, ContainerSummary};
use super::oom::OomWatcher;
use super::runtime::{CreateArgs, ExecArgs, RuntimeConfig};
use super::{CoreError, CreateContainer};
use crate::engine::{
    ContainerKey, Engine, EngineEvent, Registration, SourceKind, StreamSource, MAX_ATTACH_CLIENTS,
};
use crate::keeper::KeeperLink;
use crate::log::{LogWriter, StreamKind};
use crate::otel;
use crate::sys;

mod exec_sessions;
pub mod held;
mod resume;

use resume::{ExitSource, HoldCreated};

/// How long exit handling waits for a container's output to reach EOF after
/// the process exited. Output normally closes at once (the container's pid
/// namespace dies with its init); only a descendant that escaped and kept
/// the pipe open can delay it. After this grace the exit files are written
/// anyway while the engine keeps logging that stream.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How much of a failed runtime's stderr goes into the error.
const RUNTIME_STDERR_MAX: usize = 64 * 1024;

/// The fd socket's file name in the runtime dir (spec §1.5).
pub const FD_SOCKET_NAME: &str = "conmon-fd.sock";

/// A child as listed; `exit_code` once it has exited.
fn summary(id: &str, child: &Child, exit_code: Option<i32>) -> ContainerSummary {
    ContainerSummary {
        id: id.to_string(),
        pid: child.pid,
        created: child.created,
        exit: exit_code.map(|code| ContainerExit {
            code,
            at: std::time::SystemTime::now(),
        }),
        logs: child.logs.clone(),
        counters: child.counters.clone(),
    }
}

/// One monitored process registered under a container id.
struct Child {
    key: ContainerKey,
    pid: u32,
    /// A duplicate of the pty master, for resizes (terminal mode only).
    terminal: Option<OwnedFd>,
    /// Attach listeners and the stdin forwarder.
    attach: Attach,
    /// The bundle's `io.kubernetes.cri-o.StdinOnce`: the end of a streaming
    /// attach's stdin closes the container's stdin.
    stdin_once: bool,
    /// `leakFds`: held open while the container lives, closed when it is
    /// forgotten.
    _leaked: Vec<OwnedFd>,
    /// The exit code its exit files get whatever the process's status is
    /// (-1 after [`Monitor::kill_for_timeout`]).
    forced_exit_code: Option<i32>,
    /// When its create finished (listing).
    created: std::time::SystemTime,
    /// Its log drivers (listing).
    logs: Vec<(crate::log::LogFormat, PathBuf)>,
    /// What the engine counts for it (metrics).
    counters: Arc<crate::engine::counters::ContainerCounters>,
}

#[derive(Default)]
struct State {
    /// Container id → children (the last one is the lookup target).
    children: HashMap<String, Vec<Child>>,
    /// Ids whose `create` is in progress (guards against duplicates).
    creating: HashSet<String>,
    /// Pids that have a watcher of their own; the SIGCHLD sweep skips them.
    tracked: HashSet<u32>,
    /// Running exec sync processes (killed at shutdown).
    exec_pids: HashSet<u32>,
    /// Exec syncs between spawning the runtime and tracking the exec
    /// process. While any is pending the sweep waits: the exec process
    /// becomes our child (reparented) when the runtime exits, before its pid
    /// is known, and a quick one may already be a zombie then.
    pending_execs: usize,
    /// execSync calls in progress (at most `MAX_CONCURRENT_EXEC_SYNC`).
    exec_syncs_running: usize,
    /// Waiters for the engine's `Drained` event.
    drain_waiters: HashMap<ContainerKey, oneshot::Sender<DrainedLogs>>,
    /// Exit handlers still running (awaited at shutdown).
    watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Exec sessions by container id (`exec_sessions`).
    sessions: HashMap<String, exec_sessions::ContainerSessions>,
    /// Waiters for a container's exit handling to end, by id
    /// ([`Monitor::container_exit`]).
    exit_waiters: HashMap<String, Vec<oneshot::Sender<i32>>>,
    /// Recently exited containers, for [`Monitor::list_containers`].
    exited: super::listing::ExitedRing,
}

/// The container monitor.
pub struct Monitor {
    runtime: RuntimeConfig,
    /// The server's `--runtime-dir` (exec sync pid files, fd socket).
    runtime_dir: PathBuf,
    engine: Arc<Engine>,
    /// Started by the first `startFdSocket`.
    fd_socket: RefCell<Option<FdSocket>>,
    state: RefCell<State>,
    next_key: Cell<ContainerKey>,
    /// Asks the stray sweep to run without a SIGCHLD (a pid was handed back
    /// to it, or a sweep was held back by a pending exec).
    sweep: Notify,
    /// Pods whose namespaces are pinned (`core::namespaces`).
    pub(crate) namespaces: super::namespaces::PodNamespaces,
    /// Containers an abandoned create left in the runtime, for
    /// `delete_leftovers`.
    leftovers: mpsc::UnboundedSender<Leftover>,
    /// Exec sessions may be made in containers this monitor does not
    /// monitor (conmon mode: each exec session has a monitor process of its
    /// own, and the container is another's).
    exec_in_unmonitored: Cell<bool>,
    /// The keeper that holds every container created from now on (issue
    /// 16; see `resume`). `None`: no keeper (conmon mode, `--no-keeper`).
    keeper: RefCell<Option<Rc<KeeperLink>>>,
}

impl Monitor {
    /// Creates the monitor and starts its background tasks (engine events,
    /// SIGCHLD sweep). Must be called inside a `LocalSet`.
    pub fn start(
        runtime: RuntimeConfig,
        runtime_dir: PathBuf,
        engine: Arc<Engine>,
        events: mpsc::UnboundedReceiver<EngineEvent>,
    ) -> Rc<Monitor> {
        let (leftovers, leftovers_rx) = mpsc::unbounded_channel();
        let monitor = Rc::new(Monitor {
            runtime,
            runtime_dir,
            engine,
            fd_socket: RefCell::new(None),
            state: RefCell::new(State::default()),
            next_key: Cell::new(1),
            sweep: Notify::new(),
            namespaces: Default::default(),
            leftovers,
            exec_in_unmonitored: Cell::new(false),
            keeper: RefCell::new(None),
        });
        tokio::task::spawn_local(Rc::clone(&monitor).dispatch_events(events));
        tokio::task::spawn_local(Rc::clone(&monitor).delete_leftovers(leftovers_rx));
        tokio::task::spawn_local(Rc::clone(&monitor).reap_strays());
        monitor
    }

    async fn dispatch_events(self: Rc<Self>, mut events: mpsc::UnboundedReceiver<EngineEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                EngineEvent::Drained { key, log_files } => {
                    if let Some(tx) = self.state.borrow_mut().drain_waiters.remove(&key) {
                        let _ = tx.send(log_files);
                    }
                }
                EngineEvent::LogError { key, message } => {
                    warn!(
                        key,
                        "container log write failed (output is discarded for that log, \
                         retried every second): {message}"
                    );
                }
                EngineEvent::LogResumed { key, dropped_bytes } => {
                    warn!(
                        key,
                        dropped_bytes,
                        "container log writable again, logging resumed \
                         ({dropped_bytes} bytes of output were lost meanwhile)"
                    );
                }
                EngineEvent::AttachClientDropped {
                    key,
                    dropped_total,
                    reason,
                } => {
                    warn!(key, dropped_total, "attach client dropped: {reason}");
                }
                EngineEvent::AttachAccepted {
                    key,
                    listener,
                    client,
                } => {
                    let st = self.state.borrow();
                    match st.children.values().flatten().find(|c| c.key == key) {
                        Some(child) => child.attach.accepted(listener, client),
                        None => {
                            drop(st);
                            let session = self.session_by_key(key, |s| {
                                s.attach.accepted(listener, client);
                            });
                            if session.is_none() {
                                // Exited meanwhile: the engine sends it the
                                // done packet.
                                debug!(key, "attach client of a forgotten container");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reaps exited children that no watcher tracks (cleanup commands,
    /// processes reparented to us), so none stays a zombie.
    async fn reap_strays(self: Rc<Self>) {
        let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        else {
            warn!("cannot watch SIGCHLD; untracked children will not be reaped");
            return;
        };
        loop {
            tokio::select! {
                signal = sigchld.recv() => if signal.is_none() { return },
                () = self.sweep.notified() => {}
            }
            if self.state.borrow().pending_execs > 0 {
                // Resumed by the last pending exec (SweepHold::drop).
                continue;
            }
            let n = sys::process::reap_untracked(|pid| self.state.borrow().tracked.contains(&pid));
            if n > 0 {
                debug!("reaped {n} untracked children");
            }
        }
    }

    /// Lets exec sessions be created in containers this monitor does not
    /// monitor (see `exec_in_unmonitored`).
    pub fn allow_exec_in_unmonitored_containers(&self) {
        self.exec_in_unmonitored.set(true);
    }

    /// Resolves to the container's exit code once its exit handling is over
    /// (output drained, exit and OOM files written, attach sockets
    /// removed). Dropped unanswered if `id` is not monitored.
    pub fn container_exit(&self, id: &str) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.borrow_mut();
        if st.children.contains_key(id) {
            st.exit_waiters.entry(id.to_string()).or_default().push(tx);
        }
        rx
    }

    /// Kills the container's process tree because its time ran out
    /// (conmon's `--timeout`); its exit files then say -1.
    pub fn kill_for_timeout(&self, id: &str) -> Result<(), CoreError> {
        let pid = {
            let mut st = self.state.borrow_mut();
            let child = st
                .children
                .get_mut(id)
                .and_then(|l| l.last_mut())
                .ok_or(CoreError::ChildNotAvailable)?;
            child.forced_exit_code = Some(-1);
            child.pid
        };
        sys::process::kill_tree(pid, Signal::SIGKILL);
        Ok(())
    }

    /// Signals the container's process (conmon mode forwards SIGTERM and
    /// SIGINT it gets).
    pub fn signal_container(&self, id: &str, signal: Signal) -> Result<(), CoreError> {
        let pid = self.lookup(id, |c| c.pid)?;
        sys::namespace::signal_process(pid, signal)
            .map_err(|e| CoreError::io(format!("signal container pid {pid}"), e))
    }

    /// [`Monitor::create_container`] with `fds` (the caller's own, not
    /// fd-socket slots) as the runtime's fd 3, 4, ... (conmon mode's
    /// preserved fds).
    ///
    /// With `passthrough` (stdin, stdout, stderr), the runtime, and so the
    /// container, gets those as its stdio instead of the monitor's pipes
    /// (conmon's `passthrough` log driver): nothing is logged or attached,
    /// and a runtime's error goes straight to the caller.
    pub async fn create_container_with_fds(
        self: &Rc<Self>,
        req: CreateContainer,
        fds: Vec<OwnedFd>,
        passthrough: Option<[OwnedFd; 3]>,
    ) -> Result<u32, CoreError> {
        let fds = PassedFds {
            additional: fds,
            leaked: Vec::new(),
            stdio: passthrough,
        };
        self.create_reserved(&req, fds).await
    }

    /// Runs `runtime create` and starts monitoring the container. Returns the
    /// container's pid once the runtime exited successfully.
    pub async fn create_container(self: &Rc<Self>, req: CreateContainer) -> Result<u32, CoreError> {
        // Slots are spent by the request that names them, whatever its fate.
        let additional_fds = self.take_slots(&req.additional_fds);
        let leak_fds = self.take_slots(&req.leak_fds);
        let fds = PassedFds {
            additional: additional_fds?,
            leaked: leak_fds?,
            stdio: None,
        };
        self.create_reserved(&req, fds).await
    }

    /// Reserves `req`'s id, creates the container and settles the
    /// reservation with the outcome.
    async fn create_reserved(
        self: &Rc<Self>,
        req: &CreateContainer,
        fds: PassedFds,
    ) -> Result<u32, CoreError> {
        let reservation = CreateReservation::take(self, req)?;
        let result = self.create_inner(req, fds, &reservation).await;
        reservation.settle(&result);
        // Parsing the bundle and running the runtime allocated far more than
        // monitoring the container keeps: a monitor that stays up for days
        // should not keep that peak resident.
        crate::sys::process::return_free_heap();
        result
    }

    /// Deletes, through the runtime, containers whose create was abandoned
    /// (see [`CreateReservation`]), then frees their ids. Runs for the
    /// monitor's life.
    async fn delete_leftovers(self: Rc<Self>, mut leftovers: mpsc::UnboundedReceiver<Leftover>) {
        while let Some(left) = leftovers.recv().await {
            let args = self
                .runtime
                .delete_args(&left.id, left.cgroup, &left.global_args);
            let mut cmd = Command::new(&self.runtime.path);
            cmd.args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match self.run_to_exit_within_timeout(cmd).await {
                Ok(Some(exit)) => {
                    info!(id = %left.id, ?exit, "deleted the container of an abandoned create")
                }
                Ok(None) => warn!(
                    id = %left.id,
                    timeout = ?self.runtime.timeout,
                    "delete after an abandoned create timed out; the runtime was killed"
                ),
                Err(e) => warn!(id = %left.id, "delete after an abandoned create: {e}"),
            }
            self.state.borrow_mut().creating.remove(&left.id);
        }
    }

    /// Takes the fds of fd-socket `slots` out of the table.
    fn take_slots(&self, slots: &[u64]) -> Result<Vec<OwnedFd>, NoSuchSlot> {
        match (&*self.fd_socket.borrow(), slots.first()) {
            (_, None) => Ok(Vec::new()),
            (Some(sock), Some(_)) => sock.take(slots),
            (None, Some(&first)) => Err(NoSuchSlot(first)),
        }
    }

    /// Starts the fd socket at `<runtime-dir>/conmon-fd.sock` unless it runs
    /// already; returns its path.
    pub fn start_fd_socket(&self) -> Result<PathBuf, CoreError> {
        let mut sock = self.fd_socket.borrow_mut();
        if let Some(s) = &*sock {
            return Ok(s.path().to_path_buf());
        }
        let path = self.runtime_dir.join(FD_SOCKET_NAME);
        let started = FdSocket::start(&path)
            .map_err(|e| CoreError::io(format!("start fd socket {}", path.display()), e))?;
        *sock = Some(started);
        Ok(path)
    }

    async fn create_inner(
        self: &Rc<Self>,
        req: &CreateContainer,
        fds: PassedFds,
        reservation: &CreateReservation<'_>,
    ) -> Result<u32, CoreError> {
        let logs = req
            .logs
            .iter()
            .map(LogWriter::open)
            .collect::<Result<Vec<_>, _>>()?;
        let pid_file = req
            .pid_file
            .clone()
            .unwrap_or_else(|| req.bundle.join("pidfile"));
        match fs::remove_file(&pid_file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(CoreError::io(
                    format!("remove stale pid file {}", pid_file.display()),
                    e,
                ));
            }
            _ => {}
        }
        // Only a container with stdin has a stdin to close. Read before the
        // runtime runs: the same file the runtime reads.
        let stdin_once = req.stdin
            && super::bundle::read_stdin_once(&req.bundle).unwrap_or_else(|e| {
                warn!(id = %req.id, "{e}; stdin_once taken as false");
                false
            });
        let console = ConsoleSocket::bind_if(req.terminal)?;
        let (stdout_r, stdout_w) = pipe("stdout")?;
        let (stderr_r, stderr_w) = pipe("stderr")?;
        let (mut stdin_r, stdin_w) = if req.stdin && !req.terminal {
            let (r, w) = pipe("stdin")?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        // Passthrough: the pipes' write ends are dropped unused, so their
        // read ends reach EOF at once and the registration drains.
        let (runtime_stdout, runtime_stderr) = match fds.stdio {
            Some([stdin, stdout, stderr]) => {
                stdin_r = Some(stdin);
                (stdout, stderr)
            }
            None => (stdout_w, stderr_w),
        };

        let args = self.runtime.create_args(&CreateArgs {
            id: &req.id,
            bundle: &req.bundle,
            pid_file: &pid_file,
            cgroup: req.cgroup_manager,
            global_args: &req.global_args,
            command_args: &req.command_args,
            console_socket: console.as_ref().map(|c| c.path.as_path()),
        });
        debug!(id = %req.id, ?args, "spawning runtime create");
        reservation.stage.set(CreateStage::RuntimeRunning);
        let created = self
            .run_runtime(RuntimeRun {
                args: &args,
                env: &req.env,
                stdin: stdin_r,
                stdout: runtime_stdout,
                stderr: (runtime_stderr, &stderr_r),
                create_stdout: Some(&stdout_r),
                fds: fds.additional,
                console,
                pid_file: &pid_file,
            })
            .await;
        reservation.stage.set(match &created {
            // The runtime cleans up after its own failure.
            Err(CoreError::RuntimeFailed { .. } | CoreError::RuntimeSignaled { .. }) => {
                CreateStage::RuntimeFailed
            }
            // Made (or, after a timeout, perhaps half made) by the runtime.
            _ => CreateStage::Created,
        });
        let (master, pid) = created?;

        let key = self.next_key();
        let mut stdin_target = match stdin_w {
            Some(w) => StdinTarget::Pipe(w),
            None => StdinTarget::None,
        };
        let (terminal, mut sources) = match master {
            Some(master) => {
                let resize = master
                    .try_clone()
                    .map_err(|e| CoreError::io("duplicate pty master", e))?;
                if req.stdin {
                    stdin_target = StdinTarget::Pty(
                        master
                            .try_clone()
                            .map_err(|e| CoreError::io("duplicate pty master", e))?,
                    );
                }
                let src = vec![StreamSource {
                    fd: master,
                    stream: StreamKind::Stdout,
                    kind: SourceKind::Pty,
                    journal: None,
                }];
                (Some(resize), src)
            }
            None => (None, pipe_sources(stdout_r, stderr_r)),
        };
        let created_at = std::time::SystemTime::now();
        let (exit_source, stdin_closed) = self.hold_created(HoldCreated {
            req,
            key,
            pid,
            stdin_once,
            created: created_at,
            sources: &mut sources,
            logs: &logs,
            stdin: &stdin_target,
        });
        let (drained_rx, counters) = match self.register_output(key, sources, logs) {
            Ok(registered) => registered,
            Err(e) => {
                sys::process::kill_tree(pid, Signal::SIGKILL);
                // No watcher will release it: the sweep reaps it.
                exit_source.release(key);
                return Err(e.into());
            }
        };
        let oom = match OomWatcher::start(pid) {
            Ok(w) => w,
            Err(e) => {
                warn!(id = %req.id, "OOM watching unavailable: {e}");
                None
            }
        };
        {
            let mut st = self.state.borrow_mut();
            st.tracked.insert(pid);
            st.children.entry(req.id.clone()).or_default().push(Child {
                key,
                pid,
                terminal,
                attach: Attach::with_stdin_closed(key, stdin_target, stdin_closed),
                stdin_once,
                _leaked: fds.leaked,
                forced_exit_code: None,
                created: created_at,
                counters,
                logs: req
                    .logs
                    .iter()
                    .map(|l| (l.format, l.path.clone()))
                    .collect(),
            });
            st.exited.forget(&req.id);
        }
        let exit_policy = ExitPolicy {
            id: req.id.clone(),
            key,
            pid,
            exit_paths: req.exit_paths.clone(),
            oom_exit_paths: req.oom_exit_paths.clone(),
            cleanup_cmd: req.cleanup_cmd.clone(),
            sync_logs: req.sync_logs,
            trace: otel::current(),
        };
        let watcher = tokio::task::spawn_local(Rc::clone(self).watch(
            exit_policy,
            exit_source,
            drained_rx,
            oom,
        ));
        let mut st = self.state.borrow_mut();
        st.watchers.retain(|h| !h.is_finished());
        st.watchers.push(watcher);
        info!(id = %req.id, pid, "container created");
        Ok(pid)
    }

    /// Hands a container's output to the engine, with a waiter for its
    /// drain and the counters the engine keeps for it.
    fn register_output(
        &self,
        key: ContainerKey,
        sources: Vec<StreamSource>,
        logs: Vec<LogWriter>,
    ) -> Result<
        (
            oneshot::Receiver<DrainedLogs>,
            Arc<crate::engine::counters::ContainerCounters>,
        ),
        crate::engine::EngineError,
    > {
        let (drained_tx, drained_rx) = oneshot::channel();
        self.state
            .borrow_mut()
            .drain_waiters
            .insert(key, drained_tx);
        let counters = Arc::new(crate::engine::counters::ContainerCounters::default());
        match self
            .engine
            .register_counted(Registration { key, sources, logs }, counters.clone())
        {
            Ok(()) => Ok((drained_rx, counters)),
            Err(e) => {
                self.state.borrow_mut().drain_waiters.remove(&key);
                Err(e)
            }
        }
    }

    /// A new engine key (containers and exec sessions).
    fn next_key(&self) -> ContainerKey {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        key
    }

    /// Spawns `cmd` and waits for it up to the runtime timeout, keeping the
    /// SIGCHLD sweep away from it. `Ok(None)`: it did not finish in time.
    /// Past the timeout, or if the call is cancelled, the runtime is killed
    /// (like in [`Monitor::run_runtime`]), so that no runtime outlives its
    /// caller; the sweep reaps it.
    async fn run_to_exit_within_timeout(
        &self,
        cmd: Command,
    ) -> Result<Option<sys::process::Exit>, CoreError> {
        let pid = self.spawn_runtime(cmd)?;
        let abandon = KillOnDrop(Some(pid));
        let waited = tokio::time::timeout(self.runtime.timeout, self.wait_spawned(pid)).await;
        match waited {
            Ok(exit) => {
                abandon.disarm();
                exit.map(Some)
                    .map_err(|e| CoreError::io(format!("wait for runtime pid {pid}"), e))
            }
            // Dropping `abandon` kills it.
            Err(_) => Ok(None),
        }
    }

    /// Spawns the runtime command `cmd` and returns its pid.
    fn spawn_runtime(&self, mut cmd: Command) -> Result<u32, CoreError> {
        // The runtime (and a container without an rlimit of its own) gets
        // the descriptor limit we started with, not our raised one.
        sys::limits::restore_nofile_in_child(&mut cmd);
        if self.runtime.killed_with_monitor {
            sys::process::kill_with_parent_in_child(&mut cmd);
        }
        let child = cmd.spawn().map_err(|e| {
            CoreError::io(
                format!("spawn runtime '{}'", self.runtime.path.display()),
                e,
            )
        })?;
        drop(cmd); // closes our copies of the child's stdio
        Ok(child.id())
    }

    /// Runs the runtime to its exit with the given stdio, `fds` as fd 3,
    /// 4, ..., then takes the pty master it sent to `console` (terminal
    /// mode) and the pid it wrote to `pid_file`. A non-zero exit is an error
    /// carrying what the runtime wrote to stderr.
    ///
    /// The runtime gets `self.runtime.timeout`: past it, it is killed and the
    /// call fails with [`CoreError::RuntimeTimedOut`]. A cancelled call kills
    /// it too, so no runtime outlives the request that started it.
    ///
    /// Traced as a child span of the request (named after the subcommand).
    async fn run_runtime(&self, run: RuntimeRun<'_>) -> Result<(Option<OwnedFd>, u32), CoreError> {
        let mut span = otel::Span::child(otel::runtime_span_name(run.args), otel::SpanKind::Client);
        if span.is_recording() {
            span.set(
                "process.executable.path",
                self.runtime.path.to_string_lossy().into_owned(),
            );
        }
        let result = self.run_runtime_untraced(run).await;
        match &result {
            Ok((_, pid)) => span.set("process.pid", *pid),
            Err(e) => span.fail(e),
        }
        result
    }

    async fn run_runtime_untraced(
        &self,
        run: RuntimeRun<'_>,
    ) -> Result<(Option<OwnedFd>, u32), CoreError> {
        let mut cmd = Command::new(&self.runtime.path);
        cmd.args(run.args)
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .stdin(run.stdin.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::from(run.stdout))
            .stderr(Stdio::from(run.stderr.0));
        sys::process::pass_fds_from_3(&mut cmd, run.fds)
            .map_err(|e| CoreError::io("prepare additionalFds", e))?;
        let pid = self.spawn_runtime(cmd)?;
        let abandon = KillOnDrop(Some(pid));
        let stderr_r = run.stderr.1;
        let mut captured = RuntimeOutput::default();
        let waited = self.wait_spawned(pid);
        let waited = tokio::time::timeout(self.runtime.timeout, async {
            match run.create_stdout {
                Some(stdout_r) => drain_while(waited, stdout_r, stderr_r, &mut captured).await,
                None => waited.await,
            }
        })
        .await;
        abandon.disarm();
        if run.create_stdout.is_some() {
            captured.drain_rest(run.create_stdout, stderr_r);
            if captured.stdout_bytes > 0 {
                debug!(
                    pid,
                    bytes = captured.stdout_bytes,
                    "runtime wrote to stdout (dropped)"
                );
            }
        }
        let exit = match waited {
            Ok(exit) => {
                exit.map_err(|e| CoreError::io(format!("wait for runtime pid {pid}"), e))?
            }
            Err(_) => {
                // The wait was dropped with the timeout: the sweep reaps it.
                sys::process::kill_tree(pid, Signal::SIGKILL);
                return Err(CoreError::RuntimeTimedOut {
                    timeout: self.runtime.timeout,
                    stderr: captured.into_stderr(stderr_r),
                });
            }
        };
        let master = match &run.console {
            Some(c) if exit == sys::process::Exit::Code(0) => Some(c.receive_master()?),
            _ => None,
        };
        drop(run.console);
        runtime_succeeded(exit, || captured.into_stderr(stderr_r))?;
        Ok((master, read_pid_file(run.pid_file)?))
    }

    /// Waits for a process we spawned (the runtime, the pause process),
    /// keeping the SIGCHLD sweep away from it. The pid is tracked before
    /// this returns; an abandoned wait hands it back to the sweep.
    pub(crate) fn wait_spawned(
        &self,
        pid: u32,
    ) -> impl std::future::Future<Output = io::Result<sys::process::Exit>> + '_ {
        let tracked = Tracked::new(self, pid, false);
        async move {
            let exit = wait_exit(pid).await;
            if exit.is_ok() {
                tracked.reaped();
            }
            exit
        }
    }

    /// Runs `req.command` in the container with `runtime exec -d`, collects
    /// its output (not logged) and waits for its exit (spec §3.3). Failures
    /// of the runtime are not errors: they reply exit code -2.
    ///
    /// The container id is not looked up: exec works for any container the
    /// runtime knows. The exec process is not registered as a child of the
    /// container either, so attach, resize and reopen keep acting on the
    /// container while an exec runs (upstream redirects them to the exec).
    ///
    /// At most [`MAX_CONCURRENT_EXEC_SYNC`] run at once; a call past that
    /// is refused with [`CoreError::TooMany`].
    pub async fn exec_sync(&self, req: &ExecSync) -> Result<ExecOutcome, CoreError> {
        let _slot = ExecSyncSlot::take(self)?;
        Ok(self.exec_sync_inner(req).await)
    }

    async fn exec_sync_inner(&self, req: &ExecSync) -> ExecOutcome {
        let pid_file = self
            .runtime_dir
            .join(format!("exec_sync{}pid", random_uuid()));
        let _remove_pid_file = RemoveOnDrop(&pid_file);
        let hold = SweepHold::new(self);
        let (process, streams) = match self.exec_start(req, &pid_file).await {
            Ok(started) => started,
            Err(e) => {
                warn!(id = %req.id, "exec sync: runtime failed: {e}");
                return ExecOutcome::runtime_failed();
            }
        };
        drop(hold);
        let pid = process.pid;
        debug!(id = %req.id, pid, "exec sync started");

        // The deadline counts from the runtime's return.
        let deadline = req
            .timeout
            .and_then(|t| tokio::time::Instant::now().checked_add(t));
        let mut stdout = CappedOutput::default();
        let mut stderr = CappedOutput::default();
        let output = async {
            let (out_fd, out_kind) = streams.stdout;
            let out = exec::collect(out_fd, out_kind, &mut stdout);
            let err = async {
                match streams.stderr {
                    Some(fd) => exec::collect(fd, ExecStream::Pipe, &mut stderr).await,
                    None => Ok(()),
                }
            };
            let (a, b) = futures::join!(out, err);
            for e in [a, b].into_iter().filter_map(Result::err) {
                warn!(id = %req.id, pid, "exec sync output: {e}");
            }
        };
        let (collected, exited) =
            tokio::join!(until(deadline, output), until(deadline, wait_exit(pid)));
        let mut timed_out = collected.is_none();
        let exit_code = match exited {
            Some(Ok(exit)) => {
                process.reaped();
                exit.code()
            }
            Some(Err(e)) => {
                warn!(id = %req.id, pid, "exec sync: cannot get exit status: {e}");
                process.reaped();
                -1
            }
            None => {
                // Dropping `process` kills it; the sweep reaps it.
                timed_out = true;
                EXIT_TIMED_OUT
            }
        };
        if stdout.is_full() || stderr.is_full() {
            debug!(id = %req.id, pid, "exec sync output cut at the 16 MiB limit");
        }
        debug!(id = %req.id, pid, exit_code, timed_out, "exec sync done");
        ExecOutcome {
            exit_code,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
            timed_out,
        }
    }

    /// Runs `runtime exec -d` and returns the tracked exec process and the
    /// streams to read its output from.
    async fn exec_start(
        &self,
        req: &ExecSync,
        pid_file: &Path,
    ) -> Result<(Tracked<'_>, ExecStreams), CoreError> {
        let console = ConsoleSocket::bind_if(req.terminal)?;
        let (stdout_r, stdout_w) = pipe("stdout")?;
        let (stderr_r, stderr_w) = pipe("stderr")?;
        let args = self.runtime.exec_args(&ExecArgs {
            id: &req.id,
            pid_file,
            cgroup: req.cgroup_manager,
            command: &req.command,
            console_socket: console.as_ref().map(|c| c.path.as_path()),
            process_env: &[],
            preserve_fds: 0,
            process_spec: None,
            global_args: &[],
            options: &[],
        });
        debug!(id = %req.id, ?args, "spawning runtime exec");
        let (master, pid) = self
            .run_runtime(RuntimeRun {
                args: &args,
                env: &req.env,
                stdin: None,
                stdout: stdout_w,
                stderr: (stderr_w, &stderr_r),
                create_stdout: None,
                fds: Vec::new(),
                console,
                pid_file,
            })
            .await?;
        let process = Tracked::new(self, pid, true);
        let streams = match master {
            // The runtime's own output pipes carry nothing of the process.
            Some(master) => ExecStreams {
                stdout: (master, ExecStream::Pty),
                stderr: None,
            },
            None => ExecStreams {
                stdout: (stdout_r, ExecStream::Pipe),
                stderr: Some(stderr_r),
            },
        };
        Ok((process, streams))
    }

    /// Waits for the container, drains its output, then writes OOM files,
    /// exit files, starts the cleanup command, and forgets the container, in
    /// that order. A container the keeper holds is released there once its
    /// exit files are written.
    async fn watch(
        self: Rc<Self>,
        policy: ExitPolicy,
        exit_source: ExitSource,
        drained: oneshot::Receiver<DrainedLogs>,
        oom: Option<OomWatcher>,
    ) {
        let ExitPolicy { id, key, pid, .. } = &policy;
        let code = match exit_source.wait(*key, *pid).await {
            Ok(exit) => exit.code(),
            Err(e) => {
                warn!(%id, pid, "cannot get exit status: {e}");
                -1
            }
        };
        let mut span = match policy.trace {
            Some(parent) => {
                otel::Span::start("container_exit", otel::SpanKind::Internal, Some(parent))
            }
            None => otel::Span::none(),
        };
        if span.is_recording() {
            span.set_container_id(id);
            span.set("process.pid", *pid);
        }
        self.state.borrow_mut().tracked.remove(pid);
        self.engine.expedite(*key);
        let log_files = match tokio::time::timeout(DRAIN_GRACE, drained).await {
            Ok(files) => files.unwrap_or_default(),
            Err(_) => {
                warn!(%id, "output still open {DRAIN_GRACE:?} after exit; writing exit files before EOF");
                Vec::new()
            }
        };
        if policy.sync_logs {
            sync_log_files(id, log_files).await;
        }
        let oom_killed = match oom {
            Some(w) => w.finish().await,
            None => false,
        };
        let forced = self.state.borrow().children.get(id).and_then(|l| {
            l.iter()
                .find(|c| c.key == *key)
                .and_then(|c| c.forced_exit_code)
        });
        let code = forced.unwrap_or(code);
        if oom_killed {
            for (path, e) in write_oom_files(&policy.oom_exit_paths) {
                warn!(%id, "write OOM file {}: {e}", path.display());
            }
        }
        for (path, e) in write_exit_files(&policy.exit_paths, code) {
            warn!(%id, "write exit file {}: {e}", path.display());
        }
        span.set("process.exit.code", code);
        span.set("oom_killed", oom_killed);
        info!(%id, pid, code, oom_killed, "container exited");
        if let Some((prog, args)) = policy.cleanup_cmd.split_first() {
            let mut cleanup = Command::new(prog);
            cleanup.args(args).stdin(Stdio::null());
            sys::limits::restore_nofile_in_child(&mut cleanup);
            if let Err(e) = cleanup.spawn() {
                warn!(%id, "cleanup command '{prog}': {e}");
            }
        }
        self.forget(id, *key, code);
        // Last: once released, nothing may hold it again (see
        // `stdin_closed_hook`, which needs the child still listed).
        exit_source.release(*key);
    }

    /// Exit handling of `id`'s child `key` is over: it goes to the exited
    /// list, and the waiters for the container's exit get `code`.
    fn forget(&self, id: &str, key: ContainerKey, code: i32) {
        let key = &key;
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.drain_waiters.remove(key);
        if let Some(list) = st.children.get_mut(id) {
            for child in list.iter_mut().filter(|c| c.key == *key) {
                child.attach.close();
                st.exited.push(summary(id, child, Some(code)));
            }
            list.retain(|c| c.key != *key);
            if list.is_empty() {
                st.children.remove(id);
                let waiters = st.exit_waiters.remove(id).unwrap_or_default();
                drop(guard);
                self.end_sessions(id);
                for waiter in waiters {
                    let _ = waiter.send(code);
                }
            }
        }
    }

    /// Reopens the container's log files (kubelet rotation).
    pub async fn reopen_log(&self, id: &str) -> Result<(), CoreError> {
        let key = self.lookup(id, |c| c.key)?;
        match self.engine.reopen_logs(key).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(CoreError::Reopen(msg)),
            Err(_) => Err(CoreError::Reopen("engine worker went away".into())),
        }
    }

    /// Serves attach clients for the container (or, with a non-empty
    /// `exec_session_id`, for that exec session) at `socket_path`.
    pub fn attach_container(
        &self,
        id: &str,
        exec_session_id: &str,
        socket_path: &Path,
        stop_after_stdin_eof: bool,
    ) -> Result<(), CoreError> {
        if !exec_session_id.is_empty() {
            return self.attach_session(id, exec_session_id, socket_path, stop_after_stdin_eof);
        }
        let mut st = self.state.borrow_mut();
        let child = st
            .children
            .get_mut(id)
            .and_then(|l| l.last_mut())
            .ok_or(CoreError::ChildNotAvailable)?;
        check_attach_room(&child.attach, &format!("container {id}"), socket_path)?;
        child
            .attach
            .listen(socket_path, stop_after_stdin_eof, &self.engine)
            .map_err(|e| {
                CoreError::io(format!("create attach socket {}", socket_path.display()), e)
            })
    }

    /// Whether the container is `stdin_once` (see [`super::bundle`]).
    pub fn stdin_once(&self, id: &str) -> Result<bool, CoreError> {
        self.lookup(id, |c| c.stdin_once)
    }

    /// Resizes the container's terminal (or, with a non-empty
    /// `exec_session_id`, that exec session's).
    pub fn set_window_size(
        &self,
        id: &str,
        exec_session_id: &str,
        width: u16,
        height: u16,
    ) -> Result<(), CoreError> {
        if !exec_session_id.is_empty() {
            return self.resize_session(id, exec_session_id, width, height);
        }
        let st = self.state.borrow();
        let child = st
            .children
            .get(id)
            .and_then(|l| l.last())
            .ok_or(CoreError::ChildNotAvailable)?;
        let master = child.terminal.as_ref().ok_or(CoreError::NoTerminal)?;
        sys::tty::set_window_size(master, width, height)
            .map_err(|e| CoreError::io("resize terminal", e))
    }

    /// The OCI runtime binary every container here runs under.
    pub fn runtime_path(&self) -> &Path {
        &self.runtime.path
    }

    /// The monitored containers (the newest child of each id) and the most
    /// recently exited ones (`listing::MAX_EXITED_KEPT`), ordered by id.
    pub fn list_containers(&self) -> Vec<ContainerSummary> {
        let st = self.state.borrow();
        let mut list: Vec<ContainerSummary> = st
            .children
            .iter()
            .filter_map(|(id, l)| l.last().map(|c| summary(id, c, None)))
            .collect();
        list.extend(
            st.exited
                .iter()
                .filter(|e| !st.children.contains_key(&e.id))
                .cloned(),
        );
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Exec sessions that have not ended (metrics).
    pub fn open_exec_sessions(&self) -> usize {
        self.state
            .borrow()
            .sessions
            .values()
            .map(exec_sessions::ContainerSessions::open_count)
            .sum()
    }

    /// The engine the monitor feeds (metrics read its workers' counters).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn lookup<T>(&self, id: &str, f: impl FnOnce(&Child) -> T) -> Result<T, CoreError> {
        self.state
            .borrow()
            .children
            .get(id)
            .and_then(|l| l.last())
            .map(f)
            .ok_or(CoreError::ChildNotAvailable)
    }

    /// Kills every monitored process with SIGKILL and waits (bounded) until
    /// their exit handling (exit files) is done.
    pub async fn shutdown(&self) {
        // Pinned namespaces go first (spec §1.8 step 1).
        self.release_all_namespaces().await;
        let (pids, watchers): (Vec<u32>, Vec<_>) = {
            let mut st = self.state.borrow_mut();
            let pids = st
                .children
                .values()
                .flatten()
                .map(|c| c.pid)
                .chain(st.exec_pids.iter().copied())
                .collect();
            (pids, std::mem::take(&mut st.watchers))
        };
        for pid in &pids {
            sys::process::kill_tree(*pid, Signal::SIGKILL);
        }
        let all = futures::future::join_all(watchers);
        if tokio::time::timeout(Duration::from_secs(8), all)
            .await
            .is_err()
        {
            warn!("exit handling of some containers did not finish during shutdown");
        }
        info!(killed = pids.len(), "all containers handled");
    }
}

/// One runtime invocation for [`Monitor::run_runtime`].
struct RuntimeRun<'a> {
    args: &'a [std::ffi::OsString],
    /// Added to the runtime's environment.
    env: &'a [(String, String)],
    /// `None`: /dev/null.
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    /// The write end the runtime gets, and the read end its error is read from.
    stderr: (OwnedFd, &'a OwnedFd),
    /// `create` only: the stdout pipe's read end. Both pipes are then read
    /// while the runtime runs (see [`RuntimeOutput`]); an exec's pipes are
    /// its process's output, left for the caller.
    create_stdout: Option<&'a OwnedFd>,
    fds: Vec<OwnedFd>,
    console: Option<ConsoleSocket>,
    pid_file: &'a Path,
}

/// The fds a `createContainer` took from the fd socket.
struct PassedFds {
    /// Become fd 3, 4, ... of the runtime process.
    additional: Vec<OwnedFd>,
    /// Held until the container is forgotten.
    leaked: Vec<OwnedFd>,
    /// The runtime's stdin, stdout and stderr instead of the monitor's
    /// pipes (see [`Monitor::create_container_with_fds`]).
    stdio: Option<[OwnedFd; 3]>,
}

/// Where an exec process's output is read from: a pty master (terminal,
/// everything is stdout) or the stdout and stderr pipes.
struct ExecStreams {
    stdout: (OwnedFd, ExecStream),
    stderr: Option<OwnedFd>,
}

/// Keeps a child's pid out of the SIGCHLD sweep while its owner waits for
/// it. Unless [`Tracked::reaped`] was called, dropping it (a cancelled call,
/// an exec deadline) kills an exec process and hands the pid back to the
/// sweep, so an abandoned wait leaves neither a zombie nor a stale entry.
struct Tracked<'a> {
    monitor: &'a Monitor,
    pid: u32,
    /// An exec process: listed for shutdown, killed when abandoned.
    exec: bool,
    reaped: bool,
}

impl<'a> Tracked<'a> {
    fn new(monitor: &'a Monitor, pid: u32, exec: bool) -> Tracked<'a> {
        let mut st = monitor.state.borrow_mut();
        st.tracked.insert(pid);
        if exec {
            st.exec_pids.insert(pid);
        }
        Tracked {
            monitor,
            pid,
            exec,
            reaped: false,
        }
    }

    /// The owner reaped the pid itself.
    fn reaped(mut self) {
        self.reaped = true;
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if !self.reaped && self.exec {
            sys::process::kill_tree(self.pid, Signal::SIGKILL);
        }
        {
            let mut st = self.monitor.state.borrow_mut();
            st.tracked.remove(&self.pid);
            st.exec_pids.remove(&self.pid);
        }
        if !self.reaped {
            // It may have exited already, its SIGCHLD swept past it.
            self.monitor.sweep.notify_one();
        }
    }
}

/// One of the [`MAX_CONCURRENT_EXEC_SYNC`] execSync slots, given back
/// when dropped (also when the call is cancelled).
struct ExecSyncSlot<'a>(&'a Monitor);

impl<'a> ExecSyncSlot<'a> {
    fn take(monitor: &'a Monitor) -> Result<ExecSyncSlot<'a>, CoreError> {
        let mut st = monitor.state.borrow_mut();
        if st.exec_syncs_running >= MAX_CONCURRENT_EXEC_SYNC {
            return Err(CoreError::TooMany {
                what: "concurrent execSync calls",
                scope: "this server".to_string(),
                limit: MAX_CONCURRENT_EXEC_SYNC,
            });
        }
        st.exec_syncs_running += 1;
        Ok(ExecSyncSlot(monitor))
    }
}

impl Drop for ExecSyncSlot<'_> {
    fn drop(&mut self) {
        self.0.state.borrow_mut().exec_syncs_running -= 1;
    }
}

/// Holds the stray sweep back while an exec's process is not tracked yet.
struct SweepHold<'a>(&'a Monitor);

impl<'a> SweepHold<'a> {
    fn new(monitor: &'a Monitor) -> SweepHold<'a> {
        monitor.state.borrow_mut().pending_execs += 1;
        SweepHold(monitor)
    }
}

impl Drop for SweepHold<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.borrow_mut();
        st.pending_execs -= 1;
        if st.pending_execs == 0 {
            // Sweeps skipped meanwhile: catch up.
            self.0.sweep.notify_one();
        }
    }
}

/// Removes a file when dropped (exec sync pid files).
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        match fs::remove_file(self.0) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                warn!("remove {}: {e}", self.0.display());
            }
            _ => {}
        }
    }
}

/// Runs `f` until `deadline` (`None`: no deadline); `None` if it passed.
async fn until<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    f: F,
) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

struct ExitPolicy {
    id: String,
    key: ContainerKey,
    pid: u32,
    exit_paths: Vec<PathBuf>,
    oom_exit_paths: Vec<PathBuf>,
    cleanup_cmd: Vec<String>,
    /// Sync the drained log files before the exit files are written.
    sync_logs: bool,
    /// The span of the request that created the container: exit handling
    /// is traced under it.
    trace: Option<otel::SpanContext>,
}

/// Second handles on a drained container's log files (see
/// `EngineEvent::Drained`).
type DrainedLogs = Vec<std::fs::File>;

/// How long exit files wait for the log files to reach the disk: a disk
/// that hangs (a dead NFS server) must not keep the exit code from the
/// files forever.
const LOG_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Syncs `files` to disk off the control thread, so that a reader who sees
/// the exit file after a host crash also finds every line logged before it
/// (conmon's default; `--no-sync-log` turns it off).
///
/// The sync runs on a detached thread of its own, not tokio's blocking
/// pool: a runtime waits for its pool threads when it is dropped, so one
/// sync stuck on a hung disk would keep the server (or a conmon-mode
/// monitor) from ever exiting. A detached thread ends with the process.
async fn sync_log_files(id: &str, files: DrainedLogs) {
    if files.is_empty() {
        return;
    }
    let (done, synced) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("ringmon-sync".into())
        .spawn(move || {
            let errors: Vec<io::Error> = files.iter().filter_map(|f| f.sync_data().err()).collect();
            let _ = done.send(errors);
        });
    if let Err(e) = spawned {
        warn!(%id, "sync log files: cannot start a thread: {e}");
        return;
    }
    match tokio::time::timeout(LOG_SYNC_TIMEOUT, synced).await {
        Ok(Ok(errors)) => {
            for e in errors {
                warn!(%id, "sync log file: {e}");
            }
        }
        Ok(Err(_)) => warn!(%id, "sync log files: the sync thread ended without a result"),
        Err(_) => {
            warn!(%id, "log files not synced within {LOG_SYNC_TIMEOUT:?}; writing exit files anyway")
        }
    }
}

/// Waits until `pid` (our child) exits and reaps it, using a pidfd where the
/// kernel has them and a 50 ms poll otherwise.
pub async fn wait_exit(pid: u32) -> io::Result<sys::process::Exit> {
    match sys::process::pidfd_open(pid) {
        Ok(fd) => {
            let fd = sys::reactor::async_fd(fd, tokio::io::Interest::READABLE)?;
            loop {
                if let Some(exit) = sys::process::try_reap(pid)? {
                    return Ok(exit);
                }
                let mut guard = fd.readable().await?;
                guard.clear_ready();
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => sys::process::try_reap(pid)?
            .ok_or_else(|| io::Error::other(format!("pid {pid} vanished without an exit status"))),
        Err(_) => loop {
            if let Some(exit) = sys::process::try_reap(pid)? {
                return Ok(exit);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        },
    }
}

/// How often [`wait_exit_peeking`] tries to hand an exit to the keeper
/// before it reaps anyway, and how long it waits between tries.
const EXIT_REPORT_TRIES: u32 = 5;
const EXIT_REPORT_RETRY: Duration = Duration::from_millis(200);

/// [`wait_exit`] for a child the keeper holds: the exit is seen without
/// reaping (the zombie stays), handed to `report`, and only then reaped, so
/// that it cannot be lost if this process dies in between (the keeper
/// inherits the zombie and reaps it). `report` says whether the keeper got
/// it; while it did not, the zombie is kept and the report retried, since
/// reaping would leave the exit nowhere but in this process. After
/// [`EXIT_REPORT_TRIES`] the exit is reaped anyway: a keeper that stays
/// unreachable that long is gone or wedged, and exit handling must go on.
async fn wait_exit_peeking(
    pid: u32,
    report: impl Fn(sys::process::Exit) -> bool,
) -> io::Result<sys::process::Exit> {
    let peeked = match sys::process::pidfd_open(pid) {
        Ok(fd) => {
            let fd = sys::reactor::async_fd(fd, tokio::io::Interest::READABLE)?;
            loop {
                if let Some(exit) = sys::process::peek_exit(pid)? {
                    break exit;
                }
                let mut guard = fd.readable().await?;
                guard.clear_ready();
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => sys::process::peek_exit(pid)?
            .ok_or_else(|| {
                io::Error::other(format!("pid {pid} vanished without an exit status"))
            })?,
        Err(_) => loop {
            if let Some(exit) = sys::process::peek_exit(pid)? {
                break exit;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        },
    };
    for attempt in 1..=EXIT_REPORT_TRIES {
        if report(peeked) {
            break;
        }
        if attempt < EXIT_REPORT_TRIES {
            tokio::time::sleep(EXIT_REPORT_RETRY).await;
        } else {
            warn!(pid, "the keeper did not take the exit; reaping it anyway");
        }
    }
    Ok(sys::process::try_reap(pid)?.unwrap_or(peeked))
}

fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd), CoreError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| CoreError::io(format!("create {what} pipe"), e.into()))
}

/// The engine sources of a process on pipes: stdout and stderr read ends.
fn pipe_sources(stdout_r: OwnedFd, stderr_r: OwnedFd) -> Vec<StreamSource> {
    vec![
        StreamSource {
            fd: stdout_r,
            stream: StreamKind::Stdout,
            kind: SourceKind::Pipe,
            journal: None,
        },
        StreamSource {
            fd: stderr_r,
            stream: StreamKind::Stderr,
            kind: SourceKind::Pipe,
            journal: None,
        },
    ]
}

/// Ok if the runtime exited 0; else its failure with what it wrote to
/// stderr.
fn runtime_succeeded(
    exit: sys::process::Exit,
    stderr: impl FnOnce() -> String,
) -> Result<(), CoreError> {
    match exit {
        sys::process::Exit::Code(0) => Ok(()),
        sys::process::Exit::Code(code) => Err(CoreError::RuntimeFailed {
            code,
            stderr: stderr(),
        }),
        sys::process::Exit::Signal(signal) => Err(CoreError::RuntimeSignaled {
            signal,
            stderr: stderr(),
        }),
    }
}

/// What a runtime wrote to the container's pipes while `create` ran. The
/// container process cannot write before `start`, so all of it is the
/// runtime's (or its hooks'): stderr is kept for the error message (its
/// last [`RUNTIME_STDERR_MAX`] bytes, where the runtime's verdict is),
/// stdout only counted. None of it reaches the container's log.
#[derive(Default)]
struct RuntimeOutput {
    stderr: Vec<u8>,
    stdout_bytes: usize,
}

impl RuntimeOutput {
    fn push_stderr(&mut self, chunk: &[u8]) {
        self.stderr.extend_from_slice(chunk);
        if self.stderr.len() > 2 * RUNTIME_STDERR_MAX {
            let cut = self.stderr.len() - RUNTIME_STDERR_MAX;
            self.stderr.drain(..cut);
        }
    }

    /// Reads what is left in both pipes once the runtime is gone. Bounded:
    /// a writer that stays (a hook's child) cannot keep this going.
    fn drain_rest(&mut self, stdout_r: Option<&OwnedFd>, stderr_r: &OwnedFd) {
        let mut chunk = vec![0u8; DRAIN_CHUNK];
        for _ in 0..DRAIN_REST_CHUNKS {
            match sys::fd::read_nonblocking(stderr_r.as_fd(), &mut chunk) {
                Ok(n) if n > 0 => self.push_stderr(&chunk[..n]),
                _ => break,
            }
        }
        let Some(stdout_r) = stdout_r else { return };
        for _ in 0..DRAIN_REST_CHUNKS {
            match sys::fd::read_nonblocking(stdout_r.as_fd(), &mut chunk) {
                Ok(n) if n > 0 => self.stdout_bytes += n,
                _ => break,
            }
        }
    }

    /// The error text: what was drained, else what is in the pipe now (an
    /// exec, whose pipes are the process's and are not drained).
    fn into_stderr(self, stderr_r: &OwnedFd) -> String {
        if self.stderr.is_empty() {
            return sys::fd::read_available(stderr_r.as_fd(), RUNTIME_STDERR_MAX);
        }
        let start = self.stderr.len().saturating_sub(RUNTIME_STDERR_MAX);
        String::from_utf8_lossy(&self.stderr[start..]).into_owned()
    }
}

/// Size of one read while draining a runtime's output.
const DRAIN_CHUNK: usize = 64 * 1024;

/// At most this many chunks are read from each pipe after the runtime
/// exited (4 MiB: more than a grown pipe holds).
const DRAIN_REST_CHUNKS: usize = 64;

/// Awaits `wait` while reading the runtime's stdout and stderr pipes, so a
/// runtime that writes more than a pipe holds never blocks on it (and
/// create never hangs on it).
async fn drain_while<F: std::future::Future>(
    wait: F,
    stdout_r: &OwnedFd,
    stderr_r: &OwnedFd,
    out: &mut RuntimeOutput,
) -> F::Output {
    let watch = |fd: &OwnedFd| -> Option<tokio::io::unix::AsyncFd<OwnedFd>> {
        let dup = fd.try_clone().ok()?;
        sys::fd::set_nonblocking(dup.as_fd()).ok()?;
        sys::reactor::async_fd(dup, tokio::io::Interest::READABLE).ok()
    };
    // Without a reactor registration (never expected) the pipe is read
    // after the exit only, as before.
    let mut stdout = watch(stdout_r);
    let mut stderr = watch(stderr_r);
    let mut chunk = vec![0u8; DRAIN_CHUNK];
    tokio::pin!(wait);
    loop {
        tokio::select! {
            biased;
            done = &mut wait => return done,
            ready = readable(&stderr) => match read_ready(ready, &mut chunk) {
                Some(n) => out.push_stderr(&chunk[..n]),
                None => stderr = None,
            },
            ready = readable(&stdout) => match read_ready(ready, &mut chunk) {
                Some(n) => out.stdout_bytes += n,
                None => stdout = None,
            },
        }
    }
}

/// Readiness of a watched pipe; never for one no longer watched.
async fn readable(
    fd: &Option<tokio::io::unix::AsyncFd<OwnedFd>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// One read from a ready pipe: `Some(n)` bytes (0 when the readiness was
/// stale), `None` at EOF or on an error (stop watching it).
fn read_ready(
    ready: io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>>,
    chunk: &mut [u8],
) -> Option<usize> {
    let mut guard = ready.ok()?;
    match guard.try_io(|f| nix::unistd::read(f.get_ref(), chunk).map_err(io::Error::from)) {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(n)) => Some(n),
        Err(_would_block) => Some(0),
    }
}

/// How far a create got, for what its reservation must undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CreateStage {
    /// The runtime was not started: nothing to undo in it.
    BeforeRuntime,
    /// The runtime is running (a drop here means the call was cancelled).
    RuntimeRunning,
    /// The runtime failed and cleaned up itself.
    RuntimeFailed,
    /// The runtime made the container (or was killed making it).
    Created,
    /// The container is monitored.
    Monitored,
}

/// A container the runtime has that no request will monitor.
struct Leftover {
    id: String,
    cgroup: super::CgroupManager,
    global_args: Vec<String>,
}

/// Holds a container id in `creating` for one create, whatever becomes of
/// the call. capnp-rpc drops a call's future when its client goes away, so
/// the release cannot wait for the create to finish: it happens on drop. A
/// create that ends, or is dropped, after the runtime made the container
/// but before it is monitored leaves a container no client knows of; it is
/// handed to `delete_leftovers`, which deletes it and frees the id only
/// then (so a retry cannot meet the leftover or be deleted with it).
struct CreateReservation<'a> {
    monitor: &'a Monitor,
    id: String,
    cgroup: super::CgroupManager,
    global_args: Vec<String>,
    stage: Cell<CreateStage>,
}

impl<'a> CreateReservation<'a> {
    fn take(monitor: &'a Monitor, req: &CreateContainer) -> Result<Self, CoreError> {
        let mut st = monitor.state.borrow_mut();
        if st.children.get(&req.id).is_some_and(|c| !c.is_empty())
            || !st.creating.insert(req.id.clone())
        {
            return Err(CoreError::DuplicateId(req.id.clone()));
        }
        Ok(CreateReservation {
            monitor,
            id: req.id.clone(),
            cgroup: req.cgroup_manager,
            global_args: req.global_args.clone(),
            stage: Cell::new(CreateStage::BeforeRuntime),
        })
    }

    /// Records the create's outcome; the release happens on drop.
    fn settle<T>(self, result: &Result<T, CoreError>) {
        if result.is_ok() {
            self.stage.set(CreateStage::Monitored);
        }
    }
}

impl Drop for CreateReservation<'_> {
    fn drop(&mut self) {
        match self.stage.get() {
            CreateStage::RuntimeRunning | CreateStage::Created => {
                warn!(id = %self.id, stage = ?self.stage.get(), "create did not complete: deleting what the runtime made");
                let left = Leftover {
                    id: std::mem::take(&mut self.id),
                    cgroup: self.cgroup,
                    global_args: std::mem::take(&mut self.global_args),
                };
                if let Err(unsent) = self.monitor.leftovers.send(left) {
                    // The monitor is going away: nothing will retry the id.
                    self.monitor
                        .state
                        .borrow_mut()
                        .creating
                        .remove(&unsent.0.id);
                }
            }
            CreateStage::BeforeRuntime | CreateStage::RuntimeFailed | CreateStage::Monitored => {
                self.monitor.state.borrow_mut().creating.remove(&self.id);
            }
        }
    }
}

/// Refuses a new attach (RPC) when `attach` serves [`MAX_ATTACH_CLIENTS`]
/// clients already, or when `socket_path` would be one listener too many.
/// `scope` names the container (or exec session) in the error.
pub(crate) fn check_attach_room(
    attach: &Attach,
    scope: &str,
    socket_path: &Path,
) -> Result<(), CoreError> {
    if attach.client_count() >= MAX_ATTACH_CLIENTS {
        return Err(CoreError::TooMany {
            what: "attach clients",
            scope: scope.to_string(),
            limit: MAX_ATTACH_CLIENTS,
        });
    }
    if !attach.serves(socket_path) && attach.listener_count() >= MAX_ATTACH_CLIENTS {
        return Err(CoreError::TooMany {
            what: "attach sockets",
            scope: scope.to_string(),
            limit: MAX_ATTACH_CLIENTS,
        });
    }
    Ok(())
}

/// Kills a spawned runtime when dropped armed: its call was abandoned.
struct KillOnDrop(Option<u32>);

impl KillOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            sys::process::kill_tree(pid, Signal::SIGKILL);
        }
    }
}

fn read_pid_file(path: &Path) -> Result<u32, CoreError> {
    let content = fs::read_to_string(path).map_err(|source| CoreError::PidRead {
        path: path.to_path_buf(),
        source,
    })?;
    // Pids 0 and 1 would make a later kill hit our own process group or
    // init: never accept them from a file.
    match content.trim().parse::<u32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(CoreError::PidParse {
            path: path.to_path_buf(),
            content,
        }),
    }
}

/// The console socket a runtime in terminal mode sends the pty master to.
struct ConsoleSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    /// A console socket for a process in terminal mode; none otherwise.
    fn bind_if(terminal: bool) -> Result<Option<ConsoleSocket>, CoreError> {
        terminal.then(ConsoleSocket::bind).transpose()
    }

    fn bind() -> Result<ConsoleSocket, CoreError> {
        let dir = std::env::var_os("TMPDIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let path = dir.join(format!("conmon-term-{}.sock", random_uuid()));
        let listener = sys::socket::bind_stream(&path)
            .map_err(|e| CoreError::io(format!("bind console socket {}", path.display()), e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
            .map_err(|e| CoreError::io(format!("chmod console socket {}", path.display()), e))?;
        Ok(ConsoleSocket { path, listener })
    }

    /// Takes the pty master the runtime sent before it exited. The runtime
    /// has already exited, so the connection is queued or was never made:
    /// this never waits for a runtime that died (upstream hangs there).
    fn receive_master(&self) -> Result<OwnedFd, CoreError> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| CoreError::io("console socket", e))?;
        let (conn, _) = self.listener.accept().map_err(|_| CoreError::NoConsole)?;
        conn.set_nonblocking(false)
            .map_err(|e| CoreError::io("console socket", e))?;
        let master = sys::socket::recv_fds(&conn)
            .map_err(|e| CoreError::io("receive pty master", e))?
            .into_iter()
            .next()
            .ok_or(CoreError::NoConsole)?;
        let _ = conn.shutdown(std::net::Shutdown::Both);
        sys::tty::prepare_master(&master).map_err(|e| CoreError::io("configure pty master", e))?;
        debug!(fd = master.as_raw_fd(), "received pty master");
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A random RFC 4122 version-4 UUID, lowercase and hyphenated, for names
/// and ids that must not collide (pid files, console sockets, exec
/// session ids). Not a credential: should `getrandom` ever fail, time, pid
/// and a counter keep the names unique (the streaming server's tokens,
/// which are credentials, take no such fallback).
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if sys::random::fill(&mut b).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b = (t ^ (u128::from(std::process::id()) << 64) ^ (u128::from(n) << 96)).to_le_bytes();
    }
    super::uuid_v4(b)
}

// ---------------------------------------------------------------------------
// Streaming exec and the lookups the streaming server needs (serveExec,
// serveAttach; spec §3.9, §6.4).

/// A running streaming exec process. Waiting for it reaps it; dropping it
/// unwaited kills it (like an abandoned exec sync).
pub struct StreamingExec<'a> {
    process: Tracked<'a>,
}

/// The descriptors of a streaming exec process: where to read its output,
/// where to write its stdin, and the pty master for resizes.
pub struct StreamingExecIo {
    /// stdout pipe, or the pty master in terminal mode (everything).
    pub stdout: OwnedFd,
    pub stdout_kind: ExecStream,
    /// `None` in terminal mode.
    pub stderr: Option<OwnedFd>,
    /// The stdin pipe's write end (or a pty master duplicate); `None` when
    /// stdin was not requested.
    pub stdin: Option<OwnedFd>,
    /// A pty master duplicate for resizes (terminal mode only).
    pub terminal: Option<OwnedFd>,
}

impl StreamingExec<'_> {
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// Waits for the exec process to exit and reaps it; its exit code
    /// (128 + signal for a signal), -1 if the status could not be read.
    pub async fn wait(self) -> i32 {
        let pid = self.process.pid;
        let code = match wait_exit(pid).await {
            Ok(exit) => exit.code(),
            Err(e) => {
                warn!(pid, "streaming exec: cannot get exit status: {e}");
                -1
            }
        };
        self.process.reaped();
        code
    }
}

impl Monitor {
    /// The server's runtime dir.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// Whether a container with this id is monitored (and not exited).
    pub fn has_child(&self, id: &str) -> bool {
        self.lookup(id, |_| ()).is_ok()
    }

    /// Starts `command` in container `id` for a streaming exec session
    /// (spec §6.4): `runtime exec -d` as for exec sync, with the pid file
    /// `<runtime-dir>/exec_streaming<UUID>pid` (removed once read), no extra
    /// environment, stdin piped only if `stdin`, a pty when `terminal`. The
    /// caller streams the output and waits for the exit.
    pub async fn exec_streaming(
        &self,
        id: &str,
        command: &[String],
        terminal: bool,
        stdin: bool,
        cgroup: super::CgroupManager,
    ) -> Result<(StreamingExec<'_>, StreamingExecIo), CoreError> {
        let pid_file = self
            .runtime_dir
            .join(format!("exec_streaming{}pid", random_uuid()));
        let _remove_pid_file = RemoveOnDrop(&pid_file);
        let hold = SweepHold::new(self);
        let console = ConsoleSocket::bind_if(terminal)?;
        let (stdout_r, stdout_w) = pipe("stdout")?;
        let (stderr_r, stderr_w) = pipe("stderr")?;
        let (stdin_r, stdin_w) = if stdin && !terminal {
            let (r, w) = pipe("stdin")?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let args = self.runtime.exec_args(&ExecArgs {
            id,
            pid_file: &pid_file,
            cgroup,
            command,
            console_socket: console.as_ref().map(|c| c.path.as_path()),
            process_env: &[],
            preserve_fds: 0,
            process_spec: None,
            global_args: &[],
            options: &[],
        });
        debug!(%id, ?args, "spawning runtime exec (streaming)");
        let (master, pid) = self
            .run_runtime(RuntimeRun {
                args: &args,
                env: &[],
                stdin: stdin_r,
                stdout: stdout_w,
                stderr: (stderr_w, &stderr_r),
                create_stdout: None,
                fds: Vec::new(),
                console,
                pid_file: &pid_file,
            })
            .await?;
        let process = Tracked::new(self, pid, true);
        drop(hold);
        let dup = |m: &OwnedFd| {
            m.try_clone()
                .map_err(|e| CoreError::io("duplicate pty master", e))
        };
        let io = match master {
            Some(master) => StreamingExecIo {
                stdin: if stdin { Some(dup(&master)?) } else { None },
                terminal: Some(dup(&master)?),
                stdout: master,
                stdout_kind: ExecStream::Pty,
                stderr: None,
            },
            None => StreamingExecIo {
                stdout: stdout_r,
                stdout_kind: ExecStream::Pipe,
                stderr: Some(stderr_r),
                stdin: stdin_w,
                terminal: None,
            },
        };
        debug!(%id, pid, "streaming exec started");
        Ok((StreamingExec { process }, io))
    }
}
