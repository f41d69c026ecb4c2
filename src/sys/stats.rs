//! What the metrics report about this process and its threads: a thread's
//! CPU time read from another thread, resident memory, open descriptors.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::time::Duration;

/// CPU time the thread of `thread` has used so far, read through its
/// CPU-time clock (`pthread_getcpuclockid` + `clock_gettime`) from whichever
/// thread asks: the measured thread does nothing for it. Fails once the
/// thread has finished: its clock names it by kernel thread id, which
/// another thread may have taken since, so a reading taken after the
/// finish could be someone else's CPU time.
pub fn thread_cpu_time<T>(thread: &std::thread::JoinHandle<T>) -> io::Result<Duration> {
    let pthread = thread.as_pthread_t();
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread` names a thread that is not joined yet (we borrow its
    // JoinHandle, and joining consumes it), so its descriptor is valid;
    // `clock` is a writable clockid_t on our stack.
    let rc = unsafe { libc::pthread_getcpuclockid(pthread, &mut clock) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` only writes `now`, a writable timespec on our
    // stack. Any clock id is memory-safe to pass: one that names no thread
    // any more fails with EINVAL. That it may name a thread that reused our
    // thread's id is a wrong value, not unsafety, and is refused below.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Not finished after the reading means it was alive during it (the
    // flag is set before the kernel thread exits), so the clock was its.
    if thread.is_finished() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the thread has finished: its CPU clock may name another thread",
        ));
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// Resident set size of this process, in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/self/statm: no resident field in {statm:?}"),
            )
        })?;
    Ok(pages * page_size())
}

/// Descriptors this process has open (entries of `/proc/self/fd`, minus
/// the one that listing them takes).
pub fn open_fds() -> io::Result<u64> {
    let count = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok(count.saturating_sub(1))
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_has_cpu_time_and_the_process_has_memory_and_fds() {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut spins = 0u64;
            while stop_rx.try_recv().is_err() {
                spins = spins.wrapping_add(1);
                std::hint::black_box(spins);
            }
        });
        // A loaded machine may not schedule the spinner at once: poll
        // until it has used any CPU, with a generous deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut used = thread_cpu_time(&thread).unwrap();
        while used == Duration::ZERO && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            used = thread_cpu_time(&thread).unwrap();
        }
        assert!(used > Duration::ZERO, "{used:?}");
        stop_tx.send(()).unwrap();
        while !thread.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(thread_cpu_time(&thread).is_err(), "a finished thread");
        thread.join().unwrap();
        assert!(resident_bytes().unwrap() > 0);
        assert!(open_fds().unwrap() >= 3);
    }
}
