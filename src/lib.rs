//! sluice: a thread-per-core HTTP/1.1-to-Kafka event ingestion server.
//!
//! Map of the crate (ARCHITECTURE.md has the data path and invariants):
//! - [`config`]: TOML, environment and flags into one [`config::Config`].
//! - [`http`]: HTTP/1.1 framing; knows nothing of events.
//! - [`auth`]: API-key snapshots, swapped atomically on reload; [`pg_keys`]
//!   loads them from PostgreSQL on a control-plane thread.
//! - [`rate`]: per-key limits; [`fleet`] shares them across instances
//!   through Redis, from a control-plane thread.
//! - [`split`] and [`event`]: request bodies into validated, enriched records.
//! - [`kafka`]: the only module that knows rdkafka; producer threads and the
//!   hand-off to and from the cores.
//! - [`server`]: core threads, connections, in-flight tracking, control plane.
//! - [`cpus`]: CPU lists, affinity, cgroup quotas (start-up only).
//! - [`route`]: which target goes where; shared by the server and metrics.
//! - [`metrics`], [`health`], [`shutdown`], [`error`], [`clock`]:
//!   cross-cutting state.

pub mod auth;
pub mod clock;
pub mod config;
pub mod cors;
pub mod cpus;
pub mod error;
pub mod event;
pub mod fleet;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod pg_keys;
pub mod rate;
pub mod route;
pub mod secret;
pub mod segment;
pub mod server;
pub mod shutdown;
pub mod split;
