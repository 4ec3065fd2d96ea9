//! End to end against a real Kafka-protocol broker (Tansu): real HTTP in,
//! records consumed back out and compared.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::loadgen_cli::Loadgen;
use common::*;

const CONSUME_TIMEOUT: Duration = Duration::from_secs(20);

fn setup(extra_config: &str) -> (Broker, Sluice) {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: extra_config.to_string(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(15));
    (broker, sluice)
}

fn consume_users(broker: &Broker, topic: &str, users: &[&str]) -> Vec<Consumed> {
    let records = consume_until(&broker.address, topic, CONSUME_TIMEOUT, |records| {
        users.iter().all(|user| {
            records
                .iter()
                .any(|r| r.key.ends_with(&format!(":{user}")) || letter_holds(r, user))
        })
    });
    records
}

#[test]
fn single_event_lands_with_key_value_and_headers() {
    let (broker, sluice) = setup("");
    let user = format!("single_{}", now_ms());
    let sent = format!(
        r#"{{"user_id":"{user}","event_type":"page_view","event_time":{},"experiment_id":"exp_42","variant":"A","properties":{{"page":"checkout","n":1.50}},"custom":"kept"}}"#,
        now_ms()
    );
    let response = sluice.post_json("/v1/events", &sent);
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json(), serde_json::json!({"accepted": 1}));
    assert!(response.header("X-Request-Id").is_some());

    let records = consume_users(&broker, TOPIC, &[&user]);
    let record = records
        .iter()
        .find(|r| r.key == format!("{TENANT}:{user}"))
        .expect("record landed");
    // The client's bytes are unchanged; the server fields follow them.
    assert!(
        record
            .raw_value
            .starts_with(&sent.as_bytes()[..sent.len() - 1]),
        "value rewritten: {}",
        String::from_utf8_lossy(&record.raw_value)
    );
    assert_eq!(record.value["tenant_id"], TENANT);
    assert_eq!(record.value["project_id"], PROJECT);
    assert_eq!(record.value["custom"], "kept");
    let received_at = record.value["received_at"].as_u64().unwrap();
    assert!(received_at.abs_diff(now_ms()) < 60_000);
    let event_id = uuid::Uuid::parse_str(record.value["event_id"].as_str().unwrap()).unwrap();
    assert_eq!(event_id.get_version_num(), 7);
    assert_eq!(record.header("tenant_id"), Some(TENANT));
    assert_eq!(record.header("event_type"), Some("page_view"));
    assert_eq!(record.header("content-type"), Some("application/json"));
}

#[test]
fn alias_route_and_bearer_key_and_client_event_id() {
    let (broker, sluice) = setup("");
    let user = format!("alias_{}", now_ms());
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let body = event(&user, &format!(r#","event_id":"{id}""#));
    let response = sluice.post(
        "/events",
        &[
            ("Authorization", &format!("Bearer {KEY}")),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    let records = consume_users(&broker, TOPIC, &[&user]);
    let record = records
        .iter()
        .find(|r| r.key.ends_with(&user))
        .expect("record landed");
    assert_eq!(record.value["event_id"], id);
    assert_eq!(
        record
            .raw_value
            .windows(id.len())
            .filter(|w| *w == id.as_bytes())
            .count(),
        1,
        "event_id added twice"
    );
}

#[test]
fn json_batch_publishes_valid_events_and_dead_letters_the_rest() {
    let (broker, sluice) = setup("");
    let stamp = now_ms();
    let (first, second, bad) = (
        format!("batch_a_{stamp}"),
        format!("batch_b_{stamp}"),
        format!("batch_bad_{stamp}"),
    );
    let body = format!(
        r#"{{"events":[{},{{"user_id":"{bad}","event_time":{stamp}}},{}]}}"#,
        event(&first, ""),
        event(&second, r#","properties":{"x":[1,2]}"#)
    );
    let response = sluice.post_json("/v1/events/batch", &body);
    assert_eq!(response.status, 202, "{}", response.text());
    let json = response.json();
    assert_eq!(json["accepted"], 2);
    assert_eq!(json["rejected"].as_array().unwrap().len(), 1);
    assert_eq!(json["rejected"][0]["index"], 1);
    assert_eq!(json["rejected"][0]["code"], "invalid_event");
    assert_eq!(json["rejected"][0]["field"], "event_type");

    let records = consume_users(&broker, TOPIC, &[&first, &second]);
    assert!(records.iter().any(|r| r.key == format!("{TENANT}:{first}")));
    assert!(records
        .iter()
        .any(|r| r.key == format!("{TENANT}:{second}") && r.value["properties"]["x"][1] == 2));
    assert!(
        !records.iter().any(|r| r.key.ends_with(&bad)),
        "an invalid event reached the main topic"
    );

    let dead = consume_users(&broker, DLQ_TOPIC, &[&bad]);
    let letter = dead
        .iter()
        .find(|r| letter_holds(r, &bad))
        .expect("dead letter");
    assert_eq!(letter.key, TENANT);
    assert_eq!(letter.value["tenant_id"], TENANT);
    assert_eq!(letter.value["error"]["code"], "invalid_event");
    assert_eq!(letter.value["error"]["field"], "event_type");
    assert!(letter.value["received_at"].as_u64().is_some());
    assert_eq!(letter.header("tenant_id"), Some(TENANT));
}

/// A batch element with a member named twice (I-JSON) is rejected and
/// dead-lettered alone, its bytes kept as sent; the other is published.
#[test]
fn a_batch_element_with_a_duplicate_member_is_dead_lettered_alone() {
    let (broker, sluice) = setup("");
    let stamp = now_ms();
    let (good, bad) = (format!("dupok_{stamp}"), format!("dupbad_{stamp}"));
    let duplicated = event(&bad, r#","properties":{"plan":"gold","plan":"pro"}"#);
    let body = format!(r#"{{"events":[{},{duplicated}]}}"#, event(&good, ""));
    let response = sluice.post_json("/v1/events/batch", &body);
    assert_eq!(response.status, 202, "{}", response.text());
    let json = response.json();
    assert_eq!(json["accepted"], 1, "{json}");
    assert_eq!(json["rejected"][0]["index"], 1, "{json}");
    assert_eq!(json["rejected"][0]["field"], "/properties/plan", "{json}");
    let records = consume_users(&broker, TOPIC, &[&good]);
    assert!(
        !records.iter().any(|r| r.key.ends_with(&bad)),
        "the event with a duplicate member reached the main topic"
    );
    let dead = consume_users(&broker, DLQ_TOPIC, &[&bad]);
    let letter = dead
        .iter()
        .find(|r| letter_holds(r, &bad))
        .expect("dead letter");
    assert_eq!(letter.value["error"]["code"], "invalid_event");
    assert_eq!(letter.value["error"]["field"], "/properties/plan");
    assert_eq!(letter.value["raw"], duplicated.as_str());
}

#[test]
fn all_invalid_batch_is_400_with_the_same_body() {
    let (broker, sluice) = setup("");
    let bad = format!("allbad_{}", now_ms());
    let body = format!(r#"{{"events":[{{"user_id":"{bad}"}},"not an object"]}}"#);
    let response = sluice.post_json("/v1/events/batch", &body);
    assert_eq!(response.status, 400, "{}", response.text());
    let json = response.json();
    assert_eq!(json["accepted"], 0);
    assert_eq!(json["rejected"].as_array().unwrap().len(), 2);
    let dead = consume_users(&broker, DLQ_TOPIC, &[&bad]);
    assert!(dead.iter().any(|r| letter_holds(r, &bad)));
}

#[test]
fn ndjson_batch_lands() {
    let (broker, sluice) = setup("");
    let stamp = now_ms();
    let users: Vec<String> = (0..5).map(|i| format!("nd_{i}_{stamp}")).collect();
    let body: String = users.iter().map(|u| event(u, "") + "\n").collect();
    let response = sluice.post(
        "/v1/events/batch",
        &[
            ("X-CS-API-Key", KEY),
            ("Content-Type", "application/x-ndjson"),
        ],
        body.as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["accepted"], 5);
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let records = consume_users(&broker, TOPIC, &names);
    for user in &users {
        assert!(
            records.iter().any(|r| r.key == format!("{TENANT}:{user}")),
            "{user} missing"
        );
    }
}

#[test]
fn gzip_bodies_land_and_bombs_are_refused() {
    let (broker, sluice) =
        setup("[limits]\nbody_bytes_max = 1048576\ndecompressed_body_bytes_max = 1048576\n");
    let stamp = now_ms();
    let (single, batched) = (format!("gz_single_{stamp}"), format!("gz_batch_{stamp}"));
    let headers = [
        ("X-CS-API-Key", KEY),
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
    ];
    let response = sluice.post("/v1/events", &headers, &gzip(event(&single, "").as_bytes()));
    assert_eq!(response.status, 202, "{}", response.text());
    let batch = format!(r#"{{"events":[{}]}}"#, event(&batched, ""));
    let response = sluice.post("/v1/events/batch", &headers, &gzip(batch.as_bytes()));
    assert_eq!(response.status, 202, "{}", response.text());
    let records = consume_users(&broker, TOPIC, &[&single, &batched]);
    assert!(records.iter().any(|r| r.key.ends_with(&single)));
    assert!(records.iter().any(|r| r.key.ends_with(&batched)));

    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    let response = sluice.post("/v1/events", &headers, &bomb);
    assert_eq!(response.status, 413);
    assert!(response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1048576"));
    let response = sluice.post("/v1/events", &headers, b"not gzip");
    assert_eq!(response.status, 400);
}

#[test]
fn per_key_topic_override_and_enqueued_mode() {
    let broker = Broker::start();
    broker.create_topic("tenant_topic");
    let keys = format!(
        "{}\n[[keys]]\nkey = \"cs_topic\"\ntenant_id = \"tenant_t\"\ntopic = \"tenant_topic\"\n",
        keys_file_text()
    );
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        keys,
        args: vec!["--ack-mode".into(), "enqueued".into()],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(15));
    let user = format!("override_{}", now_ms());
    let response = sluice.post(
        "/v1/events",
        &[
            ("X-CS-API-Key", "cs_topic"),
            ("Content-Type", "application/json"),
        ],
        event(&user, "").as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    let records = consume_users(&broker, "tenant_topic", &[&user]);
    assert!(records.iter().any(|r| r.key == format!("tenant_t:{user}")));
}

/// SIGTERM while loadgen runs: the listener closes at once (new connections
/// are refused while a request in hand is still being drained), that request
/// is answered, the process exits 0 within the drain deadline, and every
/// event that got a 202 is in Kafka (loadgen --verify: missing = 0).
#[test]
fn sigterm_under_load_drains_and_every_acknowledged_event_lands() {
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);
    let (broker, mut sluice) = setup(&format!(
        "[server]\ndrain_timeout_ms = {}\n",
        DRAIN_TIMEOUT.as_millis()
    ));
    // A request in hand when the signal comes: its head and half its body.
    let held_user = format!("held_{}", now_ms());
    let body = event(&held_user, "");
    let (first, rest) = body.split_at(body.len() / 2);
    let mut held = sluice.connect();
    held.write_all(
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();

    let load = Loadgen::new(sluice.address)
        .args(&["--connections", "8", "--duration", "4", "--warmup", "0"])
        .verify(&broker.address, 10);
    let load = std::thread::spawn(move || load.run());
    // SIGTERM once the load is flowing.
    wait_until("load accepted", Duration::from_secs(20), || {
        sluice.metric("sluice_events_accepted_total") >= 200.0
    });

    sluice.signal(libc::SIGTERM);
    let signalled = Instant::now();
    while std::net::TcpStream::connect(sluice.address).is_ok() {
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "still accepting 1 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        sluice.wait_exit(Duration::ZERO),
        None,
        "exited with a request in hand"
    );
    held.write_all(rest.as_bytes()).unwrap();
    let response = read_response(&mut held).expect("the request in hand is answered");
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.header("Connection"), Some("close"));

    assert_eq!(
        sluice.wait_exit(DRAIN_TIMEOUT),
        Some(0),
        "logs:\n{}",
        sluice.logs()
    );
    assert!(
        signalled.elapsed() < DRAIN_TIMEOUT,
        "exit took {:?}",
        signalled.elapsed()
    );
    let summary = load.join().unwrap();
    let verification = summary.verification.expect("verified");
    eprintln!(
        "loadgen: sent {}, ok {}, connection errors {}; acknowledged {}, found {}, missing {}",
        summary.sent,
        summary.ok,
        summary.connection_errors,
        verification.acknowledged,
        verification.found,
        verification.missing
    );
    assert!(
        verification.acknowledged > 100,
        "too little load: {verification:?}"
    );
    assert_eq!(verification.missing, 0, "{verification:?}");
    let records = consume_users(&broker, TOPIC, &[&held_user]);
    assert!(records.iter().any(|r| r.key.ends_with(&held_user)));
}
