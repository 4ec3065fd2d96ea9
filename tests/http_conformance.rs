//! HTTP/1.1 conformance over raw sockets: framing, keep-alive, pipelining,
//! 100-continue and every limit with its status (hostile shapes are in
//! tests/hostile_input.rs).
//! Runs with `--dev` (librdkafka's mock cluster): these are HTTP tests.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::*;

fn post_request(path: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let sluice = Sluice::dev("");
    let mut stream = sluice.connect();
    let mut pipeline = String::new();
    pipeline.push_str(&post_request(
        "/v1/events",
        &event("p1", ""),
        "X-Request-Id: first\r\n",
    ));
    pipeline.push_str("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: second\r\n\r\n");
    pipeline.push_str(&post_request(
        "/v1/events",
        "{bad json",
        "X-Request-Id: third\r\n",
    ));
    pipeline.push_str(&post_request(
        "/v1/events",
        &event("p4", ""),
        "X-Request-Id: fourth\r\n",
    ));
    stream.write_all(pipeline.as_bytes()).unwrap();
    let expected = [
        ("first", 202),
        ("second", 200),
        ("third", 400),
        ("fourth", 202),
    ];
    for (id, status) in expected {
        let response = read_response(&mut stream).expect("response");
        assert_eq!(
            (response.header("X-Request-Id").unwrap(), response.status),
            (id, status)
        );
        assert_eq!(response.header("Connection"), Some("keep-alive"));
    }
    // The connection is still usable afterwards.
    stream
        .write_all(post_request("/v1/events", &event("p5", ""), "").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 202);
}

#[test]
fn connection_close_and_http10_are_honoured() {
    let sluice = Sluice::dev("");
    let mut stream = sluice.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream).unwrap();
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(is_closed(&mut stream, Duration::from_secs(2)));

    let mut stream = sluice.connect();
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let response = read_response(&mut stream).unwrap();
    assert_eq!(response.status, 200);
    assert!(is_closed(&mut stream, Duration::from_secs(2)));

    let mut stream = sluice.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut stream).unwrap().header("Connection"),
        Some("keep-alive")
    );
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 200);
}

#[test]
fn chunked_bodies_are_decoded() {
    let sluice = Sluice::dev("");
    let body = event("chunky", "");
    let (left, right) = body.split_at(10);
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{left}\r\n{:x}\r\n{right}\r\n0\r\nTrailer: x\r\n\r\n",
        left.len(),
        right.len()
    );
    let mut stream = sluice.connect();
    // Byte by byte in small writes, to exercise partial reads.
    for piece in request.as_bytes().chunks(7) {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let response = read_response(&mut stream).unwrap();
    assert_eq!(response.status, 202, "{}", response.text());
    // Pipelined request after a chunked body still parses.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 200);
}

#[test]
fn expect_100_continue() {
    let sluice = Sluice::dev("");
    let body = event("expect", "");
    let mut stream = sluice.connect();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let interim = read_response(&mut stream).unwrap();
    assert_eq!(interim.status, 100);
    stream.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 202);

    // Refused before the body: the final status instead of 100, then close.
    let mut stream = sluice.connect();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: wrong\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let response = read_response(&mut stream).unwrap();
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "invalid_api_key")
    );
    assert!(is_closed(&mut stream, Duration::from_secs(2)));
}

#[test]
fn every_limit_has_its_status() {
    let sluice = Sluice::dev(
        "[limits]\nheader_bytes_max = 1024\nbody_bytes_max = 2048\ndecompressed_body_bytes_max = 4096\nbatch_events_max = 3\nevent_bytes_max = 1500\n",
    );
    // Header bytes: 431.
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let response = sluice.raw(big_header.as_bytes());
    assert_eq!(response.status, 431);
    let many_headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = sluice.raw(format!("GET /healthz HTTP/1.1\r\n{many_headers}\r\n").as_bytes());
    assert_eq!(response.status, 431);
    // Body bytes, by Content-Length and by chunked: 413 stating the limit.
    let response = sluice.raw(
        format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Length: 5000\r\n\r\n").as_bytes(),
    );
    assert_eq!(
        (response.status, response.code().as_str()),
        (413, "payload_too_large")
    );
    assert!(response.text().contains("2048"), "{}", response.text());
    let chunk = "x".repeat(3000);
    let response = sluice.raw(
        format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len())
            .as_bytes(),
    );
    assert_eq!(response.status, 413);
    assert!(response.text().contains("2048"));
    // Events per batch: 413.
    let batch = format!(r#"{{"events":[{}]}}"#, vec![event("b", ""); 4].join(","));
    let response = sluice.post_json("/v1/events/batch", &batch);
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(response.text().contains('3'));
    // Bytes per event: 413 for a single event, a per-event rejection in a batch.
    let fat = event("fat", &format!(r#","pad":"{}""#, "y".repeat(1600)));
    let response = sluice.post_json("/v1/events", &fat);
    assert_eq!(response.status, 413);
    assert!(response.text().contains("1500"));
    let response = sluice.post(
        "/v1/events/batch",
        &[
            ("X-CS-API-Key", KEY),
            ("Content-Type", "application/x-ndjson"),
        ],
        format!("{}\n{fat}\n", event("thin", "")).as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["rejected"][0]["code"], "payload_too_large");
    // Decompressed bytes: 413.
    let response = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Encoding", "gzip")],
        &gzip(&vec![b' '; 100_000]),
    );
    assert_eq!(response.status, 413);
    assert!(response.text().contains("4096"));
}

#[test]
fn routes_methods_media_types_and_lengths() {
    let sluice = Sluice::dev("");
    let response = sluice.get("/nope");
    assert_eq!(
        (response.status, response.code().as_str()),
        (404, "not_found")
    );
    let response = sluice.get("/v1/events");
    assert_eq!(
        (response.status, response.code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(response.header("Allow"), Some("POST, OPTIONS"));
    let response = sluice.post_json("/healthz", "{}");
    assert_eq!(response.status, 405);
    let response = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Type", "text/plain")],
        b"{}",
    );
    assert_eq!(
        (response.status, response.code().as_str()),
        (415, "unsupported_media_type")
    );
    let response = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Encoding", "br")],
        b"{}",
    );
    assert_eq!(response.status, 415);
    let response = sluice.raw(
        format!("POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\n\r\n").as_bytes(),
    );
    assert_eq!(response.status, 411);
    let response = sluice.post_json("/v1/events", "{not json");
    assert_eq!(
        (response.status, response.code().as_str()),
        (400, "invalid_json")
    );
    let response = sluice.post_json(
        "/v1/events",
        r#"{"user_id":"u","event_type":"t","event_time":1}"#,
    );
    assert_eq!(
        (response.status, response.code().as_str()),
        (400, "invalid_event")
    );
    assert_eq!(response.json()["error"]["field"], "event_time");
    let response = sluice.post_json("/v1/events", &event("r", r#","tenant_id":"x""#));
    assert_eq!(
        (response.status, response.code().as_str()),
        (400, "reserved_field")
    );
    let response = sluice.post_json("/v1/events?source=web", &event("q", ""));
    assert_eq!(response.status, 202);
}

#[test]
fn probes_and_metrics() {
    let sluice = Sluice::dev("");
    let response = sluice.get("/healthz");
    assert_eq!(
        (response.status, response.header("Content-Type")),
        (200, Some("application/json"))
    );
    assert_eq!(sluice.get("/readyz").json()["status"], "ready");
    assert_eq!(sluice.post_json("/v1/events", &event("m", "")).status, 202);
    assert_eq!(sluice.post("/v1/events", &[], b"{}").status, 401);
    let metrics = sluice.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    assert!(
        text.contains("sluice_http_requests_total{route=\"/v1/events\",status=\"202\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("sluice_http_requests_total{route=\"/v1/events\",status=\"401\"} 1\n"));
    assert!(text.contains("sluice_events_accepted_total 1\n"));
    assert!(text.contains("sluice_kafka_delivery_seconds_count 1\n"));
    assert!(text.contains("sluice_inflight_requests{core=\"0\"} 0\n"));
    assert!(text.contains("sluice_inflight_events{core=\"0\"} 0\n"));
    assert!(!text.contains(KEY), "a key leaked into metrics");
    let mut stream = sluice.connect();
    stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n"),
        "HEAD answered with a body: {answer}"
    );
}

#[test]
fn failed_requests_are_logged_without_keys_or_bodies() {
    let sluice = Sluice::dev("");
    let secret_body = r#"{"user_id":"SECRET_BODY","event_type":"t","event_time":1}"#;
    let response = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", "SECRET_KEY_VALUE")],
        secret_body.as_bytes(),
    );
    assert_eq!(response.status, 401);
    let response = sluice.post_json("/v1/events", secret_body);
    assert_eq!(response.status, 400);
    let request_id = response.header("X-Request-Id").unwrap().to_string();
    wait_until("the refusal logged", Duration::from_secs(5), || {
        sluice.logs().contains(&request_id)
    });
    let logs = sluice.logs();
    assert!(logs.contains("status=401"), "{logs}");
    assert!(logs.contains(&request_id), "{logs}");
    assert!(
        logs.contains("tenant=\"tenant_a\"") || logs.contains("tenant=tenant_a"),
        "{logs}"
    );
    assert!(
        !logs.contains("SECRET_KEY_VALUE") && !logs.contains(KEY),
        "a key leaked into the logs"
    );
    assert!(!logs.contains("SECRET_BODY"), "a body leaked into the logs");
}
