//! Request bodies into event spans: one event, a JSON batch
//! (`{"events": [...]}`), or NDJSON (one event per line).
//!
//! The batch scanner finds element boundaries only; each element is then
//! parsed and validated on its own, so one malformed event is rejected alone
//! instead of failing the whole batch.

use std::ops::Range;

use crate::error::ApiError;

/// Body shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Single,
    JsonBatch,
    Ndjson,
}

/// Fills `spans` with the byte range of every event in `body`.
pub fn event_spans(
    kind: BodyKind,
    body: &[u8],
    spans: &mut Vec<Range<usize>>,
    events_max: usize,
) -> Result<(), ApiError> {
    spans.clear();
    match kind {
        BodyKind::Single => spans.push(0..body.len()),
        BodyKind::JsonBatch => json_batch(body, spans, events_max)?,
        BodyKind::Ndjson => ndjson(body, spans, events_max)?,
    }
    if spans.is_empty() {
        return Err(ApiError::new(
            400,
            "invalid_event",
            "the batch holds no events",
        ));
    }
    Ok(())
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

fn json_batch(
    body: &[u8],
    spans: &mut Vec<Range<usize>>,
    events_max: usize,
) -> Result<(), ApiError> {
    let mut scanner = Scanner { body, position: 0 };
    scanner.expect(b"{")?;
    scanner.expect(b"\"events\"")?;
    scanner.expect(b":")?;
    scanner.expect(b"[")?;
    scanner.skip_whitespace();
    if scanner.peek() == Some(b']') {
        scanner.position += 1;
    } else {
        loop {
            let element = scanner.element()?;
            if spans.len() == events_max {
                return Err(ApiError::batch_too_large(events_max));
            }
            spans.push(element);
            match scanner.next_byte() {
                Some(b',') => continue,
                Some(b']') => break,
                _ => return Err(batch_shape_error()),
            }
        }
    }
    scanner.expect(b"}")?;
    scanner.skip_whitespace();
    if scanner.position != body.len() {
        return Err(ApiError::new(
            400,
            "invalid_json",
            "trailing bytes after the batch object",
        ));
    }
    Ok(())
}

struct Scanner<'a> {
    body: &'a [u8],
    position: usize,
}

impl Scanner<'_> {
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
            Err(batch_shape_error())
        }
    }

    /// Scans one array element up to (not including) the `,` or `]` that
    /// ends it, tracking strings and nesting only.
    fn element(&mut self) -> Result<Range<usize>, ApiError> {
        self.skip_whitespace();
        let start = self.position;
        let mut depth = 0usize;
        let mut in_string = false;
        while let Some(byte) = self.peek() {
            if in_string {
                // Most of an event's bytes are inside strings: jump to the
                // next quote or backslash instead of looking at each byte.
                let Some(offset) = memchr::memchr2(b'"', b'\\', &self.body[self.position..]) else {
                    return Err(batch_shape_error());
                };
                self.position += offset;
                if self.body[self.position] == b'\\' {
                    self.position += 1;
                } else {
                    in_string = false;
                }
            } else {
                match byte {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b',' | b']' if depth == 0 => break,
                    b'}' => return Err(batch_shape_error()),
                    _ => {}
                }
            }
            self.position += 1;
        }
        if self.position >= self.body.len() {
            return Err(batch_shape_error());
        }
        let element = trim_range(self.body, start..self.position);
        if element.is_empty() {
            return Err(batch_shape_error());
        }
        Ok(element)
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
    fn batches_are_capped() {
        let body = format!("{{\"events\":[{}]}}", ["{}"; 11].join(","));
        assert_eq!(spans(BodyKind::JsonBatch, &body).unwrap_err().status, 413);
        let lines = ["{}"; 11].join("\n");
        assert_eq!(spans(BodyKind::Ndjson, &lines).unwrap_err().status, 413);
    }
}
