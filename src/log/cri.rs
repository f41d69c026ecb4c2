//! The CRI log format (spec §4.2), as pure functions over byte slices.
//!
//! A chunk is split after every `\n`; each segment becomes one record
//! `<timestamp> <stream> <F|P> <content>`. `F` segments already end with
//! `\n`; a trailing segment without one is a partial (`P`) record and gets a
//! `\n` appended. Content is copied verbatim: no escaping, NUL bytes and
//! invalid UTF-8 are kept, `\r` is not special.

use super::StreamKind;

/// Bytes a record adds around its timestamp and segment:
/// `' ' + stream(6) + ' ' + tag + ' '` = 10 (both stream names have 6 bytes).
pub const RECORD_OVERHEAD: usize = 10;

/// One piece of a chunk that becomes one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// The bytes, including the terminating `\n` unless `partial`.
    pub bytes: &'a [u8],
    /// No `\n` ended this segment (the chunk's tail): tag `P`.
    pub partial: bool,
}

impl Segment<'_> {
    /// Exact size of this segment's record for a timestamp of `timestamp_len`
    /// bytes: the `maxSize` cost of spec §4.2.
    pub fn record_len(&self, timestamp_len: usize) -> usize {
        timestamp_len + RECORD_OVERHEAD + self.bytes.len() + usize::from(self.partial)
    }
}

/// Iterator over the segments of a chunk, see [`segments`].
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        match memchr::memchr(b'\n', self.rest) {
            Some(newline) => {
                let (bytes, rest) = self.rest.split_at(newline + 1);
                self.rest = rest;
                Some(Segment {
                    bytes,
                    partial: false,
                })
            }
            None => {
                let bytes = std::mem::take(&mut self.rest);
                Some(Segment {
                    bytes,
                    partial: true,
                })
            }
        }
    }
}

/// Splits `chunk` after every `\n`; a non-empty tail without `\n` is a
/// partial segment. An empty chunk has no segments.
pub fn segments(chunk: &[u8]) -> Segments<'_> {
    Segments { rest: chunk }
}

/// Appends the record for one segment to `out`.
pub fn encode_segment(
    out: &mut Vec<u8>,
    timestamp: &[u8],
    stream: StreamKind,
    segment: Segment<'_>,
) {
    out.reserve(segment.record_len(timestamp.len()));
    out.extend_from_slice(timestamp);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if segment.partial { b" P " } else { b" F " });
    out.extend_from_slice(segment.bytes);
    if segment.partial {
        out.push(b'\n');
    }
}

/// Appends the records of a whole chunk to `out` (all sharing `timestamp`).
pub fn encode(out: &mut Vec<u8>, timestamp: &[u8], stream: StreamKind, chunk: &[u8]) {
    for segment in segments(chunk) {
        encode_segment(out, timestamp, stream, segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &[u8] = b"2026-08-21T15:09:13.123456789+02:00";

    fn encoded(stream: StreamKind, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, TS, stream, chunk);
        out
    }

    #[test]
    fn full_line() {
        assert_eq!(
            encoded(StreamKind::Stdout, b"hello\n"),
            b"2026-08-21T15:09:13.123456789+02:00 stdout F hello\n"
        );
    }

    #[test]
    fn partial_tail_gets_p_and_newline() {
        assert_eq!(
            encoded(StreamKind::Stderr, b"no newline"),
            b"2026-08-21T15:09:13.123456789+02:00 stderr P no newline\n"
        );
    }

    #[test]
    fn multiple_lines_and_tail() {
        let expected = [
            &b"2026-08-21T15:09:13.123456789+02:00 stdout F a\n"[..],
            b"2026-08-21T15:09:13.123456789+02:00 stdout F \n",
            b"2026-08-21T15:09:13.123456789+02:00 stdout F bc\n",
            b"2026-08-21T15:09:13.123456789+02:00 stdout P d\n",
        ]
        .concat();
        assert_eq!(encoded(StreamKind::Stdout, b"a\n\nbc\nd"), expected);
    }

    #[test]
    fn empty_chunk_writes_nothing() {
        assert!(encoded(StreamKind::Stdout, b"").is_empty());
        assert_eq!(segments(b"").count(), 0);
    }

    #[test]
    fn binary_bytes_are_verbatim() {
        let chunk = b"\0\xff\xfe\x01\x1b[31m\0\n\0";
        let expected = [
            &b"2026-08-21T15:09:13.123456789+02:00 stdout F \0\xff\xfe\x01\x1b[31m\0\n"[..],
            b"2026-08-21T15:09:13.123456789+02:00 stdout P \0\n",
        ]
        .concat();
        assert_eq!(encoded(StreamKind::Stdout, chunk), expected);
    }

    #[test]
    fn carriage_return_is_not_special() {
        assert_eq!(
            encoded(StreamKind::Stdout, b"tty\r\n\r"),
            [
                &b"2026-08-21T15:09:13.123456789+02:00 stdout F tty\r\n"[..],
                b"2026-08-21T15:09:13.123456789+02:00 stdout P \r\n",
            ]
            .concat()
        );
    }

    #[test]
    fn record_len_is_the_exact_encoded_size() {
        for chunk in [&b"hello\n"[..], b"tail", b"\n", b"x\ny\nzz"] {
            for segment in segments(chunk) {
                let mut out = Vec::new();
                encode_segment(&mut out, TS, StreamKind::Stderr, segment);
                assert_eq!(out.len(), segment.record_len(TS.len()), "{segment:?}");
            }
        }
        // The cost of spec §4.2: len(ts) + 10 + len(segment) (+1 if partial).
        let full = Segment {
            bytes: b"hello\n",
            partial: false,
        };
        assert_eq!(full.record_len(20), 36);
    }
}
