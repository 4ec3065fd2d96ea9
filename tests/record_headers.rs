//! Every record says where it came from (SPEC §2, issue 32): the answer's
//! `X-Request-Id` in header `request_id`, the request's W3C trace context
//! in `traceparent`/`tracestate` when valid (ignored and counted when
//! not, never refused), and with schemas on, the contract that validated
//! the event in `schema`. Read back from a real broker, for single
//! events, batches (dead letters included) and a Segment call.

mod common;

use std::time::Duration;

use common::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// A schema for every tenant's `page_view`, and `tenant_a`'s own for
/// `checkout`.
const PAGE_VIEW: &str = r#"{"type":"object","required":["user_id"]}"#;
const CHECKOUT: &str = r#"{"type":"object","properties":{"properties":{"type":"object"}}}"#;

/// The first 12 hex digits of `text`'s SHA-256, as `sha256sum` shows them.
fn sha256_12(text: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn basic(key: &str) -> String {
    segment_basic(key)
}

fn tagged_records(broker: &Broker, topic: &str, tag: &str, count: usize) -> Vec<Consumed> {
    let records = consume_until(&broker.address, topic, Duration::from_secs(30), |records| {
        records.iter().filter(|r| is_tagged(r, tag)).count() >= count
    });
    records.into_iter().filter(|r| is_tagged(r, tag)).collect()
}

#[test]
fn records_carry_request_id_trace_context_and_schema() {
    let broker = Broker::start();
    let schemas = TempDir::new("header-schemas");
    schemas.file("page_view.json", PAGE_VIEW);
    std::fs::create_dir_all(schemas.0.join(TENANT)).unwrap();
    schemas.file(&format!("{TENANT}/checkout.json"), CHECKOUT);
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        env: vec![("SLUICE_SCHEMAS_DIR".into(), schemas.0.display().to_string())],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("hdr{}_", now_ms());
    let json = ("Content-Type", "application/json");
    let key = ("X-CS-API-Key", KEY);

    // A single event with the client's request id and a trace context.
    let single = sluice.post(
        "/v1/events",
        &[
            key,
            json,
            ("X-Request-Id", "client-chosen-id-1"),
            ("traceparent", PARENT),
            ("tracestate", STATE),
        ],
        event(&format!("{tag}single"), "").as_bytes(),
    );
    assert_eq!(single.status, 202, "{}", single.text());
    assert_eq!(single.header("x-request-id"), Some("client-chosen-id-1"));

    // A batch: one page_view, one tenant-scoped checkout, one event with
    // no schema, one invalid (dead-lettered); the server names the
    // request; the trace context is invalid (an all-zero trace id).
    let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let batch_body = format!(
        r#"{{"events":[{},{},{},{{"user_id":"{tag}bad","event_type":"page_view"}}]}}"#,
        event(&format!("{tag}batch_view"), ""),
        event(&format!("{tag}batch_checkout"), "").replace("\"page_view\"", "\"checkout\""),
        event(&format!("{tag}batch_free"), "").replace("\"page_view\"", "\"signup\""),
    );
    let batch = sluice.post(
        "/v1/events/batch",
        &[
            key,
            json,
            ("traceparent", zero_trace),
            ("tracestate", STATE),
        ],
        batch_body.as_bytes(),
    );
    assert_eq!(batch.status, 202, "{}", batch.text());
    let batch_id = batch
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    assert!(!batch_id.is_empty());

    // A Segment call, traced.
    let auth = basic(KEY);
    let segment = sluice.post(
        "/v1/track",
        &[
            ("Authorization", auth.as_str()),
            json,
            ("traceparent", PARENT),
        ],
        format!(r#"{{"userId":"{tag}segment","event":"Signed Up"}}"#).as_bytes(),
    );
    assert_eq!(segment.status, 200, "{}", segment.text());
    let segment_id = segment.header("x-request-id").unwrap().to_string();

    let records = tagged_records(&broker, TOPIC, &tag, 5);
    let record = |user: &str| {
        records
            .iter()
            .find(|r| r.value["user_id"] == format!("{tag}{user}"))
            .unwrap_or_else(|| panic!("{user} in {records:?}"))
    };
    let page_view_schema = format!("global/page_view@sha256:{}", sha256_12(PAGE_VIEW));
    let checkout_schema = format!("tenant/checkout@sha256:{}", sha256_12(CHECKOUT));

    let single = record("single");
    assert_eq!(single.header("request_id"), Some("client-chosen-id-1"));
    assert_eq!(single.header("traceparent"), Some(PARENT));
    assert_eq!(single.header("tracestate"), Some(STATE));
    assert_eq!(single.header("schema"), Some(page_view_schema.as_str()));
    assert_eq!(single.header("tenant_id"), Some(TENANT));
    assert_eq!(single.header("overflow"), None, "overflow is off");

    for (user, schema) in [
        ("batch_view", Some(page_view_schema.as_str())),
        ("batch_checkout", Some(checkout_schema.as_str())),
        ("batch_free", None),
    ] {
        let record = record(user);
        assert_eq!(
            record.header("request_id"),
            Some(batch_id.as_str()),
            "{user}"
        );
        assert_eq!(
            record.header("traceparent"),
            None,
            "{user}: invalid, not copied"
        );
        assert_eq!(record.header("tracestate"), None, "{user}");
        assert_eq!(record.header("schema"), schema, "{user}");
    }

    let segment = record("segment");
    assert_eq!(segment.header("request_id"), Some(segment_id.as_str()));
    assert_eq!(segment.header("traceparent"), Some(PARENT));
    assert_eq!(segment.header("tracestate"), None, "none was sent");
    assert_eq!(segment.header("schema"), None, "no schema for `Signed Up`");

    // The dead letter is a record of the batch too.
    let letter = dead_letter(&broker.address, &format!("{tag}bad")).expect("dead letter");
    assert_eq!(letter.header("request_id"), Some(batch_id.as_str()));
    assert_eq!(letter.header("schema"), None);

    // The invalid trace context was counted, not refused.
    assert_eq!(
        sluice.metric("sluice_trace_context_invalid_total{header=\"traceparent\"}"),
        1.0
    );
}
