//! Renderer of what records say and where they go: invalid trace context
//! headers, events rerouted by the hot-key detector (`hot_keys`), and the
//! keys overflowing now (a scan of its table at scrape time).

use std::time::Instant;

use super::exposition::{write_header, write_metric};
use super::Metrics;
use std::fmt::Write as _;

impl Metrics {
    pub(super) fn render_routing(&self, out: &mut String) {
        let name = "sluice_trace_context_invalid_total";
        write_header(
            out,
            name,
            "Requests whose W3C trace context header was invalid: ignored (not copied to their records), never refused.",
            "counter",
        );
        for (index, header) in ["traceparent", "tracestate"].iter().enumerate() {
            let count = self.sum(|core| &core.trace_context_invalid[index]);
            let _ = writeln!(out, "{name}{{header=\"{header}\"}} {count}");
        }
        let name = "sluice_overflow_events_total";
        write_header(
            out,
            name,
            "Events produced to overflow.topic instead of their key's partition, by reason: rate (the key is over overflow.key_events_per_second, or was within overflow.dwell_ms) or forced (overflow.force_keys).",
            "counter",
        );
        for (index, reason) in ["rate", "forced"].iter().enumerate() {
            let count = self.sum(|core| &core.overflow_events[index]);
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
        write_metric(
            out,
            "sluice_overflow_untracked_events_total",
            "Events the hot-key detector could not judge (every entry of their key's set held a key at or over the rate): left on their partition.",
            "counter",
            self.sum(|core| &core.overflow_untracked),
        );
        let (overflowing, forced) = self.hot_keys.get().map_or((0, 0), |detector| {
            (
                detector.overflowing_keys(Instant::now()),
                detector.forced_keys(),
            )
        });
        write_metric(
            out,
            "sluice_overflow_keys",
            "Keys overflowing for their rate now (over it within overflow.dwell_ms).",
            "gauge",
            overflowing,
        );
        write_metric(
            out,
            "sluice_overflow_forced_keys",
            "Keys in overflow.force_keys.",
            "gauge",
            forced,
        );
    }
}
