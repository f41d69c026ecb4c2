//! Result rows, and their markdown tables, CSV, JSON and SVG renderings.

use std::fmt::Write as _;

/// One monitor at one line size (workload a).
#[derive(Clone, Debug, Default)]
pub struct ThroughputRow {
    pub monitor: String,
    pub line_size: u64,
    pub bytes: u64,
    pub runs: usize,
    /// MB/s (10^6 bytes) from the first byte seen in the log to completion.
    pub mbps: Option<f64>,
    /// MB/s from `runtime start` (or the producer's spawn) to completion.
    pub mbps_from_start: Option<f64>,
    pub cpu_s_per_gb: Option<f64>,
    pub peak_rss_kib: Option<f64>,
    pub exact: Option<bool>,
    pub error: Option<String>,
}

/// One monitor at one container count (workload b).
#[derive(Clone, Debug, Default)]
pub struct DensityRow {
    pub monitor: String,
    pub containers: usize,
    pub runs: usize,
    pub lines_per_s: Option<f64>,
    pub cpu_pct: Option<f64>,
    pub us_per_line: Option<f64>,
    pub ctx_per_s: Option<f64>,
    pub rss_per_ctr_kib: Option<f64>,
    pub pss_per_ctr_kib: Option<f64>,
    pub complete: Option<bool>,
    pub error: Option<String>,
}

/// One monitor holding idle containers (workload c).
#[derive(Clone, Debug, Default)]
pub struct IdleRow {
    pub monitor: String,
    pub containers: usize,
    pub runs: usize,
    pub rss_per_ctr_kib: Option<f64>,
    pub pss_per_ctr_kib: Option<f64>,
    /// (RSS with N containers − RSS with none) / N.
    pub marginal_rss_kib: Option<f64>,
    pub kernel_per_ctr_kib: Option<f64>,
    pub fds_per_ctr: Option<f64>,
    pub threads_empty: Option<f64>,
    pub threads_full: Option<f64>,
    pub error: Option<String>,
}

/// One monitor per pod, one container per pod (workload d, CRI-O's model).
#[derive(Clone, Debug, Default)]
pub struct PodsRow {
    pub monitor: String,
    pub pods: usize,
    pub runs: usize,
    /// Idle readings of the monitor process(es) of a pod, mean per pod.
    pub rss_per_pod_kib: Option<f64>,
    pub pss_per_pod_kib: Option<f64>,
    pub threads_per_pod: Option<f64>,
    pub fds_per_pod: Option<f64>,
    /// Launch → `version` answering, over every launch (servers only).
    pub ready_ms_median: Option<f64>,
    pub ready_ms_p95: Option<f64>,
    /// Launch (or spawn) → the pod's container created.
    pub created_ms_median: Option<f64>,
    pub created_ms_p95: Option<f64>,
    /// Logging phase.
    pub lines_per_s: Option<f64>,
    pub us_per_line: Option<f64>,
    pub ctx_per_line: Option<f64>,
    pub pss_logging_per_pod_kib: Option<f64>,
    pub complete: Option<bool>,
    pub error: Option<String>,
}

/// Everything one invocation measured.
#[derive(Default)]
pub struct Report {
    pub command: String,
    pub environment: Vec<(String, String)>,
    pub throughput: Vec<ThroughputRow>,
    pub density: Vec<DensityRow>,
    pub idle: Vec<IdleRow>,
    pub pods: Vec<PodsRow>,
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".to_string(), |x| format!("{x:.decimals$}"))
}

fn mib(kib: Option<f64>, decimals: usize) -> String {
    num(kib.map(|k| k / 1024.0), decimals)
}

fn flag(v: Option<bool>) -> String {
    v.map_or_else(
        || "—".to_string(),
        |b| if b { "yes" } else { "**NO**" }.to_string(),
    )
}

/// Human size: 100 B, 1 KiB, 64 KiB, 1 MiB.
pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// A markdown table under `header` (one line of cells): per row its leading
/// cells and, unless it failed, its metric cells from `metrics`; a failed
/// row shows its reason instead. Ends with a blank line.
fn table<'r, R>(
    header: &str,
    rows: &'r [R],
    lead: impl Fn(&'r R) -> (Vec<String>, Option<&'r str>),
    metrics: impl Fn(&'r R) -> Vec<String>,
) -> String {
    let columns = header.matches('|').count().saturating_sub(1);
    let mut md = format!("{header}\n|{}\n", "---|".repeat(columns));
    for r in rows {
        let (cells, error) = lead(r);
        let _ = write!(md, "| {} |", cells.join(" | "));
        match error {
            Some(e) => md.push_str(&failed(e, columns - cells.len())),
            None => {
                for cell in metrics(r) {
                    let _ = write!(md, " {cell} |");
                }
            }
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

/// A failed row shows its reason in the first metric column.
fn failed(error: &str, columns: usize) -> String {
    let mut s = format!(" failed: {} |", error.replace('|', "/"));
    for _ in 1..columns {
        s.push_str(" — |");
    }
    s
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "```sh\n{}\n```\n", self.command);
        for (k, v) in &self.environment {
            let _ = writeln!(md, "- {k}: {v}");
        }
        md.push('\n');
        if !self.throughput.is_empty() {
            md.push_str(&self.throughput_table());
        }
        if !self.density.is_empty() {
            md.push_str(&self.density_table());
        }
        if !self.idle.is_empty() {
            md.push_str(&self.idle_table());
        }
        if !self.pods.is_empty() {
            md.push_str(&self.pods_tables());
        }
        md
    }

    fn pods_tables(&self) -> String {
        let runs = self.pods[0].runs;
        let pair = |a: Option<f64>, b: Option<f64>, decimals: usize| match (a, b) {
            (None, None) => "n/a".to_string(),
            (a, b) => format!("{} / {}", num(a, decimals), num(b, decimals)),
        };
        fn lead(r: &PodsRow) -> (Vec<String>, Option<&str>) {
            (
                vec![r.monitor.clone(), r.pods.to_string()],
                r.error.as_deref(),
            )
        }
        let mut md = format!(
            "### Density per pod, idle: one monitor per pod, one container each, median of {runs} runs\n\n"
        );
        md.push_str(&table(
            "| monitor | pods | PSS per pod KiB | RSS per pod KiB | threads per pod | fds per pod | launch → `version` ms (median / p95) | launch → container created ms (median / p95) |",
            &self.pods,
            lead,
            |r| {
                vec![
                    num(r.pss_per_pod_kib, 0),
                    num(r.rss_per_pod_kib, 0),
                    num(r.threads_per_pod, 1),
                    num(r.fds_per_pod, 1),
                    pair(r.ready_ms_median, r.ready_ms_p95, 2),
                    pair(r.created_ms_median, r.created_ms_p95, 1),
                ]
            },
        ));
        md.push_str(
            "The per-container monitors have no RPC to ask, so no launch → `version` time: their first \
             answer is the container pid on the sync pipe, after `runtime create`, which is the last column.\n\n",
        );
        let _ = writeln!(
            md,
            "### Density per pod, logging: 100-byte lines in paced bursts, median of {runs} runs\n"
        );
        md.push_str(&table(
            "| monitor | pods | lines/s logged | µs CPU per line | context switches per line | PSS per pod KiB while logging | every log complete |",
            &self.pods,
            lead,
            |r| {
                vec![
                    num(r.lines_per_s, 0),
                    num(r.us_per_line, 2),
                    num(r.ctx_per_line, 3),
                    num(r.pss_logging_per_pod_kib, 0),
                    flag(r.complete),
                ]
            },
        ));
        md
    }

    fn throughput_table(&self) -> String {
        let r0 = &self.throughput[0];
        let mut md = format!(
            "### Throughput: {:.0} MiB of fixed-size lines, median of {} runs\n\n",
            r0.bytes as f64 / f64::from(1 << 20),
            r0.runs
        );
        md.push_str(&table(
            "| monitor | line size | MB/s (first byte → done) | MB/s (start → done) | monitor CPU s/GB | monitor peak RSS MiB | log byte-exact |",
            &self.throughput,
            |r| (vec![r.monitor.clone(), size_label(r.line_size)], r.error.as_deref()),
            |r| {
                vec![
                    num(r.mbps, 0),
                    num(r.mbps_from_start, 0),
                    num(r.cpu_s_per_gb, 3),
                    mib(r.peak_rss_kib, 1),
                    flag(r.exact),
                ]
            },
        ));
        md
    }

    fn density_table(&self) -> String {
        let mut md = format!(
            "### Density, logging: 100-byte lines in paced bursts, median of {} runs\n\n",
            self.density[0].runs
        );
        md.push_str(&table(
            "| monitor | containers | lines/s logged | monitor CPU % of a core | µs CPU per line | context switches/s | RSS per container KiB | PSS per container KiB | every log complete |",
            &self.density,
            |r| (vec![r.monitor.clone(), r.containers.to_string()], r.error.as_deref()),
            |r| {
                vec![
                    num(r.lines_per_s, 0),
                    num(r.cpu_pct, 2),
                    num(r.us_per_line, 2),
                    num(r.ctx_per_s, 0),
                    num(r.rss_per_ctr_kib, 0),
                    num(r.pss_per_ctr_kib, 0),
                    flag(r.complete),
                ]
            },
        ));
        md
    }

    fn idle_table(&self) -> String {
        let mut md = format!(
            "### Density, idle: `sleep` containers, median of {} runs\n\n",
            self.idle[0].runs
        );
        let baseline = self
            .idle
            .iter()
            .find(|r| r.monitor == crate::NO_MONITOR && r.error.is_none())
            .and_then(|r| r.kernel_per_ctr_kib);
        md.push_str(&table(
            "| monitor | containers | RSS per container KiB | PSS per container KiB | marginal RSS per container KiB | kernel memory per container KiB | kernel above no monitor KiB | fds per container | threads (0 → N containers) |",
            &self.idle,
            |r| (vec![r.monitor.clone(), r.containers.to_string()], r.error.as_deref()),
            |r| {
                let above = match (r.kernel_per_ctr_kib, baseline) {
                    (Some(k), Some(b)) if r.monitor != crate::NO_MONITOR => Some(k - b),
                    _ => None,
                };
                let threads = match (r.threads_empty, r.threads_full) {
                    (None, None) => "—".to_string(),
                    (a, b) => format!("{} → {}", num(a, 0), num(b, 0)),
                };
                vec![
                    num(r.rss_per_ctr_kib, 0),
                    num(r.pss_per_ctr_kib, 0),
                    num(r.marginal_rss_kib, 0),
                    num(r.kernel_per_ctr_kib, 0),
                    num(above, 0),
                    num(r.fds_per_ctr, 1),
                    threads,
                ]
            },
        ));
        md
    }

    pub fn throughput_csv(&self) -> String {
        let mut s = String::from("monitor,line_size,bytes,runs,mbps_first_byte,mbps_from_start,cpu_s_per_gb,peak_rss_kib,byte_exact,error\n");
        for r in &self.throughput {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{}",
                csv(&r.monitor),
                r.line_size,
                r.bytes,
                r.runs,
                opt(r.mbps),
                opt(r.mbps_from_start),
                opt(r.cpu_s_per_gb),
                opt(r.peak_rss_kib),
                r.exact.map_or(String::new(), |b| b.to_string()),
                csv(r.error.as_deref().unwrap_or(""))
            );
        }
        s
    }

    pub fn density_csv(&self) -> String {
        let mut s = String::from("monitor,containers,runs,lines_per_s,cpu_pct,us_per_line,ctx_switches_per_s,rss_per_ctr_kib,pss_per_ctr_kib,complete,error\n");
        for r in &self.density {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{}",
                csv(&r.monitor),
                r.containers,
                r.runs,
                opt(r.lines_per_s),
                opt(r.cpu_pct),
                opt(r.us_per_line),
                opt(r.ctx_per_s),
                opt(r.rss_per_ctr_kib),
                opt(r.pss_per_ctr_kib),
                r.complete.map_or(String::new(), |b| b.to_string()),
                csv(r.error.as_deref().unwrap_or(""))
            );
        }
        s
    }

    pub fn idle_csv(&self) -> String {
        let mut s = String::from("monitor,containers,runs,rss_per_ctr_kib,pss_per_ctr_kib,marginal_rss_kib,kernel_per_ctr_kib,fds_per_ctr,threads_empty,threads_full,error\n");
        for r in &self.idle {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{}",
                csv(&r.monitor),
                r.containers,
                r.runs,
                opt(r.rss_per_ctr_kib),
                opt(r.pss_per_ctr_kib),
                opt(r.marginal_rss_kib),
                opt(r.kernel_per_ctr_kib),
                opt(r.fds_per_ctr),
                opt(r.threads_empty),
                opt(r.threads_full),
                csv(r.error.as_deref().unwrap_or(""))
            );
        }
        s
    }

    pub fn pods_csv(&self) -> String {
        let mut s = String::from("monitor,pods,runs,rss_per_pod_kib,pss_per_pod_kib,threads_per_pod,fds_per_pod,launch_to_version_ms_median,launch_to_version_ms_p95,launch_to_created_ms_median,launch_to_created_ms_p95,lines_per_s,us_per_line,ctx_switches_per_line,pss_logging_per_pod_kib,complete,error\n");
        for r in &self.pods {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                csv(&r.monitor),
                r.pods,
                r.runs,
                opt(r.rss_per_pod_kib),
                opt(r.pss_per_pod_kib),
                opt(r.threads_per_pod),
                opt(r.fds_per_pod),
                opt(r.ready_ms_median),
                opt(r.ready_ms_p95),
                opt(r.created_ms_median),
                opt(r.created_ms_p95),
                opt(r.lines_per_s),
                opt(r.us_per_line),
                opt(r.ctx_per_line),
                opt(r.pss_logging_per_pod_kib),
                r.complete.map_or(String::new(), |b| b.to_string()),
                csv(r.error.as_deref().unwrap_or(""))
            );
        }
        s
    }

    pub fn json(&self) -> String {
        let js = |s: &str| ringmon::version::json_string(s);
        let jn = |v: Option<f64>| v.map_or("null".to_string(), |x| format!("{x}"));
        let jb = |v: Option<bool>| v.map_or("null".to_string(), |b| b.to_string());
        let je = |e: &Option<String>| e.as_deref().map_or("null".to_string(), js);
        let mut s = String::from("{\n");
        let _ = writeln!(s, "  \"command\": {},", js(&self.command));
        let env: Vec<String> = self
            .environment
            .iter()
            .map(|(k, v)| format!("{}: {}", js(k), js(v)))
            .collect();
        let _ = writeln!(s, "  \"environment\": {{{}}},", env.join(", "));
        let rows: Vec<String> = self
            .throughput
            .iter()
            .map(|r| {
                format!(
                    "    {{\"monitor\": {}, \"line_size\": {}, \"bytes\": {}, \"runs\": {}, \"mbps_first_byte\": {}, \"mbps_from_start\": {}, \"cpu_s_per_gb\": {}, \"peak_rss_kib\": {}, \"byte_exact\": {}, \"error\": {}}}",
                    js(&r.monitor), r.line_size, r.bytes, r.runs, jn(r.mbps), jn(r.mbps_from_start),
                    jn(r.cpu_s_per_gb), jn(r.peak_rss_kib), jb(r.exact), je(&r.error)
                )
            })
            .collect();
        let _ = writeln!(s, "  \"throughput\": [\n{}\n  ],", rows.join(",\n"));
        let rows: Vec<String> = self
            .density
            .iter()
            .map(|r| {
                format!(
                    "    {{\"monitor\": {}, \"containers\": {}, \"runs\": {}, \"lines_per_s\": {}, \"cpu_pct\": {}, \"us_per_line\": {}, \"ctx_switches_per_s\": {}, \"rss_per_ctr_kib\": {}, \"pss_per_ctr_kib\": {}, \"complete\": {}, \"error\": {}}}",
                    js(&r.monitor), r.containers, r.runs, jn(r.lines_per_s), jn(r.cpu_pct), jn(r.us_per_line),
                    jn(r.ctx_per_s), jn(r.rss_per_ctr_kib), jn(r.pss_per_ctr_kib), jb(r.complete), je(&r.error)
                )
            })
            .collect();
        let _ = writeln!(s, "  \"density\": [\n{}\n  ],", rows.join(",\n"));
        let rows: Vec<String> = self
            .idle
            .iter()
            .map(|r| {
                format!(
                    "    {{\"monitor\": {}, \"containers\": {}, \"runs\": {}, \"rss_per_ctr_kib\": {}, \"pss_per_ctr_kib\": {}, \"marginal_rss_kib\": {}, \"kernel_per_ctr_kib\": {}, \"fds_per_ctr\": {}, \"threads_empty\": {}, \"threads_full\": {}, \"error\": {}}}",
                    js(&r.monitor), r.containers, r.runs, jn(r.rss_per_ctr_kib), jn(r.pss_per_ctr_kib),
                    jn(r.marginal_rss_kib), jn(r.kernel_per_ctr_kib), jn(r.fds_per_ctr),
                    jn(r.threads_empty), jn(r.threads_full), je(&r.error)
                )
            })
            .collect();
        let _ = writeln!(s, "  \"idle\": [\n{}\n  ],", rows.join(",\n"));
        let rows: Vec<String> = self
            .pods
            .iter()
            .map(|r| {
                format!(
                    "    {{\"monitor\": {}, \"pods\": {}, \"runs\": {}, \"rss_per_pod_kib\": {}, \"pss_per_pod_kib\": {}, \"threads_per_pod\": {}, \"fds_per_pod\": {}, \"launch_to_version_ms_median\": {}, \"launch_to_version_ms_p95\": {}, \"launch_to_created_ms_median\": {}, \"launch_to_created_ms_p95\": {}, \"lines_per_s\": {}, \"us_per_line\": {}, \"ctx_switches_per_line\": {}, \"pss_logging_per_pod_kib\": {}, \"complete\": {}, \"error\": {}}}",
                    js(&r.monitor), r.pods, r.runs, jn(r.rss_per_pod_kib), jn(r.pss_per_pod_kib),
                    jn(r.threads_per_pod), jn(r.fds_per_pod), jn(r.ready_ms_median), jn(r.ready_ms_p95),
                    jn(r.created_ms_median), jn(r.created_ms_p95), jn(r.lines_per_s), jn(r.us_per_line),
                    jn(r.ctx_per_line), jn(r.pss_logging_per_pod_kib), jb(r.complete), je(&r.error)
                )
            })
            .collect();
        let _ = writeln!(s, "  \"pods\": [\n{}\n  ]", rows.join(",\n"));
        s.push_str("}\n");
        s
    }

    /// MB/s by line size, one bar per monitor.
    pub fn throughput_svg(&self) -> Option<String> {
        let (groups, series) = pivot(
            &self.throughput,
            |r| size_label(r.line_size),
            |r| r.monitor.clone(),
            |r| r.mbps,
        );
        (!groups.is_empty()).then(|| {
            grouped_bars(
                "Throughput by line size (first byte → done)",
                "MB/s",
                &groups,
                &series,
            )
        })
    }

    /// Monitor CPU by container count, one bar per monitor and backend.
    pub fn density_svg(&self) -> Option<String> {
        let (groups, series) = pivot(
            &self.density,
            |r| format!("{} containers", r.containers),
            |r| r.monitor.clone(),
            |r| r.cpu_pct,
        );
        (!groups.is_empty()).then(|| {
            grouped_bars(
                "Monitor CPU while containers log (20 lines/s each)",
                "% of one core",
                &groups,
                &series,
            )
        })
    }
}

/// File name, title, y-axis label and the value plotted.
type PodsChart = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PodsRow) -> Option<f64>,
);

impl Report {
    /// The pods plots by pod count, one bar per monitor: (file name, SVG).
    pub fn pods_svgs(&self) -> Vec<(&'static str, String)> {
        let charts: [PodsChart; 2] = [
            (
                "pods-pss.svg",
                "Monitor PSS per pod, idle (one monitor per pod)",
                "KiB per pod",
                |r| r.pss_per_pod_kib,
            ),
            (
                "pods-cpu.svg",
                "Monitor CPU per logged line, one monitor per pod",
                "µs per line",
                |r| r.us_per_line,
            ),
        ];
        charts
            .into_iter()
            .filter_map(|(file, title, y_label, value)| {
                let (groups, series) = pivot(
                    &self.pods,
                    |r| format!("{} pods", r.pods),
                    |r| r.monitor.clone(),
                    value,
                );
                (!groups.is_empty()).then(|| (file, grouped_bars(title, y_label, &groups, &series)))
            })
            .collect()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x:.4}"))
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

type Series = Vec<(String, Vec<Option<f64>>)>;

/// Rows → (group labels in first-seen order, one series per monitor).
fn pivot<R>(
    rows: &[R],
    group: impl Fn(&R) -> String,
    name: impl Fn(&R) -> String,
    value: impl Fn(&R) -> Option<f64>,
) -> (Vec<String>, Series) {
    let mut groups: Vec<String> = Vec::new();
    let mut series: Series = Vec::new();
    for r in rows {
        let g = group(r);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for r in rows {
        let (g, n) = (group(r), name(r));
        let gi = groups.iter().position(|x| *x == g).unwrap_or(0);
        let si = match series.iter().position(|(s, _)| *s == n) {
            Some(i) => i,
            None => {
                series.push((n, vec![None; groups.len()]));
                series.len() - 1
            }
        };
        series[si].1[gi] = value(r);
    }
    (groups, series)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// A grouped bar chart: one cluster per group, one bar per series, the
/// value written upright above each bar (a missing value is marked "n/a").
pub fn grouped_bars(title: &str, y_label: &str, groups: &[String], series: &Series) -> String {
    let (width, height) = (900.0, 460.0);
    let (left, right, top, bottom) = (70.0, 300.0, 40.0, 50.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    // Headroom for the upright value labels above the tallest bar.
    let step = nice_step(max * 1.15 / 5.0);
    let y_max = (max * 1.15 / step).ceil().max(1.0) * step;
    let y = |v: f64| top + plot_h - v / y_max * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        xml(title)
    );
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let ty = y(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            ty + 4.0,
            trim_number(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        xml(y_label)
    );
    let group_w = plot_w / groups.len().max(1) as f64;
    // Bars no wider than 48 px; the cluster is centred in its group.
    let bar_w = ((group_w * 0.8) / series.len().max(1) as f64).min(48.0);
    let cluster_w = bar_w * series.len() as f64;
    for (gi, g) in groups.iter().enumerate() {
        let gx = left + gi as f64 * group_w;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            top + plot_h + 20.0,
            xml(g)
        );
        for (si, (_, values)) in series.iter().enumerate() {
            let bx = gx + (group_w - cluster_w) / 2.0 + si as f64 * bar_w;
            let cx = bx + bar_w * 0.46;
            let color = COLORS[si % COLORS.len()];
            let (label, label_y) = match values.get(gi).copied().flatten() {
                Some(v) => {
                    let by = y(v);
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{bx:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}</title></rect>"#,
                        bar_w * 0.92,
                        top + plot_h - by,
                        trim_number(v)
                    );
                    (trim_number(v), by - 4.0)
                }
                None => ("n/a".to_string(), top + plot_h - 4.0),
            };
            let _ = writeln!(
                svg,
                r#"<text x="{cx:.1}" y="{label_y:.1}" font-size="10" transform="rotate(-90 {cx:.1} {label_y:.1})" dy="3">{label}</text>"#
            );
        }
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for (si, (name, _)) in series.iter().enumerate() {
        let ly = top + 10.0 + si as f64 * 20.0;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 10.0,
            COLORS[si % COLORS.len()],
            lx + 18.0,
            ly,
            xml(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim_number(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_spreads_a_failure_over_the_metric_columns() {
        let rows = [("a", None), ("b", Some("no | pipe"))];
        let md = table(
            "| monitor | x | y | z |",
            &rows,
            |r| (vec![r.0.to_string()], r.1),
            |_| vec!["1".into(), "2".into(), "3".into()],
        );
        assert_eq!(
            md,
            "| monitor | x | y | z |\n|---|---|---|---|\n| a | 1 | 2 | 3 |\n\
             | b | failed: no / pipe | — | — |\n\n"
        );
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(40.0), 50.0);
    }

    #[test]
    fn svg_has_a_bar_per_value_and_marks_missing_ones() {
        let svg = grouped_bars(
            "t",
            "MB/s",
            &["100 B".into(), "1 KiB".into()],
            &vec![
                ("a <x>".into(), vec![Some(10.0), Some(20.0)]),
                ("b".into(), vec![None, Some(5.0)]),
            ],
        );
        assert_eq!(svg.matches("<rect x=").count(), 3 + 2); // 3 bars, 2 legend keys
        assert!(svg.contains("n/a") && svg.contains("a &lt;x&gt;"));
    }
}
