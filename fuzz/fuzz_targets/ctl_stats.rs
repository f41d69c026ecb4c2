//! `ringmon ctl stats`'s readers of a server's answer
//! (`ringmon::ctl::stats`): the HTTP response and the exposition text.
//!
//! Input: a response as a server might send it. Checked: no panic
//! (overflow included: the fuzz build has debug assertions); every sample
//! parsed has a name without spaces or braces; the report renders a row per
//! container id and a process line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::ctl::stats::{logged_bytes, parse_samples, response_body, stats_text};

fuzz_target!(|data: &[u8]| {
    let text = match response_body(data.to_vec()) {
        Ok(body) => body,
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    };
    let samples = parse_samples(&text);
    for sample in &samples {
        assert!(!sample.name.is_empty());
        assert!(!sample.name.contains(|c: char| c == '{' || c.is_whitespace()));
    }
    let _ = logged_bytes(&samples);
    let report = stats_text(&samples, data.first().is_some_and(|b| b % 2 == 0));
    assert!(report.starts_with("CONTAINER ID"));
    assert!(report.contains("\nProcess: "));
});
