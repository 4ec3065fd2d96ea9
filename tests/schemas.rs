//! Event contracts (SPEC §13): JSON Schemas per event type and tenant,
//! enforced per event against the real broker, and hot-reloaded.

mod common;

use std::time::Duration;

use common::services::time_until;
use common::*;

const SIGNUP: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["properties"],
  "properties": {
    "properties": {
      "type": "object",
      "required": ["plan"],
      "properties": {"plan": {"enum": ["free", "pro"]}, "seats": {"type": "integer", "minimum": 1}}
    }
  }
}"#;

fn signup(user: &str, plan: &str) -> String {
    format!(
        r#"{{"user_id":"{user}","event_type":"signup","event_time":{},"properties":{{"plan":"{plan}"}}}}"#,
        now_ms()
    )
}

fn post(sluice: &Sluice, path: &str, key: &str, body: &str) -> Response {
    sluice.post(
        path,
        &[("X-CS-API-Key", key), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn start(broker: &Broker, dir: &TempDir) -> Sluice {
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!("[schemas]\ndir = \"{}\"\n", dir.0.display()),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    sluice
}

#[test]
fn violations_are_refused_per_event_with_a_pointer() {
    let broker = Broker::start();
    let dir = TempDir::new("schemas");
    dir.file("signup.json", SIGNUP);
    let sluice = start(&broker, &dir);
    let tag = format!("schema{}_", now_ms());

    // One event: 400 naming the location, the keyword and what it allows.
    let refused = post(
        &sluice,
        "/v1/events",
        KEY,
        &signup(&format!("{tag}gold"), "gold"),
    );
    assert_eq!(refused.status, 400, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "schema_violation");
    assert_eq!(error["field"], "/properties/plan");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("enum") && message.contains("free"),
        "{message}"
    );
    let accepted = post(
        &sluice,
        "/v1/events",
        KEY,
        &signup(&format!("{tag}pro"), "pro"),
    );
    assert_eq!(accepted.status, 202, "{}", accepted.text());

    // A batch: the violating event rejected (and dead-lettered), the rest
    // published.
    let batch = format!(
        r#"{{"events":[{},{}]}}"#,
        signup(&format!("{tag}batch_ok"), "free"),
        signup(&format!("{tag}batch_bad"), "gold")
    );
    let answer = post(&sluice, "/v1/events/batch", KEY, &batch);
    assert_eq!(answer.status, 202, "{}", answer.text());
    let rejected = &answer.json()["rejected"];
    assert_eq!(rejected[0]["index"], 1, "{rejected}");
    assert_eq!(rejected[0]["code"], "schema_violation");
    assert_eq!(rejected[0]["field"], "/properties/plan");

    // A Segment call is checked as translated (properties under properties).
    let auth = format!("Bearer {KEY}");
    let call = format!(
        r#"{{"type":"track","event":"signup","userId":"{tag}segment","properties":{{"plan":"gold"}}}}"#
    );
    let segment = sluice.post(
        "/v1/track",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        call.as_bytes(),
    );
    assert_eq!(segment.status, 400, "{}", segment.text());
    assert_eq!(segment.json()["error"]["code"], "schema_violation");

    let dead = dead_letter(&broker.address, &format!("{tag}batch_bad"))
        .expect("the violating event is dead-lettered");
    assert_eq!(dead.value["error"]["code"], "schema_violation");
    assert_eq!(dead.value["error"]["field"], "/properties/plan");
    let stored = consume_until(&broker.address, TOPIC, Duration::from_secs(30), |records| {
        records
            .iter()
            .any(|r| r.value["user_id"] == format!("{tag}batch_ok").as_str())
    });
    assert!(stored
        .iter()
        .all(|r| r.value["user_id"] != format!("{tag}gold").as_str()
            && r.value["user_id"] != format!("{tag}batch_bad").as_str()));
}

#[test]
fn a_tenant_override_applies_to_that_tenant_only() {
    let broker = Broker::start();
    let dir = TempDir::new("schemas");
    dir.file("signup.json", SIGNUP);
    // tenant_b (key "password") allows "gold" too.
    std::fs::create_dir_all(dir.0.join("tenant_b")).unwrap();
    dir.file(
        "tenant_b/signup.json",
        &SIGNUP.replace(r#"["free", "pro"]"#, r#"["free", "pro", "gold"]"#),
    );
    let sluice = start(&broker, &dir);
    let tag = format!("override{}_", now_ms());
    let gold = signup(&format!("{tag}gold"), "gold");
    assert_eq!(post(&sluice, "/v1/events", KEY, &gold).status, 400);
    assert_eq!(post(&sluice, "/v1/events", "password", &gold).status, 202);
    assert_eq!(sluice.metric("sluice_schemas_loaded"), 2.0);
}

#[test]
fn a_reload_takes_effect_and_a_broken_file_keeps_the_last_good_set() {
    let broker = Broker::start();
    let dir = TempDir::new("schemas");
    dir.file("signup.json", SIGNUP);
    let sluice = start(&broker, &dir);
    let tag = format!("reload{}_", now_ms());
    let enterprise = signup(&format!("{tag}enterprise"), "enterprise");
    assert_eq!(post(&sluice, "/v1/events", KEY, &enterprise).status, 400);

    // A new contract allowing "enterprise": in force within 2 s.
    dir.file(
        "signup.json",
        &SIGNUP.replace(r#"["free", "pro"]"#, r#"["free", "pro", "enterprise"]"#),
    );
    let took = time_until(Duration::from_secs(2), || {
        post(&sluice, "/v1/events", KEY, &enterprise).status == 202
    });
    println!("reload took effect after {took:?}");
    assert!(took.is_some(), "the new schema was not in force within 2 s");

    // A broken file: refused, named in the log, counted; the last good
    // set stays (enterprise still accepted, gold still refused).
    dir.file("signup.json", r#"{"type": "object", "properties": "#);
    wait_until("the failed reload counted", Duration::from_secs(10), || {
        sluice
            .get("/metrics")
            .text()
            .contains("sluice_schema_reloads_total{result=\"error\"} 1")
    });
    assert!(
        sluice.logs().contains("signup.json") && sluice.logs().contains("last good set"),
        "the log does not name the file"
    );
    assert_eq!(post(&sluice, "/v1/events", KEY, &enterprise).status, 202);
    let gold = signup(&format!("{tag}gold"), "gold");
    assert_eq!(post(&sluice, "/v1/events", KEY, &gold).status, 400);
}
