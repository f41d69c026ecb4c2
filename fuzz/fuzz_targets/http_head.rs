//! The streaming server's request head (`ringmon::stream::proto`): parse,
//! then the upgrade-or-reject decisions and the responses they produce.
//!
//! Input: a read-size byte, then the bytes the client sends. The head is
//! parsed when `HeadScanner` asks for it, as `read_head` does, until it is
//! complete or refused; the scanner never holds back a complete head.
//! Checked: a complete head parses the same from any longer buffer; an
//! upgrade carries a v4 UUID token, a 24-byte key and at most
//! `MAX_PORTS` non-zero ports; every response (101 or error) is a
//! well-formed HTTP/1.1 response whose Content-Length matches its body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::stream::proto::{self, Framing, Kind, Reject, Upgrade};

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, sent)) = data.split_first() else {
        return;
    };
    let step = usize::from(read_size).max(1) * 16;
    let mut seen = 0;
    let mut scanner = proto::HeadScanner::default();
    loop {
        seen = (seen + step).min(sent.len());
        let worth_parsing = scanner.worth_parsing(&sent[..seen]);
        let parsed = proto::parse_head(&sent[..seen]);
        if !worth_parsing {
            // The scanner may hold back only a head that is not complete.
            assert!(
                !matches!(parsed, Ok(Some(_))),
                "the scanner held back a complete head"
            );
            if seen < sent.len() {
                continue;
            }
            return;
        }
        match parsed {
            Ok(None) if seen < sent.len() => continue,
            Ok(None) => return,
            Ok(Some((upgrade, len))) => {
                assert!(len <= seen);
                assert_eq!(
                    proto::parse_head(sent),
                    Ok(Some((upgrade.clone(), len))),
                    "a longer buffer changed a complete head"
                );
                check_upgrade(&upgrade);
                return;
            }
            Err(reject) => {
                check_reject(&reject);
                return;
            }
        }
    }
});

fn check_upgrade(upgrade: &Upgrade) {
    assert!(proto::is_uuid_v4(&upgrade.token));
    assert_eq!(upgrade.key.len(), 24);
    assert!(upgrade.ports.len() <= proto::MAX_PORTS);
    assert!(upgrade.ports.iter().all(|&p| p > 0));
    if upgrade.kind != Kind::PortForward {
        assert!(upgrade.ports.is_empty());
    }
    match proto::choose_protocol(upgrade.kind, &upgrade.protocols) {
        Ok((protocol, framing)) => {
            match protocol {
                None => assert!(upgrade.protocols.is_empty()),
                Some(p) => assert!(upgrade.protocols.iter().any(|o| o == p)),
            }
            let remote = matches!(framing, Framing::V4 | Framing::V5);
            assert_eq!(remote, upgrade.kind != Kind::PortForward);
            let response = proto::switching_protocols(&upgrade.key, protocol);
            let (status, headers, body) = parse_response(&response);
            assert_eq!(status, 101);
            assert!(body.is_empty());
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(header("Sec-WebSocket-Protocol").as_deref(), protocol);
            assert_eq!(header("Sec-WebSocket-Accept").map(|a| a.len()), Some(28));
        }
        Err(reject) => {
            assert!(!upgrade.protocols.is_empty());
            check_reject(&reject);
        }
    }
}

fn check_reject(reject: &Reject) {
    assert!((400..600).contains(&reject.status));
    let response = reject.response();
    let (status, _, body) = parse_response(&response);
    assert_eq!(status, reject.status);
    assert_eq!(body, format!("{}\n", reject.message).as_bytes());
}

/// Parses a whole response: status, headers, body (by Content-Length).
fn parse_response(bytes: &[u8]) -> (u16, Vec<(String, String)>, &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "malformed response {other:?}: {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value).expect("header values are text");
            (h.name.to_string(), value.to_string())
        })
        .collect();
    let body = &bytes[len..];
    if let Some((_, n)) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        assert_eq!(n.parse::<usize>().ok(), Some(body.len()));
    }
    (response.code.expect("status code"), headers, body)
}
