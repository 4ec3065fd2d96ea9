//! Events: request bodies into validated, enriched Kafka records. [`split`]
//! finds the events of a body (one, a JSON batch, NDJSON, a Segment batch),
//! [`segment`] rewrites Segment calls into native events, and [`validate`]
//! checks each event and writes its record (or its dead letter);
//! [`schema`] holds the tenants' event contracts (JSON Schemas). Knows
//! nothing of sockets, keys' storage or Kafka.

pub mod schema;
pub mod segment;
pub mod split;
pub mod validate;
