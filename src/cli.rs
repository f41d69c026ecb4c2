//! Command line and environment, compatible with conmon-rs's `conmonrs`
//! (spec §1.1) plus ringmon's own engine flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::BackendChoice;

/// Verbosity of `--version` / `--version-json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VersionVerbosity {
    Default,
    Full,
}

/// Level of the server's own logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Off,
}

/// Where the server's own logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServerLogDriver {
    None,
    Stdout,
    Systemd,
}

/// `--io-backend` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoBackend {
    Auto,
    Uring,
    Epoll,
}

impl From<IoBackend> for BackendChoice {
    fn from(b: IoBackend) -> Self {
        match b {
            IoBackend::Auto => BackendChoice::Auto,
            IoBackend::Uring => BackendChoice::Uring,
            IoBackend::Epoll => BackendChoice::Epoll,
        }
    }
}

/// Shown after `ringmon --help`.
const SERVER_EXAMPLES: &str = "\
Examples:
  ringmon --runtime /usr/sbin/runc --runtime-dir /run/ringmon --log-driver stdout --skip-fork
  ringmon --version full
  ringmon ctl --runtime-dir /run/ringmon ps        (the operator's client: ringmon ctl --help)

Started by the conmon-rs Go client (CRI-O) with --runtime and --runtime-dir; also answers conmon's
command line (podman's conmon_path, CRI-O's oci handlers) when named conmon or given its flags.";

/// ringmon: a conmon-rs compatible container monitor.
#[derive(Debug, Parser)]
#[command(
    name = "ringmon",
    disable_version_flag = true,
    disable_help_subcommand = true,
    after_help = SERVER_EXAMPLES
)]
pub struct Cli {
    /// Internal subcommands (run by the server itself).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print the version and exit.
    #[arg(short = 'v', long, env = "CONMON_VERSION", num_args = 0..=1, default_missing_value = "default", value_enum)]
    pub version: Option<VersionVerbosity>,

    /// Print the version as JSON and exit.
    #[arg(short = 'j', long = "version-json", visible_alias = "vj", env = "CONMON_VERSION_JSON", num_args = 0..=1, default_missing_value = "default", value_enum)]
    pub version_json: Option<VersionVerbosity>,

    /// Server log level.
    #[arg(
        short = 'l',
        long,
        env = "CONMON_LOG_LEVEL",
        default_value = "info",
        value_enum
    )]
    pub log_level: LogLevel,

    /// Where the server's own logs go.
    #[arg(
        short = 'd',
        long,
        env = "CONMON_LOG_DRIVER",
        default_value = "systemd",
        value_enum
    )]
    pub log_driver: ServerLogDriver,

    /// OCI runtime binary (runc, crun).
    #[arg(short = 'r', long, env = "CONMON_RUNTIME", default_value = " ")]
    pub runtime: PathBuf,

    /// Directory for the server's socket, pidfile and per-exec files.
    #[arg(long, env = "CONMON_RUNTIME_DIR", default_value = " ")]
    pub runtime_dir: PathBuf,

    /// Passed to the runtime as `--root=PATH`.
    #[arg(long, env = "CONMON_RUNTIME_ROOT")]
    pub runtime_root: Option<PathBuf>,

    /// Do not fork into the background (no pidfile is written).
    #[arg(long, env = "CONMON_SKIP_FORK")]
    pub skip_fork: bool,

    /// Export OpenTelemetry spans (one per RPC, children for runtime calls
    /// and exit handling) over OTLP/gRPC to --tracing-endpoint.
    #[arg(short = 'e', long, env = "CONMON_ENABLE_TRACING")]
    pub enable_tracing: bool,

    /// The OTLP/gRPC receiver spans go to: http://HOST:PORT or HOST:PORT
    /// (no TLS).
    #[arg(
        short = 't',
        long,
        env = "CONMON_TRACING_ENDPOINT",
        default_value = "http://127.0.0.1:4317"
    )]
    pub tracing_endpoint: String,

    /// Accepted and ignored: clients up to conmon-rs 0.8.x always pass it.
    #[arg(short = 'c', long, hide = true)]
    pub cgroup_manager: Option<String>,

    /// Number of engine worker threads (default: one per online CPU).
    #[arg(long, env = "RINGMON_ENGINE_WORKERS")]
    pub engine_workers: Option<usize>,

    /// I/O backend of the engine workers. epoll is the default because the
    /// density benchmark measures it cheaper per logged line (BENCHMARKS.md);
    /// `auto` runs io_uring where a ring can be set up, else epoll.
    #[arg(long, env = "RINGMON_IO_BACKEND", default_value = "epoll", value_enum)]
    pub io_backend: IoBackend,

    /// Capacity a container pipe is grown to once it shows it is busy (a
    /// read fills the whole buffer); capped by fs.pipe-max-size; 0 = never
    /// grow (for measurements).
    #[arg(long, env = "RINGMON_BUSY_PIPE_SIZE", hide = true)]
    pub busy_pipe_size: Option<usize>,

    /// Milliseconds an engine worker lets light log output accumulate in
    /// the pipes before reading it, so that one wake-up serves many
    /// containers; 0 reads at once. Never applies to attached or exec
    /// output, nor to a stream that is busy (BENCHMARKS.md, "Density").
    #[arg(long, env = "RINGMON_ENGINE_BATCH_WINDOW_MS", value_name = "MS",
          default_value_t = DEFAULT_BATCH_WINDOW_MS,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub engine_batch_window_ms: u64,

    /// Seconds an OCI runtime invocation (create, exec, delete) may take
    /// before it is killed and the call fails with an error that says so: a
    /// runtime or hook that hangs must not hold a request forever.
    #[arg(long, env = "RINGMON_RUNTIME_TIMEOUT", value_name = "SECONDS",
          default_value_t = DEFAULT_RUNTIME_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub runtime_timeout: u64,

    /// Also serve the Prometheus metrics (`GET /metrics`, always served on
    /// `metrics.sock` in the runtime dir) over TCP on ADDR:PORT, e.g.
    /// 127.0.0.1:9464. Unauthenticated: whoever reaches the address reads
    /// every container id and counter, so give a loopback address unless
    /// the network is trusted.
    #[arg(long, env = "RINGMON_METRICS_ADDRESS", value_name = "ADDR:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// Run the server as one process, as before: a crash of the server then
    /// orphans its containers. By default the process the pidfile names is
    /// a small keeper that holds the containers' descriptors and exit
    /// statuses and starts a new server process when one dies.
    #[arg(long, env = "RINGMON_NO_KEEPER",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_keeper: bool,
}

/// Subcommands. No top-level flag validation applies to them.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Look at a running server: ps, logs, exec, attach, stats, version
    /// (`ringmon ctl --help`).
    Ctl(crate::ctl::CtlArgs),
    /// Unshare namespaces, pin them with bind mounts and sleep until
    /// signalled (started by the server for createNamespaces).
    #[command(hide = true)]
    Pause(PauseArgs),
}

/// Flags of `ringmon pause` (spec §1.2).
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Root for the pinned namespaces.
    #[arg(
        short = 'p',
        long,
        env = "CONMON_PAUSE_BASE_PATH",
        default_value = crate::core::namespaces::DEFAULT_BASE_PATH
    )]
    pub base_path: PathBuf,

    /// File name of every pinned namespace and of the pause pid file.
    #[arg(long, env = "CONMON_PAUSE_POD_ID")]
    pub pod_id: String,

    /// Unshare the IPC namespace.
    #[arg(long)]
    pub ipc: bool,
    /// Unshare the PID namespace.
    #[arg(long)]
    pub pid: bool,
    /// Unshare the network namespace.
    #[arg(long)]
    pub net: bool,
    /// Unshare the user namespace (needs uid and gid mappings).
    #[arg(long)]
    pub user: bool,
    /// Unshare the UTS namespace.
    #[arg(long)]
    pub uts: bool,

    /// User ID mapping "CONTAINER_ID HOST_ID SIZE" (repeatable).
    #[arg(short = 'u', long = "uid-mappings")]
    pub uid_mappings: Vec<String>,

    /// Group ID mapping "CONTAINER_ID HOST_ID SIZE" (repeatable).
    #[arg(short = 'g', long = "gid-mappings")]
    pub gid_mappings: Vec<String>,
}

impl PauseArgs {
    /// The pause configuration, namespaces in pin order.
    pub fn request(&self) -> crate::core::namespaces::CreateNamespaces {
        use crate::core::namespaces::Namespace;
        let selected = [
            (self.ipc, Namespace::Ipc),
            (self.pid, Namespace::Pid),
            (self.net, Namespace::Net),
            (self.user, Namespace::User),
            (self.uts, Namespace::Uts),
        ];
        crate::core::namespaces::CreateNamespaces {
            pod_id: self.pod_id.clone(),
            base_path: self.base_path.clone(),
            namespaces: selected
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, ns)| ns)
                .collect(),
            uid_mappings: self.uid_mappings.clone(),
            gid_mappings: self.gid_mappings.clone(),
        }
    }
}

/// A configuration error found before forking (spec §1.1 validation order).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--runtime flag not set")]
    RuntimeNotSet,
    #[error("--runtime-dir flag not set")]
    RuntimeDirNotSet,
    #[error("--runtime '{0}' does not exist")]
    RuntimeMissing(String),
    #[error("--runtime-root '{0}' does not exist")]
    RuntimeRootNotDir(String),
    #[error("--engine-workers must be at least 1, got {0}")]
    NoWorkers(usize),
    #[error("create directory '{path}': {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
}

/// The validated server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub runtime: PathBuf,
    pub runtime_dir: PathBuf,
    pub runtime_root: Option<PathBuf>,
    pub log_level: LogLevel,
    pub log_driver: ServerLogDriver,
    pub skip_fork: bool,
    pub engine_workers: usize,
    pub io_backend: BackendChoice,
    pub busy_pipe_size: Option<usize>,
    pub batch_window: std::time::Duration,
    pub runtime_timeout: std::time::Duration,
    /// `--tracing-endpoint` when `--enable-tracing` is given.
    pub tracing_endpoint: Option<String>,
    /// `--metrics-address`.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Run a keeper process beside the server (not `--no-keeper`).
    pub keeper: bool,
}

/// Default of `--runtime-timeout`.
const DEFAULT_RUNTIME_TIMEOUT_SECS: u64 = crate::core::runtime::DEFAULT_TIMEOUT.as_secs();

/// Default of `--engine-batch-window-ms`.
const DEFAULT_BATCH_WINDOW_MS: u64 = crate::engine::DEFAULT_BATCH_WINDOW.as_millis() as u64;

impl Cli {
    /// Validates and prepares directories, in the order of spec §1.1.
    pub fn validate(&self) -> Result<ServerConfig, ConfigError> {
        let runtime = self.runtime.to_string_lossy().trim().to_string();
        if runtime.is_empty() {
            return Err(ConfigError::RuntimeNotSet);
        }
        let runtime_dir = self.runtime_dir.to_string_lossy().trim().to_string();
        if runtime_dir.is_empty() {
            return Err(ConfigError::RuntimeDirNotSet);
        }
        if !std::path::Path::new(&runtime).exists() {
            return Err(ConfigError::RuntimeMissing(runtime));
        }
        std::fs::create_dir_all(&runtime_dir).map_err(|source| ConfigError::CreateDir {
            path: runtime_dir.clone(),
            source,
        })?;
        if let Some(root) = &self.runtime_root {
            if !root.exists() {
                std::fs::create_dir_all(root).map_err(|source| ConfigError::CreateDir {
                    path: root.display().to_string(),
                    source,
                })?;
            } else if !root.is_dir() {
                return Err(ConfigError::RuntimeRootNotDir(root.display().to_string()));
            }
        }
        let engine_workers = match self.engine_workers {
            Some(0) => return Err(ConfigError::NoWorkers(0)),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        Ok(ServerConfig {
            runtime: PathBuf::from(runtime),
            runtime_dir: PathBuf::from(runtime_dir),
            runtime_root: self.runtime_root.clone(),
            log_level: self.log_level,
            log_driver: self.log_driver,
            skip_fork: self.skip_fork,
            engine_workers,
            io_backend: self.io_backend.into(),
            busy_pipe_size: self.busy_pipe_size,
            batch_window: std::time::Duration::from_millis(self.engine_batch_window_ms),
            runtime_timeout: std::time::Duration::from_secs(self.runtime_timeout),
            tracing_endpoint: self.enable_tracing.then(|| self.tracing_endpoint.clone()),
            metrics_address: self.metrics_address,
            keeper: !self.no_keeper,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::namespaces::{pause_args, CreateNamespaces, Namespace};

    /// The argv the server builds is what the pause subcommand parses back.
    #[test]
    fn pause_argv_round_trips_through_the_cli() {
        let sent = CreateNamespaces {
            pod_id: "pod-1".into(),
            base_path: PathBuf::from("/tmp/base"),
            namespaces: vec![Namespace::Uts, Namespace::User, Namespace::Ipc],
            uid_mappings: vec!["0 1000 1".into(), "1 2000 5".into()],
            gid_mappings: vec!["0 1000 1".into()],
        };
        let argv = std::iter::once("ringmon".to_string()).chain(pause_args(&sent).unwrap());
        let cli = Cli::try_parse_from(argv).unwrap();
        let Some(Command::Pause(pause)) = cli.command else {
            panic!("not the pause subcommand");
        };
        let got = pause.request();
        // The pause side lists the namespaces in pin order.
        assert_eq!(
            got.namespaces,
            [Namespace::Ipc, Namespace::User, Namespace::Uts]
        );
        assert_eq!(
            got,
            CreateNamespaces {
                namespaces: got.namespaces.clone(),
                ..sent
            }
        );
    }

    #[test]
    fn the_runtime_timeout_defaults_to_240_s_and_refuses_0() {
        let cli = Cli::try_parse_from(["ringmon"]).unwrap();
        assert_eq!(cli.runtime_timeout, 240);
        for bad in ["0", "86401", "soon"] {
            let err = Cli::try_parse_from(["ringmon", "--runtime-timeout", bad])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--runtime-timeout") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_batch_window_defaults_to_100_ms_and_refuses_more_than_a_second() {
        let cli = Cli::try_parse_from(["ringmon"]).unwrap();
        assert_eq!(cli.engine_batch_window_ms, 100);
        let cli = Cli::try_parse_from(["ringmon", "--engine-batch-window-ms", "0"]).unwrap();
        assert_eq!(cli.engine_batch_window_ms, 0);
        let err = Cli::try_parse_from(["ringmon", "--engine-batch-window-ms", "1001"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--engine-batch-window-ms") && err.contains("1001"),
            "{err}"
        );
    }

    #[test]
    fn no_keeper_is_off_by_default_and_a_flag_without_a_value() {
        assert!(!Cli::try_parse_from(["ringmon"]).unwrap().no_keeper);
        let cli = Cli::try_parse_from(["ringmon", "--no-keeper"]).unwrap();
        assert!(cli.no_keeper);
    }

    #[test]
    fn top_level_flags_still_parse_without_a_subcommand() {
        let cli = Cli::try_parse_from(["ringmon", "--version-json", "full"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.version_json, Some(VersionVerbosity::Full));
        assert!(
            Cli::try_parse_from(["ringmon", "pause"]).is_err(),
            "--pod-id required"
        );
    }
}
