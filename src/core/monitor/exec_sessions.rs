//! Exec sessions in the registry (the `createExecSession`,
//! `startExecSession` and `execSessionStatus` extension; types in
//! `core::exec_session`).
//!
//! A session is served like a small container: its output is an engine
//! registration of its own (logged to the session's log drivers, fanned out
//! to attach clients), its stdin goes through an [`Attach`], and a watcher
//! writes its exit files after its output drained. The engine registration
//! is made when the session is *created*, with its sources pending, so
//! attach clients that connect before the start stay attached and get
//! every byte the process writes, even for a terminal whose pty only exists
//! once the runtime ran.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use tokio::sync::{oneshot, watch};

use super::*;
use crate::core::exec_session::{
    CreateExecSession, ExecProcess, SessionState, ENDED_SESSIONS_KEPT, MAX_EXEC_SESSIONS,
};

/// One exec session.
pub(super) struct Session {
    key: ContainerKey,
    /// What the start needs; taken by it.
    prepared: Option<Prepared>,
    /// A duplicate of the pty master, for resizes (terminal sessions).
    terminal: Option<OwnedFd>,
    pub(super) attach: Attach,
    /// When it ended, in this container's order of endings.
    ended: Option<u64>,
    /// Its state; waiting status calls follow it.
    status: Rc<watch::Sender<SessionState>>,
}

impl Session {
    fn state(&self) -> SessionState {
        *self.status.borrow()
    }
}

/// A created session's request and the resources made for it.
struct Prepared {
    req: CreateExecSession,
    /// Read end of the stdin pipe (stdin without a terminal).
    stdin_read: Option<OwnedFd>,
    /// Hands the pty master to the stdin writer (stdin with a terminal).
    pty_stdin: Option<oneshot::Sender<OwnedFd>>,
    /// fd-socket fds that become fd 3, 4, ... of the process.
    fds: Vec<OwnedFd>,
    drained: oneshot::Receiver<super::DrainedLogs>,
}

/// The sessions of one container id.
#[derive(Default)]
pub(super) struct ContainerSessions {
    pub(super) by_id: HashMap<String, Session>,
    endings: u64,
}

impl ContainerSessions {
    /// Sessions that have not ended.
    pub(super) fn open_count(&self) -> usize {
        self.by_id.values().filter(|s| s.ended.is_none()).count()
    }

    /// Forgets the oldest ended sessions beyond [`ENDED_SESSIONS_KEPT`].
    fn evict_ended(&mut self) {
        let ended = self.by_id.values().filter(|s| s.ended.is_some()).count();
        for _ in ENDED_SESSIONS_KEPT..ended {
            let oldest = self
                .by_id
                .iter()
                .filter_map(|(sid, s)| s.ended.map(|e| (e, sid.clone())))
                .min();
            if let Some((_, sid)) = oldest {
                self.by_id.remove(&sid);
            }
        }
    }
}

/// What the watcher of a running session needs.
struct SessionWatch {
    id: String,
    session_id: String,
    key: ContainerKey,
    pid: u32,
    exit_paths: Vec<PathBuf>,
    cleanup_cmd: Vec<String>,
    cleanup_delay: Duration,
    drained: oneshot::Receiver<super::DrainedLogs>,
    status: Rc<watch::Sender<SessionState>>,
}

fn no_such_session(id: &str, session_id: &str) -> CoreError {
    CoreError::NoSuchSession {
        id: id.to_string(),
        session: session_id.to_string(),
    }
}

fn session_state_error(session_id: &str, state: &'static str) -> CoreError {
    CoreError::SessionState {
        session: session_id.to_string(),
        state,
    }
}

/// The session `session_id` of container `id` in `sessions`.
fn find_session<'a>(
    sessions: &'a mut HashMap<String, ContainerSessions>,
    id: &str,
    session_id: &str,
) -> Result<&'a mut Session, CoreError> {
    sessions
        .get_mut(id)
        .and_then(|s| s.by_id.get_mut(session_id))
        .ok_or_else(|| no_such_session(id, session_id))
}

impl Monitor {
    /// Creates an exec session in a monitored container and, unless
    /// `req.suspended`, starts it. Returns the session id (generated when
    /// the request left it empty) and the pid (0 while suspended).
    pub async fn create_exec_session(
        self: &Rc<Self>,
        req: CreateExecSession,
    ) -> Result<(String, u32), CoreError> {
        // Slots are spent by the request that names them, whatever its fate.
        let fds = self.take_slots(&req.additional_fds);
        self.lookup(&req.id, |_| ())?;
        let fds = fds?;
        self.create_exec_session_inner(req, fds).await
    }

    /// [`Monitor::create_exec_session`] with `fds` (the caller's own, not
    /// fd-socket slots) as the process's fd 3, 4, ... In a monitor that
    /// allows it (conmon mode), the container need not be monitored here.
    pub async fn create_exec_session_with_fds(
        self: &Rc<Self>,
        req: CreateExecSession,
        fds: Vec<OwnedFd>,
    ) -> Result<(String, u32), CoreError> {
        if !self.exec_in_unmonitored.get() {
            self.lookup(&req.id, |_| ())?;
        }
        self.create_exec_session_inner(req, fds).await
    }

    async fn create_exec_session_inner(
        self: &Rc<Self>,
        mut req: CreateExecSession,
        fds: Vec<OwnedFd>,
    ) -> Result<(String, u32), CoreError> {
        if req.session_id.is_empty() {
            req.session_id = random_uuid();
        }
        let exists = self
            .state
            .borrow()
            .sessions
            .get(&req.id)
            .is_some_and(|s| s.by_id.contains_key(&req.session_id));
        if exists {
            return Err(CoreError::SessionExists {
                id: req.id,
                session: req.session_id,
            });
        }
        let open_sessions: usize = self
            .state
            .borrow()
            .sessions
            .values()
            .map(|c| c.by_id.values().filter(|s| s.ended.is_none()).count())
            .sum();
        if open_sessions >= MAX_EXEC_SESSIONS {
            return Err(CoreError::TooMany {
                what: "exec sessions",
                scope: "this server".to_string(),
                limit: MAX_EXEC_SESSIONS,
            });
        }
        let logs = req
            .logs
            .iter()
            .map(LogWriter::open)
            .collect::<Result<Vec<_>, _>>()?;
        let (stdin_target, stdin_read, pty_stdin) = match (req.stdin, req.terminal) {
            (false, _) => (StdinTarget::None, None, None),
            (true, false) => {
                let (r, w) = pipe("stdin")?;
                (StdinTarget::Pipe(w), Some(r), None)
            }
            (true, true) => {
                let (tx, rx) = oneshot::channel();
                (StdinTarget::Later(rx), None, Some(tx))
            }
        };
        let key = self.next_key();
        let (drained_tx, drained) = oneshot::channel();
        self.state
            .borrow_mut()
            .drain_waiters
            .insert(key, drained_tx);
        if let Err(e) = self.engine.register_pending(key, logs) {
            self.state.borrow_mut().drain_waiters.remove(&key);
            return Err(e.into());
        }
        let (id, session_id, suspended) = (req.id.clone(), req.session_id.clone(), req.suspended);
        let session = Session {
            key,
            prepared: Some(Prepared {
                req,
                stdin_read,
                pty_stdin,
                fds,
                drained,
            }),
            terminal: None,
            attach: Attach::new(key, stdin_target),
            ended: None,
            status: Rc::new(watch::Sender::new(SessionState::Created)),
        };
        self.state
            .borrow_mut()
            .sessions
            .entry(id.clone())
            .or_default()
            .by_id
            .insert(session_id.clone(), session);
        debug!(%id, session = %session_id, key, suspended, "exec session created");
        if suspended {
            return Ok((session_id, 0));
        }
        let pid = self.start_exec_session(&id, &session_id).await?;
        Ok((session_id, pid))
    }

    /// Starts a session created suspended; returns its pid once the runtime
    /// started the process. If the runtime fails the session is forgotten
    /// (its attach clients get the done packet) and the runtime's error is
    /// returned.
    pub async fn start_exec_session(
        self: &Rc<Self>,
        id: &str,
        session_id: &str,
    ) -> Result<u32, CoreError> {
        let (key, prepared, status) = {
            let mut st = self.state.borrow_mut();
            let session = find_session(&mut st.sessions, id, session_id)?;
            match session.state() {
                SessionState::Created => {}
                SessionState::Running { .. } => {
                    return Err(session_state_error(session_id, "already running"))
                }
                SessionState::Exited { .. } => {
                    return Err(session_state_error(session_id, "already exited"))
                }
            }
            let prepared = session
                .prepared
                .take()
                .ok_or_else(|| session_state_error(session_id, "being started"))?;
            (session.key, prepared, Rc::clone(&session.status))
        };
        // A task of its own: a cancelled call must not abandon a runtime
        // half-way with the session stuck. It runs in the request's span
        // (the task-local does not follow into a new task).
        let run = tokio::task::spawn_local(otel::in_context(
            otel::current(),
            Rc::clone(self).run_session(
                id.to_string(),
                session_id.to_string(),
                key,
                prepared,
                status,
            ),
        ));
        match run.await {
            Ok(result) => result,
            Err(e) => Err(CoreError::io(
                "exec session start task",
                io::Error::other(e.to_string()),
            )),
        }
    }

    async fn run_session(
        self: Rc<Self>,
        id: String,
        session_id: String,
        key: ContainerKey,
        prepared: Prepared,
        status: Rc<watch::Sender<SessionState>>,
    ) -> Result<u32, CoreError> {
        let Prepared {
            req,
            stdin_read,
            pty_stdin,
            fds,
            drained,
        } = prepared;
        let started = self.spawn_session_process(&req, stdin_read, fds).await;
        let (pid, master, streams) = match started {
            Ok(started) => started,
            Err(e) => {
                warn!(%id, session = %session_id, "exec session start failed: {e}");
                let _ = self.engine.add_sources(key, Vec::new());
                self.state.borrow_mut().drain_waiters.remove(&key);
                let removed = self
                    .state
                    .borrow_mut()
                    .sessions
                    .get_mut(&id)
                    .and_then(|s| s.by_id.remove(&session_id));
                if let Some(mut session) = removed {
                    session.attach.close();
                }
                return Err(e);
            }
        };
        let (terminal, sources) = match master {
            Some(master) => {
                let resize = master.try_clone().ok();
                if let (Some(tx), Ok(dup)) = (pty_stdin, master.try_clone()) {
                    let _ = tx.send(dup);
                }
                let src = vec![StreamSource {
                    fd: master,
                    stream: StreamKind::Stdout,
                    kind: SourceKind::Pty,
                    journal: None,
                }];
                (resize, src)
            }
            None => (None, streams),
        };
        // Fails only if the container ended meanwhile (the pending
        // registration was released): the process is killed, and still
        // watched so that it is reaped and its exit files are written.
        let mut result = Ok(pid);
        if let Err(e) = self.engine.add_sources(key, sources) {
            sys::process::kill_tree(pid, Signal::SIGKILL);
            result = Err(e.into());
        }
        let running = SessionState::Running { pid };
        status.send_replace(running);
        {
            let mut st = self.state.borrow_mut();
            let session = st
                .sessions
                .get_mut(&id)
                .and_then(|s| s.by_id.get_mut(&session_id))
                .filter(|s| s.key == key);
            match session {
                Some(session) => session.terminal = terminal,
                // Its container ended meanwhile.
                None => sys::process::kill_tree(pid, Signal::SIGKILL),
            }
        }
        info!(%id, session = %session_id, pid, "exec session started");
        let watch = SessionWatch {
            id,
            session_id,
            key,
            pid,
            exit_paths: req.exit_paths,
            cleanup_cmd: req.cleanup_cmd,
            cleanup_delay: req.cleanup_delay,
            drained,
            status,
        };
        let watcher = tokio::task::spawn_local(Rc::clone(&self).watch_session(watch));
        let mut st = self.state.borrow_mut();
        st.watchers.retain(|h| !h.is_finished());
        st.watchers.push(watcher);
        result
    }

    /// Runs `runtime exec -d` for a session. Returns the tracked pid, the
    /// pty master (terminal) and otherwise the output pipes.
    async fn spawn_session_process(
        &self,
        req: &CreateExecSession,
        stdin_read: Option<OwnedFd>,
        fds: Vec<OwnedFd>,
    ) -> Result<(u32, Option<OwnedFd>, Vec<StreamSource>), CoreError> {
        let own_pid_file = self
            .runtime_dir
            .join(format!("exec_session{}pid", random_uuid()));
        let pid_file = req.pid_file.clone().unwrap_or(own_pid_file);
        let _remove_pid_file = req.pid_file.is_none().then(|| RemoveOnDrop(&pid_file));
        let hold = SweepHold::new(self);
        let console = ConsoleSocket::bind_if(req.terminal)?;
        let (stdout_r, stdout_w) = pipe("stdout")?;
        let (stderr_r, stderr_w) = pipe("stderr")?;
        let (command, process_spec) = match &req.process {
            ExecProcess::Command(argv) => (argv.as_slice(), None),
            ExecProcess::Spec(path) => (&[][..], Some(path.as_path())),
        };
        let args = self.runtime.exec_args(&ExecArgs {
            id: &req.id,
            pid_file: &pid_file,
            cgroup: req.cgroup_manager,
            command,
            console_socket: console.as_ref().map(|c| c.path.as_path()),
            process_env: &req.process_env,
            preserve_fds: fds.len(),
            process_spec,
            global_args: &req.global_args,
            options: &req.runtime_opts,
        });
        debug!(id = %req.id, session = %req.session_id, ?args, "spawning runtime exec");
        let (master, pid) = self
            .run_runtime(RuntimeRun {
                args: &args,
                env: &req.env,
                stdin: stdin_read,
                stdout: stdout_w,
                stderr: (stderr_w, &stderr_r),
                create_stdout: None,
                fds,
                console,
                pid_file: &pid_file,
            })
            .await?;
        {
            // Tracked before the sweep may run again (the hold below).
            let mut st = self.state.borrow_mut();
            st.tracked.insert(pid);
            st.exec_pids.insert(pid);
        }
        drop(hold);
        let streams = if master.is_some() {
            // The runtime's own pipes carry nothing of a terminal process.
            Vec::new()
        } else {
            pipe_sources(stdout_r, stderr_r)
        };
        Ok((pid, master, streams))
    }

    /// Waits for a session's process, drains its output, writes its exit
    /// files, records the exit code and schedules its cleanup command.
    async fn watch_session(self: Rc<Self>, w: SessionWatch) {
        let code = match wait_exit(w.pid).await {
            Ok(exit) => exit.code(),
            Err(e) => {
                warn!(id = %w.id, session = %w.session_id, pid = w.pid, "cannot get exit status: {e}");
                -1
            }
        };
        {
            let mut st = self.state.borrow_mut();
            st.tracked.remove(&w.pid);
            st.exec_pids.remove(&w.pid);
        }
        self.engine.expedite(w.key);
        if tokio::time::timeout(DRAIN_GRACE, w.drained).await.is_err() {
            warn!(id = %w.id, session = %w.session_id, "exec session output still open {DRAIN_GRACE:?} after exit");
        }
        for (path, e) in write_exit_files(&w.exit_paths, code) {
            warn!(id = %w.id, session = %w.session_id, "write exit file {}: {e}", path.display());
        }
        info!(id = %w.id, session = %w.session_id, pid = w.pid, code, "exec session exited");
        let exited = SessionState::Exited {
            pid: w.pid,
            exit_code: code,
        };
        {
            let mut st = self.state.borrow_mut();
            st.drain_waiters.remove(&w.key);
            if let Some(sessions) = st.sessions.get_mut(&w.id) {
                let ending = sessions.endings;
                if let Some(session) = sessions
                    .by_id
                    .get_mut(&w.session_id)
                    .filter(|s| s.key == w.key)
                {
                    session.ended = Some(ending);
                    session.terminal = None;
                    session.attach.close();
                    sessions.endings += 1;
                }
                sessions.evict_ended();
            }
        }
        w.status.send_replace(exited);
        if let Some((prog, args)) = w.cleanup_cmd.split_first() {
            let (prog, args, delay) = (prog.clone(), args.to_vec(), w.cleanup_delay);
            let id = w.id;
            // Not part of the watcher: shutdown waits for exit files only.
            tokio::task::spawn_local(async move {
                tokio::time::sleep(delay).await;
                let mut cleanup = Command::new(&prog);
                cleanup.args(&args).stdin(Stdio::null());
                crate::sys::limits::restore_nofile_in_child(&mut cleanup);
                if let Err(e) = cleanup.spawn() {
                    warn!(%id, "exec session cleanup command '{prog}': {e}");
                }
            });
        }
    }

    /// A session's state; with `wait`, once it has exited.
    pub async fn exec_session_status(
        &self,
        id: &str,
        session_id: &str,
        wait: bool,
    ) -> Result<SessionState, CoreError> {
        let mut status = {
            let mut st = self.state.borrow_mut();
            find_session(&mut st.sessions, id, session_id)?
                .status
                .subscribe()
        };
        if wait {
            // The sender goes away without an exit only for a session that
            // never started and whose container ended.
            status
                .wait_for(|s| s.has_exited())
                .await
                .map_err(|_| no_such_session(id, session_id))?;
        }
        let state = *status.borrow();
        Ok(state)
    }

    /// Serves attach clients for a session at `socket_path`.
    pub(super) fn attach_session(
        &self,
        id: &str,
        session_id: &str,
        socket_path: &Path,
        stop_after_stdin_eof: bool,
    ) -> Result<(), CoreError> {
        let mut st = self.state.borrow_mut();
        let session = find_session(&mut st.sessions, id, session_id)?;
        if session.state().has_exited() {
            return Err(session_state_error(session_id, "already exited"));
        }
        check_attach_room(
            &session.attach,
            &format!("exec session {session_id} of container {id}"),
            socket_path,
        )?;
        session
            .attach
            .listen(socket_path, stop_after_stdin_eof, &self.engine)
            .map_err(|e| {
                CoreError::io(format!("create attach socket {}", socket_path.display()), e)
            })
    }

    /// Resizes a session's terminal.
    pub(super) fn resize_session(
        &self,
        id: &str,
        session_id: &str,
        width: u16,
        height: u16,
    ) -> Result<(), CoreError> {
        let mut st = self.state.borrow_mut();
        let session = find_session(&mut st.sessions, id, session_id)?;
        match (&session.terminal, session.state()) {
            (Some(master), _) => sys::tty::set_window_size(master, width, height)
                .map_err(|e| CoreError::io("resize exec session terminal", e)),
            (None, SessionState::Created) => {
                Err(session_state_error(session_id, "not started yet"))
            }
            (None, SessionState::Exited { .. }) => {
                Err(session_state_error(session_id, "already exited"))
            }
            (None, SessionState::Running { .. }) => Err(CoreError::NoTerminal),
        }
    }

    /// The container `id` is gone: its running sessions are killed (their
    /// watchers still write their exit files), sessions never started are
    /// dropped, and every record of the container's sessions is forgotten.
    pub(super) fn end_sessions(&self, id: &str) {
        let removed = self.state.borrow_mut().sessions.remove(id);
        let Some(sessions) = removed else {
            return;
        };
        for (session_id, mut session) in sessions.by_id {
            match session.state() {
                SessionState::Running { pid } => {
                    debug!(%id, session = %session_id, pid, "container ended: killing exec session");
                    sys::process::kill_tree(pid, Signal::SIGKILL);
                }
                SessionState::Created => {
                    let _ = self.engine.add_sources(session.key, Vec::new());
                    self.state.borrow_mut().drain_waiters.remove(&session.key);
                }
                SessionState::Exited { .. } => {}
            }
            session.attach.close();
        }
    }

    /// The session whose engine key is `key`, if any.
    pub(super) fn session_by_key<T>(
        &self,
        key: ContainerKey,
        f: impl FnOnce(&Session) -> T,
    ) -> Option<T> {
        let st = self.state.borrow();
        st.sessions
            .values()
            .flat_map(|s| s.by_id.values())
            .find(|s| s.key == key)
            .map(f)
    }
}
