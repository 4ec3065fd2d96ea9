//! Requests awaiting Kafka on one core: a fixed table of slots, each
//! counting the delivery reports still due for one request.
//!
//! Slots are preallocated and reused, with a generation so a ticket names
//! one use of a slot. A slot is freed only when every record of its request
//! has reported, even if the client was already answered (deadline passed,
//! or `ack_mode = "enqueued"`), so the in-flight bounds hold whatever the
//! broker does.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use std::sync::Arc;

use crate::dedup::state::{FleetDedup, Settle};
use crate::dedup::table::{DedupTable, NO_CLAIM};
use crate::handoff::{
    Completion, FleetVerdict, Mailbox, Markers, Record, Ticket, GENERATIONS, SLOTS_PER_CORE_MAX,
};
use crate::metrics::CoreMetrics;

#[derive(Debug)]
struct Slot {
    generation: u32,
    in_use: bool,
    /// Records whose delivery report has not arrived.
    pending: u32,
    /// Whether any event record (not dead letter) failed.
    failed: bool,
    /// Nobody waits any more; free the slot when `pending` reaches 0.
    detached: bool,
    waiting: Option<Waker>,
    bytes: usize,
    started: Instant,
    /// Per record, its dedup claim, settled by the record's report.
    /// Kept between uses (pooled); empty when dedup is off.
    claims: Vec<u32>,
    /// The request's identity in the dedup table.
    owner: u64,
    /// Fleet dedup only: the tenant and, per record, its event id (the
    /// key its Redis claim has, whether or not the local table holds an
    /// entry for it).
    tenant: Option<Arc<str>>,
    event_ids: Vec<Option<u128>>,
    /// Events the fleet dedup found stored elsewhere (answered as
    /// duplicates), and one it found in flight elsewhere (a 503).
    fleet_duplicates: Vec<u32>,
    in_flight_elsewhere: Option<u32>,
    /// An `Idempotency-Key` request's markers, settled once every report
    /// arrived: stored if any event of the request is stored.
    markers: Option<Markers>,
    /// Whether an event of the request is stored (here, found stored by
    /// the table at ingest, or by another instance).
    stored_any: bool,
    /// The fleet dedup kept the whole request back for its key
    /// ([`FleetVerdict::KeyReused`] or [`FleetVerdict::KeyInFlight`]).
    key_refused: Option<FleetVerdict>,
}

/// How a request's records ended, once every report arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Every event record is stored (or was already).
    pub delivered: bool,
    /// An event another instance is storing right now.
    pub in_flight_elsewhere: Option<u32>,
    /// The fleet dedup refused the request for its `Idempotency-Key`.
    pub key_refused: Option<FleetVerdict>,
}

/// A pooled claims vector longer than this is freed on release, so a
/// slot keeps at most this many (4 bytes each) between requests.
const POOLED_CLAIMS_MAX: usize = 4_096;

/// Why a reservation was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// The in-flight table of one core.
pub struct Inflight {
    core: usize,
    slots: Vec<Slot>,
    free: Vec<usize>,
    records: usize,
    records_max: usize,
    bytes: usize,
    bytes_max: usize,
    dedup: Option<Arc<DedupTable>>,
    fleet: Option<Arc<FleetDedup>>,
}

/// Bounds an in-flight table cannot be built with.
#[derive(Debug, PartialEq, Eq)]
pub enum BoundsError {
    /// More records may be in flight than the completion queue holds: a
    /// delivery report could find the queue full.
    CompletionQueueTooSmall {
        records_max: usize,
        completions_capacity: usize,
    },
    /// More request slots than a delivery ticket can name.
    TooManySlots { requests_max: usize },
}

impl std::fmt::Display for BoundsError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundsError::CompletionQueueTooSmall {
                records_max,
                completions_capacity,
            } => write!(
                formatter,
                "the completion queue holds {completions_capacity} reports but limits.inflight_events_per_core_max lets {records_max} records into flight"
            ),
            BoundsError::TooManySlots { requests_max } => write!(
                formatter,
                "limits.inflight_requests_per_core_max is {requests_max}; at most {SLOTS_PER_CORE_MAX} are supported"
            ),
        }
    }
}

impl std::error::Error for BoundsError {}

impl Inflight {
    /// The table of core `core`, whose reports arrive through `mailbox`.
    /// Refused unless the mailbox can hold a report for every record the
    /// table lets into flight: a report is removed from the queue before
    /// its record leaves the table, so the queue can never overflow.
    pub fn new(
        core: usize,
        requests_max: usize,
        records_max: usize,
        bytes_max: usize,
        mailbox: &Mailbox,
        dedup: Option<Arc<DedupTable>>,
        fleet: Option<Arc<FleetDedup>>,
    ) -> Result<Self, BoundsError> {
        if mailbox.completions_capacity() < records_max {
            return Err(BoundsError::CompletionQueueTooSmall {
                records_max,
                completions_capacity: mailbox.completions_capacity(),
            });
        }
        if requests_max > SLOTS_PER_CORE_MAX {
            return Err(BoundsError::TooManySlots { requests_max });
        }
        let mut table = Self::with_bounds(core, requests_max, records_max, bytes_max);
        table.dedup = dedup;
        table.fleet = fleet;
        Ok(table)
    }

    fn with_bounds(core: usize, requests_max: usize, records_max: usize, bytes_max: usize) -> Self {
        let now = Instant::now();
        let slots = (0..requests_max)
            .map(|_| Slot {
                generation: 0,
                in_use: false,
                pending: 0,
                failed: false,
                detached: false,
                waiting: None,
                bytes: 0,
                started: now,
                claims: Vec::new(),
                owner: 0,
                tenant: None,
                event_ids: Vec::new(),
                fleet_duplicates: Vec::new(),
                in_flight_elsewhere: None,
                markers: None,
                stored_any: false,
                key_refused: None,
            })
            .collect();
        Inflight {
            core,
            slots,
            free: (0..requests_max).rev().collect(),
            records: 0,
            records_max,
            bytes: 0,
            bytes_max,
            dedup: None,
            fleet: None,
        }
    }

    /// Whether a request of `records` records and at least `bytes` bytes
    /// would be taken now: checked before its records are built, so that
    /// a full core refuses a request before it costs memory.
    pub fn has_room(&self, records: usize, bytes: usize) -> bool {
        !self.free.is_empty()
            && self.records + records <= self.records_max
            && self.bytes + bytes <= self.bytes_max
    }

    /// Whether a request of `records` records and `bytes` bytes fits the
    /// table at all (empty): if not, no retry can ever succeed.
    pub fn could_ever_hold(&self, records: usize, bytes: usize) -> bool {
        records <= self.records_max && bytes <= self.bytes_max
    }

    /// Reserves a slot for a request of `records` records and `bytes` bytes.
    pub fn reserve(
        &mut self,
        records: usize,
        bytes: usize,
        now: Instant,
        metrics: &CoreMetrics,
    ) -> Result<Ticket, Full> {
        self.reserve_claimed(records, bytes, Claims::default(), now, metrics)
    }

    /// Reserves a slot for a request whose records hold dedup claims
    /// (one per record, or none at all): each is settled when its
    /// record's report arrives.
    pub fn reserve_claimed(
        &mut self,
        records: usize,
        bytes: usize,
        claims: Claims<'_>,
        now: Instant,
        metrics: &CoreMetrics,
    ) -> Result<Ticket, Full> {
        debug_assert!(claims.claims.is_empty() || claims.claims.len() == records);
        if self.records + records > self.records_max || self.bytes + bytes > self.bytes_max {
            return Err(Full);
        }
        let index = self.free.pop().ok_or(Full)?;
        let slot = &mut self.slots[index];
        debug_assert!(!slot.in_use);
        slot.in_use = true;
        slot.pending = records as u32;
        slot.failed = false;
        slot.detached = false;
        slot.waiting = None;
        slot.bytes = bytes;
        slot.started = now;
        slot.claims.clear();
        slot.event_ids.clear();
        slot.fleet_duplicates.clear();
        slot.in_flight_elsewhere = None;
        slot.tenant = None;
        slot.markers = claims.markers;
        slot.stored_any = claims.stored_already;
        slot.key_refused = None;
        if claims.claims.iter().any(|&claim| claim != NO_CLAIM) {
            slot.claims.extend_from_slice(claims.claims);
        }
        // An event the local table keeps no entry for (its set had none
        // its tenant may take) still has its claim in Redis to settle;
        // so do a request's markers.
        if self.fleet.is_some()
            && (claims.markers.is_some()
                || claims
                    .records
                    .iter()
                    .any(|record| record.event_id.is_some()))
        {
            slot.tenant = claims.tenant.cloned();
            slot.event_ids
                .extend(claims.records.iter().map(|record| record.event_id));
        }
        slot.owner = claims.owner;
        let ticket = Ticket {
            core: self.core,
            slot: index,
            generation: slot.generation,
        };
        self.records += records;
        self.bytes += bytes;
        self.publish(metrics);
        Ok(ticket)
    }

    /// Frees a reservation whose batch never reached a producer; its
    /// dedup claims and markers are released (nothing was stored; nor
    /// claimed in Redis, which only a sent batch is).
    pub fn cancel(&mut self, ticket: Ticket, metrics: &CoreMetrics) {
        let slot = &mut self.slots[ticket.slot];
        if let Some(dedup) = &self.dedup {
            for &claim in &slot.claims {
                if claim != NO_CLAIM {
                    dedup.settle(claim, slot.owner, false, 0);
                }
            }
            if let Some(markers) = slot.markers.take() {
                settle_markers(dedup, &markers, slot.owner, false, 0);
            }
        }
        slot.claims.clear();
        let pending = self.slots[ticket.slot].pending as usize;
        self.records -= pending;
        self.release(ticket.slot, metrics);
    }

    /// Stops waiting on a ticket (client answered); the slot is freed once
    /// its last report arrives.
    pub fn detach(&mut self, ticket: Ticket, metrics: &CoreMetrics) {
        let slot = &mut self.slots[ticket.slot];
        if !slot.in_use || slot.generation != ticket.generation {
            return;
        }
        slot.waiting = None;
        if slot.pending == 0 {
            self.release(ticket.slot, metrics);
        } else {
            slot.detached = true;
        }
    }

    /// Applies one delivery report received at `now` (`now_ms` on the
    /// dedup table's clock).
    pub fn complete(
        &mut self,
        completion: Completion,
        now: Instant,
        now_ms: u64,
        metrics: &CoreMetrics,
    ) {
        let ticket = completion.opaque.ticket();
        let Some(slot) = self.slots.get_mut(ticket.slot) else {
            return;
        };
        if !slot.in_use || slot.generation != ticket.generation || slot.pending == 0 {
            tracing::error!(?ticket, "delivery report for no in-flight request");
            return;
        }
        slot.pending -= 1;
        self.records -= 1;
        metrics
            .inflight_events
            .store(self.records as u64, std::sync::atomic::Ordering::Relaxed);
        if !completion.opaque.is_dead_letter() {
            slot.failed |= !completion.delivered;
            slot.stored_any |= completion.delivered;
        }
        let record = completion.opaque.record();
        match completion.fleet {
            FleetVerdict::Produced => {}
            FleetVerdict::Duplicate => slot.fleet_duplicates.push(completion.event),
            FleetVerdict::InFlight => {
                slot.in_flight_elsewhere.get_or_insert(completion.event);
            }
            FleetVerdict::KeyReused | FleetVerdict::KeyInFlight => {
                slot.key_refused = Some(completion.fleet);
            }
        }
        if let (Some(dedup), Some(&claim)) = (&self.dedup, slot.claims.get(record)) {
            if claim != NO_CLAIM {
                dedup.settle(claim, slot.owner, completion.delivered, now_ms);
            }
        }
        // Only a record this instance produced settles its key in Redis;
        // the others' keys belong to another instance.
        if let (Some(fleet), Some(tenant), FleetVerdict::Produced, Some(&Some(event_id))) = (
            &self.fleet,
            &slot.tenant,
            completion.fleet,
            slot.event_ids.get(record),
        ) {
            fleet.settle(Settle {
                tenant: Arc::clone(tenant),
                event_id,
                owner: slot.owner,
                stored: completion.delivered,
            });
        }
        if slot.pending > 0 {
            return;
        }
        if let Some(markers) = slot.markers.take() {
            // A request the fleet refused for its key is not the key's
            // operation, even if some of its events (their own
            // `event_id`s) were found stored at ingest.
            let stored = slot.stored_any && slot.key_refused.is_none();
            if let Some(dedup) = &self.dedup {
                settle_markers(dedup, &markers, slot.owner, stored, now_ms);
            }
            // Redis holds the markers this request claimed there, or
            // learns them now if the round failed; a request the fleet
            // refused for its key claimed neither, and the key it found
            // is another request's.
            if let (Some(fleet), Some(tenant), None) = (&self.fleet, &slot.tenant, slot.key_refused)
            {
                for event_id in [markers.operation, markers.payload] {
                    fleet.settle(Settle {
                        tenant: Arc::clone(tenant),
                        event_id,
                        owner: slot.owner,
                        stored,
                    });
                }
            }
        }
        metrics.delivery_latency(now.saturating_duration_since(slot.started));
        if slot.detached {
            self.release(ticket.slot, metrics);
        } else if let Some(waker) = slot.waiting.take() {
            waker.wake();
        }
    }

    /// How the request ended, once every report of `ticket` arrived (the
    /// fleet's duplicates appended to `duplicates`); the slot is then
    /// freed. Otherwise registers `waker`.
    fn poll_ticket(
        &mut self,
        ticket: Ticket,
        waker: &Waker,
        metrics: &CoreMetrics,
        duplicates: &mut Vec<u32>,
    ) -> Option<Settled> {
        let slot = &mut self.slots[ticket.slot];
        debug_assert!(slot.in_use && slot.generation == ticket.generation);
        if slot.pending == 0 {
            let settled = Settled {
                delivered: !slot.failed,
                in_flight_elsewhere: slot.in_flight_elsewhere,
                key_refused: slot.key_refused,
            };
            duplicates.extend_from_slice(&slot.fleet_duplicates);
            self.release(ticket.slot, metrics);
            return Some(settled);
        }
        match &slot.waiting {
            Some(current) if current.will_wake(waker) => {}
            _ => slot.waiting = Some(waker.clone()),
        }
        None
    }

    fn release(&mut self, index: usize, metrics: &CoreMetrics) {
        let slot = &mut self.slots[index];
        slot.in_use = false;
        slot.waiting = None;
        slot.generation = (slot.generation + 1) % GENERATIONS;
        slot.claims.clear();
        slot.event_ids.clear();
        slot.fleet_duplicates.clear();
        slot.tenant = None;
        slot.markers = None;
        if slot.claims.capacity() > POOLED_CLAIMS_MAX {
            slot.claims = Vec::new();
            slot.event_ids = Vec::new();
            slot.fleet_duplicates = Vec::new();
        }
        self.bytes -= slot.bytes;
        self.free.push(index);
        self.publish(metrics);
    }

    fn publish(&self, metrics: &CoreMetrics) {
        use std::sync::atomic::Ordering::Relaxed;
        metrics
            .inflight_requests
            .store((self.slots.len() - self.free.len()) as u64, Relaxed);
        metrics.inflight_bytes.store(self.bytes as u64, Relaxed);
        metrics.inflight_events.store(self.records as u64, Relaxed);
    }

    /// Requests in flight, answered or not.
    pub fn requests(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// The dedup state a request's records carry into its slot.
#[derive(Default, Clone, Copy)]
pub struct Claims<'a> {
    /// One per record ([`NO_CLAIM`] for none), or empty.
    pub claims: &'a [u32],
    pub owner: u64,
    pub tenant: Option<&'a Arc<str>>,
    pub records: &'a [Record],
    /// An `Idempotency-Key` request's markers.
    pub markers: Option<Markers>,
    /// Whether an event of the request was found stored at ingest (a
    /// duplicate, not in the batch): its markers are then stored whatever
    /// its records do.
    pub stored_already: bool,
}

/// Settles a request's local marker claims (SPEC §12): stored once any of
/// its events is stored, so that an identical retry of a partly stored
/// request is answered (its stored events as duplicates, the others
/// stored) and another payload under its key gets 422; released when none
/// is, so that the key is free again.
pub fn settle_markers(
    dedup: &DedupTable,
    markers: &Markers,
    owner: u64,
    stored: bool,
    now_ms: u64,
) {
    for claim in markers.claims {
        if claim != NO_CLAIM {
            dedup.settle(claim, owner, stored, now_ms);
        }
    }
}

/// Resolves to how a request's records ended. Dropping it early
/// (deadline) detaches the ticket instead of leaking the slot.
pub struct Delivery<'a> {
    pub inflight: &'a RefCell<Inflight>,
    pub metrics: &'a CoreMetrics,
    pub ticket: Ticket,
    pub finished: bool,
    /// Where the events found stored elsewhere are appended.
    pub duplicates: &'a mut Vec<u32>,
}

impl Future for Delivery<'_> {
    type Output = Settled;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Settled> {
        let this = &mut *self;
        let result = this.inflight.borrow_mut().poll_ticket(
            this.ticket,
            context.waker(),
            this.metrics,
            this.duplicates,
        );
        match result {
            Some(settled) => {
                this.finished = true;
                Poll::Ready(settled)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Delivery<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.inflight.borrow_mut().detach(self.ticket, self.metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::Opaque;

    fn completion(ticket: Ticket, delivered: bool, dead_letter: bool) -> Completion {
        Completion::produced(Opaque::new(ticket, 0, dead_letter), delivered)
    }

    #[test]
    fn bounds_are_enforced_and_released() {
        let metrics = CoreMetrics::default();
        let mut inflight = Inflight::with_bounds(0, 2, 10, 100);
        let first = inflight.reserve(5, 60, Instant::now(), &metrics).unwrap();
        assert_eq!(
            inflight.reserve(1, 50, Instant::now(), &metrics),
            Err(Full),
            "bytes bound"
        );
        assert_eq!(
            inflight.reserve(6, 1, Instant::now(), &metrics),
            Err(Full),
            "records bound"
        );
        let second = inflight.reserve(1, 1, Instant::now(), &metrics).unwrap();
        assert_eq!(
            inflight.reserve(1, 1, Instant::now(), &metrics),
            Err(Full),
            "slot bound"
        );
        inflight.cancel(second, &metrics);
        inflight.detach(first, &metrics);
        for _ in 0..5 {
            inflight.complete(completion(first, true, false), Instant::now(), 0, &metrics);
        }
        assert_eq!(inflight.requests(), 0);
        inflight.reserve(10, 100, Instant::now(), &metrics).unwrap();
    }

    #[test]
    fn dead_letter_failures_do_not_fail_the_request() {
        let metrics = CoreMetrics::default();
        let inflight = RefCell::new(Inflight::with_bounds(0, 4, 10, 100));
        let ticket = inflight
            .borrow_mut()
            .reserve(2, 10, Instant::now(), &metrics)
            .unwrap();
        inflight.borrow_mut().complete(
            completion(ticket, true, false),
            Instant::now(),
            0,
            &metrics,
        );
        inflight.borrow_mut().complete(
            completion(ticket, false, true),
            Instant::now(),
            0,
            &metrics,
        );
        let waker = Waker::noop();
        assert_eq!(
            inflight
                .borrow_mut()
                .poll_ticket(ticket, waker, &metrics, &mut Vec::new())
                .map(|settled| settled.delivered),
            Some(true)
        );

        let ticket = inflight
            .borrow_mut()
            .reserve(1, 10, Instant::now(), &metrics)
            .unwrap();
        inflight.borrow_mut().complete(
            completion(ticket, false, false),
            Instant::now(),
            0,
            &metrics,
        );
        assert_eq!(
            inflight
                .borrow_mut()
                .poll_ticket(ticket, waker, &metrics, &mut Vec::new())
                .map(|settled| settled.delivered),
            Some(false)
        );
    }

    /// An event published without a local entry (its set of the table
    /// had no slot its tenant may take) still settles its Redis claim: it
    /// used to be skipped with the local claim, leaving the key pending
    /// until its TTL.
    #[test]
    fn an_event_without_a_local_entry_settles_its_redis_claim() {
        let metrics = CoreMetrics::default();
        let mailbox = Mailbox::new(16);
        let table = Arc::new(DedupTable::new(1_024, 60_000));
        let fleet = Arc::new(FleetDedup::default());
        let mut inflight =
            Inflight::new(0, 4, 8, 1_000, &mailbox, Some(table), Some(fleet.clone())).unwrap();
        let tenant: Arc<str> = "t".into();
        let records = [Record {
            dead_letter: false,
            key: 0..0,
            value: 0..1,
            event_type: 0..0,
            event_id: Some(7),
            event: 0,
            skip: false,
            schema: 0..0,
            overflow: crate::handoff::Overflow::No,
        }];
        let ticket = inflight
            .reserve_claimed(
                1,
                1,
                Claims {
                    claims: &[NO_CLAIM],
                    owner: 1,
                    tenant: Some(&tenant),
                    records: &records,
                    ..Claims::default()
                },
                Instant::now(),
                &metrics,
            )
            .unwrap();
        inflight.complete(completion(ticket, true, false), Instant::now(), 1, &metrics);
        let settle = fleet.pop_settle().expect("no settle for Redis");
        assert_eq!(
            (&*settle.tenant, settle.event_id, settle.stored),
            ("t", 7, true)
        );
    }

    /// A keyed request's markers (SPEC §12) settle once every report
    /// arrived: stored if any event is stored (a partial first attempt
    /// too, or one whose events were found stored at ingest), released if
    /// none is, or if the batch never left; in Redis likewise, unless the
    /// fleet refused the request for its key (it claimed neither there).
    #[test]
    fn markers_are_stored_once_any_event_is_and_released_when_none_is() {
        let metrics = CoreMetrics::default();
        let mailbox = Mailbox::new(16);
        let table = Arc::new(DedupTable::new(1_024, 60_000));
        let fleet = Arc::new(FleetDedup::default());
        let mut inflight = Inflight::new(
            0,
            4,
            8,
            1_000,
            &mailbox,
            Some(table.clone()),
            Some(fleet.clone()),
        )
        .unwrap();
        let tenant: Arc<str> = "t".into();
        let tenant_hash = table.tenant_hash("t");
        let class = table.tenant(0, tenant_hash);
        let records: [Record; 2] = std::array::from_fn(|event| Record {
            dead_letter: false,
            key: 0..0,
            value: 0..1,
            event_type: 0..0,
            event_id: None,
            event: event as u32,
            skip: false,
            schema: 0..0,
            overflow: crate::handoff::Overflow::No,
        });
        let mut ids = 0u128;
        // (reports delivered, found stored at ingest, fleet verdict, cancelled)
        let cases = [
            ([true, false], false, FleetVerdict::Produced, false, true),
            ([false, false], false, FleetVerdict::Produced, false, false),
            ([false, false], true, FleetVerdict::Produced, false, true),
            ([false, false], false, FleetVerdict::KeyReused, false, false),
            // Refused by the fleet: not the key's operation, even with an
            // event found stored at ingest.
            (
                [false, false],
                true,
                FleetVerdict::KeyInFlight,
                false,
                false,
            ),
            ([true, true], false, FleetVerdict::Produced, true, false),
        ];
        for (owner, (delivered, stored_already, verdict, cancelled, stored)) in (1u64..).zip(cases)
        {
            ids += 2;
            let mut markers = Markers {
                operation: ids,
                payload: ids + 1,
                claims: [NO_CLAIM; 2],
            };
            for (claim, id) in markers.claims.iter_mut().zip([ids, ids + 1]) {
                let fingerprint = table.fingerprint(tenant_hash, id);
                let crate::dedup::table::Claim::Fresh(slot) =
                    table.claim(class, fingerprint, owner, 1)
                else {
                    panic!("not fresh");
                };
                *claim = slot;
            }
            let ticket = inflight
                .reserve_claimed(
                    2,
                    2,
                    Claims {
                        claims: &[NO_CLAIM; 2],
                        owner,
                        tenant: Some(&tenant),
                        records: &records,
                        markers: Some(markers),
                        stored_already,
                    },
                    Instant::now(),
                    &metrics,
                )
                .unwrap();
            if cancelled {
                inflight.cancel(ticket, &metrics);
            } else {
                for (record, delivered) in delivered.into_iter().enumerate() {
                    inflight.complete(
                        Completion {
                            opaque: Opaque::new(ticket, record, false),
                            delivered,
                            fleet: verdict,
                            event: record as u32,
                        },
                        Instant::now(),
                        2,
                        &metrics,
                    );
                }
                inflight.detach(ticket, &metrics);
            }
            let case = (delivered, stored_already, verdict, cancelled);
            for id in [ids, ids + 1] {
                let fingerprint = table.fingerprint(tenant_hash, id);
                assert_eq!(table.is_stored(fingerprint, 3), stored, "{case:?}");
                if !stored {
                    // Released: the key is free again.
                    assert!(matches!(
                        table.claim(class, fingerprint, 99, 3),
                        crate::dedup::table::Claim::Fresh(_)
                    ));
                }
            }
            let mut settles = Vec::new();
            while let Some(settle) = fleet.pop_settle() {
                settles.push((settle.event_id, settle.stored));
            }
            let expected = match (cancelled, verdict) {
                (true, _) | (_, FleetVerdict::KeyReused | FleetVerdict::KeyInFlight) => vec![],
                _ => vec![(ids, stored), (ids + 1, stored)],
            };
            assert_eq!(settles, expected, "{case:?}");
        }
        assert_eq!(inflight.requests(), 0);
    }

    /// A late report for an earlier use of a slot must not count towards
    /// the request now in it: without the generation check it would finish
    /// that request early, and as failed.
    #[test]
    fn stale_reports_are_ignored() {
        let metrics = CoreMetrics::default();
        let mut inflight = Inflight::with_bounds(0, 1, 10, 100);
        let old = inflight.reserve(1, 1, Instant::now(), &metrics).unwrap();
        inflight.cancel(old, &metrics);
        let new = inflight.reserve(1, 1, Instant::now(), &metrics).unwrap();
        assert_eq!(old.slot, new.slot);
        inflight.complete(completion(old, false, false), Instant::now(), 0, &metrics);
        let waker = Waker::noop();
        assert_eq!(
            inflight.poll_ticket(new, waker, &metrics, &mut Vec::new()),
            None,
            "the stale report completed the new request"
        );
        inflight.complete(completion(new, true, false), Instant::now(), 0, &metrics);
        assert_eq!(
            inflight
                .poll_ticket(new, waker, &metrics, &mut Vec::new())
                .map(|settled| settled.delivered),
            Some(true)
        );
        assert_eq!(inflight.requests(), 0);
    }
}
