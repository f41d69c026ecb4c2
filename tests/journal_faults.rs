//! A journal that misbehaves: one that stops reading must not stall the
//! engine worker (other containers keep being drained) nor the server, and
//! one that restarts is reached again by the server's own log and by the
//! journald log driver.
//!
//! Each server runs in a mount namespace of its own where this test's
//! directory is bind-mounted on `/run/systemd/journal`, so it talks to the
//! test's socket at the fixed journal path without touching the machine's
//! journal (and the unfixed binary can be tested the same way).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ringmon::client::LogDriver;

const JOURNALD: u16 = 2;

/// A wrapper that starts ringmon with `dir` mounted on
/// `/run/systemd/journal`, and with `--log-driver <driver>` instead of the
/// test harness's `stdout` when `driver` is given.
fn journal_wrapper(dir: &Path, driver: Option<&str>) -> PathBuf {
    fs::create_dir_all("/run/systemd/journal").unwrap();
    let script = dir.join("journal-wrapper");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             bin=$1; shift\n\
             prev=\n\
             for a; do shift; if [ \"$prev\" = --log-driver ] && [ -n \"{driver}\" ]; then a={driver}; fi; \
             set -- \"$@\" \"$a\"; prev=$a; done\n\
             exec unshare -m sh -c 'mount --bind \"$0\" /run/systemd/journal && exec \"$@\"' {dir} \"$bin\" \"$@\"\n",
            driver = driver.unwrap_or(""),
            dir = dir.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn journald_request(dir: &Path, id: &str, args: &[&str]) -> CreateRequest {
    let bundle = make_bundle(dir, args, false);
    let mut req = basic_request(dir, id, &bundle, false);
    req.log_drivers = vec![LogDriver {
        kind: JOURNALD,
        path: String::new(),
        max_size: 0,
    }];
    req
}

fn create(server: &Server, req: &CreateRequest) {
    let created = run_local_value(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            server.client().await.create_container(req).await
        })
        .await
    });
    match created {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("createContainer {}: {e}", req.id),
        Err(_) => panic!("createContainer {} got no answer within 20 s", req.id),
    }
}

fn create_and_start(server: &Server, req: &CreateRequest) {
    create(server, req);
    server.start_container(&req.id);
}

/// A journal socket whose entries a thread collects (their `MESSAGE`s).
struct Collector {
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn bind(path: &Path) -> Collector {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (messages, stop) = (Arc::clone(&messages), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(len) = socket.recv(&mut buffer) else {
                        continue;
                    };
                    for (name, value) in common::journal::parse_native(&buffer[..len]) {
                        if name == "MESSAGE" {
                            let text = String::from_utf8_lossy(&value).into_owned();
                            messages.lock().unwrap().push(text);
                        }
                    }
                }
            })
        };
        Collector {
            messages,
            stop,
            thread: Some(thread),
        }
    }

    fn any(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.messages.lock().unwrap().iter().any(|m| pred(m))
    }

    /// Waits up to `limit` for a message matching `pred`.
    fn wait_for(&self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let found = wait_until(limit, || self.any(&pred));
        assert!(
            found,
            "no journal entry {what}; got {} entries, the last: {:?}",
            self.messages.lock().unwrap().len(),
            self.messages
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_journal_that_stops_reading_stalls_neither_the_worker_nor_the_server() {
    let rt = &runtimes()[0];
    let jdir = TempDir::new("jstall");
    // Bound and never read: its queue fills after a few entries.
    let _journal = UnixDatagram::bind(jdir.path().join("socket")).unwrap();
    let server_log = jdir.path().join("server.log");
    // One worker: the flooding journald container and the CRI container
    // share it.
    let server = Server::start_wrapped(
        &journal_wrapper(jdir.path(), None),
        rt,
        &["--engine-workers", "1"],
        &server_log,
    );
    let flood_dir = TempDir::new("jstall-flood");
    let flood = journald_request(
        flood_dir.path(),
        &container_id(),
        &["/bin/busybox", "seq", "1", "200000"],
    );
    create_and_start(&server, &flood);
    std::thread::sleep(Duration::from_millis(500));

    let cri_dir = TempDir::new("jstall-cri");
    let cri_id = container_id();
    let bundle = make_bundle(
        cri_dir.path(),
        &["/bin/busybox", "seq", "1", "20000"],
        false,
    );
    let cri = basic_request(cri_dir.path(), &cri_id, &bundle, false);
    create_and_start(&server, &cri);

    // The CRI container is drained to its end (more than a pipe holds, so
    // it could not even exit otherwise) and its log is complete.
    let drained = wait_until(Duration::from_secs(20), || {
        cri_dir.path().join("exit").exists()
    });
    assert!(
        drained,
        "the CRI container sharing the worker was not drained to its exit"
    );
    let (stdout, _) = parse_cri(&fs::read(cri_dir.path().join("ctr.log")).unwrap());
    let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(
        stdout == want.as_bytes(),
        "CRI log incomplete: {} bytes of {}",
        stdout.len(),
        want.len()
    );
    // The server answers.
    let version = run_local_value(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            server.client().await.version(false).await
        })
        .await
    });
    assert!(
        matches!(version, Ok(Ok(_))),
        "version: {:?}",
        version.map(|v| v.map(|_| ()).map_err(|e| e.to_string()))
    );
    // The flooding container ran to its end too; its lost entries were
    // counted and reported.
    assert!(
        wait_until(Duration::from_secs(20), || flood_dir
            .path()
            .join("exit")
            .exists()),
        "the journald container was not drained to its exit"
    );
    let found = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(&server_log).is_ok_and(|l| l.contains("journal entries dropped"))
    });
    assert!(found, "no warning about dropped journal entries");
    server.runtime_cmd(&["delete", "-f", &flood.id]);
    server.runtime_cmd(&["delete", "-f", &cri_id]);
}

#[test]
fn the_server_log_and_the_journald_driver_reach_a_restarted_journal() {
    let rt = &runtimes()[0];
    let jdir = TempDir::new("jrestart");
    let socket = jdir.path().join("socket");
    let first = Collector::bind(&socket);
    let server = Server::start_wrapped(
        &journal_wrapper(jdir.path(), Some("systemd")),
        rt,
        &[],
        &jdir.path().join("server.log"),
    );
    let ticking_dir = TempDir::new("jrestart-c");
    let ticking = journald_request(
        ticking_dir.path(),
        &container_id(),
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 600 ]; do echo tick-$i; i=$((i+1)); sleep 0.05; done",
        ],
    );
    create_and_start(&server, &ticking);
    first.wait_for(Duration::from_secs(10), "from the container", |m| {
        m.starts_with("tick-")
    });
    first.wait_for(Duration::from_secs(10), "from the server", |m| {
        m.contains("createContainer") && m.contains(&ticking.id)
    });

    // journald restarts: the socket goes away and a new one is bound.
    drop(first);
    fs::remove_file(&socket).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let second = Collector::bind(&socket);

    let other_dir = TempDir::new("jrestart-d");
    let other_id = container_id();
    let bundle = make_bundle(other_dir.path(), &["/bin/echo", "hi"], false);
    create(
        &server,
        &basic_request(other_dir.path(), &other_id, &bundle, false),
    );
    second.wait_for(Duration::from_secs(10), "from the container", |m| {
        m.starts_with("tick-")
    });
    second.wait_for(
        Duration::from_secs(10),
        "from the server after the restart",
        |m| m.contains("createContainer") && m.contains(&other_id),
    );
    second.wait_for(Duration::from_secs(10), "reporting the lost lines", |m| {
        m.contains("log lines were lost while the journal was unreachable")
    });
    server.runtime_cmd(&["delete", "-f", &ticking.id]);
    server.runtime_cmd(&["delete", "-f", &other_id]);
}

fn run_local_value<T, F: std::future::Future<Output = T>>(f: F) -> T {
    let mut out = None;
    run_local(async { out = Some(f.await) });
    out.unwrap()
}
