//! A key lands on the partition a Java producer (and Kafka Streams) would
//! choose: murmur2 of the key bytes, made positive, modulo the partition
//! count. The reference hash is written here from the Java client's
//! `Utils.murmur2`, checked against Kafka's own test vectors, and compared
//! with where a real broker stored sluice's records.

mod common;

use std::time::Duration;

use common::*;

/// org.apache.kafka.common.utils.Utils.murmur2, in Java's int arithmetic.
fn java_murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h = SEED ^ length as u32;
    for chunk in data.chunks_exact(4) {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = &data[length & !3..];
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's partition for a key: `toPositive(murmur2(key)) % n`.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (java_murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn the_reference_matches_kafkas_own_vectors() {
    // UtilsTest.testMurmur2 in the Apache Kafka Java client.
    for (input, expected) in [
        (&b"21"[..], -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ] {
        assert_eq!(
            java_murmur2(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn keys_land_where_a_java_producer_puts_them() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("partitioned_{}", now_ms());
    let users: Vec<String> = (0..60).map(|index| format!("{tag}_{index}")).collect();
    let events: Vec<String> = users.iter().map(|user| event(user, "")).collect();
    let response = sluice.post_json(
        "/v1/events/batch",
        &format!("{{\"events\":[{}]}}", events.join(",")),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    let records = consume_until(&broker.address, TOPIC, Duration::from_secs(20), |records| {
        records.iter().filter(|r| r.key.contains(&tag)).count() >= users.len()
    });
    let mine: Vec<&Consumed> = records.iter().filter(|r| r.key.contains(&tag)).collect();
    assert_eq!(mine.len(), users.len());
    let mut per_partition = [0; PARTITIONS as usize];
    for record in mine {
        let expected = java_partition(record.key.as_bytes(), PARTITIONS);
        assert_eq!(
            record.partition, expected,
            "key {} is on partition {}, a Java producer would use {expected}",
            record.key, record.partition
        );
        per_partition[record.partition as usize] += 1;
    }
    // Not one partition for everything: the comparison means something.
    assert!(
        per_partition.iter().all(|&count| count > 0),
        "{per_partition:?}"
    );
}
