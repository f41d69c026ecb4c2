//! The C conmon's command line (conmon 2.1.6 as podman 4.3.1 and CRI-O's
//! `oci` handlers drive it: /work/shared/spec/conmon-cli-podman.md §3 and
//! conmon-cli-crio.md §3), parsed into a typed [`ConmonConfig`].
//!
//! Pure: no file system, no environment, no process state. Accepted forms are
//! those of conmon's option parser that the two clients use: `--flag value`,
//! `--flag=value`, `-f value`, and `--` to end the options. Short flags are not
//! clustered (`-ti`): neither client does it, so such a token is refused as an
//! unknown flag rather than guessed at. A flag's value is always the next
//! argument even when it starts with `-` (`--runtime-arg --log-format=json`,
//! `--exit-command-arg --root`).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

/// A command line conmon's parser (or ringmon's checks on top of it) refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConmonCliError {
    #[error("unknown flag '{0}'")]
    UnknownFlag(String),
    #[error("flag {flag} is not supported by ringmon's conmon mode")]
    Unsupported { flag: &'static str },
    #[error("flag {flag} needs a value")]
    MissingValue { flag: &'static str },
    #[error("flag {flag} takes no value, got '{value}'")]
    UnexpectedValue { flag: &'static str, value: String },
    #[error("flag {flag} given twice: '{first}' and '{second}'")]
    Repeated {
        flag: &'static str,
        first: String,
        second: String,
    },
    #[error("flag {flag}: '{value}' is not a number")]
    NotANumber { flag: &'static str, value: String },
    #[error("flag {flag}: '{value}' is too large (at most {max})")]
    TooLarge {
        flag: &'static str,
        value: String,
        max: i64,
    },
    #[error("flag {flag}: '{value}' must not be negative")]
    Negative { flag: &'static str, value: String },
    #[error("flag {flag}: '{value}' is not valid UTF-8")]
    NotUtf8 { flag: &'static str, value: String },
    #[error("flag {flag} must not be empty")]
    Empty { flag: &'static str },
    #[error("flag {flag}: unknown log level '{value}'")]
    UnknownLogLevel { flag: &'static str, value: String },
    #[error("flag --log-path: unknown log driver '{driver}' in '{value}'")]
    UnknownLogDriver { driver: String, value: String },
    #[error("flag --log-path: '{value}' names no file")]
    LogPathWithoutFile { value: String },
    #[error("flag --log-path: two k8s-file logs, '{first}' and '{second}'")]
    TwoK8sFiles { first: String, second: String },
    #[error("flag --log-path: 'passthrough' cannot be combined with '{other}'")]
    PassthroughCombined { other: String },
    #[error("required flag {flag} is missing")]
    Required { flag: &'static str },
    #[error("flag {flag} needs {needs}")]
    Needs {
        flag: &'static str,
        needs: &'static str,
    },
    #[error("flags {first} and {second} exclude each other")]
    Conflict {
        first: &'static str,
        second: &'static str,
    },
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConmonCommand {
    /// `--version`: print the version and exit 0 (checked before the
    /// required flags, as conmon does, so a bare `--version` works).
    Version,
    /// `--help`, `-h`, `-?`.
    Help,
    /// Monitor a container or exec session.
    Run(Box<ConmonConfig>),
}

/// Sync pipe protocol, chosen by the presence of `--api-version` (podman
/// passes it, CRI-O never does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncProtocol {
    /// Key `pid` for create, `exit_code` for exec; exec reports no pid.
    Legacy,
    /// Key `data`; exec reports the pid, then the exit code.
    Data,
}

/// conmon's own log level (`--log-level`), with the names podman and CRI-O
/// pass (CRI-O passes logrus names, including `fatal` and `panic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConmonLogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Fatal,
    Panic,
}

/// One `-l/--log-path` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// `k8s-file:PATH`, or a bare PATH.
    K8sFile(PathBuf),
    /// `journald` or `journald:` (anything after the colon is ignored, as
    /// conmon does: journald has no path).
    Journald,
    /// `none` (also `off`, `null`): output only goes to attach clients.
    None,
    /// `passthrough`: the runtime gets the monitor's own fds 0-2; no attach
    /// socket, no fifos.
    Passthrough,
}

/// What the monitored process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConmonMode {
    /// `runtime create` (or `runtime restore` with `--restore PATH`).
    Create { restore: Option<PathBuf> },
    /// `-e/--exec`: `runtime exec --process SPEC`.
    Exec {
        process_spec: PathBuf,
        /// `--exec-attach`: podman's two-step start over `_OCI_ATTACHPIPE`.
        attach: bool,
    },
}

/// `--exit-command PATH` with its `--exit-command-arg`s, every one kept, in
/// order, empty ones included (podman passes `--network-config-dir ""`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitCommand {
    pub path: PathBuf,
    pub args: Vec<OsString>,
}

/// The validated conmon command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConmonConfig {
    pub mode: ConmonMode,
    pub protocol: SyncProtocol,
    /// `-c/--cid`: the runtime's container id; names the exit files.
    pub container_id: String,
    /// `-u/--cuuid`: names the `--socket-dir-path` link. Absent only for a
    /// legacy-protocol exec (CRI-O's ExecSync).
    pub container_uuid: Option<String>,
    /// `-n/--name`.
    pub name: Option<String>,
    /// `-r/--runtime`.
    pub runtime: PathBuf,
    /// `-b/--bundle`; conmon defaults to its cwd for a create.
    pub bundle: Option<PathBuf>,
    /// `-p/--container-pidfile`: the runtime's `--pid-file`.
    pub container_pidfile: Option<PathBuf>,
    /// `-P/--conmon-pidfile`: where the first process writes the monitor's pid.
    pub conmon_pidfile: Option<PathBuf>,
    pub exit_dir: Option<PathBuf>,
    pub persist_dir: Option<PathBuf>,
    pub socket_dir_path: Option<PathBuf>,
    pub full_attach: bool,
    /// Every `-l` in order (CRI-O may give a path and `journald:`).
    pub log_targets: Vec<LogTarget>,
    pub log_level: Option<ConmonLogLevel>,
    pub log_tag: Option<String>,
    /// `--log-size-max`; a value ≤ 0 means no limit, as in conmon.
    pub log_size_max: Option<u64>,
    /// `--log-global-size-max`; a value ≤ 0 means no limit.
    pub log_global_size_max: Option<u64>,
    pub no_sync_log: bool,
    pub no_container_partial_message: bool,
    pub syslog: bool,
    pub terminal: bool,
    pub stdin: bool,
    pub leave_stdin_open: bool,
    pub systemd_cgroup: bool,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub replace_listen_pid: bool,
    /// `--sync`: do not daemonize (CRI-O's ExecSync).
    pub sync: bool,
    /// `--runtime-arg`s, placed before the runtime's subcommand.
    pub runtime_args: Vec<OsString>,
    /// `--runtime-opt`s, placed after the subcommand's own options.
    pub runtime_opts: Vec<OsString>,
    pub exit_command: Option<ExitCommand>,
    /// `--exit-delay`: wait before the exit command.
    pub exit_delay: Duration,
    /// `-T/--timeout`; 0 means none.
    pub timeout: Option<Duration>,
    pub sdnotify_socket: Option<PathBuf>,
    /// Arguments that are no flag's value. conmon ignores them; podman
    /// always passes one (`--api-version 1`: the flag takes no value).
    pub positionals: Vec<OsString>,
}

/// What a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Nothing,
    Value,
}

/// Every flag conmon 2.1.6 knows; `conmon_only_flags` derives role
/// detection's markers from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagId {
    ApiVersion,
    Bundle,
    Cid,
    ConmonPidfile,
    ContainerPidfile,
    Cuuid,
    Exec,
    ExecAttach,
    ExecProcessSpec,
    ExitCommand,
    ExitCommandArg,
    ExitDelay,
    ExitDir,
    FullAttach,
    Help,
    LeaveStdinOpen,
    LogGlobalSizeMax,
    LogLevel,
    LogPath,
    LogSizeMax,
    LogTag,
    Name,
    NoContainerPartialMessage,
    NoNewKeyring,
    NoPivot,
    NoSyncLog,
    PersistDir,
    ReplaceListenPid,
    Restore,
    RestoreArg,
    Runtime,
    RuntimeArg,
    RuntimeOpt,
    SdnotifySocket,
    SeccompNotifyPlugins,
    SeccompNotifySocket,
    SocketDirPath,
    Stdin,
    Sync,
    Syslog,
    SystemdCgroup,
    Terminal,
    Timeout,
    Version,
}

struct Flag {
    long: &'static str,
    short: Option<char>,
    takes: Takes,
    id: FlagId,
}

const fn flag(long: &'static str, short: Option<char>, takes: Takes, id: FlagId) -> Flag {
    Flag {
        long,
        short,
        takes,
        id,
    }
}

/// conmon's option table: long names, short forms and whether a value
/// follows. Names are `--long` as the error messages show them.
const FLAGS: &[Flag] = &[
    flag("--api-version", None, Takes::Nothing, FlagId::ApiVersion),
    flag("--bundle", Some('b'), Takes::Value, FlagId::Bundle),
    flag("--cid", Some('c'), Takes::Value, FlagId::Cid),
    flag(
        "--conmon-pidfile",
        Some('P'),
        Takes::Value,
        FlagId::ConmonPidfile,
    ),
    flag(
        "--container-pidfile",
        Some('p'),
        Takes::Value,
        FlagId::ContainerPidfile,
    ),
    flag("--cuuid", Some('u'), Takes::Value, FlagId::Cuuid),
    flag("--exec", Some('e'), Takes::Nothing, FlagId::Exec),
    flag("--exec-attach", None, Takes::Nothing, FlagId::ExecAttach),
    flag(
        "--exec-process-spec",
        None,
        Takes::Value,
        FlagId::ExecProcessSpec,
    ),
    flag("--exit-command", None, Takes::Value, FlagId::ExitCommand),
    flag(
        "--exit-command-arg",
        None,
        Takes::Value,
        FlagId::ExitCommandArg,
    ),
    flag("--exit-delay", None, Takes::Value, FlagId::ExitDelay),
    flag("--exit-dir", None, Takes::Value, FlagId::ExitDir),
    flag("--full-attach", None, Takes::Nothing, FlagId::FullAttach),
    flag("--help", Some('h'), Takes::Nothing, FlagId::Help),
    flag(
        "--leave-stdin-open",
        None,
        Takes::Nothing,
        FlagId::LeaveStdinOpen,
    ),
    flag(
        "--log-global-size-max",
        None,
        Takes::Value,
        FlagId::LogGlobalSizeMax,
    ),
    flag("--log-level", None, Takes::Value, FlagId::LogLevel),
    flag("--log-path", Some('l'), Takes::Value, FlagId::LogPath),
    flag("--log-size-max", None, Takes::Value, FlagId::LogSizeMax),
    flag("--log-tag", None, Takes::Value, FlagId::LogTag),
    flag("--name", Some('n'), Takes::Value, FlagId::Name),
    flag(
        "--no-container-partial-message",
        None,
        Takes::Nothing,
        FlagId::NoContainerPartialMessage,
    ),
    flag(
        "--no-new-keyring",
        None,
        Takes::Nothing,
        FlagId::NoNewKeyring,
    ),
    flag("--no-pivot", None, Takes::Nothing, FlagId::NoPivot),
    flag("--no-sync-log", None, Takes::Nothing, FlagId::NoSyncLog),
    flag("--persist-dir", None, Takes::Value, FlagId::PersistDir),
    flag(
        "--replace-listen-pid",
        None,
        Takes::Nothing,
        FlagId::ReplaceListenPid,
    ),
    flag("--restore", None, Takes::Value, FlagId::Restore),
    flag("--restore-arg", None, Takes::Value, FlagId::RestoreArg),
    flag("--runtime", Some('r'), Takes::Value, FlagId::Runtime),
    flag("--runtime-arg", None, Takes::Value, FlagId::RuntimeArg),
    flag("--runtime-opt", None, Takes::Value, FlagId::RuntimeOpt),
    flag(
        "--sdnotify-socket",
        None,
        Takes::Value,
        FlagId::SdnotifySocket,
    ),
    flag(
        "--seccomp-notify-plugins",
        None,
        Takes::Value,
        FlagId::SeccompNotifyPlugins,
    ),
    flag(
        "--seccomp-notify-socket",
        None,
        Takes::Value,
        FlagId::SeccompNotifySocket,
    ),
    flag(
        "--socket-dir-path",
        None,
        Takes::Value,
        FlagId::SocketDirPath,
    ),
    flag("--stdin", Some('i'), Takes::Nothing, FlagId::Stdin),
    flag("--sync", None, Takes::Nothing, FlagId::Sync),
    flag("--syslog", None, Takes::Nothing, FlagId::Syslog),
    flag(
        "--systemd-cgroup",
        Some('s'),
        Takes::Nothing,
        FlagId::SystemdCgroup,
    ),
    flag("--terminal", Some('t'), Takes::Nothing, FlagId::Terminal),
    flag("--timeout", Some('T'), Takes::Value, FlagId::Timeout),
    flag("--version", None, Takes::Nothing, FlagId::Version),
];

/// Flags of conmon's set that the conmon-rs server (and its `pause`
/// subcommand) does not have, long and short. Their presence in an argv
/// marks it as conmon's: see `crate::role::detect`, and the unit test there
/// that checks this list against the conmon-rs flag set itself.
pub fn conmon_only_flags() -> impl Iterator<Item = String> {
    // Shared with conmon-rs (`--runtime`, `--log-level`, `--version`,
    // `--help`) or with its short forms (-c cgroup manager, -r runtime,
    // -l log level, -t tracing endpoint, -e tracing, -h help; pause's -p
    // base path and -u uid mappings): not markers.
    const SHARED_SHORTS: &[char] = &['c', 'r', 'l', 't', 'e', 'h', 'p', 'u'];
    FLAGS
        .iter()
        .filter(|f| {
            !matches!(
                f.id,
                FlagId::Runtime | FlagId::LogLevel | FlagId::Version | FlagId::Help
            )
        })
        .flat_map(|f| {
            let short = f
                .short
                .filter(|c| !SHARED_SHORTS.contains(c))
                .map(|c| format!("-{c}"));
            std::iter::once(f.long.to_string()).chain(short)
        })
}

/// Whether one argv token is a conmon-only flag (`--cid`, `--cid=X`, `-b`).
pub fn is_conmon_only_flag(token: &OsStr) -> bool {
    let Some(token) = token.to_str() else {
        return false;
    };
    let name = match token.split_once('=') {
        Some((name, _)) if name.starts_with("--") => name,
        _ => token,
    };
    conmon_only_flags().any(|f| f == name)
}

fn find_long(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.long == name)
}

fn find_short(c: char) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.short == Some(c))
}

fn lossy(v: &OsStr) -> String {
    v.to_string_lossy().into_owned()
}

/// Everything a flag may collect before the checks across flags.
#[derive(Default)]
struct Seen {
    api_version: bool,
    bundle: Option<OsString>,
    cid: Option<OsString>,
    conmon_pidfile: Option<OsString>,
    container_pidfile: Option<OsString>,
    cuuid: Option<OsString>,
    exec: bool,
    exec_attach: bool,
    exec_process_spec: Option<OsString>,
    exit_command: Option<OsString>,
    exit_command_args: Vec<OsString>,
    exit_delay: Option<OsString>,
    exit_dir: Option<OsString>,
    full_attach: bool,
    help: bool,
    leave_stdin_open: bool,
    log_global_size_max: Option<OsString>,
    log_level: Option<OsString>,
    log_paths: Vec<OsString>,
    log_size_max: Option<OsString>,
    log_tag: Option<OsString>,
    name: Option<OsString>,
    no_container_partial_message: bool,
    no_new_keyring: bool,
    no_pivot: bool,
    no_sync_log: bool,
    persist_dir: Option<OsString>,
    replace_listen_pid: bool,
    restore: Option<OsString>,
    runtime: Option<OsString>,
    runtime_args: Vec<OsString>,
    runtime_opts: Vec<OsString>,
    sdnotify_socket: Option<OsString>,
    socket_dir_path: Option<OsString>,
    stdin: bool,
    sync: bool,
    syslog: bool,
    systemd_cgroup: bool,
    terminal: bool,
    timeout: Option<OsString>,
    version: bool,
    positionals: Vec<OsString>,
}

fn set_once(
    slot: &mut Option<OsString>,
    flag: &'static str,
    value: OsString,
) -> Result<(), ConmonCliError> {
    if let Some(first) = slot {
        return Err(ConmonCliError::Repeated {
            flag,
            first: lossy(first),
            second: lossy(&value),
        });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses conmon's arguments (without argv[0]).
pub fn parse(args: &[OsString]) -> Result<ConmonCommand, ConmonCliError> {
    let mut seen = Seen::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else {
            // Not UTF-8, so no flag of ours: a value nobody asked for.
            if arg.as_encoded_bytes().starts_with(b"-") {
                return Err(ConmonCliError::UnknownFlag(lossy(arg)));
            }
            seen.positionals.push(arg.clone());
            continue;
        };
        if text == "--" {
            seen.positionals.extend(rest.by_ref().cloned());
            break;
        }
        let (spec, inline) = if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(OsString::from(value))),
                None => (long, None),
            };
            let name = format!("--{name}");
            match find_long(&name) {
                Some(spec) => (spec, inline),
                None => return Err(ConmonCliError::UnknownFlag(name)),
            }
        } else if text.len() > 1 && text.starts_with('-') {
            let mut chars = text[1..].chars();
            let c = chars.next().expect("token longer than '-'");
            // glib's `-?` is its help too.
            let spec = if c == '?' {
                find_short('h')
            } else {
                find_short(c)
            };
            match (spec, chars.next()) {
                (Some(spec), None) => (spec, None),
                _ => return Err(ConmonCliError::UnknownFlag(text.to_string())),
            }
        } else {
            seen.positionals.push(arg.clone());
            continue;
        };
        let value = match (spec.takes, inline) {
            (Takes::Nothing, None) => None,
            (Takes::Nothing, Some(v)) => {
                return Err(ConmonCliError::UnexpectedValue {
                    flag: spec.long,
                    value: lossy(&v),
                })
            }
            (Takes::Value, Some(v)) => Some(v),
            (Takes::Value, None) => match rest.next() {
                Some(v) => Some(v.clone()),
                None => return Err(ConmonCliError::MissingValue { flag: spec.long }),
            },
        };
        apply(&mut seen, spec, value)?;
    }
    if seen.help {
        return Ok(ConmonCommand::Help);
    }
    if seen.version {
        return Ok(ConmonCommand::Version);
    }
    validate(seen).map(|c| ConmonCommand::Run(Box::new(c)))
}

fn apply(seen: &mut Seen, spec: &Flag, value: Option<OsString>) -> Result<(), ConmonCliError> {
    let flag = spec.long;
    let v = || value.clone().expect("flag takes a value");
    match spec.id {
        FlagId::ApiVersion => seen.api_version = true,
        FlagId::Bundle => set_once(&mut seen.bundle, flag, v())?,
        FlagId::Cid => set_once(&mut seen.cid, flag, v())?,
        FlagId::ConmonPidfile => set_once(&mut seen.conmon_pidfile, flag, v())?,
        FlagId::ContainerPidfile => set_once(&mut seen.container_pidfile, flag, v())?,
        FlagId::Cuuid => set_once(&mut seen.cuuid, flag, v())?,
        FlagId::Exec => seen.exec = true,
        FlagId::ExecAttach => seen.exec_attach = true,
        FlagId::ExecProcessSpec => set_once(&mut seen.exec_process_spec, flag, v())?,
        FlagId::ExitCommand => set_once(&mut seen.exit_command, flag, v())?,
        FlagId::ExitCommandArg => seen.exit_command_args.push(v()),
        FlagId::ExitDelay => set_once(&mut seen.exit_delay, flag, v())?,
        FlagId::ExitDir => set_once(&mut seen.exit_dir, flag, v())?,
        FlagId::FullAttach => seen.full_attach = true,
        FlagId::Help => seen.help = true,
        FlagId::LeaveStdinOpen => seen.leave_stdin_open = true,
        FlagId::LogGlobalSizeMax => set_once(&mut seen.log_global_size_max, flag, v())?,
        FlagId::LogLevel => set_once(&mut seen.log_level, flag, v())?,
        FlagId::LogPath => seen.log_paths.push(v()),
        FlagId::LogSizeMax => set_once(&mut seen.log_size_max, flag, v())?,
        FlagId::LogTag => set_once(&mut seen.log_tag, flag, v())?,
        FlagId::Name => set_once(&mut seen.name, flag, v())?,
        FlagId::NoContainerPartialMessage => seen.no_container_partial_message = true,
        FlagId::NoNewKeyring => seen.no_new_keyring = true,
        FlagId::NoPivot => seen.no_pivot = true,
        FlagId::NoSyncLog => seen.no_sync_log = true,
        FlagId::PersistDir => set_once(&mut seen.persist_dir, flag, v())?,
        FlagId::ReplaceListenPid => seen.replace_listen_pid = true,
        FlagId::Restore => set_once(&mut seen.restore, flag, v())?,
        FlagId::Runtime => set_once(&mut seen.runtime, flag, v())?,
        FlagId::RuntimeArg => seen.runtime_args.push(v()),
        FlagId::RuntimeOpt => seen.runtime_opts.push(v()),
        FlagId::SdnotifySocket => set_once(&mut seen.sdnotify_socket, flag, v())?,
        FlagId::SocketDirPath => set_once(&mut seen.socket_dir_path, flag, v())?,
        FlagId::Stdin => seen.stdin = true,
        FlagId::Sync => seen.sync = true,
        FlagId::Syslog => seen.syslog = true,
        FlagId::SystemdCgroup => seen.systemd_cgroup = true,
        FlagId::Terminal => seen.terminal = true,
        FlagId::Timeout => set_once(&mut seen.timeout, flag, v())?,
        FlagId::Version => seen.version = true,
        // conmon's, but neither client passes them (the specs' "never
        // passed" rows) and ringmon does not implement them: refusing is
        // better than running without what they ask for.
        FlagId::RestoreArg | FlagId::SeccompNotifyPlugins | FlagId::SeccompNotifySocket => {
            return Err(ConmonCliError::Unsupported { flag })
        }
    }
    Ok(())
}

fn utf8(flag: &'static str, v: OsString) -> Result<String, ConmonCliError> {
    v.into_string().map_err(|v| ConmonCliError::NotUtf8 {
        flag,
        value: lossy(&v),
    })
}

fn non_empty(flag: &'static str, v: OsString) -> Result<String, ConmonCliError> {
    let s = utf8(flag, v)?;
    if s.is_empty() {
        return Err(ConmonCliError::Empty { flag });
    }
    Ok(s)
}

fn int(flag: &'static str, v: &OsStr) -> Result<i64, ConmonCliError> {
    let text = v.to_str().ok_or_else(|| ConmonCliError::NotANumber {
        flag,
        value: lossy(v),
    })?;
    text.trim()
        .parse::<i64>()
        .map_err(|_| ConmonCliError::NotANumber {
            flag,
            value: text.to_string(),
        })
}

/// A count of seconds conmon keeps in a C `int`.
fn seconds(flag: &'static str, v: &OsStr) -> Result<Duration, ConmonCliError> {
    let n = int(flag, v)?;
    if n < 0 {
        return Err(ConmonCliError::Negative {
            flag,
            value: lossy(v),
        });
    }
    if n > i64::from(i32::MAX) {
        return Err(ConmonCliError::TooLarge {
            flag,
            value: lossy(v),
            max: i64::from(i32::MAX),
        });
    }
    Ok(Duration::from_secs(n as u64))
}

/// A byte limit; conmon reads ≤ 0 as "no limit".
fn size_limit(flag: &'static str, v: &OsStr) -> Result<Option<u64>, ConmonCliError> {
    let n = int(flag, v)?;
    Ok(u64::try_from(n).ok().filter(|n| *n > 0))
}

fn log_level(v: OsString) -> Result<ConmonLogLevel, ConmonCliError> {
    const FLAG: &str = "--log-level";
    let name = utf8(FLAG, v)?;
    Ok(match name.to_ascii_lowercase().as_str() {
        "trace" => ConmonLogLevel::Trace,
        "debug" => ConmonLogLevel::Debug,
        "info" => ConmonLogLevel::Info,
        "warn" | "warning" => ConmonLogLevel::Warning,
        "error" => ConmonLogLevel::Error,
        "fatal" => ConmonLogLevel::Fatal,
        "panic" => ConmonLogLevel::Panic,
        _ => {
            return Err(ConmonCliError::UnknownLogLevel {
                flag: FLAG,
                value: name,
            })
        }
    })
}

/// One `-l` value: `DRIVER:PATH`, a driver name alone, or a bare path
/// (k8s-file). Unlike conmon, a path keeps any further colons.
pub fn parse_log_target(v: &OsStr) -> Result<LogTarget, ConmonCliError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = v.as_bytes();
    let (driver, path) = match bytes.iter().position(|b| *b == b':') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    };
    let target = match (driver, path) {
        (b"none" | b"off" | b"null", _) => LogTarget::None,
        (b"passthrough", _) => LogTarget::Passthrough,
        (b"journald", _) => LogTarget::Journald,
        (b"k8s-file", Some(path)) if !path.is_empty() => {
            LogTarget::K8sFile(PathBuf::from(OsStr::from_bytes(path)))
        }
        (b"k8s-file", _) | (b"", _) => {
            return Err(ConmonCliError::LogPathWithoutFile { value: lossy(v) })
        }
        (_, None) => LogTarget::K8sFile(PathBuf::from(v)),
        (driver, Some(_)) => {
            return Err(ConmonCliError::UnknownLogDriver {
                driver: String::from_utf8_lossy(driver).into_owned(),
                value: lossy(v),
            })
        }
    };
    Ok(target)
}

fn log_targets(values: Vec<OsString>) -> Result<Vec<LogTarget>, ConmonCliError> {
    let mut targets: Vec<LogTarget> = Vec::with_capacity(values.len());
    let mut k8s_file: Option<PathBuf> = None;
    for value in &values {
        let target = parse_log_target(value)?;
        if let LogTarget::K8sFile(path) = &target {
            if let Some(first) = &k8s_file {
                return Err(ConmonCliError::TwoK8sFiles {
                    first: first.display().to_string(),
                    second: path.display().to_string(),
                });
            }
            k8s_file = Some(path.clone());
        }
        targets.push(target);
    }
    if targets.contains(&LogTarget::Passthrough) {
        if let Some(other) = values
            .iter()
            .zip(&targets)
            .find(|(_, t)| !matches!(t, LogTarget::Passthrough | LogTarget::None))
        {
            return Err(ConmonCliError::PassthroughCombined {
                other: lossy(other.0),
            });
        }
    }
    Ok(targets)
}

fn validate(seen: Seen) -> Result<ConmonConfig, ConmonCliError> {
    let container_id = non_empty(
        "--cid",
        seen.cid.ok_or(ConmonCliError::Required { flag: "--cid" })?,
    )?;
    let runtime = seen
        .runtime
        .ok_or(ConmonCliError::Required { flag: "--runtime" })?;
    if runtime.is_empty() {
        return Err(ConmonCliError::Empty { flag: "--runtime" });
    }
    let protocol = if seen.api_version {
        SyncProtocol::Data
    } else {
        SyncProtocol::Legacy
    };
    // conmon needs the uuid except for a legacy exec, which makes no
    // attach socket and so no link to name.
    let container_uuid = match seen.cuuid {
        Some(u) => Some(non_empty("--cuuid", u)?),
        None if seen.exec && protocol == SyncProtocol::Legacy => None,
        None => return Err(ConmonCliError::Required { flag: "--cuuid" }),
    };
    let mode = if seen.exec {
        if seen.restore.is_some() {
            return Err(ConmonCliError::Conflict {
                first: "--exec",
                second: "--restore",
            });
        }
        let process_spec = seen
            .exec_process_spec
            .ok_or(ConmonCliError::Needs {
                flag: "--exec",
                needs: "--exec-process-spec",
            })?
            .into();
        ConmonMode::Exec {
            process_spec,
            attach: seen.exec_attach,
        }
    } else {
        if seen.exec_process_spec.is_some() {
            return Err(ConmonCliError::Needs {
                flag: "--exec-process-spec",
                needs: "--exec",
            });
        }
        if seen.exec_attach {
            return Err(ConmonCliError::Needs {
                flag: "--exec-attach",
                needs: "--exec",
            });
        }
        ConmonMode::Create {
            restore: seen.restore.map(PathBuf::from),
        }
    };
    if matches!(mode, ConmonMode::Exec { attach: true, .. }) && protocol == SyncProtocol::Legacy {
        return Err(ConmonCliError::Needs {
            flag: "--exec-attach",
            needs: "--api-version",
        });
    }
    let exit_command = match seen.exit_command {
        Some(path) => Some(ExitCommand {
            path: path.into(),
            args: seen.exit_command_args,
        }),
        None if !seen.exit_command_args.is_empty() => {
            return Err(ConmonCliError::Needs {
                flag: "--exit-command-arg",
                needs: "--exit-command",
            })
        }
        None => None,
    };
    let exit_delay = match seen.exit_delay {
        Some(v) => seconds("--exit-delay", &v)?,
        None => Duration::ZERO,
    };
    let timeout = match seen.timeout {
        Some(v) => Some(seconds("--timeout", &v)?).filter(|d| !d.is_zero()),
        None => None,
    };
    let log_size_max = match seen.log_size_max {
        Some(v) => size_limit("--log-size-max", &v)?,
        None => None,
    };
    let log_global_size_max = match seen.log_global_size_max {
        Some(v) => size_limit("--log-global-size-max", &v)?,
        None => None,
    };
    Ok(ConmonConfig {
        mode,
        protocol,
        container_id,
        container_uuid,
        name: seen.name.map(|n| utf8("--name", n)).transpose()?,
        runtime: runtime.into(),
        bundle: seen.bundle.map(PathBuf::from),
        container_pidfile: seen.container_pidfile.map(PathBuf::from),
        conmon_pidfile: seen.conmon_pidfile.map(PathBuf::from),
        exit_dir: seen.exit_dir.map(PathBuf::from),
        persist_dir: seen.persist_dir.map(PathBuf::from),
        socket_dir_path: seen.socket_dir_path.map(PathBuf::from),
        full_attach: seen.full_attach,
        log_targets: log_targets(seen.log_paths)?,
        log_level: seen.log_level.map(log_level).transpose()?,
        log_tag: seen.log_tag.map(|t| utf8("--log-tag", t)).transpose()?,
        log_size_max,
        log_global_size_max,
        no_sync_log: seen.no_sync_log,
        no_container_partial_message: seen.no_container_partial_message,
        syslog: seen.syslog,
        terminal: seen.terminal,
        stdin: seen.stdin,
        leave_stdin_open: seen.leave_stdin_open,
        systemd_cgroup: seen.systemd_cgroup,
        no_pivot: seen.no_pivot,
        no_new_keyring: seen.no_new_keyring,
        replace_listen_pid: seen.replace_listen_pid,
        sync: seen.sync,
        runtime_args: seen.runtime_args,
        runtime_opts: seen.runtime_opts,
        exit_command,
        exit_delay,
        timeout,
        sdnotify_socket: seen.sdnotify_socket.map(PathBuf::from),
        positionals: seen.positionals,
    })
}

/// The conmon release whose command line and behaviour ringmon's conmon mode
/// follows (the measured contracts were taken against it). It also clears
/// both clients' gates: podman wants ≥ 2.0.1; CRI-O passes `--sync` from
/// 2.0.19 and `--log-global-size-max` from 2.1.2 on, and its ExecSync relies
/// on `--sync`.
pub const CONMON_COMPAT_VERSION: &str = "2.1.6";

/// `--version` in conmon mode. podman matches the first line against
/// `^(version:|conmon version)? (\d+).(\d+).(\d+)`; CRI-O takes the third
/// whitespace-separated field as strict semver. So the line is
/// `conmon version 2.1.6+ringmon.<ringmon version>`: semver build metadata
/// names ringmon and is ignored in comparisons. The second line follows
/// conmon's (`podman info` joins it to the first with ", ").
pub fn version_text(ringmon_version: &str, commit: &str) -> String {
    let commit = if commit.is_empty() { "unknown" } else { commit };
    format!("{}commit: {commit}\n", version_line(ringmon_version))
}

/// The first line of [`version_text`]: `conmon version <semver>\n`, which
/// both podman's pattern and CRI-O's third-word semver check accept.
pub fn version_line(ringmon_version: &str) -> String {
    format!("conmon version {CONMON_COMPAT_VERSION}+ringmon.{ringmon_version}\n")
}

/// `--help` in conmon mode: the flags ringmon accepts.
pub fn help_text() -> String {
    let mut text = String::from(
        "Usage: conmon [OPTION...] - ringmon's conmon mode (a container monitor)\n\nOptions:\n",
    );
    for f in FLAGS {
        let short = f.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let value = if f.takes == Takes::Value {
            " VALUE"
        } else {
            ""
        };
        text.push_str(&format!("  {short}{}{value}\n", f.long));
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str]) -> ConmonConfig {
        match parse(&args(list)) {
            Ok(ConmonCommand::Run(c)) => *c,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    fn err(list: &[&str]) -> ConmonCliError {
        match parse(&args(list)) {
            Err(e) => e,
            Ok(c) => panic!("{list:?} parsed: {c:?}"),
        }
    }

    const ID: &str = "4f3b1c0a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
    const SESS: &str = "9a8b7c6d5e4f30211a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";

    /// podman 4.3.1 `run --rm -t` (conmon-cli-podman.md §3, §9).
    pub(crate) fn podman_create() -> Vec<String> {
        let ud = format!("/var/lib/containers/storage/overlay-containers/{ID}/userdata");
        let run = format!("/run/containers/storage/overlay-containers/{ID}/userdata");
        let mut v: Vec<String> = vec![
            "--api-version",
            "1",
            "-c",
            ID,
            "-u",
            ID,
            "-r",
            "/usr/bin/crun",
            "-b",
            &ud,
            "-p",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        v.push(format!("{run}/pidfile"));
        v.extend(
            [
                "-n",
                "web",
                "--exit-dir",
                "/run/libpod/exits",
                "--full-attach",
                "-l",
            ]
            .map(String::from),
        );
        v.push(format!("k8s-file:{ud}/ctr.log"));
        v.extend(
            [
                "--log-level",
                "warning",
                "--runtime-arg",
                "--log-format=json",
                "--runtime-arg",
                "--log",
            ]
            .map(String::from),
        );
        v.push(format!("--runtime-arg={run}/oci-log"));
        v.extend(["-t", "--conmon-pidfile"].map(String::from));
        v.push(format!("{run}/conmon.pid"));
        v.extend(
            [
                "--exit-command",
                "/usr/bin/podman",
                "--exit-command-arg",
                "--root",
                "--exit-command-arg",
                "/var/lib/containers/storage",
                "--exit-command-arg",
                "--network-config-dir",
                "--exit-command-arg",
                "",
                "--exit-command-arg",
                "container",
                "--exit-command-arg",
                "cleanup",
                "--exit-command-arg",
                "--rm",
                "--exit-command-arg",
                ID,
            ]
            .map(String::from),
        );
        v
    }

    /// podman 4.3.1 `exec -it --preserve-fds 2` (§3).
    pub(crate) fn podman_exec() -> Vec<String> {
        let b = format!("/var/lib/containers/storage/overlay-containers/{ID}/userdata/{SESS}");
        [
            "--api-version",
            "1",
            "-c",
            ID,
            "-u",
            SESS,
            "-r",
            "/usr/bin/crun",
            "-b",
            &b,
            "-p",
            &format!("{b}/exec_pid"),
            "-n",
            "web",
            "--exit-dir",
            &format!("{b}/exit"),
            "--full-attach",
            "-l",
            "none",
            "--log-level",
            "warning",
            "--runtime-arg",
            "--log-format=json",
            "--runtime-arg",
            "--log",
            &format!("--runtime-arg={b}/oci-log"),
            "--runtime-opt",
            "--preserve-fds",
            "--runtime-opt",
            "2",
            "-t",
            "-i",
            "-e",
            "--exec-attach",
            "--exec-process-spec",
            &format!("{b}/exec-process-123"),
            "--exit-command",
            "/usr/bin/podman",
            "--exit-command-arg",
            "container",
            "--exit-command-arg",
            "cleanup",
            "--exit-command-arg",
            "--exec",
            "--exit-command-arg",
            SESS,
            "--exit-command-arg",
            ID,
            "--exit-delay",
            "300",
        ]
        .map(String::from)
        .to_vec()
    }

    /// CRI-O `oci` create (conmon-cli-crio.md §3), with the optional flags.
    pub(crate) fn crio_create() -> Vec<String> {
        let run = format!("/run/containers/storage/overlay-containers/{ID}/userdata");
        let root = format!("/var/lib/containers/storage/overlay-containers/{ID}/userdata");
        [
            "-b",
            &run,
            "-c",
            ID,
            "--exit-dir",
            "/var/run/crio/exits",
            "-l",
            "/var/log/pods/ns_pod_uid/ctr/0.log",
            "--log-level",
            "debug",
            "-n",
            "k8s_ctr_pod_ns_uid_0",
            "-P",
            &format!("{run}/conmon-pidfile"),
            "-p",
            &format!("{run}/pidfile"),
            "--persist-dir",
            &root,
            "-r",
            "/usr/sbin/runc",
            "--runtime-arg",
            "--root=/run/crun",
            "--socket-dir-path",
            "/var/run/crio",
            "--syslog",
            "-u",
            ID,
            "-s",
            "--log-size-max",
            "1048576",
            "--no-sync-log",
            "--log-path",
            "journald:",
            "--no-pivot",
            "--leave-stdin-open",
            "-i",
        ]
        .map(String::from)
        .to_vec()
    }

    /// CRI-O ExecSync (conmon-cli-crio.md §3).
    pub(crate) fn crio_exec_sync() -> Vec<String> {
        [
            "-c",
            ID,
            "-n",
            "k8s_ctr_pod_ns_uid_0",
            "-r",
            "/usr/sbin/runc",
            "-p",
            "/tmp/pidfile123",
            "-e",
            "-l",
            &format!("/tmp/crio-log-{ID}456"),
            "--socket-dir-path",
            "/var/run/crio",
            "--log-level",
            "debug",
            "--sync",
            "--log-global-size-max",
            "16777216",
            "-t",
            "-T",
            "2",
            "-s",
            "--exec-process-spec",
            "/tmp/exec-process-789",
            "--runtime-arg",
            "--root=/run/crun",
        ]
        .map(String::from)
        .to_vec()
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn podman_create_parses_every_flag() {
        let c = run(&strs(&podman_create()));
        assert_eq!(c.mode, ConmonMode::Create { restore: None });
        assert_eq!(c.protocol, SyncProtocol::Data);
        assert_eq!(c.container_id, ID);
        assert_eq!(c.container_uuid.as_deref(), Some(ID));
        assert_eq!(c.runtime, PathBuf::from("/usr/bin/crun"));
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(c.exit_dir, Some(PathBuf::from("/run/libpod/exits")));
        assert!(c.full_attach && c.terminal && !c.stdin);
        assert_eq!(c.log_level, Some(ConmonLogLevel::Warning));
        assert_eq!(
            c.log_targets,
            vec![LogTarget::K8sFile(PathBuf::from(format!(
                "/var/lib/containers/storage/overlay-containers/{ID}/userdata/ctr.log"
            )))]
        );
        assert_eq!(
            c.runtime_args,
            args(&[
                "--log-format=json",
                "--log",
                &format!("/run/containers/storage/overlay-containers/{ID}/userdata/oci-log"),
            ])
        );
        let exit = c.exit_command.expect("exit command");
        assert_eq!(exit.path, PathBuf::from("/usr/bin/podman"));
        assert_eq!(
            exit.args,
            args(&[
                "--root",
                "/var/lib/containers/storage",
                "--network-config-dir",
                "",
                "container",
                "cleanup",
                "--rm",
                ID
            ])
        );
        assert!(c.conmon_pidfile.is_some() && c.container_pidfile.is_some());
        // The stray value of the boolean --api-version.
        assert_eq!(c.positionals, args(&["1"]));
    }

    #[test]
    fn podman_exec_parses_every_flag() {
        let c = run(&strs(&podman_exec()));
        let ConmonMode::Exec {
            process_spec,
            attach,
        } = &c.mode
        else {
            panic!("{:?}", c.mode)
        };
        assert!(attach);
        assert!(process_spec.ends_with("exec-process-123"));
        assert_eq!(c.container_uuid.as_deref(), Some(SESS));
        assert_eq!(c.log_targets, vec![LogTarget::None]);
        assert_eq!(c.runtime_opts, args(&["--preserve-fds", "2"]));
        assert!(c.terminal && c.stdin);
        assert_eq!(c.exit_delay, Duration::from_secs(300));
        assert_eq!(c.exit_command.expect("exit command").args.len(), 5);
    }

    #[test]
    fn crio_create_parses_every_flag() {
        let c = run(&strs(&crio_create()));
        assert_eq!(c.protocol, SyncProtocol::Legacy);
        assert_eq!(c.mode, ConmonMode::Create { restore: None });
        assert_eq!(
            c.log_targets,
            vec![
                LogTarget::K8sFile(PathBuf::from("/var/log/pods/ns_pod_uid/ctr/0.log")),
                LogTarget::Journald
            ]
        );
        assert!(c
            .conmon_pidfile
            .as_ref()
            .unwrap()
            .ends_with("conmon-pidfile"));
        assert!(c.persist_dir.is_some());
        assert_eq!(c.socket_dir_path, Some(PathBuf::from("/var/run/crio")));
        assert!(c.syslog && c.systemd_cgroup && c.no_sync_log && c.no_pivot);
        assert!(c.leave_stdin_open && c.stdin && !c.terminal);
        assert_eq!(c.log_size_max, Some(1_048_576));
        assert_eq!(c.runtime_args, args(&["--root=/run/crun"]));
        assert_eq!(c.log_level, Some(ConmonLogLevel::Debug));
        assert!(c.exit_command.is_none() && c.positionals.is_empty());
    }

    #[test]
    fn crio_exec_sync_needs_no_cuuid() {
        let c = run(&strs(&crio_exec_sync()));
        assert_eq!(c.protocol, SyncProtocol::Legacy);
        assert_eq!(c.container_uuid, None);
        assert!(c.sync && c.terminal && c.systemd_cgroup);
        assert_eq!(c.timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.log_global_size_max, Some(16_777_216));
        assert!(matches!(c.mode, ConmonMode::Exec { attach: false, .. }));
        assert_eq!(c.bundle, None);
    }

    #[test]
    fn version_and_help_come_before_required_flags() {
        assert_eq!(parse(&args(&["--version"])), Ok(ConmonCommand::Version));
        assert_eq!(
            parse(&args(&["--cid", "x", "--version"])),
            Ok(ConmonCommand::Version)
        );
        for h in ["--help", "-h", "-?"] {
            assert_eq!(parse(&args(&[h])), Ok(ConmonCommand::Help));
        }
        // An unknown flag is still an error, as in conmon's parser.
        assert_eq!(
            parse(&args(&["--version", "--bogus"])),
            Err(ConmonCliError::UnknownFlag("--bogus".into()))
        );
    }

    const MIN: &[&str] = &["-c", "ctr", "-u", "ctr", "-r", "/bin/true"];

    fn with(extra: &[&str]) -> Vec<String> {
        MIN.iter().chain(extra).map(|s| s.to_string()).collect()
    }

    #[test]
    fn value_forms() {
        let c = run(&[
            "--cid=ctr",
            "--cuuid",
            "u",
            "--runtime=/bin/true",
            "-T",
            "5",
        ]);
        assert_eq!(c.container_id, "ctr");
        assert_eq!(c.runtime, PathBuf::from("/bin/true"));
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
        let c = run(&strs(&with(&["--timeout=0", "--exit-delay=0"])));
        assert_eq!(c.timeout, None);
        // A value may look like a flag.
        let c = run(&strs(&with(&[
            "--runtime-opt",
            "-x",
            "--runtime-arg",
            "--",
        ])));
        assert_eq!(c.runtime_opts, args(&["-x"]));
        assert_eq!(c.runtime_args, args(&["--"]));
        // `--` ends the flags.
        let c = run(&strs(&with(&["--", "--not-a-flag"])));
        assert_eq!(c.positionals, args(&["--not-a-flag"]));
    }

    #[test]
    fn unknown_flags_are_named() {
        assert_eq!(
            err(&strs(&with(&["--frobnicate"]))),
            ConmonCliError::UnknownFlag("--frobnicate".into())
        );
        assert_eq!(
            err(&strs(&with(&["--frobnicate=1"]))),
            ConmonCliError::UnknownFlag("--frobnicate".into())
        );
        assert_eq!(
            err(&strs(&with(&["-Z"]))),
            ConmonCliError::UnknownFlag("-Z".into())
        );
        // No clustering: neither client uses it.
        assert_eq!(
            err(&strs(&with(&["-ti"]))),
            ConmonCliError::UnknownFlag("-ti".into())
        );
        assert_eq!(
            err(&strs(&with(&["--seccomp-notify-socket", "/x"]))),
            ConmonCliError::Unsupported {
                flag: "--seccomp-notify-socket"
            }
        );
    }

    #[test]
    fn required_flags_are_named() {
        assert_eq!(
            err(&["-u", "x", "-r", "/bin/true"]),
            ConmonCliError::Required { flag: "--cid" }
        );
        assert_eq!(
            err(&["-c", "x", "-u", "x"]),
            ConmonCliError::Required { flag: "--runtime" }
        );
        assert_eq!(
            err(&["-c", "x", "-r", "/bin/true"]),
            ConmonCliError::Required { flag: "--cuuid" }
        );
        // podman's exec (api version 1) still needs the session id.
        assert_eq!(
            err(&[
                "--api-version",
                "-c",
                "x",
                "-r",
                "/r",
                "-e",
                "--exec-process-spec",
                "/s"
            ]),
            ConmonCliError::Required { flag: "--cuuid" }
        );
        assert_eq!(
            err(&["-c", "x", "-r", "/r", "-e"]),
            ConmonCliError::Needs {
                flag: "--exec",
                needs: "--exec-process-spec"
            }
        );
        assert_eq!(
            err(&["-c", "", "-u", "x", "-r", "/r"]),
            ConmonCliError::Empty { flag: "--cid" }
        );
    }

    #[test]
    fn values_are_checked_and_named() {
        assert_eq!(
            err(&strs(&with(&["--log-size-max", "12k"]))),
            ConmonCliError::NotANumber {
                flag: "--log-size-max",
                value: "12k".into()
            }
        );
        assert_eq!(
            err(&strs(&with(&["-T", "-3"]))),
            ConmonCliError::Negative {
                flag: "--timeout",
                value: "-3".into()
            }
        );
        assert_eq!(
            err(&strs(&with(&["--exit-delay", "99999999999"]))),
            ConmonCliError::TooLarge {
                flag: "--exit-delay",
                value: "99999999999".into(),
                max: 2_147_483_647
            }
        );
        assert_eq!(
            err(&strs(&with(&["--log-level", "loud"]))),
            ConmonCliError::UnknownLogLevel {
                flag: "--log-level",
                value: "loud".into()
            }
        );
        assert_eq!(
            err(&strs(&with(&["-b"]))),
            ConmonCliError::MissingValue { flag: "--bundle" }
        );
        assert_eq!(
            err(&strs(&with(&["--sync=yes"]))),
            ConmonCliError::UnexpectedValue {
                flag: "--sync",
                value: "yes".into()
            }
        );
        assert_eq!(
            err(&strs(&with(&["-n", "a", "--name", "b"]))),
            ConmonCliError::Repeated {
                flag: "--name",
                first: "a".into(),
                second: "b".into()
            }
        );
        assert_eq!(
            err(&strs(&with(&["--exit-command-arg", "x"]))),
            ConmonCliError::Needs {
                flag: "--exit-command-arg",
                needs: "--exit-command"
            }
        );
        // conmon reads a size limit ≤ 0 as none.
        let c = run(&strs(&with(&[
            "--log-size-max",
            "-1",
            "--log-global-size-max",
            "0",
        ])));
        assert_eq!((c.log_size_max, c.log_global_size_max), (None, None));
    }

    #[test]
    fn log_targets_by_driver() {
        let t = |s: &str| parse_log_target(OsStr::new(s));
        assert_eq!(
            t("k8s-file:/a/b:c"),
            Ok(LogTarget::K8sFile("/a/b:c".into()))
        );
        assert_eq!(t("/a/b.log"), Ok(LogTarget::K8sFile("/a/b.log".into())));
        assert_eq!(t("journald"), Ok(LogTarget::Journald));
        assert_eq!(t("journald:"), Ok(LogTarget::Journald));
        assert_eq!(t("none"), Ok(LogTarget::None));
        assert_eq!(t("passthrough"), Ok(LogTarget::Passthrough));
        assert_eq!(
            t("k8s-file:"),
            Err(ConmonCliError::LogPathWithoutFile {
                value: "k8s-file:".into()
            })
        );
        assert_eq!(
            t("json-file:/x"),
            Err(ConmonCliError::UnknownLogDriver {
                driver: "json-file".into(),
                value: "json-file:/x".into()
            })
        );
        assert_eq!(
            err(&strs(&with(&["-l", "/a", "-l", "k8s-file:/b"]))),
            ConmonCliError::TwoK8sFiles {
                first: "/a".into(),
                second: "/b".into()
            }
        );
        assert_eq!(
            err(&strs(&with(&["-l", "passthrough", "-l", "journald"]))),
            ConmonCliError::PassthroughCombined {
                other: "journald".into()
            }
        );
    }

    #[test]
    fn non_utf8_path_is_kept() {
        use std::os::unix::ffi::OsStringExt;
        let mut list = args(MIN);
        list.push("-l".into());
        list.push(OsString::from_vec(b"k8s-file:/log/\xff.log".to_vec()));
        let Ok(ConmonCommand::Run(c)) = parse(&list) else {
            panic!()
        };
        assert_eq!(
            c.log_targets,
            vec![LogTarget::K8sFile(PathBuf::from(OsString::from_vec(
                b"/log/\xff.log".to_vec()
            )))]
        );
    }

    /// podman's rule (containers/common probeConmon, conmon-cli-podman.md §1)
    /// and CRI-O's (conmon-cli-crio.md §1), written out here.
    pub(crate) fn check_version_output(out: &str) {
        let first = out.lines().next().expect("a first line");
        let rest = first
            .strip_prefix("conmon version ")
            .expect("podman: first line starts with 'conmon version '");
        let nums: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse().expect("digits"))
            .collect();
        assert!(nums >= vec![2, 1, 2], "below CRI-O's 2.1.2 gate: {nums:?}");
        let third = out.split_whitespace().nth(2).expect("CRI-O: three fields");
        assert!(is_strict_semver(third), "CRI-O: '{third}' is not semver");
    }

    /// Strict semver 2.0.0 (what blang/semver.New accepts).
    pub(crate) fn is_strict_semver(v: &str) -> bool {
        let (v, build) = match v.split_once('+') {
            Some((v, b)) => (v, Some(b)),
            None => (v, None),
        };
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let numeric = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && (s == "0" || !s.starts_with('0'))
        };
        let ident =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let parts: Vec<&str> = core.split('.').collect();
        parts.len() == 3
            && parts.iter().all(|p| numeric(p))
            && pre.map_or(true, |p| p.split('.').all(ident))
            && build.map_or(true, |b| b.split('.').all(ident))
    }

    #[test]
    fn version_text_satisfies_podman_and_crio() {
        let text = version_text("0.2.0", "abc123");
        assert_eq!(text, "conmon version 2.1.6+ringmon.0.2.0\ncommit: abc123\n");
        check_version_output(&text);
        check_version_output(&version_text(
            env!("CARGO_PKG_VERSION"),
            crate::version::BUILD.commit,
        ));
        assert!(version_text("0.2.0", "").ends_with("commit: unknown\n"));
        assert!(
            !is_strict_semver("v2.1.6") && !is_strict_semver("2.1") && !is_strict_semver("2.1.6,")
        );
    }

    #[test]
    fn help_lists_every_flag() {
        let help = help_text();
        for f in FLAGS {
            assert!(help.contains(f.long), "{}", f.long);
        }
    }
}
