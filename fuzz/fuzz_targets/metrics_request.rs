//! The metrics endpoint's request head (`ringmon::metrics::http`): parse,
//! then the response it leads to.
//!
//! Input: a read-size byte, then the bytes a client sends, offered to the
//! parser in growing prefixes as the server reads them. Checked: no panic;
//! an answer is given once the head is complete or the limit is reached,
//! never later; a head's length is within what was read; the answer to a
//! complete head does not change with more bytes after it; every response
//! is a well-formed HTTP/1.1 response whose Content-Length matches its body
//! (HEAD, also of an error: the length of the body it leaves out).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::metrics::http::{self, Answer, Method, MAX_REQUEST_HEAD};

const BODY: &str = "ringmon_containers 1\n";

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, sent)) = data.split_first() else {
        return;
    };
    let step = usize::from(read_size.max(1));
    let mut seen = 0;
    loop {
        seen = (seen + step).min(sent.len());
        match http::parse_request(&sent[..seen]) {
            None => {
                assert!(seen < MAX_REQUEST_HEAD, "no answer past the limit");
                if seen == sent.len() {
                    return;
                }
            }
            Some((answer, len)) => {
                assert!(len <= seen && len <= MAX_REQUEST_HEAD);
                if matches!(answer, Answer::Metrics(_)) {
                    assert_eq!(
                        http::parse_request(sent).map(|(a, _)| a),
                        Some(answer),
                        "more bytes changed the answer to a complete head"
                    );
                }
                check_response(answer, &http::respond(answer, || BODY.to_string()));
                return;
            }
        }
    }
});

fn check_response(answer: Answer, response: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(response) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("malformed response {other:?}"),
    };
    let length: usize = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .expect("a Content-Length");
    let body = &response[len..];
    match answer {
        Answer::Metrics(Method::Get) => {
            assert_eq!(parsed.code, Some(200));
            assert_eq!(body, BODY.as_bytes());
        }
        Answer::Metrics(Method::Head) => {
            assert_eq!(parsed.code, Some(200));
            assert!(body.is_empty());
            assert_eq!(length, BODY.len());
            return;
        }
        Answer::Error(status) => assert_eq!(parsed.code, Some(status)),
        Answer::HeadError(status) => {
            assert_eq!(parsed.code, Some(status));
            assert!(body.is_empty());
            return;
        }
    }
    assert_eq!(length, body.len());
}
