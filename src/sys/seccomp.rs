//! A seccomp filter that makes the io_uring syscalls fail with `EPERM`, as
//! container runtimes' default profiles (Docker's since 2023, for one) do.
//! Used by `ringmon-without-io-uring` to show the engine's fallback to epoll
//! on a machine where io_uring itself works.

use std::io;

/// `AUDIT_ARCH_*` of the architecture this was built for: the filter allows
/// everything for any other architecture (it cannot know those numbers).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

const fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump_if_equal(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// Installs the filter for this thread and everything it executes (with
/// `no_new_privs` set, as an unprivileged filter requires).
pub fn deny_io_uring() -> io::Result<()> {
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let program = [
        statement(load, DATA_ARCH),
        jump_if_equal(AUDIT_ARCH, 0, 4), // other arch → allow
        statement(load, DATA_NR),
        jump_if_equal(libc::SYS_io_uring_setup as u32, 3, 0), // → deny
        jump_if_equal(libc::SYS_io_uring_enter as u32, 2, 0), // → deny
        jump_if_equal(libc::SYS_io_uring_register as u32, 1, 0), // → deny
        statement(ret, libc::SECCOMP_RET_ALLOW),
        statement(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fprog` points at `program`, a valid BPF program that outlives
    // the call; the kernel copies it.
    let installed = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if installed != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
