//! The journal that the journald log driver writes to, for the tests.
//!
//! ringmon sends to the fixed path `/run/systemd/journal/socket`, so the
//! tests need something listening there. [`ensure`] makes sure something is,
//! and [`entries`] reads back what a given server process sent:
//!
//! - **systemd-journald** (used whenever a journald runs or its binary is
//!   installed): if the socket does not accept a connect, the binary is
//!   started by hand, detached and left running (PID 1 is not systemd on the
//!   test machines; a standalone journald creates its sockets itself and
//!   stores into `/run/log/journal`). Entries are read with
//!   `journalctl -o json`.
//! - **a stand-in listener** (only on machines with no journald at all, or
//!   with `RINGMON_TEST_JOURNALD=none`): a detached helper process (the
//!   test binary running its `journal_stand_in_process` test) binds the
//!   socket, parses the native protocol and appends each entry, in
//!   `journalctl -o json` form, to [`FAKE_ENTRIES`], which the tests read.
//!   It exits after 10 idle minutes.
//!
//! Starting or binding happens under an exclusive `flock` on [`LOCK_PATH`],
//! which the Go tests (`tests/go/journal_test.go`) take too, so Rust and Go
//! tests running at the same time start at most one journal.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials,
};

/// Where journald (and ringmon's journald driver) expects native datagrams.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// Taken (flock, exclusive) while a journal is started or bound.
pub const LOCK_PATH: &str = "/run/ringmon-test-journal.lock";
/// The stand-in listener's entries, one `journalctl -o json` object a line.
pub const FAKE_ENTRIES: &str = "/run/ringmon-test-journal/entries.jsonl";

/// Which journal the tests talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Journald,
    StandIn,
}

/// One journal entry as the tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub priority: Option<String>,
    pub message: Vec<u8>,
}

/// The systemd-journald binary, unless `RINGMON_TEST_JOURNALD=none` (which
/// forces the stand-in, for testing the fixture) or another path is given.
fn journald_binary() -> Option<PathBuf> {
    match std::env::var("RINGMON_TEST_JOURNALD") {
        Ok(value) if value == "none" => None,
        Ok(value) if !value.is_empty() => Some(PathBuf::from(value)),
        _ => [
            "/lib/systemd/systemd-journald",
            "/usr/lib/systemd/systemd-journald",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists()),
    }
}

/// A process whose comm is `systemd-journal` (the kernel truncates
/// `systemd-journald` to 15 bytes) runs in this pid namespace.
fn journald_running() -> bool {
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "systemd-journal")
    })
}

/// Whether a datagram `connect` to the journal socket succeeds (someone
/// listens; a stale socket file refuses).
pub fn accepts() -> bool {
    UnixDatagram::unbound().is_ok_and(|s| s.connect(SOCKET).is_ok())
}

/// Makes sure something reads `/run/systemd/journal/socket`, starting
/// systemd-journald or binding the stand-in if needed, and says which.
/// Idempotent and cheap when the journal is up; call it in every test.
pub fn ensure() -> Kind {
    let forced_stand_in = std::env::var("RINGMON_TEST_JOURNALD").is_ok_and(|v| v == "none");
    let kind = if !forced_stand_in && (journald_binary().is_some() || journald_running()) {
        Kind::Journald
    } else {
        Kind::StandIn
    };
    if accepts() {
        return kind;
    }
    let _lock = lock();
    // Another process may have won the race while we waited for the lock.
    if accepts() {
        return kind;
    }
    fs::create_dir_all("/run/systemd/journal").unwrap();
    // A socket file left by a dead journal would make a bind fail.
    let _ = fs::remove_file(SOCKET);
    match kind {
        Kind::Journald => match journald_binary() {
            Some(binary) => start_journald(&binary),
            None => panic!("a journald runs, but not on {SOCKET}, and there is no binary to start"),
        },
        Kind::StandIn => start_stand_in(),
    }
    assert!(accepts(), "{SOCKET} still refuses datagrams");
    kind
}

fn lock() -> Flock<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("open {LOCK_PATH}: {e}"));
    Flock::lock(file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {LOCK_PATH}: {e}"))
}

/// Starts journald detached (own process group, stdio on /dev/null) and
/// waits up to 10 s for its socket. It is left running on purpose: it serves
/// every later test and test process.
fn start_journald(binary: &Path) {
    eprintln!(
        "starting {} (no journald listens on {SOCKET})",
        binary.display()
    );
    let mut child = Command::new(binary)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let up = super::wait_until(Duration::from_secs(10), || {
        accepts() || child.try_wait().is_ok_and(|status| status.is_some())
    });
    if let Ok(Some(status)) = child.try_wait() {
        panic!("{} exited with {status}", binary.display());
    }
    assert!(up, "{} did not open {SOCKET} within 10 s", binary.display());
}

/// Environment variable that turns a test binary into the stand-in process.
pub const STAND_IN_ENV: &str = "RINGMON_JOURNAL_STAND_IN";
/// The `#[ignore]`d test of `tests/log_drivers.rs` that runs the stand-in.
pub const STAND_IN_TEST: &str = "journal_stand_in_process";
/// The stand-in exits after this long without a datagram.
const STAND_IN_IDLE: Duration = Duration::from_secs(600);

/// Starts the stand-in as a detached process (this test binary, running only
/// [`STAND_IN_TEST`]) so that it outlives this test process and keeps
/// serving concurrent test processes; waits for its socket.
fn start_stand_in() {
    eprintln!("no journald on this machine: starting a stand-in listener on {SOCKET}");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args([STAND_IN_TEST, "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(STAND_IN_ENV, "serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
    let up = super::wait_until(Duration::from_secs(10), || {
        accepts() || child.try_wait().is_ok_and(|status| status.is_some())
    });
    if let Ok(Some(status)) = child.try_wait() {
        panic!("the stand-in journal exited with {status}");
    }
    assert!(up, "the stand-in journal did not bind {SOCKET} within 10 s");
}

/// The body of [`STAND_IN_TEST`]: when started by [`ensure`], binds the
/// journal socket and serves it until idle for 10 minutes; else returns.
pub fn stand_in_process() {
    if std::env::var(STAND_IN_ENV).as_deref() != Ok("serve") {
        return;
    }
    fs::create_dir_all(Path::new(FAKE_ENTRIES).parent().unwrap()).unwrap();
    let socket = UnixDatagram::bind(SOCKET).unwrap_or_else(|e| panic!("bind {SOCKET}: {e}"));
    setsockopt(&socket, sockopt::PassCred, &true).unwrap();
    socket.set_read_timeout(Some(STAND_IN_IDLE)).unwrap();
    // journald's socket is world-writable.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(SOCKET, fs::Permissions::from_mode(0o666)).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let mut space = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
        let message = match recvmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        ) {
            Ok(message) => message,
            // Idle: leave; the socket file stays and refuses, so the next
            // `ensure` starts a new stand-in.
            Err(nix::errno::Errno::EAGAIN) => return,
            Err(_) => continue,
        };
        let len = message.bytes;
        let mut pid = None;
        let mut payload = None;
        for cmsg in message.cmsgs().into_iter().flatten() {
            match cmsg {
                ControlMessageOwned::ScmCredentials(creds) => pid = Some(creds.pid()),
                // A sealed memfd carrying the entry (entries too large for a
                // datagram). Read through procfs; the received descriptor
                // stays open (owning a raw fd needs `unsafe`, kept out of the
                // tests; this path is rare).
                ControlMessageOwned::ScmRights(fds) => {
                    payload = fds
                        .first()
                        .and_then(|fd| fs::read(format!("/proc/self/fd/{fd}")).ok());
                }
                _ => {}
            }
        }
        let payload = payload.unwrap_or_else(|| buffer[..len].to_vec());
        let mut fields = parse_native(&payload);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        fields.push((
            "__REALTIME_TIMESTAMP".into(),
            now.as_micros().to_string().into_bytes(),
        ));
        if let Some(pid) = pid {
            fields.insert(0, ("_PID".into(), pid.to_string().into_bytes()));
            if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
                fields.insert(1, ("_COMM".into(), comm.trim_end().as_bytes().to_vec()));
            }
        }
        let object: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|(name, value)| (name, field_json(value)))
            .collect();
        let mut line = serde_json::to_vec(&object).unwrap();
        line.push(b'\n');
        if let Ok(mut file) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(FAKE_ENTRIES)
        {
            let _ = file.write_all(&line);
        }
    }
}

/// A field value the way `journalctl -o json` shows it: a string when it is
/// UTF-8, else an array of byte values.
fn field_json(value: Vec<u8>) -> serde_json::Value {
    match String::from_utf8(value) {
        Ok(text) => serde_json::Value::String(text),
        Err(e) => e
            .into_bytes()
            .into_iter()
            .map(serde_json::Value::from)
            .collect(),
    }
}

/// Parses a native-protocol datagram: `NAME=value\n` fields, or
/// `NAME\n` + little-endian u64 length + bytes + `\n` for values that may
/// hold newlines.
pub fn parse_native(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let Some(end) = data.iter().position(|&b| b == b'\n' || b == b'=') else {
            break;
        };
        let name = String::from_utf8_lossy(&data[..end]).into_owned();
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            fields.push((name, rest[..stop].to_vec()));
            data = rest.get(stop + 1..).unwrap_or_default();
        } else {
            let rest = &data[end + 1..];
            if rest.len() < 8 {
                break;
            }
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let Some(value) = rest.get(8..8 + len) else {
                break;
            };
            fields.push((name, value.to_vec()));
            data = rest.get(8 + len + 1..).unwrap_or_default();
        }
    }
    fields
}

/// The entries that process `pid` (whose comm must be `conmonrs`) sent
/// since `since` (whole seconds; pids are reused), in journal order.
pub fn entries(kind: Kind, pid: u32, since: SystemTime) -> Vec<Entry> {
    let since = since.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let lines = match kind {
        Kind::Journald => {
            let out = Command::new("journalctl")
                .args(["-o", "json", "--all", "--no-pager", "_COMM=conmonrs"])
                .arg(format!("_PID={pid}"))
                .arg(format!("--since=@{since}"))
                .output()
                .expect("run journalctl");
            assert!(
                out.status.success(),
                "journalctl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
        Kind::StandIn => fs::read(FAKE_ENTRIES).unwrap_or_default(),
    };
    let pid = pid.to_string();
    lines
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice::<serde_json::Value>(line).expect("a JSON object"))
        .filter(|v| field(v, "_COMM").as_deref() == Some(b"conmonrs".as_slice()))
        .filter(|v| field(v, "_PID").as_deref() == Some(pid.as_bytes()))
        .filter(|v| {
            field(v, "__REALTIME_TIMESTAMP")
                .and_then(|t| String::from_utf8(t).ok()?.parse::<u64>().ok())
                .is_some_and(|micros| micros / 1_000_000 >= since)
        })
        .map(|v| Entry {
            priority: field(&v, "PRIORITY").map(|p| String::from_utf8(p).unwrap()),
            message: field(&v, "MESSAGE").expect("MESSAGE shown (journalctl --all)"),
        })
        .collect()
}

/// A field of a `journalctl -o json` object: a string, or an array of byte
/// values (journalctl's form for non-printable data).
pub fn field(object: &serde_json::Value, name: &str) -> Option<Vec<u8>> {
    match object.get(name)? {
        serde_json::Value::String(text) => Some(text.as_bytes().to_vec()),
        serde_json::Value::Array(bytes) => Some(
            bytes
                .iter()
                .map(|b| {
                    b.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .expect("a byte")
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Polls (up to `limit`) until `pid`'s entries satisfy `done`; returns the
/// last entries seen.
pub fn wait_for(
    kind: Kind,
    pid: u32,
    since: SystemTime,
    limit: Duration,
    mut done: impl FnMut(&[Entry]) -> bool,
) -> Vec<Entry> {
    let mut last = Vec::new();
    super::wait_until(limit, || {
        last = entries(kind, pid, since);
        let ok = done(&last);
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    last
}
