//! Pure pieces of the streaming server: request-head parsing and
//! validation, sub-protocol choice, the Kubernetes channel framing, the exit
//! status JSON, resize messages, port-forward ports. No I/O here.

use std::time::{Duration, Instant};

/// Largest request head accepted (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// Remotecommand sub-protocols, in server preference order.
pub const V5_CHANNEL: &str = "v5.channel.k8s.io";
pub const V4_CHANNEL: &str = "v4.channel.k8s.io";
/// The SPDY tunnelling protocol of client-go's port-forward dialer.
pub const SPDY_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
/// Port-forward over plain websocket channels (kubelet's protocol).
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// Channel numbers of the remotecommand protocol.
pub const CH_STDIN: u8 = 0;
pub const CH_STDOUT: u8 = 1;
pub const CH_STDERR: u8 = 2;
pub const CH_ERROR: u8 = 3;
pub const CH_RESIZE: u8 = 4;
/// v5: "close stream N" (payload: the channel number).
pub const CH_CLOSE: u8 = 255;

/// What a URL asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
}

impl Kind {
    pub fn path_prefix(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Attach => "attach",
            Kind::PortForward => "port-forward",
        }
    }
}

/// A request answered with an HTTP error instead of an upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub message: String,
    /// Extra response headers (`Allow`, `Upgrade`, ...).
    pub headers: Vec<(&'static str, String)>,
}

impl Reject {
    pub fn new(status: u16, message: impl Into<String>) -> Reject {
        Reject {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reject {
        self.headers.push((name, value.into()));
        self
    }

    /// The whole HTTP response (connection closed afterwards).
    pub fn response(&self) -> Vec<u8> {
        let body = format!("{}\n", self.message);
        let mut r = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            body.len()
        );
        for (name, value) in &self.headers {
            r.push_str(&format!("{name}: {value}\r\n"));
        }
        r.push_str("\r\n");
        r.push_str(&body);
        r.into_bytes()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A valid websocket upgrade request for one of the three URL kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub kind: Kind,
    pub token: String,
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// Offered sub-protocols in client order.
    pub protocols: Vec<String>,
    /// `port` query values (port-forward only).
    pub ports: Vec<u16>,
}

/// Decides, as a request head arrives read by read, when a parse is worth
/// it: once the blank line that ends a head is in (looked for only in the
/// bytes not scanned before, and only after any empty lines a client may
/// send ahead of the request line), or once the head reached [`MAX_HEAD`].
/// Parsing after every read instead would let a client that sends one byte
/// at a time make each byte cost a parse of all before it: 16 K parses of
/// up to 16 KiB per connection, on the control thread.
#[derive(Debug, Default)]
pub struct HeadScanner {
    /// Where the request line starts, once a byte other than CR/LF came.
    content_start: Option<usize>,
    /// How much of the buffer was scanned.
    scanned: usize,
}

impl HeadScanner {
    /// `buf` is everything read so far (it only grows between calls).
    pub fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        let from = self.scanned;
        self.scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return true;
        }
        let start = match self.content_start {
            Some(start) => start,
            None => match buf[from..].iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(i) => {
                    self.content_start = Some(from + i);
                    from + i
                }
                None => return false,
            },
        };
        // A blank line ends in "\n\n" or "\n\r\n": look back far enough to
        // see one that straddles two reads.
        let window = &buf[from.saturating_sub(2).max(start)..];
        memchr::memmem::find(window, b"\n\n").is_some()
            || memchr::memmem::find(window, b"\n\r\n").is_some()
    }
}

/// Parses a complete request head (`buf` ends at or after the blank
/// line). `Ok(None)`: incomplete, read more. On success also returns the
/// head's length (bytes after it belong to the websocket).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Upgrade, usize)>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Reject::new(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::new(431, "too many request headers"))
        }
        Err(e) => return Err(Reject::new(400, format!("malformed request: {e}"))),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let header = |name: &str| -> Vec<&str> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect()
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (kind, token) = route(path).ok_or_else(|| Reject::new(404, "not found"))?;
    if method != "GET" {
        let why = if method == "POST" {
            "POST (SPDY) is not supported: use a websocket upgrade (GET)"
        } else {
            "method not allowed"
        };
        return Err(Reject::new(405, why).with_header("Allow", "GET"));
    }
    if !is_uuid_v4(token) {
        return Err(Reject::new(400, format!("invalid session token '{token}'")));
    }
    let upgrade_ws = header("upgrade").iter().any(|v| has_token(v, "websocket"));
    if !upgrade_ws {
        return Err(Reject::new(426, "websocket upgrade required")
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade"));
    }
    if !header("connection").iter().any(|v| has_token(v, "upgrade")) {
        return Err(Reject::new(400, "missing 'Connection: Upgrade'"));
    }
    if !header("sec-websocket-version")
        .iter()
        .any(|v| v.trim() == "13")
    {
        return Err(Reject::new(426, "unsupported websocket version")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = header("sec-websocket-key")
        .first()
        .map(|k| k.trim().to_string())
        .filter(|k| k.len() == 24 && k.ends_with("=="))
        .ok_or_else(|| Reject::new(400, "missing or invalid Sec-WebSocket-Key"))?;
    let protocols: Vec<String> = header("sec-websocket-protocol")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    // The SPDY tunnel names its ports per stream; the channel protocol
    // needs them in the URL.
    let spdy = protocols.iter().any(|p: &String| p == SPDY_PORT_FORWARD);
    let ports = if kind == Kind::PortForward && !spdy {
        parse_ports(query)?
    } else {
        Vec::new()
    };
    Ok(Some((
        Upgrade {
            kind,
            token: token.to_string(),
            key,
            protocols,
            ports,
        },
        len,
    )))
}

/// `/exec/<token>` etc. → kind and token.
fn route(path: &str) -> Option<(Kind, &str)> {
    let rest = path.strip_prefix('/')?;
    let (prefix, token) = rest.split_once('/')?;
    let kind = [Kind::Exec, Kind::Attach, Kind::PortForward]
        .into_iter()
        .find(|k| k.path_prefix() == prefix)?;
    if token.contains('/') {
        return None;
    }
    Some((kind, token))
}

/// Whether a comma-separated header value contains `token` (any case).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A lowercase hyphenated RFC 4122 version-4 UUID.
pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 36 {
        return false;
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        };
        if !ok {
            return false;
        }
    }
    b[14] == b'4' && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// A session token as logs show it: its first group only, enough to tell
/// sessions apart and useless to connect with.
pub fn masked_token(token: &str) -> String {
    let head = token.get(..8).unwrap_or("");
    format!("{head}-****")
}

/// Whether two tokens are equal, in a time that depends on their lengths
/// only (not on where they first differ), so that the response time of a
/// guess says nothing about a valid token.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Ports per port-forward session (two channels each, one byte for both).
pub const MAX_PORTS: usize = 128;

/// The `port` query parameters (repeated or comma-separated), each 1..65535.
pub fn parse_ports(query: &str) -> Result<Vec<u16>, Reject> {
    let mut ports = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "port" {
            continue;
        }
        for v in value.split(',').map(str::trim) {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(Reject::new(400, format!("invalid port '{v}'"))),
            }
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(Reject::new(
            400,
            format!("at most {MAX_PORTS} ports per session"),
        ));
    }
    if ports.is_empty() {
        return Err(Reject::new(
            400,
            "no port to forward: add ?port=<n> to the URL",
        ));
    }
    Ok(ports)
}

/// The framing a session speaks, from the negotiated sub-protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// remotecommand v5: v4 plus the close-stream channel.
    V5,
    /// remotecommand v4: Status JSON on channel 3, resize on 4.
    V4,
    /// Port-forward: data and error channel per port.
    PortForward,
    /// Port-forward as SPDY/3.1 tunnelled through the websocket.
    SpdyTunnel,
}

/// Picks the sub-protocol for `kind` among those the client offered (server
/// preference order). `Ok((None, framing))`: the client offered none, the
/// upgrade goes on without a `Sec-WebSocket-Protocol` header. An offer that
/// contains nothing this server speaks is rejected.
pub fn choose_protocol(
    kind: Kind,
    offered: &[String],
) -> Result<(Option<&'static str>, Framing), Reject> {
    let supported: &[(&'static str, Framing)] = match kind {
        Kind::Exec | Kind::Attach => &[(V5_CHANNEL, Framing::V5), (V4_CHANNEL, Framing::V4)],
        Kind::PortForward => &[
            (SPDY_PORT_FORWARD, Framing::SpdyTunnel),
            (V4_CHANNEL, Framing::PortForward),
            (PORT_FORWARD, Framing::PortForward),
        ],
    };
    if offered.is_empty() {
        let default = match kind {
            Kind::PortForward => Framing::PortForward,
            _ => Framing::V5,
        };
        return Ok((None, default));
    }
    for (name, framing) in supported {
        if offered.iter().any(|o| o == name) {
            return Ok((Some(name), *framing));
        }
    }
    let names: Vec<&str> = supported.iter().map(|(n, _)| *n).collect();
    Err(Reject::new(
        400,
        format!("none of the offered sub-protocols {offered:?} is supported; supported: {names:?}"),
    ))
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(key: &str, protocol: Option<&str>) -> Vec<u8> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One channel message: the channel byte, then the payload.
pub fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 1);
    m.push(channel);
    m.extend_from_slice(payload);
    m
}

/// Splits a binary websocket message into its channel byte and payload;
/// `None` for an empty message (it names no channel and is skipped).
pub fn split_channel(message: &[u8]) -> Option<(u8, &[u8])> {
    message
        .split_first()
        .map(|(&channel, payload)| (channel, payload))
}

/// What the client sent on the remotecommand channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    /// v5 close-stream for this channel.
    CloseStream(u8),
    Resize(u16, u16),
}

/// Why a remotecommand message was skipped (logged, the session goes on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// A resize message that is not `{"Width":w,"Height":h}` with u16 values.
    BadResize,
    /// A v5 close message without the channel to close.
    EmptyClose,
    /// A channel the client does not send on (or close before v5).
    UnexpectedChannel(u8),
}

/// Classifies one client message of an exec or attach session: stdin
/// bytes, a resize, or (v5 only) the close of one of the client's channels.
pub fn client_input(framing: Framing, channel: u8, payload: Vec<u8>) -> Result<Input, Skipped> {
    match channel {
        CH_STDIN => Ok(Input::Stdin(payload)),
        CH_RESIZE => parse_resize(&payload)
            .map(|(w, h)| Input::Resize(w, h))
            .ok_or(Skipped::BadResize),
        CH_CLOSE if framing == Framing::V5 => payload
            .first()
            .map(|&ch| Input::CloseStream(ch))
            .ok_or(Skipped::EmptyClose),
        other => Err(Skipped::UnexpectedChannel(other)),
    }
}

/// The channel-3 Status for an exit code; `None` for 0 (success is said by
/// sending nothing).
pub fn exit_status_json(code: i32) -> Option<String> {
    if code == 0 {
        return None;
    }
    Some(format!(
        r#"{{"status":"Failure","reason":"NonZeroExitCode","details":{{"causes":[{{"reason":"ExitCode","message":"{code}"}}]}},"message":"command terminated with non-zero exit code"}}"#
    ))
}

/// A failure Status with a message (the command could not be started).
pub fn failure_status_json(message: &str) -> String {
    let msg = serde_json::Value::String(message.to_string()).to_string();
    format!(r#"{{"status":"Failure","reason":"InternalError","message":{msg}}}"#)
}

/// A resize message `{"Width":w,"Height":h}`.
pub fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let dim = |k: &str| v.get(k)?.as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

/// Pending sessions: at most `capacity`, oldest insert evicted, each valid
/// for `ttl`, single use.
pub struct SessionStore<S> {
    capacity: usize,
    ttl: Duration,
    entries: std::collections::VecDeque<(String, Instant, S)>,
}

/// Store limits (spec §6.4). A URL is used right after the serve* call
/// that made it (the kubelet's own streaming cache keeps tokens about a
/// minute), so a token is valid for 30 s only.
pub const MAX_SESSIONS: usize = 25;
pub const SESSION_TTL: Duration = Duration::from_secs(30);

impl<S> SessionStore<S> {
    pub fn new(capacity: usize, ttl: Duration) -> SessionStore<S> {
        SessionStore {
            capacity,
            ttl,
            entries: Default::default(),
        }
    }

    pub fn insert(&mut self, token: String, now: Instant, session: S) {
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((token, now, session));
    }

    /// Removes the session (valid or not); returns it if still valid.
    /// Every stored token is compared, in constant time each.
    pub fn take(&mut self, token: &str, now: Instant) -> Option<S> {
        let i = self
            .entries
            .iter()
            .enumerate()
            .fold(None, |found, (i, (t, _, _))| {
                let equal = tokens_equal(t, token);
                found.or(equal.then_some(i))
            })?;
        let (_, created, s) = self.entries.remove(i)?;
        (now.saturating_duration_since(created) < self.ttl).then_some(s)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `head` in reads of `step` bytes; the read after which the
    /// scanner first asks for a parse, and how many parses it asked for.
    fn scan(head: &[u8], step: usize) -> (Option<usize>, usize) {
        let mut scanner = HeadScanner::default();
        let (mut first, mut parses) = (None, 0);
        for end in (step..head.len() + step).step_by(step) {
            if scanner.worth_parsing(&head[..end.min(head.len())]) {
                first.get_or_insert(end.min(head.len()));
                parses += 1;
            }
        }
        (first, parses)
    }

    #[test]
    fn head_scanner_asks_for_a_parse_once_the_head_ends() {
        let head = b"\r\nGET /exec/x HTTP/1.1\r\nHost: a\r\n\r\nrest";
        let end = head.len() - "rest".len();
        for step in [1, 2, 3, 5, head.len()] {
            let (first, _) = scan(head, step);
            let first = first.expect("a complete head is parsed");
            assert!(first >= end && first < end + step, "step {step}: {first}");
        }
        let bare_lf = b"GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(scan(bare_lf, 1).0, Some(bare_lf.len()));
        // Leading empty lines and a head not ended yet ask for nothing.
        assert_eq!(
            scan(b"\r\n\r\n\n\nGET / HTTP/1.1\r\nHost: a\r\n", 1),
            (None, 0)
        );
    }

    #[test]
    fn head_scanner_parses_a_byte_at_a_time_head_a_bounded_number_of_times() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.resize(MAX_HEAD + 100, b'a');
        assert_eq!(scan(&head, 1).1, 101, "only at and past MAX_HEAD");
    }

    const TOKEN: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn status(buf: &[u8]) -> u16 {
        parse_head(buf).unwrap_err().status
    }

    #[test]
    fn parses_an_exec_upgrade() {
        let buf = request(
            "GET",
            &format!("/exec/{TOKEN}"),
            "Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n",
        );
        let (up, len) = parse_head(&buf).unwrap().unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(up.kind, Kind::Exec);
        assert_eq!(up.token, TOKEN);
        assert_eq!(up.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.protocols, vec![V5_CHANNEL, V4_CHANNEL]);
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        let buf = request("GET", &format!("/attach/{TOKEN}"), "");
        assert_eq!(parse_head(&buf[..buf.len() - 2]).unwrap(), None);
    }

    #[test]
    fn rejects_bad_requests_with_the_right_status() {
        assert_eq!(status(&request("GET", "/nope/x", "")), 404);
        assert_eq!(
            status(&request("GET", &format!("/exec/{TOKEN}/x"), "")),
            404
        );
        assert_eq!(status(&request("POST", &format!("/exec/{TOKEN}"), "")), 405);
        assert_eq!(status(&request("PUT", &format!("/exec/{TOKEN}"), "")), 405);
        assert_eq!(status(&request("GET", "/exec/not-a-uuid", "")), 400);
        // Upper case and version-1 UUIDs are not tokens of ours.
        assert_eq!(
            status(&request(
                "GET",
                &format!("/exec/{}", TOKEN.to_uppercase()),
                ""
            )),
            400
        );
        let plain = format!("GET /exec/{TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(plain.as_bytes()), 426);
        let no_key = format!(
            "GET /exec/{TOKEN} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(status(no_key.as_bytes()), 400);
        assert_eq!(status(b"\x01\x02 nonsense\r\n\r\n"), 400);
        assert_eq!(
            status(&request("GET", &format!("/port-forward/{TOKEN}"), "")),
            400
        );
        assert_eq!(
            status(&request(
                "GET",
                &format!("/port-forward/{TOKEN}?port=0"),
                ""
            )),
            400
        );
        assert_eq!(
            status(&request(
                "GET",
                &format!("/port-forward/{TOKEN}?port=70000"),
                ""
            )),
            400
        );
    }

    #[test]
    fn reject_response_is_well_formed() {
        let r = Reject::new(404, "not found").response();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 10\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnot found\n"), "{text}");
    }

    #[test]
    fn port_query() {
        assert_eq!(parse_ports("port=80").unwrap(), vec![80]);
        assert_eq!(
            parse_ports("port=80&x=1&port=8080").unwrap(),
            vec![80, 8080]
        );
        assert_eq!(parse_ports("port=80,443").unwrap(), vec![80, 443]);
        assert_eq!(parse_ports("").unwrap_err().status, 400);
        assert_eq!(parse_ports("port=abc").unwrap_err().status, 400);
    }

    #[test]
    fn tokens_compare_and_mask() {
        assert!(tokens_equal(TOKEN, TOKEN));
        assert!(!tokens_equal(TOKEN, &TOKEN[..35]));
        assert!(!tokens_equal(TOKEN, "1f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!tokens_equal(TOKEN, "0f8fad5b-d9cb-469f-a165-70867728950f"));
        let masked = masked_token(TOKEN);
        assert_eq!(masked, "0f8fad5b-****");
        assert!(!masked.contains("70867728950e"));
        assert_eq!(masked_token("short"), "-****");
        let made = crate::core::uuid_v4([0xff; 16]);
        assert!(is_uuid_v4(&made), "{made}");
        assert_eq!(made, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn uuid_check() {
        assert!(is_uuid_v4(TOKEN));
        assert!(is_uuid_v4(&crate::core::monitor::random_uuid()));
        assert!(is_uuid_v4(&crate::core::uuid_v4([0; 16])));
        assert!(!is_uuid_v4("0f8fad5b-d9cb-169f-a165-70867728950e"));
        assert!(!is_uuid_v4("0f8fad5b-d9cb-469f-c165-70867728950e"));
        assert!(!is_uuid_v4("0f8fad5bd9cb469fa16570867728950e"));
        assert!(!is_uuid_v4(""));
    }

    #[test]
    fn protocol_choice_follows_server_order() {
        let offer = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            choose_protocol(Kind::Exec, &offer(&[V4_CHANNEL, V5_CHANNEL])).unwrap(),
            (Some(V5_CHANNEL), Framing::V5)
        );
        assert_eq!(
            choose_protocol(Kind::Attach, &offer(&[V4_CHANNEL])).unwrap(),
            (Some(V4_CHANNEL), Framing::V4)
        );
        assert_eq!(
            choose_protocol(Kind::Exec, &[]).unwrap(),
            (None, Framing::V5)
        );
        assert_eq!(
            choose_protocol(Kind::Exec, &offer(&["bogus"]))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            choose_protocol(Kind::PortForward, &offer(&[PORT_FORWARD])).unwrap(),
            (Some(PORT_FORWARD), Framing::PortForward)
        );
        assert_eq!(
            choose_protocol(Kind::PortForward, &offer(&[V4_CHANNEL, SPDY_PORT_FORWARD])).unwrap(),
            (Some(SPDY_PORT_FORWARD), Framing::SpdyTunnel)
        );
        assert_eq!(
            choose_protocol(Kind::Exec, &offer(&[SPDY_PORT_FORWARD]))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        let r = String::from_utf8(switching_protocols(
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some(V5_CHANNEL),
        ))
        .unwrap();
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn status_json_is_exact() {
        assert_eq!(exit_status_json(0), None);
        assert_eq!(
            exit_status_json(42).unwrap(),
            r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]},"message":"command terminated with non-zero exit code"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&failure_status_json("a \"quoted\" error")).unwrap();
        assert_eq!(v["message"], "a \"quoted\" error");
        assert_eq!(v["status"], "Failure");
    }

    #[test]
    fn resize_and_frames() {
        assert_eq!(parse_resize(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
        assert_eq!(parse_resize(br#"{"Width":80}"#), None);
        assert_eq!(parse_resize(br#"{"Width":70000,"Height":1}"#), None);
        assert_eq!(parse_resize(b"garbage"), None);
        assert_eq!(frame(CH_STDOUT, b"hi"), vec![1, b'h', b'i']);
    }

    #[test]
    fn client_messages_by_channel_and_framing() {
        assert_eq!(split_channel(&[]), None);
        assert_eq!(split_channel(&[4, b'{']), Some((4, &b"{"[..])));
        assert_eq!(
            client_input(Framing::V4, CH_STDIN, b"ls\n".to_vec()),
            Ok(Input::Stdin(b"ls\n".to_vec()))
        );
        assert_eq!(
            client_input(
                Framing::V5,
                CH_RESIZE,
                br#"{"Width":80,"Height":24}"#.to_vec()
            ),
            Ok(Input::Resize(80, 24))
        );
        assert_eq!(
            client_input(
                Framing::V5,
                CH_RESIZE,
                br#"{"Width":70000,"Height":24}"#.to_vec()
            ),
            Err(Skipped::BadResize)
        );
        assert_eq!(
            client_input(Framing::V5, CH_CLOSE, vec![CH_STDIN]),
            Ok(Input::CloseStream(CH_STDIN))
        );
        assert_eq!(
            client_input(Framing::V5, CH_CLOSE, Vec::new()),
            Err(Skipped::EmptyClose)
        );
        // Close-stream is v5 only.
        assert_eq!(
            client_input(Framing::V4, CH_CLOSE, vec![CH_STDIN]),
            Err(Skipped::UnexpectedChannel(CH_CLOSE))
        );
        assert_eq!(
            client_input(Framing::V5, CH_STDOUT, b"x".to_vec()),
            Err(Skipped::UnexpectedChannel(CH_STDOUT))
        );
    }

    #[test]
    fn session_store_bounds_expiry_and_single_use() {
        let now = Instant::now();
        let mut s = SessionStore::new(MAX_SESSIONS, SESSION_TTL);
        for i in 0..30 {
            s.insert(format!("t{i}"), now, i);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.take("t0", now), None, "oldest evicted");
        assert_eq!(s.take("t5", now), Some(5));
        assert_eq!(s.take("t5", now), None, "single use");
        assert_eq!(s.take("t6", now + SESSION_TTL), None, "expired");
        assert_eq!(s.take("t6", now), None, "expired ones are removed too");
        assert_eq!(s.take("t7", now + Duration::from_secs(10)), Some(7));
    }
}
