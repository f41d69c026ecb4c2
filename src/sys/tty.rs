//! Terminal controls for pty masters handed over by the runtime.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{tcgetattr, tcsetattr, OutputFlags, SetArg};

/// Prepares a pty master: non-blocking, and ONLCR so that `\n` written by the
/// container reads back as `\r\n` (what clients expect from a terminal).
pub fn prepare_master(fd: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let mut t = tcgetattr(fd.as_fd())?;
    t.output_flags |= OutputFlags::ONLCR;
    tcsetattr(fd.as_fd(), SetArg::TCSANOW, &t)?;
    Ok(())
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Sets the window size of a terminal (rows = height, cols = width).
pub fn set_window_size(fd: &impl AsFd, width: u16, height: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points
    // to a live stack value; the fd is borrowed for the duration of the call.
    unsafe { tiocswinsz(fd.as_fd().as_raw_fd(), &ws) }.map_err(io::Error::from)?;
    Ok(())
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The window size of a terminal as (width, height).
pub fn window_size(fd: &impl AsFd) -> io::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points to a live, writable stack value; the fd is borrowed for the
    // duration of the call.
    unsafe { tiocgwinsz(fd.as_fd().as_raw_fd(), &mut ws) }.map_err(io::Error::from)?;
    Ok((ws.ws_col, ws.ws_row))
}

/// A terminal in raw mode (no echo, no line editing, no signals from
/// keys), restored to its previous settings when dropped.
pub struct RawMode<Fd: AsFd> {
    fd: Fd,
    saved: nix::sys::termios::Termios,
}

impl<Fd: AsFd> RawMode<Fd> {
    /// Puts the terminal `fd` into raw mode.
    pub fn enter(fd: Fd) -> io::Result<RawMode<Fd>> {
        let saved = tcgetattr(fd.as_fd())?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        tcsetattr(fd.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl<Fd: AsFd> Drop for RawMode<Fd> {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}
