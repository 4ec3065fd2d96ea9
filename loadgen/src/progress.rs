//! `--progress`: one line a second on stderr while the run goes, with the
//! last second's rate and errors and the latency percentiles so far.
//! Each client thread records into its own slot (an uncontended lock);
//! the printer thread reads them once a second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One client thread's live counts.
pub struct Slot {
    answered: AtomicU64,
    errors: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
}

impl Slot {
    fn new(latency_max_us: u64) -> Slot {
        Slot {
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            histogram: Mutex::new(
                Histogram::new_with_bounds(1, latency_max_us, 3).expect("valid bounds"),
            ),
        }
    }

    /// A measured answer.
    pub fn record(&self, latency_us: u64, ok: bool) {
        self.answered.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
        if let Ok(mut histogram) = self.histogram.lock() {
            let _ = histogram.record(latency_us);
        }
    }
}

/// The printer and every thread's slot.
pub struct Progress {
    pub slots: Vec<Arc<Slot>>,
    stop: Arc<AtomicBool>,
    printer: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts printing to `out` once a second from `measure_from`.
    pub fn start(
        threads: usize,
        latency_max_us: u64,
        measure_from: Instant,
        mut out: Box<dyn std::io::Write + Send>,
    ) -> Progress {
        let slots: Vec<Arc<Slot>> = (0..threads)
            .map(|_| Arc::new(Slot::new(latency_max_us)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let printer = {
            let (slots, stop) = (slots.clone(), stop.clone());
            std::thread::spawn(move || {
                print_every_second(&slots, &stop, measure_from, latency_max_us, &mut *out)
            })
        };
        Progress {
            slots,
            stop,
            printer: Some(printer),
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(printer) = self.printer.take() {
            let _ = printer.join();
        }
    }
}

fn print_every_second(
    slots: &[Arc<Slot>],
    stop: &AtomicBool,
    measure_from: Instant,
    latency_max_us: u64,
    out: &mut dyn std::io::Write,
) {
    let mut next = measure_from.max(Instant::now()) + Duration::from_secs(1);
    let (mut last_answered, mut last_errors) = (0u64, 0u64);
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next += Duration::from_secs(1);
        let answered: u64 = slots.iter().map(|slot| slot.answered.load(Relaxed)).sum();
        let errors: u64 = slots.iter().map(|slot| slot.errors.load(Relaxed)).sum();
        let mut merged =
            Histogram::<u64>::new_with_bounds(1, latency_max_us, 3).expect("valid bounds");
        for slot in slots {
            if let Ok(histogram) = slot.histogram.lock() {
                let _ = merged.add(&*histogram);
            }
        }
        let elapsed = now.saturating_duration_since(measure_from).as_secs_f64();
        let _ = writeln!(
            out,
            "[{elapsed:5.1} s] {:>8} req/s  errors {:>6}  p50 {} us  p99 {} us (so far)",
            answered - last_answered,
            errors - last_errors,
            merged.value_at_quantile(0.5),
            merged.value_at_quantile(0.99),
        );
        (last_answered, last_errors) = (answered, errors);
    }
}

/// The whole latency distribution in HdrHistogram's percentile format
/// (what wrk2 prints and HdrHistogram's plotter reads), in milliseconds.
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let total = histogram.len();
    for step in histogram.iter_quantiles(5) {
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            1.0 / (1.0 - quantile)
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:14.2}",
            step.value_iterated_to() as f64 / 1e3,
            quantile,
            step.count_since_last_iteration(),
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.mean() / 1e3,
        histogram.stdev() / 1e3,
        histogram.max() as f64 / 1e3,
        total
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn prints_a_line_a_second_with_rate_errors_and_percentiles() {
        let out = Shared::default();
        let progress = Progress::start(2, 60_000_000, Instant::now(), Box::new(out.clone()));
        for latency in 1..=100 {
            progress.slots[latency as usize % 2].record(latency * 100, latency != 7);
        }
        // The first line is due a second after the start; a loaded machine
        // may print it later.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.0.lock().unwrap().contains(&b'\n') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        progress.stop();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line = text
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no line: {text:?}"));
        assert!(line.contains("100 req/s"), "{line}");
        assert!(line.contains("errors      1"), "{line}");
        assert!(
            line.contains("p50 5003 us") || line.contains("p50 5000 us"),
            "{line}"
        );
        assert!(line.contains("p99 99"), "{line}");
    }

    #[test]
    fn the_distribution_counts_every_value() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for value in 1..=1000 {
            histogram.record(value * 10).unwrap();
        }
        let text = percentile_distribution(&histogram);
        let counted: u64 = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .skip(1)
            .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok())
            .sum();
        assert_eq!(counted, 1000, "{text}");
        assert!(text.contains("Total count    =         1000"), "{text}");
    }
}
