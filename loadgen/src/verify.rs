//! `--verify`: consume the topic from the beginning and check that every
//! acknowledged event_id is there, and count the event ids stored more
//! than once (loadgen's ids are random: any id twice is a duplicate).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::events::event_id_of;

#[derive(Debug, Clone, Copy)]
pub struct Verification {
    pub acknowledged: usize,
    pub found: usize,
    pub missing: usize,
    /// Extra copies of event ids in the topic (an id stored three times
    /// counts 2), over everything read.
    pub duplicated: usize,
}

/// After every acknowledged id was found, reading goes on until the topic
/// is quiet this long, to see copies stored later.
const QUIET: Duration = Duration::from_secs(3);

/// Reads `topic` until every id is found or nothing new arrives for `idle_timeout`.
pub fn verify(
    brokers: &str,
    topic: &str,
    acknowledged: &[u128],
    idle_timeout: Duration,
) -> anyhow::Result<Verification> {
    let mut wanted: HashSet<u128> = acknowledged.iter().copied().collect();
    let total = wanted.len();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "loadgen-verify")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .context("creating the verification consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching topic metadata")?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .context("topic not found")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut last_progress = Instant::now();
    let mut last_message = Instant::now();
    let mut seen: HashMap<u128, u32> = HashMap::new();
    let mut duplicates_shown = 0;
    while last_progress.elapsed() < idle_timeout
        && !(wanted.is_empty() && last_message.elapsed() >= QUIET)
    {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        last_message = Instant::now();
        if let Some(id) = message.payload().and_then(event_id_of) {
            let count = seen.entry(id).or_default();
            *count += 1;
            if *count == 2 && duplicates_shown < 20 {
                duplicates_shown += 1;
                eprintln!(
                    "verify: event_id {id:032x} stored again (partition {}, offset {})",
                    message.partition(),
                    message.offset()
                );
            }
            if wanted.remove(&id) {
                last_progress = Instant::now();
            }
        }
    }
    for id in wanted.iter().take(20) {
        eprintln!("verify: acknowledged and not found: event_id {id:032x}");
    }
    Ok(Verification {
        acknowledged: total,
        found: total - wanted.len(),
        missing: wanted.len(),
        duplicated: seen.values().map(|&count| count as usize - 1).sum(),
    })
}
