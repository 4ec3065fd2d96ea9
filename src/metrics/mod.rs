//! Prometheus metrics. Each core writes only its own cache-line-aligned
//! counters (relaxed atomics, no contention); a scrape reads them all.
//!
//! The delivery-latency histogram uses fixed Prometheus buckets, which is
//! what the exposition format wants; hdrhistogram is the load generator's.
//!
//! - `counters`: the hot per-core [`CoreMetrics`].
//! - `exposition`: the Prometheus text writers.
//! - `requests`, `totals`, `subsystems`, `process`: the renderers, one per
//!   source; subsystems (kafka/, tenancy/, dedup/) own their atomics and
//!   are read here at scrape time, never the other way round.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

mod counters;
mod exposition;
mod process;
mod requests;
mod subsystems;
mod totals;

pub use counters::CoreMetrics;
pub use subsystems::render_keys_loaded;

/// All metrics of the process.
pub struct Metrics {
    pub cores: Vec<CoreMetrics>,
    key_reloads: AtomicU64,
    key_reload_failures: AtomicU64,
    schema_reloads: AtomicU64,
    schema_reload_failures: AtomicU64,
    schemas: AtomicU64,
    /// The Kafka producers' counters (the producer threads write them).
    pub kafka: Arc<crate::kafka::producer::ProducerMetrics>,
    /// The PostgreSQL key loader's state (rendered when configured).
    pub keys_postgres: crate::tenancy::postgres::PgKeyMetrics,
    /// The fleet-wide limit sync's state (rendered when configured).
    pub fleet: crate::tenancy::fleet::FleetMetrics,
    /// The fleet dedup's state, when `dedup.redis_url` is set.
    pub dedup_fleet: OnceLock<Arc<crate::dedup::state::FleetDedup>>,
    /// The local dedup table, when dedup is on.
    pub dedup: OnceLock<Arc<crate::dedup::table::DedupTable>>,
    /// Log lines the non-blocking log writer dropped because its queue was
    /// full (a slow log pipe); read at scrape time.
    log_lines_dropped: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl Metrics {
    pub fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            key_reloads: AtomicU64::new(0),
            key_reload_failures: AtomicU64::new(0),
            schema_reloads: AtomicU64::new(0),
            schema_reload_failures: AtomicU64::new(0),
            schemas: AtomicU64::new(0),
            kafka: Default::default(),
            keys_postgres: Default::default(),
            fleet: Default::default(),
            dedup: OnceLock::new(),
            dedup_fleet: OnceLock::new(),
            log_lines_dropped: OnceLock::new(),
        }
    }

    /// Where the count of dropped log lines comes from (the log writer).
    pub fn count_dropped_log_lines(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.log_lines_dropped.set(Box::new(source));
    }

    pub fn key_reload(&self, ok: bool) {
        let counter = if ok {
            &self.key_reloads
        } else {
            &self.key_reload_failures
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn schema_reload(&self, ok: bool) {
        let counter = if ok {
            &self.schema_reloads
        } else {
            &self.schema_reload_failures
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn schemas_loaded(&self, count: usize) {
        self.schemas.store(count as u64, Relaxed);
    }

    /// One per-core counter summed over the cores.
    fn sum(&self, field: impl Fn(&CoreMetrics) -> &AtomicU64) -> u64 {
        self.cores
            .iter()
            .map(|core| field(core).load(Relaxed))
            .sum()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, ready: bool) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_requests(&mut out);
        self.render_totals(&mut out);
        self.render_reloads(&mut out);
        self.render_postgres_keys(&mut out);
        self.render_fleet_limits(&mut out);
        self.render_dedup(&mut out);
        self.render_dedup_fleet(&mut out);
        self.render_latency(&mut out);
        self.render_durations(&mut out);
        self.render_refusals(&mut out);
        self.render_tenants(&mut out);
        process::render(&mut out);
        self.render_core_gauges(&mut out);
        exposition::write_metric(
            &mut out,
            "sluice_ready",
            "Whether /readyz answers 200.",
            "gauge",
            u8::from(ready),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::route::Route;

    #[test]
    fn render_sums_cores_and_accumulates_buckets() {
        let metrics = Metrics::new(2);
        let ms = Duration::from_millis;
        metrics.cores[0].request(Route::Events, 202, ms(3));
        metrics.cores[1].request(Route::Events, 202, ms(30));
        metrics.cores[1].request(Route::EventsBatch, 413, ms(0));
        metrics.cores[0].delivery_latency(Duration::from_micros(700));
        metrics.cores[1].delivery_latency(Duration::from_secs(60));
        let text = metrics.render(true);
        assert!(
            text.contains("sluice_http_requests_total{route=\"/v1/events\",status=\"202\"} 2\n")
        );
        assert!(text
            .contains("sluice_http_requests_total{route=\"/v1/events/batch\",status=\"413\"} 1\n"));
        assert!(text.contains("sluice_kafka_delivery_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("sluice_kafka_delivery_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("sluice_kafka_delivery_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("sluice_ready 1\n"));
        let histogram =
            "sluice_http_request_duration_seconds_bucket{route=\"/v1/events\",status_class=\"2xx\"";
        assert!(text.contains(&format!("{histogram},le=\"0.0025\"}} 0\n")));
        assert!(text.contains(&format!("{histogram},le=\"0.005\"}} 1\n")));
        assert!(text.contains(&format!("{histogram},le=\"0.05\"}} 2\n")));
        assert!(text.contains("sluice_http_request_duration_seconds_count{route=\"/v1/events/batch\",status_class=\"4xx\"} 1\n"));
        assert!(text.contains("sluice_http_request_duration_seconds_sum{route=\"/v1/events\",status_class=\"2xx\"} 0.033\n"));
    }

    #[test]
    fn refusals_count_by_code_and_tenants_by_slot() {
        let metrics = Metrics::new(2);
        let slot = crate::tenancy::labels::slot("metrics-test-tenant");
        metrics.cores[0].refusal("rate_limited", Some(slot));
        metrics.cores[1].refusal("rate_limited", None);
        metrics.cores[1].refusal("no_such_code", None);
        metrics.cores[0].tenant_events(slot, 7, 2);
        metrics.cores[1].tenant_events(crate::tenancy::labels::OTHER_SLOT, 5, 0);
        let text = metrics.render(true);
        assert!(text.contains("sluice_http_refusals_total{code=\"rate_limited\"} 2\n"));
        assert!(text.contains("sluice_http_refusals_total{code=\"other\"} 1\n"));
        assert!(text
            .contains("sluice_tenant_events_accepted_total{tenant=\"metrics-test-tenant\"} 7\n"));
        assert!(text
            .contains("sluice_tenant_events_rejected_total{tenant=\"metrics-test-tenant\"} 2\n"));
        assert!(text
            .contains("sluice_tenant_requests_refused_total{tenant=\"metrics-test-tenant\"} 1\n"));
        assert!(text.contains("sluice_tenant_events_accepted_total{tenant=\"other\"} 5\n"));
    }

    #[test]
    fn producer_counters_are_read_from_kafka() {
        let metrics = Metrics::new(1);
        metrics.kafka.delivery_failed(false);
        metrics.kafka.delivery_failed(true);
        metrics.kafka.delivery_failed(true);
        metrics.kafka.producer_replaced();
        let text = metrics.render(true);
        assert!(text.contains("sluice_kafka_delivery_failures_total 1\n"));
        assert!(text.contains("sluice_kafka_dead_letter_failures_total 2\n"));
        assert!(text.contains("sluice_kafka_producers_replaced_total 1\n"));
    }
}
