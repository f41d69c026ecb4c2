//! What a conmon-mode monitor parses from outside: the `ctl` fifo's bytes
//! (`ringmon::conmon::ctl`, split across reads at arbitrary points), the
//! command line (`ringmon::conmon::cli`, arguments separated by NUL bytes)
//! and the message text it puts on the sync pipe (`ringmon::conmon::sync`:
//! any runtime error text must give one JSON line that parses back).
//!
//! Input: a selector byte, then the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::conmon::{cli, ctl, sync};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => ctl_stream(selector, bytes),
        1 => command_line(bytes),
        _ => sync_message(bytes),
    }
});

fn ctl_stream(selector: u8, bytes: &[u8]) {
    let mut parser = ctl::CtlParser::new();
    let step = usize::from(selector / 3).max(1);
    let mut lines = 0;
    for chunk in bytes.chunks(step) {
        for message in parser.push(chunk) {
            lines += 1;
            if let Ok(ctl::CtlMessage::Resize { rows, cols }) = message {
                assert!(rows > 0 && cols > 0);
            }
        }
    }
    assert!(lines <= bytes.iter().filter(|b| **b == b'\n').count());
}

fn command_line(bytes: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<std::ffi::OsString> = bytes
        .split(|b| *b == 0)
        .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
        .collect();
    let _ = cli::parse(&args);
}

fn sync_message(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let line = sync::format("data", -1, Some(&text));
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    let value: serde_json::Value = serde_json::from_str(line.trim_end()).expect("valid JSON");
    assert_eq!(value["data"], -1);
    assert!(text.starts_with(value["message"].as_str().expect("message")));
}
