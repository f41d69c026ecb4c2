//! The container log drivers (spec §4) end to end: the real binary over its
//! socket, real busybox containers under runc and crun, and the real
//! journal (see `common::journal` for which one).

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::journal::{self, Entry};
use common::*;

const EXIT_WAIT: Duration = Duration::from_secs(20);
const JOURNAL_WAIT: Duration = Duration::from_secs(20);

const CRI: u16 = 0;
const JSON: u16 = 1;
const JOURNALD: u16 = 2;

fn driver(kind: u16, path: &Path, max_size: u64) -> LogDriver {
    LogDriver {
        kind,
        path: path.display().to_string(),
        max_size,
    }
}

fn journald_driver(max_size: u64) -> LogDriver {
    LogDriver {
        kind: JOURNALD,
        path: String::new(),
        max_size,
    }
}

/// A create request with an exit file and exactly `drivers`.
fn request(dir: &Path, id: &str, bundle: &Path, drivers: Vec<LogDriver>) -> CreateRequest {
    let mut req = basic_request(dir, id, bundle, false);
    req.log_drivers = drivers;
    req
}

/// A shell loop that waits until the test creates `/tmp/go` in the
/// container (through `/proc/<pid>/root`, see [`release`]).
const WAIT_FOR_GO: &str = "while [ ! -e /tmp/go ]; do sleep 0.05; done";

/// Lets a container blocked in [`WAIT_FOR_GO`] continue.
fn release(container_pid: u32) {
    fs::write(format!("/proc/{container_pid}/root/tmp/go"), b"").unwrap();
}

/// Prints a 70 000 byte line (`0123456789` repeated, then `\n`): longer than
/// one 64 KiB read, so every driver gets it in several pieces.
const LONG_LINE: &str = "yes 0123456789 | head -c 77000 | busybox tr -d '\\n'; echo";

fn long_line() -> String {
    "0123456789".repeat(7000)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One entry of a JSON log.
#[derive(Debug, PartialEq, Eq)]
struct JsonEntry {
    timestamp: u64,
    pipe: String,
    message: String,
}

/// Parses a JSON log, checking the exact shape of every line:
/// `{"timestamp":<digits>,"pipe":"stdout|stderr","message":"..."}`, keys in
/// this order and nothing else.
fn parse_json_log(log: &[u8]) -> Vec<JsonEntry> {
    let text = std::str::from_utf8(log).expect("a JSON log is UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "unterminated: {text:?}"
    );
    text.lines()
        .map(|line| {
            let rest = line
                .strip_prefix("{\"timestamp\":")
                .unwrap_or_else(|| panic!("bad start: {line:?}"));
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let timestamp = rest[..digits].parse().expect("timestamp digits");
            let rest = &rest[digits..];
            let (pipe, rest) = if let Some(rest) = rest.strip_prefix(",\"pipe\":\"stdout\"") {
                ("stdout", rest)
            } else if let Some(rest) = rest.strip_prefix(",\"pipe\":\"stderr\"") {
                ("stderr", rest)
            } else {
                panic!("bad pipe: {line:?}")
            };
            let message = rest
                .strip_prefix(",\"message\":")
                .and_then(|m| m.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad message: {line:?}"));
            let message: String = serde_json::from_str(message)
                .unwrap_or_else(|e| panic!("message is not one JSON string ({e}): {line:?}"));
            // And the line as a whole is one JSON object with three keys.
            let object: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(object.as_object().map(|o| o.len()), Some(3), "{line:?}");
            JsonEntry {
                timestamp,
                pipe: pipe.to_string(),
                message,
            }
        })
        .collect()
}

fn messages<'a>(entries: &'a [JsonEntry], pipe: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|e| e.pipe == pipe)
        .map(|e| e.message.as_str())
        .collect()
}

#[test]
fn json_driver_writes_one_trimmed_lossy_entry_per_line() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("json");
        let id = container_id();
        let script = format!(
            "printf 'out one\\r\\n'; printf 'err one\\n' >&2; printf ' \\t padded \\t \\n'; \
             printf 'bad \\377\\376 utf8\\n'; printf 'err \\377 two\\r\\n' >&2; \
             printf 'q\"b\\\\s\\001\\n'; {LONG_LINE}; printf 'tail'"
        );
        let bundle = make_bundle(dir.path(), &["/bin/sh", "-c", &script], false);
        let log = dir.path().join("ctr.json");
        let req = request(dir.path(), &id, &bundle, vec![driver(JSON, &log, 0)]);
        // The JSON timestamp comes from the worker's timestamp cache, which
        // may be up to 100 ms old.
        let before = unix_now() - 1;
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
        let after = unix_now();
        let raw = fs::read(&log).unwrap();
        let entries = parse_json_log(&raw);

        let text = String::from_utf8_lossy(&raw);
        let first = text.lines().next().unwrap();
        let ts = entries[0].timestamp;
        assert_eq!(
            first,
            format!("{{\"timestamp\":{ts},\"pipe\":\"stdout\",\"message\":\"out one\"}}")
        );
        for e in &entries {
            assert!(
                (before..=after).contains(&e.timestamp),
                "timestamp {} outside [{before}, {after}]",
                e.timestamp
            );
        }

        let out = messages(&entries, "stdout");
        // Whitespace (the "\r\n" included) is trimmed, each invalid byte
        // is one U+FFFD, quotes/backslashes/control bytes are escaped.
        assert_eq!(
            &out[..4],
            [
                "out one",
                "padded",
                "bad \u{FFFD}\u{FFFD} utf8",
                "q\"b\\s\u{1}"
            ]
        );
        assert!(
            text.contains(r#""message":"q\"b\\s\u0001"}"#),
            "{text:.300}"
        );
        // The long line arrives in several reads: one entry per piece, no
        // marker; the pieces put together give the line back.
        assert_eq!(out.last(), Some(&"tail"));
        let pieces = &out[4..out.len() - 1];
        assert!(pieces.len() >= 2, "70000 bytes in {} entries", pieces.len());
        assert_eq!(pieces.concat(), long_line());
        assert_eq!(
            messages(&entries, "stderr"),
            ["err one", "err \u{FFFD} two"]
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn json_max_size_truncates_and_does_not_count_the_entry_that_triggered_it() {
    // Five entries of exactly 56 bytes each (10-digit timestamp):
    // {"timestamp":1787317753,"pipe":"stdout","message":"aN"}\n
    // Spec §4.3: written += 56 first; if written > maxSize, truncate and
    // write the entry uncounted (written = 0).
    //   maxSize 120: 56, 112, 168 → truncate (a3, 0), 56, 112  → a3 a4 a5
    //   maxSize 112: 56, 112 (not over), 168 → truncate (a3, 0), 56, 112 → a3 a4 a5
    //   maxSize 111: 56, 112 → truncate (a2, 0), 56, 112 → truncate (a4, 0), 56 → a4 a5
    //   maxSize 0: unlimited → a1 .. a5
    // Had the truncating entry been counted, maxSize 120 would end with a5
    // alone.
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("jsonmax");
        let id = container_id();
        let bundle = make_bundle(
            dir.path(),
            &["/bin/sh", "-c", "for i in 1 2 3 4 5; do echo a$i; done"],
            false,
        );
        let limits = [120u64, 112, 111, 0];
        let logs: Vec<_> = limits
            .iter()
            .map(|max| dir.path().join(format!("max{max}.json")))
            .collect();
        let drivers = limits
            .iter()
            .zip(&logs)
            .map(|(&max, log)| driver(JSON, log, max))
            .collect();
        let req = request(dir.path(), &id, &bundle, drivers);
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
        let expected: [&[&str]; 4] = [
            &["a3", "a4", "a5"],
            &["a3", "a4", "a5"],
            &["a4", "a5"],
            &["a1", "a2", "a3", "a4", "a5"],
        ];
        for ((max, log), want) in limits.iter().zip(&logs).zip(expected) {
            let raw = fs::read(log).unwrap();
            let entries = parse_json_log(&raw);
            for line in String::from_utf8_lossy(&raw).lines() {
                assert_eq!(line.len() + 1, 56, "entry size assumption: {line}");
            }
            assert_eq!(messages(&entries, "stdout"), want, "maxSize {max}");
        }
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn reopen_rotates_json_and_cri_logs() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("jsonreopen");
        let id = container_id();
        let script =
            format!("echo before; echo before-err >&2; {WAIT_FOR_GO}; echo after; echo after-2");
        let bundle = make_bundle(dir.path(), &["/bin/sh", "-c", &script], false);
        let json = dir.path().join("ctr.json");
        let cri = dir.path().join("ctr.log");
        // Entry sizes: before 60, before-err 64, after 59, after-2 61. With
        // maxSize 200 the counter must start from 0 in the fresh file
        // (ringmon resets it on reopen; spec §3.5 notes upstream does not):
        // 59 + 61 fit, whereas 124 + 59 + 61 would truncate at after-2.
        let limited = dir.path().join("ctr-max.json");
        let req = request(
            dir.path(),
            &id,
            &bundle,
            vec![
                driver(JSON, &json, 0),
                driver(CRI, &cri, 0),
                driver(JSON, &limited, 200),
            ],
        );
        let pid = run_local_value(async { server.client().await.create_container(&req).await });
        server.start_container(&id);
        assert!(
            wait_until(EXIT_WAIT, || {
                let log = fs::read(&json).unwrap_or_default();
                parse_json_log(&log).len() == 2
            }),
            "the first two lines were not logged"
        );
        // What the kubelet does: rename, then ask for a fresh file.
        fs::rename(&json, dir.path().join("ctr.json.1")).unwrap();
        fs::rename(&cri, dir.path().join("ctr.log.1")).unwrap();
        fs::rename(&limited, dir.path().join("ctr-max.json.1")).unwrap();
        run_local(async {
            server.client().await.reopen_log(&id).await.unwrap();
        });
        release(pid);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");

        for (rotated, current) in [
            (dir.path().join("ctr.json.1"), &json),
            (dir.path().join("ctr-max.json.1"), &limited),
        ] {
            let old = parse_json_log(&fs::read(rotated).unwrap());
            assert_eq!(messages(&old, "stdout"), ["before"]);
            assert_eq!(messages(&old, "stderr"), ["before-err"]);
            let new = parse_json_log(&fs::read(current).unwrap());
            assert_eq!(messages(&new, "stdout"), ["after", "after-2"]);
            assert_eq!(messages(&new, "stderr"), Vec::<&str>::new());
        }
        assert_eq!(
            parse_cri(&fs::read(dir.path().join("ctr.log.1")).unwrap()),
            (b"before\n".to_vec(), b"before-err\n".to_vec())
        );
        assert_eq!(
            parse_cri(&fs::read(&cri).unwrap()),
            (b"after\nafter-2\n".to_vec(), Vec::new())
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// `run_local` for a body that returns a value.
fn run_local_value<T>(
    f: impl std::future::Future<Output = Result<T, ringmon::client::ClientError>>,
) -> T {
    let mut out = None;
    run_local(async { out = Some(f.await.expect("RPC")) });
    out.unwrap()
}

#[test]
fn journald_driver_sends_each_line_with_priority_5() {
    let kind = journal::ensure();
    eprintln!("journal: {kind:?}");
    for_each_runtime(|rt| {
        let since = SystemTime::now() - Duration::from_secs(1);
        let server = Server::start(rt);
        let dir = TempDir::new("journald");
        let id = container_id();
        let marker = format!("ringmon-{}", ringmon::core::monitor::random_uuid());
        let script = format!(
            "echo '{marker} out 1'; echo '{marker} err 1' >&2; {WAIT_FOR_GO}; \
             printf '{marker} crlf\\r\\n'; printf '{marker} partial'"
        );
        let bundle = make_bundle(dir.path(), &["/bin/sh", "-c", &script], false);
        // maxSize is ignored by journald: a limit of one byte loses nothing.
        let req = request(dir.path(), &id, &bundle, vec![journald_driver(1)]);
        let pid = run_local_value(async { server.client().await.create_container(&req).await });
        server.start_container(&id);
        let first = journal::wait_for(kind, server.serving_pid(), since, JOURNAL_WAIT, |e| {
            e.len() >= 2
        });
        let mut got: Vec<Vec<u8>> = first.iter().map(|e| e.message.clone()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                format!("{marker} err 1\n").into_bytes(),
                format!("{marker} out 1\n").into_bytes()
            ],
            "{first:?}"
        );
        // Reopen is a no-op for journald: it succeeds, nothing is lost.
        run_local(async {
            server.client().await.reopen_log(&id).await.unwrap();
        });
        release(pid);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
        let all = journal::wait_for(kind, server.serving_pid(), since, JOURNAL_WAIT, |e| {
            e.len() >= 4
        });
        // Exactly one entry per line, the line end kept, a partial tail as
        // it is (no closing line end as in CRI), nothing else.
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[..2], first[..]);
        assert_eq!(
            all[2..],
            [
                Entry {
                    priority: Some("5".into()),
                    message: format!("{marker} crlf\r\n").into_bytes()
                },
                Entry {
                    priority: Some("5".into()),
                    message: format!("{marker} partial").into_bytes()
                },
            ]
        );
        assert!(all.iter().all(|e| e.priority.as_deref() == Some("5")));
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// The records of a CRI log as (stream, content) with `P` records' added
/// line end removed, minus the closing `F` record(s) that ringmon adds at
/// EOF after a partial line (nothing the container wrote).
fn cri_segments(log: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut records: Vec<(String, bool, Vec<u8>)> = Vec::new();
    for rec in log.split_inclusive(|b| *b == b'\n') {
        let mut parts = rec.splitn(4, |b| *b == b' ');
        let _timestamp = parts.next().unwrap();
        let stream = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
        let partial = match parts.next().unwrap() {
            b"P" => true,
            b"F" => false,
            other => panic!("bad tag {other:?}"),
        };
        let content = parts.next().unwrap();
        let content = if partial {
            &content[..content.len() - 1]
        } else {
            content
        };
        records.push((stream, partial, content.to_vec()));
    }
    let mut segments = Vec::new();
    let mut open = std::collections::HashSet::new();
    for (stream, partial, content) in records {
        let closing = !partial && content == b"\n" && open.contains(&stream);
        if partial {
            open.insert(stream.clone());
        } else {
            open.remove(&stream);
        }
        segments.push((stream, content, closing));
    }
    // Only the last record of a stream can be a closing one.
    let mut result: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, (stream, content, closing)) in segments.iter().enumerate() {
        let last_of_stream = !segments[i + 1..].iter().any(|(s, _, _)| s == stream);
        if *closing && last_of_stream {
            continue;
        }
        result.push((stream.clone(), content.clone()));
    }
    result
}

#[test]
fn several_drivers_get_every_chunk_byte_identical() {
    let kind = journal::ensure();
    for_each_runtime(|rt| {
        let since = SystemTime::now() - Duration::from_secs(1);
        let server = Server::start(rt);
        let dir = TempDir::new("alldrivers");
        let id = container_id();
        let script = format!(
            "i=0; while [ $i -lt 200 ]; do echo \"line $i of stdout\"; \
             echo \"line $i of stderr\" >&2; i=$((i+1)); done; {LONG_LINE}; printf 'the end'"
        );
        let bundle = make_bundle(dir.path(), &["/bin/sh", "-c", &script], false);
        let cri = dir.path().join("ctr.log");
        let json = dir.path().join("ctr.json");
        let req = request(
            dir.path(),
            &id,
            &bundle,
            vec![
                driver(CRI, &cri, 0),
                driver(JSON, &json, 0),
                journald_driver(0),
            ],
        );
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");

        let mut out = Vec::new();
        let mut err = Vec::new();
        for i in 0..200 {
            out.extend_from_slice(format!("line {i} of stdout\n").as_bytes());
            err.extend_from_slice(format!("line {i} of stderr\n").as_bytes());
        }
        out.extend_from_slice(long_line().as_bytes());
        out.extend_from_slice(b"\nthe end");

        // CRI: everything, the open line closed at EOF.
        let cri_log = fs::read(&cri).unwrap();
        assert!(parse_cri(&cri_log) == (as_logged(&out), err.clone()));
        let segments = cri_segments(&cri_log);
        assert!(
            segments.len() > 402,
            "the long line is in pieces: {}",
            segments.len()
        );

        // JSON: the same pieces, in the same order, as trimmed text (the
        // content has no other whitespace at the ends of its lines).
        let entries = parse_json_log(&fs::read(&json).unwrap());
        let json_pieces: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.pipe.clone(), e.message.as_bytes().to_vec()))
            .collect();
        let trimmed: Vec<(String, Vec<u8>)> = segments
            .iter()
            .map(|(s, c)| {
                (
                    s.clone(),
                    String::from_utf8_lossy(c).trim().as_bytes().to_vec(),
                )
            })
            .collect();
        assert!(
            json_pieces == trimmed,
            "JSON entries differ from CRI records"
        );

        // journald: the same pieces, byte for byte, in the same order.
        let want: Vec<&[u8]> = segments.iter().map(|(_, c)| c.as_slice()).collect();
        let journal = journal::wait_for(kind, server.serving_pid(), since, JOURNAL_WAIT, |e| {
            e.len() >= want.len()
        });
        let got: Vec<&[u8]> = journal.iter().map(|e| e.message.as_slice()).collect();
        assert_eq!(got.len(), want.len(), "journal entries");
        assert!(got == want, "journal messages differ from CRI records");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn file_drivers_need_a_path() {
    let rt = &runtimes()[0];
    let server = Server::start(rt);
    let dir = TempDir::new("driverpath");
    let bundle = make_bundle(dir.path(), &["/bin/true"], false);
    let log = dir.path().join("ctr.log");
    run_local(async {
        let c = server.client().await;
        for (drivers, needle) in [
            (
                vec![driver(CRI, Path::new(""), 0)],
                "invalid logDrivers[0].path '': must not be empty",
            ),
            (
                vec![driver(CRI, &log, 0), driver(JSON, Path::new(""), 0)],
                "invalid logDrivers[1].path '': must not be empty",
            ),
            (
                vec![journald_driver(0), driver(JSON, Path::new("rel.json"), 0)],
                "invalid logDrivers[1].path 'rel.json': must be an absolute path",
            ),
        ] {
            let req = request(dir.path(), &container_id(), &bundle, drivers);
            let e = c.create_container(&req).await.unwrap_err().to_string();
            assert!(e.contains(needle), "error {e:?} should contain {needle:?}");
        }
        // journald needs no path; the server still serves.
        let id = container_id();
        let req = request(dir.path(), &id, &bundle, vec![journald_driver(0)]);
        c.create_container(&req).await.unwrap();
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn stand_in_journal_parses_the_native_protocol() {
    let mut datagram = Vec::new();
    ringmon::log::journald::encode_entry(&mut datagram, b"two\nlines\n");
    ringmon::log::journald::encode_entry(&mut datagram, b"");
    datagram.extend_from_slice(b"PLAIN=text\n");
    let fields = journal::parse_native(&datagram);
    let expect: Vec<(String, Vec<u8>)> = [
        ("PRIORITY", &b"5"[..]),
        ("MESSAGE", b"two\nlines\n"),
        ("PRIORITY", b"5"),
        ("MESSAGE", b""),
        ("PLAIN", b"text"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_vec()))
    .collect();
    assert_eq!(fields, expect);
}

/// Not a test: the stand-in journal's detached process on machines without
/// journald (see `common::journal`). Does nothing unless started by it.
#[test]
#[ignore = "helper process of the stand-in journal"]
fn journal_stand_in_process() {
    journal::stand_in_process();
}
