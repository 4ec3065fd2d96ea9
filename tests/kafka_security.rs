//! Kafka security settings against a real broker. Tansu 0.6.0 serves
//! neither TLS nor a SASL login that can succeed (see the README), so this
//! proves the failure side end to end: a TLS or SASL setting the broker
//! cannot satisfy makes `/readyz` 503 with the reason within seconds, event
//! requests get 503 + Retry-After at once, and the password never reaches
//! the logs, `/readyz`, `/metrics` or `--help`.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PASSWORD: &str = "Pa55-never-shown-7f3c";

#[test]
fn an_unsatisfiable_sasl_ssl_login_is_not_ready_with_the_reason_and_hides_the_password() {
    let broker = Broker::start();
    let dir = TempDir::new("security");
    let password_file = dir.file("password", &format!("{PASSWORD}\n"));
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!(
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"ingest\"\nsasl_password_file = \"{}\"\n",
            password_file.display()
        ),
        ..Default::default()
    });
    let started = Instant::now();
    // The broker speaks plaintext: the TLS handshake fails, and /readyz
    // says so, within seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let reason = loop {
        let response = sluice.get("/readyz");
        let reason = response.text();
        if response.status == 503 && reason.to_ascii_lowercase().contains("ssl") {
            break reason;
        }
        assert!(
            Instant::now() < deadline,
            "readyz: {} {reason}\nlogs:\n{}",
            response.status,
            sluice.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("not ready after {:?}: {reason}", started.elapsed());
    let response = sluice.post_json("/v1/events", &event("secure_user", ""));
    assert_eq!(response.status, 503);
    assert!(response.header("Retry-After").is_some());
    assert!(sluice
        .logs()
        .lines()
        .any(|line| line.contains("WARN") && line.to_ascii_lowercase().contains("ssl")));
    let metrics = sluice.get("/metrics").text();
    for (place, text) in [
        ("logs", sluice.logs()),
        ("readyz", reason),
        ("metrics", metrics),
    ] {
        assert!(!text.contains(PASSWORD), "the password is in the {place}");
    }
}

#[test]
fn the_password_is_not_in_help_and_a_missing_ca_file_stops_start_up() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--help")
        .env("SLUICE_KAFKA_SASL_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("SLUICE_KAFKA_SASL_PASSWORD_FILE"), "{text}");
    assert!(!text.contains(PASSWORD));

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--dev", "--listen", "127.0.0.1:0"])
        .env("SLUICE_KAFKA_SECURITY_PROTOCOL", "ssl")
        .env("SLUICE_KAFKA_SSL_CA_FILE", "/nonexistent/ca.pem")
        .env("SLUICE_KAFKA_SASL_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("kafka.ssl_ca_file"), "{said}");
    assert!(!said.contains(PASSWORD));
}
