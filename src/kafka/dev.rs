//! `--dev`: librdkafka's in-process mock cluster, so sluice runs with no
//! external service. Nothing it stores is durable.

use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Brokers in the mock cluster.
const BROKERS: i32 = 3;
/// Partitions per mock topic.
const PARTITIONS: i32 = 3;

/// A running mock cluster; dropping it stops it.
pub struct DevCluster {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl DevCluster {
    /// Starts the cluster and creates `topics`.
    pub fn start(topics: &[&str]) -> anyhow::Result<DevCluster> {
        let cluster = MockCluster::new(BROKERS).context("starting the mock Kafka cluster")?;
        for topic in topics {
            cluster
                .create_topic(topic, PARTITIONS, 1)
                .with_context(|| format!("creating mock topic {topic}"))?;
        }
        Ok(DevCluster { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
