//! The record a worker hands the keeper with each container it holds
//! (issue 16): everything a later worker needs to resume the container's
//! logging, attach and exit handling. Opaque to the keeper; JSON, so that a
//! worker of a newer build can still read what an older one wrote (unknown
//! fields are ignored, a missing one is an error naming it).
//!
//! Pure: encoding and decoding only (fuzz target `keeper_record`). The
//! bytes come back from another process, so decoding trusts nothing: every
//! field is checked for its type and range.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::CoreError;
use crate::engine::ContainerKey;
use crate::log::{LogDialect, LogFormat, LogSpec};

/// The record layout this build writes and reads.
pub const RECORD_VERSION: u64 = 1;

/// What one held descriptor is, in the order they are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdRole {
    /// The read end of the container's stdout pipe.
    Stdout,
    /// The read end of the container's stderr pipe.
    Stderr,
    /// The container's pty master (terminal mode: all output, and stdin).
    Pty,
    /// The write end of the container's stdin pipe.
    Stdin,
    /// The memory file journaling the stdout pipe (issue 16 phase 2, see
    /// `engine::journal`): bytes that left the pipe, perhaps not yet logged.
    StdoutJournal,
    /// The memory file journaling the stderr pipe.
    StderrJournal,
    /// The journals' ledger page: how far the logs reach and how much of
    /// each journal they hold.
    Ledger,
}

impl FdRole {
    fn as_str(self) -> &'static str {
        match self {
            FdRole::Stdout => "stdout",
            FdRole::Stderr => "stderr",
            FdRole::Pty => "pty",
            FdRole::Stdin => "stdin",
            FdRole::StdoutJournal => "stdout_journal",
            FdRole::StderrJournal => "stderr_journal",
            FdRole::Ledger => "ledger",
        }
    }

    fn parse(s: &str) -> Option<FdRole> {
        Some(match s {
            "stdout" => FdRole::Stdout,
            "stderr" => FdRole::Stderr,
            "pty" => FdRole::Pty,
            "stdin" => FdRole::Stdin,
            "stdout_journal" => FdRole::StdoutJournal,
            "stderr_journal" => FdRole::StderrJournal,
            "ledger" => FdRole::Ledger,
            _ => return None,
        })
    }
}

/// A held container, as recorded for the keeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRecord {
    pub id: String,
    pub key: ContainerKey,
    pub pid: u32,
    pub terminal: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    /// The log drivers, as `LogWriter::open` takes them.
    pub logs: Vec<LogSpec>,
    pub exit_paths: Vec<PathBuf>,
    pub oom_exit_paths: Vec<PathBuf>,
    pub cleanup_cmd: Vec<String>,
    pub sync_logs: bool,
    /// When its create finished, unix seconds.
    pub created: u64,
    /// The held descriptors, in order.
    pub fds: Vec<FdRole>,
}

fn bad(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::BadRecord {
        field,
        reason: reason.into(),
    }
}

fn format_name(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Cri => "cri",
        LogFormat::Json => "json",
        LogFormat::Journald => "journald",
    }
}

fn dialect_name(dialect: LogDialect) -> &'static str {
    match dialect {
        LogDialect::ConmonRs => "conmon-rs",
        LogDialect::Conmon => "conmon",
    }
}

fn paths(list: &[PathBuf]) -> Value {
    // Paths come from RPC text (UTF-8); lossy only for what cannot occur.
    Value::Array(
        list.iter()
            .map(|p| Value::String(p.to_string_lossy().into_owned()))
            .collect(),
    )
}

impl HeldRecord {
    /// The record's bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        let logs: Vec<Value> = self
            .logs
            .iter()
            .map(|l| {
                json!({
                    "format": format_name(l.format),
                    "path": l.path.to_string_lossy(),
                    "max_size": l.max_size,
                    "global_max": l.global_max,
                    "dialect": dialect_name(l.dialect),
                    "journal_fields": l
                        .journal_fields
                        .iter()
                        .map(|(k, v)| json!([k, v]))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let record = json!({
            "version": RECORD_VERSION,
            "id": self.id,
            "key": self.key,
            "pid": self.pid,
            "terminal": self.terminal,
            "stdin": self.stdin,
            "stdin_once": self.stdin_once,
            "logs": logs,
            "exit_paths": paths(&self.exit_paths),
            "oom_exit_paths": paths(&self.oom_exit_paths),
            "cleanup_cmd": self.cleanup_cmd,
            "sync_logs": self.sync_logs,
            "created": self.created,
            "fds": self.fds.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        });
        record.to_string().into_bytes()
    }

    /// Parses a record's bytes. The error names the first field that is
    /// missing or wrong.
    pub fn decode(bytes: &[u8]) -> Result<HeldRecord, CoreError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| bad("record", format!("not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(bad("record", "not a JSON object"));
        };
        let version = uint(&map, "version")?;
        if version != RECORD_VERSION {
            return Err(bad(
                "version",
                format!("{version}, this build reads {RECORD_VERSION}"),
            ));
        }
        let id = string(&map, "id")?;
        if id.is_empty() {
            return Err(bad("id", "empty"));
        }
        let pid = uint(&map, "pid")?;
        // Pid 0 or one past i32 would make a kill hit a process group.
        if pid == 0 || pid > i32::MAX as u64 {
            return Err(bad("pid", format!("{pid} is not a process id")));
        }
        let terminal = boolean(&map, "terminal")?;
        let stdin = boolean(&map, "stdin")?;
        let logs = array(&map, "logs")?
            .iter()
            .map(log_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let fds = array(&map, "fds")?
            .iter()
            .map(|v| {
                v.as_str().and_then(FdRole::parse).ok_or_else(|| {
                    bad(
                        "fds",
                        format!(
                            "{v} is not stdout, stderr, pty, stdin, stdout_journal, \
                                 stderr_journal or ledger"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_fds(&fds, terminal, stdin)?;
        Ok(HeldRecord {
            id,
            key: uint(&map, "key")?,
            pid: pid as u32,
            terminal,
            stdin,
            stdin_once: boolean(&map, "stdin_once")?,
            logs,
            exit_paths: path_list(&map, "exit_paths")?,
            oom_exit_paths: path_list(&map, "oom_exit_paths")?,
            cleanup_cmd: string_list(&map, "cleanup_cmd")?,
            sync_logs: boolean(&map, "sync_logs")?,
            created: uint(&map, "created")?,
            fds,
        })
    }

    /// Where the descriptor of `role` is in the held list.
    pub fn fd_index(&self, role: FdRole) -> Option<usize> {
        self.fds.iter().position(|r| *r == role)
    }
}

/// The held descriptors must be the output of the container as created:
/// stdout and stderr pipes, or a pty (with a terminal); plus stdin's pipe
/// only for a container with stdin and no terminal; plus, for pipes only,
/// a journal per stream (its pipe held too) with the ledger they share
/// (neither without the other: phase-1 records have none). Each role at
/// most once.
fn check_fds(fds: &[FdRole], terminal: bool, stdin: bool) -> Result<(), CoreError> {
    let has = |role| fds.contains(&role);
    let list = || fds.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
    for (i, role) in fds.iter().enumerate() {
        if fds[..i].contains(role) {
            return Err(bad(
                "fds",
                format!("[{}] names {} twice", list(), role.as_str()),
            ));
        }
    }
    let output_ok = if terminal {
        has(FdRole::Pty) && !has(FdRole::Stdout) && !has(FdRole::Stderr)
    } else {
        has(FdRole::Stdout) && has(FdRole::Stderr) && !has(FdRole::Pty)
    };
    if !output_ok {
        return Err(bad("fds", format!("[{}] with terminal={terminal}", list())));
    }
    if has(FdRole::Stdin) && (terminal || !stdin) {
        return Err(bad(
            "fds",
            format!(
                "[{}] holds a stdin pipe with terminal={terminal} stdin={stdin}",
                list()
            ),
        ));
    }
    let journals = [
        (FdRole::StdoutJournal, FdRole::Stdout),
        (FdRole::StderrJournal, FdRole::Stderr),
    ];
    for (journal, pipe) in journals {
        if has(journal) && (terminal || !has(pipe)) {
            return Err(bad(
                "fds",
                format!(
                    "[{}] holds {} without a {} pipe (terminal={terminal})",
                    list(),
                    journal.as_str(),
                    pipe.as_str()
                ),
            ));
        }
    }
    let any_journal = journals.iter().any(|(journal, _)| has(*journal));
    if any_journal != has(FdRole::Ledger) {
        return Err(bad(
            "fds",
            format!("[{}]: journals and their ledger go together", list()),
        ));
    }
    Ok(())
}

fn field<'a>(map: &'a Map<String, Value>, name: &'static str) -> Result<&'a Value, CoreError> {
    map.get(name).ok_or_else(|| bad(name, "missing"))
}

fn uint(map: &Map<String, Value>, name: &'static str) -> Result<u64, CoreError> {
    let v = field(map, name)?;
    v.as_u64()
        .ok_or_else(|| bad(name, format!("{v} is not an unsigned integer")))
}

fn boolean(map: &Map<String, Value>, name: &'static str) -> Result<bool, CoreError> {
    let v = field(map, name)?;
    v.as_bool()
        .ok_or_else(|| bad(name, format!("{v} is not a boolean")))
}

fn string(map: &Map<String, Value>, name: &'static str) -> Result<String, CoreError> {
    let v = field(map, name)?;
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(name, format!("{v} is not a string")))
}

fn array<'a>(map: &'a Map<String, Value>, name: &'static str) -> Result<&'a [Value], CoreError> {
    let v = field(map, name)?;
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| bad(name, format!("{v} is not an array")))
}

fn string_list(map: &Map<String, Value>, name: &'static str) -> Result<Vec<String>, CoreError> {
    array(map, name)?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(name, format!("element {v} is not a string")))
        })
        .collect()
}

fn path_list(map: &Map<String, Value>, name: &'static str) -> Result<Vec<PathBuf>, CoreError> {
    let list = string_list(map, name)?;
    if let Some(p) = list.iter().find(|p| !p.starts_with('/')) {
        return Err(bad(name, format!("'{p}' is not an absolute path")));
    }
    Ok(list.into_iter().map(PathBuf::from).collect())
}

fn log_spec(v: &Value) -> Result<LogSpec, CoreError> {
    let Value::Object(map) = v else {
        return Err(bad("logs", format!("element {v} is not an object")));
    };
    let format = match string(map, "format")?.as_str() {
        "cri" => LogFormat::Cri,
        "json" => LogFormat::Json,
        "journald" => LogFormat::Journald,
        other => {
            return Err(bad(
                "format",
                format!("'{other}' is not cri, json or journald"),
            ))
        }
    };
    let path = PathBuf::from(string(map, "path")?);
    if format != LogFormat::Journald && !path.is_absolute() {
        return Err(bad(
            "path",
            format!("'{}' is not an absolute path", path.display()),
        ));
    }
    let dialect = match string(map, "dialect")?.as_str() {
        "conmon-rs" => LogDialect::ConmonRs,
        "conmon" => LogDialect::Conmon,
        other => {
            return Err(bad(
                "dialect",
                format!("'{other}' is not conmon-rs or conmon"),
            ))
        }
    };
    let journal_fields = array(map, "journal_fields")?
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
            _ => Err(bad(
                "journal_fields",
                format!("element {pair} is not a [name, value] pair of strings"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LogSpec {
        format,
        path,
        max_size: uint(map, "max_size")?,
        global_max: uint(map, "global_max")?,
        dialect,
        journal_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeldRecord {
        HeldRecord {
            id: "c1".into(),
            key: 7,
            pid: 4242,
            terminal: false,
            stdin: true,
            stdin_once: true,
            logs: vec![
                LogSpec::new(LogFormat::Cri, "/var/log/c1.log".into(), 1024),
                LogSpec {
                    format: LogFormat::Journald,
                    path: PathBuf::new(),
                    max_size: 0,
                    global_max: 5,
                    dialect: LogDialect::Conmon,
                    journal_fields: vec![("CONTAINER_NAME".into(), "x \"y\"".into())],
                },
            ],
            exit_paths: vec!["/run/exits/c1".into()],
            oom_exit_paths: vec![],
            cleanup_cmd: vec!["/bin/cleanup".into(), "--id".into(), "c1".into()],
            sync_logs: true,
            created: 1_765_000_000,
            fds: vec![FdRole::Stdout, FdRole::Stderr, FdRole::Stdin],
        }
    }

    fn field_of(err: CoreError) -> &'static str {
        match err {
            CoreError::BadRecord { field, .. } => field,
            other => panic!("not a record error: {other}"),
        }
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&sample().encode()).unwrap();
        change(v.as_object_mut().unwrap());
        v.to_string().into_bytes()
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(HeldRecord::decode(&r.encode()).unwrap(), r);
        let pty = HeldRecord {
            terminal: true,
            stdin: true,
            fds: vec![FdRole::Pty],
            logs: vec![],
            ..sample()
        };
        assert_eq!(HeldRecord::decode(&pty.encode()).unwrap(), pty);
        let journaled = HeldRecord {
            fds: vec![
                FdRole::Stdout,
                FdRole::Stderr,
                FdRole::Stdin,
                FdRole::StdoutJournal,
                FdRole::StderrJournal,
                FdRole::Ledger,
            ],
            ..sample()
        };
        assert!(journaled.fds.len() <= crate::keeper::MAX_FDS_PER_CONTAINER);
        assert_eq!(HeldRecord::decode(&journaled.encode()).unwrap(), journaled);
        let text = String::from_utf8(journaled.encode()).unwrap();
        for name in ["\"stdout_journal\"", "\"stderr_journal\"", "\"ledger\""] {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn journals_and_ledger_are_checked() {
        let valid = [
            json!(["stdout", "stderr", "stdout_journal", "ledger"]),
            json!(["stdout", "stderr", "stderr_journal", "ledger"]),
            json!([
                "stdout",
                "stderr",
                "stdin",
                "stdout_journal",
                "stderr_journal",
                "ledger"
            ]),
            json!([
                "ledger",
                "stderr_journal",
                "stdout",
                "stdout_journal",
                "stderr"
            ]),
        ];
        for fds in valid {
            let bytes = with(|m| {
                m.insert("fds".into(), fds.clone());
            });
            let record = HeldRecord::decode(&bytes).unwrap_or_else(|e| panic!("{fds}: {e}"));
            assert!(record.fd_index(FdRole::Ledger).is_some(), "{fds}");
        }
        let invalid = [
            // A journal without the ledger, a ledger without a journal.
            json!(["stdout", "stderr", "stdout_journal"]),
            json!(["stdout", "stderr", "ledger"]),
            // Twice.
            json!([
                "stdout",
                "stderr",
                "stdout_journal",
                "stdout_journal",
                "ledger"
            ]),
            json!(["stdout", "stderr", "stdout_journal", "ledger", "ledger"]),
            // Not a journal name.
            json!(["stdout", "stderr", "pty_journal", "ledger"]),
        ];
        for fds in invalid {
            let bytes = with(|m| {
                m.insert("fds".into(), fds.clone());
            });
            assert_eq!(
                field_of(HeldRecord::decode(&bytes).unwrap_err()),
                "fds",
                "{fds}"
            );
        }
        // A journal needs its stream's pipe, and no terminal.
        let pty = |fds: Value| {
            with(|m| {
                m.insert("terminal".into(), json!(true));
                m.insert("fds".into(), fds);
            })
        };
        for fds in [
            json!(["pty", "stdout_journal", "ledger"]),
            json!(["pty", "stderr_journal", "stdout_journal", "ledger"]),
        ] {
            assert_eq!(
                field_of(HeldRecord::decode(&pty(fds.clone())).unwrap_err()),
                "fds",
                "{fds}"
            );
        }
        assert!(HeldRecord::decode(&pty(json!(["pty"]))).is_ok());
    }

    #[test]
    fn missing_field_is_named() {
        for name in ["id", "key", "pid", "logs", "fds", "created", "sync_logs"] {
            let bytes = with(|m| {
                m.remove(name);
            });
            let err = HeldRecord::decode(&bytes).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            assert_eq!(field_of(err), name);
        }
    }

    #[test]
    fn bad_field_is_named() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("pid", json!(0), "pid"),
            ("pid", json!(-3), "pid"),
            ("key", json!("7"), "key"),
            ("terminal", json!(1), "terminal"),
            ("exit_paths", json!(["relative"]), "exit_paths"),
            ("fds", json!(["stdout", "stdout", "stderr"]), "fds"),
            ("fds", json!(["pty"]), "fds"),
            ("fds", json!(["stdout", "stderr", "tty"]), "fds"),
            ("logs", json!([{"format": "xml"}]), "format"),
            ("version", json!(2), "version"),
        ];
        for (name, value, expected) in cases {
            let bytes = with(|m| {
                m.insert(name.into(), value.clone());
            });
            assert_eq!(
                field_of(HeldRecord::decode(&bytes).unwrap_err()),
                expected,
                "{name}={value}"
            );
        }
        assert_eq!(field_of(HeldRecord::decode(b"[1]").unwrap_err()), "record");
        assert_eq!(field_of(HeldRecord::decode(b"{").unwrap_err()), "record");
    }

    #[test]
    fn stdin_pipe_needs_stdin_without_terminal() {
        let bytes = with(|m| {
            m.insert("stdin".into(), json!(false));
        });
        assert_eq!(field_of(HeldRecord::decode(&bytes).unwrap_err()), "fds");
    }

    #[test]
    fn fd_index_follows_the_order() {
        let r = sample();
        assert_eq!(r.fd_index(FdRole::Stdin), Some(2));
        assert_eq!(r.fd_index(FdRole::Pty), None);
    }
}
