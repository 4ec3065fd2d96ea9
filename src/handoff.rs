//! The hand-off between a core and the producer threads: request batches
//! one way, delivery completions and emptied batches the other way.
//!
//! Everything here is pooled: a core takes a [`Batch`] from its mailbox's
//! recycle queue, fills it, sends it, and the producer thread returns it
//! once librdkafka has copied the records. In steady state no batch is
//! allocated.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

/// Cores addressable by a delivery ticket.
pub const CORES_MAX: usize = 256;
/// In-flight request slots addressable per core.
pub const SLOTS_PER_CORE_MAX: usize = 1 << 20;
/// Records of one request addressable by a delivery report.
pub const RECORDS_PER_BATCH_MAX: usize = 1 << 17;
/// A slot's generation wraps at this (it names one use of the slot).
pub const GENERATIONS: u32 = 1 << 18;
/// Batches kept for reuse per core; more are freed.
pub const RECYCLED_BATCHES_MAX: usize = 256;
/// A batch whose buffer grew beyond this (a large request) is freed rather
/// than pooled, so pooled batches hold at most
/// `RECYCLED_BATCHES_MAX * RECYCLED_BATCH_BYTES_MAX` (64 MiB) per core.
pub const RECYCLED_BATCH_BYTES_MAX: usize = 256 * 1024;

/// Which request a record belongs to: a core, one of its in-flight slots,
/// and the slot's generation (so a late report for a reused slot is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub core: usize,
    pub slot: usize,
    pub generation: u32,
}

/// A ticket, the record's position in its request and its kind packed
/// into librdkafka's delivery opaque (a pointer-sized integer, so nothing
/// is boxed per message). Layout, high bits first: generation (18) |
/// record (17) | dead-letter flag (1) | slot (20) | core (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opaque(pub usize);

const _: () = assert!(usize::BITS == 64, "the delivery opaque packs 64 bits");
const _: () = assert!(
    CORES_MAX == 1 << 8
        && SLOTS_PER_CORE_MAX == 1 << 20
        && RECORDS_PER_BATCH_MAX == 1 << 17
        && GENERATIONS == 1 << 18
);

impl Opaque {
    pub fn new(ticket: Ticket, record: usize, dead_letter: bool) -> Self {
        // Start-up refuses more cores, slots or events per request than
        // fit (config bounds and `server::core_count`), so this never
        // fires; if it did, a report would reach the wrong request.
        assert!(
            ticket.core < CORES_MAX
                && ticket.slot < SLOTS_PER_CORE_MAX
                && record < RECORDS_PER_BATCH_MAX
                && ticket.generation < GENERATIONS
        );
        Opaque(
            (ticket.generation as usize) << 46
                | record << 29
                | usize::from(dead_letter) << 28
                | ticket.slot << 8
                | ticket.core,
        )
    }

    pub fn ticket(self) -> Ticket {
        Ticket {
            core: self.0 & 0xff,
            slot: (self.0 >> 8) & (SLOTS_PER_CORE_MAX - 1),
            generation: (self.0 >> 46) as u32,
        }
    }

    /// The record's position among its request's records.
    pub fn record(self) -> usize {
        (self.0 >> 29) & (RECORDS_PER_BATCH_MAX - 1)
    }

    pub fn is_dead_letter(self) -> bool {
        self.0 >> 28 & 1 == 1
    }
}

/// One Kafka record inside a batch's data buffer.
#[derive(Debug, Clone)]
pub struct Record {
    pub dead_letter: bool,
    pub key: Range<usize>,
    pub value: Range<usize>,
    /// Empty for dead-letter records.
    pub event_type: Range<usize>,
    /// The event's id when a retry would carry it again (dedup's key).
    pub event_id: Option<u128>,
    /// The event's position in its request.
    pub event: u32,
    /// Not to be produced: the fleet dedup found it stored or in flight
    /// elsewhere, and has reported it to its core already.
    pub skip: bool,
    /// The contract that validated the event (header `schema`), in the
    /// batch's data; empty: none did.
    pub schema: Range<usize>,
    /// Rerouted to the overflow topic, and why (header `overflow`).
    pub overflow: Overflow,
}

/// Whether a record leaves its key's partition for the overflow topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Produced to its topic, keyed.
    #[default]
    No,
    /// Its key is over `overflow.key_events_per_second`.
    Rate,
    /// Its key is one of `overflow.force_keys`.
    Forced,
}

impl Overflow {
    /// The `overflow` header's value.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Overflow::No => None,
            Overflow::Rate => Some("rate"),
            Overflow::Forced => Some("forced"),
        }
    }
}

/// The two dedup markers of a request sent with an `Idempotency-Key`
/// (SPEC §12, §15; `events::ids::idempotency_markers`): ids in its
/// tenant's event-id space, kept in the local table and in Redis as event
/// ids are, and settled with the request: stored once any of its events
/// is stored, released when none is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Markers {
    /// (tenant, key): the operation.
    pub operation: u128,
    /// (tenant, key, payload): the operation with this payload.
    pub payload: u128,
    /// Their claims in the local table, operation then payload
    /// (`dedup::table::NO_CLAIM` for none: not claimed by this request).
    pub claims: [u32; 2],
}

/// The records of one request, handed to a producer thread.
#[derive(Debug)]
pub struct Batch {
    pub ticket: Ticket,
    /// Past it, records still waiting for queue space are failed.
    pub deadline: Instant,
    pub topic: Arc<str>,
    pub dead_letter_topic: Arc<str>,
    pub tenant_id: Arc<str>,
    pub data: Vec<u8>,
    pub records: Vec<Record>,
    /// Per record, its dedup claim (`dedup::table::NO_CLAIM` for none):
    /// copied into the request's in-flight slot when it is sent.
    pub claims: Vec<u32>,
    /// The request's identity in the dedup table's pending slots.
    pub owner: u64,
    /// An `Idempotency-Key` request's markers (native routes, dedup on).
    pub markers: Option<Markers>,
    /// Headers every record of the request carries, in `data` (empty:
    /// not sent): `request_id` (the answer's `X-Request-Id`), and the
    /// request's W3C `traceparent` and `tracestate` when valid.
    pub request_id: Range<usize>,
    pub traceparent: Range<usize>,
    pub tracestate: Range<usize>,
    /// Where rerouted records go (`overflow.topic`; empty when off).
    pub overflow_topic: Arc<str>,
    /// Rerouted records are produced without a key (spread over the
    /// partitions; the key in header `key`) rather than keyed.
    pub overflow_spread: bool,
    /// Records handed to librdkafka so far, in order (an event loop stops
    /// at a full queue and leaves the rest to a producer thread).
    pub produced: usize,
    /// Counted in its core's [`Mailbox::queued_batches`] until a producer
    /// thread has produced it.
    pub counted: bool,
}

impl Batch {
    /// An empty batch; only allocated while a core's pool warms up.
    pub fn new(empty: &Arc<str>) -> Self {
        Batch {
            ticket: Ticket {
                core: 0,
                slot: 0,
                generation: 0,
            },
            deadline: Instant::now(),
            topic: empty.clone(),
            dead_letter_topic: empty.clone(),
            tenant_id: empty.clone(),
            data: Vec::with_capacity(4096),
            records: Vec::with_capacity(16),
            claims: Vec::with_capacity(16),
            owner: 0,
            markers: None,
            request_id: 0..0,
            traceparent: 0..0,
            tracestate: 0..0,
            overflow_topic: empty.clone(),
            overflow_spread: true,
            produced: 0,
            counted: false,
        }
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
        self.claims.clear();
        self.markers = None;
        self.request_id = 0..0;
        self.traceparent = 0..0;
        self.tracestate = 0..0;
        self.produced = 0;
        self.counted = false;
    }
}

/// A delivery outcome for one record.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub opaque: Opaque,
    pub delivered: bool,
    /// What the fleet dedup found instead of producing the record.
    pub fleet: FleetVerdict,
    /// The event's position in its request (for `FleetVerdict`s).
    pub event: u32,
}

impl Completion {
    /// Kafka's (or the producer's) report for a record it was given.
    pub fn produced(opaque: Opaque, delivered: bool) -> Self {
        Completion {
            opaque,
            delivered,
            fleet: FleetVerdict::Produced,
            event: 0,
        }
    }
}

/// Whether a record went to Kafka, or the fleet dedup kept it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetVerdict {
    Produced,
    /// Stored already (by another instance, within the window).
    Duplicate,
    /// Being stored by another instance's request right now.
    InFlight,
    /// The whole request kept back: its `Idempotency-Key` was used for
    /// another payload (422).
    KeyReused,
    /// The whole request kept back: a request with its `Idempotency-Key`
    /// is being stored right now (503).
    KeyInFlight,
}

/// What producer threads send back to one core.
pub struct Mailbox {
    /// The core's batches a producer thread has yet to produce: while any
    /// are, the core sends its next ones the same way rather than
    /// producing them itself, so a key's records keep their order.
    queued_batches: std::sync::atomic::AtomicUsize,
    completions: ArrayQueue<Completion>,
    waker: AtomicWaker,
    recycled: ArrayQueue<Batch>,
}

impl Mailbox {
    /// `completions_max` must be at least the number of records the core can
    /// have in flight, so that a completion always finds room.
    pub fn new(completions_max: usize) -> Self {
        Mailbox {
            queued_batches: std::sync::atomic::AtomicUsize::new(0),
            completions: ArrayQueue::new(completions_max.max(1)),
            waker: AtomicWaker::new(),
            recycled: ArrayQueue::new(RECYCLED_BATCHES_MAX),
        }
    }

    /// Completions the queue holds at most.
    pub fn completions_capacity(&self) -> usize {
        self.completions.capacity()
    }

    /// Called by producer threads: queue a completion and wake the core.
    /// Returns `false` only if the queue was full, which the core's
    /// in-flight table makes impossible: it is built against this queue's
    /// capacity and never has more records outstanding than that.
    pub fn complete(&self, completion: Completion) -> bool {
        let queued = self.completions.push(completion).is_ok();
        if !queued {
            tracing::error!("completion queue overflow: in-flight accounting is broken");
        }
        self.waker.wake();
        queued
    }

    /// Called by producer threads (and the core, for a batch it produced or
    /// gave up): give an emptied batch back for reuse; a batch counted in
    /// [`Mailbox::queued_batches`] is done.
    pub fn recycle(&self, mut batch: Batch) {
        self.uncount_queued(&mut batch);
        if batch.data.capacity() > RECYCLED_BATCH_BYTES_MAX {
            return;
        }
        batch.clear();
        let _ = self.recycled.push(batch);
    }

    /// Called by the core as it sends `batch` to a producer thread.
    pub fn count_queued(&self, batch: &mut Batch) {
        batch.counted = true;
        self.queued_batches
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Called once a counted batch is produced (by a producer thread), or
    /// was not queued after all (by the core).
    pub fn uncount_queued(&self, batch: &mut Batch) {
        if std::mem::take(&mut batch.counted) {
            self.queued_batches
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Whether a producer thread still holds batches of this core.
    pub fn has_queued_batches(&self) -> bool {
        self.queued_batches
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
    }

    /// Called by the core: take a pooled batch, if any.
    pub fn take_batch(&self) -> Option<Batch> {
        self.recycled.pop()
    }

    /// Called by the core: the next completion, if any.
    pub fn next_completion(&self) -> Option<Completion> {
        self.completions.pop()
    }

    /// Called by the core's completion task before it sleeps.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_waits_for_its_queued_batches_before_producing_itself() {
        let mailbox = Mailbox::new(4);
        let empty: Arc<str> = "".into();
        let (mut first, mut second) = (Batch::new(&empty), Batch::new(&empty));
        assert!(!mailbox.has_queued_batches());
        mailbox.count_queued(&mut first);
        mailbox.count_queued(&mut second);
        mailbox.uncount_queued(&mut first);
        assert!(mailbox.has_queued_batches(), "one still queued");
        mailbox.uncount_queued(&mut first);
        assert!(mailbox.has_queued_batches(), "a batch is uncounted once");
        mailbox.uncount_queued(&mut second);
        assert!(!mailbox.has_queued_batches());
    }

    #[test]
    fn large_batches_are_freed_not_pooled() {
        let mailbox = Mailbox::new(4);
        let empty: Arc<str> = "".into();
        let mut large = Batch::new(&empty);
        large.data.reserve(RECYCLED_BATCH_BYTES_MAX + 1);
        mailbox.recycle(large);
        assert!(mailbox.take_batch().is_none());
        mailbox.recycle(Batch::new(&empty));
        assert!(mailbox.take_batch().is_some());
    }

    #[test]
    fn opaque_round_trips_every_field() {
        for (core, slot, generation, record, dead_letter) in [
            (0, 0, 0, 0, false),
            (
                255,
                SLOTS_PER_CORE_MAX - 1,
                GENERATIONS - 1,
                RECORDS_PER_BATCH_MAX - 1,
                true,
            ),
            (3, 12345, 77, 99_999, false),
        ] {
            let ticket = Ticket {
                core,
                slot,
                generation,
            };
            let opaque = Opaque::new(ticket, record, dead_letter);
            assert_eq!(opaque.ticket(), ticket);
            assert_eq!(opaque.record(), record);
            assert_eq!(opaque.is_dead_letter(), dead_letter);
        }
    }
}
