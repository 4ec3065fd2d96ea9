//! Deadlines that survive a leader election. librdkafka's mock cluster runs
//! in this test process (real TCP listeners); the sluice binary produces to
//! it, and the test moves partition leaders and takes a broker down while
//! load runs. How long a client waits (`server.delivery_timeout_ms`) is
//! separate from how long a record is retried (`kafka.message_timeout_ms`).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

const BROKERS: i32 = 3;

fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(BROKERS).expect("mock cluster");
    for topic in [TOPIC, DLQ_TOPIC] {
        cluster.create_topic(topic, PARTITIONS, BROKERS).unwrap();
    }
    cluster
}

fn start_sluice(cluster: &MockCluster<'static, DefaultProducerContext>, config: &str) -> Sluice {
    let sluice = Sluice::start(Options {
        brokers: Some(cluster.bootstrap_servers()),
        extra_config: config.to_string(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    sluice
}

/// Every partition's leader moves to the next broker, twice, under load:
/// librdkafka retries to the new leader and clients see only 202s.
#[test]
fn a_leader_change_under_load_costs_no_errors() {
    let cluster = mock_cluster();
    let sluice = start_sluice(&cluster, "");
    let load = Load::start(sluice.address, 8, "leader");
    wait_until("load flowing", Duration::from_secs(20), || {
        sluice.metric("sluice_events_accepted_total") >= 300.0
    });
    for round in 1..=2 {
        for partition in 0..PARTITIONS {
            let leader = 1 + (partition + round) % BROKERS;
            cluster
                .partition_leader(TOPIC, partition, Some(leader))
                .unwrap();
        }
        let moved_at = sluice.metric("sluice_events_accepted_total");
        wait_until(
            "load accepted after the move",
            Duration::from_secs(20),
            || sluice.metric("sluice_events_accepted_total") >= moved_at + 300.0,
        );
    }
    let outcomes = load.finish();
    let refused: Vec<_> = outcomes.iter().filter(|o| o.status != 202).collect();
    println!(
        "{} requests across two leader changes, {} not 202",
        outcomes.len(),
        refused.len()
    );
    assert!(refused.is_empty(), "{:?}", &refused[..refused.len().min(5)]);
}

/// A broker outage longer than the client's wait but shorter than the
/// record's lifetime: clients waiting then get 503 + Retry-After at their
/// deadline, yet their events are stored once the broker is back (so a
/// client retry can duplicate; event_id identifies it). Nothing a client
/// was told 202 about is missing, and the load recovers by itself.
#[test]
fn a_short_outage_is_retried_through_and_503_does_not_mean_lost() {
    let cluster = mock_cluster();
    let sluice = start_sluice(
        &cluster,
        "[server]\ndelivery_timeout_ms = 1000\n[kafka]\nmessage_timeout_ms = 30000\n",
    );
    let load = Load::start(sluice.address, 8, "outage");
    wait_until("load flowing", Duration::from_secs(20), || {
        sluice.metric("sluice_events_accepted_total") >= 300.0
    });
    // Every broker down for 3 s: three times the client's wait.
    let down_at = Instant::now();
    for broker in 1..=BROKERS {
        cluster.broker_down(broker).unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    for broker in 1..=BROKERS {
        cluster.broker_up(broker).unwrap();
    }
    println!("brokers down for {:?}", down_at.elapsed());
    let back = sluice.metric("sluice_events_accepted_total");
    wait_until(
        "load accepted after the outage",
        Duration::from_secs(30),
        || sluice.metric("sluice_events_accepted_total") >= back + 300.0,
    );
    let outcomes = load.finish();
    let accepted: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status == 202)
        .map(|o| o.user.clone())
        .collect();
    // A 503 after the whole wait was handed to Kafka and timed out; a fast
    // one was refused before hand-off (Kafka known to be down) and never
    // produced.
    let timed_out: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status == 503 && o.latency >= Duration::from_millis(950))
        .map(|o| o.user.clone())
        .collect();
    let refused_at_once = outcomes
        .iter()
        .filter(|o| o.status == 503 && o.latency < Duration::from_millis(950))
        .count();
    println!(
        "{} requests: {} accepted, {} answered 503 at the deadline, {refused_at_once} refused at once",
        outcomes.len(),
        accepted.len(),
        timed_out.len()
    );
    assert!(!timed_out.is_empty(), "no request waited out the outage");
    assert!(outcomes.iter().all(|o| o.status != 503 || o.retry_after));
    let wanted: HashSet<&str> = accepted
        .iter()
        .chain(&timed_out)
        .map(String::as_str)
        .collect();
    let records = consume_until(
        &cluster.bootstrap_servers(),
        TOPIC,
        Duration::from_secs(30),
        |records| {
            let found: HashSet<&str> = records
                .iter()
                .filter_map(|r| r.key.split_once(':').map(|(_, user)| user))
                .collect();
            wanted.iter().all(|user| found.contains(user))
        },
    );
    let found: HashSet<&str> = records
        .iter()
        .filter_map(|r| r.key.split_once(':').map(|(_, user)| user))
        .collect();
    let lost_accepted: Vec<_> = accepted
        .iter()
        .filter(|u| !found.contains(u.as_str()))
        .collect();
    let stored_after_503 = timed_out
        .iter()
        .filter(|u| found.contains(u.as_str()))
        .count();
    println!(
        "accepted missing: {}; answered 503 but stored later: {stored_after_503} of {}",
        lost_accepted.len(),
        timed_out.len()
    );
    assert!(
        lost_accepted.is_empty(),
        "202 but not stored: {lost_accepted:?}"
    );
    assert_eq!(
        stored_after_503,
        timed_out.len(),
        "records whose client got 503 were given up instead of retried"
    );
}
