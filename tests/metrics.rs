//! The Prometheus metrics against real peers: a real server runs a real
//! container that prints known output; its `metrics.sock` is scraped and
//! the counters must equal what the container wrote; `promtool check
//! metrics` must accept the scrape; Debian's real `prometheus` scrapes the
//! `--metrics-address` every second and its HTTP API must answer a query
//! for the container's logged bytes; `ringmon ctl stats` and `ctl ps` show
//! the same counters.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Longest wait for anything (a container's exit, prometheus's answer).
const WAIT: Duration = Duration::from_secs(20);

/// What the container prints: `seq 1 1000` on stdout (3893 bytes, 1000
/// lines), and on stderr two lines and a partial one.
const SCRIPT: &str = "seq 1 1000; printf 'a\\nbb\\nccc' >&2";
const STDOUT_BYTES: u64 = 9 * 2 + 90 * 3 + 900 * 4 + 5;
const STDOUT_LINES: u64 = 1000;
const STDERR_BYTES: u64 = 8;
const STDERR_LINES: u64 = 2;

/// A loopback port nobody listens on now (prometheus needs one given; the
/// race with another process taking it meanwhile shows as prometheus
/// exiting, which [`Prometheus::query`] reports at once with its log).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `request` and reads the whole response (the server closes).
fn exchange(mut stream: impl Read + Write, request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8(response).unwrap()
}

fn body(response: &str) -> &str {
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n"),
        "not a 200: {response}"
    );
    response.split_once("\r\n\r\n").unwrap().1
}

/// `GET /metrics` on the server's metrics.sock.
fn scrape(server: &Server) -> String {
    let path = runtime_dir(server).join("metrics.sock");
    let stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    body(&exchange(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ))
    .to_string()
}

/// Starts a server with `--metrics-address 127.0.0.1:0` logging to `log`;
/// returns it and the address its TCP listener bound, read from its log.
fn start_with_tcp_metrics(rt: &Path, log: &Path) -> (Server, String) {
    let server = Server::start_logging_to(rt, &["--metrics-address", "127.0.0.1:0"], log);
    let mut address = None;
    let logged = wait_until(WAIT, || {
        address = bound_metrics_address(&std::fs::read_to_string(log).unwrap_or_default());
        address.is_some()
    });
    assert!(
        logged,
        "no metrics address logged: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    (server, address.unwrap())
}

/// The address in the server's "metrics served ... on http://ADDR/metrics".
fn bound_metrics_address(log: &str) -> Option<String> {
    let (_, rest) = log.split_once("metrics served unauthenticated on http://")?;
    let (address, _) = rest.split_once("/metrics")?;
    Some(address.to_string())
}

fn runtime_dir(server: &Server) -> PathBuf {
    server.socket.parent().unwrap().to_path_buf()
}

/// The value of the sample `series` (name and labels, as rendered).
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

/// Runs the known container to its exit; returns its id.
fn run_known_container(server: &Server, dir: &Path) -> String {
    let id = container_id();
    let bundle = make_bundle(dir, &["/bin/sh", "-c", SCRIPT], false);
    let req = basic_request(dir, &id, &bundle, false);
    run_local(async {
        server.client().await.create_container(&req).await.unwrap();
    });
    server.start_container(&id);
    wait_for_file(&dir.join("exit"), WAIT);
    id
}

fn check_counters(text: &str, id: &str) {
    let series = |name: &str, stream: &str| {
        sample(
            text,
            &format!("{name}{{container_id=\"{id}\",stream=\"{stream}\"}}"),
        )
    };
    let total = "ringmon_container_log_bytes_total";
    let lines = "ringmon_container_log_lines_total";
    assert_eq!(
        series(total, "stdout"),
        Some(STDOUT_BYTES.to_string()),
        "{text}"
    );
    assert_eq!(
        series(total, "stderr"),
        Some(STDERR_BYTES.to_string()),
        "{text}"
    );
    assert_eq!(
        series(lines, "stdout"),
        Some(STDOUT_LINES.to_string()),
        "{text}"
    );
    assert_eq!(
        series(lines, "stderr"),
        Some(STDERR_LINES.to_string()),
        "{text}"
    );
    let pipe = series("ringmon_container_pipe_size_bytes", "stdout").expect("pipe size");
    assert!(pipe.parse::<u64>().unwrap() >= 4096, "{text}");
    let of_container = |name: &str| sample(text, &format!("{name}{{container_id=\"{id}\"}}"));
    assert_eq!(
        of_container("ringmon_container_exit_code").as_deref(),
        Some("0")
    );
    for zero in [
        "ringmon_container_log_discarded_bytes_total",
        "ringmon_container_log_write_errors_total",
        "ringmon_container_attach_clients",
        "ringmon_container_attach_drops_total",
    ] {
        assert_eq!(of_container(zero).as_deref(), Some("0"), "{zero}: {text}");
    }
    // The container exited: none is monitored now.
    assert_eq!(sample(text, "ringmon_containers").as_deref(), Some("0"));
    assert_eq!(sample(text, "ringmon_exec_sessions").as_deref(), Some("0"));
    assert!(sample(text, "ringmon_process_resident_memory_bytes").is_some());
    assert!(sample(text, "ringmon_process_open_fds").is_some());
    let worker = text
        .lines()
        .find(|l| l.starts_with("ringmon_worker_batches_total{worker=\"0\",backend="))
        .unwrap_or_else(|| panic!("no batches of worker 0: {text}"));
    assert!(worker.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(text.contains("ringmon_worker_cpu_seconds_total{worker=\"0\""));
}

/// `promtool check metrics` reads the scrape on stdin; it must pass with
/// nothing to say.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics: {said}");
    assert!(
        said.trim().is_empty(),
        "promtool check metrics warns: {said}"
    );
}

/// Whether `program` is on PATH.
fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if the prometheus tools are there; in CI their absence fails.
fn prometheus_available() -> bool {
    if installed("prometheus") && installed("promtool") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "prometheus/promtool not installed (tools/install-deps.sh installs Debian's prometheus)"
    );
    eprintln!(
        "SKIPPED: prometheus/promtool not installed (apt-get install prometheus, \
         or bash tools/install-deps.sh)"
    );
    false
}

/// A prometheus server of the test's own (config and data in `dir`),
/// killed on drop, and by `timeout` after 120 s should the test die
/// without dropping it.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: ringmon\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("timeout")
            .args(["-k", "5", "120", "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            port,
            log: log_path,
        }
    }

    /// The value of the instant query `query`'s first result, if any;
    /// panics with prometheus's log if it exited (e.g. its port was taken).
    fn query(&mut self, query: &str) -> Option<String> {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "prometheus exited ({status}); its log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let response = exchange(
            stream,
            &format!(
                "GET /api/v1/query?query={} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                percent_encode(query)
            ),
        );
        let (_, json) = response.split_once("\r\n\r\n")?;
        let json: serde_json::Value = serde_json::from_str(json).ok()?;
        json["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[test]
fn counters_equal_the_output_and_prometheus_reads_them() {
    if !prometheus_available() {
        return;
    }
    for_each_runtime(|rt| {
        let dir = TempDir::new("metrics");
        let (server, address) = start_with_tcp_metrics(rt, &dir.path().join("server.log"));
        let id = run_known_container(&server, dir.path());

        let text = scrape(&server);
        check_counters(&text, &id);
        promtool_check(&text);

        // The same over TCP; other paths and methods are refused, HEAD
        // has the head alone.
        let tcp = || {
            let stream = TcpStream::connect(&address).unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream
        };
        check_counters(body(&exchange(tcp(), "GET /metrics HTTP/1.0\r\n\r\n")), &id);
        let head = exchange(tcp(), "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
        let other = exchange(tcp(), "GET / HTTP/1.1\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        let head_other = exchange(tcp(), "HEAD / HTTP/1.1\r\n\r\n");
        assert!(head_other.starts_with("HTTP/1.1 404 "), "{head_other}");
        assert!(
            head_other.ends_with("\r\n\r\n"),
            "HEAD has no body: {head_other}"
        );
        // A body the server does not want is drained, not answered by a
        // reset that could lose the response.
        let post = exchange(
            tcp(),
            &format!(
                "POST /metrics HTTP/1.1\r\nContent-Length: 8192\r\n\r\n{}",
                "x".repeat(8192)
            ),
        );
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");

        let mut prometheus = Prometheus::start(dir.path(), &address);
        let query =
            format!("ringmon_container_log_bytes_total{{container_id=\"{id}\",stream=\"stdout\"}}");
        let mut last = None;
        let answered = wait_until(WAIT, || {
            last = prometheus.query(&query);
            if last.is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
            last.as_deref() == Some(&STDOUT_BYTES.to_string())
        });
        assert!(
            answered,
            "prometheus never answered {STDOUT_BYTES} for {query} (last: {last:?}); its log: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
    });
}

#[test]
fn ctl_stats_and_ps_show_the_counters() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("metrics-ctl");
        let id = run_known_container(&server, dir.path());
        let out = Command::new(binary())
            .arg("ctl")
            .arg("--runtime-dir")
            .arg(runtime_dir(&server))
            .args(["stats", "--no-trunc"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("CONTAINER ID "), "{text}");
        let row: Vec<&str> = lines
            .iter()
            .find(|l| l.starts_with(&id))
            .unwrap_or_else(|| panic!("no row for {id}: {text}"))
            .split_whitespace()
            .collect();
        // id, stdout, lines, stderr, lines, discarded, errors, attached,
        // drops, state.
        assert_eq!(
            &row[..9],
            &[
                id.as_str(),
                "3.8KiB",
                "1000",
                "8B",
                "2",
                "0B",
                "0",
                "0",
                "0"
            ],
            "{text}"
        );
        assert!(text.contains("exited (0)"), "{text}");
        assert!(text.contains("\nProcess: "), "{text}");
        assert!(text.contains("Worker 0 ("), "{text}");

        let out = Command::new(binary())
            .arg("ctl")
            .arg("--runtime-dir")
            .arg(runtime_dir(&server))
            .args(["ps", "--no-trunc"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let row = text
            .lines()
            .find(|l| l.starts_with(&id))
            .unwrap_or_else(|| panic!("no row for {id}: {text}"));
        // Output bytes as counted (3893 + 8), not the CRI file's size.
        assert!(row.contains(" 3.8KiB "), "{text}");
    });
}

#[test]
fn a_running_container_shows_its_attach_client() {
    for_each_runtime(|rt| {
        // Declared first, dropped last: the server writes the exit file
        // into it when it shuts down.
        let dir = TempDir::new("metrics-live");
        let server = Server::start(rt);
        let id = start_sleeping_container(&server, dir.path());
        let path = dir.path().join("attach");
        run_local(async {
            server
                .client()
                .await
                .attach_container(&id, &path, "", false)
                .await
                .unwrap();
        });
        let _conn = common::attach_client::AttachConn::connect(&path, "client");
        let series = format!("ringmon_container_attach_clients{{container_id=\"{id}\"}}");
        let mut text = String::new();
        let attached = wait_until(WAIT, || {
            text = scrape(&server);
            sample(&text, &series).as_deref() == Some("1")
        });
        assert!(attached, "no attach client counted: {text}");
        assert_eq!(sample(&text, "ringmon_containers").as_deref(), Some("1"));
        let exit = format!("ringmon_container_exit_code{{container_id=\"{id}\"}}");
        assert_eq!(
            sample(&text, &exit),
            None,
            "a running container has no exit code"
        );
        let pipe =
            format!("ringmon_container_pipe_size_bytes{{container_id=\"{id}\",stream=\"stderr\"}}");
        assert!(sample(&text, &pipe).is_some(), "{text}");
    });
}

#[test]
fn a_metrics_address_that_cannot_be_bound_is_a_warning_and_the_server_runs() {
    for_each_runtime(|rt| {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let dir = TempDir::new("metrics-taken");
        let log = dir.path().join("server.log");
        let server = Server::start_logging_to(rt, &["--metrics-address", &address], &log);
        let warning = format!("--metrics-address {address}: bind: ");
        let mut text = String::new();
        let warned = wait_until(WAIT, || {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains(&warning)
        });
        assert!(warned, "no warning {warning:?} in the server log: {text}");
        // The server runs: conmon.sock answers and metrics.sock serves.
        run_local(async {
            server.client().await.version(false).await.unwrap();
        });
        assert!(sample(&scrape(&server), "ringmon_containers").is_some());
    });
}

#[test]
fn idle_tcp_peers_do_not_lock_out_metrics_sock() {
    for_each_runtime(|rt| {
        let dir = TempDir::new("metrics-idle");
        let (server, address) = start_with_tcp_metrics(rt, &dir.path().join("server.log"));
        // More idle TCP connections than the TCP budget: the extra ones
        // are closed, the others sit until the connection timeout.
        let idle: Vec<TcpStream> = (0..8)
            .map(|_| TcpStream::connect(&address).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..4 {
            assert!(sample(&scrape(&server), "ringmon_containers").is_some());
        }
        drop(idle);
    });
}
