//! Which role a command line asks for: the conmon-rs server (with its
//! `pause` subcommand) or the C conmon's command line (podman's
//! `conmon_path`, CRI-O's `oci` handlers). Decided from argv alone.

use std::ffi::OsString;
use std::path::Path;

use crate::conmon::cli::is_conmon_only_flag;

/// The two command-line families ringmon answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// conmon-rs's flags (`crate::cli::Cli`), including `pause`.
    ConmonRs,
    /// conmon's flags (`crate::conmon::cli`).
    Conmon,
    /// `ringmon ctl ...`: the operator's client (`crate::ctl`).
    Ctl,
}

/// The program name that always selects conmon mode (a symlink, or a copy
/// installed as `conmon`).
pub const CONMON_PROGRAM_NAME: &str = "conmon";

/// conmon-rs's internal subcommand (`crate::cli::Command::Pause`).
const PAUSE_SUBCOMMAND: &str = "pause";

/// The operator's client (`crate::ctl`), always the first argument.
pub const CTL_SUBCOMMAND: &str = "ctl";

/// Conmon mode when argv[0]'s file name is `conmon`, or when any argument is
/// a flag only conmon has (`--cid`, `--bundle`/`-b`, `--exit-dir`,
/// `--api-version`, `-n`, `-P`, ...; `crate::conmon::cli::conmon_only_flags`).
/// Otherwise, and always for the internal `pause` subcommand (first
/// argument `pause`), conmon-rs, so a bare `ringmon --version` keeps conmon-rs's text.
///
/// Why this cannot take a conmon-rs command line for conmon's: the markers
/// exclude every flag conmon-rs and its `pause` subcommand define, long or
/// short (`-c` is conmon-rs's hidden `--cgroup-manager`, `-l` its
/// `--log-level`, `-r`, `-t`, `-e`, `-h`, pause's `-p` and `-u`; a unit test
/// checks the list against clap's own definition). The Go client's argv
/// (conmon-rpc-spec.md §1.6: `--runtime`, `--runtime-dir`, `--runtime-root`,
/// `--log-level`, `--log-driver`, `--enable-tracing`, `--tracing-endpoint`,
/// old clients' `--cgroup-manager`) has only those flags, and a value there
/// can only equal a marker if it starts with `-`, which clap refuses as a
/// value anyway. Conversely every argv podman and CRI-O build for a
/// container or exec carries markers (`--api-version`, `-b`, `-n`,
/// `--exit-dir`, `--sync`, `--exec-process-spec`...); only their bare
/// `--version` probe has none, and it gets conmon's answer through the
/// `conmon` program name.
pub fn detect(argv: &[OsString]) -> Role {
    // The server starts `pause` through its own executable, whose file may
    // be the one installed as `conmon`; no conmon client puts a positional
    // argument first.
    if argv.get(1).is_some_and(|a| a == PAUSE_SUBCOMMAND) {
        return Role::ConmonRs;
    }
    // No conmon client puts a positional argument first either; ctl's own
    // flags (exec's `-i`, `-t`) may look like conmon's.
    if argv.get(1).is_some_and(|a| a == CTL_SUBCOMMAND) {
        return Role::Ctl;
    }
    let named_conmon = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|name| name == CONMON_PROGRAM_NAME);
    if named_conmon || argv.iter().skip(1).any(|a| is_conmon_only_flag(a)) {
        Role::Conmon
    } else {
        Role::ConmonRs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conmon::cli::conmon_only_flags;
    use crate::conmon::cli::tests as fixtures;
    use clap::{CommandFactory, Parser};

    fn argv(program: &str, rest: &[String]) -> Vec<OsString> {
        std::iter::once(program.to_string())
            .chain(rest.iter().cloned())
            .map(OsString::from)
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn client_argvs_from_the_specs_are_conmon() {
        for rest in [
            fixtures::podman_create(),
            fixtures::podman_exec(),
            fixtures::crio_create(),
            fixtures::crio_exec_sync(),
        ] {
            assert_eq!(detect(&argv("/usr/local/bin/ringmon", &rest)), Role::Conmon);
            assert_eq!(detect(&argv("/usr/bin/conmon", &rest)), Role::Conmon);
        }
    }

    #[test]
    fn ctl_first_is_the_client_even_with_conmon_like_flags() {
        let exec = strings(&["ctl", "exec", "-i", "-t", "abc", "--", "sh"]);
        assert_eq!(detect(&argv("/usr/bin/ringmon", &exec)), Role::Ctl);
        assert_eq!(detect(&argv("/usr/bin/conmon", &exec)), Role::Ctl);
        // Only as the first argument.
        let later = strings(&["--runtime-dir", "/x", "ctl"]);
        assert_eq!(detect(&argv("ringmon", &later)), Role::ConmonRs);
    }

    #[test]
    fn version_probe_depends_on_the_program_name() {
        let version = strings(&["--version"]);
        assert_eq!(
            detect(&argv("/usr/local/bin/conmon", &version)),
            Role::Conmon
        );
        assert_eq!(detect(&argv("conmon", &version)), Role::Conmon);
        assert_eq!(
            detect(&argv("/usr/local/bin/ringmon", &version)),
            Role::ConmonRs
        );
        // With a conmon-only flag, as conmon would print the version too.
        let with_flag = strings(&["--version", "--exit-dir=/x"]);
        assert_eq!(detect(&argv("ringmon", &with_flag)), Role::Conmon);
        // The server's own pause child, even from a file named conmon.
        let pause = strings(&["pause", "--pod-id", "p", "-p", "/run", "--ipc"]);
        assert_eq!(detect(&argv("/usr/bin/conmon", &pause)), Role::ConmonRs);
        // A file merely ending in "conmon" is not the name.
        assert_eq!(detect(&argv("/usr/bin/myconmon", &version)), Role::ConmonRs);
        assert_eq!(
            detect(&argv("/opt/conmon/ringmon", &version)),
            Role::ConmonRs
        );
    }

    #[test]
    fn conmon_rs_argvs_stay_conmon_rs() {
        let go_client = strings(&[
            "--runtime",
            "/usr/bin/crun",
            "--runtime-dir",
            "/var/run/conmonrs/abc",
            "--runtime-root",
            "/run/crun",
            "--log-level",
            "debug",
            "--log-driver",
            "systemd",
            "--enable-tracing",
            "--tracing-endpoint",
            "http://127.0.0.1:4317",
            "--cgroup-manager",
            "cgroupfs",
        ]);
        let short = strings(&[
            "-r",
            "/usr/bin/runc",
            "-l",
            "info",
            "-d",
            "none",
            "-c",
            "systemd",
            "-e",
            "-t",
            "x",
            "--skip-fork",
            "--runtime-dir=/tmp/x",
            "--io-backend",
            "epoll",
        ]);
        let pause = strings(&[
            "pause", "-p", "/var/run", "--pod-id", "p", "--ipc", "--net", "--uts", "--pid",
            "--user", "-u", "0 0 1", "-g", "0 0 1",
        ]);
        for rest in [
            go_client,
            short,
            pause,
            strings(&["--version"]),
            strings(&["-v", "full"]),
            strings(&["--version-json"]),
            strings(&["--help"]),
            vec![],
        ] {
            assert_eq!(
                detect(&argv("/usr/bin/conmonrs", &rest)),
                Role::ConmonRs,
                "{rest:?}"
            );
            assert_eq!(detect(&argv("ringmon", &rest)), Role::ConmonRs, "{rest:?}");
        }
    }

    /// The markers are disjoint from every flag clap knows for conmon-rs and
    /// its subcommands, so no command line conmon-rs accepts contains one.
    #[test]
    fn markers_are_no_conmon_rs_flag() {
        // `ctl`'s subcommands are left out: their flags (exec's `-i`) may be
        // markers, which is why `ctl` is only taken as the first argument,
        // before any marker is looked at (main refuses it elsewhere).
        let cmd = crate::cli::Cli::command();
        let mut known: Vec<String> = Vec::new();
        for c in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
            for a in c.get_arguments() {
                known.extend(
                    a.get_long_and_visible_aliases()
                        .into_iter()
                        .flatten()
                        .map(|l| format!("--{l}")),
                );
                known.extend(
                    a.get_short_and_visible_aliases()
                        .into_iter()
                        .flatten()
                        .map(|s| format!("-{s}")),
                );
            }
            known.push("--help".into());
            known.push("-h".into());
        }
        for marker in conmon_only_flags() {
            assert!(!known.contains(&marker), "{marker} is a conmon-rs flag too");
        }
        assert!(cmd
            .get_subcommands()
            .any(|c| c.get_name() == PAUSE_SUBCOMMAND));
        // And the shared ones are really shared (the exclusions are needed).
        for shared in [
            "-c",
            "-l",
            "-r",
            "-t",
            "-e",
            "-p",
            "-u",
            "--runtime",
            "--log-level",
        ] {
            assert!(known.iter().any(|k| k == shared), "{shared}");
        }
    }

    /// clap refuses a value that looks like a flag, so a marker can never
    /// hide as a value in a command line conmon-rs accepts.
    #[test]
    fn conmon_rs_refuses_flag_like_values() {
        for marker in ["-b", "--cid", "-n", "--exit-dir"] {
            let r =
                crate::cli::Cli::try_parse_from(["ringmon", "--runtime-dir", marker, "-r", "/x"]);
            assert!(r.is_err(), "{marker} accepted as a value");
        }
    }
}
