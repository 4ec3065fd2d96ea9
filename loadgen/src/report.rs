//! The run's summary, as text for people or one JSON object for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use crate::client::Totals;
use crate::verify::Verification;
use crate::Args;

pub struct Summary {
    pub mode: &'static str,
    pub offered_rps: Option<f64>,
    pub duration_s: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub connection_errors: u64,
    /// Retries sent (--retries), and requests given up after the last.
    pub retried: u64,
    pub gave_up: u64,
    pub rps: f64,
    pub events_per_s: f64,
    pub statuses: Vec<(u16, u64)>,
    pub percentiles_us: [(f64, u64); 6],
    pub max_us: u64,
    pub verification: Option<Verification>,
}

impl Summary {
    pub fn new(
        args: &Args,
        totals: &Totals,
        duration: Duration,
        verification: Option<Verification>,
    ) -> Summary {
        let seconds = duration.as_secs_f64();
        let answered = totals.ok + totals.errors;
        let quantile = |q: f64| totals.histogram.value_at_quantile(q);
        Summary {
            mode: if args.rate > 0.0 { "open" } else { "closed" },
            offered_rps: (args.rate > 0.0).then_some(args.rate),
            duration_s: seconds,
            sent: totals.sent,
            ok: totals.ok,
            errors: totals.errors,
            connection_errors: totals.connection_errors,
            retried: totals.retried,
            gave_up: totals.gave_up,
            rps: answered as f64 / seconds,
            events_per_s: totals.events_ok as f64 / seconds,
            statuses: totals.statuses.iter().map(|(s, c)| (*s, *c)).collect(),
            percentiles_us: [
                (50.0, quantile(0.5)),
                (90.0, quantile(0.9)),
                (99.0, quantile(0.99)),
                (99.9, quantile(0.999)),
                (99.99, quantile(0.9999)),
                (100.0, totals.histogram.max()),
            ],
            max_us: totals.histogram.max(),
            verification,
        }
    }

    fn percentile(&self, p: f64) -> u64 {
        self.percentiles_us
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(0, |(_, v)| *v)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mode          {} loop, {:.1} s measured",
            self.mode, self.duration_s
        );
        match self.offered_rps {
            Some(offered) => {
                let _ = writeln!(
                    out,
                    "rate          offered {offered:.0} req/s, achieved {:.0} req/s",
                    self.rps
                );
            }
            None => {
                let _ = writeln!(out, "rate          achieved {:.0} req/s", self.rps);
            }
        }
        let _ = writeln!(
            out,
            "events        {:.0} events/s accepted",
            self.events_per_s
        );
        let _ = writeln!(
            out,
            "requests      sent {}, ok {}, errors {}, connection errors {}, retried {}, gave up {}",
            self.sent, self.ok, self.errors, self.connection_errors, self.retried, self.gave_up
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, c)| format!("{s}: {c}"))
            .collect();
        let _ = writeln!(out, "statuses      {}", statuses.join(", "));
        let _ = writeln!(
            out,
            "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.percentile(99.9),
            self.percentile(99.99),
            self.max_us
        );
        if let Some(v) = &self.verification {
            let _ = writeln!(
                out,
                "verify        acknowledged {}, found {}, missing {}, duplicated {}",
                v.acknowledged, v.found, v.missing, v.duplicated
            );
        }
        out
    }

    pub fn to_json(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, c)| format!("\"{s}\":{c}"))
            .collect();
        let mut out = format!(
            "{{\"mode\":\"{}\",\"offered_rps\":{},\"duration_s\":{:.3},\"sent\":{},\"ok\":{},\"errors\":{},\"connection_errors\":{},\"retried\":{},\"gave_up\":{},\"rps\":{:.1},\"events_per_s\":{:.1},\"statuses\":{{{}}},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"p9999_us\":{},\"max_us\":{}",
            self.mode,
            self.offered_rps.map_or("null".to_string(), |r| format!("{r:.1}")),
            self.duration_s,
            self.sent,
            self.ok,
            self.errors,
            self.connection_errors,
            self.retried,
            self.gave_up,
            self.rps,
            self.events_per_s,
            statuses.join(","),
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.percentile(99.9),
            self.percentile(99.99),
            self.max_us,
        );
        if let Some(v) = &self.verification {
            let _ = write!(
                out,
                ",\"acknowledged\":{},\"found\":{},\"missing\":{},\"duplicated\":{}",
                v.acknowledged, v.found, v.missing, v.duplicated
            );
        }
        out.push('}');
        out
    }
}
