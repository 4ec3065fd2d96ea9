//! From a request body to records handed to Kafka: split, validate,
//! enrich, reserve in-flight capacity, send. Synchronous: it runs between
//! two awaits of the connection task and keeps no borrow across them.

use std::ops::Range;
use std::sync::Arc;

use crossbeam_channel::TrySendError;

use super::context::{Core, Scratch};
pub use super::contracts::Body;
use super::inflight::{settle_markers, Claims};
use super::routing::{judge_key, rerouted, stamp, write_schema_header, Provenance};
use super::unsent::Unsent;
use crate::dedup::table::{Claim, NO_CLAIM};
use crate::error::ApiError;
use crate::events::dead_letter::write_dead_letter;
use crate::events::ids::idempotency_markers;
use crate::events::record::Enrichment;
use crate::events::schema::checks::verdict_or_check;
use crate::events::segment::{dead_letter_raw, translate, Envelope};
use crate::events::split::{event_spans, BodyKind, Shared};
use crate::events::validate::record_bytes_max;
use crate::handoff::{Batch, Markers, Overflow, Record, Ticket};
use crate::tenancy::keys::Grant;

/// A request's take of its key's rate limit, given back when the request
/// is refused after it (invalid, too large, shed).
struct Admission<'a> {
    limiter: Option<&'a crate::tenancy::rate::KeyLimiter>,
    events: u64,
    bytes: u64,
}

impl Admission<'_> {
    fn refund(self) {
        if let Some(limiter) = self.limiter {
            limiter.refund(self.events, self.bytes);
        }
    }
}

/// Events handed to a producer.
#[derive(Debug)]
pub struct Handed {
    /// `None` when nothing was left to publish (every event a duplicate).
    pub ticket: Option<Ticket>,
    /// Valid events, duplicates included (they are stored).
    pub accepted: usize,
    pub rejected: usize,
}

/// What the answer says per event, written as the events are checked:
/// comma-separated JSON, reused between requests.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `{"index", "code", "message", "field"}` of each rejected event.
    pub rejected: Vec<u8>,
    /// The index of each event found already stored (not published
    /// again), here or, with fleet dedup, by another instance.
    pub duplicates: Vec<u32>,
}

impl Outcome {
    pub fn clear(&mut self) {
        self.rejected.clear();
        self.duplicates.clear();
    }
}

/// Validates `body` and hands its records over. Rejected events of a batch
/// are described in `outcome.rejected` and become dead-letter records; a
/// single invalid event is an error. Events already stored (dedup) are
/// listed in `outcome.duplicates` and not published again.
pub fn ingest(
    core: &Core,
    grant: &Grant,
    body: Body<'_>,
    provenance: &Provenance<'_>,
    outcome: &mut Outcome,
) -> Result<Handed, ApiError> {
    let mut batch = Unsent::new(core, core.take_batch());
    // A pooled batch mostly carries these names already: reassigned only
    // when they differ (each assignment is two atomic counts).
    let topic = grant.topic.as_ref().unwrap_or(&core.topic);
    set_name(&mut batch.topic, topic);
    set_name(&mut batch.dead_letter_topic, &core.dead_letter_topic);
    set_name(&mut batch.tenant_id, &grant.tenant_id);
    batch.owner = core.next_dedup_owner();
    set_name(&mut batch.overflow_topic, &core.overflow_topic);
    batch.overflow_spread = core.shared.config.overflow.spread;
    stamp(core, &mut batch, provenance);
    let (rejected, admission) = fill_batch(core, grant, body, &mut batch, outcome)?;
    let duplicates = outcome.duplicates.len();
    let accepted = batch.records.len() - rejected + duplicates;
    let ticket = if batch.records.is_empty() {
        // Every event a duplicate: no record, so no claim to give back;
        // the request's markers are stored (its events are).
        debug_assert!(batch.claims.is_empty());
        if let (Some(markers), Some(table)) = (batch.markers.take(), &core.shared.dedup) {
            let stored = duplicates > 0;
            settle_markers(table, &markers, batch.owner, stored, core.now_ms());
        }
        drop(batch);
        None
    } else {
        let rerouted = rerouted(core, &batch.records);
        let ticket = send(core, batch, duplicates > 0).inspect_err(|_| admission.refund())?;
        core.metrics().overflowed(rerouted.0, rerouted.1);
        Some(ticket)
    };
    core.metrics().events(accepted - duplicates, rejected);
    core.metrics().duplicates(duplicates);
    Ok(Handed {
        ticket,
        accepted,
        rejected,
    })
}

/// Points `slot` at `name` unless it is that name already.
fn set_name(slot: &mut Arc<str>, name: &Arc<str>) {
    if !Arc::ptr_eq(slot, name) {
        *slot = Arc::clone(name);
    }
}

/// Splits the body, checks what can be checked before building anything
/// (room in flight for the most it may build, the key's rate limit), then
/// validates each event into `batch`: valid events as records, invalid
/// ones of a batch as dead letters. Returns how many were rejected and the
/// rate-limit admission (given back if the request fails later); an
/// invalid single event is an error.
fn fill_batch<'g>(
    core: &Core,
    grant: &'g Grant,
    request_body: Body<'_>,
    batch: &mut Batch,
    outcome: &mut Outcome,
) -> Result<(usize, Admission<'g>), ApiError> {
    let Body {
        kind,
        bytes: body,
        idempotency_key,
        ..
    } = request_body;
    let limits = &core.shared.config.limits;
    let mut scratch = core.scratch.borrow_mut();
    let Scratch {
        spans, translated, ..
    } = &mut *scratch;
    let shared = event_spans(kind, body, spans, limits.batch_events_max)?;
    // At least the body's bytes will be built; checking for the bound
    // instead would shed a large request forever once its bound passed
    // the table's size (a 503 no retry cures). The bound is enforced as
    // the records are built, and `send` reserves what was built.
    // The request's own headers ([`stamp`], at most a few hundred bytes)
    // are in the data already: the bound is on what its events build.
    let bytes_max = record_bytes_max(body.len(), spans.len()).saturating_add(batch.data.len());
    if !core.inflight.borrow().has_room(spans.len(), body.len()) {
        return Err(shed(core));
    }
    // A batch counts as its number of events (rejected ones too), and a
    // refused request publishes nothing, its dead letters included.
    let admission = Admission {
        limiter: grant.limiter.as_deref(),
        events: spans.len() as u64,
        bytes: body.len() as u64,
    };
    if let Some(limiter) = admission.limiter {
        limiter
            .admit(admission.events, admission.bytes, core.now())
            .map_err(ApiError::rate_limited)?;
    }
    // Native routes only: a Segment call's `messageId` is its own key.
    let segment = matches!(kind, BodyKind::SegmentCall(_) | BodyKind::SegmentBatch);
    if let Some(key) = idempotency_key.filter(|_| !segment) {
        if let Err(error) = claim_markers(core, grant, key, body, batch) {
            admission.refund();
            return Err(error);
        }
    }
    let built = build_records(
        core,
        grant,
        Request {
            body: request_body,
            shared: &shared,
            spans,
        },
        translated,
        bytes_max,
        batch,
        outcome,
    );
    if translated.capacity() > super::context::POOLED_BUFFER_BYTES_MAX {
        *translated = Vec::new();
    }
    match built {
        Ok(rejected) => Ok((rejected, admission)),
        Err(error) => {
            admission.refund();
            Err(error)
        }
    }
}

/// Claims the markers of a request sent with an `Idempotency-Key` (SPEC
/// §12, §15) in the local table, before any of its events, and puts them
/// in the batch (released with it if the request is refused, else settled
/// with its records; the fleet dedup claims them in Redis the same way).
/// The payload marker found stored: an identical retry, whose events are
/// then claimed as any retry's (its stored ones are duplicates). Else the
/// operation marker found stored: the key was used for another payload
/// within the window, 422. Either found pending: a request with the key
/// is being stored, 503. The operation marker is claimed only with the
/// payload marker (a table set with no room for the payload marker would
/// otherwise leave the operation stored alone, and turn the identical
/// retry into a 422).
fn claim_markers(
    core: &Core,
    grant: &Grant,
    key: &[u8],
    body: &[u8],
    batch: &mut Batch,
) -> Result<(), ApiError> {
    let ids = idempotency_markers(&grant.tenant_id, key, body);
    let owner = batch.owner;
    let markers = batch.markers.insert(Markers {
        operation: ids.operation,
        payload: ids.payload,
        claims: [NO_CLAIM; 2],
    });
    let Some(table) = core.shared.dedup.as_deref() else {
        return Ok(());
    };
    let tenant_hash = table.tenant_hash(&grant.tenant_id);
    let tenant = table.tenant(grant.metrics_slot, tenant_hash);
    let now_ms = core.now_ms();
    let claim = |id| table.claim(tenant, table.fingerprint(tenant_hash, id), owner, now_ms);
    match claim(ids.payload) {
        Claim::Fresh(NO_CLAIM) | Claim::Duplicate => return Ok(()),
        Claim::Fresh(slot) => markers.claims[1] = slot,
        Claim::InFlight | Claim::Repeated => return Err(ApiError::idempotency_key_in_flight()),
        Claim::Busy => return Err(shed(core)),
    }
    match claim(ids.operation) {
        Claim::Fresh(slot) => {
            markers.claims[0] = slot;
            Ok(())
        }
        Claim::Duplicate => Err(ApiError::idempotency_key_reused()),
        Claim::InFlight | Claim::Repeated => Err(ApiError::idempotency_key_in_flight()),
        Claim::Busy => Err(shed(core)),
    }
}

/// A request body and what splitting it found.
struct Request<'a> {
    body: Body<'a>,
    shared: &'a Shared,
    spans: &'a [Range<usize>],
}

/// Validates each event of `spans` into `batch`, refusing the request
/// once its records pass `bytes_max`.
fn build_records(
    core: &Core,
    grant: &Grant,
    request: Request<'_>,
    translated: &mut Vec<u8>,
    bytes_max: usize,
    batch: &mut Batch,
    outcome: &mut Outcome,
) -> Result<usize, ApiError> {
    let Request {
        body:
            Body {
                kind,
                bytes: body,
                idempotency_key,
                verdicts,
            },
        shared,
        spans,
    } = request;
    let limits = &core.shared.config.limits;
    let mut enrichment = Enrichment {
        tenant_id: &grant.tenant_id,
        project_id: grant.project_id.as_deref(),
        // A Segment call is published as it was translated for its check.
        received_at_ms: verdicts.map_or_else(|| core.now_ms(), |checked| checked.received_at_ms),
        idempotency_key: match kind {
            BodyKind::SegmentCall(_) | BodyKind::SegmentBatch => None,
            _ => idempotency_key,
        },
        event_index: 0,
    };
    // A Segment body's calls share one envelope, built once per request.
    let segment_envelope = |endpoint| Envelope {
        endpoint,
        context: shared.context.clone().map(|range| &body[range]),
        sent_at: shared.sent_at.clone().map(|range| &body[range]),
        received_at_ms: enrichment.received_at_ms,
    };
    let segment = match kind {
        BodyKind::SegmentCall(call) => Some(segment_envelope(Some(call))),
        BodyKind::SegmentBatch => Some(segment_envelope(None)),
        _ => None,
    };
    let mut validator = core.validator.borrow_mut();
    let dedup = core.shared.dedup.as_deref();
    // The set the events were checked against, not one reloaded since.
    let schemas = (verdicts.map(|checked| Arc::clone(&checked.set)))
        .or_else(|| core.shared.schemas.as_ref().map(|set| set.load_full()));
    let tenant_hash = dedup.map_or(0, |table| table.tenant_hash(&grant.tenant_id));
    // The tenant as the table's fair shares count it.
    let dedup_tenant = dedup.map(|table| table.tenant(grant.metrics_slot, tenant_hash));
    let mut rejected = 0;
    for (index, span) in spans.iter().enumerate() {
        enrichment.event_index = index;
        let mut schema = 0..0;
        let raw = &body[span.clone()];
        let validated = match &segment {
            None => validator.validate_into(raw, &enrichment, &mut batch.data),
            // The size limit holds for the event as published, after the
            // batch's shared context was copied in.
            Some(envelope) => translate(raw, envelope, translated)
                .and_then(|()| validator.validate_into(translated, &enrichment, &mut batch.data)),
        };
        // The event contract, on the event as sent (a Segment call as
        // translated), once the fixed fields passed.
        let validated = match (validated, &schemas) {
            (Ok(spans), Some(set)) => {
                let document = if segment.is_some() {
                    &translated[..]
                } else {
                    raw
                };
                let event_type =
                    std::str::from_utf8(&batch.data[spans.event_type.clone()]).unwrap_or("");
                let tenant = &grant.tenant_id;
                match verdict_or_check(verdicts, set, index, tenant, event_type, document) {
                    Ok(()) => {
                        if let Some(id) = set.identify(&grant.tenant_id, event_type) {
                            schema = write_schema_header(&id, spans.event_type.clone(), batch);
                        }
                        Ok(spans)
                    }
                    Err(error) => {
                        batch.data.truncate(spans.key.start);
                        Err(error)
                    }
                }
            }
            (validated, _) => validated,
        };
        match validated {
            Ok(spans) => {
                let claim = match (dedup.zip(dedup_tenant), spans.event_id) {
                    (Some((table, tenant)), Some(id)) => match table.claim(
                        tenant,
                        table.fingerprint(tenant_hash, id),
                        batch.owner,
                        enrichment.received_at_ms,
                    ) {
                        Claim::Fresh(slot) => slot,
                        Claim::Duplicate | Claim::Repeated => {
                            batch.data.truncate(spans.key.start);
                            outcome.duplicates.push(index as u32);
                            continue;
                        }
                        Claim::InFlight => return Err(ApiError::event_in_flight(index)),
                        Claim::Busy => return Err(shed(core)),
                    },
                    _ => NO_CLAIM,
                };
                let overflow = judge_key(core, grant, &batch.data[spans.key.clone()]);
                batch.records.push(Record {
                    dead_letter: false,
                    key: spans.key,
                    value: spans.value,
                    event_type: spans.event_type,
                    event_id: spans.event_id,
                    event: index as u32,
                    skip: false,
                    schema,
                    overflow,
                });
                batch.claims.push(claim);
            }
            Err(error) if kind == BodyKind::Single => return Err(batch_hint(body, error)),
            Err(error) if kind.is_single() => return Err(error),
            Err(error) => {
                rejected += 1;
                describe_rejection(&mut outcome.rejected, index, &error);
                // A Segment call's writeKey is an API key: never dead-lettered.
                let shown = match segment {
                    Some(_) => dead_letter_raw(raw, translated),
                    None => raw,
                };
                let (key, value) = write_dead_letter(
                    shown,
                    &error,
                    &enrichment,
                    limits.dlq_raw_bytes_max,
                    &mut batch.data,
                );
                batch.records.push(Record {
                    dead_letter: true,
                    key,
                    value,
                    event_type: 0..0,
                    event_id: None,
                    event: index as u32,
                    skip: false,
                    schema: 0..0,
                    overflow: Overflow::No,
                });
                batch.claims.push(NO_CLAIM);
            }
        }
        if batch.data.len() > bytes_max {
            return Err(ApiError::amplification(body.len(), bytes_max));
        }
    }
    Ok(rejected)
}

/// Reserves in-flight capacity for the batch and sends it to a producer
/// thread; a full table or queue sheds the request (503) at once. Refused,
/// the batch gives back what it holds as it drops ([`Unsent`]).
/// `stored_already`: an event of the request was found stored (its
/// markers are stored whatever its records do).
fn send(core: &Core, mut batch: Unsent<'_>, stored_already: bool) -> Result<Ticket, ApiError> {
    let metrics = core.metrics();
    let (records, bytes) = (batch.records.len(), batch.data.len());
    if !core.inflight.borrow().could_ever_hold(records, bytes) {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!(
                "this request's {records} records take {bytes} bytes, more than a core holds in flight (limits.inflight_bytes_per_core_max, limits.inflight_events_per_core_max)"
            ),
        ));
    }
    // A fresh clock: the delivery deadline, here and for the client's
    // wait (`await_delivery`, which reads the same tick or a later one),
    // counts from the hand-off, not from the request's start, so no batch
    // reaches its producer expired for the time its events took to check.
    let now = core.tick();
    let reserved = core.inflight.borrow_mut().reserve_claimed(
        batch.records.len(),
        batch.data.len(),
        Claims {
            claims: &batch.claims,
            owner: batch.owner,
            tenant: Some(&batch.tenant_id),
            records: &batch.records,
            markers: batch.markers,
            stored_already,
        },
        now,
        metrics,
    );
    let Ok(ticket) = reserved else {
        return Err(shed(core));
    };
    batch.reserved = Some(ticket);
    batch.ticket = ticket;
    batch.deadline =
        now + std::time::Duration::from_millis(core.shared.config.server.delivery_timeout_ms);
    match batch.hand_over() {
        Ok(()) => Ok(ticket),
        Err(TrySendError::Full(())) => Err(shed(core)),
        Err(TrySendError::Disconnected(())) => {
            Err(ApiError::unavailable("server is shutting down"))
        }
    }
}

fn shed(core: &Core) -> ApiError {
    core.metrics().shed();
    core.shared.readiness.note_shed(core.now_ms());
    ApiError::overloaded()
}

/// A batch body sent to the single-event route fails as one event (it has
/// no `user_id`): the answer says where it should have gone.
fn batch_hint(body: &[u8], error: ApiError) -> ApiError {
    let start = body.trim_ascii_start();
    let looks_like_batch = start.starts_with(b"[")
        || (start.starts_with(b"{") && start[1..].trim_ascii_start().starts_with(b"\"events\""));
    if !looks_like_batch {
        return error;
    }
    ApiError {
        message: format!(
            "{}; this body looks like a batch: POST {{\"events\": [...]}} to /v1/events/batch",
            error.message
        )
        .into(),
        ..error
    }
}

fn describe_rejection(out: &mut Vec<u8>, index: usize, error: &ApiError) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"index\":");
    out.extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
    out.push(b',');
    error.write_fields(out);
    out.push(b'}');
}
