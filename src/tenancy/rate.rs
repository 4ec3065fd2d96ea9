//! Per-key rate limits: events per second and bytes per second, each with a
//! burst, as a generic cell rate algorithm (GCRA) over one atomic per
//! dimension. One [`KeyLimiter`] per key is shared by every core (through
//! the key's grant), so the limit holds across an instance's cores, with no
//! lock, no allocation and no system call per request: a compare-and-swap
//! on the key's own atomics, with the time the core already read.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use crate::config::KeyLimits;

/// Nanoseconds per second.
const NANOS_PER_SECOND: u64 = 1_000_000_000;

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

    /// How long until `units` would fit at `now_ns` (0: now), taking
    /// nothing.
    fn wait_ns(&self, units: u64, now_ns: u64) -> u64 {
        if self.interval_ns == 0 {
            return 0;
        }
        let scheduled = self.scheduled_ns.load(Ordering::Relaxed);
        let next = scheduled
            .max(now_ns)
            .saturating_add(units.saturating_mul(self.interval_ns));
        (next - now_ns).saturating_sub(self.tolerance_ns)
    }

    /// Takes `units` at `now_ns`, or says how long until they would fit.
    fn take(&self, units: u64, now_ns: u64) -> Result<u64, u64> {
        if self.interval_ns == 0 {
            return Ok(u64::MAX);
        }
        let tolerance_ns = self.tolerance_ns;
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

    /// `units` as µs of schedule, rounded up (what Redis counts).
    fn units_us(&self, units: u64) -> u64 {
        units.saturating_mul(self.interval_ns).div_ceil(1_000)
    }

    /// The burst in units.
    fn burst_units(&self) -> u64 {
        self.tolerance_ns
            .checked_div(self.interval_ns)
            .unwrap_or(u64::MAX)
    }

    /// What an instance may admit before its first lease: its share of the
    /// burst among `instances` (unlimited: no bound).
    fn allowance(&self, instances: u64) -> i64 {
        match self.interval_ns {
            0 => i64::MAX,
            _ => (self.burst_units() / instances.max(1)).min(i64::MAX as u64) as i64,
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

/// Why a request was refused, for the answer and its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Whole seconds to wait, rounded up, at least 1: the longest wait of
    /// every limit the request is over, so that a client that waits this
    /// long is not refused again by another limit.
    pub retry_after_seconds: u64,
    /// The policy with that wait: "events" or "bytes", its quota per
    /// second and its burst (units admitted at once from idle).
    pub dimension: &'static str,
    pub quota_per_second: u64,
    pub burst: u64,
    /// The request asks for more than the burst: no wait can admit it, so
    /// the answer is permanent (413), never retryable.
    pub permanent: bool,
}

/// Fleet mode: the fleet-wide sync runs (`limits.redis_url`) and Redis is
/// up, so admissions spend leases ([`KeyLimiter`]); off, an instance
/// without Redis pays nothing for them.
static FLEET_MODE: AtomicBool = AtomicBool::new(false);

/// Fleet mode on or off: off while Redis is down, so that each instance
/// limits alone on its GCRA instead of waiting for leases that cannot come.
pub fn set_fleet_mode(on: bool) {
    FLEET_MODE.store(on, Ordering::Relaxed);
}

/// The instances sharing limits through Redis, as the last fleet sync
/// counted them (1 without Redis, or while it is down): a key's
/// allowance before its first lease is `burst / this`.
static FLEET_INSTANCES: AtomicU64 = AtomicU64::new(1);

/// Records how many instances share the limits (see [`FLEET_INSTANCES`]).
pub fn set_fleet_instances(count: u64) {
    FLEET_INSTANCES.store(count.max(1), Ordering::Relaxed);
}

/// How long a refusal for want of a lease tells the client to wait at
/// least: the next sync brings a new lease.
const LEASE_WAIT_NS: u64 = NANOS_PER_SECOND;

/// One dimension's fleet state on this instance (fleet mode only).
#[derive(Debug)]
struct Lease {
    /// Units this instance may still admit (its lease from Redis, or its
    /// allowance before the first one).
    units: AtomicI64,
    /// Of `units` as first given, how many Redis has not been charged
    /// with yet (the allowance before the first lease): charged whole at
    /// the next sync.
    uncharged: AtomicU64,
    /// Units asked for here since the last sync (admitted or refused):
    /// how large the next lease should be.
    demand: AtomicU64,
    /// Where the fleet's schedule stood at the last sync, on this
    /// process's clock (ns since `epoch`): what a refusal's wait is
    /// computed from.
    fleet_scheduled_ns: AtomicU64,
}

impl Lease {
    fn new(allowance: i64) -> Lease {
        Lease {
            units: AtomicI64::new(allowance),
            uncharged: AtomicU64::new(allowance.max(0) as u64),
            demand: AtomicU64::new(0),
            fleet_scheduled_ns: AtomicU64::new(0),
        }
    }

    /// Takes `units` from the lease, or refuses.
    fn take(&self, units: u64) -> bool {
        let units = units.min(i64::MAX as u64) as i64;
        self.units
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left >= units).then_some(left - units)
            })
            .is_ok()
    }

    fn give_back(&self, units: u64) {
        self.units
            .fetch_add(units.min(i64::MAX as u64) as i64, Ordering::Relaxed);
    }
}

/// A key's limiter, shared by every core.
///
/// Alone (no Redis), a GCRA per dimension enforces the key's rate and
/// burst. With Redis (fleet mode) the GCRA still bounds this instance, and
/// every admission also spends a *lease*: units the fleet's schedule in
/// Redis has granted this instance. So the fleet as a whole never admits
/// more than the key's rate and burst, except for the allowances below:
/// - before its first lease, an instance may admit `burst / N` (N: the
///   instances counted in Redis), charged to the fleet at the next sync;
/// - a new instance, before its first sync has counted the others, takes
///   the whole burst as its allowance.
///
/// So N instances meeting a new (or long idle) key at once admit at most
/// one burst between them beyond the fleet's schedule. A lease is sized
/// from the demand seen since the last sync (twice it, at most the
/// burst); a request refused for want of lease is retryable, and its
/// `Retry-After` is computed from where the fleet's schedule stood.
#[derive(Debug)]
pub struct KeyLimiter {
    limits: KeyLimits,
    events: Cell,
    bytes: Cell,
    events_lease: Lease,
    bytes_lease: Lease,
}

/// What one fleet sync asks Redis for one key and dimension (µs of
/// schedule, as the script counts): charge for the allowance spent, and
/// the lease wanted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseRequest {
    pub charge_us: u64,
    pub request_us: u64,
    /// The key's burst (the schedule's tolerance).
    pub tolerance_us: u64,
}

/// What Redis answered for one key and dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseGrant {
    pub granted_us: u64,
    /// How far the fleet's schedule runs ahead of now after the grant.
    pub ahead_us: u64,
}

impl KeyLimiter {
    pub fn new(limits: KeyLimits) -> KeyLimiter {
        let events = Cell::new(limits.events_per_second, limits.burst_events);
        let bytes = Cell::new(limits.bytes_per_second, limits.burst_bytes);
        let instances = FLEET_INSTANCES.load(Ordering::Relaxed);
        KeyLimiter {
            limits,
            events_lease: Lease::new(events.allowance(instances)),
            bytes_lease: Lease::new(bytes.allowance(instances)),
            events,
            bytes,
        }
    }

    /// The sync's request for this key: `(events, bytes)`. Takes the
    /// demand seen since the last call, and the uncharged allowance.
    /// `None` when nothing was asked of the key here since the last call.
    pub fn lease_requests(&self) -> (LeaseRequest, LeaseRequest) {
        (
            Self::lease_request(&self.events, &self.events_lease),
            Self::lease_request(&self.bytes, &self.bytes_lease),
        )
    }

    fn lease_request(cell: &Cell, lease: &Lease) -> LeaseRequest {
        if cell.interval_ns == 0 {
            return LeaseRequest::default();
        }
        let demand = lease.demand.swap(0, Ordering::Relaxed);
        let uncharged = lease.uncharged.swap(0, Ordering::Relaxed);
        let burst = cell.burst_units();
        let target = demand.saturating_mul(2).clamp(1, burst);
        let held = lease.units.load(Ordering::Relaxed).max(0) as u64;
        let wanted = target.saturating_sub(held);
        LeaseRequest {
            charge_us: cell.units_us(uncharged),
            request_us: cell.units_us(wanted),
            tolerance_us: cell.tolerance_ns / 1_000,
        }
    }

    /// Whether anything was asked of this key here since the last sync.
    /// (An allowance nobody used is not charged: only a key asked for
    /// joins the exchange.)
    pub fn has_demand(&self) -> bool {
        self.events_lease.demand.load(Ordering::Relaxed) > 0
            || self.bytes_lease.demand.load(Ordering::Relaxed) > 0
    }

    /// Adds what Redis granted, and notes where the fleet's schedule
    /// stands (for refusals' waits).
    pub fn add_leases(&self, events: LeaseGrant, bytes: LeaseGrant, now: Instant) {
        let now_ns = nanos_since_epoch(now);
        for (cell, lease, grant) in [
            (&self.events, &self.events_lease, events),
            (&self.bytes, &self.bytes_lease, bytes),
        ] {
            if cell.interval_ns == 0 {
                continue;
            }
            let units = grant.granted_us.saturating_mul(1_000) / cell.interval_ns;
            lease.give_back(units);
            lease.fleet_scheduled_ns.store(
                now_ns.saturating_add(grant.ahead_us.saturating_mul(1_000)),
                Ordering::Relaxed,
            );
        }
    }

    /// The key left the fleet exchange (idle here): what is left of its
    /// lease has aged in Redis, so it starts again from an allowance.
    pub fn reset_lease(&self) {
        self.reset_lease_among(FLEET_INSTANCES.load(Ordering::Relaxed));
    }

    fn reset_lease_among(&self, instances: u64) {
        for (cell, lease) in [
            (&self.events, &self.events_lease),
            (&self.bytes, &self.bytes_lease),
        ] {
            let allowance = cell.allowance(instances);
            lease.units.store(allowance, Ordering::Relaxed);
            lease
                .uncharged
                .store(allowance.max(0) as u64, Ordering::Relaxed);
        }
    }

    pub fn limits(&self) -> KeyLimits {
        self.limits
    }

    /// Gives back what [`KeyLimiter::admit`] took for a request that was
    /// refused after it (invalid, too large, shed): a refused request
    /// costs its key nothing.
    pub fn refund(&self, events: u64, bytes: u64) {
        self.events.give_back(events);
        self.bytes.give_back(bytes);
        if FLEET_MODE.load(Ordering::Relaxed) {
            self.events_lease.give_back(events);
            self.bytes_lease.give_back(bytes);
        }
    }

    /// Admits a request of `events` events and `bytes` bytes at `now`, or
    /// refuses it whole: nothing of a refused request counts.
    pub fn admit(&self, events: u64, bytes: u64, now: Instant) -> Result<(), Refusal> {
        self.admit_in(events, bytes, now, FLEET_MODE.load(Ordering::Relaxed))
    }

    /// [`KeyLimiter::admit`], in fleet mode or not.
    fn admit_in(&self, events: u64, bytes: u64, now: Instant, fleet: bool) -> Result<(), Refusal> {
        let now_ns = nanos_since_epoch(now);
        if let Some(refusal) = self.over_burst(events, bytes) {
            return Err(refusal);
        }
        // Every limit the request is over counts: the longest wait, named
        // by its dimension.
        let refusal = |wait_ns: u64, dimension: &'static str| {
            let waits = [
                (self.events.wait_ns(events, now_ns), "events"),
                (self.bytes.wait_ns(bytes, now_ns), "bytes"),
            ];
            let (longest, named) = waits.into_iter().fold((wait_ns, dimension), |best, wait| {
                if wait.0 > best.0 {
                    wait
                } else {
                    best
                }
            });
            let (quota_per_second, burst) = self.policy(named);
            Refusal {
                retry_after_seconds: longest.div_ceil(NANOS_PER_SECOND).max(1),
                dimension: named,
                quota_per_second,
                burst,
                permanent: false,
            }
        };
        if fleet {
            self.lease_take(events, bytes, now_ns)
                .map_err(|(wait, dimension)| refusal(wait, dimension))?;
        }
        let local = self
            .events
            .take(events, now_ns)
            .map_err(|wait| refusal(wait, "events"))
            .and_then(|_| {
                self.bytes.take(bytes, now_ns).map_err(|wait| {
                    self.events.give_back(events);
                    refusal(wait, "bytes")
                })
            });
        if local.is_err() && fleet {
            self.events_lease.give_back(events);
            self.bytes_lease.give_back(bytes);
        }
        local.map(|_| ())
    }

    /// A request over a dimension's burst: refused for good.
    fn over_burst(&self, events: u64, bytes: u64) -> Option<Refusal> {
        [
            (&self.events, events, "events"),
            (&self.bytes, bytes, "bytes"),
        ]
        .into_iter()
        .find(|(cell, units, _)| cell.interval_ns != 0 && *units > cell.burst_units())
        .map(|(_, _, dimension)| {
            let (quota_per_second, burst) = self.policy(dimension);
            Refusal {
                retry_after_seconds: 0,
                dimension,
                quota_per_second,
                burst,
                permanent: true,
            }
        })
    }

    /// A dimension's quota per second and burst.
    fn policy(&self, dimension: &str) -> (u64, u64) {
        match dimension {
            "events" => (self.limits.events_per_second, self.events.burst_units()),
            _ => (self.limits.bytes_per_second, self.bytes.burst_units()),
        }
    }

    /// Fleet mode: takes both dimensions from their leases, or neither;
    /// a refusal says how long to wait and which dimension refused.
    fn lease_take(&self, events: u64, bytes: u64, now_ns: u64) -> Result<(), (u64, &'static str)> {
        let dimensions = [
            (&self.events, &self.events_lease, events, "events"),
            (&self.bytes, &self.bytes_lease, bytes, "bytes"),
        ];
        for (cell, lease, units, _) in dimensions {
            if cell.interval_ns != 0 {
                lease.demand.fetch_add(units, Ordering::Relaxed);
            }
        }
        for (index, (cell, lease, units, dimension)) in dimensions.into_iter().enumerate() {
            if cell.interval_ns == 0 || lease.take(units) {
                continue;
            }
            if index == 1 && self.events.interval_ns != 0 {
                self.events_lease.give_back(events);
            }
            // The fleet's schedule must come back to let `units` in, and
            // a new lease comes with a sync at the earliest.
            let fleet_at = lease.fleet_scheduled_ns.load(Ordering::Relaxed);
            let fits_at = fleet_at
                .saturating_add(units.saturating_mul(cell.interval_ns))
                .saturating_sub(cell.tolerance_ns);
            let wait = fits_at.saturating_sub(now_ns).max(LEASE_WAIT_NS);
            return Err((wait, dimension));
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
        let limiter = KeyLimiter::new(KeyLimits {
            events_per_second: 100,
            burst_events: 100,
            ..KeyLimits::default()
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
        let limiter = KeyLimiter::new(KeyLimits {
            events_per_second: 10,
            burst_events: 10,
            bytes_per_second: 1_000,
            burst_bytes: 1_000,
        });
        let now = Instant::now();
        assert!(limiter.admit(8, 100, now).is_ok());
        assert!(limiter.admit(3, 100, now).is_err(), "8 + 3 > 10");
        // Bytes refuse; the events it would have taken are given back.
        let refusal = limiter.admit(2, 950, now).unwrap_err();
        assert_eq!(refusal.dimension, "bytes");
        assert_eq!(refusal.retry_after_seconds, 1, "50 ms rounded up");
        assert!(!refusal.permanent);
        assert!(
            limiter.admit(2, 100, now).is_ok(),
            "the events were given back"
        );
    }

    #[test]
    fn over_a_burst_is_permanent_and_the_wait_is_the_longest_of_every_limit() {
        let limiter = KeyLimiter::new(KeyLimits {
            events_per_second: 10,
            burst_events: 10,
            bytes_per_second: 100,
            burst_bytes: 2_000,
        });
        let now = Instant::now();
        // More events than the burst: no wait would help.
        let refusal = limiter.admit(11, 10, now).unwrap_err();
        assert!(refusal.permanent);
        assert_eq!((refusal.dimension, refusal.burst), ("events", 10));
        let refusal = limiter.admit(1, 2_001, now).unwrap_err();
        assert!(refusal.permanent);
        assert_eq!((refusal.dimension, refusal.burst), ("bytes", 2_000));
        // The events limit refuses for 1 s, the bytes limit for 2 s: the
        // client is told 2, not 1 (it would be refused again at 1 s).
        assert!(limiter.admit(10, 1_000, now).is_ok());
        let refusal = limiter.admit(10, 1_200, now).unwrap_err();
        assert!(!refusal.permanent);
        assert_eq!(refusal.dimension, "bytes");
        assert_eq!(refusal.retry_after_seconds, 2);
        let later = now + std::time::Duration::from_secs(2);
        assert!(limiter.admit(10, 1_200, later).is_ok());
    }

    #[test]
    fn in_fleet_mode_a_key_spends_its_allowance_then_its_leases() {
        let limiter = KeyLimiter::new(KeyLimits {
            events_per_second: 1,
            burst_events: 90,
            ..KeyLimits::default()
        });
        // Three instances share the burst before the first lease.
        limiter.reset_lease_among(3);
        let now = Instant::now();
        let admit = || limiter.admit_in(1, 0, now, true);
        let admitted = (0..100).filter(|_| admit().is_ok()).count();
        assert_eq!(admitted, 30, "a third of the burst before the first lease");
        let refusal = admit().unwrap_err();
        assert!(refusal.retry_after_seconds >= 1);
        let (events, _) = limiter.lease_requests();
        assert_eq!(
            events.charge_us, 30_000_000,
            "the allowance is charged whole"
        );
        assert_eq!(
            events.request_us, 90_000_000,
            "twice the demand, at most the burst"
        );
        // Redis grants 20 (the rest of the burst went to others).
        limiter.add_leases(
            LeaseGrant {
                granted_us: 20_000_000,
                ahead_us: 90_000_000,
            },
            LeaseGrant::default(),
            now,
        );
        let admitted = (0..100).filter(|_| admit().is_ok()).count();
        assert_eq!(admitted, 20, "the lease");
        // The fleet's schedule is at its tolerance: one more event fits in
        // a second.
        assert_eq!(admit().unwrap_err().retry_after_seconds, 1);
    }

    #[test]
    fn unlimited_admits_everything() {
        let limiter = KeyLimiter::new(KeyLimits::default());
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.admit(1_000, 1 << 20, now).is_ok()));
    }
}
