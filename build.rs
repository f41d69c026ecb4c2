//! Compiles the wire schemas (v1 and the legacy request layouts) and records
//! the build facts `version` reports.
use std::process::Command;

fn main() {
    link_monitor_without_pie();
    capnpc::CompilerCommand::new()
        .src_prefix("rpc")
        .file("rpc/conmon.capnp")
        .file("rpc/conmon_legacy.capnp")
        .run()
        .expect("compiling rpc/*.capnp (is the capnp tool installed?)");

    let run = |prog: &str, args: &[&str]| -> String {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let commit = run("git", &["rev-parse", "HEAD"]);
    let tag = run("git", &["describe", "--tags", "--always", "--dirty"]);
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!(
        "cargo:rustc-env=RINGMON_COMMIT={}",
        if commit.is_empty() {
            "unknown".into()
        } else {
            commit
        }
    );
    println!("cargo:rustc-env=RINGMON_TAG={tag}");
    println!("cargo:rustc-env=RINGMON_BUILD_DATE={}", utc_date(secs));
    println!(
        "cargo:rustc-env=RINGMON_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=RINGMON_RUSTC_VERSION={}",
        run(&rustc, &["--version"])
    );
    println!(
        "cargo:rustc-env=RINGMON_CARGO_VERSION={}",
        run(&cargo, &["--version"])
    );
    println!("cargo:rustc-env=RINGMON_DEPENDENCIES={}", dependency_list());
    println!("cargo:rerun-if-changed=rpc/conmon.capnp");
    println!("cargo:rerun-if-changed=rpc/conmon_legacy.capnp");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // In a git worktree `.git` is a file: ask git where HEAD is, or every
    // build would rerun this script (a missing path counts as changed).
    let head = run("git", &["rev-parse", "--git-path", "HEAD"]);
    if !head.is_empty() && std::path::Path::new(&head).exists() {
        println!("cargo:rerun-if-changed={head}");
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, from Unix seconds (civil-from-days).
fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The resolved dependencies from Cargo.lock, one `name vX.Y.Z` per entry,
/// joined by `; ` (an environment variable holds one line). This stands in for
/// `cargo tree`, which cannot run inside a build script without fighting
/// cargo's own lock.
fn dependency_list() -> String {
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut out = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                out.push(format!("{n} v{}", v.trim_matches('"')));
            }
        }
    }
    out.join("; ")
}

/// Links the `ringmon` binary as a position-dependent executable unless
/// `RINGMON_PIE=1`. A position-independent one is relocated at every start:
/// the loader writes ~8,000 addresses into 130 KiB of `.data.rel.ro`, which
/// then is private memory in every monitor process (a C conmon-mode host
/// runs one per container). Linked at a fixed address those pages stay
/// clean and shared between all monitors. The cost: the binary's own code
/// is not randomized (libraries, heap, stack and mmaps still are); see
/// README, "Building". The objects stay position-independent code, so only
/// the link differs, and only for this binary.
fn link_monitor_without_pie() {
    println!("cargo:rerun-if-env-changed=RINGMON_PIE");
    let pie = std::env::var("RINGMON_PIE").is_ok_and(|value| value == "1");
    // glibc targets only: musl targets link static-pie, untried with this.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if !pie && os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=ringmon=-no-pie");
    }
}
