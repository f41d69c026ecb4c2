//! What the benchmark tools print about the programs they measure.

use std::path::Path;
use std::process::{Command, Stdio};

/// The first line `program arg` prints (stdout, else stderr), for the
/// reports' headers (`--version` of podman, the runtime, the monitors).
pub fn first_line_of(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}
