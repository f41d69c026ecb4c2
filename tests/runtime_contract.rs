//! What reaches the runtime (exact argv, env vars), concurrency of calls on
//! one connection, and OOM reporting with a real memory-limited container.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A runtime wrapper that records its argv and environment, optionally
/// sleeps (to make `create` slow), then execs the real runtime.
fn wrapper(dir: &Path, real: &Path) -> PathBuf {
    let script = dir.join("runtime-wrapper");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {d}/argv.$$\nenv > {d}/env.$$\n[ -f {d}/slow ] && sleep 2\nexec {real} \"$@\"\n",
            d = dir.display(),
            real = real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The recorded files of the invocation whose argv contains `needle`.
fn recorded(dir: &Path, needle: &str) -> (Vec<String>, String) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("argv.") {
            let argv: Vec<String> = fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(String::from)
                .collect();
            if argv.iter().any(|a| a == needle) {
                let env = fs::read_to_string(dir.join(format!("env.{pid}"))).unwrap();
                return (argv, env);
            }
        }
    }
    panic!("no recorded runtime call with {needle}");
}

#[test]
fn argv_and_env_reach_the_runtime() {
    let real = &runtimes()[0];
    let rec = TempDir::new("rec");
    let server = Server::start(&wrapper(rec.path(), real));
    let dir = TempDir::new("argv");
    let id = container_id();
    let bundle = make_bundle(dir.path(), &["/bin/true"], false);
    let mut req = basic_request(dir.path(), &id, &bundle, false);
    req.env_vars = vec![("RINGMON_TEST_VAR".into(), "forty two".into())];
    req.global_args = vec!["--debug".into()];
    run_local(async {
        server.client().await.create_container(&req).await.unwrap();
    });
    let (argv, env) = recorded(rec.path(), "create");
    let b = bundle.display().to_string();
    assert_eq!(
        argv,
        [
            format!("--root={}", server.runtime_root.display()),
            "--debug".into(),
            "create".into(),
            "--bundle".into(),
            b.clone(),
            "--pid-file".into(),
            format!("{b}/pidfile"),
            id.clone(),
        ]
    );
    assert!(
        env.lines().any(|l| l == "RINGMON_TEST_VAR=forty two"),
        "{env}"
    );

    // The wire default cgroup manager (systemd) adds --systemd-cgroup.
    let id2 = container_id();
    let dir2 = TempDir::new("argv2");
    let bundle2 = make_bundle(dir2.path(), &["/bin/true"], false);
    let mut req2 = basic_request(dir2.path(), &id2, &bundle2, false);
    req2.cgroup_manager = 0;
    run_local(async {
        // Without systemd on the host the runtime may refuse; only the argv matters.
        let _ = server.client().await.create_container(&req2).await;
    });
    let (argv2, _) = recorded(rec.path(), &id2);
    assert!(argv2.iter().any(|a| a == "--systemd-cgroup"), "{argv2:?}");
    server.runtime_cmd(&["delete", "-f", &id]);
    server.runtime_cmd(&["delete", "-f", &id2]);
}

#[test]
fn slow_create_does_not_block_version_on_the_same_connection() {
    let real = &runtimes()[0];
    let rec = TempDir::new("slow");
    fs::write(rec.path().join("slow"), b"").unwrap();
    let server = Server::start(&wrapper(rec.path(), real));
    let dir = TempDir::new("slowc");
    let id = container_id();
    let bundle = make_bundle(dir.path(), &["/bin/true"], false);
    let req = basic_request(dir.path(), &id, &bundle, false);
    run_local(async {
        let c = server.client().await;
        let start = Instant::now();
        let create = async {
            let r = c.create_container(&req).await;
            (r, start.elapsed())
        };
        let version = async {
            // Give the create call a head start on the wire.
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.version(false).await.unwrap();
            start.elapsed()
        };
        let ((created, create_took), version_took) = futures::join!(create, version);
        created.unwrap();
        assert!(create_took >= Duration::from_secs(2), "{create_took:?}");
        assert!(
            version_took < create_took,
            "version ({version_took:?}) waited for create ({create_took:?})"
        );
    });
    server.runtime_cmd(&["delete", "-f", &id]);
}

#[test]
fn oom_kill_writes_empty_oom_file_before_exit_file() {
    if !Path::new("/sys/fs/cgroup/memory").exists()
        && !Path::new("/sys/fs/cgroup/memory.max").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        eprintln!("skipped: no memory cgroup controller");
        return;
    }
    for rt in runtimes() {
        eprintln!("--- runtime {}", rt.display());
        let server = Server::start(&rt);
        let dir = TempDir::new("oom");
        let id = container_id();
        let bundle = ringmon::fixture::make_bundle_with(
            dir.path(),
            &["/bin/tail", "/dev/zero"],
            false,
            Some(8 * 1024 * 1024),
        );
        let req = basic_request(dir.path(), &id, &bundle, false);
        run_local(async {
            server.client().await.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        assert_eq!(
            wait_for_file(&dir.path().join("exit"), Duration::from_secs(20)),
            b"137"
        );
        assert_eq!(
            fs::read(dir.path().join("oom")).expect("OOM file written before the exit file"),
            b""
        );
        server.runtime_cmd(&["delete", "-f", &id]);
    }
}
