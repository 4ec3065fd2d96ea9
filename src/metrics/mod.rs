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

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

mod counters;
mod exposition;
mod process;
mod requests;
mod routing;
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
    /// The hot-key detector, when `overflow.topic` is set.
    pub hot_keys: OnceLock<Arc<crate::hot_keys::HotKeys>>,
    /// Log lines the non-blocking log writer dropped because its queue was
    /// full (a slow log pipe); read at scrape time.
    log_lines_dropped: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// The event loops' I/O driver, one of [`IO_DRIVERS`], set at start-up.
    io_driver: OnceLock<&'static str>,
}

/// The I/O drivers `sluice_io_driver` has a series for.
pub const IO_DRIVERS: [&str; 2] = ["io_uring", "epoll"];

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
            hot_keys: OnceLock::new(),
            dedup_fleet: OnceLock::new(),
            log_lines_dropped: OnceLock::new(),
            io_driver: OnceLock::new(),
        }
    }

    /// The I/O driver the event loops run on (the server decides it once,
    /// at start-up).
    pub fn io_driver_in_use(&self, driver: &'static str) {
        debug_assert!(IO_DRIVERS.contains(&driver), "{driver}");
        let _ = self.io_driver.set(driver);
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
        self.render_routing(&mut out);
        process::render(&mut out);
        self.render_io_driver(&mut out);
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

impl Metrics {
    /// `sluice_io_driver`: one series per driver, 1 for the one in use, so
    /// a query for `driver="epoll"` finds a series whichever runs.
    fn render_io_driver(&self, out: &mut String) {
        let Some(&in_use) = self.io_driver.get() else {
            return;
        };
        exposition::write_header(
            out,
            "sluice_io_driver",
            "The event loops' I/O driver, 1 for the one in use: epoll where configured, or where io_uring was refused (kernel, seccomp profile).",
            "gauge",
        );
        for driver in IO_DRIVERS {
            let value = u8::from(driver == in_use);
            let _ = writeln!(out, "sluice_io_driver{{driver=\"{driver}\"}} {value}");
        }
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
    fn the_io_driver_in_use_is_the_one_series_at_1() {
        let metrics = Metrics::new(1);
        assert!(!metrics.render(true).contains("sluice_io_driver"));
        metrics.io_driver_in_use("epoll");
        let text = metrics.render(true);
        assert!(text.contains("# TYPE sluice_io_driver gauge\n"));
        assert!(text.contains("sluice_io_driver{driver=\"epoll\"} 1\n"));
        assert!(text.contains("sluice_io_driver{driver=\"io_uring\"} 0\n"));
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
