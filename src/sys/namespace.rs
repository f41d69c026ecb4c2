//! Namespace syscalls for the pause process and its release: unshare, bind
//! mounts of nsfs files, detached unmounts, credentials inside a new user
//! namespace, signal waiting, pidfd signalling.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

pub use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// Moves the calling process into new namespaces of the given kinds (a new
/// pid namespace applies to the children forked afterwards).
pub fn unshare(flags: CloneFlags) -> io::Result<()> {
    nix::sched::unshare(flags).map_err(io::Error::from)
}

/// Bind-mounts `source` (e.g. `/proc/<pid>/ns/net`) onto the existing file
/// `target`, in the caller's mount namespace.
pub fn bind_mount(source: &Path, target: &Path) -> io::Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Detaches the mount at `target` (lazy unmount: busy users keep their
/// reference, the path is free at once).
pub fn detach_unmount(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Becomes uid 0 / gid 0 of the current user namespace (after its maps were
/// written). The group goes first, while the process still has the
/// privilege to change it.
pub fn become_namespace_root() -> io::Result<()> {
    use nix::unistd::{setresgid, setresuid, Gid, Uid};
    let root_gid = Gid::from_raw(0);
    setresgid(root_gid, root_gid, root_gid).map_err(io::Error::from)?;
    let root_uid = Uid::from_raw(0);
    setresuid(root_uid, root_uid, root_uid).map_err(io::Error::from)
}

/// The signals that end a pause process.
fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        set.add(sig);
    }
    set
}

/// Blocks SIGTERM, SIGINT and SIGQUIT so that they stay pending for
/// [`wait_for_termination_signal`]. Blocked signals are queued even for the
/// init of a pid namespace, which would otherwise drop them (it has no
/// handler), so this works for a pause process that is pid 1.
pub fn block_termination_signals() -> io::Result<()> {
    termination_signals()
        .thread_block()
        .map_err(io::Error::from)
}

/// Waits until SIGTERM, SIGINT or SIGQUIT arrives (blocked beforehand).
pub fn wait_for_termination_signal() -> io::Result<Signal> {
    termination_signals().wait().map_err(io::Error::from)
}

/// Restores an empty signal mask (for a forked child that must not inherit
/// the blocked set).
pub fn unblock_all_signals() -> io::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(io::Error::from)
}

/// Points stdin, stdout and stderr at /dev/null (a long-lived helper must
/// not hold its parent's pipes open).
pub fn stdio_to_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// Waits (blocking) until the child `pid` exits and reaps it.
pub fn wait_child(pid: u32) -> io::Result<super::process::Exit> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(super::process::Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(super::process::Exit::Signal(sig as i32))
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A connected pair of unix stream sockets (close-on-exec), for the pause
/// process and its helpers.
pub fn socket_pair() -> io::Result<(
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
)> {
    std::os::unix::net::UnixStream::pair()
}

/// Sends `signal` to one process.
pub fn signal_process(pid: u32, signal: Signal) -> io::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).map_err(io::Error::from)
}

/// Sends `signal` to every process of the process group `pgid`.
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal)
        .map_err(io::Error::from)
}

/// Sends `signal` to the process behind a pidfd (no pid reuse race).
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: Signal) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor we own (open for the
    // duration of the call), a signal number, a null siginfo pointer (the
    // kernel then fills in a default one) and zero flags; no memory of ours
    // is read or written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects a TCP socket to `127.0.0.1:port` inside the network namespace
/// at `netns` (an nsfs file such as `/proc/<pid>/ns/net`). The `setns`
/// happens on a short-lived thread of its own that only creates and
/// connects the socket: a socket keeps the namespace it was created in, so
/// the connection works from any thread afterwards while no other thread
/// (the control thread in particular) ever changes namespace. The thread
/// ends right after the connect, taking its namespace with it. The connect
/// gives up after `timeout` (a backend whose accept queue is full would
/// otherwise keep the thread for minutes of SYN retries).
pub fn connect_loopback_in_netns(
    netns: &Path,
    port: u16,
    timeout: std::time::Duration,
) -> tokio::sync::oneshot::Receiver<io::Result<std::net::TcpStream>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let netns = netns.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("ringmon-netns".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(&netns)?;
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&addr, timeout)
            })();
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        // The closure (and with it the sender) was dropped: report through
        // a fresh channel instead.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Err(e));
        return rx;
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounting_a_plain_file_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("ringmon-ns-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(detach_unmount(&file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
