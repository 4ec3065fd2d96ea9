//! What a record carries beyond its event, and where it goes: the headers
//! of its request (`request_id`, W3C `traceparent`/`tracestate`), the
//! contract that validated it (`schema`), and whether a hot key sends it
//! to the overflow topic (`overflow`, SPEC §17). Everything is written
//! into the request's pooled batch: nothing is allocated per request.

use std::ops::Range;

use super::context::Core;
use crate::events::schema::ContractId;
use crate::handoff::{Batch, Overflow, Record};
use crate::hot_keys::Judged;
use crate::http::trace_context::copy_trace_context;
use crate::tenancy::keys::Grant;

/// Where a request came from: what every record of it says in its headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provenance<'a> {
    /// The answer's `X-Request-Id` (header `request_id`).
    pub request_id: &'a [u8],
    /// The request's head, when it sent `traceparent` or `tracestate`
    /// (copied to headers of the same names when valid).
    pub traced_head: Option<&'a [u8]>,
}

/// Writes the headers every record of the request carries into the
/// batch's data, first: the request id, and the trace context when valid
/// (an invalid one is counted and left out, never refused).
pub fn stamp(core: &Core, batch: &mut Batch, provenance: &Provenance<'_>) {
    let start = batch.data.len();
    batch.data.extend_from_slice(provenance.request_id);
    batch.request_id = start..batch.data.len();
    if let Some(head) = provenance.traced_head {
        let copied = copy_trace_context(head, &mut batch.data);
        batch.traceparent = copied.traceparent;
        batch.tracestate = copied.tracestate;
        if let Some(invalid) = copied.invalid {
            core.metrics().trace_context_invalid(invalid);
        }
    }
}

/// Appends a record's `schema` header (`<scope>/<event_type>@sha256:<hex>`,
/// see [`ContractId`]) to the batch's data, the event type copied from
/// where the record has it; returns where it is.
pub fn write_schema_header(
    id: &ContractId,
    event_type: Range<usize>,
    batch: &mut Batch,
) -> Range<usize> {
    let start = batch.data.len();
    batch.data.extend_from_slice(id.scope().as_bytes());
    batch.data.push(b'/');
    batch.data.extend_from_within(event_type);
    batch.data.extend_from_slice(b"@sha256:");
    batch.data.extend_from_slice(&id.sha256_hex());
    start..batch.data.len()
}

/// Whether a valid event's record (its key `<tenant_id>:<user_id>`)
/// leaves its partition for the overflow topic. A key whose grant names a
/// topic of its own is never rerouted: that topic is the tenant's alone,
/// and the overflow topic is shared.
pub fn judge_key(core: &Core, grant: &Grant, key: &[u8]) -> Overflow {
    let Some(detector) = core.shared.hot_keys.as_deref() else {
        return Overflow::No;
    };
    if grant.topic.is_some() {
        return Overflow::No;
    }
    match detector.judge(key, core.now()) {
        Judged::Stay => Overflow::No,
        Judged::Rate => Overflow::Rate,
        Judged::Forced => Overflow::Forced,
        Judged::Untracked => {
            core.metrics().overflow_untracked(1);
            Overflow::No
        }
    }
}

/// A request's records rerouted (for the rate, forced), counted once the
/// request is handed over.
pub fn rerouted(core: &Core, records: &[Record]) -> (u64, u64) {
    if core.shared.hot_keys.is_none() {
        return (0, 0);
    }
    records
        .iter()
        .fold((0, 0), |(rate, forced), record| match record.overflow {
            Overflow::No => (rate, forced),
            Overflow::Rate => (rate + 1, forced),
            Overflow::Forced => (rate, forced + 1),
        })
}
