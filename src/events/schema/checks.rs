//! The schema check of one request's events, done before the request's
//! records are built: on its core while an allowance of steps lasts, the
//! rest on a checker thread ([`super::checker`]), so that no request keeps
//! a core from its other connections for longer than the allowance
//! (SPEC §15: no tenant may delay another's answers by more than a few
//! milliseconds).
//!
//! Each event is found as the request path finds it (`split`), a Segment
//! call translated as it will be published (`segment`), and parsed once
//! into a simd-json tape ([`super::tape`]): its `event_type` is read from
//! the tape, and the tape is what its contract validates; events of a
//! type with no schema (and `schemas.require` off) go no further. The outcome is one
//! [`Verdict`] per event, by index, which the request path then applies
//! instead of checking again.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use super::tape::with_document;
use super::{Checked, SchemaSet, PARSE_STEPS_PER_BYTE};
use crate::error::ApiError;
use crate::events::segment::{translate, Envelope};
use crate::events::split::{event_spans, BodyKind};

/// What the check found for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No schema applies (or the event has no readable `event_type`: the
    /// request path refuses it for that).
    Unchecked,
    /// Checked against the schema of `event_type`.
    Checked {
        event_type: Box<str>,
        result: Result<(), ApiError>,
    },
}

/// The verdicts of one request's events, and what they were reached with.
#[derive(Debug)]
pub struct Verdicts {
    /// The set the events were checked against: the request path looks
    /// schemas up in it, not in a set reloaded since.
    pub set: Arc<SchemaSet>,
    /// The time a Segment call was translated with: the request path
    /// translates with the same, so it publishes what was checked.
    pub received_at_ms: u64,
    /// By event index; an index past the end was never reached (the body
    /// did not split, or holds fewer events).
    pub by_index: Vec<Verdict>,
}

impl Verdicts {
    /// The verdict on event `index` of type `event_type` from `tenant`:
    /// `None` when it was not checked as that type (never, unless the
    /// request path reads the event otherwise than the check did).
    pub fn verdict(
        &self,
        index: usize,
        tenant: &str,
        event_type: &str,
    ) -> Option<Result<(), ApiError>> {
        match self.by_index.get(index)? {
            Verdict::Checked {
                event_type: checked,
                result,
            } if &**checked == event_type => Some(result.clone()),
            Verdict::Checked { .. } => None,
            Verdict::Unchecked if self.set.applies(tenant, event_type) => None,
            Verdict::Unchecked => Some(Ok(())),
        }
    }
}

/// The verdict on event `index` (of type `event_type`, as `document`):
/// the one found ahead in `verdicts`, or, should the request path read an
/// event otherwise than the check did (or no check ran ahead), a check
/// now, where a core can do it.
pub fn verdict_or_check(
    verdicts: Option<&Verdicts>,
    set: &SchemaSet,
    index: usize,
    tenant: &str,
    event_type: &str,
    document: &[u8],
) -> Result<(), ApiError> {
    if let Some(found) = verdicts.and_then(|verdicts| verdicts.verdict(index, tenant, event_type)) {
        return found;
    }
    if nesting(document) > INLINE_NESTING_MAX {
        return Err(ApiError::unavailable(
            "this event's schema check could not be done here; retry",
        ));
    }
    set.check(tenant, event_type, document)
}

/// What a request is, for its check.
#[derive(Clone, Copy, Debug)]
pub struct RequestShape {
    pub kind: BodyKind,
    pub batch_events_max: usize,
    pub received_at_ms: u64,
}

/// Where a check stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every event has its verdict.
    Finished,
    /// The allowance ran out at this event: it and those after it are
    /// left for a checker thread.
    StoppedAt(usize),
}

/// `event_type` of an event ([`super::tape::Document::event_type`]);
/// `None` when it is missing, repeated, not a string or the event is not
/// JSON (the request path refuses the event for that, before any schema).
pub fn event_type(document: &[u8]) -> Option<String> {
    with_document(document, |parsed| parsed?.event_type().map(str::to_owned))
}

thread_local! {
    /// The events of the request being checked, reused from request to
    /// request.
    static SPANS: RefCell<Vec<Range<usize>>> = const { RefCell::new(Vec::new()) };
}

/// What checking one event came to.
enum Step {
    Verdict(Verdict, u64),
    /// Left for a checker thread, from this event on.
    Stop,
}

/// Checks the events of `body` from index `from` on, spending at most
/// `allowance` steps (reading and splitting counted per byte), writing
/// each verdict into `verdicts` (grown as needed).
pub fn check_events(
    set: &SchemaSet,
    tenant: &str,
    shape: RequestShape,
    body: &[u8],
    from: usize,
    allowance: u64,
    verdicts: &mut Vec<Verdict>,
) -> Progress {
    let split_steps = PARSE_STEPS_PER_BYTE.saturating_mul(body.len() as u64);
    if split_steps > allowance {
        return Progress::StoppedAt(from);
    }
    let mut spans = SPANS.take();
    spans.clear();
    let progress = check_spans(
        set,
        tenant,
        shape,
        body,
        from,
        allowance - split_steps,
        allowance == u64::MAX,
        &mut spans,
        verdicts,
    );
    SPANS.set(spans);
    progress
}

#[allow(clippy::too_many_arguments)]
fn check_spans(
    set: &SchemaSet,
    tenant: &str,
    shape: RequestShape,
    body: &[u8],
    from: usize,
    mut left: u64,
    unbounded: bool,
    spans: &mut Vec<Range<usize>>,
    verdicts: &mut Vec<Verdict>,
) -> Progress {
    let Ok(shared) = event_spans(shape.kind, body, spans, shape.batch_events_max) else {
        // The request path refuses the body for that.
        return Progress::Finished;
    };
    let segment = match shape.kind {
        BodyKind::SegmentCall(call) => Some(Some(call)),
        BodyKind::SegmentBatch => Some(None),
        _ => None,
    };
    let envelope = segment.map(|endpoint| Envelope {
        endpoint,
        context: shared.context.clone().map(|range| &body[range]),
        sent_at: shared.sent_at.clone().map(|range| &body[range]),
        received_at_ms: shape.received_at_ms,
    });
    if verdicts.len() < spans.len() {
        verdicts.resize(spans.len(), Verdict::Unchecked);
    }
    let mut translated = Vec::new();
    for (index, span) in spans.iter().enumerate().skip(from) {
        let raw = &body[span.clone()];
        let document = match &envelope {
            None => raw,
            Some(envelope) => {
                if translate(raw, envelope, &mut translated).is_err() {
                    // Refused by the request path as an invalid call.
                    verdicts[index] = Verdict::Unchecked;
                    continue;
                }
                &translated[..]
            }
        };
        let read_steps = PARSE_STEPS_PER_BYTE.saturating_mul(document.len() as u64);
        if read_steps > left {
            return Progress::StoppedAt(index);
        }
        left -= read_steps;
        // One parse: its event_type, then its contract.
        let step = with_document(document, |parsed| {
            let unchecked = Step::Verdict(Verdict::Unchecked, 0);
            let Some(parsed) = parsed else {
                return unchecked;
            };
            let Some(event_type) = parsed.event_type() else {
                return unchecked;
            };
            if !set.applies(tenant, event_type) {
                return unchecked;
            }
            // A core's stack holds only so deep a validation.
            if !unbounded && parsed.nests_deeper_than(INLINE_NESTING_MAX) {
                return Step::Stop;
            }
            match set.check_parsed(tenant, event_type, document.len(), Some(parsed), left) {
                Checked::Done {
                    result,
                    spent_steps,
                } => Step::Verdict(
                    Verdict::Checked {
                        event_type: event_type.into(),
                        result,
                    },
                    spent_steps,
                ),
                Checked::Deferred => Step::Stop,
            }
        });
        match step {
            Step::Verdict(verdict, spent_steps) => {
                left = left.saturating_sub(spent_steps);
                verdicts[index] = verdict;
            }
            Step::Stop => return Progress::StoppedAt(index),
        }
    }
    Progress::Finished
}

/// The deepest nesting of an event a core checks itself; deeper ones go
/// to the checker threads, whose stacks are sized for the deepest the
/// budgets allow (128 levels, the parser's limit, times
/// `schemas.ref_depth_max`; measured in `BENCHMARKS.md`: the default
/// needs between 1 and 2 MiB, a core's whole stack).
pub const INLINE_NESTING_MAX: usize = 32;

/// How deep `document`'s arrays and objects nest, read from its bytes
/// (strings skipped): whether a core may check it.
pub fn nesting(document: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in document {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(files: &[(&str, &str)]) -> (super::super::files::tests::Scratch, SchemaSet) {
        let scratch = super::super::files::tests::Scratch::new(&format!("checks-{}", files.len()));
        for (name, text) in files {
            let path = scratch.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let set = SchemaSet::load(&scratch.0, false).unwrap();
        (scratch, set)
    }

    const SHAPE: RequestShape = RequestShape {
        kind: BodyKind::JsonBatch,
        batch_events_max: 1_000,
        received_at_ms: 1_000,
    };

    #[test]
    fn each_event_gets_its_verdict_by_index() {
        let (_scratch, set) = set_with(&[("signup.json", r#"{"required":["plan"]}"#)]);
        let body = br#"{"events":[{"event_type":"signup","plan":1},{"event_type":"signup"},{"event_type":"other"},{"nope":1}]}"#;
        let mut verdicts = Vec::new();
        let progress = check_events(&set, "t", SHAPE, body, 0, u64::MAX, &mut verdicts);
        assert_eq!(progress, Progress::Finished);
        assert!(matches!(
            &verdicts[0],
            Verdict::Checked { result: Ok(()), .. }
        ));
        assert!(
            matches!(&verdicts[1], Verdict::Checked { result: Err(error), .. } if error.code == "schema_violation")
        );
        assert_eq!(verdicts[2], Verdict::Unchecked);
        assert_eq!(verdicts[3], Verdict::Unchecked);
    }

    #[test]
    fn a_small_allowance_stops_and_the_rest_resumes_elsewhere() {
        let (_scratch, set) = set_with(&[("signup.json", r#"{"required":["plan"]}"#)]);
        let event = r#"{"event_type":"signup","plan":1}"#;
        let body = format!(r#"{{"events":[{}]}}"#, [event; 10].join(","));
        let mut verdicts = Vec::new();
        let allowance = PARSE_STEPS_PER_BYTE * body.len() as u64
            + 3 * 2 * PARSE_STEPS_PER_BYTE * event.len() as u64;
        let progress = check_events(
            &set,
            "t",
            SHAPE,
            body.as_bytes(),
            0,
            allowance,
            &mut verdicts,
        );
        let Progress::StoppedAt(stopped) = progress else {
            panic!("{progress:?}");
        };
        assert!(stopped > 0 && stopped < 10, "{stopped}");
        let progress = check_events(
            &set,
            "t",
            SHAPE,
            body.as_bytes(),
            stopped,
            u64::MAX,
            &mut verdicts,
        );
        assert_eq!(progress, Progress::Finished);
        assert!(verdicts
            .iter()
            .all(|verdict| matches!(verdict, Verdict::Checked { result: Ok(()), .. })));
    }

    #[test]
    fn a_deep_event_is_left_to_a_checker_thread() {
        let (_scratch, set) = set_with(&[("deep.json", r#"{"type":"object"}"#)]);
        let mut nested = String::from("1");
        for _ in 0..40 {
            nested = format!("[{nested}]");
        }
        let body = format!(r#"{{"events":[{{"event_type":"deep","x":{nested}}}]}}"#);
        let mut verdicts = Vec::new();
        let progress = check_events(&set, "t", SHAPE, body.as_bytes(), 0, 1 << 30, &mut verdicts);
        assert_eq!(progress, Progress::StoppedAt(0));
    }

    #[test]
    fn event_types_are_read_as_json_reads_them() {
        assert_eq!(
            event_type(br#"{"a":[1,{"event_type":"no"}],"event_type":"sign\u0075p"}"#).as_deref(),
            Some("signup")
        );
        assert_eq!(event_type(br#"{"event_type":1}"#), None);
        assert_eq!(event_type(br#"{"event_type":"a","event_type":"b"}"#), None);
        assert_eq!(event_type(b"not json"), None);
    }
}
