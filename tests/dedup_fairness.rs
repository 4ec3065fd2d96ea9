//! Dedup fairness between tenants (SPEC §15) and the entries dedup must
//! not lose (issue 30, items 6 and 7). One tenant flooding the table, or
//! Redis, with new ids must not make another tenant's retries be stored
//! again; a failed Redis round must not lose the outcomes it carried.
//! Each test reads Kafka back to count what was stored twice.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// tenant_b's key in the harness's keys file.
const ATTACKER_KEY: &str = "password";
const ENTRIES: usize = 4_096;
const VICTIM_EVENTS: u64 = 400;
const BATCH: u64 = 20;

fn uuid(n: u64) -> String {
    format!("6a1f0c2e-0000-4000-8000-{n:012x}")
}

/// The event id `uuid(n)` as sluice keys it.
fn event_id(n: u64) -> u128 {
    0x6a1f0c2e_0000_4000_8000_000000000000u128 | u128::from(n)
}

fn batch_body(tag: &str, ids: std::ops::Range<u64>) -> String {
    let events: Vec<String> = ids
        .map(|n| {
            event(
                &format!("{tag}{n}"),
                &format!(r#","event_id":"{}""#, uuid(n)),
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

/// Sends ids `ids` in batches, retrying a 503 as a client would, and
/// returns how many the answers listed as duplicates.
fn send_all(sluice: &Sluice, key: &str, tag: &str, ids: std::ops::Range<u64>) -> usize {
    let mut duplicates = 0;
    let mut start = ids.start;
    while start < ids.end {
        let end = (start + BATCH).min(ids.end);
        let body = batch_body(tag, start..end);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = sluice.post_batch(key, &body);
            match response.status {
                202 => {
                    duplicates += response.json()["duplicates"].as_array().map_or(0, Vec::len);
                    break;
                }
                503 => {
                    assert!(Instant::now() < deadline, "{}", response.text());
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => panic!("{other}: {}", response.text()),
            }
        }
        start = end;
    }
    duplicates
}

/// Records per `user_id` starting with `tag`, over `brokers`.
fn stored(broker: &Broker, tag: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in consume_to_end(&broker.address, TOPIC, Duration::from_secs(60)) {
        if is_tagged(&record, tag) {
            let user = record.value["user_id"].as_str().unwrap().to_string();
            *counts.entry(user).or_default() += 1;
        }
    }
    counts
}

/// A tenant's value of a per-tenant metric (0 when absent).
fn tenant_metric(sluice: &Sluice, name: &str, tenant: &str) -> f64 {
    let prefix = format!("{name}{{tenant=\"{tenant}\"}} ");
    sluice
        .get("/metrics")
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0.0)
}

// The issue's attack on one instance: with dedup.entries_max 4,096, a
// tenant sending 8,192 new ids made 389 of the victim's 400 retries be
// published again. The victim holds 400 entries, within its share.
#[test]
fn a_tenants_flood_does_not_make_anothers_retries_stored_twice() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!("[dedup]\nentries_max = {ENTRIES}\n"),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let base = now_ms() % 1_000_000 * 10_000;
    let (victim, attacker) = (format!("victim{base}_"), format!("flood{base}_"));
    let victim_ids = base..base + VICTIM_EVENTS;
    assert_eq!(send_all(&sluice, KEY, &victim, victim_ids.clone()), 0);
    // Twice the table in new ids, from four connections at once; the
    // victim retries all of its events once meanwhile, and once after.
    let flood = base + 100_000..base + 100_000 + 2 * ENTRIES as u64;
    let quarter = flood.clone().count() as u64 / 4;
    let during = std::thread::scope(|scope| {
        for part in 0..4 {
            let (sluice, attacker) = (&sluice, &attacker);
            let start = flood.start + part * quarter;
            scope.spawn(move || send_all(sluice, ATTACKER_KEY, attacker, start..start + quarter));
        }
        std::thread::sleep(Duration::from_millis(500));
        send_all(&sluice, KEY, &victim, victim_ids.clone())
    });
    assert_eq!(during as u64, VICTIM_EVENTS, "a retry during the flood");
    let answered = send_all(&sluice, KEY, &victim, victim_ids);
    let counts = stored(&broker, &victim);
    let twice = counts.values().filter(|&&count| count > 1).count();
    eprintln!(
        "local table of {ENTRIES}: {answered} of the victim's {VICTIM_EVENTS} retries answered as duplicates; victim events stored twice: {twice}"
    );
    assert_eq!(counts.len() as u64, VICTIM_EVENTS, "{counts:?}");
    assert_eq!(
        twice, 0,
        "the flood made the victim's retries be stored again"
    );
    assert_eq!(answered as u64, VICTIM_EVENTS);
    let evicted = "sluice_tenant_dedup_evicted_young_total";
    assert_eq!(tenant_metric(&sluice, evicted, TENANT), 0.0);
    assert!(
        tenant_metric(&sluice, evicted, "tenant_b")
            + tenant_metric(
                &sluice,
                "sluice_tenant_dedup_unremembered_total",
                "tenant_b"
            )
            > 0.0,
        "the flood's own losses are not counted"
    );
}

fn fleet_instance(broker: &Broker, redis: &services::Redis) -> Sluice {
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!(
            "[kafka]\nmessage_timeout_ms = 5000\n[server]\ndelivery_timeout_ms = 2000\n[dedup]\nentries_max = {ENTRIES}\nredis_url = \"{}\"\n",
            redis.url()
        ),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    sluice
}

fn redis_connection(redis: &services::Redis) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

fn config_set(connection: &mut redis::Connection, name: &str, value: &str) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(connection)
        .unwrap();
}

fn info_field(connection: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(connection).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

fn victim_keys_in_redis(connection: &mut redis::Connection, ids: std::ops::Range<u64>) -> usize {
    ids.filter(|&n| {
        let value: Option<String> = redis::cmd("GET")
            .arg(format!("sluice:dd:{TENANT}:{:032x}", event_id(n)))
            .query(connection)
            .unwrap();
        value.as_deref() == Some("S")
    })
    .count()
}

/// The attack's Redis twin: the victim stores 400 events through
/// instance A; the attacker sends A 8,192 new ids; the victim retries on
/// instance B, whose table never saw them: only Redis can catch them.
/// Redis has a memory limit just above what it held at half the flood,
/// as an operator sizes it for the tenants' caps. Without caps the
/// flood's second half took Redis past it: under `allkeys-lru` it evicted
/// the victim's keys (B stored the retries again); under `noeviction` it
/// refused writes, failing the rounds of every tenant (fleet dedup off
/// for all while the flood lasts).
fn flood_through_redis(policy: &str) {
    let broker = Broker::start();
    let redis = services::Redis::start();
    let mut connection = redis_connection(&redis);
    config_set(&mut connection, "maxmemory-policy", policy);
    let (a, b) = (
        fleet_instance(&broker, &redis),
        fleet_instance(&broker, &redis),
    );
    let base = now_ms() % 1_000_000 * 10_000;
    let (victim, attacker) = (format!("rvictim{base}_"), format!("rflood{base}_"));
    let victim_ids = base..base + VICTIM_EVENTS;
    assert_eq!(send_all(&a, KEY, &victim, victim_ids.clone()), 0);
    wait_until(
        "the victim's outcomes reached Redis",
        Duration::from_secs(20),
        || victim_keys_in_redis(&mut connection, victim_ids.clone()) == VICTIM_EVENTS as usize,
    );
    let flood = base + 100_000..base + 100_000 + 2 * ENTRIES as u64;
    let half = flood.start + ENTRIES as u64;
    send_all(&a, ATTACKER_KEY, &attacker, flood.start..half);
    std::thread::sleep(Duration::from_millis(500));
    let used = info_field(&mut connection, "memory", "used_memory");
    config_set(
        &mut connection,
        "maxmemory",
        &(used + 256 * 1024).to_string(),
    );
    send_all(&a, ATTACKER_KEY, &attacker, half..flood.end);
    let kept = victim_keys_in_redis(&mut connection, victim_ids.clone());
    let evicted = info_field(&mut connection, "stats", "evicted_keys");
    let failures = a.metric("sluice_dedup_redis_failures_total");
    let answered = send_all(&b, KEY, &victim, victim_ids);
    let counts = stored(&broker, &victim);
    let twice = counts.values().filter(|&&count| count > 1).count();
    eprintln!(
        "Redis ({policy}): victim keys kept {kept} of {VICTIM_EVENTS}, keys Redis evicted {evicted}, failed rounds on A {failures}; on B {answered} retries answered as duplicates; victim events stored twice: {twice}"
    );
    assert_eq!(counts.len() as u64, VICTIM_EVENTS, "{counts:?}");
    assert_eq!(
        twice, 0,
        "the flood made the victim's retries be stored again"
    );
    assert_eq!(kept as u64, VICTIM_EVENTS);
    assert_eq!(failures, 0.0, "the flood filled Redis: rounds failed");
    assert!(
        tenant_metric(&a, "sluice_tenant_dedup_redis_evicted_total", "tenant_b") > 0.0,
        "the attacker's own keys pushed out are not counted"
    );
    assert_eq!(
        tenant_metric(&a, "sluice_tenant_dedup_redis_evicted_total", TENANT),
        0.0
    );
}

#[test]
fn a_tenants_flood_through_redis_noeviction_stores_no_retry_twice() {
    flood_through_redis("noeviction");
}

#[test]
fn a_tenants_flood_through_redis_allkeys_lru_stores_no_retry_twice() {
    flood_through_redis("allkeys-lru");
}

// Item 7: a failed Redis round dropped the outcomes it carried
// (`settles.clear()`): the key stayed pending for the pending TTL (a
// retry elsewhere got 503 meanwhile) and a retry after it was stored
// again. Here Redis refuses writes (out of memory) while the outcome is
// sent, then takes them again. (The outcome is "stored", or "not stored"
// when the producer fenced by the broker's pause fails the record: either
// must reach Redis.)
#[test]
fn the_outcomes_of_a_failed_redis_round_are_sent_again() {
    let broker = Broker::start();
    let redis = services::Redis::start();
    let mut connection = redis_connection(&redis);
    let (a, b) = (
        fleet_instance(&broker, &redis),
        fleet_instance(&broker, &redis),
    );
    let n = now_ms() % 1_000_000 * 10_000;
    let tag = format!("settle{n}_");
    let key = format!("sluice:dd:{TENANT}:{:032x}", event_id(n));
    let get = |connection: &mut redis::Connection| -> Option<String> {
        redis::cmd("GET").arg(&key).query(connection).unwrap()
    };
    let body = batch_body(&tag, n..n + 1);
    broker.hang();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| a.post_batch(KEY, &body).status);
        wait_until(
            "A claimed the event in Redis",
            Duration::from_secs(10),
            || get(&mut connection).is_some_and(|value| value.starts_with('P')),
        );
        let failures = a.metric("sluice_dedup_redis_failures_total");
        config_set(&mut connection, "maxmemory", "1");
        broker.signal(libc::SIGCONT);
        wait_until(
            "the round with the outcome failed",
            Duration::from_secs(15),
            || a.metric("sluice_dedup_redis_failures_total") > failures,
        );
        assert!(matches!(first.join().unwrap(), 202 | 503));
    });
    config_set(&mut connection, "maxmemory", "0");
    let settled = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        get(&mut connection).is_none_or(|value| value == "S")
    });
    let value = get(&mut connection);
    let retry = b.post_batch(KEY, &body);
    eprintln!(
        "after Redis took writes again: key {value:?}; the retry on B: {} {}",
        retry.status,
        retry.text()
    );
    assert!(settled, "the outcome was lost: key still {value:?}");
    assert_eq!(retry.status, 202, "{}", retry.text());
    assert_eq!(stored(&broker, &tag).values().sum::<usize>(), 1);
    assert_eq!(a.metric("sluice_dedup_redis_settles_given_up_total"), 0.0);
}

// The claim script alone: a tenant past its cap deletes its own oldest
// keys, never another tenant's, and says how many.
#[test]
fn the_redis_claim_keeps_a_tenant_within_its_cap() {
    let redis = services::Redis::start();
    let mut connection = redis_connection(&redis);
    let claim = redis::Script::new(sluice::dedup::fleet::CLAIM);
    let run = |connection: &mut redis::Connection, tenant: &str, id: u64| -> redis::Value {
        claim
            .key(format!("sluice:dd:{tenant}:{id:032x}"))
            .key(format!("sluice:ddi:{tenant}"))
            .arg("P1")
            .arg(15_000)
            .arg(10)
            .arg(3_600_000)
            .arg(format!("{id:032x}"))
            .arg(format!("sluice:dd:{tenant}:"))
            .invoke(connection)
            .unwrap()
    };
    for id in 0..5 {
        assert_eq!(run(&mut connection, "victim", id), redis::Value::Nil);
    }
    for id in 0..25 {
        let answer = run(&mut connection, "flood", id);
        let expected = if id < 10 {
            redis::Value::Nil
        } else {
            redis::Value::Int(1)
        };
        assert_eq!(answer, expected, "claim {id}");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Known keys are answered with their value, and not counted again.
    assert_eq!(
        run(&mut connection, "flood", 24),
        redis::Value::BulkString(b"P1".to_vec())
    );
    let live = |connection: &mut redis::Connection, tenant: &str, ids: std::ops::Range<u64>| {
        ids.filter(|id| {
            redis::cmd("EXISTS")
                .arg(format!("sluice:dd:{tenant}:{id:032x}"))
                .query::<bool>(connection)
                .unwrap()
        })
        .count()
    };
    assert_eq!(live(&mut connection, "victim", 0..5), 5);
    assert_eq!(live(&mut connection, "flood", 0..15), 0, "the oldest go");
    assert_eq!(live(&mut connection, "flood", 15..25), 10);
    let indexed: u64 = redis::cmd("ZCARD")
        .arg("sluice:ddi:flood")
        .query(&mut connection)
        .unwrap();
    assert_eq!(indexed, 10);
}
