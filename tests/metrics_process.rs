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

/// The value of one exact series (name and labels) in a scrape.
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn requests_are_timed_and_refusals_counted_by_code_and_tenant() {
    let sluice = Sluice::start(Options::default());
    sluice.wait_ready(200, Duration::from_secs(10));
    let json = ("Content-Type", "application/json");
    for index in 0..3 {
        let answer = sluice.post(
            "/v1/events",
            &[("X-CS-API-Key", KEY), json],
            event(&format!("timed_{index}"), "").as_bytes(),
        );
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    let broken = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), json],
        b"{\"user_id\":",
    );
    assert_eq!(broken.code(), "invalid_json");
    let keyless = sluice.post("/v1/events", &[json], event("keyless", "").as_bytes());
    assert_eq!(keyless.code(), "missing_api_key");
    let text = sluice.get("/metrics").text();
    let duration = "sluice_http_request_duration_seconds";
    let events_2xx = "{route=\"/v1/events\",status_class=\"2xx\"}";
    let events_4xx = "{route=\"/v1/events\",status_class=\"4xx\"}";
    assert_eq!(
        series(&text, &format!("{duration}_count{events_2xx}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series(&text, &format!("{duration}_count{events_4xx}")),
        Some(2.0),
        "{text}"
    );
    let seconds = series(&text, &format!("{duration}_sum{events_2xx}")).unwrap();
    assert!(seconds > 0.0 && seconds < 30.0, "sum {seconds}");
    let inf = format!("{duration}_bucket{{route=\"/v1/events\",status_class=\"2xx\",le=\"+Inf\"}}");
    assert_eq!(series(&text, &inf), Some(3.0));
    for (code, count) in [
        ("invalid_json", 1.0),
        ("missing_api_key", 1.0),
        ("rate_limited", 0.0),
    ] {
        let name = format!("sluice_http_refusals_total{{code=\"{code}\"}}");
        assert_eq!(series(&text, &name), Some(count), "{name}");
    }
    let tenant = |name: &str| series(&text, &format!("{name}{{tenant=\"{TENANT}\"}}"));
    assert_eq!(tenant("sluice_tenant_events_accepted_total"), Some(3.0));
    assert_eq!(tenant("sluice_tenant_requests_refused_total"), Some(1.0));
    assert_eq!(tenant("sluice_tenant_events_rejected_total"), Some(0.0));
    // The refusal's log line carries the code, the message and the field,
    // at info: a client's mistake is not the server's warning.
    let logs = sluice.logs();
    let refused = logs
        .lines()
        .find(|line| line.contains("code=\"invalid_json\""))
        .unwrap_or_else(|| panic!("no refusal line:\n{logs}"));
    assert!(refused.contains("INFO"), "{refused}");
    assert!(refused.contains("request refused: "), "{refused}");
    assert!(
        refused.contains(&format!("tenant=\"{TENANT}\"")),
        "{refused}"
    );
}

/// `promtool check metrics`: the exposition is valid and follows
/// Prometheus's naming rules (counters end in _total, units in names).
#[test]
fn promtool_accepts_the_exposition() {
    let sluice = Sluice::start(Options::default());
    sluice.wait_ready(200, Duration::from_secs(10));
    sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Type", "application/json")],
        event("promtool", "").as_bytes(),
    );
    let text = sluice.get("/metrics").text();
    let output = promtool(&["check", "metrics"], Some(&text));
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `--log-format json`: one flat object per line (the event's fields
/// beside `message`, not nested under `fields`), the effective
/// configuration one key per line, and `ack_mode` by its configured name.
#[test]
fn json_logs_are_flat_and_the_configuration_is_structured() {
    let sluice = Sluice::start(Options {
        args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let refused = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Type", "application/json")],
        b"{\"user_id\":",
    );
    assert_eq!(refused.code(), "invalid_json");
    let mut lines: Vec<serde_json::Value> = Vec::new();
    wait_until("the refusal's log line", Duration::from_secs(5), || {
        lines = sluice
            .logs()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        lines.iter().any(|line| line["code"] == "invalid_json")
    });
    let refusal = lines
        .iter()
        .find(|line| line["code"] == "invalid_json")
        .unwrap();
    assert!(refusal.get("fields").is_none(), "nested: {refusal}");
    assert_eq!(refusal["level"], "INFO", "{refusal}");
    assert_eq!(refusal["tenant"], TENANT, "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("request refused: event is not valid JSON")),
        "{refusal}"
    );
    let setting = |key: &str| {
        lines
            .iter()
            .find(|line| line["target"] == "sluice::config" && line["key"] == key)
            .map(|line| line["value"].clone())
    };
    assert_eq!(setting("server.ack_mode"), Some("durable".into()));
    assert!(setting("limits.batch_events_max").is_some());
    let ready = lines
        .iter()
        .find(|line| line["message"] == "sluice ready")
        .unwrap();
    assert_eq!(ready["ack_mode"], "durable", "{ready}");
}
