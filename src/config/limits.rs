//! `[limits]`: every size, count and rate bound of a request, a core and
//! a key, with the Redis exchange of fleet-wide limits; and the fixed
//! bounds of what the server builds from a request, which the limits are
//! checked against.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};

/// What one request may make the server build, in record bytes (values,
/// keys and dead letters): this many times its body's bytes (inflated,
/// when gzipped: that size has its own limit) plus
/// [`RECORD_BYTES_PER_EVENT_MAX`] per event. A valid native event's
/// record is its bytes plus the server's fields (under 1 KiB); what can
/// exceed it is a Segment batch's shared `context`, copied into each call,
/// so that 250 KB on the wire once built 200 MB. Such a request is refused
/// with a 413 that names this bound: resending it cannot help.
pub const RECORD_BYTES_PER_BODY_BYTE_MAX: usize = 4;
/// See [`RECORD_BYTES_PER_BODY_BYTE_MAX`]: the server's fields of one
/// record (tenant, project, receive time, event id, the Kafka key) or one
/// dead letter's envelope (error code, message and field).
pub const RECORD_BYTES_PER_EVENT_MAX: usize = 1024;

/// The most the server adds to an event's bytes in its Kafka message: its
/// fields in the value (about 400 bytes), the key (`<tenant>:<user_id>`,
/// under 400) and the headers (about 1,700: `tenant_id`, `event_type`,
/// `content-type`, `request_id` up to 128, `traceparent` up to 128,
/// `tracestate` up to 512, `schema` up to 160, `overflow` and a spread
/// record's `key`, with their names and lengths).
/// `limits.event_bytes_max` plus this must fit librdkafka's
/// `message.max.bytes`, checked at start, so that no valid event is
/// refused by Kafka after the client waited (a 503 that no retry cures).
pub const RECORD_OVERHEAD_BYTES_MAX: usize = 4096;

/// librdkafka's `message.max.bytes` when `[kafka.properties]` sets none.
pub const KAFKA_MESSAGE_BYTES_MAX_DEFAULT: usize = 1_000_000;

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

/// A key's rate limits, as the keys file, PostgreSQL or the
/// `limits.default_*` keys state them; 0 means unlimited for that
/// dimension. `tenancy::rate` enforces them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub events_per_second: u64,
    /// Events admitted at once from idle; 0: one second's worth.
    pub burst_events: u64,
    pub bytes_per_second: u64,
    /// Bytes admitted at once from idle; 0: one second's worth.
    pub burst_bytes: u64,
}

impl KeyLimits {
    pub fn is_unlimited(&self) -> bool {
        self.events_per_second == 0 && self.bytes_per_second == 0
    }
}

impl LimitsConfig {
    /// The rate limits of keys that set none of their own.
    pub fn default_key_limits(&self) -> KeyLimits {
        KeyLimits {
            events_per_second: self.default_rate_events_per_sec,
            burst_events: self.default_burst_events,
            bytes_per_second: self.default_rate_bytes_per_sec,
            burst_bytes: self.default_burst_bytes,
        }
    }
}
