//! `sluice_build_info` and the standard `process_*` metrics, read from
//! /proc and the process's limits at scrape time.

use std::fmt::Write as _;

use super::exposition::write_metric;

/// `sluice_build_info` and the standard `process_*` metrics (as the
/// Prometheus client libraries name them), read from /proc at scrape time.
pub(super) fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP sluice_build_info The running build (value 1).\n# TYPE sluice_build_info gauge\nsluice_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    // SAFETY: sysconf and getrlimit only read process-wide values.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 3rd.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |number: usize| -> f64 {
        fields
            .get(number - 3)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    let cpu_seconds = (field(14) + field(15)) / ticks;
    let boot_seconds: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0);
    let start_seconds = boot_seconds + field(22) / ticks;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut pages = statm
        .split_whitespace()
        .map(|value| value.parse::<u64>().unwrap_or(0));
    let (virtual_pages, resident_pages) = (pages.next().unwrap_or(0), pages.next().unwrap_or(0));
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct given.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    write_metric(
        out,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        format_args!("{cpu_seconds:.2}"),
    );
    write_metric(
        out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        resident_pages * page,
    );
    write_metric(
        out,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        virtual_pages * page,
    );
    write_metric(
        out,
        "process_open_fds",
        "Number of open file descriptors.",
        "gauge",
        open_fds,
    );
    write_metric(
        out,
        "process_max_fds",
        "Maximum number of open file descriptors.",
        "gauge",
        max_fds,
    );
    write_metric(
        out,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        format_args!("{start_seconds:.2}"),
    );
}
