//! Events: request bodies into validated, enriched Kafka records. [`split`]
//! finds the events of a body (one, a JSON batch, NDJSON, a Segment batch),
//! [`segment`] rewrites Segment calls into native events, [`validate`]
//! checks each event against the bounds (and [`duplicates`] that no
//! object names a member twice), [`record`] writes a valid one's
//! record (with an id from [`ids`] when it sent none) and [`dead_letter`]
//! an invalid one's; [`schema`] holds the tenants' event contracts (JSON
//! Schemas). Knows nothing of sockets, HTTP, keys' storage or Kafka.

pub mod dead_letter;
pub mod duplicates;
pub mod ids;
pub mod record;
pub mod schema;
pub mod segment;
pub mod split;
pub mod validate;
