//! The broker hung (SIGSTOP) or absent: requests get a prompt 503 with
//! Retry-After instead of hanging, `/readyz` says why, and everything
//! recovers by itself once the broker is back.

mod common;

use std::time::{Duration, Instant};

use common::*;

const DELIVERY_TIMEOUT_MS: u64 = 2_000;

fn post_event(sluice: &Sluice, user: &str) -> (Response, Duration) {
    let started = Instant::now();
    let response = sluice.post_json("/v1/events", &event(user, ""));
    (response, started.elapsed())
}

/// Retries until a request is accepted; returns how long that took.
fn until_accepted(sluice: &Sluice, user: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (response, _) = post_event(sluice, user);
        if response.status == 202 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "not accepted after {timeout:?}: {} {}",
            response.status,
            response.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn hung_broker_gets_prompt_503_then_recovers() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!("[server]\ndelivery_timeout_ms = {DELIVERY_TIMEOUT_MS}\n"),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(15));
    assert_eq!(post_event(&sluice, "before_hang").0.status, 202);

    broker.signal(libc::SIGSTOP);
    let deadline = Duration::from_millis(DELIVERY_TIMEOUT_MS) + Duration::from_millis(1_000);
    for attempt in 0..3 {
        let (response, elapsed) = post_event(&sluice, &format!("during_hang_{attempt}"));
        assert_eq!(response.status, 503, "{}", response.text());
        assert_eq!(response.code(), "unavailable");
        assert!(response.header("Retry-After").is_some());
        assert!(elapsed < deadline, "a request hung for {elapsed:?}");
    }
    sluice.wait_ready(503, Duration::from_secs(10));
    let readyz = sluice.get("/readyz");
    assert!(
        readyz.json()["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{}",
        readyz.text()
    );

    broker.signal(libc::SIGCONT);
    sluice.wait_ready(200, Duration::from_secs(20));
    until_accepted(&sluice, "after_hang", Duration::from_secs(20));
    let records = consume_until(&broker.address, TOPIC, Duration::from_secs(20), |records| {
        ["before_hang", "after_hang"]
            .iter()
            .all(|user| records.iter().any(|r| r.key.ends_with(&format!(":{user}"))))
    });
    assert!(records.iter().any(|r| r.key.ends_with(":before_hang")));
    assert!(records.iter().any(|r| r.key.ends_with(":after_hang")));
}

#[test]
fn broker_down_at_start_then_up() {
    let port = free_port();
    let sluice = Sluice::start(Options {
        brokers: Some(format!("127.0.0.1:{port}")),
        extra_config: format!("[server]\ndelivery_timeout_ms = {DELIVERY_TIMEOUT_MS}\n"),
        ..Default::default()
    });
    assert_eq!(
        sluice.get("/healthz").status,
        200,
        "the server must serve without Kafka"
    );
    let readyz = sluice.get("/readyz");
    assert_eq!(readyz.status, 503);
    assert!(readyz.json()["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    let (response, elapsed) = post_event(&sluice, "while_down");
    assert_eq!(
        (response.status, response.code().as_str()),
        (503, "unavailable")
    );
    assert!(response.header("Retry-After").is_some());
    assert!(elapsed < Duration::from_secs(1), "refusal took {elapsed:?}");

    let broker = Broker::start_on(port);
    sluice.wait_ready(200, Duration::from_secs(30));
    until_accepted(&sluice, "after_up", Duration::from_secs(20));
    let records = consume_until(&broker.address, TOPIC, Duration::from_secs(20), |records| {
        records.iter().any(|r| r.key.ends_with(":after_up"))
    });
    assert!(records.iter().any(|r| r.key.ends_with(":after_up")));
}
