//! Regression tests for the second hardening review (issue "Hardening 2:
//! one authenticated request must not cost gigabytes, a revoked key must
//! stop working, no secret may reach Kafka, and no second process may
//! share the port"). Each test is named after the hole it closes and fails
//! on the code before the fix; the closing note says how.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The second key of the test keys file (stored there as its SHA-256):
/// a valid key of `tenant_b`.
const OTHER_KEY: &str = "password";

/// Runs sluice with `config` as its configuration file and returns its
/// exit status and what it printed; it must stop within 10 s.
fn start_with_config(config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("config");
    let output = output_within(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--dev")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(dir.file("sluice.toml", config)),
        Duration::from_secs(10),
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

// Hole 9: X-CS-API-Key plus an Authorization carrying a different key was
// served with whichever won, and the key header sent twice was served with
// the last one.
#[test]
fn hole9_two_credentials_or_one_header_twice_is_a_400() {
    let sluice = Sluice::dev("");
    let body = event("hole9_user", "");
    let json = ("Content-Type", "application/json");
    let cases: [(&str, Vec<(&str, String)>); 4] = [
        (
            "key header and a Bearer of another key",
            vec![
                ("X-CS-API-Key", KEY.into()),
                ("Authorization", format!("Bearer {OTHER_KEY}")),
            ],
        ),
        (
            "key header and a Basic user of another key",
            vec![
                ("X-CS-API-Key", KEY.into()),
                ("Authorization", "Basic cGFzc3dvcmQ6".into()),
            ],
        ),
        (
            "key header twice",
            vec![
                ("X-CS-API-Key", OTHER_KEY.into()),
                ("X-CS-API-Key", KEY.into()),
            ],
        ),
        (
            "Authorization twice",
            vec![
                ("Authorization", format!("Bearer {KEY}")),
                ("Authorization", format!("Bearer {OTHER_KEY}")),
            ],
        ),
    ];
    for (case, headers) in cases {
        let mut all: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        all.push(json);
        let response = sluice.post("/v1/events", &all, body.as_bytes());
        assert_eq!(response.status, 400, "{case}: {}", response.text());
        assert_eq!(response.code(), "ambiguous_credentials", "{case}");
        assert!(response.text().contains("send one credential"), "{case}");
    }
    // The same key in both headers is one credential, not two.
    let same = format!("Bearer {KEY}");
    let response = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Authorization", &same), json],
        body.as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
}

// Hole 10: nonsense numeric settings were accepted: an in-flight table of
// 10^11 events hung start-up allocating 2.4 TB, a connection cap of 0
// refused every client, a body cap of 0 and an in-flight byte cap below
// the largest request started.
#[test]
fn hole10_nonsense_settings_stop_start_up_naming_the_key_and_range() {
    for (config, named) in [
        (
            "[limits]\ninflight_events_per_core_max = 100000000000\n",
            "limits.inflight_events_per_core_max = 100000000000 is out of range: it must be 1..=4194304",
        ),
        (
            "[server]\nconnections_per_core_max = 0\n",
            "server.connections_per_core_max = 0 is out of range: it must be 1..=1000000",
        ),
        (
            "[limits]\nbody_bytes_max = 0\n",
            "limits.body_bytes_max = 0 is out of range",
        ),
        (
            "[limits]\ninflight_bytes_per_core_max = 2097152\n",
            "limits.inflight_bytes_per_core_max must be at least limits.decompressed_body_bytes_max",
        ),
        ("[kafka]\nlinger_ms = 86400000\n", "kafka.linger_ms = 86400000 is out of range"),
        ("[server]\nidle_timeout_ms = 0\n", "server.idle_timeout_ms = 0 is out of range"),
    ] {
        let (status, printed) = start_with_config(config);
        assert_eq!(status, Some(2), "{config}: {printed}");
        assert!(printed.contains(named), "{config}: expected {named:?} in {printed}");
    }
    // 1e11 written as a float is refused too, not read as a number of slots.
    let (status, printed) = start_with_config("[limits]\ninflight_events_per_core_max = 1e11\n");
    assert_eq!(status, Some(2), "{printed}");
    assert!(
        printed.contains("inflight_events_per_core_max"),
        "{printed}"
    );
}
