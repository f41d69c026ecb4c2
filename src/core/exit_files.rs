//! Exit and OOM files (spec §3.0.7, §3.2).

use std::io;
use std::path::PathBuf;

use crate::sys;

/// Mode of exit and OOM files (before the umask): readable by all, as the
/// exit code is no secret and readers may be other users (podman).
const EXIT_FILE_MODE: u32 = 0o644;

/// Writes `code` (decimal, no newline) to every path. Each file is written
/// to a temporary sibling with a random name (created exclusively, never
/// through a symlink), fsynced and renamed into place, and the directory is
/// fsynced: a reader never sees a partial file, and a crash never leaves an
/// empty one (which clients would read as exit 0). A symlink at a path is
/// replaced, not followed; a directory reached through a symlink other
/// than a system one is refused (`sys::fs`). Paths are written in reverse
/// order: the first one is the one clients watch (CRI-O's exits-dir entry),
/// and it appears only after every other one exists. Returns the paths that
/// failed, with the error.
pub fn write_exit_files(paths: &[PathBuf], code: i32) -> Vec<(PathBuf, io::Error)> {
    let content = code.to_string();
    paths
        .iter()
        .rev()
        .filter_map(|p| {
            sys::fs::write_file_atomic(p, content.as_bytes(), EXIT_FILE_MODE)
                .err()
                .map(|e| (p.clone(), e))
        })
        .collect()
}

/// Creates every OOM file empty, the same way as the exit files.
pub fn write_oom_files(paths: &[PathBuf]) -> Vec<(PathBuf, io::Error)> {
    paths
        .iter()
        .filter_map(|p| {
            sys::fs::write_file_atomic(p, b"", EXIT_FILE_MODE)
                .err()
                .map(|e| (p.clone(), e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn exit_files_hold_exact_code() {
        let dir = std::env::temp_dir().join(format!("ringmon-exit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let b = dir.join("b");
        let missing = dir.join("nope/c");
        let failed = write_exit_files(&[a.clone(), missing.clone(), b.clone()], -3);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, missing);
        assert_eq!(fs::read(&a).unwrap(), b"-3");
        assert_eq!(fs::read(&b).unwrap(), b"-3");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "no temp files left");
        assert!(write_oom_files(std::slice::from_ref(&a)).is_empty());
        assert_eq!(fs::read(&a).unwrap(), b"");
        fs::remove_dir_all(&dir).unwrap();
    }
}
