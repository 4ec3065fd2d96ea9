//! The hand-off to Kafka costs no thread hop per request (issue 31): an
//! event loop hands its requests' records to librdkafka itself, and a
//! producer thread takes over only what a full librdkafka queue left,
//! waiting for room up to the delivery deadline. Against a real broker.

mod common;

use std::time::Duration;

use common::*;

/// Voluntary context switches so far of `pid`'s threads whose name starts
/// with `prefix` (each is one wait the thread slept in and was woken from).
fn voluntary_switches(pid: i32, prefix: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

#[test]
fn single_event_requests_wake_no_producer_thread() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("wake{}_", now_ms());
    // Warm up: the producer's first records wait for metadata.
    let first = sluice.post_json("/v1/events", &event(&format!("{tag}warm"), ""));
    assert_eq!(first.status, 202, "{}", first.text());

    // One request at a time: before, each one woke the producer thread
    // from its wait on the batch queue (about one switch per request).
    const REQUESTS: u64 = 600;
    let before = voluntary_switches(sluice.pid(), "sluice-producer");
    let started = std::time::Instant::now();
    for index in 0..REQUESTS {
        let answer = sluice.post_json("/v1/events", &event(&format!("{tag}{index}"), ""));
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    let elapsed = started.elapsed();
    let switches = voluntary_switches(sluice.pid(), "sluice-producer") - before;
    // An idle producer thread still wakes to check for shutdown (every
    // 50 ms): those are allowed, and a quarter of the requests on top.
    let idle_wakes = (elapsed.as_millis() as u64 / 50 + 1) * 2;
    assert!(
        switches <= idle_wakes + REQUESTS / 4,
        "{REQUESTS} requests in {elapsed:?} woke the producer threads {switches} times"
    );
    // And every event is stored once.
    let records = consume_tagged(&broker.address, &tag, REQUESTS as usize + 1);
    assert_eq!(records.len(), REQUESTS as usize + 1);
}

#[test]
fn records_a_full_librdkafka_queue_left_are_produced_by_a_producer_thread() {
    let broker = Broker::start();
    // librdkafka's queue holds 5 records, and sends them after 200 ms: a
    // batch of 40 fills it on the loop, and the producer thread produces
    // the rest as room comes.
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: "[kafka]\nlinger_ms = 200\n[kafka.properties]\n\"queue.buffering.max.messages\" = \"5\"\n".into(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("full{}_", now_ms());
    const EVENTS: usize = 40;
    let events: Vec<String> = (0..EVENTS)
        .map(|index| event(&format!("{tag}{index}"), ""))
        .collect();
    let answer = sluice.post_batch(KEY, &format!(r#"{{"events":[{}]}}"#, events.join(",")));
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(answer.json()["accepted"], EVENTS);
    let records = consume_tagged(&broker.address, &tag, EVENTS);
    assert_eq!(records.len(), EVENTS, "every event stored once");
}
