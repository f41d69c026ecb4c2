//! The conmon role's monitor process (docs/architecture.md, "conmon CLI
//! mode"): one per container or exec session, started by podman or CRI-O
//! with conmon's command line and pipes.
//!
//! What it shares with the RPC server is everything that touches a
//! container: `core::Monitor` runs the runtime and watches the process, the
//! engine (one worker) moves the output into the logs and to attach
//! clients, `core::attach` serves the attach socket and `core::exit_files`
//! writes the exit files. This module only adds what conmon's callers
//! require around it: the pipes and their messages, the fork and pidfile,
//! the `ctl` fifo, the exit command.

use std::cell::Cell;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::Interest;
use tracing::{debug, info, warn};

use super::cli::{ConmonConfig, ConmonMode, LogTarget, SyncProtocol};
use super::ctl::{CtlMessage, CtlParser};
use super::sync::{Report, SyncPipe};
use crate::core::exec_session::{CreateExecSession, ExecProcess, SessionState};
use crate::core::runtime::RuntimeConfig;
use crate::core::{CgroupManager, CoreError, CreateContainer, Monitor};
use crate::engine::{BackendChoice, Engine, EngineConfig};
use crate::log::{LogDialect, LogFormat, LogSpec};
use crate::sys;
use crate::sys::process::ForkResult;

/// How long the monitor waits for a start byte: the callers' own limit on a
/// create (240 s), after which they have given up on it.
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// How long the exit command may run before the monitor stops waiting for
/// it (it is left running; the monitor exits).
const EXIT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a timed-out exec's process may take to go away after SIGKILL
/// before the monitor reports anyway.
const KILLED_EXEC_GRACE: Duration = Duration::from_secs(5);

/// Mode of `ctl` and `winsz` before the umask (conmon's).
const FIFO_MODE: u32 = 0o660;

/// The mistakes this role reports before exiting non-zero: the message
/// goes to stderr and, as `-1` with the message, on the sync pipe.
#[derive(Debug, thiserror::Error)]
pub enum ConmonError {
    #[error("environment variable {name}: '{value}' is not a descriptor number")]
    BadFdVariable { name: &'static str, value: String },
    #[error("environment variable {name}: descriptor {fd}: {source}")]
    FdNotOpen {
        name: &'static str,
        fd: RawFd,
        source: io::Error,
    },
    #[error("--runtime-opt --preserve-fds: '{0}' is not a number")]
    BadPreserveFds(String),
    #[error("--preserve-fds {count}: descriptor {fd}: {source}")]
    PreservedFdNotOpen {
        count: usize,
        fd: RawFd,
        source: io::Error,
    },
    #[error("{flag} '{value}': {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Core(#[from] CoreError),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ConmonError {
    let context = context.into();
    move |source| ConmonError::Io { context, source }
}

/// The descriptors the caller passed.
struct Inherited {
    sync: Option<OwnedFd>,
    start: Option<OwnedFd>,
    attach: Option<OwnedFd>,
    /// fds 3..3+N of `--preserve-fds N`, for the runtime.
    preserved: Vec<OwnedFd>,
    /// Every other descriptor the caller passed, held until the container
    /// exited (see `take_inherited`).
    held: Vec<OwnedFd>,
}

/// Runs the monitor for `config`; returns the exit status of the process
/// that returns (the first process after the fork, or the monitor).
pub fn run(config: ConmonConfig) -> i32 {
    let report = match config.mode {
        ConmonMode::Exec { .. } if config.protocol == SyncProtocol::Legacy => Report::ExitCode,
        _ => Report::Pid,
    };
    let (inherited, sync) = match take_inherited(&config) {
        Ok(mut inherited) => {
            let sync = inherited
                .sync
                .take()
                .map(|fd| SyncPipe::new(fd, config.protocol));
            (inherited, sync)
        }
        Err(e) => return fail(None, report, &e),
    };
    // The start byte is read before anything is refused: a caller whose
    // write of it failed (the monitor gone) would report a broken pipe
    // instead of the message on the sync pipe.
    if let Some(start) = &inherited.start {
        match sys::fd::read_byte_within(start.as_fd(), START_TIMEOUT) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let e = ConmonError::Io {
                    context: "_OCI_STARTPIPE".into(),
                    source: io::Error::other("closed before the start byte"),
                };
                return fail(sync.as_ref(), report, &e);
            }
            Err(e) => return fail(sync.as_ref(), report, &io_error("_OCI_STARTPIPE")(e)),
        }
    }
    if let Err(e) = check(&config) {
        return fail(sync.as_ref(), report, &e);
    }
    if config.sync {
        // CRI-O's exec sync: this process is the monitor (CRI-O waits for
        // it and every holder of its stdout and stderr).
        if let Some(path) = &config.conmon_pidfile {
            if let Err(e) = write_pidfile(path, std::process::id()) {
                return fail(sync.as_ref(), report, &e);
            }
        }
    } else {
        match sys::process::fork_single_threaded() {
            Err(e) => return fail(sync.as_ref(), report, &io_error("fork")(e)),
            Ok(ForkResult::Parent { child }) => {
                // The callers Wait() for this process before they read the
                // sync pipe: write the pidfile and go.
                if let Some(path) = &config.conmon_pidfile {
                    if let Err(e) = write_pidfile(path, child) {
                        sys::process::kill_tree(child, Signal::SIGKILL);
                        return fail(sync.as_ref(), report, &e);
                    }
                }
                return 0;
            }
            Ok(ForkResult::Child) => {
                // Out of the caller's process group and session: its
                // signals to the group are not ours.
                if let Err(e) = sys::process::new_session() {
                    return fail(sync.as_ref(), report, &io_error("setsid")(e));
                }
            }
        }
    }
    // The passthrough log driver hands the caller's stdio to the runtime:
    // keep it before it is replaced.
    let passthrough = if config.log_targets.contains(&LogTarget::Passthrough) {
        match sys::fd::duplicate_stdio() {
            Ok(stdio) => Some(stdio),
            Err(e) => return fail(sync.as_ref(), report, &io_error("duplicate stdio")(e)),
        }
    } else {
        None
    };
    // A caller that reads our stderr (podman -t, CRI-O's exec sync) waits
    // for every holder of it to go: the monitor holds none of the caller's
    // stdio.
    if let Err(e) = sys::namespace::stdio_to_null() {
        return fail(sync.as_ref(), report, &io_error("stdio to /dev/null")(e));
    }
    if let Err(e) = sys::process::set_child_subreaper() {
        return fail(
            sync.as_ref(),
            report,
            &io_error("become child subreaper")(e),
        );
    }
    let _ = sys::process::set_process_name(c"conmon");
    init_diagnostics(&config);
    let sync = sync.map(Rc::new);
    match serve(config, inherited, passthrough, sync.clone(), report) {
        Ok(status) => status,
        Err(e) => {
            warn!("{e}");
            if let Some(sync) = &sync {
                let _ = sync.send(report, -1, Some(&e.to_string()));
            }
            1
        }
    }
}

/// Reports `e` on stderr and the sync pipe; the exit status.
fn fail(sync: Option<&SyncPipe>, report: Report, e: &ConmonError) -> i32 {
    eprintln!("ringmon: conmon mode: {e}");
    if let Some(sync) = sync {
        let _ = sync.send(report, -1, Some(&e.to_string()));
    }
    1
}

/// Diagnostics go to the journal with `--syslog` (conmon logs there too);
/// otherwise nowhere: the monitor's stdio is /dev/null.
fn init_diagnostics(config: &ConmonConfig) {
    use super::cli::ConmonLogLevel as L;
    use crate::cli::LogLevel;
    if !config.syslog {
        return;
    }
    let level = match config.log_level {
        Some(L::Trace) => LogLevel::Trace,
        Some(L::Debug) => LogLevel::Debug,
        Some(L::Info) => LogLevel::Info,
        None | Some(L::Warning) => LogLevel::Warn,
        Some(L::Error | L::Fatal | L::Panic) => LogLevel::Error,
    };
    crate::server_log::init(crate::cli::ServerLogDriver::Systemd, level);
}

/// The number N of `--runtime-opt --preserve-fds N` (or `--preserve-fds=N`).
fn preserved_fd_count(opts: &[OsString]) -> Result<usize, ConmonError> {
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_string_lossy();
        let value = if opt == "--preserve-fds" {
            i += 1;
            opts.get(i).map(|v| v.to_string_lossy().into_owned())
        } else {
            opt.strip_prefix("--preserve-fds=").map(str::to_string)
        };
        if let Some(v) = value {
            return v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= 4096)
                .ok_or(ConmonError::BadPreserveFds(v));
        }
        i += 1;
    }
    Ok(0)
}

/// `--runtime-opt`s without the `--preserve-fds` pair (exec: ringmon's
/// runtime argv adds its own for the fds it passes).
fn without_preserve_fds(opts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for opt in opts {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if opt == "--preserve-fds" {
            skip_next = true;
        } else if !opt.starts_with("--preserve-fds=") {
            out.push(opt.clone());
        }
    }
    out
}

fn env_fd(name: &'static str) -> Result<Option<RawFd>, ConmonError> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) => {
            let text = v.to_string_lossy();
            text.trim()
                .parse::<RawFd>()
                .ok()
                .filter(|fd| *fd >= 3)
                .map(Some)
                .ok_or_else(|| ConmonError::BadFdVariable {
                    name,
                    value: text.into_owned(),
                })
        }
    }
}

/// Takes the pipes named in the environment, the preserved fds, and every
/// other descriptor the caller passed: those are held (close-on-exec, so
/// neither the runtime nor the container gets them) until the container
/// has exited, as conmon holds them. podman passes its port reservation
/// sockets there, to keep the ports from others while the container runs,
/// and in rootless mode the write ends whose closing tells slirp4netns and
/// rootlessport that the container is gone.
fn take_inherited(config: &ConmonConfig) -> Result<Inherited, ConmonError> {
    let sync = env_fd("_OCI_SYNCPIPE")?;
    let start = env_fd("_OCI_STARTPIPE")?;
    let attach = env_fd("_OCI_ATTACHPIPE")?;
    let count = preserved_fd_count(&config.runtime_opts)?;
    let preserved_range = 3..3 + count as RawFd;
    for (name, fd) in [
        ("_OCI_SYNCPIPE", sync),
        ("_OCI_STARTPIPE", start),
        ("_OCI_ATTACHPIPE", attach),
    ] {
        if let Some(fd) = fd.filter(|fd| preserved_range.contains(fd)) {
            return Err(ConmonError::BadFdVariable {
                name,
                value: format!("{fd} (one of the {count} --preserve-fds descriptors)"),
            });
        }
    }
    let mut named: Vec<RawFd> = preserved_range.clone().collect();
    named.extend([sync, start, attach].into_iter().flatten());
    let mut taken = sys::fd::take_inherited_fds(&named).map_err(|source| ConmonError::Io {
        context: "take inherited descriptors (_OCI_SYNCPIPE, _OCI_STARTPIPE, _OCI_ATTACHPIPE \
                  must differ)"
            .into(),
        source,
    })?;
    let mut named = taken.named.drain(..);
    let mut preserved = Vec::with_capacity(count);
    for fd in preserved_range {
        match named.next().flatten() {
            Some(owned) => preserved.push(owned),
            None => {
                return Err(ConmonError::PreservedFdNotOpen {
                    count,
                    fd,
                    source: io::Error::from_raw_os_error(libc::EBADF),
                })
            }
        }
    }
    let mut pipe =
        |name: &'static str, fd: Option<RawFd>| -> Result<Option<OwnedFd>, ConmonError> {
            match fd {
                None => Ok(None),
                Some(fd) => match named.next().flatten() {
                    Some(owned) => Ok(Some(owned)),
                    None => Err(ConmonError::FdNotOpen {
                        name,
                        fd,
                        source: io::Error::from_raw_os_error(libc::EBADF),
                    }),
                },
            }
        };
    let sync = pipe("_OCI_SYNCPIPE", sync)?;
    let start = pipe("_OCI_STARTPIPE", start)?;
    let attach = pipe("_OCI_ATTACHPIPE", attach)?;
    drop(named);
    Ok(Inherited {
        sync,
        start,
        attach,
        preserved,
        held: taken.others,
    })
}

/// What can be checked before anything starts, so that a mistake is a
/// clear message instead of a runtime's puzzle.
fn check(config: &ConmonConfig) -> Result<(), ConmonError> {
    let invalid = |flag, value: &Path, reason: String| ConmonError::Invalid {
        flag,
        value: value.display().to_string(),
        reason,
    };
    match std::fs::metadata(&config.runtime) {
        Ok(m)
            if m.is_file()
                && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0 => {}
        Ok(_) => {
            return Err(invalid(
                "--runtime",
                &config.runtime,
                "not an executable file".into(),
            ))
        }
        Err(e) => return Err(invalid("--runtime", &config.runtime, e.to_string())),
    }
    if let Some(socket) = &config.sdnotify_socket {
        // Ignoring it would leave a --sdnotify=container unit waiting for
        // READY=1 forever: refuse it plainly instead.
        return Err(invalid(
            "--sdnotify-socket",
            socket,
            "relaying sd_notify messages is not supported by ringmon's conmon mode".into(),
        ));
    }
    if let ConmonMode::Create { restore } = &config.mode {
        if let Some(path) = restore {
            return Err(invalid(
                "--restore",
                path,
                "checkpoint restore is not supported by ringmon's conmon mode (CRIU is not \
                 available)"
                    .into(),
            ));
        }
        let bundle = bundle(config)?;
        let spec = bundle.join("config.json");
        if let Err(e) = std::fs::metadata(&spec) {
            return Err(invalid(
                "--bundle",
                &bundle,
                format!("{}: {e}", spec.display()),
            ));
        }
    }
    if let ConmonMode::Exec { process_spec, .. } = &config.mode {
        if let Err(e) = std::fs::metadata(process_spec) {
            return Err(invalid("--exec-process-spec", process_spec, e.to_string()));
        }
    }
    for (flag, dir) in [
        ("--exit-dir", &config.exit_dir),
        ("--persist-dir", &config.persist_dir),
    ] {
        if let Some(dir) = dir {
            sys::fs::check_writable_dir(dir).map_err(|e| invalid(flag, dir, e.to_string()))?;
        }
    }
    Ok(())
}

/// `-b`, or conmon's default for a create: the working directory.
fn bundle(config: &ConmonConfig) -> Result<PathBuf, ConmonError> {
    match &config.bundle {
        Some(b) => Ok(b.clone()),
        None => std::env::current_dir().map_err(io_error("working directory (no --bundle)")),
    }
}

/// Writes the monitor's pid, decimal without a line end (CRI-O reads the
/// whole file as a number); a symlink there is refused.
fn write_pidfile(path: &Path, pid: u32) -> Result<(), ConmonError> {
    sys::fs::write_file_nofollow(path, pid.to_string().as_bytes(), 0o644).map_err(|source| {
        ConmonError::Io {
            context: format!("--conmon-pidfile '{}'", path.display()),
            source,
        }
    })
}

fn strings(flag: &'static str, list: &[OsString]) -> Result<Vec<String>, ConmonError> {
    list.iter()
        .map(|a| {
            a.to_str().map(str::to_string).ok_or(ConmonError::Invalid {
                flag,
                value: a.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".into(),
            })
        })
        .collect()
}

/// The log specs of `-l` (none for `none`).
fn log_specs(config: &ConmonConfig) -> Vec<LogSpec> {
    let mut specs = Vec::new();
    for target in &config.log_targets {
        let (format, path) = match target {
            LogTarget::K8sFile(path) => (LogFormat::Cri, path.clone()),
            LogTarget::Journald => (LogFormat::Journald, PathBuf::new()),
            LogTarget::None | LogTarget::Passthrough => continue,
        };
        let mut spec = LogSpec::new(format, path, config.log_size_max.unwrap_or(0));
        spec.global_max = config.log_global_size_max.unwrap_or(0);
        spec.dialect = LogDialect::Conmon;
        if format == LogFormat::Journald {
            spec.journal_fields = journal_fields(config);
        }
        specs.push(spec);
    }
    specs
}

/// conmon's journal fields of a container's entries.
fn journal_fields(config: &ConmonConfig) -> Vec<(String, String)> {
    let id = &config.container_id;
    let short: String = id.chars().take(12).collect();
    let mut fields = vec![
        ("CONTAINER_ID_FULL".to_string(), id.clone()),
        ("CONTAINER_ID".to_string(), short.clone()),
    ];
    if let Some(name) = &config.name {
        fields.push(("CONTAINER_NAME".to_string(), name.clone()));
    }
    if let Some(tag) = &config.log_tag {
        fields.push(("CONTAINER_TAG".to_string(), tag.clone()));
    }
    let identifier = config
        .log_tag
        .clone()
        .or_else(|| config.name.clone())
        .unwrap_or(short);
    fields.push(("SYSLOG_IDENTIFIER".to_string(), identifier));
    fields
}

/// Starts the control runtime, the engine and the core monitor, and runs
/// the container or exec session to its end.
fn serve(
    config: ConmonConfig,
    inherited: Inherited,
    passthrough: Option<[OwnedFd; 3]>,
    sync: Option<Rc<SyncPipe>>,
    report: Report,
) -> Result<i32, ConmonError> {
    let backend = match std::env::var("RINGMON_IO_BACKEND").as_deref() {
        Ok("uring") => BackendChoice::Uring,
        Ok("auto") => BackendChoice::Auto,
        _ => BackendChoice::Epoll,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("start control runtime"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let engine = Arc::new(
            Engine::start(
                EngineConfig {
                    workers: 1,
                    backend,
                    busy_pipe_size: None,
                    batch_window: crate::engine::DEFAULT_BATCH_WINDOW,
                    attach_done_packet: false,
                },
                events_tx,
            )
            .map_err(CoreError::from)?,
        );
        let work_dir = match (&config.bundle, &config.container_pidfile) {
            (Some(b), _) => b.clone(),
            (None, Some(p)) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            (None, None) => std::env::temp_dir(),
        };
        let level = crate::cli::LogLevel::Warn;
        let monitor = Monitor::start(
            RuntimeConfig::new(config.runtime.clone(), None, level)
                .without_implicit_crun_logging()
                .killed_with_monitor(),
            work_dir,
            Arc::clone(&engine),
            events_rx,
        );
        monitor.allow_exec_in_unmonitored_containers();
        let status = match &config.mode {
            ConmonMode::Create { .. } => {
                create(&monitor, &config, inherited, passthrough, sync, report).await
            }
            ConmonMode::Exec {
                process_spec,
                attach,
            } => {
                exec(
                    &monitor,
                    &config,
                    process_spec,
                    *attach,
                    inherited,
                    sync,
                    report,
                )
                .await
            }
        };
        monitor.shutdown().await;
        engine.shutdown();
        status
    })
}

fn cgroup_manager(config: &ConmonConfig) -> CgroupManager {
    if config.systemd_cgroup {
        CgroupManager::Systemd
    } else {
        CgroupManager::Cgroupfs
    }
}

/// Where attach clients connect: `<bundle>/attach`; without
/// `--full-attach` the caller connects through `--socket-dir-path/<cuuid>`,
/// made a symlink to the bundle.
fn attach_socket(config: &ConmonConfig, bundle: &Path) -> Result<PathBuf, ConmonError> {
    if !config.full_attach {
        if let (Some(dir), Some(uuid)) = (&config.socket_dir_path, &config.container_uuid) {
            let link = dir.join(uuid);
            sys::fs::replace_symlink(&link, bundle).map_err(|source| ConmonError::Io {
                context: format!("--socket-dir-path link '{}'", link.display()),
                source,
            })?;
        }
    }
    Ok(bundle.join("attach"))
}

async fn create(
    monitor: &Rc<Monitor>,
    config: &ConmonConfig,
    inherited: Inherited,
    passthrough: Option<[OwnedFd; 3]>,
    sync: Option<Rc<SyncPipe>>,
    report: Report,
) -> Result<i32, ConmonError> {
    let bundle = bundle(config)?;
    let id = config.container_id.clone();
    // Written last to first: CRI-O reads `--persist-dir/exit` when the
    // `--exit-dir` entry appears, so that one goes first in the list.
    let mut exit_paths = Vec::new();
    let mut oom_paths = vec![bundle.join("oom")];
    if let Some(dir) = &config.exit_dir {
        exit_paths.push(dir.join(&id));
    }
    if let Some(dir) = &config.persist_dir {
        exit_paths.push(dir.join("exit"));
        oom_paths.push(dir.join("oom"));
    }
    let mut command_args = Vec::new();
    if config.no_pivot {
        command_args.push("--no-pivot".to_string());
    }
    if config.no_new_keyring {
        command_args.push("--no-new-keyring".to_string());
    }
    command_args.extend(strings("--runtime-opt", &config.runtime_opts)?);
    let req = CreateContainer {
        id: id.clone(),
        bundle: bundle.clone(),
        terminal: config.terminal,
        // A terminal takes its clients' input whatever `-i` says: podman's
        // `run -it` passes `-t` alone.
        stdin: config.stdin || config.terminal,
        exit_paths,
        oom_exit_paths: oom_paths,
        logs: log_specs(config),
        cleanup_cmd: Vec::new(),
        global_args: strings("--runtime-arg", &config.runtime_args)?,
        command_args,
        env: Vec::new(),
        cgroup_manager: cgroup_manager(config),
        additional_fds: Vec::new(),
        leak_fds: Vec::new(),
        pid_file: config.container_pidfile.clone(),
        sync_logs: !config.no_sync_log,
    };
    let passthrough_mode = passthrough.is_some();
    let pid = match monitor
        .create_container_with_fds(req, inherited.preserved, passthrough)
        .await
    {
        Ok(pid) => pid,
        Err(e) => {
            let message = runtime_message(&e);
            warn!(%id, "create failed: {e}");
            if let Some(sync) = &sync {
                let _ = sync.send(report, -1, Some(&message));
            }
            return Ok(1);
        }
    };
    let exit = monitor.container_exit(&id);
    // Passthrough: the caller holds the container's stdio; there is nothing
    // to attach to and no terminal to resize.
    let ctl = if passthrough_mode {
        None
    } else {
        let socket = attach_socket(config, &bundle)?;
        monitor.attach_container(&id, "", &socket, config.stdin && !config.leave_stdin_open)?;
        Some(Fifos::make(&bundle)?)
    };
    if let Some(sync) = &sync {
        sync.send(report, i64::from(pid), None)
            .map_err(io_error("_OCI_SYNCPIPE"))?;
    }
    info!(%id, pid, "container created");
    drop(inherited.start);
    let ctl_task = ctl.map(|ctl| {
        tokio::task::spawn_local(serve_ctl(
            Rc::clone(monitor),
            id.clone(),
            String::new(),
            ctl,
            Rc::new(Cell::new(None)),
        ))
    });
    let signals = {
        let (monitor, id) = (Rc::clone(monitor), id.clone());
        tokio::task::spawn_local(forward_signals(move |sig| {
            if let Err(e) = monitor.signal_container(&id, sig) {
                debug!(%id, "forward {sig}: {e}");
            }
        }))
    };
    let timeout = config.timeout.filter(|t| !t.is_zero());
    let code = {
        let monitor = Rc::clone(monitor);
        let id = id.clone();
        let timer = async move {
            match timeout {
                Some(t) => {
                    tokio::time::sleep(t).await;
                    info!(%id, "--timeout: killing the container");
                    let _ = monitor.kill_for_timeout(&id);
                    std::future::pending::<()>().await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            code = exit => code.unwrap_or(-1),
            () = timer => unreachable!("the timer never ends"),
        }
    };
    if let Some(task) = ctl_task {
        task.abort();
    }
    signals.abort();
    info!(%id, code, "container exited");
    drop(sync);
    drop(inherited.held);
    run_exit_command(monitor, config).await;
    Ok(0)
}

/// The text a caller shows for a failed create or exec: what the runtime
/// wrote to stderr when it failed, else the error itself.
fn runtime_message(e: &CoreError) -> String {
    match e {
        CoreError::RuntimeFailed { stderr, .. } | CoreError::RuntimeSignaled { stderr, .. }
            if !stderr.trim().is_empty() =>
        {
            stderr.clone()
        }
        other => other.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn exec(
    monitor: &Rc<Monitor>,
    config: &ConmonConfig,
    process_spec: &Path,
    two_step: bool,
    inherited: Inherited,
    sync: Option<Rc<SyncPipe>>,
    report: Report,
) -> Result<i32, ConmonError> {
    let id = config.container_id.clone();
    let session_id = match (&config.container_uuid, config.protocol) {
        (Some(uuid), SyncProtocol::Data) if uuid != &id => uuid.clone(),
        _ => crate::core::monitor::random_uuid(),
    };
    let exit_paths = config.exit_dir.iter().map(|dir| dir.join(&id)).collect();
    let req = CreateExecSession {
        id: id.clone(),
        session_id,
        process: ExecProcess::Spec(process_spec.to_path_buf()),
        terminal: config.terminal,
        stdin: config.stdin,
        env: Vec::new(),
        process_env: Vec::new(),
        cgroup_manager: cgroup_manager(config),
        exit_paths,
        cleanup_cmd: Vec::new(),
        cleanup_delay: Duration::ZERO,
        logs: log_specs(config),
        additional_fds: Vec::new(),
        suspended: true,
        global_args: strings("--runtime-arg", &config.runtime_args)?,
        runtime_opts: without_preserve_fds(&strings("--runtime-opt", &config.runtime_opts)?),
        pid_file: config.container_pidfile.clone(),
    };
    // Until the attach pipe said "ready", podman reads that pipe, not the
    // sync pipe: a failure before then goes to both.
    let attach_pipe = inherited.attach.as_ref().filter(|_| two_step);
    let failed = |message: &str, ready_sent: bool| {
        warn!(%id, "exec failed: {message}");
        if let (Some(attach), false) = (attach_pipe, ready_sent) {
            let line = super::sync::format("data", -1, Some(message));
            let _ = sys::fd::write_all(attach.as_fd(), line.as_bytes());
        }
        if let Some(sync) = &sync {
            let _ = sync.send(report, -1, Some(message));
        }
        Ok(1)
    };
    let (session_id, _) = match monitor
        .create_exec_session_with_fds(req, inherited.preserved)
        .await
    {
        Ok(created) => created,
        Err(e) => return failed(&runtime_message(&e), false),
    };
    // podman sizes an exec's terminal before the process (and its pty)
    // exists: the size is applied once it does.
    let pending_size = Rc::new(Cell::new(None));
    let set_up = || -> Result<_, ConmonError> {
        let Some(bundle) = &config.bundle else {
            return Ok(None);
        };
        let socket = attach_socket(config, bundle)?;
        monitor.attach_container(
            &id,
            &session_id,
            &socket,
            config.stdin && !config.leave_stdin_open,
        )?;
        let ctl = Fifos::make(bundle)?;
        Ok(Some(tokio::task::spawn_local(serve_ctl(
            Rc::clone(monitor),
            id.clone(),
            session_id.clone(),
            ctl,
            Rc::clone(&pending_size),
        ))))
    };
    let ctl_task = match set_up() {
        Ok(task) => task,
        Err(e) => return failed(&e.to_string(), false),
    };
    if two_step {
        // podman's exec: "ready" on the attach pipe, then the second start
        // byte once it attached (or decided not to).
        if let Some(attach) = &inherited.attach {
            let ready = super::sync::format("data", 0, None);
            sys::fd::write_all(attach.as_fd(), ready.as_bytes())
                .map_err(io_error("_OCI_ATTACHPIPE"))?;
        }
        if let Some(start) = inherited.start {
            match read_start_byte(start).await {
                Ok(Some(())) => {}
                Ok(None) => {
                    warn!(%id, "start pipe closed before the second start byte: exec abandoned");
                    return Ok(1);
                }
                Err(e) => return Err(io_error("_OCI_STARTPIPE")(e)),
            }
        }
    }
    let pid = match monitor.start_exec_session(&id, &session_id).await {
        Ok(pid) => pid,
        Err(e) => return failed(&runtime_message(&e), true),
    };
    if let Some((rows, cols)) = pending_size.take() {
        if let Err(e) = monitor.set_window_size(&id, &session_id, cols, rows) {
            debug!(%id, "resize to {rows}x{cols}: {e}");
        }
    }
    if config.protocol == SyncProtocol::Data {
        if let Some(sync) = &sync {
            sync.send(Report::Pid, i64::from(pid), None)
                .map_err(io_error("_OCI_SYNCPIPE"))?;
        }
    }
    info!(%id, session = %session_id, pid, "exec started");
    // Signals go through a pidfd opened now: once the process is reaped
    // they fail with ESRCH instead of reaching whatever process gets the
    // pid next. (A process that exited at once may already be reaped here,
    // and then the open fails with ESRCH; a pid reused within that instant
    // is not excluded. A kernel without pidfds gets the pid itself.)
    let exec_pidfd = crate::sys::process::pidfd_open(pid);
    let signals = tokio::task::spawn_local(forward_signals(move |sig| {
        let _ = match &exec_pidfd {
            Ok(pidfd) => crate::sys::namespace::pidfd_send_signal(pidfd, sig),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(_) => crate::sys::namespace::signal_process(pid, sig),
        };
    }));
    let timeout = config.timeout.filter(|t| !t.is_zero());
    let status = monitor.exec_session_status(&id, &session_id, true);
    let outcome = match timeout {
        Some(t) => tokio::time::timeout(t, status).await.ok(),
        None => Some(status.await),
    };
    let (code, message) = match outcome {
        Some(Ok(SessionState::Exited { exit_code, .. })) => (exit_code, None),
        Some(Ok(_)) | Some(Err(_)) => (-1, None),
        None => (-1, Some("command timed out")),
    };
    if message.is_some() {
        info!(%id, pid, "--timeout: killing the exec process");
        sys::process::kill_tree(pid, Signal::SIGKILL);
    }
    signals.abort();
    if let Some(task) = ctl_task {
        task.abort();
    }
    if let Some(sync) = &sync {
        // At once, also after a timeout (CRI-O ignores the output then):
        // the process's output may stay open a while after the kill. podman
        // has usually closed its end by now (EPIPE is ignored).
        let _ = sync.send(Report::ExitCode, i64::from(code), message);
    }
    if message.is_some() {
        // Reaped and its exit handling done before the monitor goes.
        let _ = tokio::time::timeout(
            KILLED_EXEC_GRACE,
            monitor.exec_session_status(&id, &session_id, true),
        )
        .await;
    }
    drop(inherited.held);
    info!(%id, session = %session_id, code, "exec exited");
    drop(sync);
    run_exit_command(monitor, config).await;
    Ok(0)
}

/// Waits for one byte on the start pipe (podman's exec: the second byte).
async fn read_start_byte(start: OwnedFd) -> io::Result<Option<()>> {
    sys::fd::set_nonblocking(start.as_fd())?;
    let fd = sys::reactor::async_fd(start, Interest::READABLE)?;
    let wait = async {
        loop {
            let mut guard = fd.readable().await?;
            let mut byte = [0u8; 1];
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), &mut byte).map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => return Ok(Some(())),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    };
    tokio::time::timeout(START_TIMEOUT, wait)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no second start byte in time"))?
}

/// The `ctl` and `winsz` fifos of a bundle, held open for reading and
/// writing.
struct Fifos {
    ctl: OwnedFd,
    _winsz: OwnedFd,
}

impl Fifos {
    fn make(bundle: &Path) -> Result<Fifos, ConmonError> {
        let make = |name: &str| {
            let path = bundle.join(name);
            sys::fs::make_fifo(&path, FIFO_MODE).map_err(|source| ConmonError::Io {
                context: format!("make fifo '{}'", path.display()),
                source,
            })
        };
        Ok(Fifos {
            ctl: make("ctl")?,
            _winsz: make("winsz")?,
        })
    }
}

/// Applies what arrives on `ctl`: resizes of the terminal, log reopens.
/// A resize of an exec session that has not started yet is kept in
/// `pending_size` for its start.
async fn serve_ctl(
    monitor: Rc<Monitor>,
    id: String,
    session_id: String,
    fifos: Fifos,
    pending_size: Rc<Cell<Option<(u16, u16)>>>,
) {
    let Fifos { ctl, _winsz } = fifos;
    let fd = match sys::reactor::async_fd(ctl, Interest::READABLE) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(%id, "ctl fifo: {e}");
            return;
        }
    };
    let mut parser = CtlParser::new();
    let mut buf = [0u8; 512];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let n = match guard
            .try_io(|inner| nix::unistd::read(inner.get_ref(), &mut buf).map_err(io::Error::from))
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => {
                warn!(%id, "ctl fifo: {e}");
                return;
            }
            Err(_would_block) => continue,
        };
        for message in parser.push(&buf[..n]) {
            match message {
                Ok(CtlMessage::Resize { rows, cols }) => {
                    match monitor.set_window_size(&id, &session_id, cols, rows) {
                        Ok(()) => {}
                        Err(CoreError::SessionState { .. }) => pending_size.set(Some((rows, cols))),
                        Err(e) => debug!(%id, "resize to {rows}x{cols}: {e}"),
                    }
                }
                Ok(CtlMessage::ReopenLogs) => {
                    if session_id.is_empty() {
                        if let Err(e) = monitor.reopen_log(&id).await {
                            warn!(%id, "reopen logs: {e}");
                        }
                    }
                }
                Err(e) => warn!(%id, "{e}"),
            }
        }
    }
}

/// Hands every SIGTERM and SIGINT the monitor gets to `deliver` (the
/// container, or an exec process: CRI-O sends SIGINT to its exec sync
/// monitors when the container stops).
async fn forward_signals(deliver: impl Fn(Signal)) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    loop {
        let sig = tokio::select! {
            _ = term.recv() => Signal::SIGTERM,
            _ = int.recv() => Signal::SIGINT,
        };
        deliver(sig);
    }
}

/// Runs `--exit-command` with its arguments (empty ones kept) after
/// `--exit-delay`, and waits for it: the callers expect the monitor's pid
/// to outlive it (podman's `container cleanup`).
async fn run_exit_command(monitor: &Monitor, config: &ConmonConfig) {
    let Some(exit) = &config.exit_command else {
        return;
    };
    if !config.exit_delay.is_zero() {
        tokio::time::sleep(config.exit_delay).await;
    }
    // Its own children (podman's cleanup helpers) are not ours to reap.
    let _ = sys::process::clear_child_subreaper();
    let mut cmd = Command::new(&exit.path);
    cmd.args(&exit.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::limits::restore_nofile_in_child(&mut cmd);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            warn!("exit command '{}': {e}", exit.path.display());
            return;
        }
    };
    let pid = child.id();
    drop(child);
    // Tracked before the next await, so the monitor's sweep of stray
    // children leaves it to this wait.
    match tokio::time::timeout(EXIT_COMMAND_TIMEOUT, monitor.wait_spawned(pid)).await {
        Ok(Ok(status)) => debug!(?status, "exit command finished"),
        Ok(Err(e)) => warn!("exit command: {e}"),
        Err(_) => warn!(
            "exit command still running after {}s; not waiting any longer",
            EXIT_COMMAND_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn preserved_fds_from_runtime_opts() {
        assert_eq!(preserved_fd_count(&os(&[])).unwrap(), 0);
        assert_eq!(
            preserved_fd_count(&os(&["--preserve-fds", "2"])).unwrap(),
            2
        );
        assert_eq!(preserved_fd_count(&os(&["--preserve-fds=1"])).unwrap(), 1);
        assert!(preserved_fd_count(&os(&["--preserve-fds", "x"])).is_err());
        assert_eq!(
            without_preserve_fds(&[
                "--a".to_string(),
                "--preserve-fds".to_string(),
                "2".to_string(),
                "--preserve-fds=3".to_string(),
                "--b".to_string()
            ]),
            vec!["--a".to_string(), "--b".to_string()]
        );
    }
}
