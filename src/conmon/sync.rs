//! The messages a conmon writes on `_OCI_SYNCPIPE` and `_OCI_ATTACHPIPE`
//! (conmon-cli-podman.md §4, conmon-cli-crio.md §4): one JSON object per
//! line, `{"KEY": N}\n` or `{"KEY": N, "message": "TEXT"}\n`, written with
//! one `write(2)` so that it is one record on a SOCK_SEQPACKET socket. The
//! pipe may also be a stream socket or a plain pipe (CRI-O's exec sync), so
//! nothing socket-only is used.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::cli::SyncProtocol;

/// Most bytes of `message` sent (conmon sends at most 8191 bytes of the
/// runtime's stderr); a longer text is cut at a character boundary.
pub const MAX_MESSAGE: usize = 8191;

/// What a message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The container's (or exec process's) pid, or -1 with a message.
    Pid,
    /// An exec process's exit code.
    ExitCode,
}

/// The key of a report under `protocol`: `data` with `--api-version`,
/// else `pid` / `exit_code`.
pub fn key(protocol: SyncProtocol, report: Report) -> &'static str {
    match (protocol, report) {
        (SyncProtocol::Data, _) => "data",
        (SyncProtocol::Legacy, Report::Pid) => "pid",
        (SyncProtocol::Legacy, Report::ExitCode) => "exit_code",
    }
}

/// Formats one message line.
pub fn format(key: &str, value: i64, message: Option<&str>) -> String {
    match message {
        None => format!("{{\"{key}\": {value}}}\n"),
        Some(text) => {
            let mut end = text.len().min(MAX_MESSAGE);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            // A JSON string literal of the text: serde_json escapes exactly
            // what JSON requires.
            let quoted = serde_json::Value::String(text[..end].to_string()).to_string();
            format!("{{\"{key}\": {value}, \"message\": {quoted}}}\n")
        }
    }
}

/// A pipe the monitor reports on. Writes that find the reader gone
/// (`EPIPE`: podman closed its end after the pid) are not errors.
pub struct SyncPipe {
    fd: OwnedFd,
    protocol: SyncProtocol,
}

impl SyncPipe {
    pub fn new(fd: OwnedFd, protocol: SyncProtocol) -> SyncPipe {
        SyncPipe { fd, protocol }
    }

    /// Sends `{"KEY": value}` or, with a message, the error form.
    pub fn send(&self, report: Report, value: i64, message: Option<&str>) -> io::Result<()> {
        let line = format(key(self.protocol, report), value, message);
        match crate::sys::fd::write_all(self.fd.as_fd(), line.as_bytes()) {
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_of_both_protocols() {
        assert_eq!(format("data", 26093, None), "{\"data\": 26093}\n");
        assert_eq!(
            format("pid", -1, Some("exec: \"/x\": not found\n")),
            "{\"pid\": -1, \"message\": \"exec: \\\"/x\\\": not found\\n\"}\n"
        );
        assert_eq!(key(SyncProtocol::Legacy, Report::ExitCode), "exit_code");
        assert_eq!(key(SyncProtocol::Data, Report::ExitCode), "data");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_MESSAGE);
        let line = format("data", -1, Some(&text));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert!(v["message"].as_str().unwrap().len() <= MAX_MESSAGE);
    }
}
