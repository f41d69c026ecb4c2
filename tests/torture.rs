//! Zero loss under abuse: containers write random-length lines of random
//! bytes (NULs, `\r`, invalid UTF-8 included) on both streams, exit with
//! output still in flight, get their log rotated every 100 ms while they
//! write flat out, or fill the log's filesystem. Every test reassembles the
//! CRI log and compares it with exactly what the container wrote.
//!
//! Sizes are CI-sized (`RINGMON_TORTURE_MIB`, default 16 MiB per stream);
//! the 1 GiB bursts run in `ringmon-sidebyside --bytes 1G`.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ringmon::fixture::Xorshift;

const EXIT_WAIT: Duration = Duration::from_secs(60);

/// About `total` bytes of lines of random length — mostly short, some
/// longer than any read buffer — of random bytes: NULs, `\r` and invalid
/// UTF-8 included, newlines only at line ends. Ends with a newline unless
/// `open_end`.
fn random_lines(seed: u64, total: usize, open_end: bool) -> Vec<u8> {
    let mut random = Xorshift(seed);
    let mut out = Vec::with_capacity(total + 1);
    while out.len() < total {
        let len = match random.below(200) {
            0 => 100_000 + random.below(300_000),
            1..=19 => random.below(8_000),
            _ => random.below(160),
        };
        for _ in 0..len {
            let byte = match random.below(16) {
                0 => 0,
                1 => b'\r',
                _ => (random.next_u64() >> 29) as u8,
            };
            out.push(if byte == b'\n' { 0xff } else { byte });
        }
        out.push(b'\n');
    }
    if open_end {
        out.extend_from_slice(b"no newline at the end");
    }
    out
}

fn torture_bytes() -> usize {
    std::env::var("RINGMON_TORTURE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(16)
        << 20
}

/// A bundle whose rootfs holds `files` (name, content) and runs `script`.
fn bundle_with_files(dir: &Path, script: &str, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let bundle = make_bundle(dir, &["/bin/sh", "-c", script], false);
    for (name, content) in files {
        fs::write(bundle.join("rootfs").join(name), content).unwrap();
    }
    bundle
}

fn create(server: &Server, dir: &Path, id: &str, bundle: &Path) {
    let req = basic_request(dir, id, bundle, false);
    run_local(async {
        server.client().await.create_container(&req).await.unwrap();
    });
}

/// Both streams at once, binary content, the stdout line left open at the
/// end, and an exit code that arrives while the pipes may still hold data.
#[test]
fn random_binary_lines_on_both_streams_are_logged_exactly() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("torture");
        let id = container_id();
        let total = torture_bytes();
        let out = random_lines(0x1234_5678_9abc_def1, total, true);
        let err = random_lines(0x0fed_cba9_8765_4321, total / 2, false);
        let bundle = bundle_with_files(
            dir.path(),
            "cat /out.bin & cat /err.bin >&2; wait; exit 7",
            &[("out.bin", &out), ("err.bin", &err)],
        );
        create(&server, dir.path(), &id, &bundle);
        server.start_container(&id);
        assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"7");
        let (log_out, log_err) = parse_cri(&fs::read(dir.path().join("ctr.log")).unwrap());
        assert_eq!(
            log_out.len(),
            out.len() + 1,
            "stdout bytes (+ closing line end)"
        );
        assert!(log_out == as_logged(&out), "stdout content differs");
        assert_eq!(log_err.len(), err.len(), "stderr bytes");
        assert!(log_err == err, "stderr content differs");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// kubelet-style rotation (rename, then reopenLogContainer) every 100 ms
/// while the container writes: the rotated files and the live one together
/// hold every byte once, in order.
#[test]
fn rotation_every_100ms_during_heavy_output_loses_and_duplicates_nothing() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("torture-rot");
        let id = container_id();
        let chunk = random_lines(0x5151_7373_9191_2323, 256 << 10, false);
        let rounds = (torture_bytes() / chunk.len()).max(16);
        // Paced so that the output spans many rotations.
        let script = format!(
            "i=0; while [ $i -lt {rounds} ]; do cat /chunk.bin; \
             /bin/busybox usleep 25000; i=$((i+1)); done"
        );
        let bundle = bundle_with_files(dir.path(), &script, &[("chunk.bin", &chunk)]);
        create(&server, dir.path(), &id, &bundle);
        server.start_container(&id);

        let log = dir.path().join("ctr.log");
        let exit = dir.path().join("exit");
        let mut rotated = Vec::new();
        run_local(async {
            let client = server.client().await;
            let deadline = Instant::now() + EXIT_WAIT;
            while !exit.exists() {
                assert!(Instant::now() < deadline, "container never exited");
                tokio::time::sleep(Duration::from_millis(100)).await;
                let name = dir.path().join(format!("ctr.log.{}", rotated.len()));
                match fs::rename(&log, &name) {
                    Ok(()) => rotated.push(name),
                    // The previous reopen came after the output's EOF (the
                    // container exited, its exit file not written yet: the
                    // logs are synced first), so it made no new file.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        assert!(wait_until(EXIT_WAIT, || exit.exists()), "{e}");
                        break;
                    }
                    Err(e) => panic!("rename {}: {e}", log.display()),
                }
                if let Err(err) = client.reopen_log(&id).await {
                    // The container ended between the check and the call:
                    // the file just renamed was its last.
                    assert!(err.to_string().contains("child not available"), "{err}");
                    assert!(wait_until(EXIT_WAIT, || exit.exists()), "{err}");
                    break;
                }
            }
        });
        assert_eq!(fs::read(&exit).unwrap(), b"0");
        let mut all = Vec::new();
        for file in rotated.iter().chain([&log]) {
            // No live file if the container ended right after a rename.
            if file != &log || log.exists() {
                all.extend_from_slice(&fs::read(file).unwrap());
            }
        }
        let (log_out, _) = parse_cri(&all);
        let want = chunk.repeat(rounds);
        assert!(rotated.len() >= 5, "only {} rotations", rotated.len());
        assert_eq!(
            log_out.len(),
            want.len(),
            "bytes over {} files",
            rotated.len() + 1
        );
        assert!(log_out == want, "content differs across rotations");
        server.runtime_cmd(&["delete", "-f", &id]);
    });
}

/// The log's filesystem fills up: the container never blocks, the monitor
/// stays up and says so, and logging resumes once space returns. What was
/// produced while the disk was full is lost (and counted in the server
/// log); the log stays parseable (a record torn by ENOSPC is terminated).
#[test]
fn a_full_log_filesystem_is_survived_and_logging_resumes() {
    let rt = &runtimes()[0];
    let dir = TempDir::new("torture-full");
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mount a 1 MiB tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    // Most of the space is taken; the test frees it later.
    let filler = mnt.join("filler");
    fs::write(&filler, vec![0u8; 900 << 10]).unwrap();

    let server_log = dir.path().join("server.log");
    let server = Server::start_logging_to(rt, &[], &server_log);
    let id = container_id();
    // ~2 KiB per 10 ms: the free 124 KiB are gone in well under a second.
    let script = "i=0; while [ $i -lt 400 ]; do \
                  printf 'line %05d %01000d\\n' $i 0; printf 'line %05d %01000d\\n' $i 1; \
                  /bin/busybox usleep 10000; i=$((i+1)); done; echo last line";
    let bundle = make_bundle(dir.path(), &["/bin/sh", "-c", script], false);
    let mut req = basic_request(dir.path(), &id, &bundle, false);
    req.log_drivers[0].path = mnt.join("ctr.log").display().to_string();
    run_local(async {
        server.client().await.create_container(&req).await.unwrap();
    });
    let started = Instant::now();
    server.start_container(&id);

    assert!(
        wait_until(Duration::from_secs(20), || {
            fs::read_to_string(&server_log)
                .map(|log| log.contains("No space left on device"))
                .unwrap_or(false)
        }),
        "the monitor never reported the full filesystem"
    );
    fs::remove_file(&filler).unwrap();
    assert_eq!(wait_for_file(&dir.path().join("exit"), EXIT_WAIT), b"0");
    // 400 rounds of 10 ms: had the container blocked on the full log it
    // would have taken far longer.
    assert!(started.elapsed() < Duration::from_secs(30));
    run_local(async {
        server.client().await.version(false).await.unwrap();
    });

    let log = fs::read(mnt.join("ctr.log")).unwrap();
    for line in log.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(line);
        let mut fields = text.splitn(4, ' ');
        let (_ts, stream, tag) = (fields.next(), fields.next(), fields.next());
        assert!(
            matches!(stream, Some("stdout" | "stderr")) && matches!(tag, Some("F" | "P")),
            "malformed CRI line {text:?}"
        );
    }
    let (out, _) = parse_cri(&log);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("line 00000 "), "the start is logged");
    assert!(
        out.ends_with("last line\n"),
        "logging resumed after space returned"
    );
    let server_text = fs::read_to_string(&server_log).unwrap();
    assert!(
        server_text.contains("logging resumed"),
        "the server log says logging resumed"
    );
    server.runtime_cmd(&["delete", "-f", &id]);
}
