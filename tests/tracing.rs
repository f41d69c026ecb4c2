//! Tracing export seen from the wire (README "Tracing"): a tiny OTLP/gRPC
//! receiver made of the `h2` server checks the request ringmon sends (path,
//! gRPC headers, a length-prefixed message carrying the span and the
//! resource) and answers as a receiver does. The full check against
//! grpc-go and the official OTLP protobuf is tests/go/tracing_export_test.go.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// What the receiver saw: connections accepted, and each export's path,
/// content-type, te and body.
#[derive(Default)]
struct Seen {
    connections: usize,
    exports: Vec<(String, String, String, Vec<u8>)>,
}

/// Starts the receiver on its own thread; returns its address.
fn start_receiver() -> (SocketAddr, Arc<Mutex<Seen>>) {
    start_receiver_closing(false)
}

/// [`start_receiver`]; with `close_after_answer` each connection is closed
/// (GOAWAY) once it answered one export, as a restarting collector does.
fn start_receiver_closing(close_after_answer: bool) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                shared.lock().unwrap().connections += 1;
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let header = |n: &str| {
                            request
                                .headers()
                                .get(n)
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default()
                        };
                        let path = request.uri().path().to_string();
                        let (ct, te) = (header("content-type"), header("te"));
                        let mut body = request.into_body();
                        let mut bytes = Vec::new();
                        while let Some(chunk) = body.data().await {
                            let chunk = chunk.unwrap();
                            let _ = body.flow_control().release_capacity(chunk.len());
                            bytes.extend_from_slice(&chunk);
                        }
                        shared.lock().unwrap().exports.push((path, ct, te, bytes));
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut stream = respond.send_response(response, false).unwrap();
                        // An empty ExportTraceServiceResponse.
                        stream
                            .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false)
                            .unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        stream.send_trailers(trailers).unwrap();
                        if close_after_answer {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn version_call(server: &Server) {
    run_local(async {
        server.client().await.version(false).await.expect("version");
    });
}

#[test]
fn spans_reach_an_otlp_grpc_receiver_only_once_there_are_spans() {
    let (addr, seen) = start_receiver();
    let runtime = runtimes().remove(0);
    let endpoint = format!("http://{addr}");
    let server = Server::start_with(
        &runtime,
        &["--enable-tracing", "--tracing-endpoint", &endpoint],
    );
    server.wait_ready();
    // Idle: no connection is opened before the first span.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(seen.lock().unwrap().connections, 0);

    version_call(&server);
    assert!(
        wait_until(Duration::from_secs(10), || !seen
            .lock()
            .unwrap()
            .exports
            .is_empty()),
        "no export within 10 s"
    );
    let seen = seen.lock().unwrap();
    let (path, content_type, te, body) = &seen.exports[0];
    assert_eq!(
        path,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    assert_eq!(content_type, "application/grpc");
    assert_eq!(te, "trailers");
    // One uncompressed gRPC message, its length as announced.
    assert_eq!(body[0], 0);
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 5 + len);
    assert!(contains(body, b"version"), "no version span");
    assert!(contains(body, b"conmonrs"), "no service.name");
    assert!(contains(body, b"service.name"));
}

#[test]
fn an_unusable_endpoint_leaves_the_server_serving_without_tracing() {
    let runtime = runtimes().remove(0);
    let dir = TempDir::new("tracing-log");
    let log = dir.path().join("server.log");
    let server = Server::start_logging_to(
        &runtime,
        &[
            "--enable-tracing",
            "--tracing-endpoint",
            "https://collector.example:4317",
        ],
        &log,
    );
    server.wait_ready();
    version_call(&server);
    let text = std::fs::read_to_string(Path::new(&log)).unwrap();
    assert!(
        text.contains("tracing disabled")
            && text.contains("https://collector.example:4317")
            && text.contains("TLS"),
        "{text}"
    );
}

/// A span as decoded from an export body: (trace id, span id, parent span
/// id, name).
type DecodedSpan = (Vec<u8>, Vec<u8>, Vec<u8>, String);

/// Reads a protobuf varint at `*at`.
fn read_varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            break;
        }
    }
    v
}

/// The fields of one protobuf message: (field number, bytes) for
/// length-delimited ones; other wire types are skipped.
fn len_fields(b: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = read_varint(b, &mut at);
        match key & 7 {
            0 => {
                read_varint(b, &mut at);
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = read_varint(b, &mut at) as usize;
                out.push((key >> 3, &b[at..at + len]));
                at += len;
            }
            wire => panic!("wire type {wire}"),
        }
    }
    out
}

/// The spans of every export the receiver saw (ExportTraceServiceRequest
/// → ResourceSpans(1) → ScopeSpans(2) → Span(2)).
fn decoded_spans(seen: &Seen) -> Vec<DecodedSpan> {
    let field = |fields: &[(u64, &[u8])], n| {
        fields
            .iter()
            .find(|(f, _)| *f == n)
            .map(|(_, v)| v.to_vec())
            .unwrap_or_default()
    };
    let mut spans = Vec::new();
    for (_, _, _, body) in &seen.exports {
        for (f, rs) in len_fields(&body[5..]) {
            assert_eq!(f, 1);
            for (f, ss) in len_fields(rs) {
                if f != 2 {
                    continue;
                }
                for (f, span) in len_fields(ss) {
                    if f != 2 {
                        continue;
                    }
                    let s = len_fields(span);
                    spans.push((
                        field(&s, 1),
                        field(&s, 2),
                        field(&s, 4),
                        String::from_utf8(field(&s, 5)).unwrap(),
                    ));
                }
            }
        }
    }
    spans
}

/// An exec session's runtime runs in a task of its own; its "runtime exec"
/// span is still a child of the createExecSession call's span.
#[test]
fn an_exec_sessions_runtime_exec_is_a_child_of_its_call() {
    let (addr, seen) = start_receiver();
    let runtime = runtimes().remove(0);
    let endpoint = format!("http://{addr}");
    let server = Server::start_with(
        &runtime,
        &["--enable-tracing", "--tracing-endpoint", &endpoint],
    );
    server.wait_ready();
    let dir = TempDir::new("tracing-session");
    let id = start_sleeping_container(&server, dir.path());
    run_local(async {
        let c = server.client().await;
        let req = ringmon::client::CreateExecSessionRequest {
            id: id.clone(),
            session_id: "traced".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "exit 0".into()],
            cgroup_manager: 1,
            ..Default::default()
        };
        c.create_exec_session(&req)
            .await
            .expect("createExecSession");
    });
    let find = || {
        let spans = decoded_spans(&seen.lock().unwrap());
        let call = spans.iter().find(|s| s.3 == "create_exec_session")?.clone();
        let exec = spans
            .iter()
            .find(|s| s.3 == "runtime exec" && s.0 == call.0 && s.2 == call.1)?
            .clone();
        Some((call, exec))
    };
    let found = wait_until(Duration::from_secs(10), || find().is_some());
    server.runtime_cmd(&["delete", "-f", &id]);
    assert!(
        found,
        "no runtime exec under create_exec_session: {:?}",
        decoded_spans(&seen.lock().unwrap())
            .iter()
            .map(|s| &s.3)
            .collect::<Vec<_>>()
    );
}

/// Ids are copied from a request before it is validated: a long one (and
/// the error quoting it) is cut to 256 bytes in the span.
#[test]
fn long_request_values_are_cut_in_the_span() {
    let (addr, seen) = start_receiver();
    let runtime = runtimes().remove(0);
    let endpoint = format!("http://{addr}");
    let server = Server::start_with(
        &runtime,
        &["--enable-tracing", "--tracing-endpoint", &endpoint],
    );
    server.wait_ready();
    let id = "x".repeat(5000);
    run_local(async {
        let c = server.client().await;
        let req = ringmon::client::CreateRequest {
            id: id.clone(),
            ..Default::default()
        };
        assert!(c.create_container(&req).await.is_err());
    });
    let exported = || {
        let seen = seen.lock().unwrap();
        seen.exports
            .iter()
            .find(|e| contains(&e.3, b"create_container"))
            .map(|e| e.3.clone())
    };
    assert!(wait_until(Duration::from_secs(10), || exported().is_some()));
    let body = exported().unwrap();
    assert!(contains(&body, &id.as_bytes()[..256]), "no id in the span");
    assert!(!contains(&body, &id.as_bytes()[..257]), "id not cut");
    assert!(body.len() < 4096, "{} bytes", body.len());
}

/// A collector that closed the cached connection (GOAWAY, restart) since
/// the last export: the next batch goes out on a new connection instead of
/// being dropped.
#[test]
fn a_connection_the_collector_closed_is_replaced_without_losing_the_batch() {
    let (addr, seen) = start_receiver_closing(true);
    let runtime = runtimes().remove(0);
    let endpoint = format!("http://{addr}");
    let server = Server::start_with(
        &runtime,
        &["--enable-tracing", "--tracing-endpoint", &endpoint],
    );
    server.wait_ready();
    version_call(&server);
    assert!(wait_until(Duration::from_secs(10), || seen
        .lock()
        .unwrap()
        .exports
        .len()
        == 1));
    // Let the GOAWAY reach ringmon before the next batch.
    std::thread::sleep(Duration::from_millis(300));
    version_call(&server);
    assert!(
        wait_until(Duration::from_secs(10), || seen
            .lock()
            .unwrap()
            .exports
            .len()
            == 2),
        "second batch lost"
    );
    assert_eq!(seen.lock().unwrap().connections, 2);
}
