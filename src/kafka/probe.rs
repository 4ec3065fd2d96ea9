//! The readiness probe: fetches Kafka metadata on a control thread and
//! records whether the topics are reachable, and if not, why.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use rdkafka::producer::Producer as _;

use super::producer::Producer;
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
