//! A minimal SPDY/3.1 frame codec: what client-go's port-forwarder needs
//! when it tunnels SPDY through a websocket (`SPDY/3.1+portforward.k8s.io`,
//! `portforward.NewSPDYOverWebsocketDialer`). The client opens streams
//! (SYN_STREAM with zlib-compressed headers), the server answers SYN_REPLY,
//! both send DATA frames (FIN ends a direction), PINGs are echoed. Flow
//! control (WINDOW_UPDATE) and SETTINGS are read and ignored, as the Go
//! implementation on the other side does.
//!
//! Header blocks of each direction form one zlib stream primed with the
//! SPDY/3 dictionary ([`super::spdy_dictionary`]).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::spdy_dictionary::HEADER_DICTIONARY;

const VERSION: u16 = 3;
/// Frame header size (control and data).
const HEADER: usize = 8;
/// Largest frame accepted from the client.
const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed header block accepted.
const MAX_HEADERS: usize = 256 * 1024;

pub const FLAG_FIN: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;

/// RST_STREAM statuses: a protocol violation (a stream id used twice),
/// the stream was refused (too many open), too much data for the stream.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;

/// A frame received from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY, unknown types: ignored.
    Other {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed SPDY {0}")]
    Malformed(&'static str),
    #[error("SPDY header decompression: {0}")]
    Inflate(String),
}

/// Splits the client's byte stream into frames and decompresses headers.
pub struct Decoder {
    buf: Vec<u8>,
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: Vec::new(),
            inflate: Decompress::new(true),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = be24(&self.buf[5..8]);
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..HEADER + len).collect();
        let flags = frame[4];
        let body = &frame[HEADER..];
        if frame[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: be32(&frame[0..4]) & 0x7fff_ffff,
                flags,
                data: body.to_vec(),
            }));
        }
        let version = u16::from_be_bytes([frame[0] & 0x7f, frame[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([frame[2], frame[3]]);
        Ok(Some(match kind {
            TYPE_SYN_STREAM => {
                if body.len() < 10 {
                    return Err(SpdyError::Malformed("SYN_STREAM"));
                }
                let block = self.inflate(&body[10..])?;
                Frame::SynStream {
                    stream_id: be32(&body[0..4]) & 0x7fff_ffff,
                    flags,
                    headers: parse_header_block(&block)?,
                }
            }
            TYPE_RST_STREAM => {
                if body.len() < 8 {
                    return Err(SpdyError::Malformed("RST_STREAM"));
                }
                Frame::RstStream {
                    stream_id: be32(&body[0..4]) & 0x7fff_ffff,
                    status: be32(&body[4..8]),
                }
            }
            TYPE_PING => {
                if body.len() < 4 {
                    return Err(SpdyError::Malformed("PING"));
                }
                Frame::Ping { id: be32(body) }
            }
            TYPE_GOAWAY => Frame::GoAway,
            other => {
                if other == TYPE_SYN_REPLY || other == 8 {
                    // Header blocks share the zlib stream: keep it in step.
                    if body.len() >= 4 {
                        self.inflate(&body[4..])?;
                    }
                }
                Frame::Other { kind: other }
            }
        }))
    }

    /// Decompresses one header block. Every call must make progress: a
    /// zlib stream that ended (`StreamEnd`), or any status that neither
    /// takes input nor gives output, is an error, since looping on it would
    /// spin the control thread forever. The output is bounded by
    /// [`MAX_HEADERS`].
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let err = |e: flate2::DecompressError| SpdyError::Inflate(e.to_string());
        let mut out = Vec::with_capacity(1024);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(4096);
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let res = self
                .inflate
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.inflate.total_in() - in_before) as usize;
            let progressed = self.inflate.total_in() != in_before || out.len() != out_before;
            match res {
                Ok(flate2::Status::StreamEnd) => {
                    // SPDY header streams never end; whatever follows the
                    // end can never be decompressed.
                    return Err(SpdyError::Inflate("the header stream ended".into()));
                }
                Ok(_) if !progressed => {
                    return Err(SpdyError::Inflate(
                        "no progress decompressing headers".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(HEADER_DICTIONARY)
                        .map_err(err)?;
                    continue;
                }
                Err(e) => return Err(err(e)),
            }
            if out.len() > MAX_HEADERS {
                return Err(SpdyError::TooLarge(out.len()));
            }
            if pos >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Parses an uncompressed header block: count, then (name, value) pairs,
/// each length-prefixed (32 bit). Of NUL-separated values the first counts.
pub fn parse_header_block(b: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = SpdyError::Malformed("header block");
    let mut pos = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(pos..pos + n)?;
        pos += n;
        Some(s)
    };
    let count = be32(take(4).ok_or(SpdyError::Malformed("header block"))?);
    let mut out = Vec::new();
    for _ in 0..count {
        let mut field = || -> Option<String> {
            let len = be32(take(4)?) as usize;
            let raw = take(len)?;
            Some(String::from_utf8_lossy(raw).into_owned())
        };
        let (Some(name), Some(value)) = (field(), field()) else {
            return Err(bad);
        };
        let value = value.split('\0').next().unwrap_or("").to_string();
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

/// Encodes the server's frames (header blocks compressed on one stream).
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh zlib stream accepts its dictionary before any data.
        let _ = deflate.set_dictionary(HEADER_DICTIONARY);
        Encoder { deflate }
    }
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

impl Encoder {
    /// SYN_REPLY for `stream_id` with no headers.
    pub fn syn_reply(&mut self, stream_id: u32) -> Vec<u8> {
        let block = self.compress(&0u32.to_be_bytes());
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&block);
        control(TYPE_SYN_REPLY, 0, &body)
    }

    fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let (in_before, out_before) = (self.deflate.total_in(), out.len());
            // Compressing into a Vec with spare room cannot fail.
            let _ = self
                .deflate
                .compress_vec(&input[pos..], &mut out, FlushCompress::Sync);
            pos += (self.deflate.total_in() - in_before) as usize;
            let progressed = self.deflate.total_in() != in_before || out.len() != out_before;
            // Never spin: a call that moved nothing will not move later.
            if !progressed || (pos >= input.len() && out.len() < out.capacity()) {
                return out;
            }
        }
    }
}

/// A DATA frame (at most 16 MiB - 1 of payload; callers send less).
pub fn data(stream_id: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// The PING reply (same id).
pub fn ping(id: u32) -> Vec<u8> {
    control(TYPE_PING, 0, &id.to_be_bytes())
}

pub fn rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
    let mut body = stream_id.to_be_bytes().to_vec();
    body.extend_from_slice(&status.to_be_bytes());
    control(TYPE_RST_STREAM, 0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client-side SYN_STREAM, compressed as a SPDY client does it.
    fn syn_stream(z: &mut Compress, stream_id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = (headers.len() as u32).to_be_bytes().to_vec();
        for (n, v) in headers {
            for s in [n, v] {
                block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                block.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(4096);
        z.compress_vec(&block, &mut out, FlushCompress::Sync)
            .unwrap();
        let mut body = stream_id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&out);
        control(TYPE_SYN_STREAM, 0, &body)
    }

    fn client_deflate() -> Compress {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(HEADER_DICTIONARY).unwrap();
        z
    }

    #[test]
    fn decodes_syn_streams_sharing_one_zlib_stream() {
        let mut z = client_deflate();
        let mut d = Decoder::default();
        let a = syn_stream(&mut z, 1, &[("streamType", "error"), ("port", "8080")]);
        let b = syn_stream(&mut z, 3, &[("streamtype", "data"), ("port", "8080")]);
        // Byte by byte: frames come out only when complete.
        let all = [a, b].concat();
        let mut frames = Vec::new();
        for byte in all {
            d.push(&[byte]);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream_id: 1,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), "error".into()),
                        ("port".into(), "8080".into())
                    ],
                },
                Frame::SynStream {
                    stream_id: 3,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), "data".into()),
                        ("port".into(), "8080".into())
                    ],
                },
            ]
        );
    }

    #[test]
    fn data_ping_rst_round_trip() {
        let mut d = Decoder::default();
        d.push(&data(5, true, b"hello"));
        d.push(&ping(7));
        d.push(&rst_stream(5, RST_REFUSED_STREAM));
        assert_eq!(
            d.next_frame().unwrap(),
            Some(Frame::Data {
                stream_id: 5,
                flags: FLAG_FIN,
                data: b"hello".to_vec()
            })
        );
        assert_eq!(d.next_frame().unwrap(), Some(Frame::Ping { id: 7 }));
        assert_eq!(
            d.next_frame().unwrap(),
            Some(Frame::RstStream {
                stream_id: 5,
                status: RST_REFUSED_STREAM
            })
        );
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn syn_reply_headers_decompress_with_the_dictionary() {
        let mut e = Encoder::default();
        let mut z = Decompress::new(true);
        for id in [1u32, 3] {
            let f = e.syn_reply(id);
            assert_eq!(&f[..4], &[0x80, 0x03, 0x00, 0x02]);
            assert_eq!(be24(&f[5..8]), f.len() - HEADER);
            assert_eq!(be32(&f[8..12]), id);
            let mut out = Vec::with_capacity(64);
            let mut input = &f[12..];
            loop {
                let before = z.total_in();
                match z.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                    Ok(_) => {}
                    Err(e) if e.needs_dictionary().is_some() => {
                        z.set_dictionary(HEADER_DICTIONARY).unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
                input = &input[(z.total_in() - before) as usize..];
                if input.is_empty() {
                    break;
                }
            }
            assert_eq!(out, vec![0, 0, 0, 0]);
        }
    }

    /// A client whose zlib stream ended (a finished deflate stream) sends
    /// another header block: an error, not an endless loop.
    #[test]
    fn header_block_after_the_stream_ended_is_an_error() {
        let mut z = client_deflate();
        let mut d = Decoder::default();
        let mut block = Vec::with_capacity(4096);
        z.compress_vec(&0u32.to_be_bytes(), &mut block, FlushCompress::Finish)
            .unwrap();
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&block);
        d.push(&control(TYPE_SYN_STREAM, 0, &body));
        let mut body = 3u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(b"more header bytes");
        d.push(&control(TYPE_SYN_STREAM, 0, &body));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = d.next_frame().map(|_| ());
            let second = d.next_frame().map(|_| ());
            let _ = tx.send((first.is_err(), second.is_err()));
        });
        let (first_err, second_err) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the decoder spins on a finished zlib stream");
        assert!(first_err || second_err, "one of the blocks must fail");
    }

    /// A header block that inflates past the bound is refused.
    #[test]
    fn header_block_size_is_bounded() {
        let mut z = client_deflate();
        let mut d = Decoder::default();
        let mut block = (1u32).to_be_bytes().to_vec();
        block.extend_from_slice(&(4u32).to_be_bytes());
        block.extend_from_slice(b"name");
        block.extend_from_slice(&((MAX_HEADERS as u32) * 2).to_be_bytes());
        block.extend(std::iter::repeat_n(b'a', MAX_HEADERS * 2));
        let mut out = Vec::with_capacity(MAX_HEADERS);
        z.compress_vec(&block, &mut out, FlushCompress::Sync)
            .unwrap();
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&out);
        d.push(&control(TYPE_SYN_STREAM, 0, &body));
        assert!(matches!(d.next_frame(), Err(SpdyError::TooLarge(_))));
    }

    #[test]
    fn rejects_bad_frames() {
        let mut d = Decoder::default();
        d.push(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]);
        assert!(matches!(d.next_frame(), Err(SpdyError::Version(2))));
        let mut d = Decoder::default();
        d.push(&[0x80, 0x03, 0, 1, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(SpdyError::TooLarge(_))));
        assert!(parse_header_block(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }
}
