//! The SPDY/3.1 frame decoder of the port-forward tunnel
//! (`ringmon::stream::spdy`), stateful across frames as the session uses it.
//!
//! Input: a mode byte, a delivery byte (how the bytes are cut into
//! websocket messages), then
//! - mode even: raw bytes as the client's byte stream, decoded until an
//!   error ends the session (as `spdy_port_forward` does); the header
//!   block parser also sees the bytes directly;
//! - mode odd: a list of frame operations that a client builds (header
//!   blocks compressed on one zlib stream with the SPDY dictionary, DATA,
//!   PING, RST_STREAM, ignored control frames, raw garbage). Every frame
//!   must decode to what was encoded until the first garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmon::stream::spdy::{self, Decoder, Frame};
use ringmon_fuzz::{
    spdy_client_deflate, spdy_compress, spdy_control, spdy_header_block, spdy_syn_stream, Bytes,
    SPDY_GOAWAY, SPDY_SETTINGS, SPDY_WINDOW_UPDATE,
};

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::new(data);
    let mode = input.u8();
    let delivery = input.u8();
    if mode & 1 == 0 {
        raw(delivery, input.rest());
    } else {
        structured(delivery, &mut input);
    }
});

/// Pushes `stream` in websocket messages of `1 + delivery` bytes (all at
/// once for 0) and collects the decoded frames, up to the first error.
fn decode_all(delivery: u8, stream: &[u8]) -> (Vec<Frame>, bool) {
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    let step = if delivery == 0 {
        stream.len().max(1)
    } else {
        usize::from(delivery)
    };
    for message in stream.chunks(step) {
        decoder.push(message);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    check_frame(&frame);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    return (frames, true);
                }
            }
        }
    }
    (frames, false)
}

/// What holds for every decoded frame.
fn check_frame(frame: &Frame) {
    match frame {
        Frame::SynStream {
            stream_id, headers, ..
        } => {
            assert!(*stream_id <= 0x7fff_ffff);
            for (name, value) in headers {
                assert_eq!(name, &name.to_ascii_lowercase());
                assert!(!value.contains('\0'));
            }
        }
        Frame::Data { stream_id, .. } | Frame::RstStream { stream_id, .. } => {
            assert!(*stream_id <= 0x7fff_ffff)
        }
        Frame::Ping { .. } | Frame::GoAway | Frame::Other { .. } => {}
    }
}

fn raw(delivery: u8, stream: &[u8]) {
    let _ = spdy::parse_header_block(stream);
    decode_all(delivery, stream);
}

/// Header names and values of a well-formed block, cut from `bytes` at
/// 0xff bytes (alternating name, value).
fn pairs(bytes: &[u8]) -> Vec<(&[u8], &[u8])> {
    let fields: Vec<&[u8]> = bytes.split(|&b| b == 0xff).collect();
    fields
        .chunks(2)
        .map(|p| (p[0], *p.get(1).unwrap_or(&&b""[..])))
        .collect()
}

/// What the decoder reports for a block the client sent, by the SPDY rules
/// (names lowercased, of NUL-separated values the first).
fn expected_headers(pairs: &[(&[u8], &[u8])]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v);
            (
                String::from_utf8_lossy(n).to_ascii_lowercase(),
                value.split('\0').next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn structured(delivery: u8, input: &mut Bytes<'_>) {
    let mut z = spdy_client_deflate();
    let mut stream = Vec::new();
    // The frames the decoder must report, in order; `None` once a frame
    // makes the decoder fail (nothing after it is decoded).
    let mut expected: Vec<Frame> = Vec::new();
    let mut fails = false;
    let mut garbage = false;
    let mut stream_id = 1u32;
    while !input.is_empty() && stream.len() < 64 * 1024 {
        let op = input.u8();
        let flags = input.u8() & 1;
        let bytes = input.short_bytes();
        let frame = match op % 8 {
            // A header block exactly as given, possibly malformed.
            0 => {
                let compressed = spdy_compress(&mut z, bytes);
                match spdy::parse_header_block(bytes) {
                    Ok(headers) if !fails => expected.push(Frame::SynStream {
                        stream_id,
                        flags,
                        headers,
                    }),
                    _ => fails = true,
                }
                spdy_syn_stream(stream_id, flags, &compressed)
            }
            // A well-formed block from the bytes.
            1 => {
                let pairs = pairs(bytes);
                let compressed = spdy_compress(&mut z, &spdy_header_block(&pairs));
                if !fails {
                    expected.push(Frame::SynStream {
                        stream_id,
                        flags,
                        headers: expected_headers(&pairs),
                    });
                }
                spdy_syn_stream(stream_id, flags, &compressed)
            }
            2 => {
                if !fails {
                    expected.push(Frame::Data {
                        stream_id,
                        flags,
                        data: bytes.to_vec(),
                    });
                }
                spdy::data(stream_id, flags != 0, bytes)
            }
            3 => {
                let id = u32::from_le_bytes([flags, bytes.len() as u8, op, 7]);
                if !fails {
                    expected.push(Frame::Ping { id });
                }
                spdy::ping(id)
            }
            4 => {
                let status = u32::from(op);
                if !fails {
                    expected.push(Frame::RstStream { stream_id, status });
                }
                spdy::rst_stream(stream_id, status)
            }
            5 => {
                let kind =
                    [SPDY_SETTINGS, SPDY_WINDOW_UPDATE, SPDY_GOAWAY][usize::from(op / 8) % 3];
                if !fails {
                    expected.push(if kind == SPDY_GOAWAY {
                        Frame::GoAway
                    } else {
                        Frame::Other { kind }
                    });
                }
                spdy_control(kind, flags, bytes)
            }
            // Bytes no client sends: nothing is expected from here on.
            _ => {
                garbage = true;
                bytes.to_vec()
            }
        };
        stream.extend_from_slice(&frame);
        stream_id = stream_id.wrapping_add(2) & 0x7fff_ffff;
    }
    let (frames, failed) = decode_all(delivery, &stream);
    if garbage {
        return;
    }
    assert_eq!(
        frames, expected,
        "decoded frames differ from the encoded ones"
    );
    assert_eq!(failed, fails, "decoder error status differs");
}
