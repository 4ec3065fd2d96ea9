//! sluice: a thread-per-core HTTP/1.1-to-Kafka event ingestion server.
//!
//! Map of the crate (ARCHITECTURE.md has the data path and invariants):
//! - [`config`]: TOML, environment and flags into one [`config::Config`],
//!   one submodule per section.
//! - [`http`]: HTTP/1.1 framing; knows nothing of events.
//! - [`json`]: JSON string literals written by hand (a leaf).
//! - [`tenancy`]: API keys and their snapshots, where a request presents
//!   its key, PostgreSQL as a key source, per-key rate limits and their
//!   fleet-wide sharing through Redis.
//! - [`events`]: request bodies into validated, enriched records (batch
//!   splitting, Segment translation, validation, dead letters).
//! - [`hot_keys`]: which record keys are over their rate (SPEC §17), in
//!   a bounded table shared by the cores.
//! - [`handoff`]: what crosses between the cores and the producer threads
//!   (pooled batches, delivery opaques, completions, mailboxes).
//! - [`kafka`]: the only module that knows rdkafka; producer threads, their
//!   counters, the metadata probes.
//! - [`server`]: core threads, connections, in-flight tracking, control plane.
//! - [`check`]: `sluice check`, the configuration dry run.
//! - [`cpus`]: CPU lists, affinity, cgroup quotas (start-up only).
//! - [`route`], [`cors`]: which target goes where, and which origins may send.
//! - [`toml_errors`]: TOML mistakes in plain words, with file, line and key.
//! - [`metrics`], [`health`], [`shutdown`], [`error`], [`clock`], [`secret`]:
//!   cross-cutting state.

pub mod check;
pub mod clock;
pub mod config;
pub mod cors;
pub mod cpus;
pub mod dedup;
pub mod error;
pub mod events;
pub mod handoff;
pub mod health;
pub mod hot_keys;
pub mod http;
pub mod json;
pub mod kafka;
pub mod metrics;
pub mod route;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod tenancy;
pub mod toml_errors;
