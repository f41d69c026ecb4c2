//! OpenTelemetry tracing (`--enable-tracing`): a server span per RPC
//! method, parented by the W3C trace context the client put in the
//! request's metadata, child spans for runtime invocations and exit
//! handling, exported over OTLP/gRPC by [`export`].
//!
//! Without `--enable-tracing` nothing here runs: [`enabled`] is false, a
//! [`Span`] is an empty `Option` (no allocation, no clock read, no random
//! id) and no exporter task, queue or connection exists.
//!
//! The current span of a request is a tokio task-local set by [`scope`], so
//! code deep in `core` (the runtime invocations) opens children with
//! [`Span::child`] without the span being passed down. Spans are ended on
//! drop, so a cancelled request still reports its span.

pub mod context;
mod export;
pub mod proto;

use std::fmt::Display;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

pub use context::{
    parse_endpoint, parse_traceparent, traceparent_from_json, Endpoint, SpanContext,
};
pub use export::{dropped_spans, enabled, shutdown, start};

/// The OTLP span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside ringmon (exit handling).
    Internal,
    /// An RPC method served.
    Server,
    /// A process ringmon runs and waits for (the OCI runtime).
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i.into())
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i.into())
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// Most attributes one span keeps (the code sets a handful; the bound
/// keeps a loop from growing a span without limit).
const MAX_ATTRIBUTES: usize = 32;

/// Longest string attribute value or error text kept, in bytes: ids are
/// copied from requests before they are validated, and error texts may
/// quote client input.
pub const MAX_VALUE_BYTES: usize = 256;

/// `s` cut to at most [`MAX_VALUE_BYTES`], at a char boundary.
fn bounded(mut s: String) -> String {
    if s.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A finished (or finishing) span, as exported.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub name: &'static str,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub kind: SpanKind,
    /// OTLP `Span.flags`: the W3C trace flags in the low byte, bit 8 "the
    /// parent's remoteness is known", bit 9 "the parent is remote".
    pub flags: u32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// The error the operation ended with (status ERROR), if any.
    pub error: Option<String>,
}

const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
/// Trace flags of a trace ringmon starts itself: sampled (every span is
/// exported; the collector may sample).
const SAMPLED: u8 = 0x01;

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_id<const N: usize>() -> Option<[u8; N]> {
    let mut id = [0u8; N];
    crate::sys::random::fill(&mut id).ok()?;
    (id != [0; N]).then_some(id)
}

tokio::task_local! {
    /// The span the current request runs in (see [`scope`]).
    static CURRENT: SpanContext;
}

/// The span the current task runs in, when tracing is on and the task
/// runs inside [`scope`]. Kept by work that outlives the request (the exit
/// watcher) to parent its own spans.
pub fn current() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    CURRENT.try_with(|c| *c).ok()
}

/// A span being recorded, or nothing when tracing is off. Ended (and
/// queued for export) when dropped.
#[derive(Debug, Default)]
pub struct Span(Option<Box<SpanData>>);

impl Span {
    /// A span that records nothing.
    pub fn none() -> Self {
        Span(None)
    }

    /// A new span named `name` under `parent` (a new trace without one);
    /// nothing when tracing is off.
    pub fn start(name: &'static str, kind: SpanKind, parent: Option<SpanContext>) -> Self {
        let mut span = Span::unparented(name, kind);
        span.set_parent(parent, false);
        span
    }

    /// A span whose parent [`Span::set_parent`] sets next, before anyone
    /// sees it (the server span of a request, whose parent is read from the
    /// request): no trace id is drawn that the parent would replace.
    /// Nothing when tracing is off.
    pub fn unparented(name: &'static str, kind: SpanKind) -> Self {
        if !enabled() {
            return Span(None);
        }
        let Some(span_id) = random_id::<8>() else {
            return Span(None);
        };
        Span(Some(Box::new(SpanData {
            name,
            trace_id: [0; 16],
            span_id,
            parent_span_id: None,
            kind,
            flags: u32::from(SAMPLED),
            start_unix_nanos: unix_nanos(),
            end_unix_nanos: 0,
            attributes: Vec::new(),
            error: None,
        })))
    }

    /// A child of the current task's span (see [`scope`]); nothing outside
    /// a traced request.
    pub fn child(name: &'static str, kind: SpanKind) -> Self {
        match current() {
            Some(parent) => Span::start(name, kind, Some(parent)),
            None => Span(None),
        }
    }

    /// Parents a span nobody has seen yet: under `parent` (remote: from a
    /// client) or, without one, as the root of a new trace. A parent whose
    /// sampled flag is clear means the client's trace is not recorded: the
    /// span (and so its children and the container's exit span) records
    /// nothing either.
    pub fn set_parent(&mut self, parent: Option<SpanContext>, remote: bool) {
        let Some(d) = &mut self.0 else { return };
        match parent {
            Some(p) if p.flags & SAMPLED == 0 => self.0 = None,
            Some(p) => {
                d.trace_id = p.trace_id;
                d.parent_span_id = Some(p.span_id);
                d.flags = u32::from(p.flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 };
            }
            None => match random_id::<16>() {
                Some(id) => {
                    d.trace_id = id;
                    d.parent_span_id = None;
                    d.flags = u32::from(SAMPLED);
                }
                None => self.0 = None,
            },
        }
    }

    /// Makes an [`Span::unparented`] span whose parent was never set (the
    /// request could not be read) the root of a new trace.
    pub fn ensure_parented(&mut self) {
        if self.0.as_ref().is_some_and(|d| d.trace_id == [0; 16]) {
            self.set_parent(None, false);
        }
    }

    /// Whether this span records (tracing on): callers skip preparing
    /// attributes otherwise.
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// This span's context, for children.
    pub fn context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|d| SpanContext {
            trace_id: d.trace_id,
            span_id: d.span_id,
            flags: d.flags as u8,
        })
    }

    /// Sets an attribute (converted only when recording).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(d) = &mut self.0 {
            if d.attributes.len() < MAX_ATTRIBUTES {
                let value = match value.into() {
                    Value::Str(s) => Value::Str(bounded(s)),
                    v => v,
                };
                d.attributes.push((key, value));
            }
        }
    }

    /// Names the container: `container.id` (the OpenTelemetry convention)
    /// and `container_id` (conmon-rs's attribute, which existing queries
    /// use).
    pub fn set_container_id(&mut self, id: &str) {
        if self.is_recording() {
            self.set("container.id", id);
            self.set("container_id", id);
        }
    }

    /// Marks the span failed with `err` (status ERROR).
    pub fn fail(&mut self, err: &dyn Display) {
        if let Some(d) = &mut self.0 {
            d.error = Some(bounded(err.to_string()));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut d) = self.0.take() {
            d.end_unix_nanos = unix_nanos();
            export::submit(d);
        }
    }
}

/// Runs `fut` as the work of `span`: children opened inside (through
/// [`Span::child`]) hang under it, an `Err` marks it failed, and it ends
/// when `fut` does. Without a recording span, just `fut`.
pub async fn scope<T, E: Display>(
    mut span: Span,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(ctx) = span.context() else {
        return fut.await;
    };
    let result = CURRENT.scope(ctx, fut).await;
    if let Err(e) = &result {
        span.fail(e);
    }
    result
}

/// Runs `fut` in the span context `ctx` (from [`current`]): for work
/// handed to another task (`spawn_local` does not carry the task-local
/// over), so that its children still hang under the request. Without a
/// context, just `fut`.
pub async fn in_context<F: Future>(ctx: Option<SpanContext>, fut: F) -> F::Output {
    match ctx {
        Some(ctx) => CURRENT.scope(ctx, fut).await,
        None => fut.await,
    }
}

/// The name of the span of a runtime invocation, from its argv: the OCI
/// subcommand (the first known verb; global flags come before it).
pub fn runtime_span_name<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> &'static str {
    for a in args {
        match a.as_ref().to_str() {
            Some("create") => return "runtime create",
            Some("start") => return "runtime start",
            Some("exec") => return "runtime exec",
            Some("kill") => return "runtime kill",
            Some("delete") => return "runtime delete",
            Some("pause") => return "runtime pause",
            Some("resume") => return "runtime resume",
            Some("update") => return "runtime update",
            Some("state") => return "runtime state",
            _ => {}
        }
    }
    "runtime"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_spans_record_nothing() {
        // No exporter was started in unit tests.
        assert!(!enabled());
        let mut s = Span::start("x", SpanKind::Server, None);
        assert!(!s.is_recording());
        s.set("k", "v");
        assert_eq!(s.context(), None);
        assert!(Span::child("y", SpanKind::Client).context().is_none());
    }

    #[test]
    fn long_values_are_cut_at_a_char_boundary() {
        assert_eq!(bounded("abc".into()), "abc");
        assert_eq!(bounded("a".repeat(300)).len(), MAX_VALUE_BYTES);
        // "é" is two bytes: 255 ASCII bytes then "é" would end at 257.
        let s = format!("{}é", "a".repeat(MAX_VALUE_BYTES - 1));
        assert_eq!(bounded(s), "a".repeat(MAX_VALUE_BYTES - 1));
        let s = "é".repeat(200);
        let cut = bounded(s);
        assert_eq!(cut.len(), MAX_VALUE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn runtime_names() {
        assert_eq!(
            runtime_span_name(&["--root=/r", "--log", "/l", "exec", "-d", "create"]),
            "runtime exec"
        );
        assert_eq!(runtime_span_name(&["--debug"]), "runtime");
    }
}
