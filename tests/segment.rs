//! Segment-compatible endpoints (SPEC §11), driven by Segment's own SDKs,
//! unchanged but for their host: PyPI `segment-analytics-python` and npm
//! `@segment/analytics-node`, installed by scripts/install-client-tools.
//! A real broker; the test consumes the topic and checks every call's
//! mapped fields. Raw-HTTP tests cover what the SDKs do not send: a batch
//! with an invalid call (dead-lettered), refused keys, single-call routes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn basic(key: &str) -> String {
    segment_basic(key)
}

/// POSTs a Segment JSON body with the test key as the Basic user name.
fn post_segment(sluice: &Sluice, path: &str, body: &str) -> Response {
    let auth = basic(KEY);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    sluice.post(path, &headers, body.as_bytes())
}

fn start() -> (Broker, Sluice) {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    (broker, sluice)
}

/// The values of the records whose `user_id` starts with `tag`, once
/// `count` are there.
fn tagged(broker: &Broker, tag: &str, count: usize) -> Vec<serde_json::Value> {
    consume_tagged(&broker.address, tag, count)
        .into_iter()
        .map(|r| r.value)
        .collect()
}

/// The checks common to both SDKs: each of the seven calls is in Kafka
/// once, with the mapped fields and its own kept.
fn check_sdk_calls(records: &[serde_json::Value], tag: &str, sent_from_ms: u64) {
    let user = format!("{tag}_user");
    let find = |event_type: &str| -> &serde_json::Value {
        let found: Vec<_> = records
            .iter()
            .filter(|r| r["event_type"] == event_type)
            .collect();
        assert_eq!(found.len(), 1, "{event_type}: {records:#?}");
        found[0]
    };
    let track = find(&format!("{tag} Order Completed"));
    assert_eq!(track["user_id"], user.as_str());
    assert_eq!(track["type"], "track");
    assert_eq!(track["properties"]["total"], 42.5);
    assert_eq!(track["properties"]["items"], serde_json::json!([1, 2]));
    assert!(track["context"]["library"]["name"].is_string(), "{track}");
    assert!(track["context"]["app"]["name"].is_string(), "{track}");

    let identify = find("identify");
    assert_eq!(identify["user_id"], user.as_str());
    assert_eq!(identify["traits"]["plan"], "pro");

    let page = find("page");
    assert_eq!(page["name"], "Getting started");
    assert_eq!(page["properties"]["path"], "/start");

    let screen = find("screen");
    assert_eq!(screen["name"], "Home");
    assert_eq!(screen["properties"]["tab"], 2);

    let group = find("group");
    assert_eq!(group["groupId"], format!("{tag}_group").as_str());
    assert_eq!(group["traits"]["seats"], 5);

    let alias = find("alias");
    assert_eq!(alias["previousId"], format!("{tag}_previous").as_str());
    assert_eq!(alias["user_id"], user.as_str());

    let anonymous = find(&format!("{tag} Anonymous Visit"));
    assert_eq!(anonymous["user_id"], format!("{tag}_anonymous").as_str());
    assert_eq!(
        anonymous["anonymousId"],
        format!("{tag}_anonymous").as_str()
    );

    let now = now_ms() as i64;
    for record in records {
        let event_time = record["event_time"].as_i64().expect("event_time");
        assert!(
            event_time >= sent_from_ms as i64 - 1_000 && event_time <= now,
            "event_time {event_time} is the SDK's timestamp: {record}"
        );
        let event_id = record["event_id"].as_str().expect("event_id");
        assert!(uuid::Uuid::parse_str(event_id).is_ok(), "{record}");
        assert!(record["messageId"].is_string(), "{record}");
        assert_eq!(record["tenant_id"], TENANT);
        assert_eq!(record["project_id"], PROJECT);
        assert!(
            record.get("writeKey").is_none(),
            "the write key is in Kafka: {record}"
        );
    }
}

fn run_sdk(command: &mut Command) {
    let output = output_within(command, Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "the SDK failed: {text}");
}

#[test]
fn segments_python_sdk_events_land_with_mapped_fields() {
    let (venv, _) = client_tools();
    let (broker, sluice) = start();
    let tag = format!("py_{}", now_ms());
    let sent_from = now_ms();
    run_sdk(
        Command::new(venv.join("bin/python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/segment_python.py"
            ))
            .arg(format!("http://{}", sluice.address))
            .arg(KEY)
            .arg(&tag),
    );
    let records = tagged(&broker, &tag, 7);
    check_sdk_calls(&records, &tag, sent_from);
    // The Python SDK's message ids are UUIDs: they are the event ids.
    for record in &records {
        assert_eq!(record["event_id"], record["messageId"], "{record}");
    }
    assert!(sluice.metric("sluice_http_requests_total{route=\"/v1/batch\",status=\"200\"}") >= 1.0);
    assert!(!sluice.logs().contains(KEY), "the write key is in the logs");
}

#[test]
fn segments_node_sdk_events_land_with_mapped_fields() {
    let (_, node) = client_tools();
    let (broker, sluice) = start();
    let tag = format!("node_{}", now_ms());
    let sent_from = now_ms();
    run_sdk(
        Command::new("node")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/segment_node.js"
            ))
            .arg(format!("http://{}", sluice.address))
            .arg(KEY)
            .arg(&tag)
            .env("NODE_PATH", node.join("node_modules")),
    );
    let records = tagged(&broker, &tag, 7);
    check_sdk_calls(&records, &tag, sent_from);
    // Its message ids are not UUIDs: the event id is derived from them.
    for record in &records {
        assert_ne!(record["event_id"], record["messageId"], "{record}");
    }
}

#[test]
fn an_invalid_call_in_a_batch_is_dead_lettered_and_the_rest_published() {
    let (broker, sluice) = start();
    let tag = format!("raw_{}", now_ms());
    let body = format!(
        r#"{{"batch":[
            {{"type":"track","event":"Signed Up","userId":"{tag}_ok"}},
            {{"type":"track","userId":"{tag}_no_event","writeKey":"{KEY}"}},
            {{"type":"identify","anonymousId":"{tag}_anon","messageId":"m-1"}},
            {{"type":"page","userId":"{tag}_old","timestamp":"2001-01-01T00:00:00Z"}}
        ],"context":{{"library":{{"name":"raw"}}}},"writeKey":"{KEY}","sentAt":"2026-01-01T00:00:00Z"}}"#
    );
    let response = post_segment(&sluice, "/v1/batch", &body);
    let json = response.json();
    assert_eq!(response.status, 200, "{json}");
    assert_eq!(json["success"], true);
    assert_eq!(json["accepted"], 2, "{json}");
    let rejected: Vec<(u64, &str)> = json["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["field"].as_str().unwrap()))
        .collect();
    assert_eq!(rejected, [(1, "event"), (3, "event_time")], "{json}");
    let records = tagged(&broker, &tag, 2);
    let anonymous = records
        .iter()
        .find(|r| r["user_id"] == format!("{tag}_anon").as_str())
        .expect("the identify call");
    assert_eq!(
        anonymous["context"]["library"]["name"], "raw",
        "the batch's context"
    );
    assert!(anonymous.get("writeKey").is_none());
    let dead = dead_letter(&broker.address, &format!("{tag}_no_event"))
        .expect("the invalid call is dead-lettered");
    assert_eq!(dead.value["error"]["field"], "event");
    // The call carried its own writeKey: an API key, kept out of the topic.
    let raw = dead.value["raw"].as_str().unwrap();
    assert!(!raw.contains(KEY), "the write key was dead-lettered: {raw}");
    assert!(raw.contains("\"type\":\"track\""), "{raw}");
}

/// `ms` (epoch milliseconds) as an RFC 3339 UTC date-time, as the SDKs
/// write it (days to civil date: Howard Hinnant's algorithm).
fn rfc3339(ms: u64) -> String {
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1_000 % 60,
        rest % 1_000,
    );
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// A device whose clock runs two hours fast: its calls' timestamps are
/// outside the event-time window as sent, and Segment's correction by the
/// batch's `sentAt` puts them back at when they happened. Without the
/// correction the call was refused (`event_time` out of the window).
#[test]
fn sent_at_corrects_a_device_clock_running_two_hours_fast() {
    let (broker, sluice) = start();
    let tag = format!("skew_{}", now_ms());
    let fast_ms = 2 * 3_600_000;
    let before = now_ms();
    let device_now = before + fast_ms;
    let timestamp = rfc3339(device_now - 5_000);
    let body = format!(
        r#"{{"batch":[{{"type":"track","event":"Skewed","userId":"{tag}","timestamp":"{timestamp}"}}],"sentAt":"{}"}}"#,
        rfc3339(device_now)
    );
    let response = post_segment(&sluice, "/v1/batch", &body);
    let after = now_ms();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["accepted"], 1, "{}", response.text());
    let records = tagged(&broker, &tag, 1);
    let event_time = records[0]["event_time"].as_u64().expect("event_time");
    assert!(
        (before - 5_000..=after - 5_000).contains(&event_time),
        "event_time {event_time}: not 5 s before it was received ({before}..{after})"
    );
    assert_eq!(records[0]["timestamp"], timestamp.as_str(), "kept as sent");
}

#[test]
fn single_call_routes_keys_and_refusals() {
    let (broker, sluice) = start();
    let tag = format!("single_{}", now_ms());
    let auth = basic(KEY);
    let json = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    for call in ["track", "identify", "page", "screen", "group", "alias"] {
        let body = format!(r#"{{"userId":"{tag}_{call}","event":"Clicked","previousId":"p"}}"#);
        let response = sluice.post(&format!("/v1/{call}"), &json, body.as_bytes());
        assert_eq!(response.status, 200, "{call}: {}", response.text());
        assert_eq!(
            response.json(),
            serde_json::json!({"success": true, "accepted": 1})
        );
    }
    let records = tagged(&broker, &tag, 6);
    for call in ["identify", "page", "screen", "group", "alias"] {
        let record = records
            .iter()
            .find(|r| r["user_id"] == format!("{tag}_{call}").as_str())
            .unwrap();
        assert_eq!(record["event_type"], call);
        assert_eq!(record["type"], call, "the endpoint's type is written in");
    }
    let track = records
        .iter()
        .find(|r| r["user_id"] == format!("{tag}_track").as_str())
        .unwrap();
    assert_eq!(track["event_type"], "Clicked");

    // An invalid single call is a 400 naming the Segment field.
    let response = sluice.post("/v1/track", &json, br#"{"userId":"u"}"#);
    assert_eq!(
        (response.status, response.code()),
        (400, "invalid_event".into())
    );
    assert_eq!(response.json()["error"]["field"], "event");
    // Unknown, missing and badly encoded write keys.
    let wrong = basic("cs_live_nobody");
    let response = sluice.post("/v1/track", &[("Authorization", &wrong)], b"{}");
    assert_eq!(
        (response.status, response.code()),
        (401, "invalid_api_key".into())
    );
    let response = sluice.post("/v1/batch", &[("Authorization", "Basic !!!")], b"{}");
    assert_eq!(
        (response.status, response.code()),
        (401, "missing_api_key".into())
    );
    let response = sluice.post("/v1/batch", &json, br#"{"events":[]}"#);
    assert_eq!(
        (response.status, response.code()),
        (400, "invalid_json".into())
    );
    // The native key headers work on Segment routes too.
    let body = format!(r#"{{"batch":[{{"type":"page","userId":"{tag}_header"}}]}}"#);
    let response = sluice.post("/v1/batch", &[("X-CS-API-Key", KEY)], body.as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
}

// Issue "Hardening 2", hole 7: a call's key spelt with JSON escapes
// (`"write\u004bey"`) is the same member to every JSON reader, and it
// reached Kafka: the record and the dead letter both kept it.
#[test]
fn hole7_a_write_key_spelt_with_escapes_never_reaches_kafka() {
    let (broker, sluice) = start();
    let tag = format!("escaped_{}", now_ms());
    let body = format!(
        r#"{{"batch":[
            {{"type":"track","event":"Signed Up","userId":"{tag}_ok","write\u004bey":"{KEY}"}},
            {{"type":"track","userId":"{tag}_no_event","\u0077riteKey":"{KEY}"}}
        ]}}"#
    );
    let response = post_segment(&sluice, "/v1/batch", &body);
    assert_eq!(response.status, 200, "{}", response.text());
    let call = format!(r#"{{"event":"Single","userId":"{tag}_single","write\u004Bey":"{KEY}"}}"#);
    assert_eq!(post_segment(&sluice, "/v1/track", &call).status, 200);
    let mine = consume_tagged(&broker.address, &tag, 2);
    assert_eq!(mine.len(), 2);
    for record in mine {
        let raw = String::from_utf8_lossy(&record.raw_value);
        assert!(!raw.contains(KEY), "the write key reached Kafka: {raw}");
        assert!(record.value.get("writeKey").is_none(), "{raw}");
    }
    let dead = dead_letters_until(&broker.address, &format!("{tag}_no_event"));
    for record in &dead {
        let raw = String::from_utf8_lossy(&record.raw_value);
        assert!(!raw.contains(KEY), "the write key was dead-lettered: {raw}");
    }
}
