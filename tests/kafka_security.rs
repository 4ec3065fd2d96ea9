//! Kafka security against real brokers. A SASL_SSL broker made of real
//! parts (`common::secure`: sqlite Tansu requiring SCRAM-SHA-256, behind
//! stunnel4 terminating TLS): events acknowledged over SASL_SSL are
//! consumed back over SASL_SSL; a wrong password and an untrusted CA each
//! make `/readyz` 503 with the reason; the password never reaches the logs,
//! `/readyz`, `/metrics` or `--help`. And a plaintext broker behind a TLS
//! setting: not ready, naming the TLS failure.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::secure::{Certificates, SecureBroker, SASL_PASSWORD, SASL_USER};
use common::*;

fn sasl_ssl_config(password_file: &Path, ca: &Path) -> String {
    format!(
        "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"{SASL_USER}\"\nsasl_password_file = \"{}\"\nssl_ca_file = \"{}\"\n",
        password_file.display(),
        ca.display()
    )
}

/// Waits until `/readyz` is 503 with a reason containing `expected`.
fn not_ready_because(sluice: &Sluice, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = sluice.get("/readyz");
        let reason = response.text();
        if response.status == 503 && reason.contains(expected) {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never said {expected:?}: {} {reason}",
            response.status
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_no_secret(sluice: &Sluice, secret: &str) {
    let places = [
        ("logs", sluice.logs()),
        ("readyz", sluice.get("/readyz").text()),
        ("metrics", sluice.get("/metrics").text()),
    ];
    for (place, text) in places {
        assert!(!text.contains(secret), "the password is in the {place}");
    }
}

#[test]
fn events_travel_over_sasl_ssl_and_bad_credentials_or_ca_are_not_ready() {
    let broker = SecureBroker::start();
    let password_file = broker.dir.file("password", &format!("{SASL_PASSWORD}\n"));
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: sasl_ssl_config(&password_file, &broker.certificates.ca),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(30));
    let tag = format!("sasl_ssl_{}", now_ms());
    let events: Vec<String> = (0..20).map(|i| event(&format!("{tag}_{i}"), "")).collect();
    let response = sluice.post_json(
        "/v1/events/batch",
        &format!("{{\"events\":[{}]}}", events.join(",")),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    // Consumed back over SASL_SSL too.
    let properties = broker.client_properties(SASL_PASSWORD, &broker.certificates.ca);
    let records = consume_until_with(
        &broker.address,
        TOPIC,
        &properties,
        Duration::from_secs(30),
        |records| records.iter().filter(|r| r.key.contains(&tag)).count() >= 20,
    );
    assert_eq!(records.iter().filter(|r| r.key.contains(&tag)).count(), 20);
    assert_no_secret(&sluice, SASL_PASSWORD);

    // A wrong password: not ready, the login failure named.
    let wrong = broker.dir.file("wrong", "not-the-password-9e1b\n");
    let refused = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: sasl_ssl_config(&wrong, &broker.certificates.ca),
        ..Default::default()
    });
    let reason = not_ready_because(&refused, "SASL authentication");
    println!("wrong password: {reason}");
    assert_eq!(
        refused
            .post_json("/v1/events", &event("refused", ""))
            .status,
        503
    );
    assert!(refused
        .logs()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("SASL authentication")));
    assert_no_secret(&refused, "not-the-password-9e1b");

    // A CA that did not sign the broker's certificate: not ready, the
    // verification failure named.
    let other = Certificates::make(&broker.dir.0, "other");
    let untrusting = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: sasl_ssl_config(&password_file, &other.ca),
        ..Default::default()
    });
    let reason = not_ready_because(&untrusting, "certificate verify failed");
    println!("untrusted CA: {reason}");
    assert_no_secret(&untrusting, SASL_PASSWORD);
}

const PASSWORD: &str = "Pa55-never-shown-7f3c";

#[test]
fn a_plaintext_broker_behind_a_tls_setting_is_not_ready_with_the_reason_and_hides_the_password() {
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
