//! ringmon entry point: picks the role from argv (conmon's command line, or
//! conmon-rs's with its `pause` subcommand); for the conmon-rs server:
//! flags, process set-up, fork, then the control thread and the engine
//! workers (spec §1.4).

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing::{info, warn};

use ringmon::cli::Cli;
use ringmon::core::monitor::FD_SOCKET_NAME;
use ringmon::core::runtime::RuntimeConfig;
use ringmon::core::Monitor;
use ringmon::engine::{BackendChoice, Engine, EngineConfig};
use ringmon::keeper::{KeeperLink, WorkerHandover};
use ringmon::sys::process::{self, ForkResult};
use ringmon::version::BUILD;

const SOCKET_NAME: &str = "conmon.sock";

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match ringmon::role::detect(&argv) {
        ringmon::role::Role::Conmon => std::process::exit(ringmon::conmon::main(&argv)),
        ringmon::role::Role::Ctl => std::process::exit(ringmon::ctl::main(&argv)),
        ringmon::role::Role::ConmonRs => {}
    }
    let cli = Cli::parse();
    if let Some(ringmon::cli::Command::Ctl(_)) = cli.command {
        // Role detection only takes `ctl` as the first argument: after a
        // server flag, ctl's own flags (exec's `-i`) would read as conmon's.
        eprintln!("Error: `ctl` must be the first argument: ringmon ctl [OPTIONS] COMMAND");
        std::process::exit(2);
    }
    if let Some(ringmon::cli::Command::Pause(pause)) = &cli.command {
        // Tiny on purpose: no flag checks, no daemonizing, no tokio runtime,
        // no engine (spec §1.2, §6.2).
        std::process::exit(ringmon::core::pause::main(&pause.request()));
    }
    if let Some(v) = cli.version {
        // conmon's line first: CRI-O's `oci` handlers probe `monitor_path
        // --version` and need a semver as the third word (README,
        // "Compatibility"); conmon-rs's lines follow unchanged.
        print!(
            "{}{}",
            ringmon::conmon::cli::version_line(env!("CARGO_PKG_VERSION")),
            BUILD.text(v == ringmon::cli::VersionVerbosity::Full)
        );
        return;
    }
    if let Some(v) = cli.version_json {
        println!("{}", BUILD.json(v == ringmon::cli::VersionVerbosity::Full));
        return;
    }
    if let Err(e) = run(cli, argv) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli, argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let config = cli.validate()?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let socket_path = config.runtime_dir.join(SOCKET_NAME);
    let fd_socket_path = config.runtime_dir.join(FD_SOCKET_NAME);
    // A worker the keeper started: no fork, the keeper's listener.
    if let Some((link, handover)) = KeeperLink::from_env().context("take over from the keeper")? {
        ringmon::keeper::start::become_worker().context("set up the server process")?;
        let held_nothing = handover.held.is_empty();
        let worker = Worker {
            link: Rc::clone(&link),
            handover,
        };
        let result = serve(config, socket_path, fd_socket_path, Some(worker));
        if result.is_err() && held_nothing {
            // Nothing to lose: the keeper stops with us rather than
            // restarting a worker that would fail the same way. With
            // containers held, the error exit (no Stopping) makes the
            // keeper retry with its back-off instead of dropping them.
            link.stopping();
        }
        return result;
    }
    // Only the process the client launched: a worker inherits the OOM
    // score from its keeper, and the keeper's checks were already made.
    match process::set_oom_score_adj(-1000) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            println!("Missing sufficient privileges to adjust OOM score");
        }
        Err(e) => return Err(e).context("write /proc/self/oom_score_adj"),
    }
    if config.io_backend == BackendChoice::Uring {
        ringmon::engine::probe_io_uring().context("--io-backend uring: io_uring setup failed")?;
    }
    remove_if_present(&socket_path)?;
    remove_if_present(&fd_socket_path)?;
    if !config.skip_fork {
        // Single-threaded here: nothing has started a thread yet.
        if let ForkResult::Parent { child } = process::fork_single_threaded().context("fork")? {
            let pidfile = config.runtime_dir.join("pidfile");
            std::fs::write(&pidfile, child.to_string())
                .with_context(|| format!("write {}", pidfile.display()))?;
            std::process::exit(0);
        }
    }
    process::close_inherited_fds().context("close inherited fds")?;
    process::set_child_subreaper().context("become child subreaper")?;
    if config.keeper {
        std::process::exit(ringmon::keeper::start::become_keeper(
            &config,
            &socket_path,
            argv,
        ));
    }
    // Clients (and the journald tests) identify the monitor by this name.
    let _ = process::set_process_name(ringmon::keeper::start::WORKER_PROCESS_NAME);
    serve(config, socket_path, fd_socket_path, None)
}

/// What a worker the keeper started brings to [`serve`].
struct Worker {
    link: Rc<KeeperLink>,
    handover: WorkerHandover,
}

/// The server: the control thread's runtime and everything on it, until
/// SIGTERM or SIGINT.
fn serve(
    config: ringmon::cli::ServerConfig,
    socket_path: std::path::PathBuf,
    fd_socket_path: std::path::PathBuf,
    worker: Option<Worker>,
) -> anyhow::Result<()> {
    ringmon::server_log::init(config.log_driver, config.log_level);
    // Every pipe, log, socket and streaming connection costs a descriptor:
    // take the whole hard limit. Children get the original back
    // (sys::limits::restore_nofile_in_child).
    match ringmon::sys::limits::raise_nofile_limit() {
        Ok((before, after)) => tracing::debug!(
            from = before.soft,
            to = after.soft,
            "raised the soft RLIMIT_NOFILE to the hard limit"
        ),
        Err(e) => tracing::warn!("raise the soft RLIMIT_NOFILE: {e}"),
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start control runtime")?;
    // The handlers exist before anything else runs (the engine, the
    // resume): a worker the keeper started has had SIGTERM and SIGINT
    // blocked since its spawn, and one sent meanwhile is delivered to
    // these once they are unblocked, instead of killing the worker.
    let termination = {
        let _context = runtime.enter();
        TerminationSignals::new().context("install the SIGTERM and SIGINT handlers")?
    };
    if worker.is_some() {
        process::unblock_termination_signals().context("unblock SIGTERM and SIGINT")?;
    }
    let local = tokio::task::LocalSet::new();
    let (link, inherited) = match worker {
        Some(Worker { link, handover }) => (Some(link), Some(handover)),
        None => (None, None),
    };
    let (inherited_listener, held) = match inherited {
        Some(h) => (Some(h.listener), h.held),
        None => (None, Vec::new()),
    };
    local.block_on(&runtime, async move {
        let listener = {
            let std_listener = match inherited_listener {
                Some(fd) => std::os::unix::net::UnixListener::from(fd),
                None => ringmon::sys::socket::bind_stream(&socket_path)
                    .with_context(|| format!("bind {}", socket_path.display()))?,
            };
            std_listener.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(std_listener)?
        };
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let engine = Arc::new(
            Engine::start(
                EngineConfig {
                    workers: config.engine_workers,
                    backend: config.io_backend,
                    busy_pipe_size: config.busy_pipe_size,
                    batch_window: config.batch_window,
                    attach_done_packet: true,
                },
                events_tx,
            )
            .context("start engine")?,
        );
        info!(
            version = BUILD.version,
            pid = std::process::id(),
            backend = engine.backend_name(),
            backend_reason = engine.backend_reason(),
            max_workers = config.engine_workers,
            "ringmon listening on {}",
            socket_path.display()
        );
        let monitor = Monitor::start(
            RuntimeConfig::new(
                config.runtime.clone(),
                config.runtime_root.clone(),
                config.log_level,
            )
            .with_timeout(config.runtime_timeout),
            config.runtime_dir.clone(),
            Arc::clone(&engine),
            events_rx,
        );
        if let Some(link) = &link {
            monitor.use_keeper(Rc::clone(link));
            monitor.resume(held);
            tokio::task::spawn_local(Rc::clone(link).serve());
        }
        // Tracing: the exporter task exists only with --enable-tracing.
        if let Some(endpoint) = &config.tracing_endpoint {
            match ringmon::otel::parse_endpoint(endpoint) {
                Ok(endpoint) => ringmon::otel::start(endpoint),
                // The server still runs: tracing must not cost containers.
                Err(e) => warn!("tracing disabled: {e}"),
            }
        }
        let mut server = ringmon::control::ConmonServer::new(Rc::clone(&monitor));
        if let Some(link) = &link {
            server = server.reporting_pid(link.keeper_pid());
        }
        let metrics_path = config.runtime_dir.join(ringmon::metrics::SOCKET_NAME);
        let metrics = ringmon::metrics::server::start(
            &metrics_path,
            config.metrics_address,
            ringmon::metrics::Sources {
                monitor: Rc::clone(&monitor),
                streams: server.streams(),
            },
        )
        .await;
        let serving = tokio::task::spawn_local(ringmon::control::serve(listener, server));
        // What parsing the flags and setting up left free goes back now: a
        // pod's server may sit idle for days.
        ringmon::sys::process::return_free_heap();

        termination.wait().await;
        if let Some(link) = &link {
            link.stopping();
        }
        info!("shutting down");
        monitor.shutdown().await;
        serving.abort();
        ringmon::otel::shutdown(TRACE_FLUSH_TIMEOUT).await;

        for task in metrics {
            task.abort();
        }
        let _ = std::fs::remove_file(&metrics_path);
        if let Err(e) = std::fs::remove_file(&socket_path) {
            warn!("remove {}: {e}", socket_path.display());
        }
        let _ = std::fs::remove_file(&fd_socket_path);
        engine.shutdown();
        anyhow::Ok(())
    })?;
    Ok(())
}

/// How long shutdown waits for the last spans to be exported.
const TRACE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The server's SIGTERM and SIGINT streams: either ends it.
struct TerminationSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    /// Installs the handlers; must run inside the runtime's context.
    fn new() -> std::io::Result<TerminationSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(TerminationSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the first of the two.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove stale {}", path.display()))
        }
        _ => Ok(()),
    }
}
