//! Request bodies into event spans: one event, a JSON batch
//! (`{"events": [...]}`), or NDJSON (one event per line).
//!
//! The batch scanner finds element boundaries only; each element is then
//! parsed and validated on its own, so one malformed event is rejected alone
//! instead of failing the whole batch.

use std::ops::Range;

use crate::error::ApiError;
use crate::route::SegmentCall;

/// Body shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Single,
    JsonBatch,
    Ndjson,
    /// A Segment batch, `{"batch": [ ... ], "context": {..}, ...}`.
    SegmentBatch,
    /// One Segment call whose type is the route's (`/v1/track`, ...).
    SegmentCall(SegmentCall),
}

impl BodyKind {
    /// Whether the body holds one event (an invalid one fails the request)
    /// rather than a batch (invalid events are rejected one by one).
    pub fn is_single(self) -> bool {
        matches!(self, BodyKind::Single | BodyKind::SegmentCall(_))
    }
}

/// The members of a Segment batch that its calls share, as byte ranges of
/// the body (none for other bodies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    /// `context`, for calls that have none.
    pub context: Option<Range<usize>>,
    /// `sentAt`, the device's clock when it sent the batch.
    pub sent_at: Option<Range<usize>>,
}

/// Fills `spans` with the byte range of every event in `body`. Returns
/// what a Segment batch's calls share.
pub fn event_spans(
    kind: BodyKind,
    body: &[u8],
    spans: &mut Vec<Range<usize>>,
    events_max: usize,
) -> Result<Shared, ApiError> {
    spans.clear();
    let mut shared = Shared::default();
    match kind {
        BodyKind::Single | BodyKind::SegmentCall(_) => spans.push(0..body.len()),
        BodyKind::JsonBatch => json_batch(body, spans, events_max)?,
        BodyKind::Ndjson => ndjson(body, spans, events_max)?,
        BodyKind::SegmentBatch => shared = segment_batch(body, spans, events_max)?,
    }
    if spans.is_empty() {
        return Err(ApiError::new(
            400,
            "invalid_event",
            "the batch holds no events",
        ));
    }
    Ok(shared)
}

fn ndjson(body: &[u8], spans: &mut Vec<Range<usize>>, events_max: usize) -> Result<(), ApiError> {
    let mut start = 0;
    while start < body.len() {
        let end = body[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| start + i);
        let line = trim_range(body, start..end);
        if !line.is_empty() {
            if spans.len() == events_max {
                return Err(ApiError::batch_too_large(events_max));
            }
            spans.push(line);
        }
        start = end + 1;
    }
    Ok(())
}

fn batch_shape_error() -> ApiError {
    ApiError::new(
        400,
        "invalid_json",
        "a batch body must be {\"events\": [ ... ]}",
    )
}

fn segment_shape_error() -> ApiError {
    ApiError::new(
        400,
        "invalid_json",
        "a Segment batch body must be an object with \"batch\": [ ... ]",
    )
}

fn json_batch(
    body: &[u8],
    spans: &mut Vec<Range<usize>>,
    events_max: usize,
) -> Result<(), ApiError> {
    let mut scanner = Scanner::new(body, batch_shape_error);
    scanner.expect(b"{")?;
    scanner.expect(b"\"events\"")?;
    scanner.expect(b":")?;
    scanner.array_elements(spans, events_max)?;
    scanner.expect(b"}")?;
    scanner.end()
}

/// A Segment batch: an object whose `batch` member is the array of calls,
/// in any member order. `context` and `sentAt` are returned; `writeKey`
/// and other members are not part of any event.
fn segment_batch(
    body: &[u8],
    spans: &mut Vec<Range<usize>>,
    events_max: usize,
) -> Result<Shared, ApiError> {
    let mut scanner = Scanner::new(body, segment_shape_error);
    let mut found_batch = false;
    let mut shared = Shared::default();
    scanner.members(|scanner, key| match key.name {
        b"batch" if !found_batch => {
            found_batch = true;
            scanner.array_elements(spans, events_max)
        }
        b"batch" => Err(segment_shape_error()),
        b"context" => {
            let context = scanner.value(b'}')?;
            if body[context.start] != b'{' {
                return Err(ApiError {
                    field: Some("context"),
                    ..ApiError::new(400, "invalid_json", "a batch's context must be an object")
                });
            }
            shared.context = Some(context);
            Ok(())
        }
        b"sentAt" => {
            shared.sent_at = Some(scanner.value(b'}')?);
            Ok(())
        }
        _ => scanner.value(b'}').map(|_| ()),
    })?;
    scanner.end()?;
    if !found_batch {
        return Err(segment_shape_error());
    }
    Ok(shared)
}

/// Longest member name decoded for comparison (see [`Scanner::members`]).
pub const MEMBER_NAME_DECODED_BYTES_MAX: usize = 32;

/// An object member's key.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a, 'b> {
    /// As sent, escapes kept: what is copied into a record.
    pub sent: &'a [u8],
    /// Decoded: what is compared with the names that decide anything.
    pub name: &'b [u8],
}

/// Decodes a JSON string's contents (escapes included) into `out`; `None`
/// when it does not fit or an escape is invalid.
fn decode_name<'b>(
    sent: &[u8],
    out: &'b mut [u8; MEMBER_NAME_DECODED_BYTES_MAX],
) -> Option<&'b [u8]> {
    let mut length = 0;
    let mut rest = sent;
    let mut push = |bytes: &[u8], length: &mut usize| -> Option<()> {
        out.get_mut(*length..*length + bytes.len())?
            .copy_from_slice(bytes);
        *length += bytes.len();
        Some(())
    };
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte != b'\\' {
            push(&[byte], &mut length)?;
            continue;
        }
        let (&escape, tail) = rest.split_first()?;
        rest = tail;
        let simple = match escape {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut unit = hex4(rest)?;
                rest = &rest[4..];
                if (0xd800..0xdc00).contains(&unit) {
                    let low = rest.strip_prefix(b"\\u").and_then(hex4)?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return None;
                    }
                    rest = &rest[6..];
                    unit = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                }
                let character = char::from_u32(unit)?;
                let mut encoded = [0u8; 4];
                push(character.encode_utf8(&mut encoded).as_bytes(), &mut length)?;
                continue;
            }
            _ => return None,
        };
        push(&[simple], &mut length)?;
    }
    Some(&out[..length])
}

/// Four hex digits at the start of `text`.
fn hex4(text: &[u8]) -> Option<u32> {
    let digits = std::str::from_utf8(text.get(..4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// A forward scan over JSON text that finds the boundaries of values, not
/// their contents: strings and nesting are tracked, nothing is decoded.
/// The values it delimits are parsed in full later.
pub struct Scanner<'a> {
    body: &'a [u8],
    pub position: usize,
    shape_error: fn() -> ApiError,
}

impl<'a> Scanner<'a> {
    pub fn new(body: &'a [u8], shape_error: fn() -> ApiError) -> Self {
        Scanner {
            body,
            position: 0,
            shape_error,
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.position += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.body.get(self.position).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = self.peek()?;
        self.position += 1;
        Some(byte)
    }

    fn expect(&mut self, token: &[u8]) -> Result<(), ApiError> {
        self.skip_whitespace();
        if self.body[self.position..].starts_with(token) {
            self.position += token.len();
            Ok(())
        } else {
            Err((self.shape_error)())
        }
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Result<(), ApiError> {
        self.skip_whitespace();
        if self.position != self.body.len() {
            return Err(ApiError::new(
                400,
                "invalid_json",
                "trailing bytes after the body's object",
            ));
        }
        Ok(())
    }

    /// An array, `[` to `]`: pushes each element's range to `spans`.
    fn array_elements(
        &mut self,
        spans: &mut Vec<Range<usize>>,
        events_max: usize,
    ) -> Result<(), ApiError> {
        self.expect(b"[")?;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.position += 1;
            return Ok(());
        }
        loop {
            let element = self.value(b']')?;
            if spans.len() == events_max {
                return Err(ApiError::batch_too_large(events_max));
            }
            spans.push(element);
            match self.next_byte() {
                Some(b',') => continue,
                Some(b']') => return Ok(()),
                _ => return Err((self.shape_error)()),
            }
        }
    }

    /// An object, `{` to `}`: calls `each` with the scanner placed after
    /// each member's `:` and the key's raw bytes (between the quotes,
    /// escapes left as sent); `each` must consume the member's value.
    /// Calls `each` with every member's key: as sent (escapes kept, for
    /// copying) and decoded (for deciding what the member is: a name spelt
    /// with escapes, `"write\u004bey"`, is the same member to every JSON
    /// reader downstream). Decoded names longer than
    /// [`MEMBER_NAME_DECODED_BYTES_MAX`] are passed as sent: no name sluice
    /// acts on is that long, and a raw key with a backslash matches none.
    pub fn members(
        &mut self,
        mut each: impl FnMut(&mut Self, Key<'a, '_>) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        self.expect(b"{")?;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            let sent = &self.body[key.start + 1..key.end - 1];
            let mut buffer = [0u8; MEMBER_NAME_DECODED_BYTES_MAX];
            let name = match sent.contains(&b'\\') {
                false => sent,
                true => decode_name(sent, &mut buffer).unwrap_or(sent),
            };
            self.expect(b":")?;
            each(self, Key { sent, name })?;
            match self.next_byte() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                _ => return Err((self.shape_error)()),
            }
        }
    }

    /// A string token, quotes included.
    fn string(&mut self) -> Result<Range<usize>, ApiError> {
        self.skip_whitespace();
        if self.peek() != Some(b'"') {
            return Err((self.shape_error)());
        }
        let start = self.position;
        self.position += 1;
        self.skip_string_body()?;
        Ok(start..self.position)
    }

    /// From inside a string to just after its closing quote. Most of an
    /// event's bytes are inside strings: jump to the next quote or
    /// backslash instead of looking at each byte.
    fn skip_string_body(&mut self) -> Result<(), ApiError> {
        loop {
            let rest = self.body.get(self.position..).unwrap_or_default();
            let Some(offset) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err((self.shape_error)());
            };
            self.position += offset;
            if self.body[self.position] == b'\\' {
                self.position += 2;
            } else {
                self.position += 1;
                return Ok(());
            }
        }
    }

    /// One value up to (not including) the `,` or `close` that ends it,
    /// trimmed of whitespace.
    pub fn value(&mut self, close: u8) -> Result<Range<usize>, ApiError> {
        self.skip_whitespace();
        let start = self.position;
        let mut depth = 0usize;
        while let Some(byte) = self.peek() {
            match byte {
                b'"' => {
                    self.position += 1;
                    self.skip_string_body()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' if depth == 0 => break,
                byte if byte == close && depth == 0 => break,
                b'}' | b']' => return Err((self.shape_error)()),
                _ => {}
            }
            self.position += 1;
        }
        if self.position >= self.body.len() {
            return Err((self.shape_error)());
        }
        let value = trim_range(self.body, start..self.position);
        if value.is_empty() {
            return Err((self.shape_error)());
        }
        Ok(value)
    }
}

fn trim_range(body: &[u8], mut range: Range<usize>) -> Range<usize> {
    while range.start < range.end && body[range.start].is_ascii_whitespace() {
        range.start += 1;
    }
    while range.end > range.start && body[range.end - 1].is_ascii_whitespace() {
        range.end -= 1;
    }
    range
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(kind: BodyKind, body: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        event_spans(kind, body.as_bytes(), &mut out, 10)?;
        Ok(out
            .into_iter()
            .map(|range| body[range].to_string())
            .collect())
    }

    #[test]
    fn json_batch_elements_respect_strings_and_nesting() {
        let body = r#" { "events" : [ {"a":"x,]}"}, {"b":[1,{"c":2}]} ,3, "s\"]" ] } "#;
        assert_eq!(
            spans(BodyKind::JsonBatch, body).unwrap(),
            vec![r#"{"a":"x,]}"}"#, r#"{"b":[1,{"c":2}]}"#, "3", r#""s\"]""#]
        );
    }

    #[test]
    fn json_batch_shape_errors() {
        for body in [
            r#"[{"a":1}]"#,
            r#"{"evts":[{"a":1}]}"#,
            r#"{"events":[{"a":1},]}"#,
            r#"{"events":[{"a":1}"#,
            r#"{"events":[{"a":1}]} x"#,
            r#"{"events":[{"a":1}}]}"#,
            r#"{"events":[]}"#,
        ] {
            assert!(
                spans(BodyKind::JsonBatch, body).is_err(),
                "{body} was accepted"
            );
        }
    }

    #[test]
    fn ndjson_skips_blank_lines_and_carriage_returns() {
        assert_eq!(
            spans(BodyKind::Ndjson, "{\"a\":1}\r\n\n  \n{\"b\":2}").unwrap(),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
    }

    #[test]
    fn member_names_are_compared_decoded() {
        let body = br#"{"write\u004bey":1,"a\"b":2,"\ud83d\ude00":3,"plain":4,"bad\x":5}"#;
        let mut names = Vec::new();
        let mut scanner = Scanner::new(body, batch_shape_error);
        scanner
            .members(|scanner, key| {
                names.push((key.sent.to_vec(), key.name.to_vec()));
                scanner.value(b'}').map(|_| ())
            })
            .unwrap();
        let decoded: Vec<&[u8]> = names.iter().map(|(_, name)| &name[..]).collect();
        assert_eq!(
            decoded,
            [
                &b"writeKey"[..],
                b"a\"b",
                "\u{1f600}".as_bytes(),
                b"plain",
                br"bad\x"
            ]
        );
        assert_eq!(names[0].0, br"write\u004bey", "copied as sent");
    }

    #[test]
    fn batches_are_capped() {
        let body = format!("{{\"events\":[{}]}}", ["{}"; 11].join(","));
        assert_eq!(spans(BodyKind::JsonBatch, &body).unwrap_err().status, 413);
        let lines = ["{}"; 11].join("\n");
        assert_eq!(spans(BodyKind::Ndjson, &lines).unwrap_err().status, 413);
    }
}
