//! Many instances (SPEC §9, §10): three sluice instances behind a real
//! HAProxy, with a real Redis sharing per-key limits and a real broker.
//! - Load through HAProxy with `loadgen --verify`: every acknowledged event
//!   is in Kafka, and every instance took a share.
//! - A key limited to 1,000 events/s (burst 100), driven at 4,000 events/s
//!   through HAProxy for 10 s, admits 10,000 events ±10% across the three.
//! - Redis killed mid-run: no request fails (only 202 and 429), the
//!   instances say they limit alone, and serve on.

mod common;

use std::time::Duration;

use common::loadgen_cli::Loadgen;
use common::services::{Haproxy, Redis};
use common::*;

const LIMITED_KEY: &str = "cs_fleet_limited";
const LIMIT_PER_SECOND: u64 = 1_000;
const BURST: u64 = 100;
/// Events per request while driving the limited key.
const BATCH: u64 = 10;

fn keys() -> String {
    format!(
        "{}\n[[keys]]\nkey = \"{LIMITED_KEY}\"\ntenant_id = \"fleet\"\nrate_events_per_sec = {LIMIT_PER_SECOND}\nburst_events = {BURST}\n",
        keys_file_text()
    )
}

fn loadgen(target: std::net::SocketAddr) -> Loadgen {
    Loadgen::new(target).args(&["--warmup", "0"])
}

fn status_count(summary: &loadgen::Summary, status: u16) -> u64 {
    summary
        .statuses
        .iter()
        .filter(|(s, _)| *s == status)
        .map(|(_, count)| count)
        .sum()
}

/// Requests answered with anything but 202 or 429, or not answered.
fn failures(summary: &loadgen::Summary) -> u64 {
    let answered_other: u64 = summary
        .statuses
        .iter()
        .filter(|(status, _)| *status != 202 && *status != 429)
        .map(|(_, count)| count)
        .sum();
    answered_other + summary.connection_errors
}

#[test]
fn three_instances_behind_haproxy_share_limits_and_lose_nothing() {
    let broker = Broker::start();
    let mut redis = Redis::start();
    let sluices: Vec<Sluice> = (0..3)
        .map(|_| {
            Sluice::start(Options {
                brokers: Some(broker.address.clone()),
                keys: keys(),
                env: vec![("SLUICE_LIMITS_REDIS_URL".into(), redis.url())],
                ..Default::default()
            })
        })
        .collect();
    for sluice in &sluices {
        sluice.wait_ready(200, Duration::from_secs(20));
    }
    let haproxy = Haproxy::start(&sluices.iter().map(|s| s.address).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(1)); // HAProxy's first health checks

    // 1. Unlimited load through HAProxy: nothing acknowledged is lost.
    let summary = loadgen(haproxy.address())
        .args(&["--connections", "12", "--duration", "3", "--batch", "5"])
        .verify(&broker.address, 15)
        .run();
    println!("through HAProxy: {}", summary.to_json());
    assert_eq!(failures(&summary), 0, "{}", summary.to_json());
    assert!(summary.ok > 0);
    let verification = summary.verification.as_ref().unwrap();
    assert!(verification.acknowledged >= 5 * summary.ok as usize);
    assert_eq!(
        verification.missing, 0,
        "acknowledged events missing from Kafka"
    );
    for (index, sluice) in sluices.iter().enumerate() {
        let accepted = sluice.metric("sluice_events_accepted_total");
        println!("instance {index} accepted {accepted} events");
        assert!(accepted > 0.0, "instance {index} took no share");
    }

    // 2. A key limited to 1,000 events/s across the fleet, driven at 4x.
    let rate = (4 * LIMIT_PER_SECOND / BATCH).to_string();
    let batch = BATCH.to_string();
    let driven = loadgen(haproxy.address()).args(&[
        "--key",
        LIMITED_KEY,
        "--connections",
        "12",
        "--rate",
        &rate,
        "--batch",
        &batch,
    ]);
    let summary = driven
        .clone()
        .args(&["--duration", "10"])
        .verify(&broker.address, 15)
        .run();
    println!("limited key, 10 s: {}", summary.to_json());
    let admitted = status_count(&summary, 202) * BATCH;
    let expected = 10 * LIMIT_PER_SECOND;
    println!("admitted {admitted} events of {expected} expected");
    assert_eq!(failures(&summary), 0, "{}", summary.to_json());
    assert!(status_count(&summary, 429) > 0, "the key was limited");
    assert!(
        admitted.abs_diff(expected) * 10 <= expected,
        "admitted {admitted}, not within 10% of {expected}: the instances did not share the limit"
    );
    let verification = summary.verification.as_ref().unwrap();
    assert_eq!(verification.acknowledged as u64, admitted);
    assert_eq!(
        verification.missing, 0,
        "admitted events missing from Kafka"
    );
    for sluice in &sluices {
        assert_eq!(sluice.metric("sluice_rate_limit_redis_up"), 1.0);
        assert!(sluice.metric("sluice_rate_limit_redis_syncs_total{result=\"ok\"}") > 0.0);
    }

    // 3. Redis killed mid-run: no request fails; the instances limit alone.
    let driver = {
        let load = driven.args(&["--duration", "6"]);
        std::thread::spawn(move || load.run())
    };
    std::thread::sleep(Duration::from_secs(3));
    redis.kill();
    let summary = driver.join().unwrap();
    println!("Redis killed mid-run: {}", summary.to_json());
    assert_eq!(failures(&summary), 0, "{}", summary.to_json());
    assert!(status_count(&summary, 202) > 0);
    for sluice in &sluices {
        wait_until(
            "the instance to notice Redis is gone",
            Duration::from_secs(5),
            || sluice.metric("sluice_rate_limit_redis_up") == 0.0,
        );
        assert!(
            sluice
                .logs()
                .contains("Redis unreachable; rate limits are per instance"),
            "a warn line says so"
        );
        assert_eq!(sluice.get("/readyz").status, 200, "still ready");
    }
}
