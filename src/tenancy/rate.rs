//! Per-key rate limits: events per second and bytes per second, each with a
//! burst, as a generic cell rate algorithm (GCRA) over one atomic per
//! dimension. One [`KeyLimiter`] per key is shared by every core (through
//! the key's grant), so the limit holds across an instance's cores, with no
//! lock, no allocation and no system call per request: a compare-and-swap
//! on the key's own atomics, with the time the core already read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

    /// Takes `units` at `now_ns`, or says how long until they would fit,
    /// with the burst divided by `burst_share` (1: the whole burst).
    fn take(&self, units: u64, now_ns: u64, burst_share: u64) -> Result<u64, u64> {
        if self.interval_ns == 0 {
            return Ok(u64::MAX);
        }
        let tolerance_ns = self.tolerance_ns / burst_share.max(1);
        let increment = units.saturating_mul(self.interval_ns);
        let mut scheduled = self.scheduled_ns.load(Ordering::Relaxed);
        loop {
            let next = scheduled.max(now_ns).saturating_add(increment);
            let ahead = next - now_ns;
            if ahead > tolerance_ns {
                return Err(ahead - tolerance_ns);
            }
            match self.scheduled_ns.compare_exchange_weak(
                scheduled,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok((tolerance_ns - ahead) / self.interval_ns),
                Err(current) => scheduled = current,
            }
        }
    }

    /// The fleet schedule's increment for `units` (µs, rounded up).
    fn increment_us(&self, units: u64) -> u64 {
        units.saturating_mul(self.interval_ns).div_ceil(1_000)
    }

    /// Moves the schedule to at least `target_ns` (never back).
    fn align(&self, target_ns: u64) {
        if self.interval_ns != 0 {
            self.scheduled_ns.fetch_max(target_ns, Ordering::Relaxed);
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

/// Whether admissions are counted for the fleet-wide sync (`limits.redis_url`):
/// set once at start, so an instance without Redis pays nothing for it.
static FLEET_COUNTING: AtomicBool = AtomicBool::new(false);

/// Turns on counting admissions for [`KeyLimiter::take_admitted`].
pub fn count_admissions_for_fleet() {
    FLEET_COUNTING.store(true, Ordering::Relaxed);
}

/// The instances sharing limits through Redis, as the last fleet sync
/// counted them (1 without Redis, or while it is down). A key this
/// instance has not yet aligned with the fleet's schedule (a new key, or
/// any key right after start) gets only this share of its burst: every
/// instance would otherwise admit a new key's whole burst before any of
/// them had heard of the others' use (N x burst).
static FLEET_INSTANCES: AtomicU64 = AtomicU64::new(1);

/// Records how many instances share the limits (see [`FLEET_INSTANCES`]).
pub fn set_fleet_instances(count: u64) {
    FLEET_INSTANCES.store(count.max(1), Ordering::Relaxed);
}

/// A key's limiter, shared by every core.
#[derive(Debug)]
pub struct KeyLimiter {
    limits: Limits,
    events: Cell,
    bytes: Cell,
    /// Admitted since the fleet sync last took them (only when counting).
    admitted_events: AtomicU64,
    admitted_bytes: AtomicU64,
    /// Whether the fleet's schedule has been applied here once; until
    /// then the burst is shared (see [`FLEET_INSTANCES`]).
    fleet_aligned: AtomicBool,
    /// A request was refused while not aligned: the next fleet sync must
    /// fetch the fleet's schedule even if nothing was admitted here.
    fleet_wanted: AtomicBool,
}

/// What the fleet (all instances, through Redis) says of a key: how far
/// ahead of now its schedule runs in each dimension (µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetView {
    pub events_ahead_us: u64,
    pub bytes_ahead_us: u64,
}

impl KeyLimiter {
    pub fn new(limits: Limits) -> KeyLimiter {
        KeyLimiter {
            limits,
            events: Cell::new(limits.events_per_second, limits.burst_events),
            bytes: Cell::new(limits.bytes_per_second, limits.burst_bytes),
            admitted_events: AtomicU64::new(0),
            admitted_bytes: AtomicU64::new(0),
            fleet_aligned: AtomicBool::new(false),
            fleet_wanted: AtomicBool::new(false),
        }
    }

    /// Events and bytes admitted here since the last call; zeroes them.
    /// Reads before swapping, so a turn over many idle keys writes none
    /// of their cache lines (which the cores read on every request).
    pub fn take_admitted(&self) -> (u64, u64) {
        let take = |counter: &AtomicU64| {
            if counter.load(Ordering::Relaxed) == 0 {
                0
            } else {
                counter.swap(0, Ordering::Relaxed)
            }
        };
        (take(&self.admitted_events), take(&self.admitted_bytes))
    }

    /// The fleet schedule's increments (µs) for `events` and `bytes`.
    pub fn fleet_increments_us(&self, events: u64, bytes: u64) -> (u64, u64) {
        (
            self.events.increment_us(events),
            self.bytes.increment_us(bytes),
        )
    }

    /// Charges this instance with the fleet's usage: the local schedule
    /// moves to where the fleet's is (`view`, which counts this instance's
    /// admissions up to the last [`KeyLimiter::take_admitted`]) plus what
    /// was admitted here since. Never moves a schedule back.
    pub fn align_to_fleet(&self, view: FleetView, now: Instant) {
        let now_ns = nanos_since_epoch(now);
        let since_events = self.admitted_events.load(Ordering::Relaxed);
        let since_bytes = self.admitted_bytes.load(Ordering::Relaxed);
        self.events.align(
            now_ns
                .saturating_add(view.events_ahead_us.saturating_mul(1_000))
                .saturating_add(since_events.saturating_mul(self.events.interval_ns)),
        );
        self.bytes.align(
            now_ns
                .saturating_add(view.bytes_ahead_us.saturating_mul(1_000))
                .saturating_add(since_bytes.saturating_mul(self.bytes.interval_ns)),
        );
        if !self.fleet_aligned.load(Ordering::Relaxed) {
            self.fleet_aligned.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the next fleet sync must fetch this key's schedule although
    /// nothing was admitted here (a request was refused on a shared burst).
    pub fn wants_fleet_view(&self) -> bool {
        self.fleet_wanted.load(Ordering::Relaxed) && !self.fleet_aligned.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Gives back what [`KeyLimiter::admit`] took for a request that was
    /// refused after it (invalid, too large, shed): a refused request
    /// costs its key nothing.
    pub fn refund(&self, events: u64, bytes: u64) {
        self.events.give_back(events);
        self.bytes.give_back(bytes);
        if FLEET_COUNTING.load(Ordering::Relaxed) {
            let subtract = |counter: &AtomicU64, units: u64| {
                let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |value| {
                    Some(value.saturating_sub(units))
                });
            };
            subtract(&self.admitted_events, events);
            subtract(&self.admitted_bytes, bytes);
        }
    }

    /// Admits a request of `events` events and `bytes` bytes at `now`, or
    /// refuses it whole: nothing of a refused request counts.
    pub fn admit(&self, events: u64, bytes: u64, now: Instant) -> Result<(), Refusal> {
        self.admit_among(events, bytes, now, FLEET_INSTANCES.load(Ordering::Relaxed))
    }

    /// [`KeyLimiter::admit`] with `instances` sharing the key's burst
    /// until this limiter has the fleet's view.
    fn admit_among(
        &self,
        events: u64,
        bytes: u64,
        now: Instant,
        instances: u64,
    ) -> Result<(), Refusal> {
        let now_ns = nanos_since_epoch(now);
        let refusal = |wait_ns: u64, dimension, quota_per_second| Refusal {
            retry_after_seconds: wait_ns.div_ceil(NANOS_PER_SECOND).max(1),
            dimension,
            quota_per_second,
        };
        // Without Redis FLEET_INSTANCES stays 1: the whole burst.
        let share = match self.fleet_aligned.load(Ordering::Relaxed) {
            true => 1,
            false => instances,
        };
        let want_fleet = || {
            if share > 1 {
                self.fleet_wanted.store(true, Ordering::Relaxed);
            }
        };
        if let Err(wait) = self.events.take(events, now_ns, share) {
            want_fleet();
            return Err(refusal(wait, "events", self.limits.events_per_second));
        }
        if let Err(wait) = self.bytes.take(bytes, now_ns, share) {
            self.events.give_back(events);
            want_fleet();
            return Err(refusal(wait, "bytes", self.limits.bytes_per_second));
        }
        if FLEET_COUNTING.load(Ordering::Relaxed) {
            self.admitted_events.fetch_add(events, Ordering::Relaxed);
            self.admitted_bytes.fetch_add(bytes, Ordering::Relaxed);
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
    fn before_its_first_fleet_view_a_key_gets_its_share_of_the_burst() {
        let limits = Limits {
            events_per_second: 100,
            burst_events: 90,
            ..Limits::default()
        };
        let limiter = KeyLimiter::new(limits);
        let now = Instant::now();
        let admitted = (0..100)
            .filter(|_| limiter.admit_among(1, 0, now, 3).is_ok())
            .count();
        assert_eq!(admitted, 30, "a third of the burst");
        assert!(
            limiter.wants_fleet_view(),
            "refused: the sync must fetch the fleet's view"
        );
        limiter.align_to_fleet(FleetView::default(), now);
        assert!(!limiter.wants_fleet_view());
        let admitted = (0..100)
            .filter(|_| limiter.admit_among(1, 0, now, 3).is_ok())
            .count();
        assert_eq!(admitted, 60, "the rest of the whole burst, once aligned");
    }

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
    fn the_fleets_usage_is_charged_here() {
        count_admissions_for_fleet();
        let limiter = KeyLimiter::new(Limits {
            events_per_second: 1_000,
            burst_events: 100,
            ..Limits::default()
        });
        let now = Instant::now();
        assert!(limiter.admit(10, 0, now).is_ok());
        assert_eq!(limiter.take_admitted(), (10, 0));
        assert_eq!(limiter.fleet_increments_us(10, 0), (10_000, 0));
        // The fleet's schedule runs 95 ms ahead (others took 85 events):
        // 5 events are left of the burst of 100 here too.
        limiter.align_to_fleet(
            FleetView {
                events_ahead_us: 95_000,
                bytes_ahead_us: 0,
            },
            now,
        );
        assert!(limiter.admit(5, 0, now).is_ok());
        assert!(limiter.admit(1, 0, now).is_err());
        // Aligning never gives capacity back.
        limiter.align_to_fleet(FleetView::default(), now);
        assert!(limiter.admit(1, 0, now).is_err());
    }

    #[test]
    fn unlimited_admits_everything() {
        let limiter = KeyLimiter::new(Limits::default());
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.admit(1_000, 1 << 20, now).is_ok()));
    }
}
