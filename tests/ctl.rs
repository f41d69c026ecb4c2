//! `ringmon ctl` against a real server and real containers: the binary is
//! run as a person runs it (`ringmon ctl --runtime-dir DIR ...`), with
//! pipes, and through a real terminal (tmux: send-keys, capture-pane) for
//! `exec -it` and `attach`. Every ctl run and tmux call has a timeout.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tmux::Tmux;
use common::*;

/// Longest one ctl run (or tmux call) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a screen waits for a line.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(20);

/// What one ctl run gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `ringmon ctl --runtime-dir <dir> args...` with `input` as stdin
/// (none: /dev/null), killed after [`CALL_TIMEOUT`].
fn ctl_in(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(binary());
    cmd.arg("ctl").arg("--runtime-dir").arg(dir).args(args);
    run_timed(cmd, input)
}

fn run_timed(mut cmd: Command, input: Option<&[u8]>) -> Run {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < CALL_TIMEOUT {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        true
    });
    let out = child.wait_with_output().unwrap();
    let killed = watchdog.join().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !killed,
        "{what} did not finish within {CALL_TIMEOUT:?}: {run:?}"
    );
    run
}

/// A server and the containers a test made in it.
struct Host {
    server: Server,
    dir: TempDir,
    ids: Vec<String>,
}

impl Host {
    fn start(rt: &Path) -> Host {
        Host {
            server: Server::start(rt),
            dir: TempDir::new("ctl"),
            ids: Vec::new(),
        }
    }

    fn runtime_dir(&self) -> PathBuf {
        self.server.socket.parent().unwrap().to_path_buf()
    }

    fn ctl(&self, args: &[&str]) -> Run {
        ctl_in(&self.runtime_dir(), args, None)
    }

    fn ctl_with_input(&self, args: &[&str], input: &[u8]) -> Run {
        ctl_in(&self.runtime_dir(), args, Some(input))
    }

    /// The scratch dir of container `name` (its log, exit file, bundle).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates and starts a container `name` running `argv`; `json` logs
    /// with the JSON driver instead of CRI.
    fn container(
        &mut self,
        name: &str,
        argv: &[&str],
        terminal: bool,
        stdin: bool,
        json: bool,
    ) -> String {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        let id = container_id();
        let bundle = make_bundle(&dir, argv, terminal);
        let mut req = basic_request(&dir, &id, &bundle, terminal);
        req.stdin = stdin;
        if json {
            req.log_drivers[0].kind = 1;
        }
        run_local(async {
            self.server
                .client()
                .await
                .create_container(&req)
                .await
                .unwrap();
        });
        self.server.start_container(&id);
        self.ids.push(id.clone());
        id
    }

    fn wait_exit(&self, name: &str) -> String {
        String::from_utf8(wait_for_file(
            &self.path(name).join("exit"),
            Duration::from_secs(20),
        ))
        .unwrap()
    }

    fn log_path(&self, name: &str) -> String {
        self.path(name).join("ctr.log").display().to_string()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for id in &self.ids {
            self.server.runtime_cmd(&["delete", "-f", id]);
        }
    }
}

/// `version`, `ps` (running and exited rows, prefixes) and the errors a
/// person runs into.
#[test]
fn version_ps_and_errors() {
    for_each_runtime(|rt| {
        let mut host = Host::start(rt);
        let v = host.ctl(&["version"]);
        assert_eq!(v.code, 0, "{v:?}");
        assert!(
            v.stdout
                .contains(&format!("Pid:          {}", host.server.pid)),
            "{v:?}"
        );
        assert!(v.stdout.contains(env!("CARGO_PKG_VERSION")), "{v:?}");

        let sleeper = host.container("sleeper", &["/bin/sleep", "600"], false, false, false);
        let quitter = host.container(
            "quitter",
            &["/bin/sh", "-c", "echo bye; exit 3"],
            false,
            false,
            false,
        );
        assert_eq!(host.wait_exit("quitter"), "3");

        let ps = host.ctl(&["ps", "--no-trunc"]);
        assert_eq!(ps.code, 0, "{ps:?}");
        let lines: Vec<&str> = ps.stdout.lines().collect();
        assert!(
            lines[0].starts_with("CONTAINER ID") && lines[0].contains("LOGGED"),
            "{ps:?}"
        );
        let row = |id: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(id))
                .unwrap_or_else(|| panic!("no row for {id}: {}", ps.stdout))
                .to_string()
        };
        let runtime_name = rt.file_name().unwrap().to_str().unwrap();
        let s = row(&sleeper);
        assert!(s.contains(" running ") && s.contains(runtime_name), "{s}");
        assert!(s.contains(&host.log_path("sleeper")), "{s}");
        let q = row(&quitter);
        assert!(
            q.contains("exited (3)") && q.contains(&host.log_path("quitter")),
            "{q}"
        );
        // "bye\n": the output bytes the engine counted (metrics.sock), not
        // the CRI record's size.
        assert!(q.contains(" 4B "), "bytes logged missing: {q}");

        // Short ids by default, and a prefix names a container.
        let ps = host.ctl(&["ps"]);
        assert!(
            ps.stdout.contains(&format!("{} ", &sleeper[..12])),
            "{ps:?}"
        );
        let logs = host.ctl(&["logs", &quitter[..10]]);
        assert_eq!((logs.code, logs.stdout.as_str()), (0, "bye\n"), "{logs:?}");

        let bad = host.ctl(&["logs", "no-such-container"]);
        assert_eq!(bad.code, 125, "{bad:?}");
        assert!(
            bad.stderr
                .contains("unknown container id 'no-such-container'"),
            "{bad:?}"
        );
        let bad = host.ctl(&["exec", &quitter, "--", "true"]);
        assert!(
            bad.code == 125 && bad.stderr.contains("is not running"),
            "{bad:?}"
        );
        // Without --runtime-dir: this server is found through /proc, alone
        // or among the others running on this machine (other tests').
        let mut cmd = Command::new(binary());
        cmd.args(["ctl", "version"])
            .env_remove("CONMON_RUNTIME_DIR");
        let found = run_timed(cmd, None);
        let dir = host.runtime_dir().display().to_string();
        match found.code {
            0 => assert!(found.stdout.contains(&dir), "{found:?}"),
            _ => assert!(
                found.code == 125
                    && found.stderr.contains("several ringmon servers found")
                    && found.stderr.contains(&dir),
                "{found:?}"
            ),
        }
        let nowhere = host.dir.path().join("nowhere");
        let bad = ctl_in(&nowhere, &["ps"], None);
        assert_eq!(bad.code, 125, "{bad:?}");
        assert!(
            bad.stderr.contains(&format!(
                "no server socket at {}",
                nowhere.join("conmon.sock").display()
            )),
            "{bad:?}"
        );
    });
}

/// `logs`: both streams to their own outputs, `--tail`, `--since`, the
/// JSON driver, and `-f` until the container exits.
#[test]
fn logs_tail_since_json_and_follow() {
    for_each_runtime(|rt| {
        let mut host = Host::start(rt);
        let script = "echo one; echo two; echo oops >&2; printf 'no newline'";
        let cri = host.container("cri", &["/bin/sh", "-c", script], false, false, false);
        let json = host.container("json", &["/bin/sh", "-c", script], false, false, true);
        host.wait_exit("cri");
        host.wait_exit("json");

        let all = host.ctl(&["logs", &cri]);
        assert_eq!(
            (all.code, all.stdout.as_str(), all.stderr.as_str()),
            (0, "one\ntwo\nno newline\n", "oops\n"),
            "{all:?}"
        );
        let tail = host.ctl(&["logs", "--tail", "2", &cri]);
        assert_eq!(
            (tail.stdout.as_str(), tail.stderr.as_str()),
            ("no newline\n", "oops\n"),
            "{tail:?}"
        );
        let recent = host.ctl(&["logs", "--since", "10m", &cri]);
        assert_eq!(recent.stdout, "one\ntwo\nno newline\n", "{recent:?}");
        let future = host.ctl(&["logs", "--since", "2200-01-01T00:00:00Z", &cri]);
        assert_eq!(
            (future.stdout.as_str(), future.stderr.as_str()),
            ("", ""),
            "{future:?}"
        );
        let bad = host.ctl(&["logs", "--since", "yesterday", &cri]);
        assert!(
            bad.code == 125 && bad.stderr.contains("--since 'yesterday'"),
            "{bad:?}"
        );

        let j = host.ctl(&["logs", &json]);
        assert_eq!(
            (j.code, j.stdout.as_str(), j.stderr.as_str()),
            (0, "one\ntwo\nno newline\n", "oops\n"),
            "{j:?}"
        );

        // -f: what is there, then what comes, then the end with the exit.
        let slow = host.container(
            "slow",
            &[
                "/bin/sh",
                "-c",
                "echo first; sleep 2; echo second; sleep 1; echo last",
            ],
            false,
            false,
            false,
        );
        let start = Instant::now();
        let f = host.ctl(&["logs", "-f", &slow]);
        assert_eq!(
            (f.code, f.stdout.as_str()),
            (0, "first\nsecond\nlast\n"),
            "{f:?}"
        );
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "-f returned before the exit"
        );
        assert_eq!(host.wait_exit("slow"), "0");
    });
}

/// `exec` through exec sessions: both streams, the exit code passed
/// through, piped stdin with `-i`; `attach` with pipes.
#[test]
fn exec_and_attach_with_pipes() {
    for_each_runtime(|rt| {
        let mut host = Host::start(rt);
        let id = host.container("sleeper", &["/bin/sleep", "600"], false, false, false);
        let out = host.ctl(&[
            "exec",
            &id,
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ]);
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (7, "out\n", "err\n"),
            "{out:?}"
        );
        let input = b"first line\nsecond line\nno newline at the end";
        let cat = host.ctl_with_input(&["exec", "-i", &id, "--", "/bin/cat"], input);
        assert_eq!(
            (cat.code, cat.stdout.as_bytes()),
            (0, &input[..]),
            "{cat:?}"
        );
        let missing = host.ctl(&["exec", &id, "--", "/nonexistent"]);
        assert_ne!(missing.code, 0, "{missing:?}");

        let reader = host.container(
            "reader",
            &[
                "/bin/sh",
                "-c",
                "read line; echo got:$line; echo err:$line >&2; exit 4",
            ],
            false,
            true,
            false,
        );
        let att = host.ctl_with_input(&["attach", &reader], b"hello\n");
        assert_eq!(
            (att.code, att.stdout.as_str(), att.stderr.as_str()),
            (0, "got:hello\n", "err:hello\n"),
            "{att:?}"
        );
        assert_eq!(host.wait_exit("reader"), "4");
    });
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `exec -it` and `attach` on a real terminal: typing, the window size at
/// start and after a resize, the exit code, ctrl-p ctrl-q detaching.
#[test]
fn exec_it_and_attach_on_a_terminal() {
    for_each_runtime(|rt| {
        let mut host = Host::start(rt);
        let id = host.container("sleeper", &["/bin/sleep", "600"], false, false, false);
        let ctl = format!(
            "{} ctl --runtime-dir {}",
            shell_quote(&binary()),
            shell_quote(&host.runtime_dir())
        );
        let tmux = Tmux::start(
            &host.path("tmux-exec"),
            &format!("{ctl} exec -it {id} -- /bin/sh; printf '\\nexec-exit=%s\\n' $?"),
        );
        tmux.type_line("main:0", "echo typed-$((6*7))");
        tmux.wait_line("main:0", "typed-42");
        tmux.type_line("main:0", "echo size=$(busybox stty size)");
        tmux.wait_line("main:0", "size=24 80");
        tmux.resize("main:0", 100, 30);
        tmux.wait_size("main:0", "busybox stty size", 100, 30);
        tmux.type_line("main:0", "exit 5");
        tmux.wait_line("main:0", "exec-exit=5");
        drop(tmux);

        // attach to a container on a terminal, detach, attach again.
        let term = host.container("term", &["/bin/sh"], true, true, false);
        let tmux = Tmux::start(
            &host.path("tmux-attach"),
            &format!("{ctl} attach {term}; printf '\\nattach-exit=%s\\n' $?"),
        );
        // Attached once the shell answers.
        let deadline = Instant::now() + APPEAR_TIMEOUT;
        loop {
            tmux.type_line("main:0", "echo attached-$((2+3))");
            std::thread::sleep(Duration::from_millis(200));
            if tmux
                .screen("main:0")
                .lines()
                .any(|l| l.trim_end() == "attached-5")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no answer; screen:\n{}",
                tmux.screen("main:0")
            );
        }
        tmux.resize("main:0", 90, 20);
        tmux.wait_size("main:0", "busybox stty size", 90, 20);
        tmux.detach("main:0");
        tmux.wait_line("main:0", "attach-exit=0");
        drop(tmux);
        let ps = host.ctl(&["ps", "--no-trunc"]);
        assert!(
            ps.stdout
                .lines()
                .any(|l| l.starts_with(&term) && l.contains(" running ")),
            "detaching stopped the container: {ps:?}"
        );
    });
}

/// `ringmon --help` and `ringmon ctl --help` show examples; the man pages
/// and shell completions `tools/install.sh` installs are generated from the
/// same clap definitions and name the ctl commands.
#[test]
fn help_man_pages_and_completions() {
    let mut cmd = Command::new(binary());
    cmd.arg("--help");
    let help = run_timed(cmd, None);
    assert_eq!(help.code, 0, "{help:?}");
    assert!(
        help.stdout.contains("Examples:") && help.stdout.contains("ringmon ctl"),
        "{help:?}"
    );
    assert!(
        !help.stdout.contains("pause"),
        "internal subcommand shown: {help:?}"
    );
    // `ctl` after a server flag is refused with a hint, never taken for
    // a conmon command line because of exec's `-i`.
    let mut cmd = Command::new(binary());
    cmd.args(["--log-level", "debug", "ctl", "ps"]);
    let misplaced = run_timed(cmd, None);
    assert_eq!(misplaced.code, 2, "{misplaced:?}");
    assert!(
        misplaced
            .stderr
            .contains("`ctl` must be the first argument"),
        "{misplaced:?}"
    );
    let mut cmd = Command::new(binary());
    cmd.args(["ctl", "--help"]);
    let help = run_timed(cmd, None);
    assert_eq!(help.code, 0, "{help:?}");
    for word in [
        "Examples:",
        "exec -it",
        "ps",
        "logs",
        "attach",
        "--runtime-dir",
    ] {
        assert!(help.stdout.contains(word), "{word}: {help:?}");
    }

    let out = TempDir::new("docs");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmon-gen-docs"));
    cmd.arg(out.path());
    let gen = run_timed(cmd, None);
    assert_eq!(gen.code, 0, "{gen:?}");
    let man = |name: &str| fs::read_to_string(out.path().join("man").join(name)).unwrap();
    assert!(man("ringmon.1").contains(".TH ringmon"));
    assert!(man("ringmon-ctl.1").contains(".TH ringmon-ctl"));
    assert!(man("ringmon.1").contains("runtime\\-dir"));
    let ctl_page = man("ringmon-ctl.1");
    assert!(
        ctl_page.contains("attach") && ctl_page.contains("Examples"),
        "{ctl_page}"
    );
    assert!(man("ringmon-ctl-logs.1").contains("since"));
    let bash = out.path().join("completions/ringmon.bash");
    let script = fs::read_to_string(&bash).unwrap();
    assert!(script.contains("ctl") && script.contains("attach") && script.contains("--tail"));
    let mut cmd = Command::new("bash");
    cmd.arg("-n").arg(&bash);
    let syntax = run_timed(cmd, None);
    assert_eq!(syntax.code, 0, "{syntax:?}");
    for other in ["_ringmon", "ringmon.fish"] {
        let text = fs::read_to_string(out.path().join("completions").join(other)).unwrap();
        assert!(text.contains("exec"), "{other}");
    }
}

/// `logs -f` goes on through a log rotation (the file renamed, the server
/// told to reopen its log, as kubelet does) without losing a line.
#[test]
fn logs_follow_through_rotation() {
    for_each_runtime(|rt| {
        let mut host = Host::start(rt);
        let id = host.container(
            "rotated",
            &[
                "/bin/sh",
                "-c",
                "echo before; sleep 2; echo after; sleep 1; echo end",
            ],
            false,
            false,
            false,
        );
        let dir = host.runtime_dir();
        let follow_id = id.clone();
        let follower = std::thread::spawn(move || ctl_in(&dir, &["logs", "-f", &follow_id], None));
        let log = PathBuf::from(host.log_path("rotated"));
        assert!(
            wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("before"))),
            "nothing logged"
        );
        std::thread::sleep(Duration::from_millis(300));
        fs::rename(&log, log.with_extension("log.1")).unwrap();
        run_local(async {
            host.server.client().await.reopen_log(&id).await.unwrap();
        });
        let f = follower.join().unwrap();
        assert_eq!(
            (f.code, f.stdout.as_str()),
            (0, "before\nafter\nend\n"),
            "{f:?}"
        );
        let (rotated, _) = parse_cri(&fs::read(log.with_extension("log.1")).unwrap());
        assert_eq!(
            rotated, b"before\n",
            "the rotation came too late to test anything"
        );
    });
}
