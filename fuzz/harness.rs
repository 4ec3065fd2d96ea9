//! The fuzz harnesses, one function per target. This file is compiled twice:
//! by the cargo-fuzz targets in `fuzz/fuzz_targets/` (nightly, libFuzzer) and
//! by `tests/fuzz_corpus.rs` (stable, every `cargo test`), which replays the
//! committed corpora and every past crash through the same code.
//!
//! Each harness states properties that must hold for any input, so a finding
//! is either a panic inside sluice or a broken property here.

use std::cell::RefCell;

use sluice::events::dead_letter::write_dead_letter;
use sluice::events::record::Enrichment;
use sluice::events::segment::{dead_letter_raw, translate, Envelope};
use sluice::events::split::{event_spans, BodyKind};
use sluice::events::validate::{EventLimits, Validator};
use sluice::http::body::{ChunkedDecoder, Progress};
use sluice::http::gzip::{inflate, GzipError};
use sluice::http::request::{parse_head, Framing, Parsed};
use sluice::route::SegmentCall;

const HEAD_BYTES_MAX: usize = 8 * 1024;
const BODY_BYTES_MAX: usize = 64 * 1024;
const TRAILER_BYTES_MAX: usize = 1024;
const INFLATED_BYTES_MAX: usize = 64 * 1024;
const BATCH_EVENTS_MAX: usize = 500;
/// A fixed receive time, so `event_time` checks do not depend on the clock.
const RECEIVED_AT_MS: u64 = 1_800_000_000_000;

/// Request head parsing, then body framing: spans stay inside the head, and
/// a chunked body decodes to the same bytes whether it arrives at once or in
/// pieces (the connection feeds the decoder whatever each read brought).
pub fn http_request(data: &[u8]) {
    let head = match parse_head(data, HEAD_BYTES_MAX) {
        Ok(Parsed::Complete(head)) => head,
        Ok(Parsed::Partial) => {
            assert!(data.len() <= HEAD_BYTES_MAX, "partial head over the limit");
            return;
        }
        Err(_) => return,
    };
    assert!(head.head_bytes <= data.len().min(HEAD_BYTES_MAX));
    let spans = [
        Some(head.path.clone()),
        head.content_type.clone(),
        head.content_encoding.clone(),
        head.api_key.clone(),
        head.authorization.clone(),
        head.request_id.clone(),
    ];
    for span in spans.into_iter().flatten() {
        assert!(span.start <= span.end && span.end <= head.head_bytes);
    }
    if head.framing != Framing::Chunked {
        return;
    }
    let body = &data[head.head_bytes..];
    let mut whole = body.to_vec();
    let at_once = ChunkedDecoder::new(0, BODY_BYTES_MAX, TRAILER_BYTES_MAX).decode(&mut whole);

    // The same bytes in pieces whose sizes come from the input itself.
    let step = 1 + usize::from(body.first().copied().unwrap_or(0) % 17);
    let mut decoder = ChunkedDecoder::new(0, BODY_BYTES_MAX, TRAILER_BYTES_MAX);
    let mut pieces: Vec<u8> = Vec::with_capacity(body.len());
    let mut fed = 0;
    let in_pieces = loop {
        let next = (fed + step).min(body.len());
        pieces.extend_from_slice(&body[fed..next]);
        fed = next;
        match decoder.decode(&mut pieces) {
            Ok(Progress::NeedMore) if fed < body.len() => continue,
            other => break other,
        }
    };
    match (&at_once, &in_pieces) {
        (
            Ok(Progress::Done { end, consumed }),
            Ok(Progress::Done {
                end: e,
                consumed: c,
            }),
        ) => {
            assert_eq!((end, consumed), (e, c));
            assert!(end <= consumed && *consumed <= body.len());
            assert!(*end <= BODY_BYTES_MAX);
            assert_eq!(whole[..*end], pieces[..*end], "decoded bodies differ");
        }
        (Ok(Progress::NeedMore), Ok(Progress::NeedMore)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("at once {a:?}, in pieces {b:?}"),
    }
}

/// Gzip bodies: never more than the cap, and a body that fits under a
/// small cap inflates to the same bytes under a large one.
pub fn gzip_body(data: &[u8]) {
    let mut small = Vec::new();
    match inflate(data, &mut small, INFLATED_BYTES_MAX / 16) {
        Ok(()) => {
            assert!(small.len() <= INFLATED_BYTES_MAX / 16);
            let mut large = Vec::new();
            inflate(data, &mut large, INFLATED_BYTES_MAX).expect("fits a larger cap");
            assert_eq!(small, large);
        }
        Err(GzipError::TooLarge { limit_bytes }) => {
            assert_eq!(limit_bytes, INFLATED_BYTES_MAX / 16);
            assert!(small.len() <= limit_bytes + 1, "inflated past the cap");
        }
        Err(GzipError::Corrupt) => {}
    }
}

thread_local! {
    /// One validator for every input, as on a core: state left over from one
    /// event must not change the verdict on the next.
    static VALIDATOR: RefCell<Validator> = RefCell::new(Validator::new(
        EventLimits {
            event_bytes_max: 16 * 1024,
            properties_depth_max: 8,
            event_time_past_ms: 7 * 24 * 3_600_000,
            event_time_future_ms: 3_600_000,
        },
        0x5eed,
    ));
}

/// Body splitting and event validation: the first byte picks the body shape.
/// Every span lies inside the body; every accepted event becomes a record
/// that is valid JSON (checked by a second parser, serde_json) with the
/// server's fields; every refused one becomes a valid JSON dead letter.
pub fn events(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = match selector % 3 {
        0 => BodyKind::Single,
        1 => BodyKind::JsonBatch,
        _ => BodyKind::Ndjson,
    };
    let mut spans = Vec::new();
    if event_spans(kind, body, &mut spans, BATCH_EVENTS_MAX).is_err() {
        return;
    }
    assert!(!spans.is_empty() && spans.len() <= BATCH_EVENTS_MAX);
    let enrichment = Enrichment {
        tenant_id: "tenant_fuzz",
        project_id: Some("project_fuzz"),
        received_at_ms: RECEIVED_AT_MS,
        ..Default::default()
    };
    let mut out = Vec::new();
    VALIDATOR.with_borrow_mut(|validator| {
        for span in spans {
            assert!(span.start <= span.end && span.end <= body.len());
            let raw = &body[span];
            let before = out.len();
            match validator.validate_into(raw, &enrichment, &mut out) {
                Ok(record) => {
                    let value: serde_json::Value = serde_json::from_slice(&out[record.value])
                        .unwrap_or_else(|error| {
                            panic!("accepted event became invalid JSON: {error}")
                        });
                    assert_eq!(value["tenant_id"], "tenant_fuzz");
                    assert_eq!(value["received_at"], RECEIVED_AT_MS);
                    assert!(value["event_id"].is_string());
                    let key = std::str::from_utf8(&out[record.key]).expect("key is UTF-8");
                    assert!(key.starts_with("tenant_fuzz:"));
                    assert_eq!(
                        value["event_type"].as_str().map(str::as_bytes),
                        Some(&out[record.event_type])
                    );
                }
                Err(error) => {
                    assert_eq!(out.len(), before, "a refused event left bytes behind");
                    assert!((400..500).contains(&error.status));
                    let (_, value) = write_dead_letter(raw, &error, &enrichment, 1024, &mut out);
                    let letter: serde_json::Value = serde_json::from_slice(&out[value])
                        .unwrap_or_else(|error| panic!("dead letter is invalid JSON: {error}"));
                    assert_eq!(letter["error"]["code"], error.code);
                }
            }
        }
    });
}

/// Segment bodies: the first byte picks a batch or one of the six call
/// routes. Every span and the shared context lie inside the body; a call
/// the validator accepts after its rewrite is a record with the server's
/// fields, a user and no `writeKey`; every refused call's dead letter is
/// valid JSON, and when the call was a JSON object its `raw` is that
/// object less `writeKey`.
pub fn segment(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = match usize::from(selector) % 7 {
        6 => BodyKind::SegmentBatch,
        index => BodyKind::SegmentCall(SegmentCall::ALL[index]),
    };
    let endpoint = match kind {
        BodyKind::SegmentCall(call) => Some(call),
        _ => None,
    };
    let mut spans = Vec::new();
    let Ok(shared) = event_spans(kind, body, &mut spans, BATCH_EVENTS_MAX) else {
        return;
    };
    assert!(!spans.is_empty() && spans.len() <= BATCH_EVENTS_MAX);
    let inside = |range: std::ops::Range<usize>| {
        assert!(range.start <= range.end && range.end <= body.len());
        &body[range]
    };
    let envelope = Envelope {
        endpoint,
        context: shared.context.map(inside),
        sent_at: shared.sent_at.map(inside),
        received_at_ms: RECEIVED_AT_MS,
    };
    let enrichment = Enrichment {
        tenant_id: "tenant_fuzz",
        project_id: None,
        received_at_ms: RECEIVED_AT_MS,
        ..Default::default()
    };
    let (mut translated, mut out, mut shown) = (Vec::new(), Vec::new(), Vec::new());
    VALIDATOR.with_borrow_mut(|validator| {
        for span in spans {
            assert!(span.start <= span.end && span.end <= body.len());
            let raw = &body[span];
            // Member names are matched decoded: `"write\u004bey"` is the
            // write key too, and must go the same way.
            let result = translate(raw, &envelope, &mut translated).and_then(|()| {
                out.clear();
                validator.validate_into(&translated, &enrichment, &mut out)
            });
            match result {
                Ok(record) => {
                    let value: serde_json::Value = serde_json::from_slice(&out[record.value])
                        .unwrap_or_else(|error| {
                            panic!("accepted call became invalid JSON: {error}")
                        });
                    assert_eq!(value["tenant_id"], "tenant_fuzz");
                    assert!(value["user_id"].is_string() && value["event_type"].is_string());
                    assert!(value.get("writeKey").is_none(), "writeKey published");
                }
                Err(error) => {
                    assert!((400..500).contains(&error.status));
                    let dead = dead_letter_raw(raw, &mut shown);
                    let sent = serde_json::from_slice::<serde_json::Value>(raw);
                    if let Ok(serde_json::Value::Object(mut members)) = sent {
                        members.remove("writeKey");
                        let kept: serde_json::Value =
                            serde_json::from_slice(dead).unwrap_or_else(|error| {
                                panic!("dead-letter raw is invalid JSON: {error}")
                            });
                        assert_eq!(kept, serde_json::Value::Object(members));
                    }
                    out.clear();
                    let (_, value) = write_dead_letter(dead, &error, &enrichment, 1024, &mut out);
                    let letter: serde_json::Value = serde_json::from_slice(&out[value])
                        .unwrap_or_else(|error| panic!("dead letter is invalid JSON: {error}"));
                    assert_eq!(letter["error"]["code"], error.code);
                }
            }
        }
    });
}
