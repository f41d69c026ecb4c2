//! The `ringmon pause` process (spec §6.2): creates a pod's namespaces,
//! pins them with bind mounts and leaves a tiny process sleeping in them.
//! It runs before anything else in `main` (no tokio runtime, no engine, one
//! thread), so forking is safe.
//!
//! Shape: the pause process P forks a helper; the *pinner* (the process left
//! sleeping in the namespaces) reports "ready" over a socket pair; P writes
//! the pid file, bind-mounts `/proc/<pinner>/ns/<name>` onto
//! `<base>/<name>ns/<podId>` for ipc, pid, net, user, uts in that order, and
//! exits 0 (non-zero with a message on stderr on failure, after undoing what
//! it did).
//!
//! Without `--user`, P unshares the selected namespaces before forking, so
//! its child is the pinner (pid 1 of a new pid namespace). With `--user`,
//! the other namespaces must be owned by the new user namespace, so the
//! child unshares the user namespace, lets P write its gid and uid maps,
//! becomes root in it and unshares the rest; with `--pid` it then forks the
//! pinner, which is pid 1 of the new pid namespace (conmon-rs pins the
//! child's unchanged pid namespace there: its QUIRK in spec §6.2).
//!
//! The mounts are made by P in the server's mount namespace, also for
//! `--user`: the pins are real nsfs bind mounts on the host that containers
//! can join and that release and shutdown unmount (conmon-rs mounts from the
//! child's private mount namespace, leaving empty placeholder files on the
//! host).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::namespaces::{
    parse_mappings, pause_args, pid_file_path, pin_path, remove_pin, CreateNamespaces, IdMapping,
    Namespace, NamespaceError,
};
use crate::sys;
use crate::sys::namespace::CloneFlags;
use crate::sys::process::ForkResult;

/// Runs the pause process; returns its exit status. Errors are printed on
/// stderr, which the server appends to the RPC error.
pub fn main(req: &CreateNamespaces) -> i32 {
    match run(req) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringmon pause: {e}");
            1
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> NamespaceError {
    let context = context.into();
    move |e| NamespaceError::io(context, e)
}

fn run(req: &CreateNamespaces) -> Result<(), NamespaceError> {
    // The same checks as the server's, so a hand-run pause fails cleanly.
    pause_args(req)?;
    let user = req.wants(Namespace::User);
    let maps = if user {
        Some((
            parse_mappings("uid", &req.uid_mappings, NamespaceError::UidMappingsEmpty)?,
            parse_mappings("gid", &req.gid_mappings, NamespaceError::GidMappingsEmpty)?,
        ))
    } else {
        None
    };
    let flags = [
        Namespace::Ipc,
        Namespace::Pid,
        Namespace::Net,
        Namespace::Uts,
    ]
    .into_iter()
    .filter(|ns| req.wants(*ns))
    .fold(CloneFlags::empty(), |f, ns| f | ns.clone_flag());
    // Refuse before any side effect: overwriting the pid file of a live
    // pod would lose its pause process.
    for ns in Namespace::ALL {
        let target = pin_path(&req.base_path, ns, &req.pod_id);
        if is_mount_point(&target) {
            return Err(NamespaceError::AlreadyPinned(target));
        }
    }
    let (parent_end, child_end) =
        sys::namespace::socket_pair().map_err(io_err("create socket pair"))?;
    if !user {
        sys::namespace::unshare(flags).map_err(io_err(format!("unshare {flags:?}")))?;
    }
    match sys::process::fork_single_threaded().map_err(io_err("fork"))? {
        ForkResult::Child => {
            drop(parent_end);
            let mut sock = child_end;
            let code = match helper(&mut sock, user, flags) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ringmon pause (namespace helper): {e}");
                    1
                }
            };
            // The socket closes at exit, after the message: P reads EOF
            // only once the reason is on stderr.
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let mut pinner = None;
            let result = parent(req, child, parent_end, maps.as_ref(), &mut pinner);
            if result.is_err() {
                for pid in [Some(child), pinner].into_iter().flatten() {
                    let _ = sys::namespace::signal_process(pid, Signal::SIGKILL);
                }
            }
            result
        }
    }
}

/// P's side: maps, readiness, pid file, pins.
fn parent(
    req: &CreateNamespaces,
    child: u32,
    mut sock: UnixStream,
    maps: Option<&(Vec<IdMapping>, Vec<IdMapping>)>,
    pinner: &mut Option<u32>,
) -> Result<(), NamespaceError> {
    let lost = || NamespaceError::HelperLost {
        pod_id: req.pod_id.clone(),
    };
    if let Some((uids, gids)) = maps {
        match read_line(&mut sock)? {
            Some(l) if l == "userns" => {}
            Some(other) => return Err(NamespaceError::HelperProtocol(other)),
            None => return Err(lost()),
        }
        // gid_map first, as conmon-rs does; one write per file (the kernel
        // takes a map in a single write).
        write_map(child, "gid_map", gids)?;
        write_map(child, "uid_map", uids)?;
        send(&mut sock, "mapped")?;
    }
    let forks_pinner = maps.is_some() && req.wants(Namespace::Pid);
    if !forks_pinner {
        *pinner = Some(child);
    }
    let mut ready = false;
    while !ready || pinner.is_none() {
        match read_line(&mut sock)? {
            None => return Err(lost()),
            Some(l) if l == "ready" => ready = true,
            Some(l) if l.starts_with("pinner ") => {
                let pid = l["pinner ".len()..]
                    .parse()
                    .map_err(|_| NamespaceError::HelperProtocol(l.clone()))?;
                *pinner = Some(pid);
            }
            Some(other) => return Err(NamespaceError::HelperProtocol(other)),
        }
    }
    if forks_pinner {
        // The intermediate child exits once it forked the pinner.
        let _ = sys::namespace::wait_child(child);
    }
    let pinner = pinner.expect("set above");
    pin_all(req, pinner)?;
    // Written last, so that a failed pause never leaves (or overwrites) one.
    let pid_file = pid_file_path(&req.base_path, &req.pod_id);
    let written = pid_file
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::write(&pid_file, pinner.to_string()));
    if let Err(e) = written {
        for ns in Namespace::ALL {
            remove_pin(&pin_path(&req.base_path, ns, &req.pod_id));
        }
        let _ = fs::remove_file(&pid_file);
        return Err(NamespaceError::io(
            format!("write {}", pid_file.display()),
            e,
        ));
    }
    Ok(())
}

/// Bind-mounts every namespace of `pinner` onto its pin file, in the fixed
/// order; on failure the pins made so far are undone.
fn pin_all(req: &CreateNamespaces, pinner: u32) -> Result<(), NamespaceError> {
    let mut done: Vec<PathBuf> = Vec::new();
    for ns in Namespace::ALL {
        let target = pin_path(&req.base_path, ns, &req.pod_id);
        if let Err(e) = pin_one(ns, pinner, &target) {
            if !matches!(e, NamespaceError::AlreadyPinned(_)) {
                remove_pin(&target);
            }
            for path in &done {
                remove_pin(path);
            }
            return Err(e);
        }
        done.push(target);
    }
    Ok(())
}

fn pin_one(ns: Namespace, pinner: u32, target: &Path) -> Result<(), NamespaceError> {
    let dir = target.parent().expect("pin has a directory");
    fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    if is_mount_point(target) {
        return Err(NamespaceError::AlreadyPinned(target.to_path_buf()));
    }
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(target)
        .map_err(io_err(format!("create {}", target.display())))?;
    let source = PathBuf::from(format!("/proc/{pinner}/ns/{}", ns.name()));
    sys::namespace::bind_mount(&source, target).map_err(io_err(format!(
        "bind-mount {} on {}",
        source.display(),
        target.display()
    )))
}

/// Whether something is mounted on `path` (it lives on another device than
/// its directory); false if it does not exist.
fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Some(Ok(dir))) = (fs::metadata(path), path.parent().map(fs::metadata)) else {
        return false;
    };
    meta.dev() != dir.dev()
}

fn write_map(pid: u32, file: &str, maps: &[IdMapping]) -> Result<(), NamespaceError> {
    let path = format!("/proc/{pid}/{file}");
    let text: String = maps.iter().map(IdMapping::line).collect();
    fs::write(&path, &text).map_err(io_err(format!("write {path} ({:?})", text.trim_end())))
}

/// The forked side: the helper (with `--user`) and the pinner.
fn helper(sock: &mut UnixStream, user: bool, flags: CloneFlags) -> Result<(), NamespaceError> {
    if user {
        sys::namespace::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(io_err("unshare CLONE_NEWUSER"))?;
        send(sock, "userns")?;
        match read_line(sock)? {
            Some(l) if l == "mapped" => {}
            // P failed and says why on stderr.
            _ => std::process::exit(1),
        }
        sys::namespace::become_namespace_root().map_err(io_err(
            "become root in the user namespace (do the mappings map 0?)",
        ))?;
        sys::namespace::unshare(flags).map_err(io_err(format!("unshare {flags:?}")))?;
        if flags.contains(CloneFlags::CLONE_NEWPID) {
            // Only our children enter the new pid namespace: the pinner is
            // forked into it as its pid 1.
            match sys::process::fork_single_threaded().map_err(io_err("fork pinner"))? {
                ForkResult::Child => pin_and_wait(sock),
                ForkResult::Parent { child } => return send(sock, &format!("pinner {child}")),
            }
        }
    }
    pin_and_wait(sock)
}

/// Reports ready and sleeps until SIGTERM, SIGINT or SIGQUIT.
fn pin_and_wait(sock: &mut UnixStream) -> ! {
    // Holds no directory busy and no pipe of the server's open.
    let prepared = sys::namespace::block_termination_signals()
        .and_then(|()| std::env::set_current_dir("/"))
        .and_then(|()| sys::namespace::stdio_to_null());
    if let Err(e) = prepared {
        eprintln!("ringmon pause (pinner): {e}");
        std::process::exit(1);
    }
    if send(sock, "ready").is_err() {
        std::process::exit(1);
    }
    // The socket stays open: shutting it down would cut it for every
    // process sharing it (the helper may still have to send a line), and P
    // stops reading once it knows the pinner is ready.
    let _ = sys::namespace::wait_for_termination_signal();
    std::process::exit(0);
}

fn send(sock: &mut UnixStream, line: &str) -> Result<(), NamespaceError> {
    sock.write_all(format!("{line}\n").as_bytes())
        .map_err(io_err("write to namespace helper socket"))
}

/// Reads one `\n`-terminated line byte by byte (several processes share
/// the other end; nothing may be read ahead). `None` at EOF.
fn read_line(sock: &mut UnixStream) -> Result<Option<String>, NamespaceError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match sock.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' => {
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
            Ok(_) if line.len() < 256 => line.push(byte[0]),
            Ok(_) => {
                return Err(NamespaceError::HelperProtocol(
                    String::from_utf8_lossy(&line).into_owned(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(NamespaceError::io("read from namespace helper socket", e)),
        }
    }
}
