//! Event validation (SPEC section 1, "Event schema") and the bounds a
//! request and its events are held to; a valid event's record is written
//! by [`super::record`].
//!
//! simd-json parses each event into a tape held in per-thread buffers that
//! are reused, so a steady stream of events allocates nothing here; the
//! contract check reads the same tape ([`with_parse`]).

use std::cell::RefCell;

use simd_json::{Node, StaticNode, Tape};

use super::duplicates::DuplicateCheck;
use super::ids::EventIds;
use super::record::{write_record, Enrichment, EventFields, RecordSpans};
use crate::config::{RECORD_BYTES_PER_BODY_BYTE_MAX, RECORD_BYTES_PER_EVENT_MAX};
use crate::error::ApiError;

/// The most record bytes a body of `body_bytes` bytes and `events`
/// events may build (the bounds are configuration's: `limits.*` are
/// checked against them).
pub fn record_bytes_max(body_bytes: usize, events: usize) -> usize {
    body_bytes
        .saturating_mul(RECORD_BYTES_PER_BODY_BYTE_MAX)
        .saturating_add(events.saturating_mul(RECORD_BYTES_PER_EVENT_MAX))
}

/// Longest `user_id`, in bytes.
pub const USER_ID_BYTES_MAX: usize = 256;
/// Longest `event_type`, in bytes.
pub const EVENT_TYPE_BYTES_MAX: usize = 128;
/// Longest `experiment_id` or `variant`, in bytes.
pub const LABEL_BYTES_MAX: usize = 256;

/// Bounds applied to every event.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    pub event_bytes_max: usize,
    pub properties_depth_max: usize,
    pub event_time_past_ms: u64,
    pub event_time_future_ms: u64,
}

/// Longest `Idempotency-Key` taken (400 beyond).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// Per-core validator (its parse buffers are the thread's: [`with_parse`]).
pub struct Validator {
    limits: EventLimits,
    ids: EventIds,
    duplicates: DuplicateCheck,
}

impl Validator {
    pub fn new(limits: EventLimits, seed: u64) -> Self {
        Validator {
            limits,
            ids: EventIds::new(seed),
            duplicates: DuplicateCheck::default(),
        }
    }

    /// Validates `raw` and, if valid, appends its key, enriched value and
    /// event type to `out`. On error `out` is left as it was.
    pub fn validate_into(
        &mut self,
        raw: &[u8],
        enrichment: &Enrichment<'_>,
        out: &mut Vec<u8>,
    ) -> Result<RecordSpans, ApiError> {
        if raw.len() > self.limits.event_bytes_max {
            return Err(ApiError::event_too_large(self.limits.event_bytes_max));
        }
        with_parse(raw, |parsed| match parsed {
            Err(error) => Err(ApiError::new(
                400,
                "invalid_json",
                describe_json_error(raw, &error),
            )),
            // The schema fields first (a repeated one is named as such),
            // then every object at every depth (I-JSON).
            Ok(parsed) => inspect(parsed.nodes, &self.limits, enrichment.received_at_ms)
                .and_then(|fields| self.duplicates.check(parsed.nodes).map(|()| fields))
                .map(|fields| write_record(raw, &fields, enrichment, &mut self.ids, out)),
        })
    }
}

/// One event's simd-json tape, on this thread's buffers.
pub struct Parsed<'a> {
    pub nodes: &'a [Node<'a>],
    /// simd-json's first stage: where each structural character and each
    /// value starts in the event (valid with `nodes`).
    pub structural_indexes: &'a [u32],
}

/// This thread's parse buffers and its last parse, shared by the request
/// path and the contract check (`schema::tape`), which parses an event
/// just before the request path does: the second finds it parsed.
struct LastParse {
    buffers: simd_json::Buffers,
    scratch: Vec<u8>,
    /// Either empty, or the last parse, held in `scratch` (its strings
    /// point into `scratch`'s buffer, which is not written while the
    /// tape is not empty: every parse empties it first).
    tape: Tape<'static>,
    /// Whether `tape` is kept for the next call: then `source` holds the
    /// bytes it was parsed from.
    kept: bool,
    source: Vec<u8>,
}

thread_local! {
    static LAST_PARSE: RefCell<LastParse> = RefCell::new(LastParse {
        buffers: simd_json::Buffers::new(4096),
        scratch: Vec::with_capacity(4096),
        tape: Tape(Vec::new()),
        kept: false,
        source: Vec::with_capacity(4096),
    });
}

/// Runs `work` on the tape of `raw`, parsed on this thread's buffers
/// (reused from event to event: a steady stream allocates nothing), or
/// on the tape [`with_kept_parse`] kept when that was of the same bytes.
/// Not reentrant: `work` parses nothing itself.
pub fn with_parse<R>(
    raw: &[u8],
    work: impl FnOnce(Result<Parsed<'_>, simd_json::Error>) -> R,
) -> R {
    parse(raw, false, work)
}

/// [`with_parse`], keeping the tape for the next call of the same bytes
/// on this thread (the contract check, which parses an event just before
/// the request path does). Only this copies the event a second time, so
/// without contracts nothing is copied or compared to be kept.
pub fn with_kept_parse<R>(
    raw: &[u8],
    work: impl FnOnce(Result<Parsed<'_>, simd_json::Error>) -> R,
) -> R {
    parse(raw, true, work)
}

fn parse<R>(
    raw: &[u8],
    keep: bool,
    work: impl FnOnce(Result<Parsed<'_>, simd_json::Error>) -> R,
) -> R {
    LAST_PARSE.with_borrow_mut(|last| {
        let reuse = last.kept && !last.tape.0.is_empty() && last.source == raw;
        if !reuse {
            let mut tape = Tape(std::mem::take(&mut last.tape.0)).reset();
            last.kept = false;
            last.source.clear();
            last.scratch.clear();
            last.scratch.extend_from_slice(raw);
            if let Err(error) =
                simd_json::fill_tape(&mut last.scratch, &mut last.buffers, &mut tape)
            {
                last.tape = tape.reset();
                return work(Err(error));
            }
            // SAFETY: the tape borrows `last.scratch`, which stays as it is
            // while the tape is kept: a parse empties the tape (above)
            // before it writes `scratch`, and nothing else writes it.
            last.tape = unsafe { std::mem::transmute::<Tape<'_>, Tape<'static>>(tape) };
            if keep {
                last.kept = true;
                last.source.extend_from_slice(raw);
            }
        }
        work(Ok(Parsed {
            nodes: &last.tape.0,
            structural_indexes: last.buffers.structural_indexes(),
        }))
    })
}

/// A JSON syntax error in plain words, with where it is (line and column
/// within the event, counted from 1).
fn describe_json_error(raw: &[u8], error: &simd_json::Error) -> String {
    use simd_json::ErrorType as E;
    let what = match error.error() {
        E::ExpectedObjectKey | E::KeyMustBeAString | E::BadKeyType => {
            "expected a member name in double quotes (a trailing comma before '}'?)"
        }
        E::ExpectedObjectColon => "expected ':' after the member name",
        E::ExpectedMapComma | E::ExpectedArrayComma => {
            "expected ',' between values or the closing bracket"
        }
        E::ExpectedArrayContent | E::ExpectedObjectContent => {
            "expected a value (a trailing comma before ']'?)"
        }
        E::Eof | E::ExpectedMapEnd => "the JSON ends before it is complete",
        E::TrailingData => "there is more after the end of the JSON value",
        E::UnterminatedString => "a string is missing its closing double quote",
        E::InvalidEscape | E::InvalidUnicodeEscape | E::InvalidUnicodeCodepoint => {
            "a string has an invalid escape (\\ must be written \\\\)"
        }
        E::InvalidUtf8 => "the text is not valid UTF-8",
        E::InvalidNumber | E::InvalidExponent | E::Overflow => "a number is not valid JSON",
        E::ExpectedTrue | E::ExpectedFalse | E::ExpectedNull | E::UnexpectedCharacter => {
            "unexpected text (strings need double quotes; true, false and null are lower case)"
        }
        E::DepthLimitExceeded => "the JSON nests too deeply",
        _ => "it is not a JSON value",
    };
    let at = error.index().min(raw.len());
    let before = &raw[..at];
    let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |newline| newline + 1)
        + 1;
    format!("event is not valid JSON: {what}, at line {line}, column {column}")
}

fn invalid(field: &'static str, message: &'static str) -> ApiError {
    ApiError {
        field: Some(field),
        ..ApiError::new(400, "invalid_event", message)
    }
}

/// Index of the node after the value starting at `index`.
fn skip_value(nodes: &[Node<'_>], index: usize) -> usize {
    match nodes[index] {
        Node::Object { count, .. } | Node::Array { count, .. } => index + 1 + count,
        _ => index + 1,
    }
}

fn inspect<'a>(
    nodes: &[Node<'a>],
    limits: &EventLimits,
    now_ms: u64,
) -> Result<EventFields<'a>, ApiError> {
    let Some(Node::Object { len, .. }) = nodes.first() else {
        return Err(ApiError::new(
            400,
            "invalid_event",
            "an event must be a JSON object",
        ));
    };
    let mut seen = Seen::default();
    let mut index = 1;
    for _ in 0..*len {
        let Node::String(key) = nodes[index] else {
            unreachable!("object keys are strings")
        };
        let value = index + 1;
        seen.field(key, nodes, value, limits, now_ms)?;
        index = skip_value(nodes, value);
    }
    seen.finish()
}

/// The schema fields found so far in one event's top-level object.
#[derive(Default)]
struct Seen<'a> {
    user_id: Option<&'a str>,
    event_type: Option<&'a str>,
    event_time: Option<i64>,
    event_id: Option<u128>,
    experiment_id: bool,
    variant: bool,
    properties: bool,
}

impl<'a> Seen<'a> {
    /// Checks the field `key` whose value is `nodes[value]`; unknown
    /// fields pass, reserved ones and repeated schema fields do not.
    fn field(
        &mut self,
        key: &str,
        nodes: &[Node<'a>],
        value: usize,
        limits: &EventLimits,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let node = &nodes[value];
        match key {
            "user_id" => set_once(
                &mut self.user_id,
                "user_id",
                bounded_string(node, "user_id", USER_ID_BYTES_MAX)?,
            ),
            "event_type" => set_once(
                &mut self.event_type,
                "event_type",
                bounded_string(node, "event_type", EVENT_TYPE_BYTES_MAX)?,
            ),
            "event_time" => set_once(
                &mut self.event_time,
                "event_time",
                check_event_time(node, limits, now_ms)?,
            ),
            "event_id" => set_once(&mut self.event_id, "event_id", check_event_id(node)?),
            "experiment_id" => {
                flag_once(&mut self.experiment_id, "experiment_id")?;
                bounded_string(node, "experiment_id", LABEL_BYTES_MAX).map(|_| ())
            }
            "variant" => {
                flag_once(&mut self.variant, "variant")?;
                bounded_string(node, "variant", LABEL_BYTES_MAX).map(|_| ())
            }
            "properties" => {
                flag_once(&mut self.properties, "properties")?;
                check_properties(nodes, value, limits)
            }
            "tenant_id" => Err(reserved("tenant_id")),
            "project_id" => Err(reserved("project_id")),
            "received_at" => Err(reserved("received_at")),
            _ => Ok(()),
        }
    }

    /// The fields, once every required one was found.
    fn finish(self) -> Result<EventFields<'a>, ApiError> {
        let user_id = self
            .user_id
            .ok_or_else(|| invalid("user_id", "user_id is required"))?;
        let event_type = self
            .event_type
            .ok_or_else(|| invalid("event_type", "event_type is required"))?;
        if self.event_time.is_none() {
            return Err(invalid("event_time", "event_time is required"));
        }
        Ok(EventFields {
            user_id,
            event_type,
            event_id: self.event_id,
        })
    }
}

/// The event id as a number: every textual form of one UUID (upper or
/// lower case, braced, URN, no hyphens) is the same id.
fn check_event_id(node: &Node<'_>) -> Result<u128, ApiError> {
    let Node::String(text) = node else {
        return Err(invalid("event_id", "event_id must be a UUID string"));
    };
    uuid::Uuid::try_parse(text)
        .map(|id| id.as_u128())
        .map_err(|_| invalid("event_id", "event_id must be a UUID string"))
}

fn check_properties(
    nodes: &[Node<'_>],
    value: usize,
    limits: &EventLimits,
) -> Result<(), ApiError> {
    if !matches!(nodes[value], Node::Object { .. }) {
        return Err(invalid("properties", "properties must be an object"));
    }
    if depth(nodes, value, limits.properties_depth_max).is_none() {
        return Err(ApiError {
            field: Some("properties"),
            ..ApiError::new(
                400,
                "invalid_event",
                format!(
                    "properties may nest at most {} levels deep",
                    limits.properties_depth_max
                ),
            )
        });
    }
    Ok(())
}

/// A field the server sets, sent by the client.
fn reserved(field: &'static str) -> ApiError {
    ApiError {
        field: Some(field),
        ..ApiError::new(
            400,
            "reserved_field",
            format!("{field} is set by the server and may not be sent"),
        )
    }
}

fn set_once<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), ApiError> {
    if slot.replace(value).is_some() {
        return Err(invalid(field, "field appears more than once"));
    }
    Ok(())
}

fn flag_once(seen: &mut bool, field: &'static str) -> Result<(), ApiError> {
    if std::mem::replace(seen, true) {
        return Err(invalid(field, "field appears more than once"));
    }
    Ok(())
}

fn bounded_string<'a>(
    node: &Node<'a>,
    field: &'static str,
    bytes_max: usize,
) -> Result<&'a str, ApiError> {
    match *node {
        Node::String(text) if !text.is_empty() && text.len() <= bytes_max => Ok(text),
        Node::String(_) => Err(ApiError {
            field: Some(field),
            ..ApiError::new(
                400,
                "invalid_event",
                format!("{field} must be 1 to {bytes_max} bytes"),
            )
        }),
        _ => Err(ApiError {
            field: Some(field),
            ..ApiError::new(400, "invalid_event", format!("{field} must be a string"))
        }),
    }
}

fn check_event_time(node: &Node<'_>, limits: &EventLimits, now_ms: u64) -> Result<i64, ApiError> {
    let millis = match *node {
        Node::Static(StaticNode::I64(value)) => value,
        // Past i64::MAX is no time in milliseconds (292 million years).
        Node::Static(StaticNode::U64(value)) => i64::try_from(value).unwrap_or(-1),
        // A whole number written with a fraction or exponent (`1.71e12`)
        // is an integer to JSON Schema and JavaScript; its text is kept.
        Node::Static(StaticNode::F64(value))
            if value.fract() == 0.0 && (0.0..9.223_372_036_854_775e18).contains(&value) =>
        {
            value as i64
        }
        _ => {
            return Err(invalid(
                "event_time",
                "event_time must be an integer of Unix epoch milliseconds",
            ))
        }
    };
    // Before 1970 is no event's time, whatever the window allows.
    if millis < 0 {
        return Err(invalid(
            "event_time",
            "event_time must be Unix epoch milliseconds from 0 to 2^63-1",
        ));
    }
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let earliest = now.saturating_sub(i64::try_from(limits.event_time_past_ms).unwrap_or(i64::MAX));
    let latest = now.saturating_add(i64::try_from(limits.event_time_future_ms).unwrap_or(i64::MAX));
    if millis < earliest || millis > latest {
        // Seconds and microseconds are the usual mistakes: say so when the
        // value would fit the window in that unit.
        let fits = |candidate: i64| (earliest..=latest).contains(&candidate);
        let unit_hint = if fits(millis.saturating_mul(1_000)) {
            format!(
                "; {millis} looks like seconds: send {} (milliseconds)",
                millis.saturating_mul(1_000)
            )
        } else if fits(millis / 1_000) {
            format!(
                "; {millis} looks like microseconds: send {} (milliseconds)",
                millis / 1_000
            )
        } else {
            String::new()
        };
        return Err(ApiError {
            field: Some("event_time"),
            ..ApiError::new(
                400,
                "invalid_event",
                format!(
                    "event_time must be Unix epoch milliseconds within {} ms before and {} ms after the server clock ({now_ms}){unit_hint}",
                    limits.event_time_past_ms, limits.event_time_future_ms
                ),
            )
        });
    }
    Ok(millis)
}

/// `Some(depth)` of the value at `index` when it is at most `depth_max`.
/// Recursion is bounded by `depth_max`.
fn depth(nodes: &[Node<'_>], index: usize, depth_max: usize) -> Option<usize> {
    let (children, is_object) = match nodes[index] {
        Node::Object { len, .. } => (len, true),
        Node::Array { len, .. } => (len, false),
        _ => return Some(0),
    };
    if depth_max == 0 {
        return None;
    }
    let mut deepest = 0;
    let mut child = index + 1;
    for _ in 0..children {
        if is_object {
            child += 1; // the key
        }
        deepest = deepest.max(depth(nodes, child, depth_max - 1)?);
        child = skip_value(nodes, child);
    }
    Some(deepest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_710_000_000_000;

    fn validator() -> Validator {
        Validator::new(
            EventLimits {
                event_bytes_max: 4096,
                properties_depth_max: 3,
                event_time_past_ms: 86_400_000,
                event_time_future_ms: 60_000,
            },
            7,
        )
    }

    #[test]
    fn event_times_before_1970_or_past_i64_are_refused_whatever_the_window() {
        let mut validator = Validator::new(
            EventLimits {
                event_bytes_max: 4096,
                properties_depth_max: 3,
                event_time_past_ms: u64::MAX,
                event_time_future_ms: u64::MAX,
            },
            7,
        );
        let mut out = Vec::new();
        for (time, ok) in [
            ("0", true),
            ("9223372036854775807", true),
            ("9223372036854775808", false),
            ("18446744073709551615", false),
            ("-1", false),
            ("-9223372036854775808", false),
            ("1710000000000.0", true),
            ("1.71e12", true),
            ("1710000000000.5", false),
            ("1e19", false),
            ("123456789012345678901234567890", false),
        ] {
            let raw = format!(r#"{{"user_id":"u","event_type":"t","event_time":{time}}}"#);
            let result = validator.validate_into(raw.as_bytes(), &enrichment(), &mut out);
            assert_eq!(result.is_ok(), ok, "{time}: {result:?}");
        }
    }

    fn enrichment() -> Enrichment<'static> {
        Enrichment {
            tenant_id: "tenant_a",
            project_id: Some("proj_1"),
            received_at_ms: NOW_MS,
            ..Default::default()
        }
    }

    fn check(raw: &str) -> Result<(String, serde_json::Value, String), ApiError> {
        let mut out = Vec::new();
        let spans = validator().validate_into(raw.as_bytes(), &enrichment(), &mut out)?;
        let key = String::from_utf8(out[spans.key].to_vec()).unwrap();
        let value = serde_json::from_slice(&out[spans.value]).unwrap();
        let event_type = String::from_utf8(out[spans.event_type].to_vec()).unwrap();
        Ok((key, value, event_type))
    }

    #[test]
    fn valid_event_is_enriched_and_otherwise_unchanged() {
        let raw = r#"{"event_id":"0f8fad5b-d9cb-469f-a165-70867728950e","user_id":"user_123","event_type":"page_view","event_time":1710000000000,"experiment_id":"exp_42","variant":"A","properties":{"page":"checkout"},"extra":[1,2.5e3]}"#;
        let (key, value, event_type) = check(raw).unwrap();
        assert_eq!(key, "tenant_a:user_123");
        assert_eq!(event_type, "page_view");
        assert_eq!(value["tenant_id"], "tenant_a");
        assert_eq!(value["project_id"], "proj_1");
        assert_eq!(value["received_at"], NOW_MS);
        assert_eq!(value["event_id"], "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(value["extra"][1], 2500.0);
        let mut out = Vec::new();
        let spans = validator()
            .validate_into(raw.as_bytes(), &enrichment(), &mut out)
            .unwrap();
        assert!(
            out[spans.value].starts_with(&raw.as_bytes()[..raw.len() - 1]),
            "client bytes were rewritten"
        );
    }

    #[test]
    fn escaped_user_ids_are_unescaped_in_the_key() {
        let (key, _, _) =
            check(r#"{"user_id":"a\"b","event_type":"t","event_time":1710000000000}"#).unwrap();
        assert_eq!(key, "tenant_a:a\"b");
    }

    fn error(raw: &str) -> (u16, &'static str, Option<&'static str>) {
        let error = check(raw).unwrap_err();
        (error.status, error.code, error.field)
    }

    #[test]
    fn a_member_named_twice_at_any_depth_is_refused_with_its_pointer() {
        let event = |extra: &str| {
            format!(r#"{{"user_id":"u","event_type":"t","event_time":{NOW_MS}{extra}}}"#)
        };
        for (extra, pointer) in [
            (
                r#","properties":{"plan":"gold","plan":"pro"}"#,
                "/properties/plan",
            ),
            (r#","x":[{"a":1,"a":2}]"#, "/x/0/a"),
            (r#","x":1,"x":2"#, "/x"),
        ] {
            let error = check(&event(extra)).unwrap_err();
            assert_eq!(
                (error.status, error.code, error.pointer.as_deref()),
                (400, "invalid_event", Some(pointer)),
                "{extra}"
            );
        }
        // A schema field sent twice is named as the field, as before.
        let error = check(&event(r#","user_id":"v""#)).unwrap_err();
        assert_eq!((error.field, error.pointer), (Some("user_id"), None));
        assert!(check(&event(r#","properties":{"a":{"b":1},"b":{"a":1}}"#)).is_ok());
    }

    #[test]
    fn each_field_is_checked_precisely() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                r#"{"event_type":"t","event_time":1710000000000}"#,
                "invalid_event",
                Some("user_id"),
            ),
            (
                r#"{"user_id":"","event_type":"t","event_time":1710000000000}"#,
                "invalid_event",
                Some("user_id"),
            ),
            (
                r#"{"user_id":5,"event_type":"t","event_time":1710000000000}"#,
                "invalid_event",
                Some("user_id"),
            ),
            (
                r#"{"user_id":"u","event_time":1710000000000}"#,
                "invalid_event",
                Some("event_type"),
            ),
            (
                r#"{"user_id":"u","event_type":"t"}"#,
                "invalid_event",
                Some("event_time"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1.5}"#,
                "invalid_event",
                Some("event_time"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":"1710000000000"}"#,
                "invalid_event",
                Some("event_time"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1}"#,
                "invalid_event",
                Some("event_time"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000060001}"#,
                "invalid_event",
                Some("event_time"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"event_id":"nope"}"#,
                "invalid_event",
                Some("event_id"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"variant":7}"#,
                "invalid_event",
                Some("variant"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"properties":[]}"#,
                "invalid_event",
                Some("properties"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"properties":{"a":{"b":{"c":{}}}}}"#,
                "invalid_event",
                Some("properties"),
            ),
            (
                r#"{"user_id":"u","user_id":"v","event_type":"t","event_time":1710000000000}"#,
                "invalid_event",
                Some("user_id"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"tenant_id":"x"}"#,
                "reserved_field",
                Some("tenant_id"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"received_at":1}"#,
                "reserved_field",
                Some("received_at"),
            ),
            (
                r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"project_id":"p"}"#,
                "reserved_field",
                Some("project_id"),
            ),
        ];
        for (raw, code, field) in cases {
            assert!(check(raw).is_err(), "{raw} was accepted");
            let (status, got_code, got_field) = error(raw);
            assert_eq!((status, got_code, got_field), (400, *code, *field), "{raw}");
        }
    }

    #[test]
    fn properties_at_the_depth_limit_pass() {
        check(r#"{"user_id":"u","event_type":"t","event_time":1710000000000,"properties":{"a":{"b":[1]}}}"#).unwrap();
    }

    #[test]
    fn hostile_json_is_a_clear_error() {
        for raw in [
            "[1,2]",
            "\"x\"",
            "{\"user_id\":",
            "{} trailing",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\u{0}\"}",
        ] {
            let error = check(raw).unwrap_err();
            assert_eq!(error.status, 400, "{raw}");
        }
        let mut out = Vec::new();
        let invalid_utf8 =
            b"{\"user_id\":\"\xff\",\"event_type\":\"t\",\"event_time\":1710000000000}";
        assert_eq!(
            validator()
                .validate_into(invalid_utf8, &enrichment(), &mut out)
                .unwrap_err()
                .code,
            "invalid_json"
        );
        let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
        assert_eq!(check(&deep).unwrap_err().status, 400);
    }

    #[test]
    fn oversized_events_are_413() {
        let raw = format!(
            r#"{{"user_id":"u","event_type":"t","event_time":1710000000000,"p":"{}"}}"#,
            "x".repeat(5000)
        );
        assert_eq!(error(&raw).0, 413);
    }

    // The contract check and the request path share the thread's last
    // parse: an event parsed again is found parsed, any other byte string
    // (however alike) is parsed afresh, and a failed parse is never kept.
    #[test]
    fn the_last_parse_is_reused_for_the_same_bytes_only() {
        let string_of = |raw: &[u8]| {
            with_kept_parse(raw, |parsed| match parsed.map(|parsed| parsed.nodes[2]) {
                Ok(Node::String(text)) => text.to_string(),
                other => format!("{other:?}"),
            })
        };
        assert_eq!(string_of(br#"{"a":"x\u0079"}"#), "xy");
        let again = br#"{"a":"x\u0079"}"#.to_vec();
        assert_eq!(string_of(&again), "xy");
        assert_eq!(string_of(br#"{"a":"x\u007a"}"#), "xz");
        assert_eq!(string_of(br#"{"a":"x\u0079"}"#), "xy");
        assert!(with_kept_parse(b"{\"a\":", |parsed| parsed.is_err()));
        assert!(with_kept_parse(b"{\"a\":", |parsed| parsed.is_err()));
        // A parse not kept is never reused, not even for empty bytes.
        assert!(with_parse(br#"{"a":"q"}"#, |parsed| parsed.is_ok()));
        assert!(with_parse(b"", |parsed| parsed.is_err()));
        let mut validator = validator();
        let mut out = Vec::new();
        let valid = br#"{"user_id":"u","event_type":"t","event_time":1710000000000}"#;
        let refused = br#"{"user_id":"u","event_type":"t","event_time":"1710000000000"}"#;
        assert!(with_kept_parse(valid, |parsed| parsed.is_ok()));
        assert!(validator
            .validate_into(valid, &enrichment(), &mut out)
            .is_ok());
        assert!(validator
            .validate_into(refused, &enrichment(), &mut out)
            .is_err());
    }

    #[test]
    fn buffers_are_reused_across_events() {
        let mut validator = validator();
        let mut out = Vec::new();
        for _ in 0..3 {
            out.clear();
            validator
                .validate_into(
                    br#"{"user_id":"u","event_type":"t","event_time":1710000000000}"#,
                    &enrichment(),
                    &mut out,
                )
                .unwrap();
            assert!(validator
                .validate_into(b"{bad", &enrichment(), &mut out)
                .is_err());
        }
    }
}
