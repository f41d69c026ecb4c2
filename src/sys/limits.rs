//! Resource limits of the daemon and the limits its children get back,
//! and kernel randomness.
//!
//! The daemon holds a descriptor per container pipe, log, attach socket and
//! streaming connection, so it raises its soft `RLIMIT_NOFILE` to the hard
//! limit at start. Runtimes and containers must not inherit that raised
//! value (a container without an rlimit in its spec gets what its runtime
//! had): every child gets the original soft limit back between fork and
//! exec.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// The soft `RLIMIT_NOFILE` the process started with, once it was raised;
/// `u64::MAX` while it was not (children then inherit ours unchanged).
static ORIGINAL_NOFILE_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

/// The descriptor limits of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The current `RLIMIT_NOFILE` of this process.
pub fn nofile_limit() -> io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively
    // borrowed struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NofileLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and remembers the
/// original soft value for [`restore_nofile_in_child`]. Returns the limits
/// before and after.
pub fn raise_nofile_limit() -> io::Result<(NofileLimit, NofileLimit)> {
    let before = nofile_limit()?;
    if before.soft >= before.hard {
        return Ok((before, before));
    }
    let raised = libc::rlimit {
        rlim_cur: before.hard,
        rlim_max: before.hard,
    };
    // SAFETY: setrlimit only reads the valid struct passed to it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    ORIGINAL_NOFILE_SOFT.store(before.soft, Ordering::Relaxed);
    Ok((before, nofile_limit()?))
}

/// Makes the process `cmd` spawns start with the soft `RLIMIT_NOFILE` this
/// process had before [`raise_nofile_limit`] (a no-op if it never raised
/// it). The hard limit is left as it is.
pub fn restore_nofile_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let original = ORIGINAL_NOFILE_SOFT.load(Ordering::Relaxed);
    if original == u64::MAX {
        return;
    }
    let hook = move || -> io::Result<()> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: getrlimit and setrlimit are
        // plain syscalls on a struct on this stack frame; nothing is
        // allocated and no lock is taken.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            lim.rlim_cur = original.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes the two async-signal-safe syscalls above
    // and touches no memory shared with other threads, as required after
    // fork in a multi-threaded process.
    unsafe { cmd.pre_exec(hook) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_limit_is_readable() {
        let lim = nofile_limit().unwrap();
        assert!(lim.soft <= lim.hard, "{lim:?}");
    }
}
