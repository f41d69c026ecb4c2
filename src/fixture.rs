//! Test and tool support: OCI bundles with a busybox-static rootfs, as the
//! integration tests and the measurement tools in `tools/` use them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Builds an OCI bundle whose rootfs holds busybox-static at /bin/busybox
/// (and /busybox) with the applets the tests use.
pub fn make_bundle(dir: &Path, args: &[&str], terminal: bool) -> PathBuf {
    make_bundle_with(dir, args, terminal, None)
}

/// Like [`make_bundle`], with a memory limit (bytes, swap included) for OOM
/// tests.
pub fn make_bundle_with(
    dir: &Path,
    args: &[&str],
    terminal: bool,
    memory_limit: Option<u64>,
) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (/usr/bin/busybox)");
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::hard_link(rootfs.join("bin/busybox"), rootfs.join("busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "head", "yes", "printf", "true", "false", "ls", "tail",
        "kill",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let args_json = args
        .iter()
        .map(|a| crate::version::json_string(a))
        .collect::<Vec<_>>()
        .join(",");
    let config = CONFIG_TEMPLATE
        .replace("@TERMINAL@", if terminal { "true" } else { "false" })
        .replace("@ARGS@", &args_json)
        .replace(
            "@RESOURCES@",
            &memory_limit.map_or(String::new(), |m| {
                format!("\"resources\": {{\"memory\": {{\"limit\": {m}, \"swap\": {m}}}}},")
            }),
        );
    fs::write(bundle.join("config.json"), config).unwrap();
    bundle
}

const CONFIG_TEMPLATE: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": @TERMINAL@,
    "user": {"uid": 0, "gid": 0},
    "args": [@ARGS@],
    "env": ["PATH=/bin", "TERM=xterm"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
      "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
      "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": false},
  "hostname": "ringmon-test",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    @RESOURCES@
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "maskedPaths": ["/proc/kcore", "/sys/firmware"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
  }
}"#;

/// Launches a ringmon server the way the conmon-rs Go client does (the
/// process forks, the parent writes `<run_dir>/pidfile` and exits) with its
/// own logs off, and returns the daemon's pid. Panics with the reason on
/// failure: this is tool and test support.
pub fn launch_server(binary: &Path, runtime: &Path, run_dir: &Path, runtime_root: &Path) -> u32 {
    let status = std::process::Command::new(binary)
        .arg("--runtime")
        .arg(runtime)
        .arg("--runtime-dir")
        .arg(run_dir)
        .arg("--runtime-root")
        .arg(runtime_root)
        .args(["--log-driver", "none", "--log-level", "off"])
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("launch {}: {e}", binary.display()));
    assert!(
        status.success(),
        "{} exited with {status}",
        binary.display()
    );
    let pidfile = run_dir.join("pidfile");
    fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("read {}: {e}", pidfile.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{} is not a bare pid: {e}", pidfile.display()))
}

/// The processes of the server `launch_server` returned: the pid it names
/// and, when that is a keeper (issue 16), the keeper's worker (its child
/// named `conmonrs`), which does all the work.
pub fn server_processes(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
    {
        let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
        if comm.trim_end() == "conmonrs" {
            pids.push(child);
        }
    }
    pids
}

/// A create request with one CRI log and one exit file, cgroupfs manager.
pub fn cri_request(
    id: &str,
    bundle: &Path,
    exit_file: &Path,
    log: &Path,
) -> crate::client::CreateRequest {
    crate::client::CreateRequest {
        id: id.to_string(),
        bundle_path: bundle.display().to_string(),
        exit_paths: vec![exit_file.display().to_string()],
        log_drivers: vec![crate::client::LogDriver {
            kind: 0,
            path: log.display().to_string(),
            max_size: 0,
        }],
        cgroup_manager: 1,
        ..Default::default()
    }
}

/// Deterministic xorshift64 pseudo-random numbers for test data (no extra
/// dependency). The seed must not be 0.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `bound` (> 0).
    pub fn below(&mut self, bound: u64) -> usize {
        (self.next_u64() % bound) as usize
    }
}
