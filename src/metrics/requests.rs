//! Renderers of what the cores count: requests by route and status, their
//! durations, refusals by code, per-tenant events, the delivery latency and
//! the per-core gauges. Each sums the cores' [`CoreMetrics`] at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::counters::{
    CoreMetrics, DURATION_BOUNDS_US, LATENCY_BOUNDS_US, STATUSES, STATUS_CLASSES, TENANT_SLOTS,
};
use super::exposition::{label_value, write_header};
use super::Metrics;
use crate::route::Route;

/// One per-tenant counter array of a core.
type TenantField = fn(&CoreMetrics) -> &[AtomicU64; TENANT_SLOTS];

/// A per-core gauge: name, help, and the field it reads.
type Gauge = (&'static str, &'static str, fn(&CoreMetrics) -> &AtomicU64);

impl Metrics {
    pub(super) fn render_requests(&self, out: &mut String) {
        let name = "sluice_http_requests_total";
        write_header(out, name, "HTTP requests by route and status.", "counter");
        for (route_index, route) in Route::ALL.iter().map(|r| r.label()).enumerate() {
            for (status_index, status) in STATUSES.iter().enumerate() {
                let count = self.sum(|core| &core.requests[route_index][status_index]);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{route}\",status=\"{status}\"}} {count}"
                    );
                }
            }
        }
    }

    pub(super) fn render_durations(&self, out: &mut String) {
        let name = "sluice_http_request_duration_seconds";
        write_header(out, name, "Time from a request's head to its response being written (durable requests include Kafka's acknowledgement), by route and status class.", "histogram");
        for (route_index, route) in Route::ALL.iter().map(|r| r.label()).enumerate() {
            for (class_index, class) in STATUS_CLASSES.iter().enumerate() {
                let total: u64 = (0..=DURATION_BOUNDS_US.len())
                    .map(|bucket| {
                        self.sum(|core| &core.durations[route_index][class_index][bucket])
                    })
                    .sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("route=\"{route}\",status_class=\"{class}\"");
                let mut cumulative = 0;
                for (bucket, bound) in DURATION_BOUNDS_US.iter().enumerate() {
                    cumulative +=
                        self.sum(|core| &core.durations[route_index][class_index][bucket]);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                        *bound as f64 / 1e6
                    );
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
                let sum = self.sum(|core| &core.duration_sum_us[route_index][class_index]);
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum as f64 / 1e6);
                let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
            }
        }
    }

    pub(super) fn render_refusals(&self, out: &mut String) {
        let name = "sluice_http_refusals_total";
        write_header(
            out,
            name,
            "Requests refused, by the error code of the answer.",
            "counter",
        );
        for (index, code) in crate::error::CODES
            .iter()
            .chain(["other"].iter())
            .enumerate()
        {
            let count = self.sum(|core| &core.refusals[index]);
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {count}");
        }
    }

    pub(super) fn render_tenants(&self, out: &mut String) {
        let names = crate::tenancy::labels::names();
        let series: [(&str, &str, TenantField); 3] = [
            (
                "sluice_tenant_events_accepted_total",
                "Events accepted per tenant (duplicates of stored events included); tenants past the first 100 are counted as tenant=\"other\".",
                |core| &core.tenant_accepted,
            ),
            (
                "sluice_tenant_events_rejected_total",
                "Events of accepted batches rejected by validation, per tenant.",
                |core| &core.tenant_rejected,
            ),
            (
                "sluice_tenant_requests_refused_total",
                "Authenticated requests refused (4xx and 5xx), per tenant.",
                |core| &core.tenant_refused,
            ),
        ];
        for (name, help, field) in series {
            write_header(out, name, help, "counter");
            for (slot, tenant) in names.iter().enumerate() {
                let count = self.sum(|core| &field(core)[slot]);
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {count}", label_value(tenant));
            }
            let other = self.sum(|core| &field(core)[TENANT_SLOTS - 1]);
            if other > 0 {
                let _ = writeln!(out, "{name}{{tenant=\"other\"}} {other}");
            }
        }
    }

    pub(super) fn render_latency(&self, out: &mut String) {
        let name = "sluice_kafka_delivery_seconds";
        write_header(
            out,
            name,
            "Time from hand-off to the last delivery report of a request.",
            "histogram",
        );
        let mut cumulative = 0;
        for (index, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += self.sum(|core| &core.latency_buckets[index]);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.sum(|core| &core.latency_buckets[LATENCY_BOUNDS_US.len()]);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum(|core| &core.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }

    /// In-flight work and connections, one sample per core.
    pub(super) fn render_core_gauges(&self, out: &mut String) {
        let gauges: [Gauge; 5] = [
            (
                "sluice_inflight_requests",
                "Requests awaiting Kafka, per core.",
                |c| &c.inflight_requests,
            ),
            (
                "sluice_inflight_events",
                "Kafka records awaiting delivery, per core.",
                |c| &c.inflight_events,
            ),
            (
                "sluice_inflight_bytes",
                "Event bytes awaiting Kafka, per core.",
                |c| &c.inflight_bytes,
            ),
            ("sluice_connections", "Open connections, per core.", |c| {
                &c.connections
            }),
            (
                "sluice_connections_parked",
                "Open connections idle long enough to hold no buffer (a readiness wait, no read posted), per core.",
                |c| &c.connections_parked,
            ),
        ];
        for (name, help, field) in gauges {
            write_header(out, name, help, "gauge");
            for (index, core) in self.cores.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{core=\"{index}\"}} {}",
                    field(core).load(Relaxed)
                );
            }
        }
    }
}
