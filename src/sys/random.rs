//! Randomness from the kernel (`getrandom(2)`): session tokens, ids and
//! temporary names all come from here.

use std::io;

/// Fills `buf` from the kernel's random source (`getrandom(2)`, blocking
/// until the pool is initialised). There is no weaker fallback: a caller
/// that cannot get randomness must fail.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the
        // valid, exclusively borrowed buffer `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// 64 random bits (see [`fill`]).
pub fn u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    fill(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ_between_calls() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        fill(&mut []).unwrap();
        assert_ne!(u64().unwrap(), u64().unwrap());
    }
}
