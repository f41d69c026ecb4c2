//! Engine tests with real pipes, ptys and log files.

use crate::fixture::Xorshift;
use crate::test_support::TempDir;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{recv, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;
use crate::log::{LogFormat, LogSpec};

/// `total` bytes of lines of random length (mostly short, some longer than
/// the read buffer), with random bytes including NULs, `\r` and invalid
/// UTF-8; no trailing newline at the end.
fn random_output(seed: u64, total: usize) -> Vec<u8> {
    let mut random = Xorshift(seed);
    let mut out = Vec::with_capacity(total + 1);
    while out.len() < total {
        let len = match random.below(100) {
            0 => 70_000 + random.below(100_000),
            1..=9 => random.below(5_000),
            _ => random.below(200),
        };
        for _ in 0..len {
            let byte = match random.below(10) {
                0 => 0,
                1 => b'\r',
                _ => (random.next_u64() >> 24) as u8,
            };
            // Newlines only where we put them, so line lengths stay as drawn.
            out.push(if byte == b'\n' { b'x' } else { byte });
        }
        out.push(b'\n');
    }
    out.truncate(total);
    if out.last() == Some(&b'\n') {
        out.push(b'-');
    }
    out
}

/// Writes `data` to `fd` in random-sized writes, then closes it.
/// What a CRI log reassembles to for `data`: output that ends mid-line is
/// closed with an `F` record (a line end) at EOF.
fn logged(data: &[u8]) -> Vec<u8> {
    let mut logged = data.to_vec();
    if logged.last().is_some_and(|&byte| byte != b'\n') {
        logged.push(b'\n');
    }
    logged
}

fn feed(fd: OwnedFd, data: Vec<u8>, seed: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut random = Xorshift(seed);
        let mut file = fs::File::from(fd);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let len = (1 + random.below(100_000)).min(rest.len());
            file.write_all(&rest[..len]).unwrap();
            rest = &rest[len..];
        }
    })
}

/// Reassembles each stream's bytes from a CRI log: strips
/// `<timestamp> <stream> <tag> ` and joins `P` records without their added
/// `\n`. Also checks every record's shape.
fn parse_cri(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    assert!(log.is_empty() || log.ends_with(b"\n"));
    for record in log.split_inclusive(|&b| b == b'\n') {
        let mut fields = record.splitn(4, |&b| b == b' ');
        let timestamp = fields.next().unwrap();
        let stream = fields.next().unwrap();
        let tag = fields.next().unwrap();
        let content = fields.next().expect("record without content");
        assert!(
            timestamp.len() >= 20 && timestamp[4] == b'-' && timestamp[10] == b'T',
            "bad timestamp in {:?}",
            String::from_utf8_lossy(&record[..record.len().min(80)])
        );
        let target = match stream {
            b"stdout" => &mut stdout,
            b"stderr" => &mut stderr,
            other => panic!("bad stream {:?}", String::from_utf8_lossy(other)),
        };
        match tag {
            b"F" => target.extend_from_slice(content),
            b"P" => target.extend_from_slice(&content[..content.len() - 1]),
            other => panic!("bad tag {:?}", String::from_utf8_lossy(other)),
        }
    }
    (stdout, stderr)
}

fn start(backend: BackendChoice, workers: usize) -> (Engine, UnboundedReceiver<EngineEvent>) {
    start_with_window(backend, workers, DEFAULT_BATCH_WINDOW)
}

fn start_with_window(
    backend: BackendChoice,
    workers: usize,
    batch_window: Duration,
) -> (Engine, UnboundedReceiver<EngineEvent>) {
    let (events_tx, events_rx) = unbounded_channel();
    let engine = Engine::start(
        EngineConfig {
            workers,
            backend,
            busy_pipe_size: None,
            batch_window,
            attach_done_packet: true,
        },
        events_tx,
    )
    .unwrap();
    (engine, events_rx)
}

fn cri_writer(path: PathBuf) -> LogWriter {
    LogWriter::open(&LogSpec::new(LogFormat::Cri, path, 0)).unwrap()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap()
}

fn source(fd: OwnedFd, stream: StreamKind, kind: SourceKind) -> StreamSource {
    StreamSource {
        fd,
        stream,
        kind,
        journal: None,
    }
}

#[test]
fn engine_handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
}

fn pipes_are_logged_byte_exact_to_every_writer(backend: BackendChoice) {
    let dir = TempDir::new("engine", "pipes");
    let (engine, mut events) = start(backend, 2);
    let want = match backend {
        BackendChoice::Epoll => "epoll",
        _ => "io_uring",
    };
    assert_eq!(engine.backend_name(), want);

    let stdout_data = random_output(1, 3 << 20);
    let stderr_data = random_output(2, 2 << 20);
    let (stdout_read, stdout_write) = pipe();
    let (stderr_read, stderr_write) = pipe();
    engine
        .register(Registration {
            key: 7,
            sources: vec![
                source(stdout_read, StreamKind::Stdout, SourceKind::Pipe),
                source(stderr_read, StreamKind::Stderr, SourceKind::Pipe),
            ],
            logs: vec![cri_writer(dir.path("a.log")), cri_writer(dir.path("b.log"))],
        })
        .unwrap();
    let feeders = [
        feed(stdout_write, stdout_data.clone(), 3),
        feed(stderr_write, stderr_data.clone(), 4),
    ];
    for feeder in feeders {
        feeder.join().unwrap();
    }

    match events.blocking_recv().unwrap() {
        EngineEvent::Drained { key, .. } => assert_eq!(key, 7),
        other => panic!("unexpected {other:?}"),
    }
    for name in ["a.log", "b.log"] {
        let (stdout, stderr) = parse_cri(&fs::read(dir.path(name)).unwrap());
        assert!(stdout == logged(&stdout_data), "stdout differs in {name}");
        assert!(stderr == logged(&stderr_data), "stderr differs in {name}");
    }
    engine.shutdown();
    assert!(events.try_recv().is_err(), "only one event expected");
}

/// Container `key` with a stdout and a stderr pipe, logged as CRI to `log`.
fn two_pipes(key: ContainerKey, stdout: OwnedFd, stderr: OwnedFd, log: PathBuf) -> Registration {
    Registration {
        key,
        sources: vec![
            source(stdout, StreamKind::Stdout, SourceKind::Pipe),
            source(stderr, StreamKind::Stderr, SourceKind::Pipe),
        ],
        logs: vec![cri_writer(log)],
    }
}

/// Registers container `key` with one stdout pipe logged as CRI to
/// `<dir>/<key>.log`; returns the pipe's write end.
fn register_stdout_pipe(engine: &Engine, key: ContainerKey, dir: &TempDir) -> OwnedFd {
    let (read_end, write_end) = pipe();
    engine
        .register(Registration {
            key,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: vec![cri_writer(dir.path(&format!("{key}.log")))],
        })
        .unwrap();
    write_end
}

/// Waits for `count` `Drained` events, each for a different key.
fn expect_each_drained_once(events: &mut UnboundedReceiver<EngineEvent>, count: usize) {
    let mut drained = std::collections::BTreeSet::new();
    while drained.len() < count {
        match events.blocking_recv().unwrap() {
            EngineEvent::Drained { key, .. } => assert!(drained.insert(key), "{key} twice"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn many_containers_drain_exactly_once(backend: BackendChoice) {
    let dir = TempDir::new("engine", "many");
    let (engine, mut events) = start(backend, 2);
    assert_eq!(engine.started_workers(), 0, "no container, no worker");
    // Enough containers for the second worker to start.
    let containers = CONTAINERS_PER_WORKER as u64 + 8;
    // Every container is registered before any output ends, so none has
    // drained (and left its worker) when the last one is assigned.
    let write_ends: Vec<_> = (0..containers)
        .map(|key| register_stdout_pipe(&engine, key, &dir))
        .collect();
    assert_eq!(engine.started_workers(), 2);
    let feeders: Vec<_> = write_ends
        .into_iter()
        .zip(0..containers)
        .map(|(write_end, key)| {
            feed(
                write_end,
                format!("container {key}\n").into_bytes(),
                key + 1,
            )
        })
        .collect();
    expect_each_drained_once(&mut events, containers as usize);
    for key in 0..containers {
        // Written in random pieces, so possibly split into P records.
        let (stdout, _) = parse_cri(&fs::read(dir.path(&format!("{key}.log"))).unwrap());
        assert_eq!(stdout, format!("container {key}\n").as_bytes());
    }
    assert!(engine.assignments.lock().unwrap().worker_of.is_empty());
    assert_eq!(engine.assignments.lock().unwrap().load, vec![0, 0]);
    drop(engine);
    for feeder in feeders {
        feeder.join().unwrap();
    }
}

fn container_without_sources_drains_at_once(backend: BackendChoice) {
    let (engine, mut events) = start(backend, 1);
    engine.register(without_sources(1)).unwrap();
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 1, .. }
    ));
    drop(engine);
}

fn failing_writer_is_reported_once_and_others_keep_logging(backend: BackendChoice) {
    let dir = TempDir::new("engine", "failing");
    let (engine, mut events) = start(backend, 1);
    let (read_end, write_end) = pipe();
    // Log files must be regular files; a device that fails every write is
    // handed to the writer directly.
    let full = LogWriter::over_file(
        &LogSpec::new(LogFormat::Cri, PathBuf::from("/dev/full"), 0),
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    engine
        .register(Registration {
            key: 3,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: vec![full, cri_writer(dir.path("good.log"))],
        })
        .unwrap();
    let data = random_output(9, 1 << 20);
    feed(write_end, data.clone(), 10).join().unwrap();
    match events.blocking_recv().unwrap() {
        EngineEvent::LogError { key, message } => {
            assert_eq!(key, 3);
            assert!(message.contains("/dev/full"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 3, .. }
    ));
    let (stdout, _) = parse_cri(&fs::read(dir.path("good.log")).unwrap());
    assert!(stdout == logged(&data));
    drop(engine);
}

fn reopen_logs_rotates_a_live_container_and_ignores_unknown_keys(backend: BackendChoice) {
    let dir = TempDir::new("engine", "reopen");
    let (engine, mut events) = start(backend, 1);
    let unknown = engine.reopen_logs(99).blocking_recv().unwrap();
    assert_eq!(unknown, Ok(()));

    let (read_end, write_end) = pipe();
    let path = dir.path("ctr.log");
    engine
        .register(Registration {
            key: 5,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: vec![cri_writer(path.clone())],
        })
        .unwrap();
    let mut writer = fs::File::from(write_end);
    writer.write_all(b"before\n").unwrap();
    // Wait until the line is in the file: the reopen must not overtake it.
    while fs::read(&path).unwrap().is_empty() {
        std::thread::yield_now();
    }
    fs::rename(&path, dir.path("ctr.log.1")).unwrap();
    assert_eq!(engine.reopen_logs(5).blocking_recv().unwrap(), Ok(()));
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    writer.write_all(b"after\n").unwrap();
    drop(writer);
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 5, .. }
    ));
    let (old, _) = parse_cri(&fs::read(dir.path("ctr.log.1")).unwrap());
    let (new, _) = parse_cri(&fs::read(&path).unwrap());
    assert_eq!(old, b"before\n");
    assert_eq!(new, b"after\n");
    drop(engine);
}

fn pty_output_is_logged_until_the_slave_closes(backend: BackendChoice) {
    let dir = TempDir::new("engine", "pty");
    let (engine, mut events) = start(backend, 1);
    let pty = nix::pty::openpty(None, None).unwrap();
    let flags = OFlag::from_bits_truncate(fcntl(pty.master.as_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(
        pty.master.as_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )
    .unwrap();
    engine
        .register(Registration {
            key: 11,
            sources: vec![source(pty.master, StreamKind::Stdout, SourceKind::Pty)],
            logs: vec![cri_writer(dir.path("tty.log"))],
        })
        .unwrap();
    let mut expected = Vec::new();
    let mut lines = Vec::new();
    for index in 0..2_000 {
        let line = format!("tty line {index} \0 with a NUL\n");
        // The line discipline turns "\n" into "\r\n" (ONLCR).
        expected.extend_from_slice(line.replace('\n', "\r\n").as_bytes());
        lines.extend_from_slice(line.as_bytes());
    }
    feed(pty.slave, lines, 12).join().unwrap();
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 11, .. }
    ));
    let (stdout, stderr) = parse_cri(&fs::read(dir.path("tty.log")).unwrap());
    assert!(stderr.is_empty());
    assert!(
        stdout == expected,
        "{} vs {} bytes",
        stdout.len(),
        expected.len()
    );
    drop(engine);
}

fn non_blocking_pipes_work_too(backend: BackendChoice) {
    let dir = TempDir::new("engine", "nonblocking");
    let (engine, mut events) = start(backend, 1);
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
    // Only the read end should be non-blocking for the feeder's sake.
    let flags = OFlag::from_bits_truncate(fcntl(write_end.as_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(
        write_end.as_fd(),
        FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK),
    )
    .unwrap();
    engine
        .register(Registration {
            key: 2,
            sources: vec![source(read_end, StreamKind::Stderr, SourceKind::Pipe)],
            logs: vec![cri_writer(dir.path("nb.log"))],
        })
        .unwrap();
    let data = random_output(5, 1 << 20);
    feed(write_end, data.clone(), 6).join().unwrap();
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 2, .. }
    ));
    let (_, stderr) = parse_cri(&fs::read(dir.path("nb.log")).unwrap());
    assert!(stderr == logged(&data));
    drop(engine);
}

fn duplicate_keys_are_rejected(backend: BackendChoice) {
    let (engine, _events) = start(backend, 1);
    let (read_end, _write_end) = pipe();
    let (other_read_end, _other_write_end) = pipe();
    engine
        .register(Registration {
            key: 4,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: Vec::new(),
        })
        .unwrap();
    let err = engine
        .register(Registration {
            key: 4,
            sources: vec![source(other_read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: Vec::new(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    // Shutdown with a read still in flight: cancelled, no hang.
    engine.shutdown();
}

// ---------------------------------------------------------------------------
// Attach fan-out

/// A connected attach socket pair as the control thread would hand it over:
/// (engine's end, client's end). The client's end is made blocking so that
/// reader threads can simply wait.
fn attach_pair() -> (OwnedFd, OwnedFd) {
    let (engine_end, client_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let flags = OFlag::from_bits_truncate(fcntl(client_end.as_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(
        client_end.as_fd(),
        FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK),
    )
    .unwrap();
    (engine_end, client_end)
}

/// Everything an attach client read until EOF.
#[derive(Debug, Default)]
struct Received {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    done_packets: usize,
    packets_after_done: usize,
    largest_packet: usize,
}

/// Reads attach packets until EOF, checking their shape; reports the
/// payload bytes received so far to `progress` after every packet.
fn read_attach(client: OwnedFd, progress: Option<std::sync::mpsc::Sender<usize>>) -> Received {
    let mut received = Received::default();
    // One byte more than the largest legal packet, to catch bigger ones.
    let mut buffer = vec![0u8; 8193];
    loop {
        let len = recv(client.as_raw_fd(), &mut buffer, MsgFlags::empty()).unwrap();
        if len == 0 {
            return received;
        }
        assert!(len <= 8192, "packet of {len} bytes");
        received.largest_packet = received.largest_packet.max(len);
        if received.done_packets > 0 {
            received.packets_after_done += 1;
        }
        match buffer[0] {
            0 => {
                assert_eq!(len, 1, "done packet with payload");
                received.done_packets += 1;
            }
            2 => received.stdout.extend_from_slice(&buffer[1..len]),
            3 => received.stderr.extend_from_slice(&buffer[1..len]),
            other => panic!("packet type {other}"),
        }
        if let Some(progress) = &progress {
            let _ = progress.send(received.stdout.len() + received.stderr.len());
        }
    }
}

fn spawn_reader(client: OwnedFd) -> std::thread::JoinHandle<Received> {
    std::thread::spawn(move || read_attach(client, None))
}

/// Asserts `received` is a whole, properly terminated session.
fn assert_complete(received: &Received, stdout: &[u8], stderr: &[u8]) {
    assert!(
        received.stdout == stdout,
        "stdout: {} of {} bytes",
        received.stdout.len(),
        stdout.len()
    );
    assert!(
        received.stderr == stderr,
        "stderr: {} of {} bytes",
        received.stderr.len(),
        stderr.len()
    );
    assert_eq!(received.done_packets, 1);
    assert_eq!(received.packets_after_done, 0);
}

fn attach_clients_and_logs_get_the_same_bytes(backend: BackendChoice) {
    let dir = TempDir::new("engine", "attach");
    let (engine, mut events) = start(backend, 2);
    // Less than the queue limit in total: a reader starved by the scheduler
    // must not be dropped, the test checks bytes, not speed.
    let stdout_data = random_output(21, 1 << 20);
    let stderr_data = random_output(22, 1 << 19);
    let (stdout_read, stdout_write) = pipe();
    let (stderr_read, stderr_write) = pipe();
    engine
        .register(two_pipes(8, stdout_read, stderr_read, dir.path("ctr.log")))
        .unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (engine_end, client_end) = attach_pair();
            engine.attach(8, engine_end).unwrap();
            spawn_reader(client_end)
        })
        .collect();
    let feeders = [
        feed(stdout_write, stdout_data.clone(), 23),
        feed(stderr_write, stderr_data.clone(), 24),
    ];
    for feeder in feeders {
        feeder.join().unwrap();
    }
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 8, .. }
    ));
    for reader in readers {
        let received = reader.join().unwrap();
        assert_complete(&received, &stdout_data, &stderr_data);
        // Reads of up to 64 KiB were split into full-size packets.
        assert_eq!(received.largest_packet, 8192);
    }
    let (stdout, stderr) = parse_cri(&fs::read(dir.path("ctr.log")).unwrap());
    assert!(stdout == logged(&stdout_data) && stderr == logged(&stderr_data));
    engine.shutdown();
    assert!(events.try_recv().is_err(), "no drop expected");
}

/// An exec session created suspended: a client attached before the
/// sources exist stays attached (no done packet) and gets all output once
/// they arrive; a pending container given no sources drains at once.
fn a_pending_container_keeps_its_clients_until_its_sources_arrive(backend: BackendChoice) {
    let dir = TempDir::new("engine", "pending");
    let (engine, mut events) = start(backend, 2);
    engine
        .register_pending(5, vec![cri_writer(dir.path("session.log"))])
        .unwrap();
    let (engine_end, client_end) = attach_pair();
    engine.attach(5, engine_end).unwrap();
    let reader = spawn_reader(client_end);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        events.try_recv().is_err(),
        "drained before its sources came"
    );
    let (stdout_read, stdout_write) = pipe();
    let (stderr_read, stderr_write) = pipe();
    let stdout_data = random_output(31, 200_000);
    let stderr_data = random_output(32, 50_000);
    // Written before the sources are added: the pipes hold it.
    let feeders = [
        feed(stdout_write, stdout_data.clone(), 33),
        feed(stderr_write, stderr_data.clone(), 34),
    ];
    engine
        .add_sources(
            5,
            vec![
                source(stdout_read, StreamKind::Stdout, SourceKind::Pipe),
                source(stderr_read, StreamKind::Stderr, SourceKind::Pipe),
            ],
        )
        .unwrap();
    for feeder in feeders {
        feeder.join().unwrap();
    }
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 5, .. }
    ));
    assert_complete(&reader.join().unwrap(), &stdout_data, &stderr_data);
    let (stdout, stderr) = parse_cri(&fs::read(dir.path("session.log")).unwrap());
    assert!(stdout == logged(&stdout_data) && stderr == logged(&stderr_data));

    engine.register_pending(6, Vec::new()).unwrap();
    let (engine_end, client_end) = attach_pair();
    engine.attach(6, engine_end).unwrap();
    let reader = spawn_reader(client_end);
    engine.add_sources(6, Vec::new()).unwrap();
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 6, .. }
    ));
    assert_complete(&reader.join().unwrap(), b"", b"");
    assert!(
        engine.add_sources(6, Vec::new()).is_err(),
        "drained keys take no sources"
    );
    engine.shutdown();
}

fn a_stuck_attach_client_is_dropped_without_stalling_anything(backend: BackendChoice) {
    let dir = TempDir::new("engine", "stuck");
    let (engine, mut events) = start(backend, 1);
    let data = random_output(31, 20 << 20);
    let (read_end, write_end) = pipe();
    engine
        .register(Registration {
            key: 9,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: vec![cri_writer(dir.path("ctr.log"))],
        })
        .unwrap();
    let (stuck_engine_end, stuck_client_end) = attach_pair();
    engine.attach(9, stuck_engine_end).unwrap();
    let (engine_end, client_end) = attach_pair();
    engine.attach(9, engine_end).unwrap();
    let (progress_tx, progress_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || read_attach(client_end, Some(progress_tx)));

    // Paced by the reading client (never more than 256 KiB ahead of it), so
    // that only the stuck client can exceed the queue limit however the
    // threads are scheduled.
    let mut writer = fs::File::from(write_end);
    let mut written = 0;
    let mut received = 0;
    for block in data.chunks(256 * 1024) {
        writer.write_all(block).unwrap();
        written += block.len();
        while received < written {
            received = progress_rx.recv().expect("reading client ended early");
        }
    }
    drop(writer);

    let mut drained = false;
    let mut drop_reason = None;
    while !drained || drop_reason.is_none() {
        match events.blocking_recv().unwrap() {
            EngineEvent::Drained { key: 9, .. } => drained = true,
            EngineEvent::AttachClientDropped {
                key: 9,
                dropped_total,
                reason,
            } => {
                assert_eq!(dropped_total, 1);
                assert!(drop_reason.is_none(), "second drop: {reason}");
                drop_reason = Some(reason);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let reason = drop_reason.unwrap();
    assert!(reason.contains("bytes queued"), "{reason}");

    let received = reader.join().unwrap();
    assert_complete(&received, &data, b"");
    let (stdout, _) = parse_cri(&fs::read(dir.path("ctr.log")).unwrap());
    assert!(stdout == logged(&data));

    // The stuck client gets what its socket held, a prefix, then EOF.
    let stuck = read_attach(stuck_client_end, None);
    assert!(!stuck.stdout.is_empty() && stuck.stdout.len() < data.len());
    assert!(stuck.stdout == data[..stuck.stdout.len()]);
    assert_eq!(stuck.done_packets, 0);
    engine.shutdown();
}

fn a_client_that_cannot_keep_up_before_the_end_lingers_and_gets_everything(backend: BackendChoice) {
    let (engine, mut events) = start(backend, 1);
    let (read_end, write_end) = pipe();
    engine
        .register(Registration {
            key: 10,
            sources: vec![source(read_end, StreamKind::Stderr, SourceKind::Pipe)],
            logs: Vec::new(),
        })
        .unwrap();
    let (engine_end, client_end) = attach_pair();
    engine.attach(10, engine_end).unwrap();
    // Far more than a socket buffer, less than the queue limit; nobody
    // reads until the container is drained.
    let data = random_output(41, 2 << 20);
    feed(write_end, data.clone(), 42).join().unwrap();
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 10, .. }
    ));
    let received = read_attach(client_end, None);
    assert_complete(&received, b"", &data);
    engine.shutdown();
    assert!(events.try_recv().is_err(), "no drop expected");
}

fn attaching_to_an_unknown_container_gets_the_done_packet_at_once(backend: BackendChoice) {
    let (engine, mut events) = start(backend, 2);
    let (engine_end, client_end) = attach_pair();
    engine.attach(12345, engine_end).unwrap();
    let received = read_attach(client_end, None);
    assert_complete(&received, b"", b"");
    engine.shutdown();
    assert!(events.try_recv().is_err());
}

/// A client that connected to a watched attach listener gets all output
/// written after its `connect` returned, although nobody else accepts the
/// connection: the worker accepts it before routing that output, and hands
/// a second descriptor of it back for stdin.
fn a_connected_client_is_accepted_before_output_is_routed(backend: BackendChoice) {
    let dir = TempDir::new("engine", "listener");
    let (engine, mut events) = start(backend, 2);
    let (out_read, mut out_write) = {
        let (r, w) = pipe();
        (r, fs::File::from(w))
    };
    engine
        .register(Registration {
            key: 31,
            sources: vec![source(out_read, StreamKind::Stdout, SourceKind::Pipe)],
            logs: vec![cri_writer(dir.path("ctr.log"))],
        })
        .unwrap();
    let path = dir.path("attach.sock");
    let listener = crate::sys::socket::listen_seqpacket(&path, 0o700).unwrap();
    engine.watch_attach_listener(31, 7, listener).unwrap();
    // Output before any client: routed to nobody.
    out_write.write_all(b"before\n").unwrap();
    let logged_before = || {
        fs::read(dir.path("ctr.log"))
            .map(|l| l.ends_with(b" stdout F before\n"))
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !logged_before() {
        assert!(
            std::time::Instant::now() < deadline,
            "first chunk not logged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A client connects (the kernel queues it; nobody has accepted it yet),
    // then output is produced.
    let client = crate::sys::socket::connect_seqpacket(&path).unwrap();
    let reader = spawn_reader(client);
    out_write.write_all(b"after connect\n").unwrap();
    drop(out_write);
    let mut accepted = None;
    let mut drained = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while accepted.is_none() || !drained {
        assert!(
            std::time::Instant::now() < deadline,
            "accepted: {}, drained: {drained}",
            accepted.is_some()
        );
        let event = match events.try_recv() {
            Ok(event) => event,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        match event {
            EngineEvent::AttachAccepted {
                key: 31,
                listener: 7,
                client,
            } => accepted = Some(client),
            EngineEvent::Drained { key: 31, .. } => drained = true,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_complete(&reader.join().unwrap(), b"after connect\n", b"");
    engine.shutdown();
}

fn pty_output_is_attached_as_stdout(backend: BackendChoice) {
    let (engine, mut events) = start(backend, 1);
    let pty = nix::pty::openpty(None, None).unwrap();
    let flags = OFlag::from_bits_truncate(fcntl(pty.master.as_fd(), FcntlArg::F_GETFL).unwrap());
    fcntl(
        pty.master.as_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )
    .unwrap();
    engine
        .register(Registration {
            key: 13,
            sources: vec![source(pty.master, StreamKind::Stdout, SourceKind::Pty)],
            logs: Vec::new(),
        })
        .unwrap();
    let (engine_end, client_end) = attach_pair();
    engine.attach(13, engine_end).unwrap();
    let reader = spawn_reader(client_end);
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for index in 0..500 {
        let line = format!("attached tty line {index} \0\n");
        expected.extend_from_slice(line.replace('\n', "\r\n").as_bytes());
        lines.extend_from_slice(line.as_bytes());
    }
    feed(pty.slave, lines, 14).join().unwrap();
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 13, .. }
    ));
    // Type 3 would land in `stderr` and fail the comparison.
    assert_complete(&reader.join().unwrap(), &expected, b"");
    engine.shutdown();
}

fn a_client_that_went_away_is_closed_without_counting_a_drop(backend: BackendChoice) {
    let (engine, mut events) = start(backend, 1);
    let (read_end, write_end) = pipe();
    engine
        .register(Registration {
            key: 15,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: Vec::new(),
        })
        .unwrap();
    let (engine_end, client_end) = attach_pair();
    drop(client_end);
    engine.attach(15, engine_end).unwrap();
    feed(write_end, b"hello\n".to_vec(), 16).join().unwrap();
    // A detach is not a policy drop: the only event is the drain.
    match events.blocking_recv().unwrap() {
        EngineEvent::Drained { key: 15, .. } => {}
        other => panic!("unexpected event {other:?}"),
    }
    engine.shutdown();
}

fn shutdown_closes_attach_clients(backend: BackendChoice) {
    let (engine, _events) = start(backend, 1);
    let (read_end, _write_end) = pipe();
    engine
        .register(Registration {
            key: 17,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: Vec::new(),
        })
        .unwrap();
    let (engine_end, client_end) = attach_pair();
    engine.attach(17, engine_end).unwrap();
    engine.shutdown();
    // EOF without a done packet: the container never ended.
    let received = read_attach(client_end, None);
    assert_eq!(received.done_packets, 0);
    assert!(received.stdout.is_empty());
}

/// A pipe that fills a whole read is grown to the busy capacity; one that
/// only ever carries a line keeps the default.
fn busy_pipes_grow_and_idle_pipes_do_not(backend: BackendChoice) {
    let (engine, mut events) = start(backend, 1);
    let (busy_read, busy_write) = pipe();
    let (idle_read, idle_write) = pipe();
    let default_capacity = crate::sys::fd::pipe_capacity(busy_write.as_fd()).unwrap();
    engine
        .register(Registration {
            key: 1,
            sources: vec![
                source(busy_read, StreamKind::Stdout, SourceKind::Pipe),
                source(idle_read, StreamKind::Stderr, SourceKind::Pipe),
            ],
            logs: Vec::new(),
        })
        .unwrap();
    let mut busy = std::fs::File::from(busy_write);
    let mut idle = std::fs::File::from(idle_write);
    idle.write_all(b"one line\n").unwrap();
    // Blocks until the worker reads: the first reads come back full.
    busy.write_all(&vec![b'x'; 4 << 20]).unwrap();
    let grown = crate::sys::fd::pipe_capacity(busy.as_fd()).unwrap();
    let kept = crate::sys::fd::pipe_capacity(idle.as_fd()).unwrap();
    let want = pipe_size::BUSY_PIPE_CAPACITY.min(crate::sys::fd::pipe_max_size().unwrap());
    assert_eq!(grown, want, "busy pipe capacity");
    assert_eq!(kept, default_capacity, "idle pipe capacity");
    drop((busy, idle));
    assert!(matches!(
        events.blocking_recv().unwrap(),
        EngineEvent::Drained { key: 1, .. }
    ));
}

/// Without a forced choice io_uring runs where it can, and the engine says
/// why; a forced epoll says so.
#[test]
fn the_backend_choice_is_explained() {
    let (engine, _events) = start(BackendChoice::Auto, 1);
    let io_uring_disabled = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|text| text.trim() == "2")
        .unwrap_or(false);
    if io_uring_disabled {
        assert_eq!(engine.backend_name(), "epoll");
    }
    assert!(
        engine.backend_reason().starts_with("auto"),
        "{}",
        engine.backend_reason()
    );
    let (engine, _events) = start(BackendChoice::Epoll, 1);
    assert_eq!(engine.backend_name(), "epoll");
    assert!(engine
        .backend_reason()
        .contains("--io-backend epoll (the default"));
    let (engine, _events) = start(BackendChoice::Uring, 1);
    assert!(engine.backend_reason().contains("forced"));
}

/// Light output from many containers, written in small paced pieces (the
/// case the batch window coalesces), ends up in the logs byte-exact.
fn paced_light_output_is_logged_exactly(backend: BackendChoice) {
    let dir = TempDir::new("engine", "paced");
    let (engine, mut events) = start(backend, 2);
    let mut writers = Vec::new();
    for key in 0..30u64 {
        let write_end = register_stdout_pipe(&engine, key, &dir);
        writers.push(std::thread::spawn(move || {
            let mut file = fs::File::from(write_end);
            for line in 0..40 {
                writeln!(file, "container {key} line {line}").unwrap();
                std::thread::sleep(Duration::from_millis(3 + key % 7));
            }
        }));
    }
    for writer in writers {
        writer.join().unwrap();
    }
    expect_each_drained_once(&mut events, 30);
    for key in 0..30u64 {
        let (stdout, _) = parse_cri(&fs::read(dir.path(&format!("{key}.log"))).unwrap());
        let want: String = (0..40)
            .map(|line| format!("container {key} line {line}\n"))
            .collect();
        assert_eq!(String::from_utf8_lossy(&stdout), want);
    }
}

/// A window far longer than the bounds below: if a command or an exit had
/// to wait for the pause to end, these tests would see it.
const LONG_WINDOW: Duration = Duration::from_secs(20);
const PROMPT: Duration = Duration::from_secs(8);

/// Keeps a light writer going on container 100 so that the worker keeps
/// pausing; dropped, it ends.
fn keep_pausing(engine: &Engine) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (read_end, write_end) = pipe();
    engine
        .register(Registration {
            key: 100,
            sources: vec![source(read_end, StreamKind::Stdout, SourceKind::Pipe)],
            logs: Vec::new(),
        })
        .unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut file = fs::File::from(write_end);
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            stop_rx.recv_timeout(Duration::from_millis(20))
        {
            file.write_all(b"light\n").unwrap();
        }
    });
    // Let the worker take a light batch and start pausing.
    std::thread::sleep(Duration::from_millis(200));
    (stop_tx, writer)
}

fn next_drained(events: &mut UnboundedReceiver<EngineEvent>, within: Duration) -> ContainerKey {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    match runtime.block_on(async { tokio::time::timeout(within, events.recv()).await }) {
        Ok(Some(EngineEvent::Drained { key, .. })) => key,
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => panic!("nothing drained within {within:?}: a pause was not cut short"),
    }
}

/// Polls the CRI log at `path` until its (stdout, stderr) satisfy `done`,
/// for at most `PROMPT` (output held back by a batch window would take
/// `LONG_WINDOW`); returns them.
fn wait_for_log(path: &std::path::Path, done: impl Fn(&[u8], &[u8]) -> bool) -> (Vec<u8>, Vec<u8>) {
    let deadline = std::time::Instant::now() + PROMPT;
    loop {
        let (stdout, stderr) = parse_cri(&fs::read(path).unwrap());
        if done(&stdout, &stderr) {
            return (stdout, stderr);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "output held back by the batch window: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Container `key` with no sources (it drains as soon as it is registered).
fn without_sources(key: ContainerKey) -> Registration {
    Registration {
        key,
        sources: Vec::new(),
        logs: Vec::new(),
    }
}

/// A command that arrives while the worker pauses for its batch window is
/// served at once, not when the window ends.
fn a_command_ends_the_batch_pause(backend: BackendChoice) {
    let (engine, mut events) = start_with_window(backend, 1, LONG_WINDOW);
    let (stop, writer) = keep_pausing(&engine);
    engine.register(without_sources(1)).unwrap();
    assert_eq!(next_drained(&mut events, PROMPT), 1);
    drop(stop);
    writer.join().unwrap();
}

/// `Engine::expedite` (the process exited) ends the pause, so that the
/// container's EOF, and with it its exit files, do not wait for the window.
fn expedite_ends_the_batch_pause(backend: BackendChoice) {
    let dir = TempDir::new("engine", "expedite");
    let (engine, mut events) = start_with_window(backend, 1, LONG_WINDOW);
    let mut file = fs::File::from(register_stdout_pipe(&engine, 1, &dir));
    // Two light batches in a row: the worker pauses after the second.
    file.write_all(b"last ").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    file.write_all(b"words\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(file);
    engine.expedite(1);
    assert_eq!(next_drained(&mut events, PROMPT), 1);
    let (stdout, _) = parse_cri(&fs::read(dir.path("1.log")).unwrap());
    assert_eq!(stdout, b"last words\n");
}

/// An attached container is not held back by a neighbour's batch window:
/// the pause stops every source of the worker, so while any of its
/// containers is interactive the worker does not pause.
fn an_attached_container_is_not_held_back_by_a_neighbour(backend: BackendChoice) {
    let dir = TempDir::new("engine", "neighbour");
    let (engine, mut events) = start_with_window(backend, 1, LONG_WINDOW);
    let (stop, writer) = keep_pausing(&engine);
    let mut file = fs::File::from(register_stdout_pipe(&engine, 1, &dir));
    let (engine_end, _client_end) = attach_pair();
    engine.attach(1, engine_end).unwrap();
    // Let the worker take the attach and go back to its neighbour's rhythm.
    std::thread::sleep(Duration::from_millis(200));
    file.write_all(b"echo\n").unwrap();
    wait_for_log(&dir.path("1.log"), |stdout, _| stdout == b"echo\n");
    drop(file);
    engine.expedite(1);
    assert_eq!(next_drained(&mut events, PROMPT), 1);
    drop(stop);
    writer.join().unwrap();
}

/// A container whose stdout and stderr both had output in one batch is
/// read without the window afterwards: the two pipes carry no order between
/// them, and a window would let whole windows of one stream overtake the
/// other.
fn a_container_writing_both_streams_is_read_at_once(backend: BackendChoice) {
    let dir = TempDir::new("engine", "interleaving");
    let (engine, mut events) = start_with_window(backend, 1, LONG_WINDOW);
    let (out_read, out_write) = pipe();
    let (err_read, err_write) = pipe();
    let (mut out, mut err) = (fs::File::from(out_write), fs::File::from(err_write));
    // Both are pending when the sources are added: one batch reads both.
    out.write_all(b"first\n").unwrap();
    err.write_all(b"oops\n").unwrap();
    engine
        .register(two_pipes(1, out_read, err_read, dir.path("1.log")))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    out.write_all(b"second\n").unwrap();
    let (_, stderr) = wait_for_log(&dir.path("1.log"), |stdout, _| stdout == b"first\nsecond\n");
    assert_eq!(stderr, b"oops\n");
    drop((out, err));
    engine.expedite(1);
    assert_eq!(next_drained(&mut events, PROMPT), 1);
}

/// What a keeper holds of a journaled container: second descriptors of its
/// ledger, of each stream's journal and of each pipe's read end (index:
/// the ledger's stream index, 0 stdout, 1 stderr).
struct Held {
    ledger: OwnedFd,
    journals: Vec<OwnedFd>,
    pipes: Vec<OwnedFd>,
}

fn dup(fd: impl AsFd) -> OwnedFd {
    fd.as_fd().try_clone_to_owned().unwrap()
}

/// Journaled sources (one ledger) for the read ends of a stdout and a
/// stderr pipe, and what a keeper holds of them.
fn journaled_sources(stdout: OwnedFd, stderr: OwnedFd) -> (Vec<StreamSource>, Held) {
    let ledger = Arc::new(journal::Ledger::create().unwrap());
    let mut held = Held {
        ledger: dup(&*ledger),
        journals: Vec::new(),
        pipes: Vec::new(),
    };
    let mut sources = Vec::new();
    let streams = [(stdout, StreamKind::Stdout), (stderr, StreamKind::Stderr)];
    for (index, (fd, stream)) in streams.into_iter().enumerate() {
        let journal = journal::Journal::create(Arc::clone(&ledger), index).unwrap();
        held.journals.push(dup(&journal));
        held.pipes.push(dup(&fd));
        sources.push(StreamSource {
            fd,
            stream,
            kind: SourceKind::Pipe,
            journal: Some(journal),
        });
    }
    (sources, held)
}

/// The (dev, ino, size) of the file at `path`, as a ledger records it.
fn log_end_of(path: &std::path::Path) -> journal::LogEnd {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).unwrap();
    journal::LogEnd {
        dev: meta.dev(),
        ino: meta.ino(),
        end: meta.len(),
    }
}

/// Journaled pipes are spliced, logged byte-exact, and once drained the
/// ledger commits nothing pending and records where the log ends (its
/// closing records included).
fn journaled_pipes_are_logged_exactly_and_the_ledger_ends_with_the_log(backend: BackendChoice) {
    let dir = TempDir::new("engine", "journaled");
    let (engine, mut events) = start(backend, 1);
    let stdout_data = random_output(11, 3 << 20);
    let stderr_data = random_output(12, 1 << 20);
    let (stdout_read, stdout_write) = pipe();
    let (stderr_read, stderr_write) = pipe();
    let (sources, held) = journaled_sources(stdout_read, stderr_read);
    let log = dir.path("journaled.log");
    engine
        .register(Registration {
            key: 3,
            sources,
            logs: vec![cri_writer(log.clone())],
        })
        .unwrap();
    let feeders = [
        feed(stdout_write, stdout_data.clone(), 13),
        feed(stderr_write, stderr_data.clone(), 14),
    ];
    for feeder in feeders {
        feeder.join().unwrap();
    }
    assert_eq!(next_drained(&mut events, Duration::from_secs(30)), 3);
    let (stdout, stderr) = parse_cri(&fs::read(&log).unwrap());
    assert!(stdout == logged(&stdout_data), "stdout differs");
    assert!(stderr == logged(&stderr_data), "stderr differs");

    let (ledger, state) = journal::Ledger::open(held.ledger).unwrap();
    assert_eq!(state.committed, [0, 0]);
    assert_eq!(state.ends, vec![log_end_of(&log)]);
    let ledger = Arc::new(ledger);
    for (index, fd) in held.journals.into_iter().enumerate() {
        let journal = journal::Journal::open(fd, Arc::clone(&ledger), index).unwrap();
        assert_eq!(journal.pending(&state).unwrap(), b"", "stream {index}");
        // The output went through the journal: its last chunk is still there.
        assert!(
            journal.bytes(4096).iter().any(|&byte| byte != 0),
            "journal {index} was never written"
        );
    }
    engine.shutdown();
}

/// A journaled pipe whose splices come back full is grown like a read one.
fn journaled_busy_pipes_grow(backend: BackendChoice) {
    let (engine, mut events) = start(backend, 1);
    let (stdout_read, stdout_write) = pipe();
    let (stderr_read, stderr_write) = pipe();
    let (sources, _held) = journaled_sources(stdout_read, stderr_read);
    engine
        .register(Registration {
            key: 1,
            sources,
            logs: Vec::new(),
        })
        .unwrap();
    let mut busy = std::fs::File::from(stdout_write);
    // Blocks until the worker splices: the first splices come back full.
    busy.write_all(&vec![b'x'; 4 << 20]).unwrap();
    let want = pipe_size::BUSY_PIPE_CAPACITY.min(crate::sys::fd::pipe_max_size().unwrap());
    let grown = crate::sys::fd::pipe_capacity(busy.as_fd()).unwrap();
    assert_eq!(grown, want, "busy journaled pipe capacity");
    drop((busy, stderr_write));
    assert_eq!(next_drained(&mut events, Duration::from_secs(30)), 1);
}

/// Where a simulated kill stops a worker, counted in journaled chunks.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// The chunk was spliced, not logged. The test then appends a record
    /// to the log, as a kill in the middle of logging it would leave.
    BeforeLogging(usize),
    /// The chunk was logged and committed; the journal was not reset.
    BeforeReset(usize),
}

/// A backend whose worker is frozen at `kill`, as SIGKILL would stop it:
/// nothing after that point runs (no unwinding, no flush) until the test
/// releases it, and then the worker thread unwinds without returning to
/// the worker's code.
struct Killed<B> {
    inner: B,
    kill: Kill,
    chunks: usize,
    killed: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

fn freeze(killed: &mpsc::Sender<()>, release: &mpsc::Receiver<()>) -> ! {
    let _ = killed.send(());
    let _ = release.recv();
    std::panic::resume_unwind(Box::new("the simulated kill is over"));
}

impl<B: backend::Backend> backend::Backend for Killed<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn add_source(
        &mut self,
        fd: OwnedFd,
        kind: SourceKind,
        journal: Option<journal::Journal>,
    ) -> std::io::Result<backend::SourceId> {
        self.inner.add_source(fd, kind, journal)
    }

    fn add_sink(&mut self, fd: OwnedFd) -> backend::SinkId {
        self.inner.add_sink(fd)
    }

    fn sink_fd(&self, sink: backend::SinkId) -> std::os::fd::BorrowedFd<'_> {
        self.inner.sink_fd(sink)
    }

    fn want_writable(&mut self, sink: backend::SinkId) -> std::io::Result<()> {
        self.inner.want_writable(sink)
    }

    fn remove_sink(&mut self, sink: backend::SinkId) {
        self.inner.remove_sink(sink)
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(backend::BackendEvent<'_>),
    ) -> std::io::Result<()> {
        let Killed {
            inner,
            kill,
            chunks,
            killed,
            release,
        } = self;
        inner.wait(timeout, &mut |event| {
            if !matches!(event, backend::BackendEvent::Data { .. }) {
                return on_event(event);
            }
            *chunks += 1;
            match *kill {
                Kill::BeforeLogging(at) if at == *chunks => freeze(killed, release),
                Kill::BeforeReset(at) if at == *chunks => {
                    on_event(event);
                    freeze(killed, release)
                }
                _ => on_event(event),
            }
        })
    }

    fn pause(&mut self, duration: Duration) {
        self.inner.pause(duration)
    }
}

/// Runs a worker on `inner`, frozen at `kill`, serving `registration`.
/// Returns the command sender (which keeps the worker alive), a receiver
/// told when the kill happened, a sender that ends the frozen worker, and
/// its thread.
#[allow(clippy::type_complexity)]
fn run_killable_worker(
    backend: BackendChoice,
    kill: Kill,
    registration: Registration,
) -> (
    mpsc::Sender<worker::Command>,
    mpsc::Receiver<()>,
    mpsc::Sender<()>,
    JoinHandle<()>,
) {
    fn run<B: backend::Backend>(
        inner: B,
        kill: Kill,
        commands: mpsc::Receiver<worker::Command>,
        killed: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
    ) {
        let (events, _) = unbounded_channel();
        let killed = Killed {
            inner,
            kill,
            chunks: 0,
            killed,
            release,
        };
        worker::Worker::new(
            0,
            killed,
            commands,
            events,
            Arc::new(Mutex::new(Assignments::new(1))),
            Arc::default(),
        )
        .run();
    }
    let waker = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap());
    let (commands_tx, commands_rx) = mpsc::channel();
    let (killed_tx, killed_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    commands_tx
        .send(worker::Command::Register(registration, Arc::default()))
        .unwrap();
    waker.write(1).unwrap();
    let thread = std::thread::spawn(move || {
        let sizer = pipe_size::PipeSizer::with_target(0);
        match backend {
            BackendChoice::Epoll => {
                let inner = crate::engine::epoll::EpollBackend::new(waker, sizer).unwrap();
                run(inner, kill, commands_rx, killed_tx, release_rx)
            }
            _ => {
                let inner = crate::engine::uring::UringBackend::new(waker, sizer).unwrap();
                run(inner, kill, commands_rx, killed_tx, release_rx)
            }
        }
    });
    (commands_tx, killed_rx, release_tx, thread)
}

/// What a worker that resumes a journaled container does with what the
/// keeper held: cut the log back to the ledger's ends, log what the
/// journals hold beyond their commits, and serve the pipes journaled again.
fn resume_journaled(held: Held, spec: &LogSpec) -> (Vec<StreamSource>, LogWriter) {
    let (ledger, state) = journal::Ledger::open(held.ledger).unwrap();
    let ledger = Arc::new(ledger);
    let (mut writer, _cut) = LogWriter::open_resumed_at(spec, &state.ends).unwrap();
    let mut timestamps = crate::log::TimestampCache::new();
    timestamps.refresh();
    let mut sources = Vec::new();
    let held_streams = held.journals.into_iter().zip(held.pipes).enumerate();
    for (index, (journal_fd, fd)) in held_streams {
        let stream = [StreamKind::Stdout, StreamKind::Stderr][index];
        let mut journal = journal::Journal::open(journal_fd, Arc::clone(&ledger), index).unwrap();
        let pending = journal.pending(&state).unwrap().to_vec();
        if !pending.is_empty() {
            writer.write_chunk(stream, &pending, &timestamps).unwrap();
            writer.flush().unwrap();
        }
        journal.consumed().unwrap();
        sources.push(StreamSource {
            fd,
            stream,
            kind: SourceKind::Pipe,
            journal: Some(journal),
        });
    }
    ledger.set_ends(writer.file_end().into_iter().collect());
    (sources, writer)
}

/// The exactly-once property: a worker killed at any point of a journaled
/// round leaves the journal, the ledger and the log such that a resume
/// logs every byte exactly once.
fn a_killed_worker_leaves_what_a_resume_needs_to_log_every_byte_once(backend: BackendChoice) {
    let kills = [
        Kill::BeforeLogging(1),
        Kill::BeforeReset(1),
        Kill::BeforeLogging(6),
        Kill::BeforeReset(9),
    ];
    for (round, kill) in kills.into_iter().enumerate() {
        let dir = TempDir::new("engine", "killed");
        let stdout_data = random_output(20 + round as u64, 1 << 20);
        let stderr_data = random_output(30 + round as u64, 1 << 20);
        let (stdout_read, stdout_write) = pipe();
        let (stderr_read, stderr_write) = pipe();
        let (sources, held) = journaled_sources(stdout_read, stderr_read);
        let spec = LogSpec::new(LogFormat::Cri, dir.path("killed.log"), 0);
        let registration = Registration {
            key: 1,
            sources,
            logs: vec![LogWriter::open(&spec).unwrap()],
        };
        let (_commands, killed, release, frozen) = run_killable_worker(backend, kill, registration);
        let feeders = [
            feed(stdout_write, stdout_data.clone(), 21),
            feed(stderr_write, stderr_data.clone(), 22),
        ];
        killed
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{kill:?}: the worker never got there"));
        if let Kill::BeforeLogging(_) = kill {
            let mut log = fs::OpenOptions::new()
                .append(true)
                .open(&spec.path)
                .unwrap();
            log.write_all(b"2026-12-07T22:00:00.000000000Z stdout F not committed\n")
                .unwrap();
        }

        let (sources, writer) = resume_journaled(held, &spec);
        let (engine, mut events) = start(backend, 1);
        engine
            .register(Registration {
                key: 1,
                sources,
                logs: vec![writer],
            })
            .unwrap();
        for feeder in feeders {
            feeder.join().unwrap();
        }
        assert_eq!(next_drained(&mut events, Duration::from_secs(30)), 1);
        let (stdout, stderr) = parse_cri(&fs::read(&spec.path).unwrap());
        // A resumed writer does not know that the dead one left a line
        // open, so a stream that had no byte left to log after the kill
        // is not closed with a line end at its EOF.
        for (name, got, data) in [
            ("stdout", stdout, &stdout_data),
            ("stderr", stderr, &stderr_data),
        ] {
            assert!(
                got == logged(data) || got == *data,
                "{kill:?}: {name} differs ({} bytes logged, {} written)",
                got.len(),
                data.len()
            );
        }
        engine.shutdown();
        drop(release);
        assert!(
            frozen.join().is_err(),
            "the frozen worker ends by unwinding"
        );
    }
}

/// Every engine test above runs once per backend: `per_backend!(tests...)`
/// makes a module per backend with one `#[test]` per name.
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(
                #[test]
                fn $name() {
                    super::$name(super::BackendChoice::Uring);
                }
            )*
        }

        mod epoll {
            $(
                #[test]
                fn $name() {
                    super::$name(super::BackendChoice::Epoll);
                }
            )*
        }
    };
}

per_backend!(
    journaled_pipes_are_logged_exactly_and_the_ledger_ends_with_the_log,
    a_killed_worker_leaves_what_a_resume_needs_to_log_every_byte_once,
    journaled_busy_pipes_grow,
    busy_pipes_grow_and_idle_pipes_do_not,
    paced_light_output_is_logged_exactly,
    a_command_ends_the_batch_pause,
    expedite_ends_the_batch_pause,
    a_container_writing_both_streams_is_read_at_once,
    an_attached_container_is_not_held_back_by_a_neighbour,
    pipes_are_logged_byte_exact_to_every_writer,
    many_containers_drain_exactly_once,
    container_without_sources_drains_at_once,
    failing_writer_is_reported_once_and_others_keep_logging,
    reopen_logs_rotates_a_live_container_and_ignores_unknown_keys,
    pty_output_is_logged_until_the_slave_closes,
    non_blocking_pipes_work_too,
    duplicate_keys_are_rejected,
    attach_clients_and_logs_get_the_same_bytes,
    a_pending_container_keeps_its_clients_until_its_sources_arrive,
    a_stuck_attach_client_is_dropped_without_stalling_anything,
    a_client_that_cannot_keep_up_before_the_end_lingers_and_gets_everything,
    attaching_to_an_unknown_container_gets_the_done_packet_at_once,
    a_connected_client_is_accepted_before_output_is_routed,
    pty_output_is_attached_as_stdout,
    a_client_that_went_away_is_closed_without_counting_a_drop,
    shutdown_closes_attach_clients
);

#[test]
fn workers_start_as_containers_arrive() {
    let mut assignments = Assignments::new(3);
    // None runs: the first container starts worker 0.
    assert_eq!(assignments.assign(0, 0).unwrap(), 0);
    // Worker 0 takes containers until it serves CONTAINERS_PER_WORKER.
    for key in 1..CONTAINERS_PER_WORKER as u64 {
        assert_eq!(assignments.assign(key, 1).unwrap(), 0);
    }
    let next = CONTAINERS_PER_WORKER as u64;
    assert_eq!(assignments.assign(next, 1).unwrap(), 1, "starts worker 1");
    // Then the least loaded of the running ones.
    assert_eq!(assignments.assign(next + 1, 2).unwrap(), 1);
    assignments.release(3, 0);
    assert_eq!(assignments.assign(next + 2, 2).unwrap(), 1);
    assert!(
        assignments.assign(next + 2, 2).is_err(),
        "already registered"
    );
}

#[test]
fn all_workers_running_share_the_load_beyond_the_threshold() {
    let mut assignments = Assignments::new(1);
    for key in 0..(CONTAINERS_PER_WORKER as u64 * 2) {
        assert_eq!(assignments.assign(key, 1).unwrap(), 0);
    }
    assert_eq!(assignments.load, vec![CONTAINERS_PER_WORKER * 2]);
}

#[test]
fn no_worker_starts_after_shutdown() {
    let (engine, _events) = start(BackendChoice::Epoll, 2);
    engine.shutdown();
    let refused = engine.register(without_sources(1));
    assert!(
        matches!(refused, Err(EngineError::WorkerGone(0))),
        "{refused:?}"
    );
    assert_eq!(engine.started_workers(), 0);
}

/// An attach to a key no worker serves (a drained container) is ended at
/// once with the done packet, and starts no worker on an idle engine.
#[test]
fn attach_to_an_unserved_key_ends_at_once_without_a_worker() {
    let (engine, _events) = start(BackendChoice::Epoll, 2);
    let (engine_end, client_end) = attach_pair();
    engine.attach(42, engine_end).unwrap();
    let received = read_attach(client_end, None);
    assert_eq!(received.done_packets, 1, "{received:?}");
    assert!(received.stdout.is_empty() && received.stderr.is_empty());
    assert_eq!(engine.started_workers(), 0, "no container, no worker");
    engine.shutdown();
}
