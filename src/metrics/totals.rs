//! Renderer of the process-wide totals: event and request counters summed
//! over the cores, the Kafka producers' counters (kafka/ owns them), log
//! lines, reloads and the schema and key-snapshot gauges.

use std::sync::atomic::Ordering::Relaxed;

use super::exposition::{write_by_result, write_metric};
use super::Metrics;

impl Metrics {
    pub(super) fn render_totals(&self, out: &mut String) {
        let log_lines_dropped = self.log_lines_dropped.get().map_or(0, |source| source());
        let kafka = &self.kafka;
        let counters: [(&str, &str, u64); 12] = [
            (
                "sluice_events_accepted_total",
                "Events accepted for Kafka (duplicates not included).",
                self.sum(|c| &c.events_accepted),
            ),
            (
                "sluice_events_duplicate_total",
                "Events answered as already stored (a retry within the dedup window) and not published again.",
                self.sum(|c| &c.events_duplicate),
            ),
            (
                "sluice_events_rejected_total",
                "Events rejected by validation.",
                self.sum(|c| &c.events_rejected),
            ),
            (
                "sluice_http_request_body_bytes_total",
                "Request body bytes received.",
                self.sum(|c| &c.body_bytes),
            ),
            (
                "sluice_load_shed_total",
                "Requests refused with 503 because a queue was full.",
                self.sum(|c| &c.shed),
            ),
            (
                "sluice_delivery_timeouts_total",
                "Requests answered 503 at the delivery deadline.",
                self.sum(|c| &c.delivery_timeouts),
            ),
            (
                "sluice_kafka_delivery_failures_total",
                "Event records Kafka did not store.",
                kafka.delivery_failures.load(Relaxed),
            ),
            (
                "sluice_kafka_dead_letter_failures_total",
                "Dead-letter records Kafka did not store.",
                kafka.dead_letter_failures.load(Relaxed),
            ),
            (
                "sluice_kafka_producers_replaced_total",
                "Producers replaced because they could no longer send (fatal error or rejected producer id).",
                kafka.producers_replaced.load(Relaxed),
            ),
            (
                "sluice_log_lines_suppressed_total",
                "Failed-request log lines dropped by the rate limit.",
                self.sum(|c| &c.logs_suppressed),
            ),
            (
                "sluice_log_lines_dropped_total",
                "Log lines dropped because the log output was too slow to take them.",
                log_lines_dropped,
            ),
            (
                "sluice_write_timeouts_total",
                "Connections closed because the client took no response bytes for server.write_timeout_ms.",
                self.sum(|c| &c.write_timeouts),
            ),
        ];
        for (name, help, value) in counters {
            write_metric(out, name, help, "counter", value);
        }
    }

    /// Reloads of the keys file and the schema set, and what is loaded.
    pub(super) fn render_reloads(&self, out: &mut String) {
        write_by_result(
            out,
            "sluice_key_reloads_total",
            "Keys file reloads by result.",
            self.key_reloads.load(Relaxed),
            self.key_reload_failures.load(Relaxed),
        );
        write_by_result(
            out,
            "sluice_schema_reloads_total",
            "Event schema set reloads by result (an error keeps the last good set).",
            self.schema_reloads.load(Relaxed),
            self.schema_reload_failures.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_schemas_loaded",
            "Event schemas (JSON Schema files) in the set in use.",
            "gauge",
            self.schemas.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_api_key_snapshots",
            "API key snapshots in memory: the current one, plus any a request in progress still reads.",
            "gauge",
            crate::tenancy::keys::snapshots_alive(),
        );
    }
}
