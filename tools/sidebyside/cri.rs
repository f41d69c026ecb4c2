//! The bytes the producers write, and the checks that a CRI log (or a plain
//! output file) holds exactly those bytes.
//!
//! A CRI log record is `<timestamp> <stream> <P|F> <content>\n`. `F` closes a
//! line: its content, newline included, is the end of that line. `P` is part
//! of a longer line: the monitor added the newline, so it is not payload.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

const BUF: usize = 1 << 20;

/// Writes line `index` of a `line_size`-byte data file into `out`: a
/// decimal line number, then a filler that shifts with the line number, then
/// `\n`. Every line differs, so reordered or duplicated chunks are caught.
fn data_line(line_size: usize, index: u64, out: &mut Vec<u8>) {
    out.clear();
    let number = format!("{index:010} ");
    out.extend_from_slice(&number.as_bytes()[..number.len().min(line_size - 1)]);
    const FILLER: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let shift = (index % FILLER.len() as u64) as usize;
    while out.len() < line_size - 1 {
        out.push(FILLER[(out.len() + shift) % FILLER.len()]);
    }
    out.push(b'\n');
}

/// Writes `lines` lines of `line_size` bytes (at least 2) to `path`; returns
/// the byte count.
pub fn write_data_file(path: &Path, line_size: usize, lines: u64) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(BUF, File::create(path)?);
    let mut line = Vec::with_capacity(line_size);
    for i in 0..lines {
        data_line(line_size, i, &mut line);
        w.write_all(&line)?;
    }
    w.flush()?;
    Ok(lines * line_size as u64)
}

/// What a log held, compared with what was produced.
#[derive(Clone, Debug, Default)]
pub struct LogCheck {
    /// Payload bytes (CRI framing removed).
    pub bytes: u64,
    /// Lines closed by an `F` record (or by `\n` in a plain file).
    pub lines: u64,
    /// Payload equals the expected bytes exactly, in length and content.
    pub exact: bool,
}

/// Splits a CRI record into (partial?, content); `None` if malformed.
fn cri_record(rec: &[u8]) -> Option<(bool, &[u8])> {
    let mut parts = rec.splitn(4, |b| *b == b' ');
    let (_ts, _stream, tag, content) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    match tag {
        b"P" => Some((true, content.strip_suffix(b"\n").unwrap_or(content))),
        b"F" => Some((false, content)),
        _ => None,
    }
}

/// Compares the payload of the CRI log at `log` with the file `expected`.
pub fn check_cri_log(log: &Path, expected: &Path) -> std::io::Result<LogCheck> {
    let mut records = BufReader::with_capacity(BUF, File::open(log)?);
    let mut want = BufReader::with_capacity(BUF, File::open(expected)?);
    let mut check = LogCheck {
        exact: true,
        ..Default::default()
    };
    let (mut rec, mut scratch) = (Vec::new(), Vec::new());
    loop {
        rec.clear();
        if records.read_until(b'\n', &mut rec)? == 0 {
            break;
        }
        let Some((partial, payload)) = cri_record(&rec) else {
            check.exact = false;
            continue;
        };
        check.bytes += payload.len() as u64;
        check.lines += u64::from(!partial);
        if check.exact {
            scratch.resize(payload.len(), 0);
            check.exact = want.read_exact(&mut scratch).is_ok() && scratch == payload;
        }
    }
    // Nothing of the expected bytes may be left over.
    check.exact &= want.fill_buf()?.is_empty();
    Ok(check)
}

/// Compares a plain output file with `expected` (the no-monitor rows).
pub fn check_plain_file(output: &Path, expected: &Path) -> std::io::Result<LogCheck> {
    let mut got = BufReader::with_capacity(BUF, File::open(output)?);
    let mut want = BufReader::with_capacity(BUF, File::open(expected)?);
    let mut check = LogCheck {
        exact: true,
        ..Default::default()
    };
    let mut scratch = Vec::new();
    loop {
        let chunk = got.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        check.bytes += n as u64;
        check.lines += memchr::memchr_iter(b'\n', chunk).count() as u64;
        if check.exact {
            scratch.resize(n, 0);
            check.exact = want.read_exact(&mut scratch).is_ok() && scratch == chunk;
        }
        got.consume(n);
    }
    check.exact &= want.fill_buf()?.is_empty();
    Ok(check)
}

/// Checks a density log: every reassembled line must equal `line` (with
/// its `\n`); `lines` counts them.
pub fn check_repeated_lines(log: &Path, line: &[u8]) -> std::io::Result<LogCheck> {
    let mut records = BufReader::with_capacity(BUF, File::open(log)?);
    let mut check = LogCheck {
        exact: true,
        ..Default::default()
    };
    let (mut rec, mut current) = (Vec::new(), Vec::new());
    loop {
        rec.clear();
        if records.read_until(b'\n', &mut rec)? == 0 {
            break;
        }
        let Some((partial, payload)) = cri_record(&rec) else {
            check.exact = false;
            continue;
        };
        check.bytes += payload.len() as u64;
        current.extend_from_slice(payload);
        if !partial {
            check.lines += 1;
            check.exact &= current == line;
            current.clear();
        }
    }
    check.exact &= current.is_empty();
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_requested_size_and_differ() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for size in [2, 11, 100, 1024] {
            data_line(size, 7, &mut a);
            data_line(size, 8, &mut b);
            assert_eq!(a.len(), size);
            assert_eq!(a.last(), Some(&b'\n'));
            if size > 11 {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn cri_partial_records_join_and_lose_their_newline() {
        let dir = std::env::temp_dir().join(format!("sidebyside-cri-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let expected = dir.join("data");
        std::fs::write(&expected, b"hello world\nsecond\n").unwrap();
        let log = dir.join("log");
        std::fs::write(
            &log,
            b"t stdout P hello \nt stdout F world\nt stdout F second\n",
        )
        .unwrap();
        let c = check_cri_log(&log, &expected).unwrap();
        assert!(c.exact);
        assert_eq!((c.bytes, c.lines), (19, 2));
        std::fs::write(&log, b"t stdout F hello world\n").unwrap();
        assert!(!check_cri_log(&log, &expected).unwrap().exact);
        std::fs::write(&log, b"t stdout F hello\nt stdout F hello\n").unwrap();
        let r = check_repeated_lines(&log, b"hello\n").unwrap();
        assert!(r.exact && r.lines == 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
