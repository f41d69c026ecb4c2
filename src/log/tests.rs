//! Tests of `LogWriter` against real files.

use crate::test_support::TempDir;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use super::*;

fn spec(format: LogFormat, path: PathBuf, max_size: u64) -> LogSpec {
    LogSpec::new(format, path, max_size)
}

/// 35 bytes, the longest timestamp form.
fn long_ts() -> TimestampCache {
    TimestampCache::fixed(1_787_317_753, 123_456_789, 7200)
}

#[test]
fn cri_writes_records_and_creates_mode_0600() {
    let dir = TempDir::new("log", "cri");
    let path = dir.path("ctr.log");
    fs::write(&path, b"old content that must be truncated").unwrap();
    let mut writer = LogWriter::open(&spec(LogFormat::Cri, path.clone(), 0)).unwrap();
    let ts = long_ts();
    writer
        .write_chunk(StreamKind::Stdout, b"a\nb", &ts)
        .unwrap();
    writer.write_chunk(StreamKind::Stderr, b"c\n", &ts).unwrap();
    writer.flush().unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        [
            &b"2026-08-21T15:09:13.123456789+02:00 stdout F a\n"[..],
            b"2026-08-21T15:09:13.123456789+02:00 stdout P b\n",
            b"2026-08-21T15:09:13.123456789+02:00 stderr F c\n",
        ]
        .concat()
    );
    // The existing file keeps its mode; a new one is created 0600.
    let fresh = dir.path("fresh.log");
    drop(LogWriter::open(&spec(LogFormat::Cri, fresh.clone(), 0)).unwrap());
    let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn cri_refuses_a_symlink() {
    let dir = TempDir::new("log", "symlink");
    let target = dir.path("target");
    fs::write(&target, b"keep").unwrap();
    let link = dir.path("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = LogWriter::open(&spec(LogFormat::Cri, link, 0))
        .err()
        .expect("O_NOFOLLOW must refuse the symlink");
    assert!(matches!(err, LogError::Open { .. }), "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"keep");
}

#[test]
fn open_error_names_the_path() {
    let err = LogWriter::open(&spec(
        LogFormat::Cri,
        PathBuf::from("/nonexistent-ringmon-dir/x.log"),
        0,
    ))
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("/nonexistent-ringmon-dir/x.log"),
        "{err}"
    );
}

#[test]
fn cri_max_size_truncates_without_counting_the_record() {
    // The upstream test "should reopen logs based on max size".
    for ts in [long_ts(), TimestampCache::fixed(1_787_317_753, 0, 0)] {
        for chunks in [&[&b"hello\nworld\n"[..]][..], &[b"hello\n", b"world\n"]] {
            let dir = TempDir::new("log", "maxsize");
            let path = dir.path("ctr.log");
            let mut writer = LogWriter::open(&spec(LogFormat::Cri, path.clone(), 50)).unwrap();
            for chunk in chunks {
                writer.write_chunk(StreamKind::Stdout, chunk, &ts).unwrap();
                writer.flush().unwrap();
            }
            let content = String::from_utf8(fs::read(&path).unwrap()).unwrap();
            assert!(content.contains("world"), "{content:?}");
            assert!(!content.contains("hello"), "{content:?}");
        }
    }
}

#[test]
fn cri_max_size_counts_records_that_fit() {
    // Short timestamp (20 bytes): records of "a\n" cost 32; two fit in 64.
    let ts = TimestampCache::fixed(1_787_317_753, 0, 0);
    let dir = TempDir::new("log", "maxsize-fit");
    let path = dir.path("ctr.log");
    let mut writer = LogWriter::open(&spec(LogFormat::Cri, path.clone(), 64)).unwrap();
    writer
        .write_chunk(StreamKind::Stdout, b"1\n2\n", &ts)
        .unwrap();
    writer.flush().unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 64);
    // The third does not fit: truncate, write it uncounted (written = 0) ...
    writer.write_chunk(StreamKind::Stdout, b"3\n", &ts).unwrap();
    // ... so two more fit before the next truncation.
    writer
        .write_chunk(StreamKind::Stdout, b"4\n5\n", &ts)
        .unwrap();
    writer.flush().unwrap();
    let content = String::from_utf8(fs::read(&path).unwrap()).unwrap();
    assert_eq!(content.lines().count(), 3, "{content:?}");
    assert!(content.starts_with("2026-08-21T13:09:13Z stdout F 3\n"));
    writer.write_chunk(StreamKind::Stdout, b"6\n", &ts).unwrap();
    writer.flush().unwrap();
    let content = String::from_utf8(fs::read(&path).unwrap()).unwrap();
    assert_eq!(content, "2026-08-21T13:09:13Z stdout F 6\n");
}

#[test]
fn reopen_starts_a_fresh_file_after_rotation() {
    let dir = TempDir::new("log", "reopen");
    let path = dir.path("ctr.log");
    let rotated = dir.path("ctr.log.1");
    let ts = long_ts();
    let mut writer = LogWriter::open(&spec(LogFormat::Cri, path.clone(), 0)).unwrap();
    writer
        .write_chunk(StreamKind::Stdout, b"before\n", &ts)
        .unwrap();
    fs::rename(&path, &rotated).unwrap();
    writer.reopen().unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    writer
        .write_chunk(StreamKind::Stdout, b"after\n", &ts)
        .unwrap();
    writer.flush().unwrap();
    let old = String::from_utf8(fs::read(&rotated).unwrap()).unwrap();
    let new = String::from_utf8(fs::read(&path).unwrap()).unwrap();
    assert!(old.ends_with(" stdout F before\n"), "{old:?}");
    assert!(
        new.ends_with(" stdout F after\n") && !new.contains("before"),
        "{new:?}"
    );
    assert_ne!(
        fs::metadata(&path).unwrap().ino(),
        fs::metadata(&rotated).unwrap().ino()
    );
}

#[test]
fn reopen_resets_the_size_counter() {
    let ts = TimestampCache::fixed(1_787_317_753, 0, 0);
    let dir = TempDir::new("log", "reopen-counter");
    let path = dir.path("ctr.log");
    let mut writer = LogWriter::open(&spec(LogFormat::Cri, path.clone(), 64)).unwrap();
    writer.write_chunk(StreamKind::Stdout, b"1\n", &ts).unwrap();
    writer.reopen().unwrap();
    writer
        .write_chunk(StreamKind::Stdout, b"2\n3\n", &ts)
        .unwrap();
    writer.flush().unwrap();
    assert_eq!(fs::read(&path).unwrap().len(), 64);
}

#[test]
fn json_entries_and_max_size() {
    let ts = TimestampCache::fixed(1_787_317_753, 0, 0);
    let dir = TempDir::new("log", "json");
    let path = dir.path("ctr.json");
    // Each entry below is 60 bytes.
    let entry = |text: &str| {
        format!("{{\"timestamp\":1787317753,\"pipe\":\"stdout\",\"message\":\"{text}\"}}\n")
    };
    assert_eq!(entry("line-1").len(), 60);
    let mut writer = LogWriter::open(&spec(LogFormat::Json, path.clone(), 120)).unwrap();
    writer
        .write_chunk(StreamKind::Stdout, b"line-1\nline-2\nline-3\n", &ts)
        .unwrap();
    writer.flush().unwrap();
    // 60 + 60 = 120 fits; the third makes 180 > 120: truncate, write it.
    assert_eq!(
        String::from_utf8(fs::read(&path).unwrap()).unwrap(),
        entry("line-3")
    );
    writer
        .write_chunk(StreamKind::Stdout, b"line-4\n", &ts)
        .unwrap();
    writer
        .write_chunk(StreamKind::Stdout, b"line-5\n", &ts)
        .unwrap();
    writer.flush().unwrap();
    assert_eq!(
        String::from_utf8(fs::read(&path).unwrap()).unwrap(),
        [entry("line-3"), entry("line-4"), entry("line-5")].concat()
    );
}

#[test]
fn journald_sends_entries_and_ignores_reopen() {
    let dir = TempDir::new("log", "journald");
    let socket_path = dir.path("journal.socket");
    let journal = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut writer = LogWriter::journal_at(&socket_path).unwrap();
    assert_eq!(writer.format(), LogFormat::Journald);
    writer
        .write_chunk(StreamKind::Stderr, b"line\n", &long_ts())
        .unwrap();
    writer.flush().unwrap();
    writer.reopen().unwrap();
    let mut buffer = [0u8; 128];
    let len = journal.recv(&mut buffer).unwrap();
    assert_eq!(
        &buffer[..len],
        b"PRIORITY=5\nMESSAGE\n\x05\0\0\0\0\0\0\0line\n\n"
    );
    // The real driver opens without needing journald to run.
    let spec = spec(LogFormat::Journald, PathBuf::new(), 0);
    assert_eq!(
        LogWriter::open(&spec).unwrap().format(),
        LogFormat::Journald
    );
}

#[test]
fn huge_chunk_of_empty_lines_is_written_completely() {
    let ts = long_ts();
    let dir = TempDir::new("log", "huge");
    let path = dir.path("ctr.log");
    let mut writer = LogWriter::open(&spec(LogFormat::Cri, path.clone(), 0)).unwrap();
    let chunk = vec![b'\n'; 64 * 1024];
    writer.write_chunk(StreamKind::Stdout, &chunk, &ts).unwrap();
    writer.flush().unwrap();
    assert_eq!(pending_capacity(&writer), WRITE_THRESHOLD);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        (64 * 1024 * (35 + 10 + 1)) as u64
    );
}

fn pending_capacity(writer: &LogWriter) -> usize {
    match &writer.destination {
        Destination::File(log) => log.pending.capacity(),
        Destination::Journal(_) => 0,
    }
}

#[test]
fn torn_record_cut_keeps_whole_records_and_cuts_a_torn_one() {
    assert_eq!(torn_record_cut(b"", 0, true), TailCut::Keep);
    assert_eq!(torn_record_cut(b"a\nb\n", 0, true), TailCut::Keep);
    assert_eq!(torn_record_cut(b"a\nbc", 0, true), TailCut::At(2));
    assert_eq!(torn_record_cut(b"a\nbc", 100, true), TailCut::At(102));
    assert_eq!(torn_record_cut(b"abc", 0, true), TailCut::At(0));
    assert_eq!(torn_record_cut(b"abc", 10, true), TailCut::LookBefore);
    // An earlier window: its last line end is the cut even if it ends there.
    assert_eq!(torn_record_cut(b"x\n", 10, false), TailCut::At(12));
    assert_eq!(torn_record_cut(b"xy", 0, false), TailCut::At(0));
}

#[test]
fn open_resumed_cuts_a_torn_record_and_appends() {
    let dir = TempDir::new("log", "resumed");
    let path = dir.path("c.log");
    let whole = "2026-01-01T00:00:00Z stdout F one\n";
    fs::write(&path, format!("{whole}2026-01-01T00:00:00Z stdout F tw")).unwrap();
    let spec = spec(LogFormat::Cri, path.clone(), 0);
    let (mut w, cut) = LogWriter::open_resumed(&spec).unwrap();
    assert_eq!(cut, 32);
    w.write_chunk(StreamKind::Stdout, b"three\n", &long_ts())
        .unwrap();
    w.flush().unwrap();
    let content = fs::read_to_string(&path).unwrap();
    assert!(content.starts_with(whole), "{content}");
    assert!(
        content[whole.len()..].ends_with(" stdout F three\n"),
        "{content}"
    );
    assert_eq!(content.lines().count(), 2);

    // A torn record longer than one window, after whole ones.
    let long = "x".repeat(3 * TAIL_WINDOW);
    fs::write(&path, format!("{whole}{long}")).unwrap();
    let (_w, cut) = LogWriter::open_resumed(&spec).unwrap();
    assert_eq!(cut, long.len() as u64);
    assert_eq!(fs::read_to_string(&path).unwrap(), whole);
}
