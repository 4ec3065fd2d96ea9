//! The chaos suite's leader-move fault (`scripts/chaos leader-move` runs
//! it; the other faults are in the script): librdkafka's mock cluster in
//! this process (three brokers, real TCP listeners, every partition on
//! all three), three sluice instances behind HAProxy sharing dedup through
//! Redis, loadgen's retrying clients through HAProxy; every partition's
//! leader moves to another broker twice mid-run. Afterwards the topic is
//! read back: no acknowledged event lost, none stored twice.
//! `CHAOS_SECONDS` sets the run's length (default 10). The rate is low
//! (100 requests/s of 10 events): the mock cluster keeps 5 MiB per
//! partition (rdkafka_mock.c) and drops older records, which a run at 300 requests/s
//! outgrew (30 s: 26,365 of 90,000 acknowledged events no longer there to
//! read back).

mod common;

use std::time::Duration;

use common::loadgen_cli::Loadgen;
use common::services::{Haproxy, Redis};
use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

const BROKERS: i32 = 3;

#[test]
fn leader_moves_lose_and_duplicate_nothing() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10);
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(BROKERS).expect("mock cluster");
    for topic in [TOPIC, DLQ_TOPIC] {
        cluster.create_topic(topic, PARTITIONS, BROKERS).unwrap();
    }
    let redis = Redis::start();
    let sluices: Vec<Sluice> = (0..3)
        .map(|_| {
            Sluice::start(Options {
                brokers: Some(cluster.bootstrap_servers()),
                extra_config: format!(
                    "[server]\ndelivery_timeout_ms = 2000\n[kafka]\nmessage_timeout_ms = 10000\n[dedup]\nredis_url = \"{}\"\n",
                    redis.url()
                ),
                ..Default::default()
            })
        })
        .collect();
    for sluice in &sluices {
        sluice.wait_ready(200, Duration::from_secs(20));
    }
    let haproxy = Haproxy::start(&sluices.iter().map(|s| s.address).collect::<Vec<_>>());
    let load = Loadgen::new(haproxy.address())
        .args(&[
            "--connections",
            "8",
            "--batch",
            "10",
            "--rate",
            "100",
            "--warmup",
            "0",
            "--duration",
            &seconds.to_string(),
            "--retries",
            "1000",
            "--retry-backoff-ms",
            "200",
            "--timeout-ms",
            "5000",
        ])
        .verify(&cluster.bootstrap_servers(), 30);
    let runner = std::thread::spawn(move || load.run());
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(seconds * 1000 / 3));
        for partition in 0..PARTITIONS {
            let leader = 1 + (partition + round) % BROKERS;
            cluster
                .partition_leader(TOPIC, partition, Some(leader))
                .unwrap();
        }
        println!("chaos: every partition's leader moved (round {round})");
    }
    let summary = runner.join().unwrap();
    let verification = summary.verification.expect("verified");
    println!(
        "| leader-move | {} | {} | {} | {} | {} |  |",
        verification.acknowledged,
        verification.missing,
        verification.duplicated,
        summary.retried,
        summary.gave_up
    );
    assert!(verification.acknowledged > 0);
    assert_eq!(verification.missing, 0, "acknowledged events lost");
    assert_eq!(verification.duplicated, 0, "events stored twice");
}
