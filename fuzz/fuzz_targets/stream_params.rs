//! The streaming server's small parsers (`ringmon::stream::proto`): the
//! port-forward `port` query, resize messages, the websocket channel
//! framing of exec/attach sessions (v4 and v5, including v5 close-stream
//! messages) and the Status JSON written back.
//!
//! Input: a framing byte, then bytes used as a whole by every parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::stream::proto::{self, Framing, Input, Skipped};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let framing = [
        Framing::V5,
        Framing::V4,
        Framing::PortForward,
        Framing::SpdyTunnel,
    ][usize::from(selector % 4)];
    ports(&String::from_utf8_lossy(bytes));
    resize(bytes);
    message(framing, bytes);
    status(bytes);
});

fn ports(query: &str) {
    match proto::parse_ports(query) {
        Ok(ports) => {
            assert!(!ports.is_empty() && ports.len() <= proto::MAX_PORTS);
            assert!(ports.iter().all(|&p| p > 0));
        }
        Err(reject) => assert_eq!(reject.status, 400),
    }
}

fn resize(payload: &[u8]) {
    if let Some((width, height)) = proto::parse_resize(payload) {
        let v: serde_json::Value = serde_json::from_slice(payload).expect("parsed as JSON");
        assert_eq!(v["Width"].as_u64(), Some(u64::from(width)));
        assert_eq!(v["Height"].as_u64(), Some(u64::from(height)));
        // What a client sends for these sizes reads back the same.
        let again = format!(r#"{{"Width":{width},"Height":{height}}}"#);
        assert_eq!(proto::parse_resize(again.as_bytes()), Some((width, height)));
    }
}

fn message(framing: Framing, message: &[u8]) {
    let Some((channel, payload)) = proto::split_channel(message) else {
        assert!(message.is_empty());
        return;
    };
    assert_eq!(proto::frame(channel, payload), message);
    match proto::client_input(framing, channel, payload.to_vec()) {
        Ok(Input::Stdin(data)) => {
            assert_eq!(channel, proto::CH_STDIN);
            assert_eq!(data, payload);
        }
        Ok(Input::Resize(w, h)) => {
            assert_eq!(channel, proto::CH_RESIZE);
            assert_eq!(proto::parse_resize(payload), Some((w, h)));
        }
        Ok(Input::CloseStream(closed)) => {
            assert_eq!(framing, Framing::V5);
            assert_eq!(channel, proto::CH_CLOSE);
            assert_eq!(Some(&closed), payload.first());
        }
        Err(Skipped::BadResize) => {
            assert_eq!(channel, proto::CH_RESIZE);
            assert_eq!(proto::parse_resize(payload), None);
        }
        Err(Skipped::EmptyClose) => {
            assert_eq!((framing, channel), (Framing::V5, proto::CH_CLOSE));
            assert!(payload.is_empty());
        }
        Err(Skipped::UnexpectedChannel(ch)) => {
            assert_eq!(ch, channel);
            assert!(ch != proto::CH_STDIN && ch != proto::CH_RESIZE);
            assert!(ch != proto::CH_CLOSE || framing != Framing::V5);
        }
    }
}

fn status(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let failure: serde_json::Value =
        serde_json::from_str(&proto::failure_status_json(&text)).expect("failure status is JSON");
    assert_eq!(failure["message"].as_str(), Some(&*text));
    assert_eq!(failure["status"].as_str(), Some("Failure"));

    let mut code = [0u8; 4];
    for (c, b) in code.iter_mut().zip(bytes) {
        *c = *b;
    }
    let code = i32::from_le_bytes(code);
    match proto::exit_status_json(code) {
        None => assert_eq!(code, 0),
        Some(json) => {
            let v: serde_json::Value = serde_json::from_str(&json).expect("exit status is JSON");
            let cause = &v["details"]["causes"][0];
            assert_eq!(cause["reason"].as_str(), Some("ExitCode"));
            assert_eq!(cause["message"].as_str(), Some(&*code.to_string()));
        }
    }
}
