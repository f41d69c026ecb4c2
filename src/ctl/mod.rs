//! `ringmon ctl`: a command line for a person looking at a running server
//! through its socket (`conmon.sock`): `version`, `ps`, `logs`, `exec`,
//! `attach`, `stats`. A client of the RPC interface like any other (through
//! `crate::client`); it never reaches into the server's state otherwise,
//! except for reading the log files the server names and scraping its
//! `metrics.sock` (`stats`, and `ps`'s LOGGED column).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, ClientError};

pub mod log_lines;
mod logs;
mod session;
pub mod stats;

/// The server socket's file name in its runtime dir.
pub const SOCKET_NAME: &str = "conmon.sock";

/// How long ctl waits for any one answer of the server (interactive
/// streams aside).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server processes are looked for when no runtime dir is given.
const PROC: &str = "/proc";

/// The process name a ringmon (or conmon-rs) server gives itself.
const SERVER_PROCESS_NAME: &str = "conmonrs";

/// The `ctl` subcommand's flags (also shown by `ringmon --help`).
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct CtlArgs {
    /// The server's runtime dir (where its conmon.sock is). Default: the
    /// only running server's (found through /proc).
    #[arg(long, env = "CONMON_RUNTIME_DIR", global = true)]
    pub runtime_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: CtlCommand,
}

const EXAMPLES: &str = "\
Examples:
  ringmon ctl ps
  ringmon ctl --runtime-dir /run/ringmon version
  ringmon ctl logs -f --since 10m --tail 20 3f2a
  ringmon ctl exec -it 3f2a -- /bin/sh
  ringmon ctl attach 3f2a          (ctrl-p ctrl-q detaches)
  ringmon ctl stats                (the metrics of metrics.sock, for people)

A container may be named by a unique prefix of its id.";

/// What ctl does.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show the server's version and build.
    Version,
    /// List the monitored containers and the most recently exited ones.
    Ps {
        /// Show whole container ids (default: the first 12 characters).
        #[arg(long)]
        no_trunc: bool,
    },
    /// Print a container's log (its CRI or JSON log file).
    Logs {
        /// Keep printing new output until the container exits (or ctrl-c).
        #[arg(short, long)]
        follow: bool,
        /// Only lines logged since then: a duration back from now (10s, 5m,
        /// 1h30m) or an RFC 3339 time.
        #[arg(long, value_name = "DURATION|RFC3339")]
        since: Option<String>,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Container id (or a unique prefix).
        id: String,
    },
    /// Run a command in a running container (an exec session); ctl exits
    /// with its exit code.
    Exec {
        /// Forward this terminal's standard input.
        #[arg(short, long)]
        interactive: bool,
        /// Run the command on a terminal (raw mode here; ctrl-p ctrl-q
        /// detaches).
        #[arg(short, long)]
        tty: bool,
        /// The cgroup manager the runtime is told to use for the exec.
        #[arg(long, default_value = "cgroupfs", value_parser = ["cgroupfs", "systemd"])]
        cgroup_manager: String,
        /// Container id (or a unique prefix).
        id: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Attach to a container's stdio: raw terminal when stdin is one,
    /// ctrl-p ctrl-q detaches; pipes work too.
    Attach {
        /// Container id (or a unique prefix).
        id: String,
    },
    /// Show the server's metrics (from its metrics.sock): per container the
    /// output logged, discards, log errors and attach clients; then the
    /// process and each engine worker.
    Stats {
        /// Show whole container ids (default: the first 12 characters).
        #[arg(long)]
        no_trunc: bool,
    },
}

/// What went wrong, named for the person who typed the command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no ringmon server found: no process named {SERVER_PROCESS_NAME} under {PROC} has a {SOCKET_NAME} in its --runtime-dir; name one with --runtime-dir")]
    NoServer,
    #[error("several ringmon servers found ({}); choose one with --runtime-dir", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    SeveralServers(Vec<PathBuf>),
    #[error("no server socket at {path}: {source}")]
    NoSocket {
        path: String,
        source: std::io::Error,
    },
    #[error("server at {path}: {source}")]
    Rpc { path: String, source: ClientError },
    #[error("server at {path} did not answer {call} within {RPC_TIMEOUT:?}")]
    Timeout { path: String, call: &'static str },
    #[error("unknown container id '{0}' (ringmon ctl ps lists them)")]
    UnknownContainer(String),
    #[error("container id prefix '{prefix}' is ambiguous: {}", .ids.join(", "))]
    AmbiguousContainer { prefix: String, ids: Vec<String> },
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} has no CRI or JSON log file (journald only)")]
    NoLogFile(String),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    BadSince(#[from] log_lines::BadSince),
    #[error("{0}")]
    Io(String),
}

/// A connected server and the path it was reached at.
struct Server {
    client: Client,
    socket: PathBuf,
}

impl Server {
    /// Connects to the server in `runtime_dir`.
    async fn connect(runtime_dir: &Path) -> Result<Server, CtlError> {
        let socket = runtime_dir.join(SOCKET_NAME);
        if let Err(source) = std::fs::metadata(&socket) {
            return Err(CtlError::NoSocket {
                path: socket.display().to_string(),
                source,
            });
        }
        let client = match tokio::time::timeout(RPC_TIMEOUT, Client::connect(&socket)).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                return Err(CtlError::Rpc {
                    path: socket.display().to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(CtlError::Timeout {
                    path: socket.display().to_string(),
                    call: "connect",
                })
            }
        };
        Ok(Server { client, socket })
    }

    /// Awaits one call with [`RPC_TIMEOUT`], naming the call on failure.
    async fn call<T>(
        &self,
        call: &'static str,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, CtlError> {
        match tokio::time::timeout(RPC_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(CtlError::Rpc {
                path: self.socket.display().to_string(),
                source,
            }),
            Err(_) => Err(CtlError::Timeout {
                path: self.socket.display().to_string(),
                call,
            }),
        }
    }

    /// The container named by `id` or a unique prefix of it.
    async fn find(&self, id: &str) -> Result<crate::client::ContainerInfo, CtlError> {
        let list = self
            .call("listContainers", self.client.list_containers())
            .await?;
        pick_container(list.containers, id)
    }
}

/// The container whose id is `id`, else the only one it prefixes.
fn pick_container(
    list: Vec<crate::client::ContainerInfo>,
    id: &str,
) -> Result<crate::client::ContainerInfo, CtlError> {
    if id.is_empty() {
        return Err(CtlError::UnknownContainer(String::new()));
    }
    let mut matches: Vec<_> = list.into_iter().filter(|c| c.id.starts_with(id)).collect();
    if let Some(i) = matches.iter().position(|c| c.id == id) {
        return Ok(matches.swap_remove(i));
    }
    match matches.len() {
        0 => Err(CtlError::UnknownContainer(id.to_string())),
        1 => Ok(matches.remove(0)),
        _ => Err(CtlError::AmbiguousContainer {
            prefix: id.to_string(),
            ids: matches.into_iter().map(|c| c.id).collect(),
        }),
    }
}

/// The runtime dir named on a server's command line or in its environment
/// (`--runtime-dir DIR`, `--runtime-dir=DIR`, `CONMON_RUNTIME_DIR=DIR`).
pub fn runtime_dir_of(cmdline: &[u8], environ: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    for (i, a) in args.iter().enumerate() {
        if *a == b"--runtime-dir" {
            return args
                .get(i + 1)
                .map(|v| PathBuf::from(std::ffi::OsStr::from_bytes(v)));
        }
        if let Some(v) = a.strip_prefix(b"--runtime-dir=") {
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(v)));
        }
    }
    environ
        .split(|b| *b == 0)
        .find_map(|e| e.strip_prefix(b"CONMON_RUNTIME_DIR="))
        .map(|v| PathBuf::from(std::ffi::OsStr::from_bytes(v)))
}

/// The runtime dirs of the running servers: processes named
/// [`SERVER_PROCESS_NAME`] whose runtime dir holds a [`SOCKET_NAME`].
fn running_servers() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let Ok(entries) = std::fs::read_dir(PROC) else {
        return dirs;
    };
    for entry in entries.flatten() {
        let proc_dir = entry.path();
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let named = std::fs::read(proc_dir.join("comm"))
            .is_ok_and(|c| c.strip_suffix(b"\n").unwrap_or(&c) == SERVER_PROCESS_NAME.as_bytes());
        if !named {
            continue;
        }
        // Anyone can name a process `conmonrs`: only a server run by root
        // or by the user running ctl is trusted with the terminal.
        let Some(owner) = trusted_owner(&proc_dir) else {
            continue;
        };
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
        let Some(dir) = runtime_dir_of(&cmdline, &environ) else {
            continue;
        };
        // A relative dir is relative to the server's working directory.
        let dir = if dir.is_relative() {
            match std::fs::read_link(proc_dir.join("cwd")) {
                Ok(cwd) => cwd.join(dir),
                Err(_) => continue,
            }
        } else {
            dir
        };
        let socket_owned = std::fs::symlink_metadata(dir.join(SOCKET_NAME))
            .is_ok_and(|meta| meta.file_type().is_socket() && meta.uid() == owner);
        if socket_owned && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.sort();
    dirs
}

/// The owner of the process at `proc_dir` if it is root or the user
/// running ctl (whom ctl may trust with the terminal), else `None`.
fn trusted_owner(proc_dir: &Path) -> Option<u32> {
    let owner = std::fs::metadata(proc_dir).ok()?.uid();
    (owner == 0 || owner == crate::sys::process::effective_uid()).then_some(owner)
}

/// The runtime dir to use: the one given, else the only running server's.
fn choose_runtime_dir(given: Option<PathBuf>) -> Result<PathBuf, CtlError> {
    if let Some(dir) = given.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(dir);
    }
    let mut found = running_servers();
    match found.len() {
        0 => Err(CtlError::NoServer),
        1 => Ok(found.remove(0)),
        _ => Err(CtlError::SeveralServers(found)),
    }
}

/// Standalone parser for `ringmon ctl ...` (argv[1] is `ctl`).
#[derive(Debug, Parser)]
#[command(
    name = "ringmon ctl",
    bin_name = "ringmon ctl",
    about = "Look at and into a running ringmon server",
    disable_help_subcommand = true
)]
struct CtlCli {
    #[command(flatten)]
    args: CtlArgs,
}

/// Runs `ringmon ctl` with the whole argv (argv[1] = "ctl"); returns the
/// process exit status.
pub fn main(argv: &[std::ffi::OsString]) -> i32 {
    let cli = match CtlCli::try_parse_from(argv.iter().skip(1)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    run(cli.args)
}

/// Runs a parsed `ctl` command; returns the process exit status.
pub fn run(args: CtlArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: start the client runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e}");
            // 125, as podman and docker do for their own failures, so that
            // an exec's exit code stays distinguishable.
            125
        }
    }
}

async fn dispatch(args: CtlArgs) -> Result<i32, CtlError> {
    let dir = choose_runtime_dir(args.runtime_dir)?;
    if let CtlCommand::Stats { no_trunc } = args.command {
        let text = stats::scrape(&dir).await?;
        print!(
            "{}",
            stats::stats_text(&stats::parse_samples(&text), no_trunc)
        );
        return Ok(0);
    }
    let server = Server::connect(&dir).await?;
    match args.command {
        CtlCommand::Version => {
            let v = server.call("version", server.client.version(false)).await?;
            print!("{}", version_text(&v, &server.socket));
            Ok(0)
        }
        CtlCommand::Ps { no_trunc } => {
            let list = server
                .call("listContainers", server.client.list_containers())
                .await?;
            // The engine's counters when the server serves them (an older
            // one does not: then the log file's size, marked and said once).
            let logged = match stats::scrape(&dir).await {
                Ok(text) => stats::logged_bytes(&stats::parse_samples(&text)),
                Err(err) => {
                    eprintln!("(LOGGED marked * is the log file's size: {err})");
                    Default::default()
                }
            };
            print!(
                "{}",
                ps_table(&list.containers, &logged, now_millis(), no_trunc)
            );
            if list.truncated {
                eprintln!("(the server left out some containers: its reply is bounded)");
            }
            Ok(0)
        }
        CtlCommand::Logs {
            follow,
            since,
            tail,
            id,
        } => {
            let since = match since {
                Some(s) => Some(log_lines::parse_since(&s, now_millis() * 1_000_000)?),
                None => None,
            };
            logs::run(
                &server,
                &id,
                logs::Options {
                    follow,
                    since,
                    tail,
                },
            )
            .await
        }
        CtlCommand::Exec {
            interactive,
            tty,
            cgroup_manager,
            id,
            command,
        } => {
            session::exec(
                &server,
                &id,
                session::ExecOptions {
                    interactive,
                    tty,
                    systemd_cgroup: cgroup_manager == "systemd",
                    command,
                },
            )
            .await
        }
        CtlCommand::Attach { id } => session::attach(&server, &id).await,
        CtlCommand::Stats { .. } => unreachable!("answered before connecting"),
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn version_text(v: &crate::client::Version, socket: &Path) -> String {
    format!(
        "Server:       {}\nPid:          {}\nVersion:      {}\nCommit:       {}\nBuilt:        {}\nTarget:       {}\nRust:         {}\nClient:       {}\n",
        socket.display(),
        v.process_id,
        v.version,
        v.commit,
        v.build_date,
        v.target,
        v.rust_version,
        crate::version::BUILD.version,
    )
}

/// A duration for people: `45s`, `12m`, `3h`, `2d`.
pub fn human_age(millis: i64) -> String {
    let secs = millis.max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A byte count for people: `512B`, `1.5KiB`, `3.2MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// The log file ctl reads for a container: its first CRI or JSON log.
fn log_file(c: &crate::client::ContainerInfo) -> Option<(log_lines::LogFileKind, &str)> {
    c.logs.iter().find_map(|(kind, path)| match kind {
        0 => Some((log_lines::LogFileKind::Cri, path.as_str())),
        1 => Some((log_lines::LogFileKind::Json, path.as_str())),
        _ => None,
    })
}

/// The `ps` table. LOGGED is the container's output bytes as the engine
/// counted them (`logged`, per container id, from the metrics); a container
/// not in it (metrics.sock did not answer) shows its log file's size now
/// instead (what the log kept: rotation and max size cut it), marked `*`.
pub fn ps_table(
    list: &[crate::client::ContainerInfo],
    logged: &std::collections::BTreeMap<String, u64>,
    now_millis: i64,
    no_trunc: bool,
) -> String {
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "PID".into(),
        "STATE".into(),
        "RUNTIME".into(),
        "AGE".into(),
        "LOGGED".into(),
        "LOG".into(),
    ]];
    for c in list {
        let id = if no_trunc {
            c.id.clone()
        } else {
            c.id.chars().take(12).collect()
        };
        let state = if c.running {
            "running".to_string()
        } else {
            format!(
                "exited ({}) {} ago",
                c.exit_code,
                human_age(now_millis - c.exited_unix_millis)
            )
        };
        let runtime = Path::new(&c.runtime)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| c.runtime.clone());
        let (file_size, log) = match log_file(c) {
            Some((_, path)) => (
                std::fs::metadata(path)
                    .map(|m| human_bytes(m.len()))
                    .unwrap_or_else(|_| "-".into()),
                path.to_string(),
            ),
            None if c.logs.is_empty() => ("-".into(), "-".into()),
            None => ("-".into(), "journald".into()),
        };
        let logged = match logged.get(&c.id) {
            Some(&n) => human_bytes(n),
            None if file_size == "-" => file_size,
            None => format!("{file_size}*"),
        };
        rows.push([
            id,
            c.pid.to_string(),
            state,
            runtime,
            human_age(now_millis - c.created_unix_millis),
            logged,
            log,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ContainerInfo;

    fn info(id: &str, running: bool) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            pid: 42,
            running,
            exit_code: if running { 0 } else { 3 },
            created_unix_millis: 1_000,
            exited_unix_millis: if running { 0 } else { 61_000 },
            runtime: "/usr/sbin/runc".into(),
            logs: vec![(2, String::new())],
        }
    }

    #[test]
    fn runtime_dir_from_cmdline_or_environment() {
        assert_eq!(
            runtime_dir_of(b"ringmon\0--runtime-dir\0/run/x\0-r\0/bin/runc\0", b""),
            Some(PathBuf::from("/run/x"))
        );
        assert_eq!(
            runtime_dir_of(b"conmonrs\0--runtime-dir=/run/y\0", b""),
            Some(PathBuf::from("/run/y"))
        );
        assert_eq!(
            runtime_dir_of(b"conmonrs\0", b"A=b\0CONMON_RUNTIME_DIR=/run/z\0"),
            Some(PathBuf::from("/run/z"))
        );
        assert_eq!(runtime_dir_of(b"conmonrs\0", b"A=b\0"), None);
    }

    #[test]
    fn containers_by_id_or_unique_prefix() {
        let list = || vec![info("abc1", true), info("abc2", true), info("abc", false)];
        assert_eq!(pick_container(list(), "abc").unwrap().id, "abc");
        assert_eq!(pick_container(list(), "abc2").unwrap().id, "abc2");
        let list2 = || vec![info("abc1", true), info("abc2", true)];
        let err = pick_container(list2(), "ab").unwrap_err().to_string();
        assert!(
            err.contains("ambiguous") && err.contains("abc1, abc2"),
            "{err}"
        );
        let err = pick_container(list2(), "zz").unwrap_err().to_string();
        assert!(err.contains("unknown container id 'zz'"), "{err}");
    }

    #[test]
    fn the_table_shows_state_age_and_journald() {
        let table = ps_table(
            &[info("0123456789abcdef", true), info("x", false)],
            &[("x".to_string(), 1536)].into_iter().collect(),
            121_000,
            false,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CONTAINER ID"), "{table}");
        assert!(lines[1].starts_with("0123456789ab "), "{table}");
        assert!(
            lines[1].contains("running") && lines[1].contains("runc"),
            "{table}"
        );
        assert!(
            lines[1].contains("2m") && lines[1].contains("journald"),
            "{table}"
        );
        assert!(lines[2].contains("exited (3) 1m ago"), "{table}");
        assert!(lines[2].contains(" 1.5KiB "), "{table}");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_age(59_999), "59s");
    }
}
