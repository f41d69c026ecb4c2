//! A real terminal for the tests of interactive clients (`podman run -it`,
//! `ringmon ctl exec -it`): a tmux server on a socket of its own, driven
//! with send-keys and read with capture-pane. Every tmux call is bounded.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest one tmux call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the tests wait for something to appear on the screen.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Tmux {
    socket: PathBuf,
    /// Where each call's stdout and stderr go: files, not pipes, because the
    /// server a first call starts would keep a pipe open.
    io_dir: PathBuf,
    calls: AtomicU64,
}

impl Tmux {
    /// Starts, in `dir` (created), a detached 80x24 session `main` whose
    /// first window runs `line`; panes stay (dead) after their command
    /// exits, so their last output can still be read.
    pub fn start(dir: &Path, line: &str) -> Tmux {
        fs::create_dir_all(dir.join("io")).unwrap();
        let conf = dir.join("tmux.conf");
        fs::write(
            &conf,
            "set -g remain-on-exit on\nset -g history-limit 2000\n",
        )
        .unwrap();
        let tmux = Tmux {
            socket: dir.join("socket"),
            io_dir: dir.join("io"),
            calls: AtomicU64::new(0),
        };
        tmux.cmd(&[
            "-f",
            &conf.display().to_string(),
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "80",
            "-y",
            "24",
            line,
        ]);
        tmux
    }

    /// Runs `tmux ARGS` against this server; panics unless it succeeds
    /// within [`CALL_TIMEOUT`]. Returns its stdout.
    pub fn cmd(&self, args: &[&str]) -> String {
        let seq = self.calls.fetch_add(1, Ordering::Relaxed);
        let out_path = self.io_dir.join(format!("{seq}.out"));
        let err_path = self.io_dir.join(format!("{seq}.err"));
        let mut child = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tmux: {e}"));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > CALL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tmux {args:?} did not finish within {CALL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        assert!(
            status.success(),
            "tmux {args:?}: {status}; stdout {stdout:?}, stderr {stderr:?}"
        );
        stdout
    }

    /// Opens window `name` running `line`.
    pub fn new_window(&self, name: &str, line: &str) {
        self.cmd(&["new-window", "-d", "-n", name, line]);
    }

    /// Sends tmux key names (`Enter`, `C-p`) to `target`.
    pub fn keys(&self, target: &str, keys: &str) {
        self.cmd(&["send-keys", "-t", target, keys]);
    }

    /// Types `text` (literally) and Enter into `target`.
    pub fn type_line(&self, target: &str, text: &str) {
        self.cmd(&["send-keys", "-t", target, "-l", text]);
        self.keys(target, "Enter");
    }

    /// Types podman's default detach keys, ctrl-p then ctrl-q, as a person
    /// does: in two reads. (Measured with stock conmon: when both bytes
    /// arrive in one read, podman 4.3.1 passes them to the container.)
    pub fn detach(&self, target: &str) {
        self.keys(target, "C-p");
        std::thread::sleep(Duration::from_millis(200));
        self.keys(target, "C-q");
    }

    pub fn screen(&self, target: &str) -> String {
        self.cmd(&["capture-pane", "-p", "-t", target])
    }

    /// Waits until a line of `target`'s screen reads exactly `line`.
    pub fn wait_line(&self, target: &str, line: &str) {
        let deadline = Instant::now() + APPEAR_TIMEOUT;
        loop {
            let screen = self.screen(target);
            if screen.lines().any(|l| l.trim_end() == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{line:?} never appeared in tmux window {target}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resizes `target`'s window.
    pub fn resize(&self, target: &str, cols: u16, rows: u16) {
        self.cmd(&[
            "resize-window",
            "-t",
            target,
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ]);
    }

    /// Waits until the shell in `target` sees a `rows` x `cols` terminal,
    /// asking it with `stty` (the command that prints "ROWS COLS"): a
    /// resize travels through the client, the monitor and the pty, so the
    /// shell is asked again until the answer is the new size.
    pub fn wait_size(&self, target: &str, stty: &str, cols: u16, rows: u16) {
        let want = format!("size={rows} {cols}");
        let deadline = Instant::now() + APPEAR_TIMEOUT;
        loop {
            self.type_line(target, &format!("echo size=$({stty})"));
            std::thread::sleep(Duration::from_millis(200));
            let screen = self.screen(target);
            if screen.lines().any(|l| l.trim_end() == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{want:?} never appeared in tmux window {target}; screen:\n{screen}"
            );
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}
