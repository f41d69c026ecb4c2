//! Crash survival (issue 16): the keeper is what the pidfile names, the
//! worker (`conmonrs`) is its child and does the work. These tests kill the
//! real worker with SIGKILL while real containers run and check what the
//! design promises: the keeper starts a new worker, the socket keeps
//! answering, exit codes reach their exit files, and a container's piped
//! output reaches its log exactly once, in order, with no torn record (the
//! output journal: src/engine/journal.rs), however many kills land in a
//! burst.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::attach_client::{AttachConn, Packet};
use common::*;

/// Bound for anything that should happen promptly (exit files, new output).
const WAIT: Duration = Duration::from_secs(30);

/// Bound for one `version` call made while a new worker may still start.
const VERSION_WAIT: Duration = Duration::from_secs(20);

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)
}

/// The current worker; panics if the keeper has none.
fn worker(server: &Server) -> u32 {
    let mut found = None;
    let running = wait_until(Duration::from_secs(5), || {
        found = server.current_worker_pid();
        found.is_some()
    });
    assert!(
        running,
        "keeper {} (named {:?}) has no child named conmonrs (children {:?})",
        server.pid,
        process_name(server.pid),
        children_of(server.pid)
    );
    found.unwrap()
}

/// Kills the worker with SIGKILL and returns the pid of the one the keeper
/// starts instead, after checking the keeper itself lives on and a new
/// connection to the socket gets a `version` answer.
fn kill_worker(server: &Server) -> u32 {
    let old = worker(server);
    signal(old, Signal::SIGKILL);
    let new = server.new_worker_pid(old);
    assert!(
        !gone(server.pid),
        "keeper {} died with its worker",
        server.pid
    );
    version_answers(server);
    new
}

/// A `version` call over a new connection, bounded by [`VERSION_WAIT`].
fn version_answers(server: &Server) -> ringmon::client::Version {
    let mut answer = None;
    run_local(async {
        let call = async {
            let client = Client::connect(&server.socket).await?;
            client.version(false).await
        };
        answer = Some(tokio::time::timeout(VERSION_WAIT, call).await);
    });
    match answer.unwrap() {
        Ok(Ok(version)) => version,
        Ok(Err(e)) => panic!("version after a kill: {e}"),
        Err(_) => panic!("version did not answer within {VERSION_WAIT:?}"),
    }
}

fn create(server: &Server, req: &CreateRequest) -> u32 {
    let mut pid = 0;
    run_local(async {
        pid = server
            .client()
            .await
            .create_container(req)
            .await
            .unwrap_or_else(|e| panic!("createContainer {}: {e}", req.id));
    });
    assert!(pid > 0);
    pid
}

/// Creates and starts a container running `script` under `sh -c`.
fn start_script(server: &Server, dir: &Path, script: &str) -> (String, u32) {
    let id = container_id();
    let bundle = make_bundle(dir, &["/bin/sh", "-c", script], false);
    let pid = create(server, &basic_request(dir, &id, &bundle, false));
    server.start_container(&id);
    (id, pid)
}

/// One CRI record: stream, tag, content (without the line end).
struct Record<'a> {
    stream: &'a [u8],
    tag: &'a [u8],
    content: &'a [u8],
}

/// Splits a CRI log into records, asserting each one is complete and well
/// formed: a line end, an RFC 3339 timestamp, a known stream and tag. A torn
/// record (cut by a kill and not cut back by the new worker) fails here.
fn records(log: &[u8]) -> Vec<Record<'_>> {
    if let Some(&last) = log.last() {
        assert_eq!(
            last,
            b'\n',
            "log ends in a torn record: {:?}",
            String::from_utf8_lossy(&log[log.len().saturating_sub(200)..])
        );
    }
    log.split_inclusive(|&b| b == b'\n')
        .enumerate()
        .map(|(n, line)| {
            let line = &line[..line.len() - 1];
            let show = || String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
            let mut fields = line.splitn(4, |&b| b == b' ');
            let (Some(ts), Some(stream), Some(tag), Some(content)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                panic!("record {n} has fewer than 4 fields: {:?}", show());
            };
            let ts = std::str::from_utf8(ts).unwrap_or("");
            assert!(
                ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T'),
                "record {n} has no timestamp: {:?}",
                show()
            );
            assert!(
                stream == b"stdout" || stream == b"stderr",
                "record {n} has stream {:?}",
                show()
            );
            assert!(
                tag == b"F" || tag == b"P",
                "record {n} has tag {:?}",
                show()
            );
            Record {
                stream,
                tag,
                content,
            }
        })
        .collect()
}

/// The stdout stream a CRI log holds (P records joined, F records end a
/// line), checked record by record with [`records`].
fn logged_stdout(log: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len());
    for rec in records(log) {
        if rec.stream == b"stdout" {
            out.extend_from_slice(rec.content);
            if rec.tag == b"F" {
                out.push(b'\n');
            }
        }
    }
    out
}

/// The counter values of a log whose container prints one decimal number
/// per line; every line must be one. Asserts they strictly increase (no
/// duplicate, no reordering) and returns them.
fn counters(log: &[u8]) -> Vec<u64> {
    let out = logged_stdout(log);
    let values: Vec<u64> = out
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "log line is not a counter: {:?}",
                        String::from_utf8_lossy(line)
                    )
                })
        })
        .collect();
    assert_strictly_increasing(&values);
    values
}

fn assert_strictly_increasing(values: &[u64]) {
    if let Some(w) = values.windows(2).find(|w| w[1] <= w[0]) {
        panic!(
            "counter {} follows {} (duplicate or reordered), {} values",
            w[1],
            w[0],
            values.len()
        );
    }
}

/// Where the counter sequence skips values (lines lost to kills).
fn gaps(values: &[u64]) -> u64 {
    values.windows(2).map(|w| w[1] - w[0] - 1).sum()
}

fn log_lines(dir: &Path) -> usize {
    fs::read(dir.join("ctr.log"))
        .map(|log| log.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0)
}

/// Waits until the container's log holds more than `lines` lines.
fn wait_log_beyond(dir: &Path, lines: usize, what: &str) -> usize {
    let mut now = 0;
    let grew = wait_until(WAIT, || {
        now = log_lines(dir);
        now > lines
    });
    assert!(grew, "{what}: log stayed at {now} lines (wanted > {lines})");
    now
}

fn exit_code(dir: &Path) -> String {
    String::from_utf8(wait_for_file(&dir.join("exit"), WAIT)).unwrap()
}

/// A shell loop printing 0, 1, 2... every `micros` µs, `count` lines (or for
/// ever without a count).
fn counter_script(micros: u32, count: Option<u32>) -> String {
    let cond = count.map_or("true".to_string(), |n| format!("[ $i -lt {n} ]"));
    format!("i=0; while {cond}; do echo $i; i=$((i+1)); /bin/busybox usleep {micros}; done")
}

#[test]
fn worker_killed_container_keeps_logging() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        assert_eq!(
            process_name(server.pid).as_deref(),
            Some("conmonrs-keeper"),
            "the pidfile names the keeper"
        );
        let dir = TempDir::new("kkill");
        // 150 lines, one every 20 ms (about 3 s), then exit 7.
        let script = format!("{}; exit 7", counter_script(20_000, Some(150)));
        let (id, _) = start_script(&server, dir.path(), &script);
        // About a second in: 40 of the 150 lines logged.
        let before = wait_log_beyond(dir.path(), 40, "before the kill");
        let old = worker(&server);
        let new = kill_worker(&server);
        assert_ne!(old, new);
        assert!(gone(old), "the killed worker {old} is gone");
        assert_eq!(exit_code(dir.path()), "7");
        let values = counters(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert!(
            values.len() > before,
            "no line logged after the kill ({} lines, {before} before it)",
            values.len()
        );
        assert_eq!(
            values,
            (0..150).collect::<Vec<u64>>(),
            "every line logged once, in order, across the kill"
        );
        // Still the same keeper, with the new worker serving.
        assert_eq!(server.current_worker_pid(), Some(new));
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// Lines of the burst: `seq -w` numbers (7 digits) widened to 32 bytes.
const BURST_LINES: u64 = 4_000_000;
const BURST_PAD: &str = "abcdefghijklmnopqrstuvw";
/// Kills during the burst, one each time the log grew by [`KILL_EVERY`].
const BURST_KILLS: u64 = 4;
const KILL_EVERY: u64 = 24 << 20;

/// The burst's stdout, as the container writes it.
fn burst_output() -> Vec<u8> {
    let mut out = Vec::with_capacity(BURST_LINES as usize * 32);
    for n in 1..=BURST_LINES {
        out.extend_from_slice(format!("{n:07} {BURST_PAD}\n").as_bytes());
    }
    out
}

/// Where two byte streams first differ, for a readable failure.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
    };
    format!(
        "{} bytes logged, {} written; first difference at byte {at}: logged {:?}, written {:?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    )
}

/// About 128 MB of numbered lines, as fast as busybox makes them, with the
/// worker killed four times in the middle: the log holds every byte once,
/// in order, in whole records.
#[test]
fn burst_across_kills() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("kburst");
        let script = format!(
            "/bin/busybox seq -w 1 {BURST_LINES} | /bin/busybox sed 's/$/ {BURST_PAD}/'; \
             echo end >&2"
        );
        let (id, _) = start_script(&server, dir.path(), &script);
        let log_path = dir.path().join("ctr.log");
        let mut kills = 0;
        for k in 1..=BURST_KILLS {
            let reached = wait_until(WAIT, || {
                fs::metadata(&log_path).is_ok_and(|m| m.len() > k * KILL_EVERY)
                    || dir.path().join("exit").exists()
            });
            assert!(
                reached,
                "the burst never reached {} MiB of log",
                (k * KILL_EVERY) >> 20
            );
            if dir.path().join("exit").exists() {
                break;
            }
            kill_worker(&server);
            kills += 1;
        }
        assert_eq!(exit_code(dir.path()), "0");
        let log = fs::read(&log_path).unwrap();
        let out = logged_stdout(&log);
        let want = burst_output();
        assert!(
            out == want,
            "after {kills} kills: {}",
            first_difference(&out, &want)
        );
        eprintln!(
            "burst across {kills} kills: all {} bytes logged once",
            want.len()
        );
        let (_, err) = parse_cri(&log);
        assert_eq!(err, b"end\n");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn exit_before_exit_file() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("kexit");
        let id = container_id();
        let bundle = make_bundle(dir.path(), &["/bin/sh", "-c", "exit 3"], false);
        let pid = create(&server, &basic_request(dir.path(), &id, &bundle, false));
        // The worker cannot see the exit while stopped: the container's
        // zombie waits for it, unreaped.
        let old = worker(&server);
        signal(old, Signal::SIGSTOP);
        server.start_container(&id);
        let exited = wait_until(WAIT, || is_zombie(pid));
        if !exited {
            signal(old, Signal::SIGCONT);
        }
        assert!(exited, "container {pid} did not exit");
        assert!(
            !dir.path().join("exit").exists(),
            "a stopped worker wrote the exit file"
        );
        // The zombie passes to the keeper (a subreaper), which reaps it and
        // hands the status to the next worker.
        signal(old, Signal::SIGKILL);
        server.new_worker_pid(old);
        assert_eq!(exit_code(dir.path()), "3");
        version_answers(&server);
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn ten_kills_in_a_row() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("kten");
        let (id, _) = start_script(&server, dir.path(), &counter_script(10_000, None));
        let mut lines = wait_log_beyond(dir.path(), 5, "before the first kill");
        let mut workers = vec![worker(&server)];
        for kill in 1..=10 {
            workers.push(kill_worker(&server));
            lines = wait_log_beyond(dir.path(), lines, &format!("after kill {kill}"));
        }
        let mut distinct = workers.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 11, "11 distinct workers: {workers:?}");
        let out = server.runtime_cmd(&["kill", &id, "KILL"]);
        assert!(
            out.status.success(),
            "runtime kill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(exit_code(dir.path()), "137");
        let values = counters(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert_eq!(values.first(), Some(&0), "the first line is logged");
        assert_eq!(
            gaps(&values),
            0,
            "10 kills lost lines ({} logged, up to {:?})",
            values.len(),
            values.last()
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// The largest counter in the complete records of a log that the new
/// worker may be writing to right now (no checks: the log is checked once
/// the container has exited).
fn last_logged_counter(dir: &Path) -> u64 {
    let log = fs::read(dir.join("ctr.log")).unwrap();
    let complete = &log[..log.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
    complete
        .split(|&b| b == b'\n')
        .filter_map(|record| {
            let content = record.splitn(4, |&b| b == b' ').nth(3)?;
            std::str::from_utf8(content).ok()?.parse::<u64>().ok()
        })
        .max()
        .expect("counter lines logged before the kill")
}

/// The complete counter lines in attach output (a packet may end mid-line).
fn attach_counters(out: &[u8]) -> Vec<u64> {
    let complete = &out[..out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
    complete
        .split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok()?.parse().ok())
        .collect()
}

#[test]
fn attach_after_a_kill() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("kattach");
        let (id, _) = start_script(&server, dir.path(), &counter_script(20_000, None));
        wait_log_beyond(dir.path(), 3, "before the kill");
        // An attach client connected to the old worker: phase 1 does not
        // hand it over, so it sees its connection end.
        let first = dir.path().join("attach1");
        run_local(async {
            server
                .client()
                .await
                .attach_container(&id, &first, "", false)
                .await
                .expect("attach before the kill");
        });
        let mut early = AttachConn::connect(&first, "before the kill");
        early.read_until(WAIT, "output before the kill", |g| {
            g.out.iter().filter(|&&b| b == b'\n').count() >= 2
        });
        kill_worker(&server);
        let last_before = last_logged_counter(dir.path());
        let ended = wait_until(WAIT, || {
            match early.recv_packet(Duration::from_millis(200)) {
                Some(Packet::Eof) => true,
                Some(p) => {
                    early.take(p);
                    false
                }
                None => false,
            }
        });
        assert!(ended, "the old worker's attach connection did not end");

        // A new attach against the resumed container gets new output.
        let second = dir.path().join("attach2");
        run_local(async {
            server
                .client()
                .await
                .attach_container(&id, &second, "", false)
                .await
                .expect("attach after the kill");
        });
        let mut late = AttachConn::connect(&second, "after the kill");
        late.read_until(WAIT, "three lines after the kill", |g| {
            attach_counters(&g.out).len() >= 3
        });
        let seen = attach_counters(&late.got.out);
        assert_strictly_increasing(&seen);
        assert!(
            *seen.last().unwrap() > last_before,
            "attach after the kill shows {seen:?}, none newer than {last_before}"
        );
        server.runtime_cmd(&["kill", &id, "KILL"]);
        assert_eq!(exit_code(dir.path()), "137");
        counters(&fs::read(dir.path().join("ctr.log")).unwrap());
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn no_keeper_flag() {
    for_each_runtime(|rt| {
        let server = Server::start_with(rt, &["--no-keeper"]);
        assert_eq!(
            process_name(server.pid).as_deref(),
            Some("conmonrs"),
            "without a keeper the pidfile names the server itself"
        );
        let workers: Vec<u32> = children_of(server.pid)
            .into_iter()
            .filter(|&c| process_name(c).as_deref() == Some("conmonrs"))
            .collect();
        assert!(
            workers.is_empty(),
            "a worker under --no-keeper: {workers:?}"
        );
        assert_eq!(version_answers(&server).process_id, server.pid);
        // It still monitors containers, as a single process.
        let dir = TempDir::new("knokeeper");
        let (id, _) = start_script(&server, dir.path(), "echo 1; exit 5");
        assert_eq!(exit_code(dir.path()), "5");
        assert_eq!(
            counters(&fs::read(dir.path().join("ctr.log")).unwrap()),
            [1]
        );
        assert!(children_of(server.pid)
            .into_iter()
            .all(|c| process_name(c).as_deref() != Some("conmonrs")));
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

#[test]
fn clean_shutdown_ends_keeper() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("kshutdown");
        // A held container must not keep the keeper alive.
        let id = start_sleeping_container(&server, dir.path());
        let worker = worker(&server);
        assert!(
            server.shutdown(),
            "keeper {} still runs 10 s after SIGINT",
            server.pid
        );
        assert!(
            wait_until(Duration::from_secs(10), || gone(worker)),
            "worker {worker} still runs after the keeper's SIGINT"
        );
        assert!(
            wait_until(Duration::from_secs(10), || !server.socket.exists()),
            "{} not removed",
            server.socket.display()
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}
