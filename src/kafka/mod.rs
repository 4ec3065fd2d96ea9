//! Kafka: the only module that knows rdkafka.
//!
//! Cores hand [`crate::handoff::Batch`]es over a bounded crossbeam channel to
//! dedicated producer threads; delivery reports come back through each
//! core's [`crate::handoff::Mailbox`]. See ARCHITECTURE.md for the whole path.

pub mod client_log;
pub mod dev;
pub mod probe;
pub mod producer;
pub mod send;

/// Whether the configured librdkafka properties keep `acks=all` and idempotence,
/// which durable mode's promise rests on.
pub fn check_durable_properties(
    properties: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    for (name, required) in [
        ("acks", &["all", "-1"][..]),
        ("enable.idempotence", &["true"][..]),
    ] {
        if let Some(value) = properties.get(name) {
            if !required.contains(&value.as_str()) {
                anyhow::bail!(
                    "kafka.properties sets {name}={value}, but ack_mode = \"durable\" requires {name}={}",
                    required[0]
                );
            }
        }
    }
    Ok(())
}
