//! The span exporter: a bounded queue drained by one task on the control
//! thread's runtime, which batches spans and sends them to the OTLP/gRPC
//! receiver over one HTTP/2 connection (the `h2` crate; the protobuf is
//! [`super::proto`]).
//!
//! Nothing waits for the exporter: a span is queued with `try_send` and
//! dropped (counted, [`dropped_spans`]) when the queue is full; every
//! connect and export has a timeout, and a failed export drops its batch
//! (the collector being away must not grow memory). The task only does
//! socket I/O and encoding, a few microseconds a span, so it shares the
//! control thread rather than adding one; it sleeps while there are no
//! spans (no timer runs on an idle server).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::{proto, Endpoint, SpanData, Value};

/// Spans queued at most; past that they are dropped.
pub const QUEUE_CAPACITY: usize = 2048;
/// Spans sent in one export request at most.
pub const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Bound on connecting (TCP and the HTTP/2 handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one export request, answer included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about dropped spans per this period.
const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// Most bytes of one export request's message: a larger batch is sent in
/// several requests (receivers refuse messages past 4 MiB by default).
pub const MAX_EXPORT_BYTES: usize = 1024 * 1024;
/// Room in [`MAX_EXPORT_BYTES`] for the resource and scope around the spans.
const ENVELOPE_BYTES: usize = 4096;
/// Most bytes of an export answer read (it is an almost empty message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The gRPC method of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

enum Message {
    Span(Box<SpanData>),
    /// Export what is queued, then answer.
    Flush(oneshot::Sender<()>),
}

static QUEUE: OnceLock<mpsc::Sender<Message>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Spans dropped because the queue was full, not yet reported by the
/// exporter task (which warns, rate-limited).
static QUEUE_FULL_UNREPORTED: AtomicU64 = AtomicU64::new(0);

/// Whether tracing is on (an exporter was started).
pub fn enabled() -> bool {
    QUEUE.get().is_some()
}

/// Spans dropped since start: queue full, or their export failed.
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Queues a finished span; never waits.
pub(super) fn submit(span: Box<SpanData>) {
    if let Some(q) = QUEUE.get() {
        if q.try_send(Message::Span(span)).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            QUEUE_FULL_UNREPORTED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An export that did not succeed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("HTTP/2 with {endpoint}: {source}")]
    H2 { endpoint: String, source: h2::Error },
    #[error("{what} with {endpoint} timed out after {after:?}")]
    Timeout {
        what: &'static str,
        endpoint: String,
        after: Duration,
    },
    #[error("export to {endpoint}: HTTP status {status}")]
    Status { endpoint: String, status: u16 },
    #[error("export to {endpoint}: grpc-status {code} {message}")]
    Grpc {
        endpoint: String,
        code: String,
        message: String,
    },
    #[error("export request to {uri} could not be built: {source}")]
    Request { uri: String, source: http::Error },
    #[error("span queue full ({QUEUE_CAPACITY} spans)")]
    QueueFull,
    #[error("export to {endpoint}: answer longer than {MAX_ANSWER_BYTES} bytes")]
    AnswerTooLong { endpoint: String },
    #[error("export to {endpoint}: a span of {bytes} bytes exceeds the request limit of {MAX_EXPORT_BYTES}")]
    SpanTooLarge { endpoint: String, bytes: usize },
    #[error("export to {endpoint}: request of {bytes} bytes does not fit a gRPC frame")]
    FrameTooLong { endpoint: String, bytes: usize },
}

/// Starts the exporter task on the current `LocalSet` (the control
/// thread's); from now on spans record. Once per process.
pub fn start(endpoint: Endpoint) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    if QUEUE.set(tx).is_err() {
        return;
    }
    info!(endpoint = %endpoint.authority, "exporting OpenTelemetry spans over OTLP/gRPC");
    tokio::task::spawn_local(run(endpoint, rx));
}

/// Exports what is queued, waiting at most `bound` (shutdown).
pub async fn shutdown(bound: Duration) {
    let Some(q) = QUEUE.get() else { return };
    let (done_tx, done_rx) = oneshot::channel();
    let flushed = timeout(bound, async {
        if q.send(Message::Flush(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    })
    .await;
    if flushed.is_err() {
        warn!("span export not flushed within {bound:?} at shutdown");
    }
}

/// The resource every span belongs to. `service.name` is conmon-rs's
/// (`conmonrs`): CRI-O users find the monitor's traces under that name,
/// and ringmon stands in for it; `service.version` tells them apart.
fn resource() -> Vec<(&'static str, Value)> {
    let mut r = vec![
        ("service.name", Value::from("conmonrs")),
        (
            "service.version",
            Value::from(crate::version::BUILD.version),
        ),
        ("service.implementation", Value::from("ringmon")),
        ("process.pid", Value::from(std::process::id())),
    ];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        r.push(("host.name", Value::from(host.trim())));
    }
    r
}

struct Exporter {
    endpoint: Endpoint,
    resource: Vec<(&'static str, Value)>,
    conn: Option<h2::client::SendRequest<Bytes>>,
    /// Connecting failed in this round: its remaining requests are
    /// dropped rather than each waiting for a connect that will fail too.
    connect_failed: bool,
    /// Drops not yet reported, and when the last warning was.
    unreported: u64,
    last_warning: Option<Instant>,
}

async fn run(endpoint: Endpoint, mut rx: mpsc::Receiver<Message>) {
    let mut exporter = Exporter {
        endpoint,
        resource: resource(),
        conn: None,
        connect_failed: false,
        unreported: 0,
        last_warning: None,
    };
    let mut batch: Vec<SpanData> = Vec::new();
    // Sleeps in `recv` until a span comes; then collects for BATCH_DELAY or
    // up to MAX_BATCH spans.
    while let Some(first) = rx.recv().await {
        let mut flush = None;
        match first {
            Message::Span(s) => batch.push(*s),
            Message::Flush(done) => flush = Some(done),
        }
        let deadline = Instant::now() + BATCH_DELAY;
        while flush.is_none() && batch.len() < MAX_BATCH {
            match timeout_at(deadline, rx.recv()).await {
                Ok(Some(Message::Span(s))) => batch.push(*s),
                Ok(Some(Message::Flush(done))) => flush = Some(done),
                Ok(None) | Err(_) => break,
            }
        }
        // On a flush, also what came in the meantime.
        if flush.is_some() {
            while let Ok(Message::Span(s)) = rx.try_recv() {
                batch.push(*s);
            }
        }
        exporter.export_round(&batch).await;
        let queue_full = QUEUE_FULL_UNREPORTED.swap(0, Ordering::Relaxed);
        if queue_full > 0 {
            exporter.report(queue_full, &ExportError::QueueFull);
        }
        batch.clear();
        batch.shrink_to(MAX_BATCH);
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

impl Exporter {
    /// Exports one round's spans in requests of at most [`MAX_BATCH`] spans
    /// and [`MAX_EXPORT_BYTES`].
    async fn export_round(&mut self, spans: &[SpanData]) {
        self.connect_failed = false;
        let budget = MAX_EXPORT_BYTES - ENVELOPE_BYTES;
        let mut request: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        for s in spans {
            let encoded = proto::span_message(s);
            // A span's own field header: tag and a length of up to 3 bytes.
            let len = encoded.len() + 4;
            if len > budget {
                let e = ExportError::SpanTooLarge {
                    endpoint: self.endpoint.authority.clone(),
                    bytes: encoded.len(),
                };
                self.dropped(1, &e);
                continue;
            }
            if request.len() == MAX_BATCH || size + len > budget {
                self.export(&request).await;
                request.clear();
                size = 0;
            }
            size += len;
            request.push(encoded);
        }
        if !request.is_empty() {
            self.export(&request).await;
        }
    }

    /// One export request of spans encoded by [`proto::span_message`].
    async fn export(&mut self, spans: &[Vec<u8>]) {
        if self.connect_failed {
            DROPPED.fetch_add(spans.len() as u64, Ordering::Relaxed);
            self.unreported += spans.len() as u64;
            return;
        }
        let message = proto::export_request_encoded(
            &self.resource,
            ("ringmon", crate::version::BUILD.version),
            spans,
        );
        let Some(frame) = proto::grpc_frame(&message) else {
            let e = ExportError::FrameTooLong {
                endpoint: self.endpoint.authority.clone(),
                bytes: message.len(),
            };
            self.dropped(spans.len() as u64, &e);
            return;
        };
        let body = Bytes::from(frame);
        let result = match timeout(EXPORT_TIMEOUT, self.attempt(body)).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout {
                what: "export",
                endpoint: self.endpoint.authority.clone(),
                after: EXPORT_TIMEOUT,
            }),
        };
        match result {
            Ok(()) => debug!(spans = spans.len(), "exported spans"),
            Err(e) => {
                // A new connection next time (the receiver may be back).
                self.conn = None;
                self.dropped(spans.len() as u64, &e);
            }
        }
    }

    /// Sends one export request. A cached connection the receiver has
    /// closed since (GOAWAY, restart) fails before the request goes out:
    /// then it is replaced once and the same bytes sent on the new one.
    async fn attempt(&mut self, body: Bytes) -> Result<(), ExportError> {
        let reused = self.conn.is_some();
        let conn = self.connection().await?;
        let opened = match self.open_stream(conn).await {
            Ok(opened) => opened,
            Err(e) if reused => {
                debug!("cached OTLP connection unusable, reconnecting: {e}");
                self.conn = None;
                let conn = self.connection().await?;
                self.open_stream(conn).await?
            }
            Err(e) => return Err(e),
        };
        self.send(opened, body).await
    }

    /// Counts `n` spans dropped because of `e`; warns at most once per
    /// [`WARN_INTERVAL`].
    fn dropped(&mut self, n: u64, e: &ExportError) {
        DROPPED.fetch_add(n, Ordering::Relaxed);
        self.report(n, e);
    }

    /// Reports `n` dropped spans (already counted in [`DROPPED`]), at most
    /// one warning per [`WARN_INTERVAL`].
    fn report(&mut self, n: u64, e: &ExportError) {
        self.unreported += n;
        let now = Instant::now();
        if self
            .last_warning
            .map_or(true, |t| now.duration_since(t) >= WARN_INTERVAL)
        {
            warn!(
                dropped = self.unreported,
                total_dropped = dropped_spans(),
                "spans dropped: {e}"
            );
            self.last_warning = Some(now);
            self.unreported = 0;
        } else {
            debug!("spans dropped: {e}");
        }
    }

    /// The open connection, or a new one.
    async fn connection(&mut self) -> Result<h2::client::SendRequest<Bytes>, ExportError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let endpoint = self.endpoint.authority.clone();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(endpoint.as_str())
                .await
                .map_err(|source| ExportError::Connect {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let (send, connection) =
                h2::client::handshake(tcp)
                    .await
                    .map_err(|source| ExportError::H2 {
                        endpoint: endpoint.clone(),
                        source,
                    })?;
            tokio::task::spawn_local(async move {
                if let Err(e) = connection.await {
                    debug!("OTLP connection ended: {e}");
                }
            });
            Ok(send)
        };
        let conn = timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| {
                Err(ExportError::Timeout {
                    what: "connect",
                    endpoint: endpoint.clone(),
                    after: CONNECT_TIMEOUT,
                })
            })
            .inspect_err(|_| self.connect_failed = true)?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// The stream of one export call on `conn`, its headers queued but no
    /// byte of the body: an error here leaves nothing half-sent.
    async fn open_stream(
        &self,
        conn: h2::client::SendRequest<Bytes>,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), ExportError> {
        let endpoint = &self.endpoint.authority;
        let h2err = |source| ExportError::H2 {
            endpoint: endpoint.clone(),
            source,
        };
        let mut conn = conn.ready().await.map_err(h2err)?;
        let uri = format!("http://{endpoint}{EXPORT_PATH}");
        let request = http::Request::post(uri.as_str())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", concat!("ringmon/", env!("CARGO_PKG_VERSION")))
            .body(())
            .map_err(|source| ExportError::Request {
                uri: uri.clone(),
                source,
            })?;
        conn.send_request(request, false).map_err(h2err)
    }

    /// One export call on an opened stream: send the frame, read the
    /// answer and the trailers.
    async fn send(
        &self,
        (answer, mut stream): (h2::client::ResponseFuture, h2::SendStream<Bytes>),
        body: Bytes,
    ) -> Result<(), ExportError> {
        let endpoint = &self.endpoint.authority;
        let h2err = |source| ExportError::H2 {
            endpoint: endpoint.clone(),
            source,
        };
        stream.send_data(body, true).map_err(h2err)?;
        let answer = answer.await.map_err(h2err)?;
        if answer.status() != http::StatusCode::OK {
            return Err(ExportError::Status {
                endpoint: endpoint.clone(),
                status: answer.status().as_u16(),
            });
        }
        // A "trailers-only" answer carries the status in the headers.
        if let Some(code) = answer.headers().get("grpc-status") {
            return grpc_status(endpoint, code, answer.headers().get("grpc-message"));
        }
        let mut body = answer.into_body();
        let mut read = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2err)?;
            read += chunk.len();
            if read > MAX_ANSWER_BYTES {
                return Err(ExportError::AnswerTooLong {
                    endpoint: endpoint.clone(),
                });
            }
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(h2err)?.unwrap_or_default();
        match trailers.get("grpc-status") {
            Some(code) => grpc_status(endpoint, code, trailers.get("grpc-message")),
            None => Err(ExportError::Grpc {
                endpoint: endpoint.clone(),
                code: "missing".into(),
                message: String::new(),
            }),
        }
    }
}

fn grpc_status(
    endpoint: &str,
    code: &http::HeaderValue,
    message: Option<&http::HeaderValue>,
) -> Result<(), ExportError> {
    if code.as_bytes() == b"0" {
        return Ok(());
    }
    Err(ExportError::Grpc {
        endpoint: endpoint.to_string(),
        code: String::from_utf8_lossy(code.as_bytes()).into_owned(),
        message: message
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .unwrap_or_default(),
    })
}
