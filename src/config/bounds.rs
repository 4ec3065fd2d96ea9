//! The stated range of every numeric setting, and the relations between
//! them. A value outside its range stops start-up with the key, the value
//! and the range: a nonsense setting (a cap of zero that refuses every
//! client, an in-flight table of 10^11 slots) is an operator's typo, never
//! something to run with.

use anyhow::bail;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// librdkafka's largest value for its 32-bit millisecond and byte settings.
const LIBRDKAFKA_INT_MAX: u64 = i32::MAX as u64;
/// Epoch milliseconds fit an i64: the widest event-time window.
const EPOCH_MS_MAX: u64 = i64::MAX as u64;

/// One numeric key's range, inclusive, and what the number counts.
pub struct Bound {
    pub section: &'static str,
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    pub unit: &'static str,
}

const fn bound(
    section: &'static str,
    key: &'static str,
    min: u64,
    max: u64,
    unit: &'static str,
) -> Bound {
    Bound {
        section,
        key,
        min,
        max,
        unit,
    }
}

/// Every numeric key of the configuration (a test checks that none is
/// missing). The upper bounds are far past any sane deployment; they stop
/// a typo from allocating terabytes or waiting for years.
pub const BOUNDS: &[Bound] = &[
    bound("server", "cores", 0, 256, "event loops (0: one per CPU)"),
    bound(
        "server",
        "connections_per_core_max",
        1,
        1_000_000,
        "connections",
    ),
    bound("server", "delivery_timeout_ms", 100, 600_000, "ms"),
    bound("server", "drain_timeout_ms", 0, 600_000, "ms"),
    bound("server", "header_read_timeout_ms", 100, 600_000, "ms"),
    bound("server", "body_read_timeout_ms", 100, HOUR_MS, "ms"),
    bound("server", "idle_timeout_ms", 100, DAY_MS, "ms"),
    bound("server", "write_timeout_ms", 100, 600_000, "ms"),
    bound(
        "server",
        "error_logs_per_second_max",
        0,
        1_000_000,
        "lines per second",
    ),
    bound(
        "server",
        "error_log_bytes_per_second_max",
        // Below one error line's worst size (256 bytes), no line would
        // ever fit and every error line would be dropped silently.
        256,
        GIB,
        "bytes per second",
    ),
    bound("auth", "reload_interval_ms", 100, HOUR_MS, "ms"),
    bound("auth", "postgres_reload_interval_ms", 1_000, DAY_MS, "ms"),
    bound("cors", "max_age_seconds", 0, 86_400, "seconds"),
    bound("dedup", "window_ms", 1_000, 30 * DAY_MS, "ms"),
    bound(
        "dedup",
        "entries_max",
        1_024,
        1 << 31,
        "entries (16 bytes each)",
    ),
    bound("dedup", "redis_timeout_ms", 1, 10_000, "ms"),
    bound(
        "dedup",
        "redis_keys_per_tenant_max",
        0,
        1 << 31,
        "keys (0: dedup.entries_max)",
    ),
    bound("kafka", "producer_threads", 1, 64, "threads"),
    bound("kafka", "linger_ms", 0, 60_000, "ms"),
    bound("kafka", "batch_bytes", 1, LIBRDKAFKA_INT_MAX, "bytes"),
    bound("kafka", "message_timeout_ms", 100, LIBRDKAFKA_INT_MAX, "ms"),
    bound("kafka", "queue_batches_max", 1, 1_000_000, "batches"),
    bound("kafka", "health_interval_ms", 100, HOUR_MS, "ms"),
    bound("limits", "header_bytes_max", 256, MIB, "bytes"),
    bound("limits", "body_bytes_max", 1, GIB, "bytes"),
    bound("limits", "decompressed_body_bytes_max", 1, GIB, "bytes"),
    bound("limits", "batch_events_max", 1, 100_000, "events"),
    bound("limits", "event_bytes_max", 64, 64 * MIB, "bytes"),
    bound("limits", "properties_depth_max", 1, 128, "levels"),
    bound("limits", "event_time_past_ms", 0, EPOCH_MS_MAX, "ms"),
    bound("limits", "event_time_future_ms", 0, EPOCH_MS_MAX, "ms"),
    bound(
        "limits",
        "inflight_bytes_per_core_max",
        MIB,
        64 * GIB,
        "bytes",
    ),
    bound(
        "limits",
        "inflight_requests_per_core_max",
        1,
        1_048_576,
        "requests",
    ),
    bound(
        "limits",
        "inflight_events_per_core_max",
        1,
        4_194_304,
        "events",
    ),
    bound("limits", "dlq_raw_bytes_max", 0, 64 * MIB, "bytes"),
    bound(
        "limits",
        "default_rate_events_per_sec",
        0,
        1_000_000_000,
        "events per second (0: unlimited)",
    ),
    bound("limits", "default_burst_events", 0, 1_000_000_000, "events"),
    bound(
        "limits",
        "default_rate_bytes_per_sec",
        0,
        1 << 40,
        "bytes per second (0: unlimited)",
    ),
    bound("limits", "default_burst_bytes", 0, 1 << 40, "bytes"),
    bound("limits", "redis_sync_interval_ms", 10, 250, "ms"),
    bound(
        "overflow",
        "key_events_per_second",
        1,
        100_000,
        "events per second (per key, per instance)",
    ),
    bound("overflow", "key_burst", 1, 10_000_000, "events"),
    bound("overflow", "dwell_ms", 0, DAY_MS, "ms"),
    bound("schemas", "files_max", 1, 100_000, "files"),
    bound("schemas", "file_bytes_max", KIB, 64 * MIB, "bytes"),
    bound("schemas", "total_bytes_max", KIB, GIB, "bytes"),
    // 256 in-place levels times 128 event levels fit a checker's stack.
    bound("schemas", "ref_depth_max", 2, 256, "subschemas"),
    bound("schemas", "expansion_max", 1, 1_000_000, "subschemas"),
    bound("schemas", "pattern_nfa_bytes_max", KIB, 16 * MIB, "bytes"),
    bound("schemas", "patterns_max", 0, 1_000_000, "patterns"),
    bound(
        "schemas",
        "pattern_states_max",
        0,
        100_000_000,
        "NFA states",
    ),
    bound(
        "schemas",
        "validation_steps_per_event_byte",
        1,
        1_000_000,
        "steps per byte",
    ),
    bound("schemas", "validation_steps_min", 1_000, 1 << 40, "steps"),
    bound("schemas", "core_steps_per_request_max", 0, 1 << 40, "steps"),
    bound("schemas", "core_body_bytes_max", 0, GIB, "bytes"),
    bound("schemas", "checker_threads", 1, 256, "threads"),
    bound(
        "schemas",
        "checker_queue_requests_max",
        1,
        1_000_000,
        "requests",
    ),
];

/// Checks every value of `table` (the configuration as TOML) against
/// [`BOUNDS`], naming each one out of range.
pub fn problems(table: &toml::Table) -> Vec<super::Problem> {
    let mut problems = Vec::new();
    for bound in BOUNDS {
        let key = format!("{}.{}", bound.section, bound.key);
        let Some(value) = table
            .get(bound.section)
            .and_then(|section| section.get(bound.key))
        else {
            problems.push(super::Problem::new(
                &key,
                "not in the configuration (a bug)".into(),
            ));
            continue;
        };
        let number = value.as_integer().unwrap_or(-1);
        if number < 0 || (number as u64) < bound.min || (number as u64) > bound.max {
            problems.push(super::Problem::new(
                &key,
                format!(
                    "{value} is out of range: it must be {}..={} ({})",
                    bound.min, bound.max, bound.unit
                ),
            ));
        }
    }
    problems
}

/// The first value of `table` out of its range, as an error.
pub fn check(table: &toml::Table) -> anyhow::Result<()> {
    match problems(table).into_iter().next() {
        Some(problem) => bail!("{problem}"),
        None => Ok(()),
    }
}
