//! The Kafka record of a valid event (SPEC section 2): key
//! `<tenant>:<user_id>`, value the client's bytes unchanged with the
//! server's fields appended before the closing brace (nothing else is
//! rewritten), then the event type, all into the batch's one buffer.

use std::ops::Range;

use super::ids::{idempotent_event_id, EventIds};
use crate::json::write_json_string;

/// Who sent the event and when, added to the record.
#[derive(Debug, Default, Clone, Copy)]
pub struct Enrichment<'a> {
    pub tenant_id: &'a str,
    pub project_id: Option<&'a str>,
    pub received_at_ms: u64,
    /// The request's `Idempotency-Key`, if it sent one: an event without
    /// an `event_id` then gets one derived from the tenant, this key and
    /// `event_index` (not its bytes), so the same request sent again gets
    /// the same ids.
    pub idempotency_key: Option<&'a [u8]>,
    /// The event's position in its request.
    pub event_index: usize,
}

/// Where one enriched record was written in the output buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpans {
    pub key: Range<usize>,
    pub value: Range<usize>,
    pub event_type: Range<usize>,
    /// The event's id when a retry carries it again: the client's own
    /// `event_id` (any UUID form, as a number) or one derived from an
    /// `Idempotency-Key`. `None` for an id generated here (never retried).
    pub event_id: Option<u128>,
}

/// What validation found in an event that its record needs.
#[derive(Debug)]
pub struct EventFields<'a> {
    pub user_id: &'a str,
    pub event_type: &'a str,
    /// The client's `event_id`, as a number.
    pub event_id: Option<u128>,
}

/// Appends the record of the valid event `raw` (its key, enriched value
/// and event type) to `out`; an event without an `event_id` gets one from
/// `ids`, or from the request's `Idempotency-Key`.
pub fn write_record(
    raw: &[u8],
    fields: &EventFields<'_>,
    enrichment: &Enrichment<'_>,
    ids: &mut EventIds,
    out: &mut Vec<u8>,
) -> RecordSpans {
    let key_start = out.len();
    out.extend_from_slice(enrichment.tenant_id.as_bytes());
    out.push(b':');
    out.extend_from_slice(fields.user_id.as_bytes());
    let key = key_start..out.len();

    let value_start = out.len();
    let body = trim_object_end(raw);
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"tenant_id\":");
    write_json_string(out, enrichment.tenant_id.as_bytes());
    if let Some(project_id) = enrichment.project_id {
        out.extend_from_slice(b",\"project_id\":");
        write_json_string(out, project_id.as_bytes());
    }
    out.extend_from_slice(b",\"received_at\":");
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(enrichment.received_at_ms)
            .as_bytes(),
    );
    let mut event_id = fields.event_id;
    if event_id.is_none() {
        let id = match enrichment.idempotency_key {
            Some(key) => {
                let id = idempotent_event_id(enrichment.tenant_id, key, enrichment.event_index);
                event_id = Some(id.as_u128());
                id
            }
            None => ids.time_ordered(enrichment.received_at_ms),
        };
        out.extend_from_slice(b",\"event_id\":\"");
        out.extend_from_slice(
            id.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes(),
        );
        out.push(b'"');
    }
    out.push(b'}');
    let value = value_start..out.len();

    let type_start = out.len();
    out.extend_from_slice(fields.event_type.as_bytes());
    RecordSpans {
        key,
        value,
        event_type: type_start..out.len(),
        event_id,
    }
}

/// The client's object without its closing brace (and trailing whitespace).
/// `raw` parsed as an object, so after trimming it ends with `}`.
fn trim_object_end(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .rposition(|&b| b == b'}')
        .expect("a parsed object ends with }");
    &raw[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_710_000_000_000;
    const RAW: &[u8] = b"{\"user_id\":\"u\",\"event_type\":\"t\",\"extra\":[1,2.5e3]} \n";

    fn fields(event_id: Option<u128>) -> EventFields<'static> {
        EventFields {
            user_id: "u",
            event_type: "t",
            event_id,
        }
    }

    fn enrichment(idempotency_key: Option<&'static [u8]>) -> Enrichment<'static> {
        Enrichment {
            tenant_id: "tenant_a",
            project_id: Some("proj_\"1"),
            received_at_ms: NOW_MS,
            idempotency_key,
            event_index: 2,
        }
    }

    /// The record's key, value (parsed) and event type, and its event id.
    fn record(
        fields: &EventFields<'_>,
        enrichment: &Enrichment<'_>,
    ) -> (String, serde_json::Value, String, Option<u128>) {
        let mut out = b"earlier records".to_vec();
        let spans = write_record(RAW, fields, enrichment, &mut EventIds::new(7), &mut out);
        assert!(out[spans.value.clone()].starts_with(&RAW[..RAW.len() - 3]));
        (
            String::from_utf8(out[spans.key].to_vec()).unwrap(),
            serde_json::from_slice(&out[spans.value]).unwrap(),
            String::from_utf8(out[spans.event_type].to_vec()).unwrap(),
            spans.event_id,
        )
    }

    #[test]
    fn the_server_fields_are_appended_to_the_clients_bytes() {
        let (key, value, event_type, event_id) = record(&fields(Some(5)), &enrichment(None));
        assert_eq!(key, "tenant_a:u");
        assert_eq!(event_type, "t");
        assert_eq!(value["tenant_id"], "tenant_a");
        assert_eq!(value["project_id"], "proj_\"1");
        assert_eq!(value["received_at"], NOW_MS);
        assert_eq!(value["extra"][1], 2500.0);
        // The client's id is its own: none is added.
        assert!(value.get("event_id").is_none());
        assert_eq!(event_id, Some(5));
    }

    #[test]
    fn a_missing_event_id_gets_a_uuid_v7() {
        let (_, value, _, event_id) = record(&fields(None), &enrichment(None));
        let id = uuid::Uuid::parse_str(value["event_id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(event_id, None, "a generated id is never retried");
    }

    #[test]
    fn an_idempotency_key_gives_the_same_id_on_every_retry() {
        let (_, value, _, event_id) = record(&fields(None), &enrichment(Some(b"retry-me")));
        let expected = idempotent_event_id("tenant_a", b"retry-me", 2);
        assert_eq!(value["event_id"], expected.hyphenated().to_string());
        assert_eq!(event_id, Some(expected.as_u128()));
    }
}
