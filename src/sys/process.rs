//! Process-level syscalls: fork, subreaper, fd hygiene, pidfds, reaping,
//! signalling.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgid, Pid};

/// Which side of a fork we are on.
pub enum ForkResult {
    Parent { child: u32 },
    Child,
}

/// Forks the process. Must be called while the process has exactly one
/// thread (before the RPC runtime and the engine workers start): only the
/// calling thread survives in the child.
pub fn fork_single_threaded() -> io::Result<ForkResult> {
    // SAFETY: the caller guarantees no other thread exists, so no lock or
    // allocator state can be held by a thread that disappears in the child;
    // the child goes on running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(ForkResult::Child),
        child => Ok(ForkResult::Parent {
            child: child as u32,
        }),
    }
}

/// Closes every file descriptor above stderr that the process inherited.
/// Must run before the process opens descriptors of its own.
pub fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; no Rust object owns any
    // descriptor above 2 at this point of start-up (documented precondition).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.9: enumerate /proc/self/fd instead.
    let fds: Vec<RawFd> = fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: same precondition as above; the directory handle used for
        // the listing is closed already, so at worst this closes an fd that
        // is already closed (EBADF, ignored).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Makes orphaned descendants (container init after the runtime exits) our
/// children, so that we can reap them.
pub fn set_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Sets the process name (`comm`).
pub fn set_process_name(name: &std::ffi::CStr) -> io::Result<()> {
    nix::sys::prctl::set_name(name).map_err(io::Error::from)
}

/// Opens a pidfd for `pid` (Linux ≥ 5.3).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The exit code clients see: the status, or 128 + signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Reaps `pid` if it has exited. `Ok(None)`: still running (or stopped).
pub fn try_reap(pid: u32) -> io::Result<Option<Exit>> {
    match waitpid(
        Pid::from_raw(pid as i32),
        Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
    ) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(Exit::Code(code))),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(Exit::Signal(sig as i32))),
        Ok(_) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Whether `pid` (our child) has exited, without reaping it: the zombie
/// stays, so that its exit can be reported elsewhere first (the keeper,
/// issue 16) and a process that inherits it (after our death) can still
/// reap it. `Ok(None)`: still running.
pub fn peek_exit(pid: u32) -> io::Result<Option<Exit>> {
    match waitid(
        Id::Pid(Pid::from_raw(pid as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL,
    ) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(Exit::Code(code))),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(Exit::Signal(sig as i32))),
        Ok(_) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Reaps every exited direct child that `keep` does not claim. Tracked
/// children are left for their own watchers so that no exit status is
/// stolen. Children are listed from /proc/self/task/*/children.
pub fn reap_untracked(keep: impl Fn(u32) -> bool) -> usize {
    let mut reaped = 0;
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for task in tasks.flatten() {
        let Ok(list) = fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in list
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if !keep(pid) && matches!(try_reap(pid), Ok(Some(_))) {
                reaped += 1;
            }
        }
    }
    reaped
}

/// Sends `signal` to the process group of `pid` (unless it is our own
/// group or init's) and then to `pid` itself (spec §3.0.8).
pub fn kill_tree(pid: u32, signal: Signal) {
    let target = Pid::from_raw(pid as i32);
    if let Ok(pgid) = getpgid(Some(target)) {
        let own = getpgid(None).ok();
        if pgid.as_raw() > 1 && Some(pgid) != own {
            let _ = killpg(pgid, signal);
        }
    }
    let _ = kill(target, signal);
}

/// Whether a process with this pid exists.
pub fn process_exists(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Writes the OOM score adjustment for this process (inherited by children).
pub fn set_oom_score_adj(value: i32) -> io::Result<()> {
    fs::write("/proc/self/oom_score_adj", value.to_string())
}

/// Makes `fds[i]` descriptor number `3 + i` in the process `cmd` spawns
/// (close-on-exec cleared there), as OCI runtimes expect for
/// `--preserve-fds` (spec §3.0.3). Every other descriptor of ours stays
/// close-on-exec.
///
/// The descriptors are first duplicated to numbers at or above `3 + n`, so
/// that no source can be one of the target numbers and be overwritten by an
/// earlier `dup2` in the child. The duplicates live in the pre-exec closure
/// and are closed in the parent when `cmd` is dropped.
///
/// One limit of doing this through `std::process::Command`: if `execve` of
/// the runtime itself fails, std reports the error over a close-on-exec pipe
/// that may sit at one of the target numbers and so be replaced; the spawn
/// then looks successful and the runtime "exits 1". The runtime path is
/// checked at start-up, so this only matters if it vanishes later.
pub fn pass_fds_from_3(cmd: &mut std::process::Command, fds: Vec<OwnedFd>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if fds.is_empty() {
        return Ok(());
    }
    let first_free = 3 + fds.len() as RawFd;
    let sources = fds
        .iter()
        .map(|fd| {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(first_free))
                .map_err(io::Error::from)
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that
                // nothing else owns.
                .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    drop(fds);
    let hook = move || -> io::Result<()> {
        for (i, src) in sources.iter().enumerate() {
            // SAFETY: runs in the forked child before exec, where only
            // async-signal-safe calls are allowed: dup2 is one. `src` is an
            // open descriptor owned by the closure; the target number is
            // below every source, so no source is replaced. dup2 leaves the
            // new descriptor without FD_CLOEXEC, so it survives the exec.
            if unsafe { libc::dup2(src.as_raw_fd(), 3 + i as RawFd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only calls dup2 (async-signal-safe), allocates
    // nothing and touches no lock, as required after fork in a
    // multi-threaded process.
    unsafe { cmd.pre_exec(hook) };
    Ok(())
}

/// Starts a new session (and process group) led by this process, detached
/// from the caller's terminal and signals to its group.
pub fn new_session() -> io::Result<()> {
    nix::unistd::setsid()?;
    Ok(())
}

/// Stops being a child subreaper (before running a command whose own
/// children must not become ours).
pub fn clear_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(false)?;
    Ok(())
}

/// Makes the child that `cmd` spawns get SIGKILL when the thread that
/// spawns it (the monitor's only control thread) dies.
pub fn kill_with_parent_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let hook = || -> io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe, allocates
        // nothing and touches no lock, as required between fork and exec.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls prctl (see above).
    unsafe { cmd.pre_exec(hook) };
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Gives malloc's free pages back to the kernel (glibc's `malloc_trim`):
/// a monitor's resident memory then follows what it holds, not the
/// high-water mark of its last burst of allocations (reading a bundle's
/// `config.json`, running the runtime). A no-op on other C libraries.
pub fn return_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it only walks malloc's own
    // arenas under their locks and madvises free pages away.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops this process's page-table entries for the file pages it mapped
/// read-only and never changed (program text and read-only data of the
/// binary and its libraries): its resident set then counts only what it
/// touches afterwards. The pages stay in the page cache (other processes
/// of the same binary keep using them) and come back on the next access,
/// from the file, as a minor fault. For a long-lived process that ran much
/// code once (flag parsing, set-up) and little since: the keeper.
///
/// Only mappings that are private, not writable, backed by a file and hold
/// no anonymous (copy-on-write) page are dropped: a page the loader wrote
/// (relocations, then made read-only) must never be read back from the
/// file. Returns the bytes of the mappings dropped.
pub fn drop_clean_file_pages() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut dropped = 0;
    for mapping in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole mapping of this process that is
        // private, read-only and has no anonymous page (checked from smaps
        // just now; nothing in this single-threaded process maps or
        // changes mappings meanwhile): MADV_DONTNEED only drops its page
        // table entries, and every later access reads the same bytes back
        // from the unchanged file.
        let rc = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            dropped += (mapping.end - mapping.start) as u64;
        }
    }
    Ok(dropped)
}

/// A mapping's address range.
#[derive(Debug, PartialEq, Eq)]
pub struct MappingRange {
    pub start: usize,
    pub end: usize,
}

/// From `/proc/PID/smaps` text: the mappings that are private, not
/// writable, backed by a file (a path) and have `Anonymous: 0 kB` and
/// `Swap: 0 kB` (a mapping's block ends with `VmFlags:`). Pure.
pub fn clean_file_mappings(smaps: &str) -> Vec<MappingRange> {
    let mut found = Vec::new();
    let mut current: Option<MappingRange> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            current = None;
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let clean_perms = perms.len() == 4
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && perms.as_bytes()[0] == b'r';
            if clean_perms && path.starts_with('/') && end > start {
                current = Some(MappingRange { start, end });
            }
        } else if first == "Anonymous:" || first == "Swap:" {
            // A copy-on-write page in memory counts as Anonymous; one that
            // was swapped out only as Swap. Either rules the mapping out.
            let kib = fields.next().and_then(|v| v.parse::<u64>().ok());
            if kib != Some(0) {
                current = None;
            }
        } else if first == "VmFlags:" {
            // The last field of a mapping's block.
            if let Some(range) = current.take() {
                found.push(range);
            }
        }
    }
    found
}

/// Hands the whole pages inside `buffer` back to the kernel: they read as
/// zeros afterwards and cost no memory until written again. For a large
/// read buffer that a burst made resident and that is idle now. Only for
/// memory from the global allocator that nothing but its owner touches:
/// never for buffers registered with io_uring (the kernel would keep
/// writing into the pages it pinned, which the process then no longer
/// sees) or mapped from a file.
pub fn discard_pages(buffer: &mut Box<[u8]>) {
    // SAFETY: the range is `buffer`'s allocation (private anonymous memory
    // from the global allocator), which we borrow mutably; zero bytes are
    // valid `u8`s.
    unsafe { discard_range(buffer.as_mut_ptr(), buffer.len()) }
}

/// Hands the whole pages of `buffer`'s unused capacity back to the kernel
/// (see [`discard_pages`], whose restrictions apply); its contents and its
/// allocation are kept.
pub fn discard_spare_capacity(buffer: &mut Vec<u8>) {
    let spare = buffer.spare_capacity_mut();
    // SAFETY: the range is the vector's spare capacity, which we borrow
    // mutably and which holds no initialized element anyone may read.
    unsafe { discard_range(spare.as_mut_ptr().cast::<u8>(), spare.len()) }
}

/// `madvise(MADV_DONTNEED)` on the whole pages inside `[start, start+len)`.
///
/// # Safety
/// The range must be private anonymous memory (heap or anonymous mmap)
/// that the caller owns exclusively; afterwards it reads as zeros.
unsafe fn discard_range(start: *mut u8, len: usize) {
    let page = page_size();
    let first = (start as usize).next_multiple_of(page);
    let end = (start as usize + len) / page * page;
    if end <= first {
        return;
    }
    // SAFETY: [first, end) lies inside the caller's range (see above);
    // MADV_DONTNEED there only replaces those pages with zero-filled ones.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Signals delivered through a descriptor instead of a handler: they are
/// blocked for the (single-threaded) process and read one by one with
/// [`SignalReader::pending`]. Children inherit the blocked mask, so a process
/// started with [`spawn_current_exe`] unblocks everything but SIGTERM and
/// SIGINT before exec.
pub struct SignalReader {
    fd: nix::sys::signalfd::SignalFd,
}

impl SignalReader {
    /// Blocks `signals` and opens a non-blocking, close-on-exec signalfd
    /// for them. Must be called while the process has one thread (other
    /// threads would still take the signals).
    pub fn new(signals: &[Signal]) -> io::Result<SignalReader> {
        let mut mask = nix::sys::signal::SigSet::empty();
        for s in signals {
            mask.add(*s);
        }
        mask.thread_block().map_err(io::Error::from)?;
        let fd = nix::sys::signalfd::SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        Ok(SignalReader { fd })
    }

    /// The descriptor to poll for readability.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// The next pending signal number; `None` when none is pending.
    pub fn pending(&mut self) -> io::Result<Option<i32>> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Ok(Some(info.ssi_signo as i32)),
            Ok(None) => Ok(None),
            Err(nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reaps any one exited child (`waitpid(-1, WNOHANG|__WALL)`).
/// `Ok(None)`: no child has exited (or there are no children).
pub fn reap_any() -> io::Result<Option<(u32, Exit)>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                return Ok(Some((pid.as_raw() as u32, Exit::Code(code))))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                return Ok(Some((pid.as_raw() as u32, Exit::Signal(sig as i32))))
            }
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(None),
            // Stops and continues are not reported without WUNTRACED; a
            // ptrace event is not an exit: look again.
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends signal number `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let signal = Signal::try_from(signal).map_err(io::Error::from)?;
    kill(Pid::from_raw(pid as i32), signal).map_err(io::Error::from)
}

/// Makes this process get SIGKILL when its parent dies
/// (PR_SET_PDEATHSIG). Kept across exec; set again by a process that must
/// not outlive its parent, in case it was started some other way.
pub fn kill_with_parent() -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
}

/// The parent's pid.
pub fn parent_pid() -> u32 {
    nix::unistd::getppid().as_raw() as u32
}

/// Unblocks SIGTERM and SIGINT in this thread, which a process started
/// with [`spawn_current_exe`] begins with blocked. To be called once the
/// process handles them: one sent meanwhile is delivered now.
pub fn unblock_termination_signals() -> io::Result<()> {
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_unblock().map_err(io::Error::from)
}

/// Starts this binary again (`/proc/self/exe`) with `argv` (argv[0]
/// first), the environment plus `env`, and `inherit` passed on under the
/// same numbers (their close-on-exec flag is cleared in the child only; all
/// our other descriptors stay close-on-exec). In the child every signal but
/// SIGTERM and SIGINT is unblocked (our mask would be inherited; those two
/// stay blocked until it calls [`unblock_termination_signals`]) and SIGKILL
/// is its parent-death signal. Returns the child's pid; the caller reaps it (the returned
/// process is not waited for on drop).
pub fn spawn_current_exe(
    argv: &[std::ffi::OsString],
    inherit: &[std::os::fd::BorrowedFd<'_>],
    env: &[(&str, String)],
) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some((first, rest)) = argv.split_first() {
        cmd.arg0(first).args(rest);
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    let raw: Vec<RawFd> = inherit.iter().map(|fd| fd.as_raw_fd()).collect();
    let hook = move || -> io::Result<()> {
        for fd in &raw {
            // SAFETY: runs in the forked child before exec (async-signal-
            // safe calls only): fcntl(F_SETFD) only changes the flags of a
            // descriptor the parent keeps open for the whole spawn.
            if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Everything the keeper blocked for its signalfd is unblocked but
        // SIGTERM and SIGINT: until the new process has its own handler
        // for them (it then calls unblock_termination_signals), their
        // default action would kill it, and with it every container the
        // keeper holds. A pending one is delivered once it unblocks.
        // SAFETY: sigemptyset, sigaddset and sigprocmask only touch the
        // local set and this thread's mask; all are async-signal-safe.
        unsafe {
            let mut termination: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut termination);
            libc::sigaddset(&mut termination, libc::SIGTERM);
            libc::sigaddset(&mut termination, libc::SIGINT);
            if libc::sigprocmask(libc::SIG_SETMASK, &termination, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and takes no
        // memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls fcntl, sigprocmask and prctl (async-
    // signal-safe), allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(hook) };
    // The caller may have raised its descriptor limit: the new process
    // starts with the original one, which it hands on to what it starts.
    crate::sys::limits::restore_nofile_in_child(&mut cmd);
    let child = cmd.spawn()?;
    Ok(child.id())
}

/// Removes `name` from the environment. For the start of a process, while
/// it has one thread (edition 2021 still allows the call anywhere; the
/// rule is the C library's: no concurrent getenv).
pub fn remove_env_var(name: &str) {
    std::env::remove_var(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_file_mappings_are_private_read_only_files_without_anonymous_pages() {
        let smaps = "\
5600-5700 r--p 00000000 fd:01 42 /usr/bin/ringmon
Size:                 4 kB
Anonymous:            0 kB
Swap:                 0 kB
VmFlags: rd mr mw me
5700-5900 r-xp 00100000 fd:01 42 /usr/bin/ringmon
Anonymous:            0 kB
Swap:                 0 kB
VmFlags: rd ex mr mw me
5900-5a00 r--p 00300000 fd:01 42 /usr/bin/ringmon
Anonymous:            8 kB
Swap:                 0 kB
VmFlags: rd mr mw me
5980-59c0 r--p 00380000 fd:01 42 /usr/bin/ringmon
Anonymous:            0 kB
Swap:                 4 kB
VmFlags: rd mr mw me
5a00-5b00 rw-p 00400000 fd:01 42 /usr/bin/ringmon
Anonymous:            0 kB
Swap:                 0 kB
VmFlags: rd wr mr mw me
5b00-5c00 r-xs 00000000 fd:01 43 /dev/shm/x
Anonymous:            0 kB
VmFlags: rd ex sh mr mw me
5c00-5d00 r--p 00000000 00:00 0 [vvar]
Anonymous:            0 kB
VmFlags: rd mr
5d00-5e00 r--p 00000000 00:00 0
Anonymous:            0 kB
VmFlags: rd mr
";
        assert_eq!(
            clean_file_mappings(smaps),
            vec![
                MappingRange {
                    start: 0x5600,
                    end: 0x5700
                },
                MappingRange {
                    start: 0x5700,
                    end: 0x5900
                },
            ]
        );
    }

    #[test]
    fn discarded_pages_read_as_zeros_and_the_edges_are_kept() {
        let page = page_size();
        let mut buffer = vec![7u8; page * 4].into_boxed_slice();
        // An unaligned window: only the whole pages inside it go.
        // SAFETY: inside `buffer`, which this test owns.
        unsafe { discard_range(buffer.as_mut_ptr().add(page / 2), page * 3) };
        let start = buffer.as_ptr() as usize;
        for (index, &byte) in buffer.iter().enumerate() {
            let address = start + index;
            let first = (start + page / 2).next_multiple_of(page);
            let end = (start + page * 3 + page / 2) / page * page;
            let expected = if (first..end).contains(&address) {
                0
            } else {
                7
            };
            assert_eq!(byte, expected, "byte {index}");
        }
    }

    #[test]
    fn discarding_spare_capacity_keeps_the_contents_and_the_allocation() {
        let page = page_size();
        let mut buffer = Vec::with_capacity(page * 8);
        buffer.resize(page * 8, 9u8);
        buffer.truncate(page + 10);
        let capacity = buffer.capacity();
        discard_spare_capacity(&mut buffer);
        assert_eq!(buffer.capacity(), capacity);
        assert!(buffer.iter().all(|&byte| byte == 9));
    }
}
