//! Event ids the server writes for an event sent without an `event_id`: a
//! UUIDv8 derived from the request's `Idempotency-Key` when it sent one
//! (the same for every retry), else a UUIDv7 from the receive time and the
//! core's own generator.

/// The event id of the event `raw` at `index` of a request sent with `key`
/// by `tenant_id`: a UUIDv8 of their SHA-256, the same for every retry of
/// the request (same bytes), different for another tenant, key, position
/// or content: a client that reuses a key for another request must not
/// have its new events taken for the old ones downstream.
pub fn idempotent_event_id(tenant_id: &str, key: &[u8], index: usize, raw: &[u8]) -> uuid::Uuid {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::new()
        .chain_update(b"sluice idempotency-key\0")
        .chain_update(tenant_id.as_bytes())
        .chain_update([0])
        .chain_update(key)
        .chain_update([0])
        .chain_update((index as u64).to_le_bytes())
        .chain_update(raw)
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
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
    fn idempotent_ids_are_v8_and_change_with_each_input() {
        let id = idempotent_event_id("tenant_a", b"key", 0, b"{}");
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id, idempotent_event_id("tenant_a", b"key", 0, b"{}"));
        for other in [
            idempotent_event_id("tenant_b", b"key", 0, b"{}"),
            idempotent_event_id("tenant_a", b"kez", 0, b"{}"),
            idempotent_event_id("tenant_a", b"key", 1, b"{}"),
            idempotent_event_id("tenant_a", b"key", 0, b"{ }"),
        ] {
            assert_ne!(id, other);
        }
    }
}
