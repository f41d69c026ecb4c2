//! ringmon-latency: start-up and createContainer latency, measured end to
//! end against the real binary and a real runtime.
//!
//! 1. launch → `version` answers: run the binary as the Go client does
//!    (fork, parent exits, pidfile), then dial + `version` until it answers;
//!    the clock starts before the launch.
//! 2. createContainer minus bare `runtime create` on the same bundle: the
//!    same bundle is created (and force-deleted) alternately through ringmon
//!    and by running the runtime directly.
//!
//! Usage: ringmon-latency [--binary PATH] [--runtime PATH] [--runs N]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringmon::cli::LogLevel;
use ringmon::client::{Client, CreateRequest};
use ringmon::core::runtime::{CgroupManager, CreateArgs, RuntimeConfig};

struct Args {
    binary: PathBuf,
    runtime: PathBuf,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        binary: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ringmon")))
            .unwrap_or_else(|| PathBuf::from("ringmon")),
        runtime: PathBuf::from("/usr/sbin/runc"),
        runs: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--binary" => args.binary = val().into(),
            "--runtime" => args.runtime = val().into(),
            "--runs" => args.runs = val().parse().expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn launch(binary: &Path, runtime: &Path, run_dir: &Path) -> u32 {
    ringmon::fixture::launch_server(binary, runtime, run_dir, &run_dir.join("root"))
}

fn stop(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn connect_and_version(socket: &Path) -> Client {
    Client::connect_when_ready(socket, Duration::from_secs(10))
        .await
        .expect("ringmon answers on its socket")
}

fn main() {
    let args = parse_args();
    let base = std::env::temp_dir().join(format!("ringmon-latency-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        // 1. launch → version.
        let mut startup = Vec::new();
        for i in 0..args.runs {
            let run_dir = base.join(format!("launch-{i}"));
            let t = Instant::now();
            let pid = launch(&args.binary, &args.runtime, &run_dir);
            let c = connect_and_version(&run_dir.join("conmon.sock")).await;
            startup.push(t.elapsed());
            drop(c);
            stop(pid);
        }

        // 2. createContainer vs bare runtime create.
        let run_dir = base.join("create");
        let pid = launch(&args.binary, &args.runtime, &run_dir);
        let client = connect_and_version(&run_dir.join("conmon.sock")).await;
        let bundle = ringmon::fixture::make_bundle(&base, &["/bin/true"], false);
        let root = run_dir.join("root");
        let (mut ours, mut bare) = (Vec::new(), Vec::new());
        let runtime_config =
            RuntimeConfig::new(args.runtime.clone(), Some(root.clone()), LogLevel::Off);
        for i in 0..args.runs {
            let id = format!("latency-{}-{i}", std::process::id());
            let bare_run = |bare: &mut Vec<Duration>| {
                // Exactly the argv ringmon builds for this request.
                let argv = runtime_config.create_args(&CreateArgs {
                    id: &id,
                    bundle: &bundle,
                    pid_file: &bundle.join("pidfile"),
                    cgroup: CgroupManager::Cgroupfs,
                    global_args: &[],
                    command_args: &[],
                    console_socket: None,
                });
                let t = Instant::now();
                // The created container's init inherits these fds and keeps
                // them open: nothing here may wait for EOF on them.
                let status = Command::new(&args.runtime)
                    .args(&argv)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("runtime create");
                bare.push(t.elapsed());
                assert!(status.success(), "bare runtime create failed: {status}");
                delete(&args.runtime, &root, &id);
            };
            if i % 2 == 0 {
                bare_run(&mut bare);
            }
            let req = CreateRequest {
                id: id.clone(),
                bundle_path: bundle.display().to_string(),
                exit_paths: vec![base.join(format!("exit-{i}")).display().to_string()],
                log_drivers: vec![ringmon::client::LogDriver {
                    kind: 0,
                    path: base.join(format!("log-{i}")).display().to_string(),
                    max_size: 0,
                }],
                cgroup_manager: 1,
                ..Default::default()
            };
            let t = Instant::now();
            client
                .create_container(&req)
                .await
                .expect("createContainer");
            ours.push(t.elapsed());
            delete(&args.runtime, &root, &id);
        }
        stop(pid);

        let (s, o, b) = (median(&mut startup), median(&mut ours), median(&mut bare));
        println!("runtime: {}   runs: {}", args.runtime.display(), args.runs);
        println!("launch -> version answered (median): {}", ms(s));
        println!("createContainer via ringmon (median): {}", ms(o));
        println!("bare runtime create (median):        {}", ms(b));
        println!(
            "overhead (median difference):        {:+.2} ms",
            (o.as_secs_f64() - b.as_secs_f64()) * 1e3
        );
    });
    let _ = std::fs::remove_dir_all(&base);
}

fn delete(runtime: &Path, root: &Path, id: &str) {
    let _ = Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(["delete", "-f", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
