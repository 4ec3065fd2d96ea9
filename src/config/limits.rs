//! `[limits]`: every size, count and rate bound of a request, a core and
//! a key, with the Redis exchange of fleet-wide limits.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Request line plus headers (431 beyond).
    pub header_bytes_max: usize,
    /// Body bytes on the wire (413 beyond).
    pub body_bytes_max: usize,
    /// Body bytes after gzip decompression (413 beyond).
    pub decompressed_body_bytes_max: usize,
    /// Events in one batch request (413 beyond).
    pub batch_events_max: usize,
    /// Bytes of one event as sent (413 beyond); below Kafka's message.max.bytes.
    pub event_bytes_max: usize,
    /// Nesting depth allowed inside `properties`.
    pub properties_depth_max: usize,
    /// How far in the past `event_time` may be.
    pub event_time_past_ms: u64,
    /// How far in the future `event_time` may be.
    pub event_time_future_ms: u64,
    /// Event bytes awaiting Kafka per core; beyond it requests get 503.
    pub inflight_bytes_per_core_max: usize,
    /// Requests awaiting Kafka per core; beyond it requests get 503.
    pub inflight_requests_per_core_max: usize,
    /// Kafka records (events and dead letters) awaiting delivery per core;
    /// beyond it requests get 503. Sizes each core's completion queue.
    pub inflight_events_per_core_max: usize,
    /// Bytes of an invalid event copied into its dead-letter record.
    pub dlq_raw_bytes_max: usize,
    /// Events per second per key, for keys that set none; 0: unlimited.
    pub default_rate_events_per_sec: u64,
    /// Events a key may send at once from idle; 0: one second's worth.
    pub default_burst_events: u64,
    /// Body bytes per second per key, for keys that set none; 0: unlimited.
    pub default_rate_bytes_per_sec: u64,
    /// Bytes a key may send at once from idle; 0: one second's worth.
    pub default_burst_bytes: u64,
    /// Redis shared by the instances for fleet-wide per-key limits, e.g.
    /// `redis://redis.internal:6379/`; empty: each instance limits alone.
    /// Masked wherever it is shown: it may hold a password.
    pub redis_url: Secret,
    /// How often usage is exchanged with Redis (10..=250 ms).
    pub redis_sync_interval_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_bytes_max: 16 * 1024,
            body_bytes_max: 4 * 1024 * 1024,
            decompressed_body_bytes_max: 16 * 1024 * 1024,
            batch_events_max: 1_000,
            event_bytes_max: 512 * 1024,
            properties_depth_max: 16,
            event_time_past_ms: 7 * 24 * 3_600_000,
            event_time_future_ms: 10 * 60_000,
            inflight_bytes_per_core_max: 64 * 1024 * 1024,
            inflight_requests_per_core_max: 16_384,
            inflight_events_per_core_max: 262_144,
            dlq_raw_bytes_max: 8 * 1024,
            default_rate_events_per_sec: 0,
            default_burst_events: 0,
            default_rate_bytes_per_sec: 0,
            default_burst_bytes: 0,
            redis_url: Secret::default(),
            redis_sync_interval_ms: 100,
        }
    }
}

impl LimitsConfig {
    /// The rate limits of keys that set none of their own.
    pub fn default_key_limits(&self) -> crate::tenancy::rate::Limits {
        crate::tenancy::rate::Limits {
            events_per_second: self.default_rate_events_per_sec,
            burst_events: self.default_burst_events,
            bytes_per_second: self.default_rate_bytes_per_sec,
            burst_bytes: self.default_burst_bytes,
        }
    }
}
