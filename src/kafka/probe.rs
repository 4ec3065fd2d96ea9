//! The readiness probe: fetches Kafka metadata on a control thread and
//! records whether the topics are reachable, and if not, why.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use rdkafka::producer::Producer as _;

use super::producer::Producer;
use crate::health::Readiness;

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
    let timeout = interval.max(Duration::from_millis(500));
    loop {
        let result = check(&producer.load(), &topic_names, timeout);
        readiness.set_kafka(result);
        if !pause(interval) {
            return;
        }
    }
}
