//! Helpers shared by the fuzz targets and the seed generator: reading
//! structured values off the fuzzer's bytes, and the client side of the
//! wire formats (SPDY frames as a client sends them, capnp messages).
//!
//! Everything here builds inputs or checks outputs; the code under test is
//! always ringmon's own, called through its public API.

use flate2::{Compress, Compression, FlushCompress};

/// Reads values off the front of a fuzz input; missing bytes read as 0,
/// so every input is a valid sequence of operations.
pub struct Bytes<'a> {
    rest: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        taken
    }

    /// A length byte, then that many bytes.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// SPDY/3 control frame as a client writes it.
pub fn spdy_control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&0x8003u16.to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(body);
    frame
}

/// SPDY control frame type of SYN_STREAM.
pub const SPDY_SYN_STREAM: u16 = 1;
/// SPDY control frame types the server reads and ignores.
pub const SPDY_SETTINGS: u16 = 4;
pub const SPDY_GOAWAY: u16 = 7;
pub const SPDY_WINDOW_UPDATE: u16 = 9;

/// The client's header compressor: one zlib stream for all its header
/// blocks, primed with the SPDY/3 dictionary.
pub fn spdy_client_deflate() -> Compress {
    let mut z = Compress::new(Compression::default(), true);
    z.set_dictionary(ringmon::stream::spdy_dictionary::HEADER_DICTIONARY)
        .expect("a fresh zlib stream takes a dictionary");
    z
}

/// Compresses one header block on the client's stream (sync flush, as a
/// SPDY client ends each block).
pub fn spdy_compress(z: &mut Compress, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + block.len() / 2 + 128);
    let mut pos = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(1024);
        }
        let before = z.total_in();
        z.compress_vec(&block[pos..], &mut out, FlushCompress::Sync)
            .expect("compressing into a Vec with room does not fail");
        pos += (z.total_in() - before) as usize;
        if pos >= block.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

/// An uncompressed SPDY/3 header block: count, then length-prefixed names
/// and values.
pub fn spdy_header_block(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = (headers.len() as u32).to_be_bytes().to_vec();
    for (name, value) in headers {
        for field in [name, value] {
            block.extend_from_slice(&(field.len() as u32).to_be_bytes());
            block.extend_from_slice(field);
        }
    }
    block
}

/// A SYN_STREAM frame carrying an already compressed header block.
pub fn spdy_syn_stream(stream_id: u32, flags: u8, compressed: &[u8]) -> Vec<u8> {
    let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
    // Associated stream id, priority and slot: unused by the server.
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(compressed);
    spdy_control(SPDY_SYN_STREAM, flags, &body)
}
