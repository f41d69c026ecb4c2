//! Exit and OOM files (spec §3.0.7, §3.2).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `code` (decimal, no newline) to every path. Each file is written
/// to a temporary sibling and renamed into place, so a reader never sees a
/// partial file. Paths are written in reverse order: the first one is the
/// one clients watch (CRI-O's exits-dir entry), and it appears only after
/// every other one exists. Returns the paths that failed, with the error.
pub fn write_exit_files(paths: &[PathBuf], code: i32) -> Vec<(PathBuf, io::Error)> {
    let content = code.to_string();
    paths
        .iter()
        .rev()
        .filter_map(|p| {
            write_atomic(p, content.as_bytes())
                .err()
                .map(|e| (p.clone(), e))
        })
        .collect()
}

/// Creates every OOM file empty and syncs it.
pub fn write_oom_files(paths: &[PathBuf]) -> Vec<(PathBuf, io::Error)> {
    paths
        .iter()
        .filter_map(|p| {
            fs::File::create(p)
                .and_then(|f| f.sync_all())
                .err()
                .map(|e| (p.clone(), e))
        })
        .collect()
}

fn write_atomic(path: &Path, content: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
