//! Errors that say how to fix the request (issue 21, item 4): each of
//! these answered something true but unhelpful before ("must be within
//! 604800000 ms ...", "user_id is required", a 415 that did not say what
//! it got).

mod common;

use common::*;

fn post(sluice: &Sluice, content_type: &str, body: &str) -> Response {
    sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Type", content_type)],
        body.as_bytes(),
    )
}

fn message(response: &Response) -> String {
    response.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn errors_name_the_fix() {
    let sluice = Sluice::start(Options {
        keys: keys_file_text(),
        ..Default::default()
    });
    sluice.wait_ready(200, std::time::Duration::from_secs(10));
    let now_ms = now_ms();
    let at = |time: u64| format!(r#"{{"user_id":"u","event_type":"t","event_time":{time}}}"#);

    let seconds = post(&sluice, "application/json", &at(now_ms / 1_000));
    assert_eq!(seconds.status, 400);
    let text = message(&seconds);
    assert!(
        text.contains("looks like seconds")
            && text.contains(&format!("send {}", now_ms / 1_000 * 1_000)),
        "{text}"
    );

    let micros = post(&sluice, "application/json", &at(now_ms * 1_000));
    assert!(
        message(&micros).contains("looks like microseconds"),
        "{}",
        micros.text()
    );

    let batch = format!(r#"{{"events":[{}]}}"#, at(now_ms));
    let misrouted = post(&sluice, "application/json", &batch);
    assert_eq!(misrouted.status, 400);
    assert!(
        message(&misrouted).contains("to /v1/events/batch"),
        "{}",
        misrouted.text()
    );

    let xml = post(&sluice, "text/xml", &at(now_ms));
    assert_eq!(xml.status, 415);
    let text = message(&xml);
    assert!(
        text.contains(r#"got Content-Type "text/xml""#) && text.contains("application/json"),
        "{text}"
    );

    // A trailing comma: plain words and where, not "ExpectedObjectKey at
    // character 32".
    let trailing = post(&sluice, "application/json", &at(now_ms).replace('}', ",}"));
    assert_eq!(trailing.status, 400);
    let text = message(&trailing);
    assert!(
        text.contains("trailing comma") && text.contains("line 1, column"),
        "{text}"
    );

    // The key in a near-miss header, or in the query string with
    // auth.query_key off.
    let misnamed = sluice.post(
        "/v1/events",
        &[("X-API-Key", KEY), ("Content-Type", "application/json")],
        at(now_ms).as_bytes(),
    );
    assert_eq!(misnamed.status, 401);
    assert!(
        message(&misnamed).contains("the header is X-CS-API-Key"),
        "{}",
        misnamed.text()
    );
    let in_query = sluice.post(
        &format!("/v1/events?api_key={KEY}"),
        &[("Content-Type", "application/json")],
        at(now_ms).as_bytes(),
    );
    assert_eq!(in_query.status, 401);
    assert!(
        message(&in_query).contains("auth.query_key"),
        "{}",
        in_query.text()
    );
    assert!(!in_query.text().contains(KEY), "the key echoed back");
}
