//! Kafka metadata: the readiness probe, which fetches it on a control
//! thread and records whether the topics are reachable, and if not, why;
//! and [`cluster_metadata`], the one-off fetch of `sluice check`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use rdkafka::producer::{BaseProducer, Producer as _};

use super::producer::Producer;
use crate::config::Config;
use crate::health::Readiness;

/// A metadata fetch waits at least this long: a remote cluster's first
/// TLS and SASL round trips need it.
pub const METADATA_TIMEOUT_MIN_MS: u64 = 500;
/// ... and at most this long, whatever the probe interval: the shutdown
/// joins the probe, so a fetch waiting on a hung broker must not hold it
/// for a long interval (the fetch used to wait the whole interval).
pub const METADATA_TIMEOUT_MAX_MS: u64 = 2_000;
const _: () = assert!(METADATA_TIMEOUT_MIN_MS <= METADATA_TIMEOUT_MAX_MS);

/// How long one probe round's metadata fetch may wait.
pub fn metadata_timeout(interval: Duration) -> Duration {
    interval.clamp(
        Duration::from_millis(METADATA_TIMEOUT_MIN_MS),
        Duration::from_millis(METADATA_TIMEOUT_MAX_MS),
    )
}

/// Checks both topics once.
pub fn check(producer: &Producer, topics: &[&str], timeout: Duration) -> Result<(), String> {
    for topic in topics {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|error| format!("kafka metadata unavailable: {error}"))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == *topic) else {
            return Err(format!("topic {topic} not in metadata"));
        };
        if let Some(error) = found.error() {
            return Err(format!("topic {topic}: {:?}", error));
        }
        if found.partitions().is_empty() {
            return Err(format!("topic {topic} has no partitions"));
        }
    }
    Ok(())
}

/// Runs the probe every `interval` while `pause(interval)` returns true
/// (it sleeps, and returns false once the server stops).
pub fn run(
    producer: Arc<ArcSwap<Producer>>,
    topics: Vec<String>,
    interval: Duration,
    readiness: Arc<Readiness>,
    pause: impl Fn(Duration) -> bool,
) {
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let timeout = metadata_timeout(interval);
    loop {
        let result = check(&producer.load(), &topic_names, timeout);
        readiness.set_kafka(result);
        if !pause(interval) {
            return;
        }
    }
}

/// What a cluster said about its topics.
#[derive(Debug)]
pub struct ClusterMetadata {
    /// Brokers in the metadata.
    pub brokers: usize,
    pub topics: Vec<TopicMetadata>,
}

/// One topic of a cluster, and whether it can take records.
#[derive(Debug)]
pub struct TopicMetadata {
    pub name: String,
    /// Why it cannot (the broker's error for it, or no partitions);
    /// `None` when it can.
    pub problem: Option<String>,
}

impl ClusterMetadata {
    pub fn topic(&self, name: &str) -> Option<&TopicMetadata> {
        self.topics.iter().find(|topic| topic.name == name)
    }
}

/// Why [`cluster_metadata`] has no answer.
#[derive(Debug)]
pub enum MetadataError {
    /// The Kafka client refuses the configuration.
    Client(String),
    /// No metadata within the timeout.
    Unanswered(String),
}

/// Asks the cluster of `config` for the metadata of all its topics, with a
/// client of its own that lives for this call only (`sluice check`). All
/// topics: asking for one by name may create it on a cluster that
/// auto-creates topics, and a check must change nothing.
pub fn cluster_metadata(
    config: &Config,
    timeout: Duration,
) -> Result<ClusterMetadata, MetadataError> {
    let client: BaseProducer = super::producer::client_config(config, &config.kafka.brokers)
        .create()
        .map_err(|error| MetadataError::Client(error.to_string()))?;
    let metadata = client
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|error| MetadataError::Unanswered(error.to_string()))?;
    let topics = metadata
        .topics()
        .iter()
        .map(|topic| TopicMetadata {
            name: topic.name().to_string(),
            problem: match topic.error() {
                Some(error) => Some(format!("{error:?}")),
                None if topic.partitions().is_empty() => Some("no partitions".into()),
                None => None,
            },
        })
        .collect();
    Ok(ClusterMetadata {
        brokers: metadata.brokers().len(),
        topics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_timeout_is_the_interval_within_its_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(metadata_timeout(ms(50)), ms(METADATA_TIMEOUT_MIN_MS));
        assert_eq!(metadata_timeout(ms(1_000)), ms(1_000));
        assert_eq!(metadata_timeout(ms(60_000)), ms(METADATA_TIMEOUT_MAX_MS));
    }
}
