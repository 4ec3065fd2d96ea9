//! Per-key rate limits: events per second and bytes per second, each with a
//! burst, as a generic cell rate algorithm (GCRA) over one atomic per
//! dimension. One [`KeyLimiter`] per key is shared by every core (through
//! the key's grant), so the limit holds across an instance's cores, with no
//! lock, no allocation and no system call per request: a compare-and-swap
//! on the key's own atomics, with the time the core already read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Nanoseconds per second.
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A key's limits; 0 means unlimited for that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub events_per_second: u64,
    /// Events admitted at once from idle; 0: one second's worth.
    pub burst_events: u64,
    pub bytes_per_second: u64,
    /// Bytes admitted at once from idle; 0: one second's worth.
    pub burst_bytes: u64,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.events_per_second == 0 && self.bytes_per_second == 0
    }
}

/// One dimension's GCRA state.
#[derive(Debug)]
struct Cell {
    /// Time one unit takes at the sustained rate (ns); 0: unlimited.
    interval_ns: u64,
    /// How far ahead of now the schedule may run: the burst (ns).
    tolerance_ns: u64,
    /// Theoretical arrival time of the next unit (ns since `epoch`).
    scheduled_ns: AtomicU64,
}

impl Cell {
    fn new(per_second: u64, burst: u64) -> Cell {
        // 0 per second: unlimited (interval 0).
        let interval_ns = NANOS_PER_SECOND
            .checked_div(per_second)
            .map_or(0, |interval| interval.max(1));
        let burst = if burst == 0 { per_second } else { burst };
        Cell {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst),
            scheduled_ns: AtomicU64::new(0),
        }
    }

    /// Takes `units` at `now_ns`, or says how long until they would fit.
    fn take(&self, units: u64, now_ns: u64) -> Result<u64, u64> {
        if self.interval_ns == 0 {
            return Ok(u64::MAX);
        }
        let increment = units.saturating_mul(self.interval_ns);
        let mut scheduled = self.scheduled_ns.load(Ordering::Relaxed);
        loop {
            let next = scheduled.max(now_ns).saturating_add(increment);
            let ahead = next - now_ns;
            if ahead > self.tolerance_ns {
                return Err(ahead - self.tolerance_ns);
            }
            match self.scheduled_ns.compare_exchange_weak(
                scheduled,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok((self.tolerance_ns - ahead) / self.interval_ns),
                Err(current) => scheduled = current,
            }
        }
    }

    /// Gives `units` back (the other dimension refused the request).
    fn give_back(&self, units: u64) {
        let decrement = units.saturating_mul(self.interval_ns);
        let _ = self
            .scheduled_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |scheduled| {
                Some(scheduled.saturating_sub(decrement))
            });
    }
}

/// Why a request was refused, for the 429's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Whole seconds to wait, rounded up, at least 1.
    pub retry_after_seconds: u64,
    /// The policy refused: "events" or "bytes", and its quota per second.
    pub dimension: &'static str,
    pub quota_per_second: u64,
}

/// A key's limiter, shared by every core.
#[derive(Debug)]
pub struct KeyLimiter {
    limits: Limits,
    events: Cell,
    bytes: Cell,
}

impl KeyLimiter {
    pub fn new(limits: Limits) -> KeyLimiter {
        KeyLimiter {
            limits,
            events: Cell::new(limits.events_per_second, limits.burst_events),
            bytes: Cell::new(limits.bytes_per_second, limits.burst_bytes),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Admits a request of `events` events and `bytes` bytes at `now`, or
    /// refuses it whole: nothing of a refused request counts.
    pub fn admit(&self, events: u64, bytes: u64, now: Instant) -> Result<(), Refusal> {
        let now_ns = nanos_since_epoch(now);
        let refusal = |wait_ns: u64, dimension, quota_per_second| Refusal {
            retry_after_seconds: wait_ns.div_ceil(NANOS_PER_SECOND).max(1),
            dimension,
            quota_per_second,
        };
        self.events
            .take(events, now_ns)
            .map_err(|wait| refusal(wait, "events", self.limits.events_per_second))?;
        if let Err(wait) = self.bytes.take(bytes, now_ns) {
            self.events.give_back(events);
            return Err(refusal(wait, "bytes", self.limits.bytes_per_second));
        }
        Ok(())
    }
}

/// Nanoseconds since a process-wide origin, so states fit one `u64`.
fn nanos_since_epoch(now: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now - std::time::Duration::from_secs(1));
    now.saturating_duration_since(epoch).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = KeyLimiter::new(Limits {
            events_per_second: 100,
            burst_events: 100,
            ..Limits::default()
        });
        let start = Instant::now();
        let admitted = |at: Duration, count: u64| {
            (0..count)
                .filter(|_| limiter.admit(1, 0, start + at).is_ok())
                .count()
        };
        assert_eq!(admitted(Duration::ZERO, 150), 100, "the burst");
        assert_eq!(
            admitted(Duration::from_millis(500), 100),
            50,
            "half a second later"
        );
        let refusal = limiter
            .admit(1, 0, start + Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(refusal.retry_after_seconds, 1);
        assert_eq!(refusal.dimension, "events");
    }

    #[test]
    fn a_batch_counts_as_its_events_and_a_refusal_takes_nothing() {
        let limiter = KeyLimiter::new(Limits {
            events_per_second: 10,
            burst_events: 10,
            bytes_per_second: 1_000,
            burst_bytes: 1_000,
        });
        let now = Instant::now();
        assert!(limiter.admit(8, 100, now).is_ok());
        assert!(limiter.admit(3, 100, now).is_err(), "8 + 3 > 10");
        // Bytes refuse; the events it would have taken are given back.
        let refusal = limiter.admit(2, 5_000, now).unwrap_err();
        assert_eq!(refusal.dimension, "bytes");
        assert_eq!(refusal.retry_after_seconds, 5, "4.1 s rounded up");
        assert!(
            limiter.admit(2, 100, now).is_ok(),
            "the events were given back"
        );
    }

    #[test]
    fn unlimited_admits_everything() {
        let limiter = KeyLimiter::new(Limits::default());
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.admit(1_000, 1 << 20, now).is_ok()));
    }
}
