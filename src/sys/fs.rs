//! Files and directories at paths a client chose (log files, exit and OOM
//! files, attach sockets), reached without being led elsewhere by symlinks.
//!
//! The rule for symlinks:
//! - the final component is never followed (`O_NOFOLLOW`, or replaced as a
//!   whole by `rename`);
//! - a symlink in the directory chain is followed only when it is a *system
//!   symlink*: owned by root or by the server's own user, in a directory
//!   owned by root or the server's user that neither group nor others may
//!   write. Only those users can have made it or can replace it, so it
//!   points where an administrator meant it to (`/var/run -> /run`). Any
//!   other symlink in the chain is refused with an error naming it.
//!
//! The walk opens one component at a time with `openat(O_NOFOLLOW)` from the
//! directory it already holds, so a directory swapped for a symlink after
//! the check is refused, not followed. (`openat2(RESOLVE_NO_SYMLINKS)`
//! cannot express the system-symlink exception, and the walk needs no
//! kernel newer than 3.6.)

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fsync, unlinkat, UnlinkatFlags};

/// Most symlinks one walk follows (the kernel's own limit is 40, too).
const MAX_SYMLINKS: usize = 40;

/// How often a name is retried when a random temporary name is taken.
const TEMP_NAME_ATTEMPTS: usize = 8;

/// Flags of the directory handles the walk holds.
fn dir_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn error(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

fn os_error(what: &Path, e: Errno) -> io::Error {
    let io = io::Error::from(e);
    error(io.kind(), format!("'{}': {io}", what.display()))
}

/// Opens the directory `path` (an `O_PATH` handle) following only system
/// symlinks (see the module docs). With `create_mode`, missing directories
/// are created with that mode (before the umask).
pub fn open_dir(path: &Path, create_mode: Option<u32>) -> io::Result<OwnedFd> {
    let mut pending: Vec<OsString> = Vec::new();
    let mut dir = start_of(path, &mut pending)?;
    let mut walked = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        PathBuf::new()
    };
    let mut symlinks = 0;
    let mut created = false;
    // `pending` is a stack: the next component is at the end.
    while let Some(name) = pending.pop() {
        if name == ".." {
            dir =
                openat(&dir, "..", dir_flags(), Mode::empty()).map_err(|e| os_error(&walked, e))?;
            walked.pop();
            continue;
        }
        let here = walked.join(&name);
        match openat(&dir, name.as_os_str(), dir_flags(), Mode::empty()) {
            Ok(next) => {
                dir = next;
                walked = here;
                created = false;
            }
            Err(Errno::ENOENT) if create_mode.is_some() && !created => {
                let mode = Mode::from_bits_truncate(create_mode.unwrap_or(0o700));
                match mkdirat(&dir, name.as_os_str(), mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(os_error(&here, e)),
                }
                // Once: a name that vanishes again right away is an error.
                created = true;
                pending.push(name);
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let st = fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| os_error(&here, e))?;
                if !is_type(&st, SFlag::S_IFLNK) {
                    return Err(error(
                        io::ErrorKind::InvalidInput,
                        format!("'{}' is not a directory", here.display()),
                    ));
                }
                check_system_symlink(&dir, &st, &here)?;
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(error(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "'{}': more than {MAX_SYMLINKS} symlinks on the way",
                            path.display()
                        ),
                    ));
                }
                let target = readlinkat(&dir, name.as_os_str()).map_err(|e| os_error(&here, e))?;
                let target = Path::new(&target);
                if target.is_absolute() {
                    dir = start_of(target, &mut Vec::new())?;
                    walked = PathBuf::from("/");
                }
                push_components(target, &mut pending);
                created = false;
            }
            Err(e) => return Err(os_error(&here, e)),
        }
    }
    Ok(dir)
}

/// The directory a walk of `path` starts from (the root for an absolute
/// path, the working directory else), with its components pushed on
/// `pending`.
fn start_of(path: &Path, pending: &mut Vec<OsString>) -> io::Result<OwnedFd> {
    push_components(path, pending);
    let start = if path.is_absolute() { "/" } else { "." };
    openat(AT_FDCWD, start, dir_flags(), Mode::empty()).map_err(|e| os_error(Path::new(start), e))
}

/// Pushes the components of `path` so that the first one is popped first.
fn push_components(path: &Path, pending: &mut Vec<OsString>) {
    let names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(names.into_iter().rev());
}

fn is_type(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

fn type_name(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFIFO => "a FIFO",
        _ => "a device",
    }
}

/// Whether `uid` is trusted to place symlinks: root or the server's user.
fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Accepts the symlink `link` (described by `st`) in `dir` only if it is a
/// system symlink (module docs).
fn check_system_symlink(dir: &OwnedFd, st: &FileStat, link: &Path) -> io::Result<()> {
    let parent = fstat(dir).map_err(|e| os_error(link, e))?;
    let dir_writable_by_others = parent.st_mode & 0o022 != 0;
    if trusted_uid(st.st_uid) && trusted_uid(parent.st_uid) && !dir_writable_by_others {
        return Ok(());
    }
    Err(error(
        io::ErrorKind::PermissionDenied,
        format!(
            "'{}' is a symlink not made by root (owner uid {}, in a directory of uid {} \
             and mode {:o}); only system symlinks are followed",
            link.display(),
            st.st_uid,
            parent.st_uid,
            parent.st_mode & 0o7777
        ),
    ))
}

/// Splits a file path into its directory and its final name.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name,
        _ => {
            return Err(error(
                io::ErrorKind::InvalidInput,
                format!("'{}' does not end in a file name", path.display()),
            ))
        }
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((parent, name))
}

/// The error for a final component that is a symlink (`O_NOFOLLOW` says
/// ELOOP, which reads as "too many levels of symbolic links").
fn final_error(path: &Path, e: Errno) -> io::Error {
    if e == Errno::ELOOP {
        error(
            io::ErrorKind::InvalidInput,
            format!("'{}' is a symlink, which is never followed", path.display()),
        )
    } else {
        os_error(path, e)
    }
}

/// Opens the log file `path` for reading and writing, created with mode
/// 0600 or truncated, close-on-exec. Refused: a symlink as the final
/// component or a non-system symlink on the way (module docs), and anything
/// but a regular file. An existing file gets mode 0600 too.
pub fn open_log_file(path: &Path) -> io::Result<std::fs::File> {
    open_log_file_with(path, OFlag::O_RDWR | OFlag::O_TRUNC)
}

/// [`open_log_file`] without the truncation: the file is opened for
/// appending (`O_APPEND`), so what it holds stays and every write goes to
/// its end (the C conmon's log files, kept across a container's restarts).
pub fn open_log_file_appending(path: &Path) -> io::Result<std::fs::File> {
    open_log_file_with(path, OFlag::O_WRONLY | OFlag::O_APPEND)
}

/// [`open_log_file`] without the truncation, for reading and appending:
/// a resumed container's log (issue 16), whose tail is read back (and cut,
/// [`truncate_file`]) before writing goes on at its end.
pub fn open_log_file_resumed(path: &Path) -> io::Result<std::fs::File> {
    open_log_file_with(path, OFlag::O_RDWR | OFlag::O_APPEND)
}

/// Cuts `file` (at `path`, for the error) to `len` bytes.
pub fn truncate_file(file: &std::fs::File, len: u64, path: &Path) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| {
        error(
            io::ErrorKind::InvalidInput,
            format!("length {len} too large"),
        )
    })?;
    nix::unistd::ftruncate(file, len).map_err(|e| os_error(path, e))
}

fn open_log_file_with(path: &Path, mode_flags: OFlag) -> io::Result<std::fs::File> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent, None)?;
    let fd = openat(
        &dir,
        name,
        mode_flags | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| final_error(path, e))?;
    let st = fstat(&fd).map_err(|e| os_error(path, e))?;
    if !is_type(&st, SFlag::S_IFREG) {
        return Err(error(
            io::ErrorKind::InvalidInput,
            format!(
                "'{}' is {}, not a regular file",
                path.display(),
                type_name(&st)
            ),
        ));
    }
    if st.st_mode & 0o7777 != 0o600 {
        fchmod(&fd, Mode::from_bits_truncate(0o600)).map_err(|e| os_error(path, e))?;
    }
    Ok(std::fs::File::from(fd))
}

/// Writes `content` to `path` so that a reader sees the old file or the
/// whole new one, also after a crash: a temporary sibling with a random
/// name is created exclusively (`O_EXCL|O_NOFOLLOW`, `mode`), written and
/// fsynced, renamed over `path` (a symlink at `path` is replaced, never
/// followed), and the directory is fsynced so the rename is durable.
pub fn write_file_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent, None)?;
    let (tmp_name, fd) = create_temp(&dir, name, mode, path)?;
    let written = (|| {
        let mut file = std::fs::File::from(fd);
        file.write_all(content)
            .map_err(|e| error(e.kind(), format!("'{}': {e}", path.display())))?;
        fsync(&file).map_err(|e| os_error(path, e))?;
        renameat(&dir, tmp_name.as_os_str(), &dir, name).map_err(|e| os_error(path, e))
    })();
    if written.is_err() {
        let _ = unlinkat(&dir, tmp_name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return written;
    }
    sync_dir(&dir, parent)
}

/// Creates `.<name>.<random>.tmp` in `dir` exclusively.
fn create_temp(
    dir: &OwnedFd,
    name: &OsStr,
    mode: u32,
    path: &Path,
) -> io::Result<(OsString, OwnedFd)> {
    let mut last = Errno::EEXIST;
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{:016x}.tmp", random_u64()));
        match openat(
            dir,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => return Ok((tmp, fd)),
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(e) => return Err(os_error(&path.with_file_name(&tmp), e)),
        }
    }
    Err(os_error(path, last))
}

/// fsyncs the directory `dir` (an `O_PATH` handle, which fsync refuses, so
/// it is reopened for reading).
fn sync_dir(dir: &OwnedFd, shown: &Path) -> io::Result<()> {
    let readable = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| os_error(shown, e))?;
    fsync(&readable).map_err(|e| os_error(shown, e))
}

/// Removes `name` in `dir` if it is a socket (a stale one of an earlier
/// server); refuses anything else there, naming what it is.
pub fn remove_stale_socket(dir: &OwnedFd, name: &OsStr, shown: &Path) -> io::Result<()> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(os_error(shown, e)),
    };
    if !is_type(&st, SFlag::S_IFSOCK) {
        return Err(error(
            io::ErrorKind::AlreadyExists,
            format!(
                "'{}' exists and is {}, not a socket; only a stale socket is replaced",
                shown.display(),
                type_name(&st)
            ),
        ));
    }
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(os_error(shown, e)),
    }
}

/// Splits `path` into its directory, opened with [`open_dir`] (missing
/// directories created with `create_mode`), and its final name.
pub fn open_parent(path: &Path, create_mode: Option<u32>) -> io::Result<(OwnedFd, &OsStr)> {
    let (parent, name) = split(path)?;
    Ok((open_dir(parent, create_mode)?, name))
}

/// A private directory `.ringmon-<random>` (mode 0700) in `dir`, removed on
/// drop together with the names listed in `entries`.
pub struct PrivateDir<'a> {
    parent: &'a OwnedFd,
    name: OsString,
    dir: OwnedFd,
    entries: Vec<OsString>,
}

impl<'a> PrivateDir<'a> {
    pub fn create(parent: &'a OwnedFd, shown: &Path) -> io::Result<PrivateDir<'a>> {
        let mut last = Errno::EEXIST;
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let name = OsString::from(format!(".ringmon-{:016x}", random_u64()));
            match mkdirat(parent, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => {
                    let dir = openat(parent, name.as_os_str(), dir_flags(), Mode::empty());
                    let dir = match dir {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = unlinkat(parent, name.as_os_str(), UnlinkatFlags::RemoveDir);
                            return Err(os_error(shown, e));
                        }
                    };
                    return Ok(PrivateDir {
                        parent,
                        name,
                        dir,
                        entries: Vec::new(),
                    });
                }
                Err(Errno::EEXIST) => last = Errno::EEXIST,
                Err(e) => return Err(os_error(shown, e)),
            }
        }
        Err(os_error(shown, last))
    }

    /// The directory's handle.
    pub fn fd(&self) -> &OwnedFd {
        &self.dir
    }

    /// `name` in this directory as a path short enough for `sun_path`.
    pub fn short_path(&mut self, name: &str) -> PathBuf {
        self.entries.push(OsString::from(name));
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()))
    }
}

impl Drop for PrivateDir<'_> {
    fn drop(&mut self) {
        for e in &self.entries {
            let _ = unlinkat(&self.dir, e.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        let _ = unlinkat(
            self.parent.as_fd(),
            self.name.as_os_str(),
            UnlinkatFlags::RemoveDir,
        );
    }
}

/// 64 random bits for temporary names: [`super::random`], else time, pid
/// and a counter (names are created exclusively, so a guessable name can
/// only make a create retry, never redirect it).
fn random_u64() -> u64 {
    if let Ok(n) = super::random::u64() {
        return n;
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Makes the fifo `path` (`mode` before the umask) and opens it for reading
/// and writing, non-blocking and close-on-exec: holding both ends means
/// writers never see ENXIO and the reader never sees EOF (conmon's `ctl`
/// and `winsz`). A fifo already there (left by an earlier monitor of the
/// same container) is replaced; anything else there is refused, and a
/// symlink is never followed.
pub fn make_fifo(path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent, None)?;
    match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_type(&st, SFlag::S_IFIFO) => {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| os_error(path, e))?
        }
        Ok(st) => {
            return Err(error(
                io::ErrorKind::AlreadyExists,
                format!("'{}' is {}, not a fifo", path.display(), type_name(&st)),
            ))
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(os_error(path, e)),
    }
    nix::unistd::mkfifoat(&dir, name, Mode::from_bits_truncate(mode))
        .map_err(|e| os_error(path, e))?;
    openat(
        &dir,
        name,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| os_error(path, e))
}

/// Writes `content` to the file `path`, created with `mode` or truncated,
/// never through a symlink at the final component (a pidfile a client
/// named: a symlink there is refused, not followed).
pub fn write_file_nofollow(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent, None)?;
    let fd = openat(
        &dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(|e| final_error(path, e))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(content)
        .map_err(|e| error(e.kind(), format!("'{}': {e}", path.display())))
}

/// Points the symlink `link` at `target`, replacing a symlink already
/// there (conmon's `--socket-dir-path/<cuuid>` link to the bundle, left
/// behind by earlier monitors). Anything but a symlink at `link` is left
/// alone and reported as `AlreadyExists`.
pub fn replace_symlink(link: &Path, target: &Path) -> io::Result<()> {
    let (parent, name) = split(link)?;
    let dir = open_dir(parent, Some(0o755))?;
    match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_type(&st, SFlag::S_IFLNK) => {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| os_error(link, e))?
        }
        Ok(st) => {
            return Err(error(
                io::ErrorKind::AlreadyExists,
                format!("'{}' is {}", link.display(), type_name(&st)),
            ))
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(os_error(link, e)),
    }
    nix::unistd::symlinkat(target, &dir, name).map_err(|e| os_error(link, e))
}

/// Checks that `path` is a directory this process may create files in
/// (an exit or persist dir, before the container runs, so that a mistake
/// is reported at once rather than lost at the container's exit).
pub fn check_writable_dir(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(error(io::ErrorKind::InvalidInput, "not a directory".into()));
    }
    nix::unistd::access(
        path,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| error(io::Error::from(e).kind(), format!("not writable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ringmon-sysfs-{tag}-{}-{:x}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn atomic_write_replaces_a_symlink_and_leaves_no_temp_file() {
        let dir = scratch("atomic");
        let target = dir.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.join("exit");
        symlink(&target, &link).unwrap();
        write_file_atomic(&link, b"7", 0o644).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(&link).unwrap(), b"7");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn system_symlinks_are_followed_others_refused() {
        let dir = scratch("walk");
        std::fs::create_dir(dir.join("real")).unwrap();
        symlink(dir.join("real"), dir.join("mine")).unwrap();
        symlink("real", dir.join("relative")).unwrap();
        // Made by root in a directory only root writes: followed.
        open_dir(&dir.join("mine"), None).unwrap();
        open_dir(&dir.join("relative/../relative"), None).unwrap();
        // The same link in a directory others may write: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open_dir(&dir.join("mine"), None).unwrap_err().to_string();
        assert!(e.contains("mine") && e.contains("symlink"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A final component that is a symlink is never followed.
        std::fs::write(dir.join("real/file"), b"x").unwrap();
        symlink(dir.join("real/file"), dir.join("log")).unwrap();
        let e = open_log_file(&dir.join("log")).unwrap_err().to_string();
        assert!(e.contains("never followed"), "{e}");
        assert_eq!(std::fs::read(dir.join("real/file")).unwrap(), b"x");
        // Missing directories are created with the mode asked for.
        open_dir(&dir.join("a/b"), Some(0o700)).unwrap();
        let mode = std::fs::metadata(dir.join("a/b")).unwrap().mode() & 0o777;
        assert_eq!(mode & !0o700, 0, "{mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_files_get_mode_0600() {
        let dir = scratch("mode");
        let path = dir.join("x.log");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = open_log_file(&path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
