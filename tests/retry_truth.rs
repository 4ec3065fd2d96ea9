//! The retry contract's truth cases (issue "Retry-safe ingestion", SPEC
//! §12): a retryable answer must be one a retry can cure, and its
//! `Retry-After` must be long enough; a permanent one must say so. Each
//! test fails on the code before the fix (run it with `SLUICE_TEST_BIN`
//! set to an older build to see how).

mod common;

use std::process::Command;
use std::time::Duration;

use common::services::time_until;
use common::*;

/// A keys file with the test keys and one limited key.
fn keys_with(key: &str, limits: &str) -> String {
    format!(
        "{}\n[[keys]]\nkey = \"{key}\"\ntenant_id = \"truth\"\n{limits}\n",
        keys_file_text()
    )
}

/// A JSON batch of `count` events, each padded to about `event_bytes`.
fn batch(tag: &str, count: usize, event_bytes: usize) -> String {
    let events: Vec<String> = (0..count)
        .map(|index| {
            let user = format!("{tag}_{index}");
            let padding = event_bytes.saturating_sub(event(&user, "").len() + 20);
            event(
                &user,
                &format!(r#","properties":{{"p":"{}"}}"#, "x".repeat(padding)),
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

// Truth case 1: a batch larger than the key's burst got `429 Retry-After:
// 1` forever: no wait can ever admit it.
#[test]
fn a_batch_over_the_keys_burst_is_a_permanent_413() {
    let sluice = Sluice::start(Options {
        keys: keys_with(
            "cs_truth_burst",
            "rate_events_per_sec = 10\nburst_events = 10",
        ),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let response = sluice.post_batch("cs_truth_burst", &batch("burst", 11, 100));
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.code(), "payload_too_large");
    assert!(
        response.text().contains("burst of 10 events"),
        "{}",
        response.text()
    );
    assert!(
        response.header("Retry-After").is_none(),
        "permanent: nothing to wait for"
    );
    // Within the burst it is admitted.
    let response = sluice.post_batch("cs_truth_burst", &batch("burst", 10, 100));
    assert_eq!(response.status, 202, "{}", response.text());
}

// Truth case 2: when the events limit refused, the bytes limit was not
// consulted, so a client that waited the advertised Retry-After was
// refused again by the bytes limit.
#[test]
fn retry_after_covers_every_limit_the_request_is_over() {
    let sluice = Sluice::start(Options {
        keys: keys_with(
            "cs_truth_wait",
            "rate_events_per_sec = 10\nburst_events = 10\nrate_bytes_per_sec = 400\nburst_bytes = 1500",
        ),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let body = batch("wait", 10, 120);
    assert!(
        body.len() <= 1_500 && 2 * body.len() > 1_500,
        "{}",
        body.len()
    );
    assert_eq!(sluice.post_batch("cs_truth_wait", &body).status, 202);
    let refused = sluice.post_batch("cs_truth_wait", &body);
    assert_eq!(refused.status, 429, "{}", refused.text());
    let wait: u64 = refused.header("Retry-After").unwrap().parse().unwrap();
    let policy = refused.header("RateLimit-Policy").unwrap().to_string();
    println!("Retry-After {wait}, RateLimit-Policy {policy}");
    // The bytes limit needs about 2 s more; the events limit 1 s.
    assert!(
        wait >= 2,
        "Retry-After {wait} is shorter than the bytes limit's wait"
    );
    assert!(
        policy.starts_with("\"bytes\";q=1500;w=4;qu=\"content-bytes\""),
        "{policy}"
    );
    // Waiting what the answer says is enough.
    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(100));
    let retried = sluice.post_batch("cs_truth_wait", &body);
    assert_eq!(retried.status, 202, "{}", retried.text());
}

// Truth case 3: an event larger than Kafka's message.max.bytes (but within
// limits.event_bytes_max) was answered 503 "kafka did not store the
// events": retryable, and no retry could succeed. Such a configuration
// is now refused at start.
#[test]
fn an_event_limit_kafka_cannot_take_is_refused_at_start() {
    let dir = TempDir::new("truth-config");
    let config = dir.file(
        "sluice.toml",
        "[kafka.properties]\n\"message.max.bytes\" = \"10000\"\n",
    );
    let output = output_within(
        Command::new(sluice_binary())
            .args(["--dev", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config),
        Duration::from_secs(10),
    );
    let printed = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("limits.event_bytes_max: 524288 plus")
            && printed.contains("message.max.bytes (10000)"),
        "{printed}"
    );
}

// Truth case 4: a request shed with 503 (the core's in-flight table full)
// still consumed its key's rate budget, so the retries the 503 invited
// were then refused 429.
#[test]
fn a_shed_request_costs_its_key_nothing() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        keys: keys_with("cs_truth_shed", "rate_events_per_sec = 1\nburst_events = 5"),
        extra_config:
            "[limits]\ninflight_requests_per_core_max = 1\n\n[server]\ndelivery_timeout_ms = 3000\n"
                .into(),
        // The probe would turn a hung broker into "unavailable" before
        // the core is full (see tests/hardening.rs, hole 7b).
        env: vec![("SLUICE_KAFKA_HEALTH_INTERVAL_MS".into(), "60000".into())],
        cores: 1,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    broker.hang();
    // One request holds the core's only in-flight slot.
    let address = sluice.address;
    let holder = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let body = event("shed_holder", "");
        let request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: cs_truth_shed\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        read_response(&mut stream).map(|response| response.status)
    });
    wait_until("the slot taken", Duration::from_secs(10), || {
        sluice.metric("sluice_inflight_requests") >= 1.0
    });
    for index in 0..4 {
        let response = sluice.post_batch("cs_truth_shed", &batch(&format!("shed_{index}"), 1, 100));
        assert_eq!(response.status, 503, "{}", response.text());
    }
    broker.signal(libc::SIGCONT);
    holder.join().unwrap();
    let free = time_until(Duration::from_secs(30), || {
        sluice.metric("sluice_inflight_requests") == 0.0
    });
    assert!(free.is_some(), "the slot came back");
    // 5 - 1 (the holder) is still there: the four shed requests took none.
    let response = sluice.post_batch("cs_truth_shed", &batch("after", 4, 100));
    assert_eq!(response.status, 202, "{}", response.text());
}

// Part 3: events without an `event_id` got a new random id on every
// attempt, so a retried request could never be recognised downstream. With
// an `Idempotency-Key` the ids derive from the tenant, the key and the
// event's position: the same request sent again carries the same ids.
#[test]
fn an_idempotency_key_gives_a_retried_request_the_same_event_ids() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("idem_{}", now_ms());
    let body = format!(
        r#"{{"events":[{},{},{}]}}"#,
        event(&format!("{tag}_0"), ""),
        event(&format!("{tag}_1"), ""),
        event(
            &format!("{tag}_2"),
            r#","event_id":"0f8fad5b-d9cb-469f-a165-70867728950e""#
        )
    );
    let post = |key: &str| {
        let response = sluice.post(
            "/v1/events/batch",
            &[
                ("X-CS-API-Key", KEY),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            body.as_bytes(),
        );
        assert_eq!(response.status, 202, "{}", response.text());
    };
    post("order-42-attempt");
    post("order-42-attempt");
    post("another-key");
    // Nine events sent, five stored: the retry under the same key is
    // three duplicates, and the explicit event_id once more under the
    // other key (tests/dedup.rs counts such cases exactly).
    let records: Vec<(String, String)> = consume_tagged(&broker.address, &tag, 5)
        .iter()
        .map(|r| {
            (
                r.value["user_id"].as_str().unwrap().to_string(),
                r.value["event_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for index in 0..2 {
        let user = format!("{tag}_{index}");
        let mut ids: Vec<&str> = records
            .iter()
            .filter(|(u, _)| *u == user)
            .map(|(_, id)| id.as_str())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            2,
            "{user}: the same key gives the same id, another key another: {ids:?}"
        );
    }
    // The same key reused for different content: refused, 422, permanent
    // (the key names one operation; tests/idempotency_key.rs has the
    // rest), and nothing of it is stored.
    let changed = body.replace(&format!("{tag}_0"), &format!("{tag}_0b"));
    let response = sluice.post(
        "/v1/events/batch",
        &[
            ("X-CS-API-Key", KEY),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "order-42-attempt"),
        ],
        changed.as_bytes(),
    );
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.code(), "idempotency_key_reused");
    let stored = consume_to_end(&broker.address, TOPIC, Duration::from_secs(30));
    assert!(
        !stored
            .iter()
            .any(|r| r.value["user_id"] == format!("{tag}_0b").as_str()),
        "the refused request was stored"
    );
    let kept: Vec<&str> = records
        .iter()
        .filter(|(u, _)| *u == format!("{tag}_2"))
        .map(|(_, id)| id.as_str())
        .collect();
    assert!(
        kept.iter()
            .all(|id| *id == "0f8fad5b-d9cb-469f-a165-70867728950e"),
        "{kept:?}"
    );
    // A key with a character outside printable ASCII (a tab) is refused,
    // as the OpenAPI document's pattern says.
    let response = sluice.post(
        "/v1/events",
        &[
            ("X-CS-API-Key", KEY),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "order\t42"),
        ],
        event(&format!("{tag}_tab"), "").as_bytes(),
    );
    assert_eq!(response.status, 400, "{}", response.text());
    // A key over 256 bytes is refused, not cut.
    let response = sluice.post(
        "/v1/events",
        &[
            ("X-CS-API-Key", KEY),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", &"k".repeat(257)),
        ],
        event(&format!("{tag}_long"), "").as_bytes(),
    );
    assert_eq!(response.status, 400, "{}", response.text());
}

// Found reviewing the change: checking for room in flight against the
// most a request may build (4 bytes per byte sent) shed a large valid
// request forever once that bound passed the core's whole in-flight byte
// cap: a 503 that no retry cures. Room is checked for what will surely be
// built, and a request whose records can never fit is a permanent 413.
#[test]
fn a_large_valid_request_is_never_shed_forever() {
    let sluice = Sluice::dev(
        "[limits]\nbody_bytes_max = 1048576\ndecompressed_body_bytes_max = 1048576\n\
         batch_events_max = 100\ninflight_bytes_per_core_max = 1153434\n",
    );
    // About 700 KB: its bound (2.8 MB) is over the 1.1 MiB cap, its
    // records (about 710 KB) are not.
    let body = batch("large", 100, 7_000);
    for attempt in 0..3 {
        let response = sluice.post_batch(KEY, &body);
        assert_eq!(
            response.status,
            202,
            "attempt {attempt}: {}",
            response.text()
        );
    }
}
