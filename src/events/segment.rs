//! Segment's wire format (`/v1/batch`, `/v1/track`, ...) mapped onto the
//! event of SPEC §1, so that analytics SDKs send to sluice unchanged.
//!
//! A Segment call is rewritten into a native event that keeps every member
//! the client sent (`writeKey` aside: it is the API key) and adds the
//! schema's fields:
//!
//! | native field | from the Segment call |
//! | --- | --- |
//! | `event_type` | `event` for a track call, else `type` (`identify`, `page`, ...) |
//! | `user_id` | `userId`, else `anonymousId` (either may be null) |
//! | `event_time` | `timestamp` (RFC 3339 / ISO 8601) corrected for the device's clock by `sentAt`, else the time received |
//! | `event_id` | `messageId` when it is a UUID; otherwise a UUIDv8 from its SHA-256 |
//!
//! The result then goes through the native validator, so Segment calls get
//! the same validation, limits and dead-lettering as native events. The
//! rewrite is a copy of byte ranges found by [`Scanner`]; nothing is
//! decoded but the timestamp.

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::events::split::Scanner;
use crate::events::validate::USER_ID_BYTES_MAX;
use crate::route::SegmentCall;

/// What a call's members map from, as byte ranges of the call.
#[derive(Default)]
struct Mapped {
    call_type: Option<Range<usize>>,
    event: Option<Range<usize>>,
    user_id: Option<Range<usize>>,
    anonymous_id: Option<Range<usize>>,
    message_id: Option<Range<usize>>,
    timestamp: Option<Range<usize>>,
    sent_at: Option<Range<usize>>,
    has_context: bool,
}

/// What a call takes from around it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Envelope<'a> {
    /// The endpoint's type; `None` for a batch member, whose `type` names it.
    pub endpoint: Option<SegmentCall>,
    /// A batch's `context`, for members that have none.
    pub context: Option<&'a [u8]>,
    /// A batch's `sentAt`, for members that have none.
    pub sent_at: Option<&'a [u8]>,
    /// When sluice received the call (epoch ms): the clock `sentAt` is
    /// compared with, and the time of a call without `timestamp`.
    pub received_at_ms: u64,
}

fn invalid(field: &'static str, message: &'static str) -> ApiError {
    ApiError {
        field: Some(field),
        ..ApiError::new(400, "invalid_event", message)
    }
}

fn not_an_object(key: &[u8]) -> ApiError {
    let field = match key {
        b"context" => "context",
        b"traits" => "traits",
        b"integrations" => "integrations",
        _ => "properties",
    };
    ApiError {
        field: Some(field),
        ..ApiError::new(400, "invalid_event", format!("{field} must be an object"))
    }
}

fn call_shape_error() -> ApiError {
    ApiError::new(400, "invalid_json", "a Segment call must be a JSON object")
}

/// Rewrites the Segment call `raw`, sent in `envelope`, into a native
/// event in `out` (cleared first).
pub fn translate(raw: &[u8], envelope: &Envelope<'_>, out: &mut Vec<u8>) -> Result<(), ApiError> {
    out.clear();
    out.push(b'{');
    let mut mapped = Mapped::default();
    let mut scanner = Scanner::new(raw, call_shape_error);
    scanner.members(|scanner, key| {
        let value = scanner.value(b'}')?;
        let slot = match key.name {
            b"writeKey" => return Ok(()),
            b"type" => Some(&mut mapped.call_type),
            b"event" => Some(&mut mapped.event),
            b"userId" => Some(&mut mapped.user_id),
            b"anonymousId" => Some(&mut mapped.anonymous_id),
            b"messageId" => Some(&mut mapped.message_id),
            b"timestamp" => Some(&mut mapped.timestamp),
            b"sentAt" => Some(&mut mapped.sent_at),
            b"context" | b"traits" | b"integrations" | b"properties" => {
                mapped.has_context |= key.name == b"context";
                if raw[value.start] != b'{' {
                    return Err(not_an_object(key.name));
                }
                None
            }
            _ => None,
        };
        if let Some(slot) = slot {
            if slot.replace(value.clone()).is_some() {
                return Err(ApiError::new(
                    400,
                    "invalid_event",
                    "a Segment call names a member twice",
                ));
            }
        }
        // Every member is kept, its key as sent (escapes included).
        write_member(out, key.sent, &raw[value]);
        Ok(())
    })?;
    scanner.end()?;
    // A member's value; a null one counts as absent.
    let text = |range: &Option<Range<usize>>| {
        range
            .clone()
            .map(|range| &raw[range])
            .filter(|value| *value != b"null")
    };
    // `type` as sent, null included: a null type is no call type.
    let sent_type = mapped.call_type.clone().map(|range| &raw[range]);
    let call = resolve_call(envelope.endpoint, sent_type, out)?;
    if !mapped.has_context {
        if let Some(context) = envelope.context {
            write_member(out, b"context", context);
        }
    }
    write_member(out, b"event_type", b"");
    match call {
        SegmentCall::Track => match text(&mapped.event) {
            Some(event) if event.first() == Some(&b'"') => out.extend_from_slice(event),
            _ => return Err(invalid("event", "a track call needs an event name string")),
        },
        other => write_quoted(out, other.name()),
    }
    for (field, value) in [
        ("userId", &mapped.user_id),
        ("anonymousId", &mapped.anonymous_id),
    ] {
        if let Some(value) = text(value) {
            check_id(field, value)?;
        }
    }
    let user = text(&mapped.user_id).or_else(|| text(&mapped.anonymous_id));
    match user {
        Some(user) => write_member(out, b"user_id", user),
        None => {
            return Err(invalid(
                "userId",
                "a Segment call needs a userId or an anonymousId",
            ))
        }
    }
    let received_at_ms = i64::try_from(envelope.received_at_ms).unwrap_or(i64::MAX);
    let event_time = match text(&mapped.timestamp) {
        None => received_at_ms,
        Some(value) => {
            let timestamp_ms = string_contents(value)
                .and_then(parse_timestamp)
                .ok_or_else(|| {
                    invalid(
                        "timestamp",
                        "timestamp must be an RFC 3339 date-time, such as 2026-11-26T10:00:00.000Z",
                    )
                })?;
            // sentAt is the SDK's transport metadata, not the event's: one
            // that is not a date-time leaves the timestamp as sent rather
            // than costing the call.
            let sent_at_ms = text(&mapped.sent_at)
                .or_else(|| envelope.sent_at.filter(|value| *value != b"null"))
                .and_then(string_contents)
                .and_then(parse_timestamp);
            match sent_at_ms {
                None => timestamp_ms,
                Some(sent_at_ms) => skew_corrected(timestamp_ms, sent_at_ms, received_at_ms),
            }
        }
    };
    write_member(
        out,
        b"event_time",
        itoa::Buffer::new().format(event_time).as_bytes(),
    );
    match text(&mapped.message_id) {
        None => {}
        Some(value) => {
            // An empty id would give every such call the same event_id.
            // Escapes are kept: a retry sends the same bytes.
            let Some(contents) = token_contents(value).filter(|id| !id.is_empty()) else {
                return Err(invalid("messageId", "messageId must be a non-empty string"));
            };
            if uuid::Uuid::try_parse_ascii(contents).is_ok() {
                write_member(out, b"event_id", value);
            } else {
                let id = event_id_of(contents);
                let mut buffer = uuid::Uuid::encode_buffer();
                out.extend_from_slice(b",\"event_id\":\"");
                out.extend_from_slice(id.hyphenated().encode_lower(&mut buffer).as_bytes());
                out.push(b'"');
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// Segment's clock-skew correction: the call happened `sent_at -
/// timestamp` before the device sent it, and it was sent (near enough)
/// when it was received, so a device clock that is off moves neither.
pub fn skew_corrected(timestamp_ms: i64, sent_at_ms: i64, received_at_ms: i64) -> i64 {
    received_at_ms.saturating_sub(sent_at_ms.saturating_sub(timestamp_ms))
}

/// The call's type: the endpoint's, or a batch member's `type`. A member
/// without one gets the endpoint's written in.
fn resolve_call(
    endpoint: Option<SegmentCall>,
    sent: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<SegmentCall, ApiError> {
    let named = sent
        .and_then(string_contents)
        .and_then(SegmentCall::of_name);
    match (endpoint, named) {
        (Some(call), _) if sent.is_some() && named != Some(call) => Err(invalid(
            "type",
            "type, when sent to a call's own endpoint, must name that call",
        )),
        (Some(call), _) => {
            if sent.is_none() {
                write_member(out, b"type", b"");
                write_quoted(out, call.name());
            }
            Ok(call)
        }
        (None, Some(call)) => Ok(call),
        (None, None) => Err(invalid(
            "type",
            "type must be one of track, identify, page, screen, group, alias",
        )),
    }
}

/// `userId` and `anonymousId`, either of which may become `user_id`:
/// strings of 1 to [`USER_ID_BYTES_MAX`] bytes once unescaped.
fn check_id(field: &'static str, token: &[u8]) -> Result<(), ApiError> {
    let bytes = token_contents(token).map(unescaped_bytes);
    match bytes {
        Some(1..=USER_ID_BYTES_MAX) => Ok(()),
        _ => Err(invalid(field, "must be a string of 1 to 256 bytes")),
    }
}

/// How many bytes a JSON string's contents take once unescaped (each half
/// of a surrogate pair counts 2 of the pair's 4). Only a bound is needed:
/// the text is parsed in full later.
fn unescaped_bytes(contents: &[u8]) -> usize {
    let mut bytes = 0;
    let mut index = 0;
    while index < contents.len() {
        if contents[index] != b'\\' {
            bytes += 1;
            index += 1;
            continue;
        }
        if contents.get(index + 1) == Some(&b'u') {
            let code = contents
                .get(index + 2..index + 6)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .unwrap_or(0);
            bytes += match code {
                0..=0x7f => 1,
                0x80..=0x7ff | 0xd800..=0xdfff => 2,
                _ => 3,
            };
            index += 6;
        } else {
            bytes += 1;
            index += 2;
        }
    }
    bytes
}

/// A Segment call as the dead-letter topic shows it: `raw` without its
/// `writeKey` member, which is an API key (SDKs send it at batch level, but
/// a hand-made call may carry one). A call that names none, the common
/// case, is returned as it is; one that does is copied into `out` without
/// it; one too malformed to copy is withheld (empty), since its key cannot
/// be told from the rest.
pub fn dead_letter_raw<'a>(raw: &'a [u8], out: &'a mut Vec<u8>) -> &'a [u8] {
    // No `writeKey`, nor any escape that could spell one.
    if memchr::memmem::find(raw, b"writeKey").is_none() && memchr::memchr(b'\\', raw).is_none() {
        return raw;
    }
    out.clear();
    out.push(b'{');
    let mut scanner = Scanner::new(raw, call_shape_error);
    let copied = scanner
        .members(|scanner, key| {
            let value = scanner.value(b'}')?;
            if key.name != b"writeKey" {
                write_member(out, key.sent, &raw[value]);
            }
            Ok(())
        })
        .and_then(|()| scanner.end());
    match copied {
        Ok(()) => {
            out.push(b'}');
            out
        }
        Err(_) => b"",
    }
}

/// Appends `,"key":value` (no comma after the opening brace); with an
/// empty `value`, the caller writes the value next.
fn write_member(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    if out.len() > 1 {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key);
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
}

/// A JSON string token's contents as sent (escapes kept); `None` when the
/// token is not a string.
fn token_contents(token: &[u8]) -> Option<&[u8]> {
    token.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// A JSON string token's contents, when it has no escapes.
fn string_contents(token: &[u8]) -> Option<&[u8]> {
    token_contents(token).filter(|contents| !contents.contains(&b'\\'))
}

/// Appends `"name"`.
fn write_quoted(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

/// A stable event id for a `messageId` that is not a UUID: the same
/// message sent again (a retry) gets the same id, so `event_id` stays the
/// idempotency key downstream.
fn event_id_of(message_id: &[u8]) -> uuid::Uuid {
    let digest = Sha256::new()
        .chain_update(b"sluice segment messageId\0")
        .chain_update(message_id)
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Milliseconds since the Unix epoch of an RFC 3339 date-time:
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`. `t` or a space may separate
/// date and time, and a missing offset is read as UTC (Python's
/// `isoformat()` of a naive datetime). Fractions finer than a millisecond
/// are truncated.
pub fn parse_timestamp(text: &[u8]) -> Option<i64> {
    let digits = |range: Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.iter().try_fold(0i64, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + i64::from(byte - b'0'))
        })
    };
    let year = digits(0..4)?;
    let month = digits(5..7)?;
    let day = digits(8..10)?;
    let hour = digits(11..13)?;
    let minute = digits(14..16)?;
    let second = digits(17..19)?;
    if text.get(4) != Some(&b'-')
        || text.get(7) != Some(&b'-')
        || !matches!(text.get(10), Some(b'T' | b't' | b' '))
        || text.get(13) != Some(&b':')
        || text.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut position = 19;
    let mut millis = 0;
    if text.get(position) == Some(&b'.') {
        position += 1;
        let start = position;
        while text.get(position).is_some_and(u8::is_ascii_digit) {
            if position - start < 3 {
                millis = millis * 10 + i64::from(text[position] - b'0');
            }
            position += 1;
        }
        if position == start {
            return None;
        }
        for _ in (position - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match text.get(position) {
        None => 0,
        Some(b'Z' | b'z') if position + 1 == text.len() => 0,
        Some(&sign @ (b'+' | b'-')) if position + 6 == text.len() => {
            if text[position + 3] != b':' {
                return None;
            }
            let hours = digits(position + 1..position + 3)?;
            let minutes = digits(position + 4..position + 6)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 60 + minutes;
            if sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        Some(_) => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_lettered_call_loses_its_write_key() {
        let mut out = Vec::new();
        let plain = br#"{"type":"track","userId":"u"}"#;
        assert_eq!(
            dead_letter_raw(plain, &mut out),
            plain,
            "no copy without a key"
        );
        let keyed = br#"{"type":"track", "writeKey" : "secret","userId":"u"}"#;
        let shown = dead_letter_raw(keyed, &mut out).to_vec();
        assert_eq!(shown, br#"{"type":"track","userId":"u"}"#);
        let broken = br#"{"type":"track","writeKey":"secret","#;
        assert_eq!(dead_letter_raw(broken, &mut out), b"", "withheld");
    }

    fn rewritten(raw: &str, envelope: &Envelope<'_>) -> Result<serde_json::Value, ApiError> {
        let mut out = Vec::new();
        translate(raw.as_bytes(), envelope, &mut out)?;
        Ok(serde_json::from_slice(&out).expect("the rewrite is JSON"))
    }

    fn translated(raw: &str, call: Option<SegmentCall>) -> Result<serde_json::Value, ApiError> {
        let envelope = Envelope {
            endpoint: call,
            context: Some(br#"{"shared":1}"#),
            sent_at: None,
            received_at_ms: 1_000,
        };
        rewritten(raw, &envelope)
    }

    /// 2026-01-15T08:00:00Z, as epoch ms.
    const JAN_15_MS: i64 = 1_768_464_000_000;

    fn event_time(
        raw: &str,
        batch_sent_at: Option<&str>,
        received_at_ms: u64,
    ) -> Result<i64, ApiError> {
        let envelope = Envelope {
            endpoint: None,
            context: None,
            sent_at: batch_sent_at.map(str::as_bytes),
            received_at_ms,
        };
        let event = rewritten(raw, &envelope)?;
        Ok(event["event_time"].as_i64().expect("event_time"))
    }

    #[test]
    fn sent_at_corrects_a_device_clock_that_is_off() {
        let received = JAN_15_MS as u64;
        // The device's clock runs 2 h fast; the call happened 5 s before it was sent.
        let call =
            r#"{"type":"track","event":"e","userId":"u","timestamp":"2026-01-15T09:59:55Z"}"#;
        let batch_sent_at = Some(r#""2026-01-15T10:00:00Z""#);
        assert_eq!(
            event_time(call, batch_sent_at, received).unwrap(),
            JAN_15_MS - 5_000
        );
        // Without sentAt the timestamp is taken as sent.
        assert_eq!(
            event_time(call, None, received).unwrap(),
            JAN_15_MS + 7_195_000
        );
        // A call's own sentAt comes before the batch's.
        let own = r#"{"type":"track","event":"e","userId":"u","timestamp":"2026-01-15T09:59:55Z","sentAt":"2026-01-15T09:59:56Z"}"#;
        assert_eq!(
            event_time(own, batch_sent_at, received).unwrap(),
            JAN_15_MS - 1_000
        );
        // No timestamp: the time received, whatever sentAt says.
        let bare = r#"{"type":"track","event":"e","userId":"u"}"#;
        assert_eq!(
            event_time(bare, batch_sent_at, received).unwrap(),
            JAN_15_MS
        );
        // A null sentAt, or one that is no date-time, corrects nothing.
        for sent_at in ["null", r#""yesterday""#, "17"] {
            let time = event_time(call, Some(sent_at), received).unwrap();
            assert_eq!(time, JAN_15_MS + 7_195_000, "{sent_at}");
        }
        assert_eq!(
            skew_corrected(i64::MIN, i64::MAX, 0),
            -i64::MAX,
            "saturates"
        );
    }

    #[test]
    fn timestamps_parse_as_rfc_3339() {
        let cases: [(&str, i64); 8] = [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00.5Z", 500),
            ("2026-11-26T10:00:00.123Z", 1_795_687_200_123),
            ("2026-11-26T10:00:00.123456+00:00", 1_795_687_200_123),
            ("2026-11-26T12:30:00.123+02:30", 1_795_687_200_123),
            ("2026-11-26 10:00:00.123", 1_795_687_200_123),
            ("2024-02-29T00:00:00-00:00", 1_709_164_800_000),
            ("1969-12-31T23:59:59.999Z", -1),
        ];
        for (text, millis) in cases {
            assert_eq!(parse_timestamp(text.as_bytes()), Some(millis), "{text}");
        }
        for text in [
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T10:00:00.Z",
            "2026-11-26T10:00:00+0200",
            "2026-11-26T10:00:00Zjunk",
            "2026-11-26T10:00:00+02:60",
            "２026-11-26T10:00:00Z",
            "",
        ] {
            assert_eq!(parse_timestamp(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn calls_map_onto_the_native_fields_and_keep_theirs() {
        let track = r#"{"type":"track","event":"Order Completed","userId":"u1",
            "anonymousId":"a1","properties":{"total":3},"context":{"ip":"1.2.3.4"},
            "timestamp":"2026-11-26T10:00:00.123Z","writeKey":"secret",
            "messageId":"0f8fad5b-d9cb-469f-a165-70867728950e"}"#;
        let event = translated(track, None).unwrap();
        assert_eq!(event["event_type"], "Order Completed");
        assert_eq!(event["user_id"], "u1");
        assert_eq!(event["anonymousId"], "a1");
        assert_eq!(event["event_time"], 1_795_687_200_123i64);
        assert_eq!(event["event_id"], "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(event["properties"]["total"], 3);
        assert_eq!(event["context"]["ip"], "1.2.3.4");
        assert!(event.get("writeKey").is_none(), "the write key is dropped");

        let identify =
            r#"{"type":"identify","userId":null,"anonymousId":"a2","traits":{"plan":"pro"}}"#;
        let event = translated(identify, None).unwrap();
        assert_eq!(event["event_type"], "identify");
        assert_eq!(event["user_id"], "a2");
        assert_eq!(event["traits"]["plan"], "pro");
        assert_eq!(
            event["event_time"], 1_000,
            "no timestamp: the time received"
        );
        assert_eq!(event["context"]["shared"], 1, "the batch's context");
        assert!(event.get("event_id").is_none(), "assigned by the validator");
    }

    #[test]
    fn the_endpoint_names_the_type_of_a_single_call() {
        let mismatch = translated(r#"{"type":"track","userId":"u"}"#, Some(SegmentCall::Page));
        assert_eq!(mismatch.unwrap_err().field, Some("type"));
        let null = translated(r#"{"type":null,"userId":"u"}"#, Some(SegmentCall::Page));
        assert_eq!(null.unwrap_err().field, Some("type"), "not written twice");
        let event = translated(r#"{"userId":"u","name":"Home"}"#, Some(SegmentCall::Page)).unwrap();
        assert_eq!(event["event_type"], "page");
        assert_eq!(event["type"], "page");
        assert_eq!(event["name"], "Home");
    }

    #[test]
    fn message_ids_that_are_not_uuids_give_stable_event_ids() {
        let call = |id: &str| {
            translated(
                &format!(r#"{{"type":"screen","userId":"u","messageId":"{id}"}}"#),
                None,
            )
            .unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let first = call("node-next-1764151200000-abc");
        assert_eq!(first, call("node-next-1764151200000-abc"));
        assert_ne!(first, call("node-next-1764151200000-abd"));
        assert_eq!(
            call("\\u00e9t\\u00e9"),
            call("\\u00e9t\\u00e9"),
            "escapes are kept"
        );
        assert_eq!(uuid::Uuid::parse_str(&first).unwrap().get_version_num(), 8);
    }

    #[test]
    fn calls_missing_what_the_record_needs_are_refused_by_field() {
        let long_anonymous = format!(
            r#"{{"type":"page","userId":"u","anonymousId":"{}"}}"#,
            "é".repeat(129)
        );
        let long_escaped = format!(r#"{{"type":"page","userId":"{}"}}"#, "\\u00e9".repeat(129));
        let cases: [(&str, &str); 16] = [
            (r#"{"type":"track","userId":"u"}"#, "event"),
            (r#"{"type":"track","event":7,"userId":"u"}"#, "event"),
            (r#"{"type":"track","event":"e"}"#, "userId"),
            (
                r#"{"type":"track","event":"e","userId":null,"anonymousId":null}"#,
                "userId",
            ),
            (r#"{"type":"launch","userId":"u"}"#, "type"),
            (r#"{"userId":"u"}"#, "type"),
            (
                r#"{"type":"page","userId":"u","timestamp":"yesterday"}"#,
                "timestamp",
            ),
            (r#"{"type":"page","userId":"u","messageId":5}"#, "messageId"),
            (
                r#"{"type":"page","userId":"u","messageId":""}"#,
                "messageId",
            ),
            (
                r#"{"type":"page","userId":"u","anonymousId":""}"#,
                "anonymousId",
            ),
            (r#"{"type":"page","userId":7}"#, "userId"),
            (&long_anonymous, "anonymousId"),
            (&long_escaped, "userId"),
            (r#"{"type":"page","userId":"u","context":[]}"#, "context"),
            (r#"{"type":"identify","userId":"u","traits":"x"}"#, "traits"),
            (
                r#"{"type":"page","userId":"u","integrations":null}"#,
                "integrations",
            ),
        ];
        for (raw, field) in cases {
            let error = translated(raw, None).unwrap_err();
            assert_eq!((error.status, error.field), (400, Some(field)), "{raw}");
        }
        for raw in [
            r#"[1]"#,
            r#"{"type":"page""#,
            r#"{"type":"page"} x"#,
            r#"{"a":}"#,
        ] {
            assert_eq!(
                translated(raw, None).unwrap_err().code,
                "invalid_json",
                "{raw}"
            );
        }
        let twice = r#"{"type":"page","userId":"u","userId":"v"}"#;
        assert_eq!(translated(twice, None).unwrap_err().status, 400);
    }
}
