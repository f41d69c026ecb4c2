//! Readings from `/proc`, summed over every thread of a process.
//!
//! CPU comes from `/proc/PID/task/*/schedstat` (first field: nanoseconds on
//! the CPU, kept by the scheduler) rather than `utime`/`stime` of
//! `/proc/PID/stat`: those are sampled at the tick (4 ms at HZ=250), so a
//! monitor that wakes briefly thousands of times per second but is rarely
//! running when the tick fires shows almost nothing there.

use std::fs;
use std::path::Path;

/// Task ids of a process (its threads); empty if it is gone.
fn tasks(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Nanoseconds all threads of `pid` have spent on a CPU (threads that
/// already exited are not counted: the monitors keep theirs for life).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut seen = false;
    for task in tasks(pid) {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{task}/schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            total += ns;
            seen = true;
        }
    }
    seen.then_some(total)
}

/// Voluntary plus involuntary context switches of all threads of `pid`.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut seen = false;
    for task in tasks(pid) {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{task}/status")) else {
            continue;
        };
        for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
            if let Some(n) = field(&text, key) {
                total += n;
                seen = true;
            }
        }
    }
    seen.then_some(total)
}

/// The first number after `key` at the start of a line of `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A numeric field of `/proc/PID/status` (`VmRSS:`, `VmHWM:` in KiB,
/// `Threads:`); `None` once the process is gone or a zombie.
pub fn status_field(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&text, key)
}

/// Resident and proportional set size in KiB (`smaps_rollup`). PSS splits
/// pages shared between processes (the C conmon's glib and libc mappings)
/// among them, so summing PSS over many processes does not count shared
/// pages once per process as summing RSS does.
pub fn rss_pss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((field(&text, "Rss:")?, field(&text, "Pss:")?))
}

/// The direct children of `pid` whose `comm` is `name` (a ringmon keeper's
/// worker: `conmonrs`), listed from every thread's `children`.
pub fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for task in tasks(pid) {
        let Ok(list) = fs::read_to_string(format!("/proc/{pid}/task/{task}/children")) else {
            continue;
        };
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim_end() == name {
                found.push(child);
            }
        }
    }
    found
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS, so a later
/// `VmHWM` reading is the peak of what happened in between.
pub fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// Kernel memory that grows with processes, pipes, sockets and io_uring
/// instances, in KiB: `Slab + PageTables + KernelStack` of `/proc/meminfo`.
/// Machine-wide, so other activity shows up as noise; the tools compares the
/// monitors with a no-monitor baseline of the same containers.
pub fn kernel_memory_kib() -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    ["Slab:", "PageTables:", "KernelStack:"]
        .iter()
        .filter_map(|key| field(&text, key))
        .sum()
}

/// True while `pid` exists and has not exited (a zombie counts as exited).
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised comm, which may contain spaces.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("X");
    !matches!(state, "Z" | "X" | "x")
}

/// Reads the snapshot the C conmon's exit command wrote (see
/// [`write_parent_snapshot`]): `(cpu ns, peak RSS KiB)`.
pub fn read_snapshot(path: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

/// Runs as the C conmon's `--exit-command`: conmon forks this after it wrote
/// the exit file and waits for it, so its CPU time and peak RSS can still be
/// read from `/proc` (once conmon has exited, `VmHWM` is gone). Writes
/// `<cpu ns> <VmHWM KiB>` to `out` atomically.
pub fn write_parent_snapshot(out: &Path) -> std::io::Result<()> {
    let parent = std::os::unix::process::parent_id();
    let cpu = cpu_ns(parent).unwrap_or(0);
    let hwm = status_field(parent, "VmHWM:").unwrap_or(0);
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, format!("{cpu} {hwm}\n"))?;
    fs::rename(tmp, out)
}
