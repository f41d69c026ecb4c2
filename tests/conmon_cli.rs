//! ringmon started with the C conmon's command line (issue 14, phase 1):
//! role detection, parsing and `--version`, through the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Server, TempDir};

const ID: &str = "4f3b1c0a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";

fn run(program: &Path, args: &[String]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("CONMON_VERSION")
        .env_remove("CONMON_VERSION_JSON")
        .output()
        .expect("run ringmon")
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A symlink named `conmon` to the binary under test, as an admin would
/// install it.
fn conmon_symlink(dir: &TempDir) -> PathBuf {
    let link = dir.path().join("conmon");
    std::os::unix::fs::symlink(common::binary(), &link).expect("symlink");
    link
}

/// podman 4.3.1's `run --rm` argv (conmon-cli-podman.md §3 and §9).
fn podman_create_argv() -> Vec<String> {
    let ud = format!("/var/lib/containers/storage/overlay-containers/{ID}/userdata");
    let run = format!("/run/containers/storage/overlay-containers/{ID}/userdata");
    let mut v = strings(&[
        "--api-version",
        "1",
        "-c",
        ID,
        "-u",
        ID,
        "-r",
        "/usr/bin/crun",
        "-b",
    ]);
    v.push(ud.clone());
    v.push("-p".into());
    v.push(format!("{run}/pidfile"));
    v.extend(strings(&[
        "-n",
        "nifty_name",
        "--exit-dir",
        "/run/libpod/exits",
        "--full-attach",
        "-l",
    ]));
    v.push(format!("k8s-file:{ud}/ctr.log"));
    v.extend(strings(&[
        "--log-level",
        "warning",
        "--runtime-arg",
        "--log-format=json",
        "--runtime-arg",
        "--log",
    ]));
    v.push(format!("--runtime-arg={run}/oci-log"));
    v.push("--conmon-pidfile".into());
    v.push(format!("{run}/conmon.pid"));
    v.extend(strings(&["--exit-command", "/usr/bin/podman"]));
    for arg in [
        "--root",
        "/var/lib/containers/storage",
        "--runroot",
        "/run/containers/storage",
        "--log-level",
        "warning",
        "--cgroup-manager",
        "cgroupfs",
        "--tmpdir",
        "/run/libpod",
        "--network-config-dir",
        "",
        "--network-backend",
        "netavark",
        "--volumepath",
        "/var/lib/containers/storage/volumes",
        "--runtime",
        "crun",
        "--events-backend",
        "file",
        "container",
        "cleanup",
        "--rm",
        ID,
    ] {
        v.push("--exit-command-arg".into());
        v.push(arg.into());
    }
    v
}

/// CRI-O's ExecSync argv (conmon-cli-crio.md §3).
fn crio_exec_sync_argv() -> Vec<String> {
    strings(&[
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
        "/tmp/crio-log-123",
        "--socket-dir-path",
        "/var/run/crio",
        "--log-level",
        "debug",
        "--sync",
        "--log-global-size-max",
        "16777216",
        "-T",
        "2",
        "--exec-process-spec",
        "/tmp/exec-process-123",
        "--runtime-arg",
        "--root=/run/crun",
    ])
}

/// podman's rule (first line `conmon version X.Y.Z`, at least 2.0.1) and
/// CRI-O's (third whitespace field strict semver; ≥ 2.1.2 for `--sync` and
/// `--log-global-size-max`), conmon-cli-podman.md §1, conmon-cli-crio.md §1.
fn assert_conmon_version_output(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    let rest = first
        .strip_prefix("conmon version ")
        .unwrap_or_else(|| panic!("first line {first:?} is not 'conmon version X.Y.Z'"));
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().expect("digits"))
        .collect();
    assert!(numbers >= vec![2, 1, 2], "version {numbers:?} below 2.1.2");
    let third = stdout.split_whitespace().nth(2).expect("three fields");
    let (core, build) = third.split_once('+').unwrap_or((third, ""));
    let parts: Vec<&str> = core.split('.').collect();
    assert!(
        parts.len() == 3
            && parts.iter().all(|p| !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (*p == "0" || !p.starts_with('0'))),
        "{third:?} is not X.Y.Z"
    );
    assert!(
        build.is_empty()
            || build
                .split('.')
                .all(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
        "{third:?}: bad build metadata"
    );
    assert!(
        stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("commit: ")),
        "second line: {stdout:?}"
    );
}

#[test]
fn version_through_a_conmon_symlink() {
    let dir = TempDir::new("conmon-version");
    let link = conmon_symlink(&dir);
    let out = run(&link, &strings(&["--version"]));
    assert_conmon_version_output(&out);
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
}

#[test]
fn version_with_conmon_only_flags() {
    let out = run(
        &common::binary(),
        &strings(&["--version", "--api-version", "--exit-dir", "/x"]),
    );
    assert_conmon_version_output(&out);
}

#[test]
fn bare_version_satisfies_crio_and_keeps_conmon_rs_lines() {
    let out = run(&common::binary(), &strings(&["--version"]));
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    // CRI-O: the third whitespace-separated word is a strict semver.
    let third = stdout.split_whitespace().nth(2).unwrap();
    assert!(third.starts_with("2.1.6+ringmon."), "{stdout}");
    assert!(
        stdout.lines().nth(1).unwrap().starts_with("version: "),
        "{stdout}"
    );
}

#[test]
fn client_argvs_get_past_parsing_and_name_what_is_missing() {
    let dir = TempDir::new("conmon-argv");
    let link = conmon_symlink(&dir);
    for program in [common::binary(), link] {
        let out = run(&program, &podman_create_argv());
        assert_eq!(out.status.code(), Some(1), "{}", program.display());
        let err = text(&out.stderr);
        assert!(
            err.starts_with("ringmon: conmon mode: --bundle '/var/lib/containers/")
                && err.contains("config.json"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    }
    let out = run(&common::binary(), &crio_exec_sync_argv());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("ringmon: conmon mode: --exec-process-spec '"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unknown_flag_is_named() {
    let mut args = podman_create_argv();
    args.push("--frobnicate".into());
    let out = run(&common::binary(), &args);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "ringmon: conmon mode: unknown flag '--frobnicate'"
    );
}

#[test]
fn missing_cid_is_named() {
    let out = run(
        &common::binary(),
        &strings(&[
            "-u",
            ID,
            "-r",
            "/usr/bin/crun",
            "-b",
            "/tmp",
            "--exit-dir",
            "/tmp",
        ]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "ringmon: conmon mode: required flag --cid is missing"
    );
}

#[test]
fn malformed_number_names_flag_and_value() {
    let dir = TempDir::new("conmon-number");
    let link = conmon_symlink(&dir);
    let out = run(
        &link,
        &strings(&[
            "-c",
            ID,
            "-u",
            ID,
            "-r",
            "/usr/bin/crun",
            "--log-size-max",
            "10MB",
        ]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "ringmon: conmon mode: flag --log-size-max: '10MB' is not a number"
    );
}

/// The conmon-rs server still starts from the Go client's argv (`--runtime`,
/// `--runtime-dir`, `--runtime-root`, `--log-level`, `--log-driver`, and old
/// clients' `--cgroup-manager`); the other suites exercise it fully.
#[test]
fn conmon_rs_server_still_starts() {
    common::for_each_runtime(|rt| {
        let server = Server::start_with(rt, &["--cgroup-manager", "cgroupfs"]);
        server.wait_ready();
        assert!(server.shutdown(), "server did not stop on SIGINT");
    });
}
