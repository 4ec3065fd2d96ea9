//! `/metrics` carries what every operator's dashboard starts from (issue
//! 21, item 1, in part): `sluice_build_info`, the standard `process_*`
//! metrics, and the keys loaded. Each value is checked against the
//! process as /proc shows it.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn process_metrics_describe_the_process() {
    let sluice = Sluice::start(Options {
        keys: keys_file_text(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let text = sluice.get("/metrics").text();
    assert!(
        text.contains(&format!(
            "sluice_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let resident = sluice.metric("process_resident_memory_bytes");
    let rss = rss_bytes(sluice.pid()) as f64;
    assert!(
        resident > rss / 2.0 && resident < rss * 2.0,
        "process_resident_memory_bytes {resident} against VmRSS {rss}"
    );
    let open = sluice.metric("process_open_fds");
    let max = sluice.metric("process_max_fds");
    let in_proc = std::fs::read_dir(format!("/proc/{}/fd", sluice.pid()))
        .unwrap()
        .count() as f64;
    assert!(open > 3.0 && open <= max, "open {open}, max {max}");
    assert!(
        (open - in_proc).abs() <= 8.0,
        "open {open}, /proc says {in_proc}"
    );
    let started = sluice.metric("process_start_time_seconds");
    let now = now_ms() as f64 / 1e3;
    assert!(
        (now - started).abs() < 120.0,
        "started {started}, now {now}"
    );
    assert!(sluice.metric("process_cpu_seconds_total") >= 0.0);
    assert!(sluice.metric("process_virtual_memory_bytes") >= resident);
    // The test keys file's three keys (one disabled: a refusal is loaded
    // too) and --dev's key.
    assert_eq!(sluice.metric("sluice_api_keys_loaded"), 4.0, "{text}");
}
