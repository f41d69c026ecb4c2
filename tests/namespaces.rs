//! createNamespaces (@6), the pause process and releaseNamespaces (@11)
//! through the real binary: real unshare, real nsfs bind mounts, and
//! containers of runc and crun joining the pinned namespaces.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    basic_request, binary, container_id, for_each_runtime, make_bundle, parse_cri, runtimes,
    wait_for_file, wait_until, Server, TempDir,
};
use ringmon::client::{CreateNamespacesRequest, PinnedNamespace};
use ringmon::conmon_capnp::conmon::Namespace;

const ORDER: [(Namespace, &str); 5] = [
    (Namespace::Ipc, "ipc"),
    (Namespace::Pid, "pid"),
    (Namespace::Net, "net"),
    (Namespace::User, "user"),
    (Namespace::Uts, "uts"),
];

/// Like `run_local`, returning the body's value.
fn run_local<T, F: std::future::Future<Output = T>>(f: F) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn pod_id() -> String {
    format!("pod-{}", ringmon::core::monitor::random_uuid())
}

/// Undoes whatever a test pinned, even when it fails half-way: unmounts and
/// deletes the five pins, kills the pause process, deletes its pid file.
/// Declared after the server, so it runs before the server's shutdown.
struct PinGuard {
    base: PathBuf,
    pod: String,
}

impl PinGuard {
    fn new(base: &Path, pod: &str) -> PinGuard {
        PinGuard {
            base: base.to_path_buf(),
            pod: pod.to_string(),
        }
    }
    fn pid_file(&self) -> PathBuf {
        self.base.join("conmonrs").join(format!("{}.pid", self.pod))
    }
    fn pin(&self, name: &str) -> PathBuf {
        self.base.join(format!("{name}ns")).join(&self.pod)
    }
    fn pause_pid(&self) -> u32 {
        fs::read_to_string(self.pid_file())
            .expect("pause pid file")
            .parse()
            .expect("pause pid file holds a bare pid")
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(pid) = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for (_, name) in ORDER {
            let pin = self.pin(name);
            let _ = ringmon::sys::namespace::detach_unmount(&pin);
            let _ = fs::remove_file(&pin);
        }
        let _ = fs::remove_file(self.pid_file());
    }
}

/// The `nsfs` mounts in our mount namespace whose mount point names `pod`.
fn mounts_of(pod: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("/{pod} ")) && l.contains(" nsfs "))
        .map(str::to_string)
        .collect()
}

fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn ns_inode(path: impl AsRef<Path>) -> u64 {
    fs::metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.as_ref().display()))
        .ino()
}

fn parent_pid(pid: u32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The reply lists all five namespaces in order, at `<base>/<x>ns/<pod>`,
/// each a real nsfs bind mount (file, size 0, mode 0444).
fn check_pins(pins: &[PinnedNamespace], base: &Path, pod: &str) {
    let kinds: Vec<_> = pins.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ORDER.map(|(k, _)| k), "reply order");
    for (pin, (_, name)) in pins.iter().zip(ORDER) {
        let path = Path::new(&pin.path);
        assert_eq!(path, base.join(format!("{name}ns")).join(pod));
        assert_eq!(path.file_name().unwrap(), pod);
        let meta = fs::symlink_metadata(path).unwrap();
        assert!(!meta.is_dir(), "{} is a directory", pin.path);
        assert_eq!(meta.len(), 0, "{} size", pin.path);
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o444,
            "{} mode",
            pin.path
        );
    }
    assert_eq!(mounts_of(pod).len(), 5, "five nsfs mounts");
}

/// Nothing of the pod is left: no mount, no pin file, no pid file, no pause
/// process (reaped by the server, or gone with it).
fn check_released(guard: &PinGuard, pause_pid: u32) {
    assert!(
        wait_until(Duration::from_secs(5), || process_gone(pause_pid)),
        "pause process {pause_pid} still running"
    );
    assert!(
        mounts_of(&guard.pod).is_empty(),
        "{:?}",
        mounts_of(&guard.pod)
    );
    for (_, name) in ORDER {
        assert!(
            !guard.pin(name).exists(),
            "{} left",
            guard.pin(name).display()
        );
    }
    assert!(!guard.pid_file().exists(), "pid file left");
}

fn request(pod: &str, base: &Path, namespaces: &[Namespace]) -> CreateNamespacesRequest {
    CreateNamespacesRequest {
        pod_id: pod.to_string(),
        base_path: base.display().to_string(),
        namespaces: namespaces.to_vec(),
        ..Default::default()
    }
}

fn any_runtime() -> PathBuf {
    runtimes().into_iter().next().expect("an OCI runtime")
}

#[test]
fn pod_id_only_pins_the_host_namespaces_under_var_run() {
    let server = Server::start(&any_runtime());
    let pod = pod_id();
    let guard = PinGuard::new(Path::new("/var/run"), &pod);
    let pause_pid = run_local(async {
        let c = server.client().await;
        // No base path on the wire: /var/run.
        let pins = c
            .create_namespaces(&CreateNamespacesRequest {
                pod_id: pod.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        check_pins(&pins, Path::new("/var/run"), &pod);
        let pause_pid = guard.pause_pid();
        for (_, name) in ORDER {
            assert_eq!(
                ns_inode(guard.pin(name)),
                ns_inode(format!("/proc/self/ns/{name}")),
                "{name} is the host's"
            );
        }
        c.release_namespaces(&pod, "").await.unwrap();
        pause_pid
    });
    check_released(&guard, pause_pid);
}

#[test]
fn ipc_net_pid_uts_are_new_and_held_by_the_pause_process() {
    let server = Server::start(&any_runtime());
    let dir = TempDir::new("ns");
    let base = dir.path().join("base");
    let pod = pod_id();
    let guard = PinGuard::new(&base, &pod);
    let requested = [
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Pid,
        Namespace::Uts,
    ];
    let pause_pid = run_local(async {
        let c = server.client().await;
        let pins = c
            .create_namespaces(&request(&pod, &base, &requested))
            .await
            .unwrap();
        check_pins(&pins, &base, &pod);
        guard.pause_pid()
    });
    // The pause process was handed to the server (its subreaper).
    assert_eq!(parent_pid(pause_pid), server.serving_pid());
    for (kind, name) in ORDER {
        let pinned = ns_inode(guard.pin(name));
        assert_eq!(
            pinned,
            ns_inode(format!("/proc/{pause_pid}/ns/{name}")),
            "{name} pin is the pause process's"
        );
        let host = ns_inode(format!("/proc/self/ns/{name}"));
        if requested.contains(&kind) {
            assert_ne!(pinned, host, "{name} is a new namespace");
        } else {
            assert_eq!(pinned, host, "{name} is the host's");
        }
    }
    // The pause process is pid 1 of the new pid namespace.
    let status = fs::read_to_string(format!("/proc/{pause_pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t1"), "{nspid}");

    // Shutdown releases before it exits.
    assert!(server.shutdown(), "server did not exit");
    check_released(&guard, pause_pid);
}

#[test]
fn all_five_with_a_user_namespace_and_a_custom_base_path() {
    let server = Server::start(&any_runtime());
    let dir = TempDir::new("ns");
    let base = dir.path().join("custom");
    let pod = pod_id();
    let guard = PinGuard::new(&base, &pod);
    let all = ORDER.map(|(k, _)| k);
    let pause_pid = run_local(async {
        let c = server.client().await;
        let mut req = request(&pod, &base, &all);
        req.uid_mappings = vec!["0 0 1".into()];
        req.gid_mappings = vec!["0 0 1".into()];
        let pins = c.create_namespaces(&req).await.unwrap();
        check_pins(&pins, &base, &pod);
        guard.pause_pid()
    });
    for (_, name) in ORDER {
        let pinned = ns_inode(guard.pin(name));
        assert_eq!(pinned, ns_inode(format!("/proc/{pause_pid}/ns/{name}")));
        assert_ne!(pinned, ns_inode(format!("/proc/self/ns/{name}")), "{name}");
    }
    assert_eq!(
        fs::read_to_string(format!("/proc/{pause_pid}/uid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "1"]
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{pause_pid}/gid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "1"]
    );
    // With a user namespace too, the pinned pid namespace is the one the
    // pause process is pid 1 of (conmon-rs pins the old one here).
    let status = fs::read_to_string(format!("/proc/{pause_pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t1"), "{nspid}");
    run_local(async {
        let c = server.client().await;
        c.release_namespaces(&pod, &base.display().to_string())
            .await
            .unwrap();
    });
    check_released(&guard, pause_pid);
}

#[test]
fn a_repeat_call_for_the_same_pod_reuses_its_pause_process() {
    let server = Server::start(&any_runtime());
    let dir = TempDir::new("ns");
    let base = dir.path().join("base");
    let pod = pod_id();
    let other = pod_id();
    let guard = PinGuard::new(&base, &pod);
    let other_guard = PinGuard::new(&base, &other);
    run_local(async {
        let c = server.client().await;
        let first = c
            .create_namespaces(&request(&pod, &base, &[Namespace::Net]))
            .await
            .unwrap();
        let pid = guard.pause_pid();
        let again = c
            .create_namespaces(&request(&pod, &base, &[Namespace::Net]))
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(guard.pause_pid(), pid);
        assert_eq!(mounts_of(&pod).len(), 5);
        // Another pod gets its own pause process and namespaces.
        c.create_namespaces(&request(&other, &base, &[Namespace::Net]))
            .await
            .unwrap();
        assert_ne!(other_guard.pause_pid(), pid);
        assert_ne!(ns_inode(guard.pin("net")), ns_inode(other_guard.pin("net")));
        // Released once; a second release knows nothing of it.
        c.release_namespaces(&pod, &base.display().to_string())
            .await
            .unwrap();
        let e = c
            .release_namespaces(&pod, &base.display().to_string())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("no namespaces pinned for pod '{pod}'")),
            "{e}"
        );
        check_released(&guard, pid);
        // The other pod is untouched until the shutdown.
        assert_eq!(mounts_of(&other).len(), 5);
    });
    let other_pid = other_guard.pause_pid();
    assert!(server.shutdown());
    check_released(&other_guard, other_pid);
}

#[test]
fn bad_requests_are_refused_with_the_field_and_value() {
    let server = Server::start(&any_runtime());
    let dir = TempDir::new("ns");
    let base = dir.path().join("base");
    let pod = pod_id();
    let _guard = PinGuard::new(&base, &pod);
    run_local(async {
        let c = server.client().await;
        let err = |req: CreateNamespacesRequest| {
            let c = &c;
            async move { c.create_namespaces(&req).await.unwrap_err().to_string() }
        };
        // The pod id is checked first.
        let mut req = request("", Path::new("relative"), &[Namespace::User]);
        req.uid_mappings = vec!["junk".into()];
        let e = err(req).await;
        assert!(e.contains("no pod ID provided"), "{e}");

        let e = err(request("a/b", &base, &[])).await;
        assert!(e.contains("invalid podId 'a/b'"), "{e}");
        let e = err(request(&pod, Path::new("relative/dir"), &[])).await;
        assert!(e.contains("invalid basePath 'relative/dir'"), "{e}");

        let e = err(request(&pod, &base, &[Namespace::User])).await;
        assert!(e.contains("user ID mappings are empty"), "{e}");
        let mut req = request(&pod, &base, &[Namespace::User]);
        req.uid_mappings = vec!["0 0 1".into()];
        let e = err(req).await;
        assert!(e.contains("group ID mappings are empty"), "{e}");

        let mut req = request(&pod, &base, &[Namespace::User]);
        req.uid_mappings = vec!["0 0 1".into()];
        req.gid_mappings = vec!["0 zero 1".into()];
        let e = err(req).await;
        assert!(e.contains("gid mapping '0 zero 1' has wrong format"), "{e}");

        // A failure inside the pause process reaches the caller with its
        // stderr: here the mapping does not map root.
        let mut req = request(&pod, &base, &[Namespace::User, Namespace::Net]);
        req.uid_mappings = vec!["1000 1000 1".into()];
        req.gid_mappings = vec!["1000 1000 1".into()];
        let e = err(req).await;
        assert!(
            e.contains(&format!("pause process for pod '{pod}' failed")),
            "{e}"
        );
        assert!(e.contains("become root in the user namespace"), "{e}");

        let e = c.release_namespaces("", "").await.unwrap_err().to_string();
        assert!(e.contains("no pod ID provided"), "{e}");
    });
    // Nothing was left by the failed calls.
    assert!(mounts_of(&pod).is_empty());
    assert!(!base.join("conmonrs").join(format!("{pod}.pid")).exists());
    for (_, name) in ORDER {
        assert!(!base.join(format!("{name}ns")).join(&pod).exists());
    }
}

/// A bundle whose container joins the pinned ipc, net and uts namespaces and
/// prints which namespaces it is in.
fn joining_bundle(dir: &Path, guard: &PinGuard) -> PathBuf {
    let bundle = make_bundle(
        dir,
        &[
            "/bin/sh",
            "-c",
            "for ns in net ipc uts; do readlink /proc/self/ns/$ns; done",
        ],
        false,
    );
    std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/readlink")).unwrap();
    let config_path = bundle.join("config.json");
    let config = fs::read_to_string(&config_path).unwrap();
    let own =
        r#""namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]"#;
    assert!(config.contains(own), "fixture namespaces changed");
    let joined = format!(
        r#""namespaces": [{{"type": "pid"}}, {{"type": "mount"}}, {{"type": "network", "path": "{}"}}, {{"type": "ipc", "path": "{}"}}, {{"type": "uts", "path": "{}"}}]"#,
        guard.pin("net").display(),
        guard.pin("ipc").display(),
        guard.pin("uts").display()
    );
    fs::write(&config_path, config.replace(own, &joined)).unwrap();
    bundle
}

#[test]
fn a_container_joins_the_pinned_namespaces() {
    for_each_runtime(|rt| {
        let server = Server::start(rt);
        let dir = TempDir::new("nsjoin");
        let base = dir.path().join("base");
        let pod = pod_id();
        let guard = PinGuard::new(&base, &pod);
        run_local(async {
            let c = server.client().await;
            c.create_namespaces(&request(
                &pod,
                &base,
                &[Namespace::Net, Namespace::Ipc, Namespace::Uts],
            ))
            .await
            .unwrap();
        });
        let id = container_id();
        let bundle = joining_bundle(dir.path(), &guard);
        let req = basic_request(dir.path(), &id, &bundle, false);
        run_local(async {
            let c = server.client().await;
            c.create_container(&req).await.unwrap();
        });
        server.start_container(&id);
        let exit = wait_for_file(&dir.path().join("exit"), Duration::from_secs(15));
        let log = fs::read(dir.path().join("ctr.log")).unwrap();
        let (out, err) = parse_cri(&log);
        server.runtime_cmd(&["delete", "-f", &id]);
        assert_eq!(exit, b"0", "stderr: {}", String::from_utf8_lossy(&err));
        let expected = format!(
            "net:[{}]\nipc:[{}]\nuts:[{}]\n",
            ns_inode(guard.pin("net")),
            ns_inode(guard.pin("ipc")),
            ns_inode(guard.pin("uts"))
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);
        assert_ne!(
            ns_inode(guard.pin("net")),
            ns_inode("/proc/self/ns/net"),
            "a new network namespace"
        );
        let pause_pid = guard.pause_pid();
        assert!(server.shutdown());
        check_released(&guard, pause_pid);
    });
}

#[test]
fn the_pause_subcommand_takes_its_environment_and_reports_errors_on_stderr() {
    let dir = TempDir::new("pausecli");
    let base = dir.path().join("env-base");
    let pod = pod_id();
    let guard = PinGuard::new(&base, &pod);
    // Base path and pod id from the environment; no server flags needed.
    let out = std::process::Command::new(binary())
        .args(["pause", "--net"])
        .env("CONMON_PAUSE_BASE_PATH", &base)
        .env("CONMON_PAUSE_POD_ID", &pod)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pause_pid = guard.pause_pid();
    assert_eq!(mounts_of(&pod).len(), 5);
    assert_ne!(ns_inode(guard.pin("net")), ns_inode("/proc/self/ns/net"));

    // The same pod again: refused before it touches anything.
    let out = std::process::Command::new(binary())
        .args(["pause", "--ipc", "--pod-id", &pod, "-p"])
        .arg(&base)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is already a mount point"), "{stderr}");
    assert_eq!(guard.pause_pid(), pause_pid, "pid file kept");

    let out = std::process::Command::new(binary())
        .args([
            "pause", "--pod-id", "other", "--user", "-u", "0 0 1", "-g", "0 0",
        ])
        .arg("--base-path")
        .arg(&base)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gid mapping '0 0' has wrong format"),
        "{stderr}"
    );

    drop(guard);
    assert!(wait_until(Duration::from_secs(5), || process_gone(
        pause_pid
    )));
    assert!(mounts_of(&pod).is_empty());
}

#[test]
fn a_namespace_list_past_the_bound_is_refused_before_anything_is_pinned() {
    let server = Server::start(&any_runtime());
    let dir = TempDir::new("ns-many");
    let base = dir.path().join("base");
    let pod = pod_id();
    run_local(async {
        let c = server.client().await;
        let err = c
            .create_namespaces(&request(&pod, &base, &vec![Namespace::Uts; 70_000]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid namespaces '70000 entries'") && err.contains("limit of 65536"),
            "{err}"
        );
        // The server is still serving, and nothing was made for the pod.
        c.version(false).await.unwrap();
    });
    assert!(!base.exists(), "{} was created", base.display());
}
