//! deploy/: the alert rules pass promtool's checks and their unit tests,
//! the dashboard and the rules use only metrics a live server exports
//! (with every optional source on: PostgreSQL keys, Redis for limits and
//! dedup, schemas), the systemd unit verifies, and the TLS proxy example
//! carries an event over HTTPS.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::services::{Postgres, Redis};
use common::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

#[test]
fn alert_rules_are_valid_and_pass_their_unit_tests() {
    let rules = deploy("prometheus/alerts.yml");
    let output = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert_success(&output, "promtool check rules");
    let tests = deploy("prometheus/alerts.test.yml");
    let output = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert_success(&output, "promtool test rules");
    // Every alert has a unit test.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let tests_text = std::fs::read_to_string(&tests).unwrap();
    for alert in rules_text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests_text.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no unit test in alerts.test.yml"
        );
    }
}

/// Metric names (`sluice_*`, `process_*`) a PromQL expression reads.
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expression.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let rest = &expression[index..];
        let preceded =
            index > 0 && (bytes[index - 1].is_ascii_alphanumeric() || bytes[index - 1] == b'_');
        if !preceded && (rest.starts_with("sluice_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_string());
            index += end;
        } else {
            index += 1;
        }
    }
    names
}

/// The names a scrape exports: each `# TYPE` line's, and a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `expr` of the dashboard, with Grafana's variables replaced so
/// Prometheus can parse them.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/sluice-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expression = target["expr"].as_str().expect("a target's expr");
            expressions.push(
                expression
                    .replace("$__rate_interval", "5m")
                    .replace("$instance", ".*"),
            );
        }
    }
    assert!(expressions.len() >= 20, "{} expressions", expressions.len());
    expressions
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_server_exports() {
    // Every optional source on, so every metric family is exported.
    let broker = Broker::start();
    let postgres = Postgres::start();
    let redis = Redis::start();
    let schemas = TempDir::new("deploy-schemas");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkout.schema.json"),
        schemas.0.join("checkout.json"),
    )
    .unwrap();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        env: vec![
            ("SLUICE_AUTH_POSTGRES_URL".into(), postgres.url()),
            ("SLUICE_LIMITS_REDIS_URL".into(), redis.url()),
            ("SLUICE_DEDUP_REDIS_URL".into(), redis.url()),
            ("SLUICE_SCHEMAS_DIR".into(), schemas.0.display().to_string()),
        ],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(30));
    let answer = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Type", "application/json")],
        event("deploy_user", "").as_bytes(),
    );
    assert_eq!(answer.status, 202, "{}", answer.text());
    let mut scrape = String::new();
    let loaded = common::services::time_until(Duration::from_secs(20), || {
        scrape = sluice.get("/metrics").text();
        scrape.contains("sluice_api_keys_snapshot_age_seconds")
            && scrape.contains("sluice_dedup_redis_up 1")
            && scrape.contains("sluice_rate_limit_redis_up 1")
    });
    assert!(loaded.is_some(), "not every source is up:\n{scrape}");
    let exported = exported_names(&scrape);
    let expressions = dashboard_expressions();
    let mut used = BTreeSet::new();
    for expression in &expressions {
        used.extend(metric_names(expression));
    }
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    used.extend(metric_names(&rules));
    assert!(
        used.len() >= 30,
        "only {} names found: {used:?}",
        used.len()
    );
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts use metrics the server does not export: {missing:?}"
    );
    // The dashboard's queries parse: promtool checks them as recording rules.
    let mut as_rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, expression) in expressions.iter().enumerate() {
        as_rules.push_str(&format!(
            "      - record: dashboard:query{index}\n        expr: {}\n",
            serde_json::to_string(expression).unwrap()
        ));
    }
    let dir = TempDir::new("dashboard-rules");
    let path = dir.file("dashboard.rules.yml", &as_rules);
    let output = promtool(&["check", "rules", path.to_str().unwrap()], None);
    assert_success(&output, "the dashboard's queries");
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy("systemd/sluice.service")).unwrap();
    let binary = sluice_binary();
    let dir = TempDir::new("systemd");
    let path = dir.file(
        "sluice.service",
        &unit.replace("/usr/local/bin/sluice", binary.to_str().unwrap()),
    );
    let output = output_within(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Lines about the host's own units are not the unit's.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("sluice.service"))
        .collect();
    assert!(
        output.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    for setting in [
        "LimitNOFILE=",
        "Restart=on-failure",
        "ExecStartPre=",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(setting), "{setting} missing");
    }
}

#[test]
fn tls_proxy_example_carries_events_over_https() {
    let dir = TempDir::new("tls-proxy");
    let certificates = common::secure::Certificates::make(&dir.0, "proxy");
    let pem = dir.0.join("sluice.pem");
    let mut bundle = std::fs::read(&certificates.server_certificate).unwrap();
    bundle.extend(std::fs::read(&certificates.server_key).unwrap());
    std::fs::write(&pem, bundle).unwrap();
    let sluice = Sluice::dev("");
    let backend = sluice.address.to_string();
    let port = free_port();
    let example = std::fs::read_to_string(deploy("tls/haproxy.cfg")).unwrap();
    let config = example
        .replace("bind 0.0.0.0:443", &format!("bind 127.0.0.1:{port}"))
        .replace("/etc/haproxy/certs/sluice.pem", pem.to_str().unwrap())
        .replace("127.0.0.1:8080", &backend)
        // The test machine's open-files limit; a host sizes it for its own.
        .replace("maxconn 100000", "maxconn 4096");
    assert!(config.contains(&backend) && config.contains(&port.to_string()));
    let path = dir.file("haproxy.cfg", &config);
    let check = output_within(
        Command::new("haproxy").arg("-c").arg("-f").arg(&path),
        Duration::from_secs(30),
    );
    assert_success(&check, "haproxy -c");
    let _proxy = common::services::Haproxy::run(&path, port, dir);
    let url = format!("https://127.0.0.1:{port}/v1/events");
    let body = event("over_tls", "");
    let mut status = String::new();
    // The backend's health check must pass before the proxy sends to it.
    wait_until(
        "a 202 through the TLS proxy",
        Duration::from_secs(20),
        || {
            let output = output_within(
                Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                    .arg("--cacert")
                    .arg(&certificates.ca)
                    .args(["-H", &format!("X-CS-API-Key: {KEY}")])
                    .args(["-H", "Content-Type: application/json"])
                    .args(["--data-binary", &body])
                    .arg(&url),
                Duration::from_secs(15),
            );
            status = String::from_utf8_lossy(&output.stdout).to_string();
            status == "202"
        },
    );
}

/// The container files: not root, a health check that needs no curl, a
/// restart policy, and a topic for every topic the example keys name
/// (compose's keys used to name one it never created).
#[test]
fn container_files_run_unprivileged_and_create_every_example_topic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the image sets a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("sluice\", \"probe\""));
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let sluice_service = compose
        .split("\n  sluice:\n")
        .nth(1)
        .expect("a sluice service");
    for setting in ["restart: unless-stopped", "healthcheck:", "\"probe\""] {
        assert!(
            sluice_service.contains(setting),
            "the sluice service lacks {setting}"
        );
    }
    let created: BTreeSet<&str> = compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("for topic in "))
        .and_then(|rest| rest.strip_suffix("; do"))
        .expect("kafka-init's topic loop")
        .split(' ')
        .collect();
    let keys: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("keys.example.toml")).unwrap()).unwrap();
    let mut named: BTreeSet<String> = ["events_raw".to_string(), "events_dlq".to_string()].into();
    for key in keys["keys"].as_array().unwrap() {
        if let Some(topic) = key.get("topic").and_then(|topic| topic.as_str()) {
            named.insert(topic.to_string());
        }
    }
    for topic in &named {
        assert!(
            created.contains(topic.as_str()),
            "compose does not create {topic}"
        );
    }
    // The binary's probe is what the health checks run: it answers 0 on a
    // live server (tests/check.rs), so the image needs no curl.
}
