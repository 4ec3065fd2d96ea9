//! How many young stored entries each tenant class holds in the dedup
//! table, and its fair share (`table.rs`, "Fair shares"): counters only,
//! atomics, no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Time slices a class's young entries are counted in: the window is
/// `EPOCHS - 1` of them, so an entry leaves the count at most one slice
/// (a seventh of the window) after it leaves the window.
const EPOCHS: usize = 8;
/// How stale the share may be.
pub const SHARE_REFRESH_MS: u64 = 100;
const NEVER: u64 = u64::MAX;

/// Per tenant class, its young stored entries: a ring of [`EPOCHS`]
/// counters, each tagged with the time slice it counts (32-bit slice
/// number, 32-bit signed count, in one atomic). An entry is counted in
/// the slice of its stored time when it is stored, and uncounted there
/// when it is overwritten; a slice older than the ring falls out of the
/// sum, and its counter is reused for a new slice.
pub(super) struct Occupancy {
    rings: Box<[Ring]>,
    epoch_ms: u64,
    entries: u64,
    /// The census behind the share: how many classes held young entries
    /// at `share_at_ms`, and which (one bit each).
    active: AtomicU64,
    active_bits: Box<[AtomicU64]>,
    share_at_ms: AtomicU64,
}

#[repr(align(64))]
struct Ring([AtomicU64; EPOCHS]);

impl Occupancy {
    /// Counters for `tenants` classes of a table of `entries` remembering
    /// stored keys for `window_ms`.
    pub(super) fn new(tenants: usize, entries: usize, window_ms: u64) -> Self {
        Occupancy {
            rings: (0..tenants)
                .map(|_| Ring(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            epoch_ms: window_ms.div_ceil(EPOCHS as u64 - 1).max(1),
            entries: entries as u64,
            active: AtomicU64::new(0),
            active_bits: (0..tenants.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            share_at_ms: AtomicU64::new(NEVER),
        }
    }

    fn epoch(&self, ms: u64) -> u32 {
        (ms / self.epoch_ms) as u32
    }

    pub(super) fn stored(&self, tenant: usize, at_ms: u64) {
        self.change(tenant, self.epoch(at_ms), 1);
    }

    pub(super) fn overwritten(&self, tenant: usize, stored_at_ms: u64, now_ms: u64) {
        let epoch = self.epoch(stored_at_ms);
        // Out of the ring already (the common reuse of an expired entry):
        // counted nowhere any more.
        if self.epoch(now_ms).wrapping_sub(epoch) as i32 >= EPOCHS as i32 {
            return;
        }
        self.change(tenant, epoch, -1);
    }

    fn change(&self, tenant: usize, epoch: u32, delta: i32) {
        let cell = &self.rings[tenant].0[epoch as usize % EPOCHS];
        let mut current = cell.load(Relaxed);
        loop {
            let (tag, count) = unpack(current);
            let next = if tag == epoch {
                pack(epoch, count.wrapping_add(delta))
            } else if (epoch.wrapping_sub(tag) as i32) > 0 {
                // A newer slice: the cell's old one has left the window.
                pack(epoch, delta)
            } else {
                // The cell already counts a newer slice: this one is gone.
                return;
            };
            match cell.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The tenant's stored entries younger than the window (give or take
    /// a slice).
    pub(super) fn young(&self, tenant: usize, now_ms: u64) -> u64 {
        let now = self.epoch(now_ms);
        let sum: i64 = self.rings[tenant]
            .0
            .iter()
            .map(|cell| {
                let (tag, count) = unpack(cell.load(Relaxed));
                let age = now.wrapping_sub(tag) as i32;
                // A slice slightly ahead is another core's clock.
                if -(EPOCHS as i32) < age && age < EPOCHS as i32 {
                    i64::from(count)
                } else {
                    0
                }
            })
            .sum();
        sum.max(0) as u64
    }

    /// The entries each tenant holding young entries may keep at least,
    /// as `claimant` sees it: the table divided by the classes holding
    /// young entries at the last census, and the claimant's own class if
    /// the census missed it. A tenant that starts storing is active from
    /// its first claim; without that, for up to [`SHARE_REFRESH_MS`] it
    /// was judged against a share that left it out (a share of the whole
    /// table for the one tenant counted), so every entry of the others
    /// looked within their share and it could only evict its own.
    pub(super) fn share(&self, claimant: usize, now_ms: u64) -> u64 {
        let at = self.share_at_ms.load(Relaxed);
        if (at == NEVER || now_ms.abs_diff(at) >= SHARE_REFRESH_MS)
            && self
                .share_at_ms
                .compare_exchange(at, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            self.take_census(now_ms);
        }
        let (word, bit) = (claimant / 64, 1u64 << (claimant % 64));
        let counted = self.active_bits[word].load(Relaxed) & bit != 0;
        let active = self.active.load(Relaxed) + u64::from(!counted);
        self.entries / active.max(1)
    }

    /// Counts the classes holding young entries now. Readers may see a
    /// census half written: a judgment off by the classes changing at
    /// that instant, as with every other counter here.
    fn take_census(&self, now_ms: u64) {
        let mut active = 0;
        for (word, cell) in self.active_bits.iter().enumerate() {
            let mut bits = 0u64;
            for bit in 0..64 {
                let tenant = word * 64 + bit;
                if tenant < self.rings.len() && self.young(tenant, now_ms) > 0 {
                    bits |= 1 << bit;
                    active += 1;
                }
            }
            cell.store(bits, Relaxed);
        }
        self.active.store(active, Relaxed);
    }
}

fn pack(epoch: u32, count: i32) -> u64 {
    u64::from(epoch) << 32 | u64::from(count as u32)
}

fn unpack(value: u64) -> (u32, i32) {
    ((value >> 32) as u32, value as u32 as i32)
}
