//! Event ids the server writes for an event sent without an `event_id`: a
//! UUIDv8 derived from the request's `Idempotency-Key` when it sent one
//! (the same for every retry), else a UUIDv7 from the receive time and the
//! core's own generator. Also the two dedup markers of a request sent with
//! an `Idempotency-Key` (SPEC §12, §15).

use sha2::{Digest as _, Sha256};

/// The event id of the event at `index` of a request sent with `key` by
/// `tenant_id`: a UUIDv8 of their SHA-256. The key names one operation
/// (draft-ietf-httpapi-idempotency-key-header), so the id depends on the
/// operation and the position only, never on the event's bytes: a retry
/// that re-stamps a field or re-serializes the body carries the same ids
/// (and is answered 422 by the payload marker if its payload differs;
/// see [`idempotency_markers`]).
pub fn idempotent_event_id(tenant_id: &str, key: &[u8], index: usize) -> uuid::Uuid {
    let digest = Sha256::new()
        .chain_update(b"sluice idempotency-key\0")
        .chain_update(tenant_id.as_bytes())
        .chain_update([0])
        .chain_update(key)
        .chain_update([0])
        .chain_update((index as u64).to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The dedup entries of a request sent with an `Idempotency-Key`, as ids
/// in its tenant's event-id space (the table and Redis keep them as they
/// keep event ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyMarkers {
    /// The operation: (tenant, key). Stored, it says the key was used.
    pub operation: u128,
    /// The operation with this payload: (tenant, key, the body's bytes as
    /// decoded, after gzip). Stored, it says the key was used for this
    /// payload. The operation stored without it: the key was reused for
    /// another payload (422).
    pub payload: u128,
}

/// The markers of a request of `tenant_id` sent with `key` and `payload`
/// (its body as decoded): one SHA-256 pass over the body, as the per-event
/// ids used to take.
pub fn idempotency_markers(tenant_id: &str, key: &[u8], payload: &[u8]) -> IdempotencyMarkers {
    let prefix = |domain: &[u8]| {
        Sha256::new()
            .chain_update(domain)
            .chain_update(tenant_id.as_bytes())
            .chain_update([0])
            .chain_update(key)
            .chain_update([0])
    };
    let first_16 = |digest: &[u8]| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        u128::from_be_bytes(bytes)
    };
    IdempotencyMarkers {
        operation: first_16(&prefix(b"sluice idempotency-key operation\0").finalize()),
        payload: first_16(
            &prefix(b"sluice idempotency-key payload\0")
                .chain_update(payload)
                .finalize(),
        ),
    }
}

/// A core's generator of time-ordered event ids (no lock: one per core).
pub struct EventIds {
    random: WyRand,
}

impl EventIds {
    pub fn new(seed: u64) -> Self {
        EventIds {
            random: WyRand(seed),
        }
    }

    /// A UUIDv7 from the receive time and this core's generator.
    pub fn time_ordered(&mut self, now_ms: u64) -> uuid::Uuid {
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&self.random.next().to_le_bytes());
        random[8..].copy_from_slice(&self.random.next().to_le_bytes()[..2]);
        uuid::Builder::from_unix_timestamp_millis(now_ms, &random).into_uuid()
    }
}

/// wyrand: a fast, small generator for the random bits of UUIDv7. Event ids
/// need uniqueness, not secrecy, and a per-core generator needs no lock.
struct WyRand(u64);

impl WyRand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let product = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((product >> 64) as u64) ^ (product as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_ids_are_v7_at_the_receive_time_and_distinct() {
        let mut ids = EventIds::new(7);
        let (first, second) = (
            ids.time_ordered(1_710_000_000_000),
            ids.time_ordered(1_710_000_000_000),
        );
        assert_eq!(first.get_version_num(), 7);
        assert_ne!(first, second);
        let (seconds, _) = first.get_timestamp().unwrap().to_unix();
        assert_eq!(seconds, 1_710_000_000);
    }

    #[test]
    fn idempotent_ids_are_v8_and_name_the_operation_and_position_only() {
        let id = idempotent_event_id("tenant_a", b"key", 0);
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id, idempotent_event_id("tenant_a", b"key", 0));
        for other in [
            idempotent_event_id("tenant_b", b"key", 0),
            idempotent_event_id("tenant_a", b"kez", 0),
            idempotent_event_id("tenant_a", b"key", 1),
        ] {
            assert_ne!(id, other);
        }
    }

    /// The operation marker is the key's alone; the payload marker changes
    /// with any byte of the payload; no marker is an event id.
    #[test]
    fn markers_tell_the_operation_from_its_payload() {
        let first = idempotency_markers("tenant_a", b"key", br#"{"t":1}"#);
        assert_eq!(
            first,
            idempotency_markers("tenant_a", b"key", br#"{"t":1}"#)
        );
        let restamped = idempotency_markers("tenant_a", b"key", br#"{"t":2}"#);
        assert_eq!(first.operation, restamped.operation);
        assert_ne!(first.payload, restamped.payload);
        for other in [
            idempotency_markers("tenant_b", b"key", br#"{"t":1}"#),
            idempotency_markers("tenant_a", b"kez", br#"{"t":1}"#),
        ] {
            assert_ne!(first.operation, other.operation);
            assert_ne!(first.payload, other.payload);
        }
        assert_ne!(first.operation, first.payload);
        let event = idempotent_event_id("tenant_a", b"key", 0).as_u128();
        assert!(event != first.operation && event != first.payload);
    }
}
