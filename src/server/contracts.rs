//! The schema check of a request's events (SPEC §13), done before its
//! records are built, so that no tenant's events keep a core from other
//! connections (§15): the core checks while `schemas.core_steps_per_request_max`
//! lasts (and only bodies up to `schemas.core_body_bytes_max`, events
//! nested at most `INLINE_NESTING_MAX` deep), then hands the rest to the
//! checker threads and serves its other connections while they work.
//! `ingest` applies the verdicts instead of checking again
//! (`checks::verdict_or_check`).

use std::sync::Arc;
use std::time::Duration;

use super::context::Core;
use crate::error::ApiError;
use crate::events::schema::checks::{check_events, Progress, RequestShape, Verdicts};
use crate::events::split::BodyKind;
use crate::tenancy::keys::Grant;

/// How long a request waits for the checker threads. Their work per
/// request is bounded by its step budget (`schemas.*_steps_*`), so this
/// only guards against a stuck or hopelessly queued checker. It is not the
/// delivery deadline: that counts from the hand-off to Kafka, so a check
/// that outlasts it still gets its events stored (issue 30, hole 2: a
/// check past the delivery deadline was answered 503 and never stored,
/// and every retry met the same fate).
const CHECKER_WAIT_MAX: Duration = Duration::from_secs(30);

/// Checks the events of `body` against the contracts in use; `None`
/// without contracts.
pub(super) async fn check(
    core: &Core,
    entry: Option<usize>,
    grant: &Grant,
    kind: BodyKind,
    body: &[u8],
) -> Result<Option<Verdicts>, ApiError> {
    let (Some(schemas), Some(checker)) = (&core.shared.schemas, &core.shared.checker) else {
        return Ok(None);
    };
    let set = schemas.load_full();
    if set.is_empty() && !set.requires_schema() {
        return Ok(None);
    }
    let config = &core.shared.config;
    let shape = RequestShape {
        kind,
        batch_events_max: config.limits.batch_events_max,
        received_at_ms: core.now_ms(),
    };
    let mut by_index = Vec::new();
    let progress = if body.len() as u64 > config.schemas.core_body_bytes_max {
        Progress::StoppedAt(0)
    } else {
        check_events(
            &set,
            &grant.tenant_id,
            shape,
            body,
            0,
            config.schemas.core_steps_per_request_max,
            &mut by_index,
        )
    };
    if let Progress::StoppedAt(from) = progress {
        let pending = checker
            .submit(
                Arc::clone(&set),
                Arc::clone(&grant.tenant_id),
                shape,
                body,
                from,
                by_index,
            )
            .map_err(|_| {
                // Shed as a full in-flight table sheds (`ingest`).
                core.metrics().shed();
                core.shared.readiness.note_shed(core.now_ms());
                ApiError::overloaded()
            })?;
        let deadline = core.now() + CHECKER_WAIT_MAX;
        by_index = super::wire::bounded(core, entry, deadline, pending)
            .await
            .map_err(|_| {
                ApiError::unavailable(
                    "the events' schema check did not finish in time (the checker threads are overloaded)",
                )
            })?;
        // Time passed while the checker worked.
        core.tick();
    }
    Ok(Some(Verdicts {
        set,
        received_at_ms: shape.received_at_ms,
        by_index,
    }))
}

/// A request's body as `ingest` takes it: with its events' verdicts.
#[derive(Clone, Copy)]
pub struct Body<'a> {
    pub kind: BodyKind,
    /// Inflated, when it came gzipped.
    pub bytes: &'a [u8],
    /// Native routes only: a Segment call's `messageId` is its own key.
    pub idempotency_key: Option<&'a [u8]>,
    /// The events' schema checks, done ahead ([`check`]).
    pub verdicts: Option<&'a Verdicts>,
}
