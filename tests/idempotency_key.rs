//! An `Idempotency-Key` names one operation (SPEC §12, §15; issue 30,
//! item 8; draft-ietf-httpapi-idempotency-key-header): a retry with the
//! same body is answered with its stored events as duplicates, another
//! body under the same key is 422 `idempotency_key_reused` and nothing of
//! it is stored. Event ids used to hash each event's bytes, so a client
//! that re-stamped `event_time` on retry stored the event again. Each
//! test reads Kafka back to its end and counts every record.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const OWN_ID: &str = "6a1f0c2e-0000-4000-8000-00000000c0de";

fn post(sluice: &Sluice, path: &str, key: &str, body: &[u8], gzipped: bool) -> Response {
    let mut headers = vec![
        ("X-CS-API-Key", KEY),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", key),
    ];
    if gzipped {
        headers.push(("Content-Encoding", "gzip"));
    }
    sluice.post(path, &headers, body)
}

fn native_event(user: &str, event_time: u64, extra: &str) -> String {
    format!(r#"{{"user_id":"{user}","event_type":"page_view","event_time":{event_time}{extra}}}"#)
}

/// A batch of two events without an `event_id` and one with its own.
fn batch(tag: &str, event_time: u64) -> String {
    format!(
        r#"{{"events":[{},{},{}]}}"#,
        native_event(&format!("{tag}u0"), event_time, ""),
        native_event(&format!("{tag}u1"), event_time, ""),
        native_event(
            &format!("{tag}u2"),
            event_time,
            &format!(r#","event_id":"{OWN_ID}""#)
        ),
    )
}

/// How many records of the topic carry each (user, event_time) of `tag`.
fn counts(broker: &Broker, tag: &str) -> HashMap<(String, u64), usize> {
    let mut counts = HashMap::new();
    for record in consume_to_end(&broker.address, TOPIC, Duration::from_secs(30)) {
        if is_tagged(&record, tag) {
            let user = record.value["user_id"].as_str().unwrap().to_string();
            let time = record.value["event_time"].as_u64().unwrap();
            *counts.entry((user, time)).or_default() += 1;
        }
    }
    counts
}

fn count(counts: &HashMap<(String, u64), usize>, user: &str, time: u64) -> usize {
    counts.get(&(user.to_string(), time)).copied().unwrap_or(0)
}

// The issue's case: a client re-stamped `event_time` on retry under the
// same key, and the event was stored again.
#[test]
fn a_key_reused_for_another_body_is_refused_and_stored_once() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("idk{}_", now_ms());
    let (first, restamped) = (now_ms(), now_ms() + 1_000);
    let key = format!("{tag}order-1");
    let body = batch(&tag, first);

    let response = post(&sluice, "/v1/events/batch", &key, body.as_bytes(), false);
    println!("first: {} {}", response.status, response.text());
    assert_eq!(response.text(), r#"{"accepted":3,"rejected":[]}"#);

    // The same body again, and gzipped (the payload is the body as
    // decoded): duplicates, stored once.
    for gzipped in [false, true] {
        let sent = if gzipped {
            gzip(body.as_bytes())
        } else {
            body.clone().into_bytes()
        };
        let response = post(&sluice, "/v1/events/batch", &key, &sent, gzipped);
        println!(
            "same body (gzip {gzipped}): {} {}",
            response.status,
            response.text()
        );
        assert_eq!(
            response.text(),
            r#"{"accepted":3,"rejected":[],"duplicates":[0,1,2]}"#
        );
    }

    // The same key, event_time re-stamped: 422, permanent, nothing stored.
    let changed = batch(&tag, restamped);
    let response = post(&sluice, "/v1/events/batch", &key, changed.as_bytes(), false);
    println!("re-stamped body: {} {}", response.status, response.text());
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.code(), "idempotency_key_reused");
    assert!(response.header("Retry-After").is_none());

    // The single-event route: re-serialized (a space) is another body.
    let single_key = format!("{tag}single");
    let single = native_event(&format!("{tag}single"), first, "");
    let response = post(&sluice, "/v1/events", &single_key, single.as_bytes(), false);
    assert_eq!(response.text(), r#"{"accepted":1}"#);
    let response = post(&sluice, "/v1/events", &single_key, single.as_bytes(), false);
    assert_eq!(response.text(), r#"{"accepted":1,"duplicates":[0]}"#);
    let reserialized = single.replacen(':', ": ", 1);
    let response = post(
        &sluice,
        "/v1/events",
        &single_key,
        reserialized.as_bytes(),
        false,
    );
    println!(
        "re-serialized single: {} {}",
        response.status,
        response.text()
    );
    assert_eq!(response.status, 422, "{}", response.text());

    // Another key is another operation: its events are stored (the one
    // with its own event_id is that id's duplicate).
    let response = post(
        &sluice,
        "/v1/events/batch",
        &format!("{tag}order-2"),
        changed.as_bytes(),
        false,
    );
    println!("another key: {} {}", response.status, response.text());
    assert_eq!(
        response.text(),
        r#"{"accepted":3,"rejected":[],"duplicates":[2]}"#
    );

    // A request refused before Kafka (an invalid event; a batch of only
    // invalid events, dead-lettered) stores nothing: its key is free.
    let free_key = format!("{tag}free");
    let invalid = r#"{"user_id":"","event_type":"page_view"}"#;
    let response = post(&sluice, "/v1/events", &free_key, invalid.as_bytes(), false);
    assert_eq!(response.status, 400, "{}", response.text());
    let all_invalid = format!(r#"{{"events":[{invalid}]}}"#);
    let response = post(
        &sluice,
        "/v1/events/batch",
        &free_key,
        all_invalid.as_bytes(),
        false,
    );
    assert_eq!(response.status, 400, "{}", response.text());
    let free = native_event(&format!("{tag}free"), first, "");
    let response = post(&sluice, "/v1/events", &free_key, free.as_bytes(), false);
    assert_eq!(response.text(), r#"{"accepted":1}"#);

    let counts = counts(&broker, &tag);
    println!("stored: {counts:?}");
    for (user, time, expected) in [
        ("u0", first, 1),
        ("u1", first, 1),
        ("u2", first, 1),
        // Only under the other key; the 422 stored nothing.
        ("u0", restamped, 1),
        ("u1", restamped, 1),
        ("u2", restamped, 0),
        ("single", first, 1),
        ("free", first, 1),
    ] {
        assert_eq!(
            count(&counts, &format!("{tag}{user}"), time),
            expected,
            "{user} at {time}: {counts:?}"
        );
    }
    assert!(sluice.metric("sluice_http_refusals_total{code=\"idempotency_key_reused\"}") >= 2.0);
}

// A retry while the first attempt waits for Kafka (the broker hangs past
// the deadline): the same key, whatever the body, is in flight (503);
// once stored, the same body is duplicates and another 422.
#[test]
fn a_key_in_flight_is_retryable_and_settles_with_its_request() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: "[server]\ndelivery_timeout_ms = 3000\n".to_string(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("idkf{}_", now_ms());
    let (first, restamped) = (now_ms(), now_ms() + 1_000);
    let key = format!("{tag}order");
    let (body, changed) = (batch(&tag, first), batch(&tag, restamped));

    // The first attempt waits for the hung broker; the retries are sent
    // meanwhile (once its deadline passed the server would soon refuse
    // everything as "kafka is unreachable").
    broker.hang();
    std::thread::scope(|scope| {
        let waiting =
            scope.spawn(|| post(&sluice, "/v1/events/batch", &key, body.as_bytes(), false));
        std::thread::sleep(Duration::from_millis(500));
        for sent in [&body, &changed] {
            let response = post(&sluice, "/v1/events/batch", &key, sent.as_bytes(), false);
            println!("while in flight: {} {}", response.status, response.text());
            assert_eq!(response.status, 503, "{}", response.text());
            assert_eq!(response.code(), "event_in_flight", "{}", response.text());
            assert!(response.header("Retry-After").is_some());
        }
        let first = waiting.join().unwrap();
        assert_eq!(first.status, 503, "{}", first.text());
    });
    broker.signal(libc::SIGCONT);
    wait_until("the retry answered 2xx", Duration::from_secs(30), || {
        let response = post(&sluice, "/v1/events/batch", &key, body.as_bytes(), false);
        assert!(matches!(response.status, 202 | 503), "{}", response.text());
        response.status == 202
    });
    let response = post(&sluice, "/v1/events/batch", &key, body.as_bytes(), false);
    assert_eq!(
        response.text(),
        r#"{"accepted":3,"rejected":[],"duplicates":[0,1,2]}"#
    );
    let response = post(&sluice, "/v1/events/batch", &key, changed.as_bytes(), false);
    assert_eq!(response.status, 422, "{}", response.text());

    let counts = counts(&broker, &tag);
    println!("stored: {counts:?}");
    for user in ["u0", "u1", "u2"] {
        let user = format!("{tag}{user}");
        assert_eq!(count(&counts, &user, first), 1, "{user}: {counts:?}");
        assert_eq!(count(&counts, &user, restamped), 0, "{user}: {counts:?}");
    }
}

// Fleet-wide: the markers travel through Redis as event ids do, so a
// retry on another instance is judged the same way, in flight included.
#[test]
fn a_key_reused_on_another_instance_is_refused_through_redis() {
    // Two brokers: B's stays up while A's hangs, so that B takes the
    // retry of a request A is still storing. What matters is the sum.
    let (broker_a, broker_b) = (Broker::start(), Broker::start());
    let redis = services::Redis::start();
    let instance = |broker: &Broker| {
        Sluice::start(Options {
            brokers: Some(broker.address.clone()),
            extra_config: format!(
                "[server]\ndelivery_timeout_ms = 3000\n[dedup]\nredis_url = \"{}\"\n",
                redis.url()
            ),
            ..Default::default()
        })
    };
    let (a, b) = (instance(&broker_a), instance(&broker_b));
    a.wait_ready(200, Duration::from_secs(20));
    b.wait_ready(200, Duration::from_secs(20));
    let tag = format!("idkr{}_", now_ms());
    let (first, restamped) = (now_ms(), now_ms() + 1_000);
    let key = format!("{tag}order");
    let (body, changed) = (batch(&tag, first), batch(&tag, restamped));

    let response = post(&a, "/v1/events/batch", &key, body.as_bytes(), false);
    assert_eq!(response.text(), r#"{"accepted":3,"rejected":[]}"#);
    // Until A's outcome reaches Redis, B finds the key in flight.
    wait_until("A's outcome reached Redis", Duration::from_secs(10), || {
        let response = post(&b, "/v1/events/batch", &key, body.as_bytes(), false);
        assert!(matches!(response.status, 202 | 503), "{}", response.text());
        response.text() == r#"{"accepted":3,"rejected":[],"duplicates":[0,1,2]}"#
    });
    let response = post(&b, "/v1/events/batch", &key, changed.as_bytes(), false);
    println!("re-stamped on B: {} {}", response.status, response.text());
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.code(), "idempotency_key_reused");
    // Another key on B: stored.
    let other = format!("{tag}other");
    let response = post(&b, "/v1/events/batch", &other, changed.as_bytes(), false);
    assert_eq!(response.status, 202, "{}", response.text());

    // In flight on A (its broker hangs): on B the key is in flight too,
    // whatever the body; once A's request settled, B answers as above.
    let (later, later_restamped) = (first + 2_000, first + 3_000);
    let hung_key = format!("{tag}hung");
    let (hung, hung_changed) = (batch(&tag, later), batch(&tag, later_restamped));
    broker_a.hang();
    std::thread::scope(|scope| {
        let waiting =
            scope.spawn(|| post(&a, "/v1/events/batch", &hung_key, hung.as_bytes(), false));
        std::thread::sleep(Duration::from_millis(500));
        for sent in [&hung_changed, &hung] {
            let response = post(&b, "/v1/events/batch", &hung_key, sent.as_bytes(), false);
            println!(
                "in flight on A, on B: {} {}",
                response.status,
                response.text()
            );
            assert_eq!(response.status, 503, "{}", response.text());
            assert_eq!(response.code(), "event_in_flight", "{}", response.text());
        }
        assert_eq!(waiting.join().unwrap().status, 503);
    });
    broker_a.signal(libc::SIGCONT);
    // Stored by A once its broker is back, or by B if A's attempt failed.
    wait_until(
        "the retry on B answered 2xx",
        Duration::from_secs(30),
        || {
            let response = post(&b, "/v1/events/batch", &hung_key, hung.as_bytes(), false);
            assert!(matches!(response.status, 202 | 503), "{}", response.text());
            response.status == 202
        },
    );
    let response = post(
        &b,
        "/v1/events/batch",
        &hung_key,
        hung_changed.as_bytes(),
        false,
    );
    assert_eq!(response.status, 422, "{}", response.text());

    let (counts_a, counts_b) = (counts(&broker_a, &tag), counts(&broker_b, &tag));
    println!("stored: {counts_a:?} {counts_b:?}");
    for (user, time, expected) in [
        ("u0", first, 1),
        ("u1", first, 1),
        ("u2", first, 1),
        ("u0", restamped, 1),
        ("u1", restamped, 1),
        ("u2", restamped, 0),
        ("u0", later, 1),
        ("u1", later, 1),
        ("u2", later, 0),
        ("u0", later_restamped, 0),
        ("u1", later_restamped, 0),
    ] {
        let user = format!("{tag}{user}");
        assert_eq!(
            count(&counts_a, &user, time) + count(&counts_b, &user, time),
            expected,
            "{user} at {time}: {counts_a:?} {counts_b:?}"
        );
    }
}

// An attack on the rule: many bodies raced under one key, over two cores
// (two requests may claim the key at the same instant): exactly one body
// is stored; every other request is told in flight (503) until it is
// told 422, and none is stored.
#[test]
fn bodies_raced_under_one_key_store_exactly_one() {
    const RACERS: u64 = 16;
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        cores: 2,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("idkx{}_", now_ms());
    let key = format!("{tag}order");
    let base = now_ms();
    let answers: Vec<(u64, u16)> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..RACERS)
            .map(|racer| {
                let (sluice, key, tag) = (&sluice, &key, &tag);
                scope.spawn(move || {
                    let body = batch(tag, base + racer);
                    loop {
                        let response =
                            post(sluice, "/v1/events/batch", key, body.as_bytes(), false);
                        match response.status {
                            503 => std::thread::sleep(Duration::from_millis(20)),
                            202 | 422 => return (racer, response.status),
                            _ => panic!("{}", response.text()),
                        }
                    }
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|racer| racer.join().unwrap())
            .collect()
    });
    println!("answers: {answers:?}");
    let winners: Vec<u64> = answers
        .iter()
        .filter(|(_, status)| *status == 202)
        .map(|(racer, _)| *racer)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let counts = counts(&broker, &tag);
    for racer in 0..RACERS {
        let expected = usize::from(racer == winners[0]);
        for user in ["u0", "u1"] {
            assert_eq!(
                count(&counts, &format!("{tag}{user}"), base + racer),
                expected,
                "racer {racer}: {counts:?}"
            );
        }
    }
}
