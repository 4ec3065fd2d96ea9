//! The load generator against a real sluice and broker: its JSON summary
//! carries the promised fields, and `--verify` finds every acknowledged event.

mod common;

use std::time::Duration;

use clap::Parser as _;
use common::loadgen_cli::Loadgen;
use common::*;

/// A short closed-loop run against `sluice`, with the test key.
fn loadgen(sluice: &Sluice) -> Loadgen {
    Loadgen::new(sluice.address).args(&["--connections", "4", "--duration", "1", "--warmup", "0.2"])
}

#[test]
fn json_summary_and_verify_against_a_real_broker() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(15));

    let summary = loadgen(&sluice)
        .args(&["--batch", "5"])
        .verify(&broker.address, 10)
        .run();
    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
    for field in [
        "sent",
        "ok",
        "errors",
        "rps",
        "events_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
    ] {
        assert!(json[field].is_number(), "{field} missing from {json}");
    }
    assert!(json["ok"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["errors"], 0, "{json}");
    assert_eq!(json["statuses"]["202"], json["ok"]);
    let verification = summary.verification.unwrap();
    assert!(verification.acknowledged >= 5 * json["ok"].as_u64().unwrap() as usize);
    assert_eq!(verification.found, verification.acknowledged);
    assert_eq!(verification.missing, 0);
}

#[test]
fn open_loop_offers_the_requested_rate_and_counts_refusals() {
    let sluice = Sluice::start(Options::default());
    sluice.wait_ready(200, Duration::from_secs(10));
    let summary = loadgen(&sluice)
        .args(&["--rate", "400", "--ndjson", "--batch", "2", "--gzip"])
        .run();
    assert_eq!(summary.offered_rps, Some(400.0));
    assert!(
        summary.rps > 200.0 && summary.rps < 600.0,
        "achieved {}",
        summary.rps
    );
    assert_eq!(summary.errors, 0);

    let summary = loadgen(&sluice).args(&["--key", "wrong"]).run();
    assert!(summary.errors > 0 && summary.ok == 0);
    assert!(summary.statuses.iter().any(|(status, _)| *status == 401));
}

// Issue "Retry-safe ingestion", part 5's client: with --retries, a request
// answered 429 is sent again (same bytes, so the same event ids) after its
// Retry-After, until it is stored; every acknowledged event is in Kafka.
#[test]
fn retries_resend_refused_requests_until_they_are_stored() {
    let broker = Broker::start();
    let keys = format!(
        "{}\n[[keys]]\nkey = \"cs_loadgen_limited\"\ntenant_id = \"limited\"\nrate_events_per_sec = 20\nburst_events = 10\n",
        keys_file_text()
    );
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        keys,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(15));
    let summary = loadgen(&sluice)
        .args(&[
            "--key",
            "cs_loadgen_limited",
            "--retries",
            "20",
            "--retry-backoff-ms",
            "50",
            "--timeout-ms",
            "5000",
        ])
        .verify(&broker.address, 10)
        .run();
    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
    println!("{json}");
    assert!(
        json["statuses"]["429"].as_u64().unwrap_or(0) > 0,
        "the limit refused some: {json}"
    );
    assert!(json["retried"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["gave_up"], 0, "{json}");
    assert_eq!(
        json["errors"], 0,
        "every request was stored in the end: {json}"
    );
    let verification = summary.verification.unwrap();
    assert!(verification.acknowledged > 0);
    assert_eq!(verification.found, verification.acknowledged, "{json}");
}

#[test]
fn hdr_log_holds_the_whole_latency_distribution() {
    let sluice = Sluice::dev("");
    let dir = TempDir::new("hdr-log");
    let path = dir.0.join("run.hgrm");
    let path_text = path.display().to_string();
    let summary = loadgen(&sluice)
        .args(&["--rate", "400", "--hdr-log", &path_text])
        .run();
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(2)
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .filter_map(|field| field.parse().ok())
                .collect()
        })
        .collect();
    let counted: f64 = rows.iter().map(|row| row[2]).sum();
    assert_eq!(counted as u64, summary.ok + summary.errors, "{text}");
    // Percentiles rise to 1, and the last value is the run's maximum.
    assert!(rows.windows(2).all(|pair| pair[0][1] <= pair[1][1]));
    let last = rows.last().unwrap();
    assert_eq!(last[1], 1.0);
    assert!((last[0] * 1e3 - summary.max_us as f64).abs() <= summary.max_us as f64 * 0.01 + 1.0);
}

/// `--direct-kafka`: the broker round trip with no sluice in between,
/// timed per record from its intended send to its delivery report.
#[test]
fn direct_kafka_times_the_broker_round_trip() {
    let broker = Broker::start();
    let argv = [
        "loadgen",
        "--direct-kafka",
        &broker.address,
        "--rate",
        "300",
        "--duration",
        "1",
        "--warmup",
        "0.5",
    ];
    let summary = loadgen::run(&loadgen::Args::parse_from(argv)).unwrap();
    assert_eq!(summary.errors, 0);
    assert!(
        summary.ok >= 250 && summary.ok == summary.sent,
        "ok {}, sent {}",
        summary.ok,
        summary.sent
    );
    assert!(summary.percentiles_us[0].1 > 0, "p50 is measured");
    let stored = consume_to_end(&broker.address, TOPIC, Duration::from_secs(20));
    assert!(stored.len() as u64 >= summary.ok, "{} stored", stored.len());
}
