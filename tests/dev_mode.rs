//! `--dev`: no external service, and enough printed to use it at once:
//! the key (fixed with `--dev-key`), the mock cluster's bootstrap address
//! and a command that reads the topic back.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn dev_prints_where_the_events_go_and_keeps_a_fixed_key() {
    let key = "sluice_dev_fixed_key";
    let sluice = Sluice::start(Options {
        args: vec!["--dev-key".into(), key.into()],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let answer = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", key), ("Content-Type", "application/json")],
        event("dev_user", "").as_bytes(),
    );
    assert_eq!(answer.status, 202, "{}", answer.text());
    let logs = sluice.logs();
    let bootstrap = logs
        .lines()
        .find_map(|line| line.trim().strip_prefix("mock Kafka bootstrap servers: "))
        .unwrap_or_else(|| panic!("no bootstrap address printed:\n{logs}"))
        .to_string();
    assert!(logs.contains("read the events back: kcat -C -b"), "{logs}");
    // A fresh start warns only that --dev is not durable (it used to open
    // with an open-files warning on a machine whose 20,000 is plenty).
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("WARN") && !line.contains("--dev"))
        .collect();
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:#?}");
    assert!(
        !logs.contains("127.0.0.1:9092"),
        "the logged configuration names a broker nothing listens on"
    );
    let records = consume_until(&bootstrap, TOPIC, Duration::from_secs(20), |records| {
        records.iter().any(|r| r.value["user_id"] == "dev_user")
    });
    assert!(records.iter().any(|r| r.value["user_id"] == "dev_user"));
}
