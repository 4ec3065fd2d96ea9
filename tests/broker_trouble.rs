//! The broker hung (SIGSTOP) or absent: requests get a prompt 503 with
//! Retry-After instead of hanging, `/readyz` says why, and everything
//! recovers by itself once the broker is back, losing nothing acknowledged.

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
            "not accepted after {timeout:?}: {} {}\nlogs:\n{}",
            response.status,
            response.text(),
            sluice.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Under steady load the broker hangs (SIGSTOP) for twice the delivery
/// deadline: every request is answered 202 or 503 + Retry-After within the
/// deadline, memory stays under a ceiling, `/readyz` turns 503, and after
/// SIGCONT the load is accepted again without any intervention. Every 202
/// is in Kafka afterwards.
#[test]
fn broker_hang_under_load() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!("[server]\ndelivery_timeout_ms = {DELIVERY_TIMEOUT_MS}\n"),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(15));
    let load = Load::start(sluice.address, 16, "hang");
    // Steady state: the load has had a few hundred events accepted.
    wait_until("load accepted", Duration::from_secs(20), || {
        sluice.metric("sluice_events_accepted_total") >= 500.0
    });
    let rss_before = rss_bytes(sluice.pid());

    broker.hang();
    let stopped_at = Instant::now();
    let mut rss_max = rss_before;
    let mut readyz_refused = false;
    while stopped_at.elapsed() < Duration::from_millis(2 * DELIVERY_TIMEOUT_MS + 1_000) {
        rss_max = rss_max.max(rss_bytes(sluice.pid()));
        readyz_refused |= sluice.get("/readyz").status == 503;
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.signal(libc::SIGCONT);
    let resumed_at = Instant::now();
    sluice.wait_ready(200, Duration::from_secs(20));
    until_accepted(&sluice, "after_hang", Duration::from_secs(20));
    // The load itself is accepted again, not only the probe request.
    let accepted_at_resume = sluice.metric("sluice_events_accepted_total");
    wait_until(
        "load accepted after the hang",
        Duration::from_secs(20),
        || sluice.metric("sluice_events_accepted_total") >= accepted_at_resume + 200.0,
    );
    let outcomes = load.finish();
    let metrics = sluice.get("/metrics").text();
    // Tansu fences the idempotent producer id after the hang; sluice then
    // replaces its producer (sluice_kafka_producers_replaced_total).
    let counters = [
        "sluice_kafka_delivery_failures",
        "sluice_kafka_producers_replaced",
    ];
    for line in metrics
        .lines()
        .filter(|l| counters.iter().any(|c| l.starts_with(c)))
    {
        eprintln!("{line}");
    }

    let deadline = Duration::from_millis(DELIVERY_TIMEOUT_MS + 1_500);
    for outcome in &outcomes {
        assert!(
            outcome.status == 202 || (outcome.status == 503 && outcome.retry_after),
            "{outcome:?}"
        );
        assert!(outcome.latency < deadline, "{outcome:?}");
    }
    let during = |o: &&Outcome| o.sent_at >= stopped_at && o.sent_at < resumed_at;
    let after = |o: &&Outcome| o.sent_at > resumed_at && o.status == 202;
    let refused = outcomes
        .iter()
        .filter(during)
        .filter(|o| o.status == 503)
        .count();
    let recovered = outcomes.iter().filter(after).count();
    eprintln!(
        "requests {}, 503 during the hang {refused}, 202 after it {recovered}, rss {} -> max {} KiB",
        outcomes.len(),
        rss_before / 1024,
        rss_max / 1024
    );
    assert!(refused > 0, "no request was refused during the hang");
    assert!(
        recovered > 0,
        "the load was not accepted again after the hang"
    );
    assert!(readyz_refused, "/readyz never reported the hang");
    // In-flight memory is bounded by the in-flight limits whatever the
    // broker does; 64 MiB over the steady state is far above what 16
    // connections can hold and far below what a leak per request reaches.
    assert!(
        rss_max < rss_before + 64 * 1024 * 1024,
        "rss grew from {rss_before} to {rss_max} bytes"
    );

    let accepted: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status == 202)
        .map(|o| o.user.clone())
        .collect();
    let missing = missing_users(&broker.address, TOPIC, &accepted, Duration::from_secs(30));
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events missing",
        missing.len(),
        accepted.len()
    );
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
