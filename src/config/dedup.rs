//! `[dedup]`: edge dedup of retried events (SPEC §12).

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Edge dedup: a retry of an event already stored is answered, not
/// published again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Off: every event is published, retries included (the answers still
    /// tell the truth; a retry may duplicate).
    pub enabled: bool,
    /// How long a stored event's id is remembered.
    pub window_ms: u64,
    /// Entries the table holds (16 bytes each, allocated at start-up:
    /// 4,194,304 entries take 64 MiB). The window really kept is this
    /// divided by the event rate when that is shorter than `window_ms`;
    /// `sluice_dedup_evicted_young_total` counts the entries forced out early.
    pub entries_max: usize,
    /// Redis shared by the instances behind one load balancer, so that a
    /// retry landing on another instance is caught too; empty: this
    /// instance dedups alone.
    pub redis_url: Secret,
    /// How long a request waits for Redis's answer before it is served on
    /// local dedup alone.
    pub redis_timeout_ms: u64,
    /// A tenant's live keys in Redis at most (0: `entries_max`): a claim
    /// past it deletes that tenant's oldest keys, never another's, so
    /// sluice's memory in Redis is bounded by tenants × this.
    pub redis_keys_per_tenant_max: usize,
}

impl DedupConfig {
    /// `redis_keys_per_tenant_max`, 0 read as `entries_max`.
    pub fn redis_keys_per_tenant(&self) -> u64 {
        match self.redis_keys_per_tenant_max {
            0 => self.entries_max as u64,
            keys => keys as u64,
        }
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            window_ms: 3_600_000,
            entries_max: 4_194_304,
            redis_url: Secret::default(),
            redis_timeout_ms: 100,
            redis_keys_per_tenant_max: 0,
        }
    }
}
