//! Regression tests for the third hardening review (issue "Hardening 3"),
//! the holes about time and log volume: a delivery deadline that started
//! before the events were checked (2), keys that waited for a schema
//! reload (4), and refusals that logged whole offending values (9). Each
//! fails on the code before the fix (run with `SLUICE_TEST_BIN` set to the
//! old binary); the issue's closing note quotes what it printed there.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::services::time_until;
use common::*;

/// A contract that costs about a microsecond per element of
/// `properties.xs` (each element meets 16 `minimum`s), well within every
/// validation budget: checking a large event simply takes a while.
fn heavy_schema() -> String {
    let minimums: Vec<String> = (0..16)
        .map(|minimum| format!(r#"{{"type":"integer","minimum":{minimum}}}"#))
        .collect();
    format!(
        r#"{{"type":"object","properties":{{"properties":{{"type":"object","properties":{{"xs":{{"type":"array","items":{{"allOf":[{}]}}}}}}}}}}}}"#,
        minimums.join(",")
    )
}

/// An event of type `heavy` with `elements` elements that pass, and one
/// more that fails (`-1`, below every minimum) when `failing`: it is
/// checked to its end either way.
fn heavy_event(user: &str, elements: usize, failing: bool) -> String {
    let mut xs = vec!["16"; elements];
    if failing {
        xs.push("-1");
    }
    format!(
        r#"{{"user_id":"{user}","event_type":"heavy","event_time":{},"properties":{{"xs":[{}]}}}}"#,
        now_ms(),
        xs.join(",")
    )
}

/// Events of a batch that each take a while to check; together (about
/// 0.6 s on the old release build, 1 s on the new one) well past the
/// delivery deadline the test sets.
const HEAVY_EVENTS: usize = 32;
const HEAVY_ELEMENTS: usize = 60_000;
const DELIVERY_TIMEOUT_MS: u64 = 250;

fn first_chars(text: &str, count: usize) -> String {
    text.chars().take(count).collect()
}

// Hole 2: the delivery deadline counted from the clock read when the
// request started, so a batch checked for longer than
// `server.delivery_timeout_ms` reached its producer expired: dropped (its
// dead letters too) and answered 503, and a retry paid the check again.
#[test]
fn hole2_a_batch_checked_past_the_delivery_deadline_is_stored_and_answered_202() {
    let broker = Broker::start();
    let dir = TempDir::new("schemas");
    dir.file("heavy.json", &heavy_schema());
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!(
            "[server]\ndelivery_timeout_ms = {DELIVERY_TIMEOUT_MS}\n\n[schemas]\ndir = \"{}\"\n",
            dir.0.display()
        ),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("hole2_{}_", now_ms());
    // Events that fail their contract at their last element (dead
    // letters: small records), then one valid event of a type with no
    // contract.
    let mut events: Vec<String> = (0..HEAVY_EVENTS)
        .map(|index| heavy_event(&format!("{tag}heavy{index}"), HEAVY_ELEMENTS, true))
        .collect();
    events.push(event(&format!("{tag}light"), ""));
    let body = format!("{{\"events\":[{}]}}", events.join(","));
    let started = Instant::now();
    let response = sluice.post(
        "/v1/events/batch",
        &[
            ("X-CS-API-Key", KEY),
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(body.as_bytes()),
    );
    let took = started.elapsed();
    let stored = consume_to_end(&broker.address, TOPIC, Duration::from_secs(30))
        .iter()
        .filter(|record| is_tagged(record, &tag))
        .count();
    let letters = consume_to_end(&broker.address, DLQ_TOPIC, Duration::from_secs(30))
        .iter()
        .filter(|record| letter_holds(record, &tag))
        .count();
    println!(
        "answered {} after {took:?}: {}; stored {stored} event, {letters} dead letters",
        response.status,
        first_chars(&response.text(), 200)
    );
    assert!(
        took > Duration::from_millis(DELIVERY_TIMEOUT_MS),
        "the batch was checked in {took:?}, within the delivery deadline: this test shows nothing"
    );
    assert_eq!(
        (response.status, stored, letters),
        (202, 1, HEAVY_EVENTS),
        "answered {}: {}; stored {stored} of 1 event and {letters} of {HEAVY_EVENTS} dead letters",
        response.status,
        first_chars(&response.text(), 300)
    );
    let answer = response.json();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(
        answer["rejected"].as_array().map(Vec::len),
        Some(HEAVY_EVENTS)
    );
}
