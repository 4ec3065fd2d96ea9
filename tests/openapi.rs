//! The API document (SPEC §11): `GET /openapi.json` is a valid OpenAPI 3.1
//! document (openapi-spec-validator) naming every route, and schemathesis
//! (pinned, scripts/install-client-tools) runs every check it has
//! (`--checks all`) against a live server with a real broker: no failure.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Every path the server routes, Segment's included.
const PATHS: [&str; 14] = [
    "/v1/events",
    "/events",
    "/v1/events/batch",
    "/v1/batch",
    "/v1/track",
    "/v1/identify",
    "/v1/page",
    "/v1/screen",
    "/v1/group",
    "/v1/alias",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

#[test]
fn the_served_document_is_valid_openapi_and_names_every_route() {
    let (venv, _) = client_tools();
    let sluice = Sluice::dev("");
    let response = sluice.get("/openapi.json");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let document = response.json();
    assert_eq!(document["openapi"], "3.1.0");
    for path in PATHS {
        assert!(
            document["paths"][path].is_object(),
            "{path} is not in the document"
        );
    }
    assert_eq!(
        document["paths"].as_object().unwrap().len(),
        PATHS.len(),
        "the document names a path the server does not route"
    );
    let dir = TempDir::new("openapi");
    let file = dir.file("openapi.json", &response.text());
    let output = output_within(
        Command::new(venv.join("bin/openapi-spec-validator")).arg(&file),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    println!("openapi-spec-validator: {text}");
    assert!(output.status.success(), "{text}");
    // What the validator checks: a broken document fails it.
    let broken = dir.file(
        "broken.json",
        &response
            .text()
            .replacen("\"responses\"", "\"responzes\"", 1),
    );
    let output = output_within(
        Command::new(venv.join("bin/openapi-spec-validator")).arg(&broken),
        Duration::from_secs(60),
    );
    assert!(
        !output.status.success(),
        "the validator passed a broken document"
    );
}

#[test]
fn schemathesis_runs_every_check_without_a_failure() {
    let (venv, _) = client_tools();
    let broker = Broker::start();
    // The window around the server clock is the one limit the document
    // states only in words; opened wide here, the schema's bounds are the
    // server's (event_time from 0, Segment timestamps after 1970).
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: "[limits]\nevent_time_past_ms = 9223372036854775807\n\
                       event_time_future_ms = 9223372036854775807\n\n[auth]\nquery_key = true\n"
            .into(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let clients = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let work = TempDir::new("schemathesis");
    let output = output_within(
        Command::new(venv.join("bin/st"))
            .args(["--config-file", &format!("{clients}/schemathesis.toml")])
            .arg("run")
            .arg(format!("http://{}/openapi.json", sluice.address))
            // Seeded, so a run is reproducible; one worker, as CPython 3.11
            // breaks compiling schemathesis's generators on two threads.
            .args(["--checks", "all", "--seed", "20261126", "--workers", "1"])
            .args(["--max-examples", "100", "--generation-database", "none"])
            // JSON Schema counts characters, the server bytes (SPEC §1:
            // user_id 1 to 256 bytes): ASCII makes the two agree. Non-ASCII
            // input is tests/hostile_input.rs's.
            .args(["--generation-codec", "ascii"])
            .args(["--header", &format!("X-CS-API-Key: {KEY}")])
            .args(["--no-color", "--output-truncate", "false"])
            .env(
                "SCHEMATHESIS_HOOKS",
                format!("{clients}/schemathesis_hooks.py"),
            )
            .current_dir(&work.0),
        Duration::from_secs(900),
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    println!("{text}");
    assert!(
        output.status.success(),
        "schemathesis found failures (above)"
    );
    assert!(text.contains("No issues found"), "{text}");
    // It tested every operation of the document and made requests.
    assert!(text.contains("Tested: 31"), "{text}");
    let generated = text
        .lines()
        .find_map(|line| line.trim().split_once(" generated, "))
        .map(|(count, _)| count)
        .and_then(|count| count.parse::<u64>().ok())
        .expect("a test-case count");
    assert!(generated >= 1_000, "only {generated} test cases");
    // The server never crashed or lost its broker.
    assert_eq!(sluice.get("/readyz").status, 200);
}
