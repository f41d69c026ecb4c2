//! OCI runtime argv construction (spec §3.0.2, §3.2, §3.3). Pure functions.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::cli::LogLevel;

/// Which cgroup manager the runtime is told to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CgroupManager {
    /// `--systemd-cgroup` (the wire default).
    #[default]
    Systemd,
    Cgroupfs,
}

/// Timeout of one runtime invocation unless the server is told otherwise:
/// far above a healthy create with slow hooks (seconds), and still an end
/// for one that hangs.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);

/// Server-wide facts that shape every runtime invocation.
#[derive(Debug)]
pub struct RuntimeConfig {
    pub path: PathBuf,
    pub root: Option<PathBuf>,
    pub log_level: LogLevel,
    /// How long one runtime invocation may run before it is killed.
    pub timeout: Duration,
    /// Whether crun knows `--log-level` (crun < 1.9, e.g. Debian 12's 1.8.1,
    /// rejects it and every create would fail). Probed on first use.
    crun_log_level: OnceLock<bool>,
    /// Whether crun gets ringmon's own `--log=journald:<id>` (and log
    /// level). conmon mode turns it off: its caller passes crun's logging
    /// as runtime args (podman reads crun's errors from its own `--log`
    /// file), and a second `--log` would take its place.
    implicit_crun_logging: bool,
}

impl RuntimeConfig {
    pub fn new(path: PathBuf, root: Option<PathBuf>, log_level: LogLevel) -> Self {
        RuntimeConfig {
            path,
            root,
            log_level,
            timeout: DEFAULT_TIMEOUT,
            crun_log_level: OnceLock::new(),
            implicit_crun_logging: true,
        }
    }

    /// The same configuration without ringmon's own crun logging flags (see
    /// `implicit_crun_logging`).
    pub fn without_implicit_crun_logging(mut self) -> Self {
        self.implicit_crun_logging = false;
        self
    }

    /// The same configuration with another per-invocation timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn is_crun(&self) -> bool {
        self.path.file_name().is_some_and(|n| n == "crun")
    }

    fn crun_has_log_level(&self) -> bool {
        *self.crun_log_level.get_or_init(|| {
            std::process::Command::new(&self.path)
                .arg("--help")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("--log-level"))
                .unwrap_or(false)
        })
    }

    /// Global arguments placed before the runtime's subcommand. Unlike
    /// upstream, `--root` and `--systemd-cgroup` are emitted once.
    pub fn global_args(&self, container_id: &str, cgroup: CgroupManager) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if self.implicit_crun_logging && self.is_crun() {
            args.push(format!("--log=journald:{container_id}").into());
            let level = if self.crun_has_log_level() {
                self.log_level
            } else {
                LogLevel::Off
            };
            match level {
                LogLevel::Debug => args.push("--log-level=debug".into()),
                LogLevel::Error => args.push("--log-level=error".into()),
                LogLevel::Warn => args.push("--log-level=warning".into()),
                LogLevel::Trace | LogLevel::Info | LogLevel::Off => {}
            }
        }
        if let Some(root) = &self.root {
            let mut a = OsString::from("--root=");
            a.push(root);
            args.push(a);
        }
        if cgroup == CgroupManager::Systemd {
            args.push("--systemd-cgroup".into());
        }
        args
    }

    /// argv (without the program) of `runtime create`.
    pub fn create_args(&self, c: &CreateArgs<'_>) -> Vec<OsString> {
        let mut args = self.global_args(c.id, c.cgroup);
        args.extend(c.global_args.iter().map(OsString::from));
        args.push("create".into());
        args.push("--bundle".into());
        args.push(c.bundle.into());
        args.push("--pid-file".into());
        args.push(c.pid_file.into());
        args.extend(c.command_args.iter().map(OsString::from));
        if let Some(sock) = c.console_socket {
            let mut a = OsString::from("--console-socket=");
            a.push(sock);
            args.push(a);
        }
        args.push(c.id.into());
        args
    }

    /// argv (without the program) of `runtime delete --force <id>`, which
    /// removes what an abandoned or failed-after-create container left in
    /// the runtime.
    pub fn delete_args(&self, id: &str, cgroup: CgroupManager, global: &[String]) -> Vec<OsString> {
        let mut args = self.global_args(id, cgroup);
        args.extend(global.iter().map(OsString::from));
        args.extend(["delete".into(), "--force".into(), id.into()]);
        args
    }

    /// argv (without the program) of `runtime exec -d` for execSync:
    /// `<global> exec -d [--console-socket=<sock> --tty] --pid-file=<file>
    /// <id> <command...>` (`--pid-file=` joined, unlike `create`).
    pub fn exec_args(&self, e: &ExecArgs<'_>) -> Vec<OsString> {
        let mut args = self.global_args(e.id, e.cgroup);
        args.extend(e.global_args.iter().map(OsString::from));
        args.push("exec".into());
        args.push("-d".into());
        if let Some(sock) = e.console_socket {
            let mut a = OsString::from("--console-socket=");
            a.push(sock);
            args.push(a);
            args.push("--tty".into());
        }
        let mut a = OsString::from("--pid-file=");
        a.push(e.pid_file);
        args.push(a);
        for (key, value) in e.process_env {
            args.push(format!("--env={key}={value}").into());
        }
        if e.preserve_fds > 0 {
            args.push(format!("--preserve-fds={}", e.preserve_fds).into());
        }
        if let Some(spec) = e.process_spec {
            let mut a = OsString::from("--process=");
            a.push(spec);
            args.push(a);
        }
        args.extend(e.options.iter().map(OsString::from));
        args.push(e.id.into());
        args.extend(e.command.iter().map(OsString::from));
        args
    }
}

/// The per-request parts of a `create` invocation.
pub struct CreateArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub cgroup: CgroupManager,
    pub global_args: &'a [String],
    pub command_args: &'a [String],
    pub console_socket: Option<&'a Path>,
}

/// The per-request parts of an `exec -d` invocation (execSync, exec
/// sessions).
pub struct ExecArgs<'a> {
    pub id: &'a str,
    pub pid_file: &'a Path,
    pub cgroup: CgroupManager,
    /// The argv (empty with `process_spec`).
    pub command: &'a [String],
    /// Terminal mode: where the runtime sends the pty master.
    pub console_socket: Option<&'a Path>,
    /// Added to the process's environment.
    pub process_env: &'a [(String, String)],
    /// fds 3.. the runtime passes on to the process.
    pub preserve_fds: usize,
    /// An OCI process JSON file instead of `command`.
    pub process_spec: Option<&'a Path>,
    /// Placed before `exec` (conmon's `--runtime-arg`s).
    pub global_args: &'a [String],
    /// Options of `exec` placed after ringmon's own (conmon's
    /// `--runtime-opt`s).
    pub options: &'a [String],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str, root: Option<&str>, level: LogLevel) -> RuntimeConfig {
        let c = RuntimeConfig::new(path.into(), root.map(PathBuf::from), level);
        // Pretend a crun that knows --log-level, without running anything.
        let _ = c.crun_log_level.set(true);
        c
    }

    fn strs(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn runc_create_with_systemd_and_root() {
        let c = cfg("/usr/sbin/runc", Some("/run/r"), LogLevel::Debug);
        let args = c.create_args(&CreateArgs {
            id: "abc",
            bundle: Path::new("/b"),
            pid_file: Path::new("/b/pidfile"),
            cgroup: CgroupManager::Systemd,
            global_args: &["--debug".into()],
            command_args: &["--preserve-fds".into(), "2".into()],
            console_socket: None,
        });
        assert_eq!(
            strs(args),
            [
                "--root=/run/r",
                "--systemd-cgroup",
                "--debug",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/pidfile",
                "--preserve-fds",
                "2",
                "abc"
            ]
        );
    }

    #[test]
    fn crun_terminal_cgroupfs() {
        let c = cfg("/usr/bin/crun", None, LogLevel::Warn);
        let args = c.create_args(&CreateArgs {
            id: "x",
            bundle: Path::new("/b"),
            pid_file: Path::new("/b/pidfile"),
            cgroup: CgroupManager::Cgroupfs,
            global_args: &[],
            command_args: &[],
            console_socket: Some(Path::new("/tmp/s.sock")),
        });
        assert_eq!(
            strs(args),
            [
                "--log=journald:x",
                "--log-level=warning",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/pidfile",
                "--console-socket=/tmp/s.sock",
                "x"
            ]
        );
    }

    #[test]
    fn old_crun_gets_no_level_flag() {
        let c = RuntimeConfig::new("/x/crun".into(), None, LogLevel::Debug);
        let _ = c.crun_log_level.set(false);
        assert_eq!(
            strs(c.global_args("id", CgroupManager::Cgroupfs)),
            ["--log=journald:id"]
        );
    }

    #[test]
    fn crun_info_level_adds_no_level_flag() {
        let c = cfg("/x/crun", None, LogLevel::Info);
        assert_eq!(
            strs(c.global_args("id", CgroupManager::Cgroupfs)),
            ["--log=journald:id"]
        );
    }

    #[test]
    fn delete_forces_and_keeps_the_global_args() {
        let c = cfg("/usr/sbin/runc", Some("/run/r"), LogLevel::Info);
        assert_eq!(
            strs(c.delete_args("abc", CgroupManager::Cgroupfs, &["--debug".into()])),
            ["--root=/run/r", "--debug", "delete", "--force", "abc"]
        );
    }

    #[test]
    fn runc_exec_pipes_systemd() {
        let c = cfg("/usr/sbin/runc", Some("/run/r"), LogLevel::Debug);
        let args = c.exec_args(&ExecArgs {
            id: "abc",
            pid_file: Path::new("/run/d/exec_syncXpid"),
            cgroup: CgroupManager::Systemd,
            command: &[
                "/busybox".into(),
                "echo".into(),
                "-n".into(),
                "hi there".into(),
            ],
            console_socket: None,
            process_env: &[],
            preserve_fds: 0,
            process_spec: None,
            global_args: &[],
            options: &[],
        });
        assert_eq!(
            strs(args),
            [
                "--root=/run/r",
                "--systemd-cgroup",
                "exec",
                "-d",
                "--pid-file=/run/d/exec_syncXpid",
                "abc",
                "/busybox",
                "echo",
                "-n",
                "hi there"
            ]
        );
    }

    #[test]
    fn crun_exec_terminal_cgroupfs() {
        let c = cfg("/usr/bin/crun", None, LogLevel::Error);
        let args = c.exec_args(&ExecArgs {
            id: "x",
            pid_file: Path::new("/d/p"),
            cgroup: CgroupManager::Cgroupfs,
            command: &["sh".into()],
            console_socket: Some(Path::new("/tmp/t.sock")),
            process_env: &[],
            preserve_fds: 0,
            process_spec: None,
            global_args: &[],
            options: &[],
        });
        assert_eq!(
            strs(args),
            [
                "--log=journald:x",
                "--log-level=error",
                "exec",
                "-d",
                "--console-socket=/tmp/t.sock",
                "--tty",
                "--pid-file=/d/p",
                "x",
                "sh"
            ]
        );
    }

    #[test]
    fn exec_session_with_env_fds_and_a_process_spec() {
        let c = cfg("/usr/sbin/runc", None, LogLevel::Info);
        let args = c.exec_args(&ExecArgs {
            id: "c",
            pid_file: Path::new("/p"),
            cgroup: CgroupManager::Cgroupfs,
            command: &[],
            console_socket: None,
            process_env: &[("A".into(), "1 2".into()), ("B".into(), "".into())],
            preserve_fds: 2,
            process_spec: Some(Path::new("/run/s/process.json")),
            global_args: &[],
            options: &[],
        });
        assert_eq!(
            strs(args),
            [
                "exec",
                "-d",
                "--pid-file=/p",
                "--env=A=1 2",
                "--env=B=",
                "--preserve-fds=2",
                "--process=/run/s/process.json",
                "c"
            ]
        );
    }

    #[test]
    fn exec_command_words_follow_the_id_verbatim() {
        // Words that look like runtime flags must stay after the id, where
        // the runtime treats them as the command.
        let c = cfg("/usr/sbin/runc", None, LogLevel::Info);
        let args = c.exec_args(&ExecArgs {
            id: "c",
            pid_file: Path::new("/p"),
            cgroup: CgroupManager::Cgroupfs,
            command: &["--tty".into(), "".into()],
            console_socket: None,
            process_env: &[],
            preserve_fds: 0,
            process_spec: None,
            global_args: &[],
            options: &[],
        });
        assert_eq!(
            strs(args),
            ["exec", "-d", "--pid-file=/p", "c", "--tty", ""]
        );
    }
}
