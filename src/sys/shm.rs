//! Shared memory files (memfd) and the calls the output journal needs on
//! them: a `MAP_SHARED` mapping, `splice(2)` from a pipe to the file's own
//! position, and moving that position (issue 16, exactly-once output).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Creates an anonymous memory file named `name` (shown in /proc/PID/fd),
/// close-on-exec, `len` bytes long (sparse: no page is allocated until it is
/// written), sealed against shrinking and growing: a page of a mapping of
/// it can never end up past its end (SIGBUS), whoever else holds it.
pub fn memfd(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let create = |flags: libc::c_uint| {
        // SAFETY: `name` is a valid NUL-terminated string; the flags are
        // valid memfd_create flags.
        unsafe { libc::memfd_create(name.as_ptr(), flags) }
    };
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // Not executable: a system with vm.memfd_noexec = 2 refuses memfds
    // without it. Kernels before 6.3 do not know the flag (EINVAL).
    let mut raw = create(flags | libc::MFD_NOEXEC_SEAL);
    if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        raw = create(flags);
    }
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let size =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The size of the file `fd`.
pub fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let stat = nix::sys::stat::fstat(fd)?;
    Ok(stat.st_size as u64)
}

/// A `MAP_SHARED` read-write mapping of a whole file; unmapped on drop.
/// Another process mapping (or reading) the same file sees every store at
/// once: the pages are the file's.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to
// another thread moves the only handle the process keeps to it.
unsafe impl Send for SharedMap {}
// SAFETY: `&SharedMap` only gives out raw pointers and shared slices; the
// users that store through the pointer (the journal's ledger) do so with
// atomics or from one thread.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps the first `len` bytes of `fd` (which must be at least that long:
    /// touching a page past the end of the file raises SIGBUS).
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMap> {
        if len == 0 || file_len(fd)? < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot map {len} bytes of a shorter (or empty) file"),
            ));
        }
        // SAFETY: a new mapping at an address the kernel picks; the
        // descriptor is valid for the call and the length was checked
        // against the file's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(SharedMap { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the mapping, for stores (atomics, see the ledger).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapped bytes. Another process may store to them at any time; the
    /// callers read what they themselves put there (the journal reads bytes
    /// the kernel spliced in for it), or a snapshot of a dead writer's page.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and lives as long as
        // `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no slice of it
        // outlives `self` (they borrow it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Moves up to `len` bytes from the pipe `pipe` to the file `file` at the
/// file's own position, which the kernel advances by what it moved, inside
/// the call: there is no moment at which the bytes have left the pipe and
/// the position does not count them. Never blocks on the pipe
/// (`SPLICE_F_NONBLOCK`): `EAGAIN` when it is empty. `Ok(0)`: end of file
/// (no writer left and nothing in the pipe).
pub fn splice_to_position(
    pipe: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: both descriptors are valid for the call; NULL offsets mean
    // "the descriptors' own positions".
    let moved = unsafe {
        libc::splice(
            pipe.as_raw_fd(),
            std::ptr::null_mut(),
            file.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(moved as usize)
}

/// The file position of `fd` (shared by every duplicate of its open file
/// description, in this process or another).
pub fn position(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(nix::unistd::lseek(fd, 0, nix::unistd::Whence::SeekCur)? as u64)
}

/// Moves the file position of `fd` to `offset`.
pub fn seek_to(fd: BorrowedFd<'_>, offset: u64) -> io::Result<()> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::unistd::lseek(fd, offset, nix::unistd::Whence::SeekSet)?;
    Ok(())
}

/// Frees the pages of the first `len` bytes of the memory file `fd`; its
/// size stays (they read as zeroes until written again).
pub fn punch_hole(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on a valid descriptor.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn splice_advances_the_shared_position() {
        let file = memfd(c"test-journal", 64 * 1024).unwrap();
        let copy = file.try_clone().unwrap();
        let map = SharedMap::new(file.as_fd(), 64 * 1024).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"hello").unwrap();
        assert_eq!(
            splice_to_position(r.as_fd(), file.as_fd(), 4096).unwrap(),
            5
        );
        // The duplicate shares the position: the other process's view.
        assert_eq!(position(copy.as_fd()).unwrap(), 5);
        assert_eq!(&map.bytes()[..5], b"hello");
        let again = splice_to_position(r.as_fd(), file.as_fd(), 4096).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EAGAIN));
        nix::unistd::write(&w, b"!").unwrap();
        assert_eq!(
            splice_to_position(r.as_fd(), file.as_fd(), 4096).unwrap(),
            1
        );
        assert_eq!(&map.bytes()[..6], b"hello!");
        seek_to(copy.as_fd(), 0).unwrap();
        assert_eq!(position(file.as_fd()).unwrap(), 0);
        drop(w);
        assert_eq!(
            splice_to_position(r.as_fd(), file.as_fd(), 4096).unwrap(),
            0
        );
        punch_hole(file.as_fd(), 64 * 1024).unwrap();
        assert_eq!(&map.bytes()[..6], &[0u8; 6]);
        assert_eq!(file_len(file.as_fd()).unwrap(), 64 * 1024);
    }

    #[test]
    fn the_file_cannot_change_size() {
        let file = memfd(c"test-sealed", 8192).unwrap();
        assert!(nix::unistd::ftruncate(&file, 4096).is_err());
        assert!(nix::unistd::ftruncate(&file, 16384).is_err());
        assert_eq!(file_len(file.as_fd()).unwrap(), 8192);
    }

    #[test]
    fn a_map_longer_than_the_file_is_refused() {
        let file = memfd(c"test-short", 4096).unwrap();
        assert!(SharedMap::new(file.as_fd(), 8192).is_err());
    }
}
