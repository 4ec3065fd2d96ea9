//! Renderers of the subsystems that keep their own counters (each owns
//! its atomics; these read them at scrape time): the PostgreSQL key
//! source, the fleet-wide rate limits, the local dedup table and the fleet
//! dedup, and the key store's size.

use std::sync::atomic::Ordering::Relaxed;

use super::exposition::{write_by_result, write_metric};
use super::Metrics;

/// `sluice_api_keys_loaded`: keys in the snapshot in use (the caller
/// reads the key store, which this module does not know).
pub fn render_keys_loaded(out: &mut String, keys: usize) {
    write_metric(
        out,
        "sluice_api_keys_loaded",
        "API keys in the snapshot in use (every source together).",
        "gauge",
        keys,
    );
}

impl Metrics {
    pub(super) fn render_postgres_keys(&self, out: &mut String) {
        let pg = &self.keys_postgres;
        if !pg.configured.load(Relaxed) {
            return;
        }
        write_metric(
            out,
            "sluice_api_keys_postgres_up",
            "Whether the PostgreSQL key source is connected and loaded.",
            "gauge",
            u8::from(pg.up.load(Relaxed)),
        );
        // -1 until the first load: the snapshot holds no PostgreSQL keys.
        let age = pg
            .snapshot_age_seconds(crate::clock::now_ms())
            .unwrap_or(-1.0);
        write_metric(
            out,
            "sluice_api_keys_snapshot_age_seconds",
            "Seconds since the API-key snapshot was last known to match PostgreSQL (-1: never loaded).",
            "gauge",
            format_args!("{age:.3}"),
        );
        write_metric(
            out,
            "sluice_api_keys_postgres_keys",
            "Usable keys in the last PostgreSQL load.",
            "gauge",
            pg.keys.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_api_keys_postgres_rows_skipped",
            "Rows of the last load that were not usable keys.",
            "gauge",
            pg.rows_skipped.load(Relaxed),
        );
        write_by_result(
            out,
            "sluice_api_keys_postgres_loads_total",
            "Full loads from PostgreSQL by result.",
            pg.loads.load(Relaxed),
            pg.load_failures.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_api_keys_postgres_load_seconds",
            "Duration of the last full load.",
            "gauge",
            format_args!("{:.6}", pg.last_load_us.load(Relaxed) as f64 / 1e6),
        );
    }

    pub(super) fn render_dedup(&self, out: &mut String) {
        let Some(table) = self.dedup.get() else {
            return;
        };
        let counters = &table.counters;
        write_metric(
            out,
            "sluice_dedup_entries_max",
            "Entries the local dedup table holds (16 bytes each).",
            "gauge",
            table.entries(),
        );
        write_metric(
            out,
            "sluice_dedup_evicted_young_total",
            "Dedup entries forced out before dedup.window_ms ended (the table is too small for the event rate).",
            "counter",
            counters.evicted_young.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_dedup_last_evicted_age_seconds",
            "Age of the last entry forced out early: the window the table really keeps.",
            "gauge",
            format_args!(
                "{:.3}",
                counters.last_evicted_age_ms.load(Relaxed) as f64 / 1e3
            ),
        );
    }

    pub(super) fn render_dedup_fleet(&self, out: &mut String) {
        let Some(fleet) = self.dedup_fleet.get() else {
            return;
        };
        write_metric(
            out,
            "sluice_dedup_redis_up",
            "Whether the fleet dedup's Redis answered its last round trip (0: each instance dedups alone).",
            "gauge",
            u8::from(fleet.up.load(Relaxed)),
        );
        let counters = [
            ("sluice_dedup_redis_checked_total", "Events asked about in Redis.", &fleet.checked),
            ("sluice_dedup_redis_duplicates_total", "Events Redis knew stored (by another instance): answered as duplicates, not published.", &fleet.duplicates),
            ("sluice_dedup_redis_in_flight_total", "Events another instance was storing: answered 503 event_in_flight.", &fleet.in_flight),
            ("sluice_dedup_redis_unchecked_batches_total", "Batches sent on unchecked because Redis did not answer in time.", &fleet.unchecked_batches),
            ("sluice_dedup_redis_failures_total", "Failed round trips to Redis.", &fleet.failures),
            ("sluice_dedup_redis_settles_dropped_total", "Outcomes not sent to Redis because its queue was full (their keys expire).", &fleet.settles_dropped),
        ];
        for (name, help, counter) in counters {
            write_metric(out, name, help, "counter", counter.load(Relaxed));
        }
    }

    pub(super) fn render_fleet_limits(&self, out: &mut String) {
        let fleet = &self.fleet;
        if !fleet.configured.load(Relaxed) {
            return;
        }
        write_metric(
            out,
            "sluice_rate_limit_redis_up",
            "Whether rate limits are shared through Redis (0: each instance limits alone).",
            "gauge",
            u8::from(fleet.up.load(Relaxed)),
        );
        write_by_result(
            out,
            "sluice_rate_limit_redis_syncs_total",
            "Usage exchanges with Redis by result.",
            fleet.syncs.load(Relaxed),
            fleet.sync_failures.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_rate_limit_redis_keys_synced",
            "Keys exchanged in the last sync.",
            "gauge",
            fleet.keys_synced.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_rate_limit_redis_instances",
            "Instances sharing rate limits, as the last sync counted them; a key not yet synced here gets this share of its burst.",
            "gauge",
            fleet.instances.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_rate_limit_redis_sync_seconds",
            "Duration of the last sync.",
            "gauge",
            format_args!("{:.6}", fleet.last_sync_us.load(Relaxed) as f64 / 1e6),
        );
    }
}
