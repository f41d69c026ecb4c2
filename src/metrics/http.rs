//! The metrics endpoint's HTTP/1.1: a pure parser of a request head (outside
//! input: bounded, never panics, a cargo-fuzz target) and the responses.
//! One request per connection: every response says `Connection: close`,
//! which keeps a connection's life (and the server's bounds) simple and
//! costs a scraper one connect per scrape, every few seconds at most.

/// The longest request head taken; a longer one is answered 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Headers a request may carry (a scraper sends a handful).
pub const MAX_HEADERS: usize = 32;

/// The path served.
pub const METRICS_PATH: &str = "/metrics";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    /// As GET, without the body.
    Head,
}

/// What a request head asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the metrics (a body only for GET).
    Metrics(Method),
    /// An error status: 400, 404, 405, 431 or 505.
    Error(u16),
    /// An error status answering a HEAD request: the head alone (its
    /// Content-Length that of the body left out).
    HeadError(u16),
}

/// Parses the start of what a client sent. `Ok(None)`: the head is not
/// complete yet (and still within [`MAX_REQUEST_HEAD`]); read more.
/// Otherwise what to answer, and the head's length (only the head is ever
/// looked at: a request has no body worth reading here).
pub fn parse_request(buf: &[u8]) -> Option<(Answer, usize)> {
    let limited = &buf[..buf.len().min(MAX_REQUEST_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(limited) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return Some((Answer::Error(431), limited.len()));
        }
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some((Answer::Error(431), limited.len())),
        Err(_) => return Some((Answer::Error(400), limited.len())),
    };
    // httparse only takes HTTP/1.x; version 0 is HTTP/1.0, 1 is HTTP/1.1.
    let answer = match (request.method, request.path) {
        (_, None) | (None, _) => Answer::Error(400),
        (Some(method), Some(target)) => {
            let path = target.split_once('?').map_or(target, |(path, _)| path);
            let method = match method {
                "GET" => Some(Method::Get),
                "HEAD" => Some(Method::Head),
                _ => None,
            };
            match (method, path == METRICS_PATH) {
                (Some(Method::Head), false) => Answer::HeadError(404),
                (_, false) => Answer::Error(404),
                (None, true) => Answer::Error(405),
                (Some(method), true) => Answer::Metrics(method),
            }
        }
    };
    Some((answer, len))
}

/// The whole response to `answer`; `body` renders the metrics (called only
/// for a 200).
pub fn respond(answer: Answer, body: impl FnOnce() -> String) -> Vec<u8> {
    match answer {
        Answer::Metrics(method) => {
            let body = body();
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                super::render::CONTENT_TYPE,
                body.len()
            )
            .into_bytes();
            if method == Method::Get {
                response.extend_from_slice(body.as_bytes());
            }
            response
        }
        Answer::Error(status) | Answer::HeadError(status) => {
            let (reason, message) = match status {
                404 => ("Not Found", "only /metrics is served"),
                405 => ("Method Not Allowed", "only GET and HEAD are allowed"),
                431 => (
                    "Request Header Fields Too Large",
                    "the request head is too large",
                ),
                _ => ("Bad Request", "malformed request"),
            };
            let allow = if status == 405 {
                "Allow: GET, HEAD\r\n"
            } else {
                ""
            };
            let body = if matches!(answer, Answer::HeadError(_)) {
                String::new()
            } else {
                format!("{message}\n")
            };
            format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 {allow}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                message.len() + 1
            )
            .into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_head_of_metrics_are_answered_with_the_metrics() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            parse_request(get),
            Some((Answer::Metrics(Method::Get), get.len()))
        );
        let head = b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\nrest";
        assert_eq!(
            parse_request(head),
            Some((Answer::Metrics(Method::Head), head.len() - 4))
        );
        let response = respond(Answer::Metrics(Method::Head), || "a 1\n".into());
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text}");
        let response = respond(Answer::Metrics(Method::Get), || "a 1\n".into());
        assert!(String::from_utf8(response)
            .unwrap()
            .ends_with("\r\n\r\na 1\n"));
    }

    #[test]
    fn other_paths_methods_and_broken_heads_get_errors() {
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n").unwrap().0,
            Answer::Error(404)
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap().0,
            Answer::Error(405)
        );
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\n"), None);
        assert_eq!(
            parse_request(b"\x00\x01garbage\r\n\r\n").unwrap().0,
            Answer::Error(400)
        );
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_REQUEST_HEAD + 10, b'a');
        assert_eq!(parse_request(&long).unwrap().0, Answer::Error(431));
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many).unwrap().0, Answer::Error(431));
        let head = b"HEAD / HTTP/1.1\r\n\r\n";
        assert_eq!(parse_request(head).unwrap().0, Answer::HeadError(404));
        let response = String::from_utf8(respond(Answer::HeadError(404), String::new)).unwrap();
        assert!(response.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(
            response.ends_with("\r\n\r\n"),
            "HEAD has no body: {response}"
        );
        let response = String::from_utf8(respond(Answer::Error(405), String::new)).unwrap();
        assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(response.contains("Allow: GET, HEAD\r\n"));
    }
}
