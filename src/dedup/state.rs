//! What the cores and `/metrics` share with the fleet dedup thread
//! (`fleet.rs`): the outcomes the cores send it, and its counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::tenancy::labels::{self, OTHER_SLOT};

/// Settles queued by the cores and not yet sent; more are dropped (their
/// keys then expire at the pending TTL) and counted.
pub(super) const SETTLES_MAX: usize = 1 << 16;

/// A record's outcome, for its key in Redis.
#[derive(Debug)]
pub struct Settle {
    pub tenant: Arc<str>,
    pub event_id: u128,
    /// The request that claimed it (its dedup table `owner`): a release
    /// deletes only that request's claim.
    pub owner: u64,
    pub stored: bool,
}

/// What the cores and `/metrics` share with the fleet thread.
#[derive(Debug)]
pub struct FleetDedup {
    settles: ArrayQueue<Settle>,
    pub up: AtomicBool,
    /// Events asked about.
    pub checked: AtomicU64,
    /// Events found stored by another instance (or an earlier attempt).
    pub duplicates: AtomicU64,
    /// Events found in flight elsewhere.
    pub in_flight: AtomicU64,
    /// Batches forwarded unchecked because Redis did not answer.
    pub unchecked_batches: AtomicU64,
    pub settles_dropped: AtomicU64,
    /// Settles of failed rounds kept past their use (see `fleet.rs`).
    pub settles_given_up: AtomicU64,
    pub failures: AtomicU64,
    /// Whether the warning about Redis's eviction policy was given.
    pub policy_warned: AtomicBool,
    /// Per tenant metrics label slot: its own oldest keys deleted to keep
    /// it within `dedup.redis_keys_per_tenant_max`.
    evicted_by_tenant: Box<[AtomicU64]>,
}

impl Default for FleetDedup {
    fn default() -> Self {
        FleetDedup {
            settles: ArrayQueue::new(SETTLES_MAX),
            up: AtomicBool::new(false),
            checked: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            unchecked_batches: AtomicU64::new(0),
            settles_dropped: AtomicU64::new(0),
            settles_given_up: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            policy_warned: AtomicBool::new(false),
            evicted_by_tenant: (0..=OTHER_SLOT).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl FleetDedup {
    pub(crate) fn pop_settle(&self) -> Option<Settle> {
        self.settles.pop()
    }

    /// Counts `keys` of `tenant` deleted to keep it within its cap
    /// (called by the fleet thread, never an event loop: the label slot
    /// is looked up under a lock).
    pub(super) fn evicted(&self, tenant: &str, keys: u64) {
        let slot = usize::from(labels::slot(tenant)).min(usize::from(OTHER_SLOT));
        self.evicted_by_tenant[slot].fetch_add(keys, Relaxed);
    }

    /// Per tenant metrics label slot (index `OTHER_SLOT`: every tenant
    /// past the labelled ones), its keys deleted to keep it within its
    /// cap.
    pub fn evicted_by_tenant(&self) -> Vec<u64> {
        self.evicted_by_tenant
            .iter()
            .map(|count| count.load(Relaxed))
            .collect()
    }

    /// Called by a core when a record's delivery report arrives.
    pub fn settle(&self, settle: Settle) {
        if self.settles.push(settle).is_err() {
            self.settles_dropped.fetch_add(1, Relaxed);
        }
    }
}
