//! The dead-letter record of an invalid event of a batch (SPEC section 2):
//! what was wrong and the bytes the client sent, cut to a bound, so that
//! the rest of the batch is stored and nothing sent is lost unseen.

use std::ops::Range;

use super::record::Enrichment;
use crate::error::ApiError;
use crate::json::write_json_string;

/// Appends a dead-letter record for an invalid event: key `<tenant_id>`,
/// value `{"tenant_id", "received_at", "error": {code, message, field}, "raw"}`
/// with `raw` cut to `raw_bytes_max` bytes. Returns (key, value) spans.
pub fn write_dead_letter(
    raw: &[u8],
    error: &ApiError,
    enrichment: &Enrichment<'_>,
    raw_bytes_max: usize,
    out: &mut Vec<u8>,
) -> (Range<usize>, Range<usize>) {
    let key_start = out.len();
    out.extend_from_slice(enrichment.tenant_id.as_bytes());
    let key = key_start..out.len();
    let value_start = out.len();
    out.extend_from_slice(b"{\"tenant_id\":");
    write_json_string(out, enrichment.tenant_id.as_bytes());
    out.extend_from_slice(b",\"received_at\":");
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(enrichment.received_at_ms)
            .as_bytes(),
    );
    out.extend_from_slice(b",\"error\":");
    error.write_object(out);
    out.extend_from_slice(b",\"raw\":");
    write_json_string(out, &raw[..raw.len().min(raw_bytes_max)]);
    out.push(b'}');
    (key, value_start..out.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_710_000_000_000;

    #[test]
    fn dead_letters_carry_the_error_and_truncated_raw_bytes() {
        let error = ApiError {
            field: Some("user_id"),
            ..ApiError::new(400, "invalid_event", "user_id is required")
        };
        let enrichment = Enrichment {
            tenant_id: "tenant_a",
            project_id: Some("proj_1"),
            received_at_ms: NOW_MS,
            ..Default::default()
        };
        let mut out = Vec::new();
        let (key, value) = write_dead_letter(
            b"{\"event_type\":\"\xff\"}",
            &error,
            &enrichment,
            12,
            &mut out,
        );
        assert_eq!(&out[key], b"tenant_a");
        let value: serde_json::Value = serde_json::from_slice(&out[value]).unwrap();
        assert_eq!(value["tenant_id"], "tenant_a");
        assert_eq!(value["received_at"], NOW_MS);
        assert_eq!(value["error"]["code"], "invalid_event");
        assert_eq!(value["error"]["field"], "user_id");
        assert_eq!(value["raw"], "{\"event_type");
    }
}
