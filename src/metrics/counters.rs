//! The hot per-core counters: each core writes only its own
//! cache-line-aligned [`CoreMetrics`] (plain relaxed loads and stores, no
//! contention); a scrape reads them all.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::route::Route;

pub(super) const STATUSES: [u16; 20] = [
    200, 202, 204, 400, 401, 403, 404, 405, 408, 411, 413, 415, 417, 422, 429, 431, 500, 503, 100,
    0,
];

/// Upper bounds of the delivery-latency buckets, in microseconds.
pub(super) const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of the request-duration buckets, in microseconds.
pub(super) const DURATION_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Status classes of the request-duration histogram.
pub(super) const STATUS_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

fn status_class(status: u16) -> usize {
    match status / 100 {
        2 => 0,
        4 => 1,
        5 => 2,
        _ => 3,
    }
}

/// Per-tenant counters: one slot per labelled tenant, plus `other`.
pub(super) const TENANT_SLOTS: usize = crate::tenancy::labels::TENANT_LABELS_MAX + 1;

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// Adds to a per-core counter. Only the owning core writes its counters,
/// so a plain load and store suffice: no locked read-modify-write on the
/// request path; a scrape on another thread reads whole values.
#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// One core's counters. Written only by the core that owns them.
#[repr(align(128))]
pub struct CoreMetrics {
    pub(super) requests: [[AtomicU64; STATUSES.len()]; Route::ALL.len()],
    pub(super) events_accepted: AtomicU64,
    pub(super) events_rejected: AtomicU64,
    pub(super) events_duplicate: AtomicU64,
    pub(super) body_bytes: AtomicU64,
    pub(super) latency_buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    pub(super) latency_sum_us: AtomicU64,
    pub(super) durations:
        [[[AtomicU64; DURATION_BOUNDS_US.len() + 1]; STATUS_CLASSES.len()]; Route::ALL.len()],
    pub(super) duration_sum_us: [[AtomicU64; STATUS_CLASSES.len()]; Route::ALL.len()],
    pub(super) refusals: [AtomicU64; crate::error::CODES.len() + 1],
    pub(super) tenant_accepted: [AtomicU64; TENANT_SLOTS],
    pub(super) tenant_rejected: [AtomicU64; TENANT_SLOTS],
    pub(super) tenant_refused: [AtomicU64; TENANT_SLOTS],
    pub(super) shed: AtomicU64,
    pub(super) delivery_timeouts: AtomicU64,
    pub(super) logs_suppressed: AtomicU64,
    pub(super) write_timeouts: AtomicU64,
    /// Requests whose `traceparent` / `tracestate` was invalid (ignored).
    pub(super) trace_context_invalid: [AtomicU64; 2],
    /// Events produced to the overflow topic: over the key rate, forced.
    pub(super) overflow_events: [AtomicU64; 2],
    /// Events of keys the hot-key detector had no room to judge.
    pub(super) overflow_untracked: AtomicU64,
    pub inflight_requests: AtomicU64,
    pub inflight_events: AtomicU64,
    pub inflight_bytes: AtomicU64,
    pub connections: AtomicU64,
    /// Open connections idle past `wire::PARK_AFTER`: they hold no buffer.
    pub connections_parked: AtomicU64,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        // Arrays this large have no derived Default: every counter is zero.
        CoreMetrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            events_accepted: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            durations: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            }),
            duration_sum_us: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            tenant_accepted: std::array::from_fn(|_| AtomicU64::new(0)),
            tenant_rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            tenant_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            shed: AtomicU64::new(0),
            delivery_timeouts: AtomicU64::new(0),
            logs_suppressed: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            trace_context_invalid: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow_events: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow_untracked: AtomicU64::new(0),
            inflight_requests: AtomicU64::new(0),
            inflight_events: AtomicU64::new(0),
            inflight_bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_parked: AtomicU64::new(0),
        }
    }
}

impl CoreMetrics {
    /// A response, and how long its request took (from its head's first
    /// parse to the response being written).
    pub fn request(&self, route: Route, status: u16, took: Duration) {
        bump(&self.requests[route as usize][status_index(status)], 1);
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = DURATION_BOUNDS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(DURATION_BOUNDS_US.len());
        let class = status_class(status);
        bump(&self.durations[route as usize][class][bucket], 1);
        bump(&self.duration_sum_us[route as usize][class], micros);
    }

    /// A refused request: by its error code, and by tenant when the key was known.
    pub fn refusal(&self, code: &str, tenant_slot: Option<u16>) {
        bump(&self.refusals[crate::error::code_index(code)], 1);
        if let Some(slot) = tenant_slot {
            bump(
                &self.tenant_refused[usize::from(slot).min(TENANT_SLOTS - 1)],
                1,
            );
        }
    }

    /// A tenant's events in an answered request: accepted (duplicates
    /// included: the client's events are stored) and rejected.
    pub fn tenant_events(&self, tenant_slot: u16, accepted: usize, rejected: usize) {
        let slot = usize::from(tenant_slot).min(TENANT_SLOTS - 1);
        bump(&self.tenant_accepted[slot], accepted as u64);
        if rejected > 0 {
            bump(&self.tenant_rejected[slot], rejected as u64);
        }
    }

    pub fn events(&self, accepted: usize, rejected: usize) {
        bump(&self.events_accepted, accepted as u64);
        bump(&self.events_rejected, rejected as u64);
    }

    /// Events found already stored (dedup): answered, not published.
    pub fn duplicates(&self, count: usize) {
        if count > 0 {
            bump(&self.events_duplicate, count as u64);
        }
    }

    pub fn body_bytes(&self, bytes: usize) {
        bump(&self.body_bytes, bytes as u64);
    }

    pub fn delivery_latency(&self, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        bump(&self.latency_buckets[bucket], 1);
        bump(&self.latency_sum_us, micros);
    }

    pub fn shed(&self) {
        bump(&self.shed, 1);
    }

    pub fn delivery_timeout(&self) {
        bump(&self.delivery_timeouts, 1);
    }

    pub fn log_suppressed(&self) {
        bump(&self.logs_suppressed, 1);
    }

    /// A connection closed because its socket took no bytes for the write timeout.
    pub fn write_timeout(&self) {
        bump(&self.write_timeouts, 1);
    }

    /// A request's trace context header was invalid: ignored, not copied.
    pub fn trace_context_invalid(&self, invalid: crate::http::trace_context::Invalid) {
        let index = match invalid {
            crate::http::trace_context::Invalid::Traceparent => 0,
            crate::http::trace_context::Invalid::Tracestate => 1,
        };
        bump(&self.trace_context_invalid[index], 1);
    }

    /// Events of one request rerouted to the overflow topic, by reason.
    pub fn overflowed(&self, rate: u64, forced: u64) {
        if rate > 0 {
            bump(&self.overflow_events[0], rate);
        }
        if forced > 0 {
            bump(&self.overflow_events[1], forced);
        }
    }

    /// Events the hot-key detector could not judge (no room in its table).
    pub fn overflow_untracked(&self, events: u64) {
        if events > 0 {
            bump(&self.overflow_untracked, events);
        }
    }
}
