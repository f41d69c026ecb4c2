//! `ringmon-without-io-uring COMMAND [ARGS...]`: runs COMMAND with the
//! io_uring syscalls denied (`EPERM`) by a seccomp filter, the way a
//! container runtime's default profile denies them. Shows (and tests) that
//! `ringmon --io-backend auto` falls back to epoll and says why.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: ringmon-without-io-uring COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    if let Err(err) = ringmon::sys::seccomp::deny_io_uring() {
        eprintln!("ringmon-without-io-uring: install the seccomp filter: {err}");
        return ExitCode::from(1);
    }
    let err = Command::new(&program).args(args).exec();
    eprintln!(
        "ringmon-without-io-uring: run {}: {err}",
        program.to_string_lossy()
    );
    ExitCode::from(127)
}
