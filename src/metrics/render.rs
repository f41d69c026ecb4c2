//! The Prometheus text exposition format, version 0.0.4: for each metric
//! family a `# HELP` and a `# TYPE` line, then its samples
//! `name{label="value",...} number`. Counters end in `_total`, units are
//! base units in the name (`_bytes`, `_seconds`).

use std::fmt::Write;

use super::{ContainerSample, Snapshot, StreamSample};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders a snapshot. Families without a sample (no container yet, no
/// worker started) are left out, which the format allows.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(1024 + snapshot.containers.len() * 1024);
    let containers = &snapshot.containers;
    let per_stream = |out: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      value: fn(&StreamSample) -> u64,
                      skip_zero: bool| {
        let samples: Vec<(&str, &str, u64)> = containers
            .iter()
            .flat_map(|c| {
                [("stdout", &c.stdout), ("stderr", &c.stderr)]
                    .into_iter()
                    .map(move |(stream, sample)| (c.id.as_str(), stream, value(sample)))
            })
            .filter(|&(_, _, v)| !(skip_zero && v == 0))
            .collect();
        if samples.is_empty() {
            return;
        }
        family(out, name, kind, help);
        for (id, stream, v) in samples {
            sample(out, name, &[("container_id", id), ("stream", stream)], v);
        }
    };
    per_stream(
        &mut out,
        "ringmon_container_log_bytes_total",
        "counter",
        "Bytes of container output read from the stream and handed to its log writers.",
        |s| s.bytes,
        false,
    );
    per_stream(
        &mut out,
        "ringmon_container_log_lines_total",
        "counter",
        "Complete lines (newlines) of container output read from the stream.",
        |s| s.lines,
        false,
    );
    per_stream(
        &mut out,
        "ringmon_container_pipe_size_bytes",
        "gauge",
        "Capacity of the pipe the stream is read from (absent for a terminal).",
        |s| s.pipe_size,
        true,
    );
    per_container(
        &mut out,
        containers,
        "ringmon_container_log_discarded_bytes_total",
        "counter",
        "Bytes of container output a failing log writer did not get (summed over its log writers).",
        |c| Some(c.discarded_bytes as i64),
    );
    per_container(
        &mut out,
        containers,
        "ringmon_container_log_write_errors_total",
        "counter",
        "Writes to the container's logs that failed.",
        |c| Some(c.log_write_errors as i64),
    );
    per_container(
        &mut out,
        containers,
        "ringmon_container_attach_clients",
        "gauge",
        "Attach clients connected to the container now.",
        |c| Some(c.attach_clients as i64),
    );
    per_container(
        &mut out,
        containers,
        "ringmon_container_attach_drops_total",
        "counter",
        "Attach clients the engine disconnected (too slow, failed or stalled).",
        |c| Some(c.attach_drops as i64),
    );
    per_container(
        &mut out,
        containers,
        "ringmon_container_exit_code",
        "gauge",
        "Exit code of a container that exited (absent while it runs).",
        |c| c.exit_code.map(i64::from),
    );
    let workers = &snapshot.workers;
    if !workers.is_empty() {
        for (name, kind, help, value) in [
            (
                "ringmon_worker_wakeups_total",
                "counter",
                "Returns of the engine worker from its wait for output.",
                (|w: &crate::engine::WorkerStats| Some(w.wakeups as f64))
                    as fn(&crate::engine::WorkerStats) -> Option<f64>,
            ),
            (
                "ringmon_worker_batches_total",
                "counter",
                "Wake-ups of the engine worker that routed container output.",
                |w| Some(w.batches as f64),
            ),
            (
                "ringmon_worker_cpu_seconds_total",
                "counter",
                "CPU time used by the engine worker's thread.",
                |w| w.cpu.map(|cpu| cpu.as_secs_f64()),
            ),
        ] {
            family(&mut out, name, kind, help);
            for worker in workers {
                if let Some(v) = value(worker) {
                    let index = worker.index.to_string();
                    sample(
                        &mut out,
                        name,
                        &[("worker", &index), ("backend", worker.backend)],
                        v,
                    );
                }
            }
        }
    }
    let process = &snapshot.process;
    let gauges: [(&str, &str, Option<u64>); 5] = [
        (
            "ringmon_process_resident_memory_bytes",
            "Resident memory of the server process.",
            process.resident_bytes,
        ),
        (
            "ringmon_process_open_fds",
            "Open file descriptors of the server process.",
            process.open_fds,
        ),
        (
            "ringmon_containers",
            "Containers monitored now.",
            Some(process.containers),
        ),
        (
            "ringmon_exec_sessions",
            "Exec sessions that have not ended.",
            Some(process.exec_sessions),
        ),
        (
            "ringmon_streaming_sessions",
            "Open streaming (exec, attach, port-forward) sessions.",
            Some(process.streaming_sessions),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            family(&mut out, name, "gauge", help);
            sample(&mut out, name, &[], v);
        }
    }
    if let Some(dropped) = process.trace_spans_dropped {
        let name = "ringmon_trace_spans_dropped_total";
        family(
            &mut out,
            name,
            "counter",
            "Trace spans not exported: the export queue was full or the collector failed.",
        );
        sample(&mut out, name, &[], dropped);
    }
    out
}

fn per_container(
    out: &mut String,
    containers: &[ContainerSample],
    name: &str,
    kind: &str,
    help: &str,
    value: fn(&ContainerSample) -> Option<i64>,
) {
    let mut wrote_family = false;
    for container in containers {
        let Some(v) = value(container) else {
            continue;
        };
        if !wrote_family {
            family(out, name, kind, help);
            wrote_family = true;
        }
        sample(out, name, &[("container_id", &container.id)], v);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the format wants it between double quotes: backslash,
/// double quote and line feed escaped as `\\`, `\"` and `\n`.
pub fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A `# HELP` text: backslash and line feed escaped (quotes stay).
pub fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WorkerStats;
    use crate::metrics::{ContainerSample, ProcessSample, StreamSample};
    use std::time::Duration;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label_value("plain-id_0"), "plain-id_0");
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nnext"), "line\\nnext");
        assert_eq!(escape_label_value("ünï"), "ünï");
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
    }

    #[test]
    fn a_whole_rendering() {
        let snapshot = Snapshot {
            containers: vec![
                ContainerSample {
                    id: "c1".into(),
                    stdout: StreamSample {
                        bytes: 12,
                        lines: 2,
                        pipe_size: 65536,
                    },
                    stderr: StreamSample {
                        bytes: 4,
                        lines: 1,
                        pipe_size: 65536,
                    },
                    discarded_bytes: 0,
                    log_write_errors: 0,
                    attach_clients: 1,
                    attach_drops: 0,
                    exit_code: None,
                },
                ContainerSample {
                    id: "we\"ird".into(),
                    exit_code: Some(3),
                    ..Default::default()
                },
            ],
            workers: vec![WorkerStats {
                index: 0,
                backend: "epoll",
                wakeups: 7,
                batches: 5,
                cpu: Some(Duration::from_millis(1500)),
            }],
            process: ProcessSample {
                resident_bytes: Some(4096),
                open_fds: None,
                containers: 1,
                exec_sessions: 0,
                streaming_sessions: 2,
                trace_spans_dropped: None,
            },
        };
        let expected = r#"# HELP ringmon_container_log_bytes_total Bytes of container output read from the stream and handed to its log writers.
# TYPE ringmon_container_log_bytes_total counter
ringmon_container_log_bytes_total{container_id="c1",stream="stdout"} 12
ringmon_container_log_bytes_total{container_id="c1",stream="stderr"} 4
ringmon_container_log_bytes_total{container_id="we\"ird",stream="stdout"} 0
ringmon_container_log_bytes_total{container_id="we\"ird",stream="stderr"} 0
# HELP ringmon_container_log_lines_total Complete lines (newlines) of container output read from the stream.
# TYPE ringmon_container_log_lines_total counter
ringmon_container_log_lines_total{container_id="c1",stream="stdout"} 2
ringmon_container_log_lines_total{container_id="c1",stream="stderr"} 1
ringmon_container_log_lines_total{container_id="we\"ird",stream="stdout"} 0
ringmon_container_log_lines_total{container_id="we\"ird",stream="stderr"} 0
# HELP ringmon_container_pipe_size_bytes Capacity of the pipe the stream is read from (absent for a terminal).
# TYPE ringmon_container_pipe_size_bytes gauge
ringmon_container_pipe_size_bytes{container_id="c1",stream="stdout"} 65536
ringmon_container_pipe_size_bytes{container_id="c1",stream="stderr"} 65536
# HELP ringmon_container_log_discarded_bytes_total Bytes of container output a failing log writer did not get (summed over its log writers).
# TYPE ringmon_container_log_discarded_bytes_total counter
ringmon_container_log_discarded_bytes_total{container_id="c1"} 0
ringmon_container_log_discarded_bytes_total{container_id="we\"ird"} 0
# HELP ringmon_container_log_write_errors_total Writes to the container's logs that failed.
# TYPE ringmon_container_log_write_errors_total counter
ringmon_container_log_write_errors_total{container_id="c1"} 0
ringmon_container_log_write_errors_total{container_id="we\"ird"} 0
# HELP ringmon_container_attach_clients Attach clients connected to the container now.
# TYPE ringmon_container_attach_clients gauge
ringmon_container_attach_clients{container_id="c1"} 1
ringmon_container_attach_clients{container_id="we\"ird"} 0
# HELP ringmon_container_attach_drops_total Attach clients the engine disconnected (too slow, failed or stalled).
# TYPE ringmon_container_attach_drops_total counter
ringmon_container_attach_drops_total{container_id="c1"} 0
ringmon_container_attach_drops_total{container_id="we\"ird"} 0
# HELP ringmon_container_exit_code Exit code of a container that exited (absent while it runs).
# TYPE ringmon_container_exit_code gauge
ringmon_container_exit_code{container_id="we\"ird"} 3
# HELP ringmon_worker_wakeups_total Returns of the engine worker from its wait for output.
# TYPE ringmon_worker_wakeups_total counter
ringmon_worker_wakeups_total{worker="0",backend="epoll"} 7
# HELP ringmon_worker_batches_total Wake-ups of the engine worker that routed container output.
# TYPE ringmon_worker_batches_total counter
ringmon_worker_batches_total{worker="0",backend="epoll"} 5
# HELP ringmon_worker_cpu_seconds_total CPU time used by the engine worker's thread.
# TYPE ringmon_worker_cpu_seconds_total counter
ringmon_worker_cpu_seconds_total{worker="0",backend="epoll"} 1.5
# HELP ringmon_process_resident_memory_bytes Resident memory of the server process.
# TYPE ringmon_process_resident_memory_bytes gauge
ringmon_process_resident_memory_bytes 4096
# HELP ringmon_containers Containers monitored now.
# TYPE ringmon_containers gauge
ringmon_containers 1
# HELP ringmon_exec_sessions Exec sessions that have not ended.
# TYPE ringmon_exec_sessions gauge
ringmon_exec_sessions 0
# HELP ringmon_streaming_sessions Open streaming (exec, attach, port-forward) sessions.
# TYPE ringmon_streaming_sessions gauge
ringmon_streaming_sessions 2
"#;
        assert_eq!(render(&snapshot), expected);
    }

    #[test]
    fn an_empty_server_renders_only_the_process() {
        let text = render(&Snapshot::default());
        assert!(text.starts_with("# HELP ringmon_containers "), "{text}");
        assert!(!text.contains("container_id"));
        assert!(!text.contains("worker="));
    }
}
