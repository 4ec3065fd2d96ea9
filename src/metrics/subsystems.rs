//! Renderers of the subsystems that keep their own counters (each owns
//! its atomics; these read them at scrape time): the PostgreSQL key
//! source, the fleet-wide rate limits, the local dedup table and the fleet
//! dedup, and the key store's size.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::exposition::{label_value, write_by_result, write_header, write_metric};
use super::Metrics;

/// Writes a per-tenant counter from its values by metrics label slot (the
/// last one: every tenant past the labelled ones, `other`, shown when not
/// zero).
fn write_by_tenant(out: &mut String, name: &str, help: &str, counts: &[u64]) {
    write_header(out, name, help, "counter");
    let names = crate::tenancy::labels::names();
    for (tenant, count) in names.iter().zip(counts) {
        let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {count}", label_value(tenant));
    }
    let other = counts
        .get(usize::from(crate::tenancy::labels::OTHER_SLOT))
        .copied()
        .unwrap_or(0);
    if other > 0 {
        let _ = writeln!(out, "{name}{{tenant=\"other\"}} {other}");
    }
}

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
        let losses = counters.losses_by_tenant();
        write_by_tenant(
            out,
            "sluice_tenant_dedup_evicted_young_total",
            "Dedup entries of the tenant forced out before dedup.window_ms ended (by its own claims, or any claim while it held more than its fair share of the table).",
            &losses.iter().map(|loss| loss.evicted_young).collect::<Vec<_>>(),
        );
        write_by_tenant(
            out,
            "sluice_tenant_dedup_unremembered_total",
            "Events of the tenant published without a dedup entry: their set of the table held only other tenants' entries within their fair share (a retry may be stored again).",
            &losses.iter().map(|loss| loss.unremembered).collect::<Vec<_>>(),
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
            ("sluice_dedup_redis_settles_given_up_total", "Outcomes of failed round trips given up after being sent again for the window (stored) or the pending TTL (released).", &fleet.settles_given_up),
        ];
        for (name, help, counter) in counters {
            write_metric(out, name, help, "counter", counter.load(Relaxed));
        }
        write_by_tenant(
            out,
            "sluice_tenant_dedup_redis_evicted_total",
            "The tenant's own oldest keys deleted from Redis to keep it within dedup.redis_keys_per_tenant_max.",
            &fleet.evicted_by_tenant(),
        );
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
