//! Per-key rate limits over real HTTP, with a real broker: a key limited to
//! 100 events/s with a burst of 100 sends 1,000 events in about a second;
//! about 200 are admitted, the rest get 429 with Retry-After and the IETF
//! RateLimit-Policy and RateLimit headers, every admitted event is in
//! Kafka, and another key sending meanwhile is never limited.

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use common::*;

const LIMITED_KEY: &str = "cs_limited_key";
const FREE_KEY: &str = "cs_free_key";

fn batch_request(key: &str, users: &[String]) -> String {
    let events: Vec<String> = users.iter().map(|user| event(user, "")).collect();
    let body = format!("{{\"events\":[{}]}}", events.join(","));
    format!(
        "POST /v1/events/batch HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn a_limited_key_gets_its_rate_and_burst_and_others_are_unaffected() {
    let broker = Broker::start();
    let keys = format!(
        "[[keys]]\nkey = \"{LIMITED_KEY}\"\ntenant_id = \"limited\"\nrate_events_per_sec = 100\nburst_events = 100\n\n\
         [[keys]]\nkey = \"{FREE_KEY}\"\ntenant_id = \"free\"\n"
    );
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        keys,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("limited_{}", now_ms());

    // The other key sends steadily meanwhile, on its own connection.
    let free = {
        let (address, tag) = (sluice.address, tag.clone());
        std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut statuses = Vec::new();
            for index in 0..50 {
                let users = vec![format!("{tag}_free_{index}")];
                stream
                    .write_all(batch_request(FREE_KEY, &users).as_bytes())
                    .unwrap();
                statuses.push(read_response(&mut stream).unwrap().status);
                std::thread::sleep(Duration::from_millis(20));
            }
            statuses
        })
    };

    // 100 batches of 10 events, one every 10 ms: 1,000 events in ~1 s.
    let mut stream = sluice.connect();
    let started = Instant::now();
    let mut admitted: Vec<String> = Vec::new();
    let mut limited = 0;
    for batch in 0..100u32 {
        let send_at = started + Duration::from_millis(10 * u64::from(batch));
        std::thread::sleep(send_at.saturating_duration_since(Instant::now()));
        let users: Vec<String> = (0..10).map(|i| format!("{tag}_{batch}_{i}")).collect();
        stream
            .write_all(batch_request(LIMITED_KEY, &users).as_bytes())
            .unwrap();
        let response = read_response(&mut stream).unwrap();
        match response.status {
            202 => admitted.extend(users),
            429 => {
                limited += 10;
                assert_eq!(response.code(), "rate_limited");
                let retry_after: u64 = response.header("Retry-After").unwrap().parse().unwrap();
                assert!(retry_after >= 1);
                let policy = response
                    .header("RateLimit-Policy")
                    .expect("RateLimit-Policy");
                assert_eq!(policy, "\"events\";q=100;w=1");
                let state = response.header("RateLimit").expect("RateLimit");
                assert_eq!(state, format!("\"events\";r=0;t={retry_after}"));
            }
            other => panic!("status {other}: {}", response.text()),
        }
    }
    let took = started.elapsed();
    println!(
        "1,000 events in {took:?}: {} admitted, {limited} refused with 429",
        admitted.len()
    );
    // Burst 100 plus 100/s over the ~1 s the sending took.
    let expected = 100.0 + 100.0 * took.as_secs_f64();
    let admitted_count = admitted.len() as f64;
    assert!(
        (admitted_count - expected).abs() <= expected * 0.2,
        "{admitted_count} admitted, expected about {expected:.0}"
    );

    let free_statuses = free.join().unwrap();
    assert!(
        free_statuses.iter().all(|&status| status == 202),
        "the other key was limited: {free_statuses:?}"
    );

    // Every admitted event is in Kafka; none of the refused ones is.
    let wanted: HashSet<&str> = admitted.iter().map(String::as_str).collect();
    let records = consume_until(&broker.address, TOPIC, Duration::from_secs(30), |records| {
        records
            .iter()
            .filter(|r| r.key.starts_with("limited:") && r.key.contains(&tag))
            .count()
            >= wanted.len()
    });
    let stored: HashSet<&str> = records
        .iter()
        .filter(|r| r.key.starts_with("limited:") && r.key.contains(&tag))
        .filter_map(|r| r.key.split_once(':').map(|(_, user)| user))
        .collect();
    assert_eq!(
        stored, wanted,
        "stored events differ from the admitted ones"
    );
}
