//! `ringmon ctl stats`: scrapes the server's `metrics.sock` (`GET /metrics`)
//! and prints the counters for people: a table per container, then the
//! process and each engine worker. The exposition text comes from outside
//! (a server): its parser is pure, bounded and fuzzed (`ctl_stats`).

use std::collections::BTreeMap;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{human_bytes, CtlError, RPC_TIMEOUT};

/// The most of a scrape ctl reads (a server with thousands of containers
/// answers a few MiB).
pub const MAX_SCRAPE_BYTES: usize = 64 * 1024 * 1024;

/// Samples taken from one scrape (later ones beyond this are ignored).
pub const MAX_SAMPLES: usize = 1_000_000;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the metrics of the server in `runtime_dir` (the body of a 200).
pub async fn scrape(runtime_dir: &Path) -> Result<String, CtlError> {
    let path = runtime_dir.join(crate::metrics::SOCKET_NAME);
    let io = |source| CtlError::File {
        what: "metrics socket",
        path: path.display().to_string(),
        source,
    };
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(&path).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: ringmon\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_SCRAPE_BYTES as u64)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(RPC_TIMEOUT, exchange).await {
        Ok(result) => result.map_err(io)?,
        Err(_) => {
            return Err(CtlError::Timeout {
                path: path.display().to_string(),
                call: "GET /metrics",
            })
        }
    };
    response_body(response)
        .map_err(|message| CtlError::Io(format!("metrics socket {}: {message}", path.display())))
}

/// The body of a complete `200` response (taken in place, no copy), else
/// what was wrong. A body shorter than its Content-Length (the server died
/// mid-response, or [`MAX_SCRAPE_BYTES`] cut it) is refused: its last
/// samples would be missing or cut, and read as wrong values.
pub fn response_body(mut response: Vec<u8>) -> Result<String, String> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err("the response has no complete head".into());
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the server answered {status:?}"));
    }
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("Content-Length {:?} is not a length", value.trim()))
        })
        .transpose()?;
    response.drain(..end + 4);
    if let Some(length) = length {
        if response.len() < length {
            return Err(format!(
                "short body: {} of its Content-Length {length} bytes",
                response.len()
            ));
        }
        response.truncate(length);
    }
    String::from_utf8(response).map_err(|_| "the metrics are not UTF-8".to_string())
}

/// Parses the text exposition format's sample lines (comments and lines
/// that do not parse are skipped; at most [`MAX_SAMPLES`]).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_line)
        .take(MAX_SAMPLES)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once("=\"")?;
            let (value, after) = unescape_until_quote(after)?;
            labels.push((label.trim().to_string(), value));
            rest = after;
        }
    }
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, unescaped; and what follows.
fn unescape_until_quote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// One container's row.
#[derive(Default)]
struct Row {
    stdout_bytes: f64,
    stdout_lines: f64,
    stderr_bytes: f64,
    stderr_lines: f64,
    discarded: f64,
    errors: f64,
    attached: f64,
    drops: f64,
    exit_code: Option<f64>,
}

/// Output bytes per container id (both streams), for `ctl ps`.
pub fn logged_bytes(samples: &[Sample]) -> BTreeMap<String, u64> {
    let mut logged = BTreeMap::new();
    for sample in samples {
        if sample.name == "ringmon_container_log_bytes_total" {
            if let Some(id) = sample.label("container_id") {
                *logged.entry(id.to_string()).or_insert(0) += sample.value as u64;
            }
        }
    }
    logged
}

/// The human report of a scrape.
pub fn stats_text(samples: &[Sample], no_trunc: bool) -> String {
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for sample in samples {
        let Some(id) = sample.label("container_id") else {
            continue;
        };
        let row = rows.entry(id).or_default();
        let stream = sample.label("stream");
        let v = sample.value;
        match (sample.name.as_str(), stream) {
            ("ringmon_container_log_bytes_total", Some("stdout")) => row.stdout_bytes = v,
            ("ringmon_container_log_bytes_total", Some("stderr")) => row.stderr_bytes = v,
            ("ringmon_container_log_lines_total", Some("stdout")) => row.stdout_lines = v,
            ("ringmon_container_log_lines_total", Some("stderr")) => row.stderr_lines = v,
            ("ringmon_container_log_discarded_bytes_total", _) => row.discarded = v,
            ("ringmon_container_log_write_errors_total", _) => row.errors = v,
            ("ringmon_container_attach_clients", _) => row.attached = v,
            ("ringmon_container_attach_drops_total", _) => row.drops = v,
            ("ringmon_container_exit_code", _) => row.exit_code = Some(v),
            _ => {}
        }
    }
    let mut table = vec![[
        "CONTAINER ID",
        "STDOUT",
        "LINES",
        "STDERR",
        "LINES",
        "DISCARDED",
        "LOG ERRORS",
        "ATTACHED",
        "DROPS",
        "STATE",
    ]
    .map(String::from)];
    for (id, row) in &rows {
        let id = if no_trunc {
            id.to_string()
        } else {
            id.chars().take(12).collect()
        };
        let count = |v: f64| format!("{}", v as u64);
        table.push([
            id,
            human_bytes(row.stdout_bytes as u64),
            count(row.stdout_lines),
            human_bytes(row.stderr_bytes as u64),
            count(row.stderr_lines),
            human_bytes(row.discarded as u64),
            count(row.errors),
            count(row.attached),
            count(row.drops),
            match row.exit_code {
                Some(code) => format!("exited ({})", code as i64),
                None => "running".into(),
            },
        ]);
    }
    let mut out = align(&table);
    let value = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
    };
    let mut process = Vec::new();
    if let Some(rss) = value("ringmon_process_resident_memory_bytes") {
        process.push(format!("{} resident", human_bytes(rss as u64)));
    }
    if let Some(fds) = value("ringmon_process_open_fds") {
        process.push(format!("{} open fds", fds as u64));
    }
    for (name, what) in [
        ("ringmon_containers", "containers"),
        ("ringmon_exec_sessions", "exec sessions"),
        ("ringmon_streaming_sessions", "streaming sessions"),
    ] {
        if let Some(v) = value(name) {
            process.push(format!("{} {what}", v as u64));
        }
    }
    out.push_str(&format!("\nProcess: {}\n", process.join(", ")));
    let mut workers: BTreeMap<(u64, String), [f64; 3]> = BTreeMap::new();
    for sample in samples {
        let slot = match sample.name.as_str() {
            "ringmon_worker_wakeups_total" => 0,
            "ringmon_worker_batches_total" => 1,
            "ringmon_worker_cpu_seconds_total" => 2,
            _ => continue,
        };
        let (Some(worker), Some(backend)) = (sample.label("worker"), sample.label("backend"))
        else {
            continue;
        };
        let index = worker.parse().unwrap_or(u64::MAX);
        workers.entry((index, backend.to_string())).or_default()[slot] = sample.value;
    }
    if workers.is_empty() {
        out.push_str("Workers: none started (no container yet)\n");
    }
    for ((index, backend), [wakeups, batches, cpu]) in workers {
        out.push_str(&format!(
            "Worker {index} ({backend}): {} wake-ups, {} batches, {cpu:.3} s CPU\n",
            wakeups as u64, batches as u64
        ));
    }
    out
}

/// Left-aligned columns two spaces apart, the last one unpadded.
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP ringmon_container_log_bytes_total Bytes.
# TYPE ringmon_container_log_bytes_total counter
ringmon_container_log_bytes_total{container_id="abcdef0123456789",stream="stdout"} 2048
ringmon_container_log_bytes_total{container_id="abcdef0123456789",stream="stderr"} 6
ringmon_container_log_lines_total{container_id="abcdef0123456789",stream="stdout"} 20
ringmon_container_log_lines_total{container_id="we\"ird\\id",stream="stdout"} 1
ringmon_container_exit_code{container_id="we\"ird\\id"} 3
ringmon_worker_wakeups_total{worker="0",backend="epoll"} 7
ringmon_worker_batches_total{worker="0",backend="epoll"} 5
ringmon_worker_cpu_seconds_total{worker="0",backend="epoll"} 0.25
ringmon_process_resident_memory_bytes 3145728
ringmon_containers 1
"#;

    #[test]
    fn samples_are_parsed_with_escaped_labels() {
        let samples = parse_samples(SCRAPE);
        assert_eq!(samples.len(), 10);
        assert_eq!(samples[3].label("container_id"), Some("we\"ird\\id"));
        assert_eq!(samples[8].value, 3145728.0);
        assert!(parse_samples("broken{x=\"unterminated 1\n{} 2\n").is_empty());
        assert_eq!(logged_bytes(&samples)["abcdef0123456789"], 2054);
    }

    #[test]
    fn the_report_has_a_row_per_container_and_a_summary() {
        let text = stats_text(&parse_samples(SCRAPE), false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("CONTAINER ID  STDOUT"), "{text}");
        assert!(lines[1].starts_with("abcdef012345  2.0KiB  20 "), "{text}");
        assert!(lines[1].ends_with("running"), "{text}");
        assert!(lines[2].starts_with("we\"ird\\id"), "{text}");
        assert!(lines[2].ends_with("exited (3)"), "{text}");
        assert!(
            text.contains("\nProcess: 3.0MiB resident, 1 containers\n"),
            "{text}"
        );
        assert!(text.contains("Worker 0 (epoll): 7 wake-ups, 5 batches, 0.250 s CPU\n"));
        assert_eq!(
            response_body(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody".to_vec()).unwrap(),
            "body"
        );
        assert_eq!(
            response_body(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody".to_vec()).unwrap(),
            "body"
        );
        let short = response_body(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nbody".to_vec());
        assert!(short.unwrap_err().contains("short body"));
        assert!(response_body(b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec()).is_err());
    }
}
