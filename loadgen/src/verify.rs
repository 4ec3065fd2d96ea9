//! `--verify`: consume the topic from the beginning and check that every
//! acknowledged event_id is there.

use std::collections::HashSet;
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
}

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
    while !wanted.is_empty() && last_progress.elapsed() < idle_timeout {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(id) = message.payload().and_then(event_id_of) {
            if wanted.remove(&id) {
                last_progress = Instant::now();
            }
        }
    }
    Ok(Verification {
        acknowledged: total,
        found: total - wanted.len(),
        missing: wanted.len(),
    })
}
