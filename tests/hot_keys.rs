//! Hot keys leave their partition (SPEC §17, issue 32), against a real
//! broker: one user at 15 times `overflow.key_events_per_second` beside
//! 300 ordinary users. Most of the hot user's events go to the overflow
//! topic (header `overflow: rate`, spread over its partitions with the key
//! in header `key`), every event is stored once, no other user is
//! rerouted; after `overflow.dwell_ms` under the rate the hot user is back
//! on its partition; a forced key always overflows.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::*;

const OVERFLOW_TOPIC: &str = "events_overflow";
const RATE: usize = 10;
const BURST: usize = 10;
const DWELL_MS: u64 = 1_500;
/// Requests of the loaded phase, one per tick.
const TICKS: usize = 20;
const TICK: Duration = Duration::from_millis(100);
const ORDINARY_USERS: usize = 300;
/// Events per ordinary user over the loaded phase (0.1 per tick: far
/// under the rate).
const ORDINARY_EVENTS_PER_USER: usize = 2;

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn with_id(user: &str, id: &str) -> String {
    event(user, &format!(r#","event_id":"{id}""#))
}

#[test]
fn a_hot_key_overflows_and_comes_back_and_a_forced_key_always_overflows() {
    let broker = Broker::start();
    broker.create_topic(OVERFLOW_TOPIC);
    let tag = format!("hot{}_", now_ms());
    let hot = format!("{tag}hot");
    let forced = format!("{tag}forced");
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        env: vec![
            ("SLUICE_OVERFLOW_TOPIC".into(), OVERFLOW_TOPIC.into()),
            (
                "SLUICE_OVERFLOW_KEY_EVENTS_PER_SECOND".into(),
                RATE.to_string(),
            ),
            ("SLUICE_OVERFLOW_KEY_BURST".into(), BURST.to_string()),
            ("SLUICE_OVERFLOW_DWELL_MS".into(), DWELL_MS.to_string()),
            (
                "SLUICE_OVERFLOW_FORCE_KEYS".into(),
                format!("{TENANT}:{forced}"),
            ),
        ],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let headers = [("X-CS-API-Key", KEY), ("Content-Type", "application/json")];
    let mut next_id = 1u64;
    let mut ids = |count: usize| -> Vec<String> {
        let taken: Vec<String> = (0..count).map(|i| uuid(next_id + i as u64)).collect();
        next_id += count as u64;
        taken
    };
    let mut sent: HashMap<String, String> = HashMap::new(); // event id -> user

    // Loaded phase: each tick, 15 x RATE x TICK of the hot user's events
    // and a slice of the ordinary users', in one batch.
    let hot_per_tick = 15 * RATE * TICK.as_millis() as usize / 1_000;
    let ordinary_per_tick = ORDINARY_USERS * ORDINARY_EVENTS_PER_USER / TICKS;
    let start = Instant::now();
    for tick in 0..TICKS {
        let mut events = Vec::new();
        for id in ids(hot_per_tick) {
            events.push(with_id(&hot, &id));
            sent.insert(id, hot.clone());
        }
        for (slot, id) in ids(ordinary_per_tick).into_iter().enumerate() {
            let user = format!(
                "{tag}user{}",
                (tick * ordinary_per_tick + slot) % ORDINARY_USERS
            );
            events.push(with_id(&user, &id));
            sent.insert(id, user);
        }
        let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
        let answer = sluice.post("/v1/events/batch", &headers, body.as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.text());
        std::thread::sleep(
            (start + TICK * (tick as u32 + 1)).saturating_duration_since(Instant::now()),
        );
    }
    assert_eq!(
        sluice.metric("sluice_overflow_keys"),
        1.0,
        "the hot user overflows now"
    );

    // A forced key overflows at any rate.
    for id in ids(5) {
        let answer = sluice.post("/v1/events", &headers, with_id(&forced, &id).as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.text());
        sent.insert(id, forced.clone());
    }

    // Under the rate for the dwell (silent), then at half the rate: back
    // on its partition.
    std::thread::sleep(Duration::from_millis(DWELL_MS + 300));
    let mut late = BTreeSet::new();
    for id in ids(4) {
        let answer = sluice.post("/v1/events", &headers, with_id(&hot, &id).as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.text());
        sent.insert(id.clone(), hot.clone());
        late.insert(id);
        std::thread::sleep(Duration::from_millis(2_000 / RATE as u64));
    }
    assert_eq!(
        sluice.metric("sluice_overflow_keys"),
        0.0,
        "back under the rate"
    );

    let main: Vec<Consumed> = consume_to_end(&broker.address, TOPIC, Duration::from_secs(30))
        .into_iter()
        .filter(|record| is_tagged(record, &tag))
        .collect();
    let overflow: Vec<Consumed> =
        consume_to_end(&broker.address, OVERFLOW_TOPIC, Duration::from_secs(30))
            .into_iter()
            .filter(|record| is_tagged(record, &tag))
            .collect();

    // Every event stored once, in one of the two topics.
    let mut stored: HashMap<String, usize> = HashMap::new();
    for record in main.iter().chain(&overflow) {
        *stored
            .entry(record.value["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(stored.len(), sent.len(), "every event stored");
    assert!(
        stored.values().all(|&count| count == 1),
        "an event stored twice"
    );

    // Nobody but the hot and forced users was rerouted.
    let user_of = |record: &Consumed| record.value["user_id"].as_str().unwrap().to_string();
    let rerouted_users: BTreeSet<String> = overflow.iter().map(user_of).collect();
    assert_eq!(
        rerouted_users,
        BTreeSet::from([hot.clone(), forced.clone()])
    );

    // The overflow topic's records: header `overflow` with the reason,
    // no Kafka key (spread, the key in header `key`), over partitions.
    for record in &overflow {
        let user = user_of(record);
        let reason = if user == hot { "rate" } else { "forced" };
        assert_eq!(record.header("overflow"), Some(reason), "{record:?}");
        assert_eq!(record.key, "", "spread: produced without a key");
        assert_eq!(
            record.header("key"),
            Some(format!("{TENANT}:{user}").as_str())
        );
        assert!(record.header("request_id").is_some());
    }
    let hot_rerouted = overflow.iter().filter(|r| user_of(r) == hot).count();
    let hot_sent = sent.values().filter(|user| **user == hot).count();
    assert!(
        hot_rerouted * 2 >= hot_sent,
        "{hot_rerouted} of the hot user's {hot_sent} events rerouted"
    );
    let spread: BTreeSet<i32> = overflow
        .iter()
        .filter(|r| user_of(r) == hot)
        .map(|r| r.partition)
        .collect();
    assert!(spread.len() > 1, "spread over partitions: {spread:?}");
    assert_eq!(overflow.iter().filter(|r| user_of(r) == forced).count(), 5);
    eprintln!(
        "hot keys: {} events sent, {} stored once; hot user {hot_rerouted} of {hot_sent} rerouted over partitions {spread:?}; {} users rerouted",
        sent.len(),
        stored.len(),
        rerouted_users.len()
    );

    // The main topic: keyed, no overflow header; the hot user's records
    // (its burst, then its late events) on one partition, its key's.
    for record in &main {
        assert_eq!(record.key, format!("{TENANT}:{}", user_of(record)));
        assert_eq!(record.header("overflow"), None);
    }
    let hot_main: Vec<&Consumed> = main.iter().filter(|r| user_of(r) == hot).collect();
    let partitions: BTreeSet<i32> = hot_main.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 1, "{partitions:?}");
    let back: BTreeSet<String> = hot_main
        .iter()
        .map(|r| r.value["event_id"].as_str().unwrap().to_string())
        .filter(|id| late.contains(id))
        .collect();
    assert_eq!(back, late, "after the dwell, back on its partition");
    assert!(
        hot_main.len() >= BURST && hot_main.len() <= BURST + late.len() + 2,
        "{} of the hot user's events stayed",
        hot_main.len()
    );

    // What the metrics say.
    assert_eq!(
        sluice.metric("sluice_overflow_events_total{reason=\"rate\"}"),
        hot_rerouted as f64
    );
    assert_eq!(
        sluice.metric("sluice_overflow_events_total{reason=\"forced\"}"),
        5.0
    );
    assert_eq!(sluice.metric("sluice_overflow_forced_keys"), 1.0);
}

// Overflow works in `--dev` too (its mock cluster is given the overflow
// topic with the others): a forced key's event is stored and counted.
#[test]
fn dev_mode_has_the_overflow_topic() {
    let sluice = Sluice::dev(&format!(
        "[overflow]\ntopic = \"{OVERFLOW_TOPIC}\"\nforce_keys = [\"{TENANT}:dev_forced\"]\n"
    ));
    let answer = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Type", "application/json")],
        event("dev_forced", "").as_bytes(),
    );
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(
        sluice.metric("sluice_overflow_events_total{reason=\"forced\"}"),
        1.0
    );
}
