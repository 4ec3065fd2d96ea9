//! API keys: an immutable snapshot looked up on the data path, rebuilt off
//! it and swapped in atomically when the keys file changes or on SIGHUP.
//!
//! Keys are held only as SHA-256 digests. A presented key is hashed, found
//! by the first eight digest bytes, and confirmed by a constant-time
//! comparison of the whole digest, so neither the file (with `key_sha256`)
//! nor response timing gives a usable secret away.
//!
//! This file is the lookup: [`Snapshot`], its [`Grant`]s, the
//! [`KeyStore`] that holds the current one, and [`KeySpec`], a key as any
//! source states it. `file.rs` is the keys file's format; `reload.rs`
//! rebuilds the snapshot from every source (the file, PostgreSQL, `--dev`).

mod file;
mod reload;

pub use file::missing_file_hint;
pub use reload::Rebuilt;

use std::path::PathBuf;
use std::sync::Arc;

use ahash::AHashMap;
use anyhow::bail;
use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use self::reload::{FileStamp, Sources};
use crate::config::KeyLimits;
use crate::tenancy::rate::KeyLimiter;

/// Longest tenant or project id; they end up in every Kafka key and header.
pub const TENANT_ID_BYTES_MAX: usize = 128;

/// What a key grants.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tenant_id: Arc<str>,
    pub project_id: Option<Arc<str>>,
    /// Per-key topic override.
    pub topic: Option<Arc<str>>,
    /// The key's rate limiter, shared by every core; `None`: unlimited.
    pub limiter: Option<Arc<KeyLimiter>>,
    /// The key is refused from this instant on (epoch ms; the earlier of
    /// its `expires_at` and `revoked_at`); `u64::MAX`: never.
    pub refused_from_ms: u64,
    /// The tenant's per-tenant metrics slot ([`super::labels`]).
    pub metrics_slot: u16,
}

impl Grant {
    /// Whether the key may be used at `now_ms` (the core's clock).
    pub fn valid_at(&self, now_ms: u64) -> bool {
        now_ms < self.refused_from_ms
    }
}

/// A key as a source (the file, PostgreSQL, `--dev`) gives it.
#[derive(Debug, Clone)]
pub struct Entry {
    digest: [u8; 32],
    enabled: bool,
    grant: Grant,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
}

/// An immutable set of keys.
#[derive(Debug)]
pub struct Snapshot {
    by_digest_prefix: AHashMap<u64, Entry>,
    /// False while a configured source (PostgreSQL) has never been loaded:
    /// an unknown key may then be a valid one not seen yet.
    complete: bool,
    /// Which build this is: every swap gets a new one. A connection
    /// remembers its key's grant with this number, not the snapshot, so an
    /// idle connection never pins a whole old snapshot in memory.
    generation: u64,
}

/// Snapshots in memory: the current one, plus any a request in progress
/// still reads. More than a few means something keeps old ones alive
/// (`sluice_api_key_snapshots`).
static SNAPSHOTS_ALIVE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many key snapshots are in memory (see [`SNAPSHOTS_ALIVE`]).
pub fn snapshots_alive() -> u64 {
    SNAPSHOTS_ALIVE.load(std::sync::atomic::Ordering::Relaxed)
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::new(0, true, 0)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        SNAPSHOTS_ALIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Snapshot {
    fn new(capacity: usize, complete: bool, generation: u64) -> Snapshot {
        SNAPSHOTS_ALIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Snapshot {
            by_digest_prefix: AHashMap::with_capacity(capacity),
            complete,
            generation,
        }
    }

    /// This snapshot's build number (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether every configured key source has been loaded.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Looks a presented key up at `now_ms` (the core's clock); never logs
    /// or keeps it.
    pub fn authenticate(&self, presented: &[u8], now_ms: u64) -> Result<&Grant, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let entry = self
            .by_digest_prefix
            .get(&digest_prefix(&digest))
            .ok_or(AuthError::Invalid)?;
        let matches: bool = entry.digest.ct_eq(&digest).into();
        if matches && entry.enabled && entry.grant.valid_at(now_ms) {
            Ok(&entry.grant)
        } else {
            Err(AuthError::Invalid)
        }
    }

    /// Number of keys, enabled or not.
    pub fn len(&self) -> usize {
        self.by_digest_prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest_prefix.is_empty()
    }

    /// Adds a plain key, for `--dev`.
    pub fn with_plain_key(
        mut self,
        key: &str,
        tenant_id: &str,
        limits: KeyLimits,
    ) -> anyhow::Result<Snapshot> {
        let entry = Entry {
            digest: Sha256::digest(key.as_bytes()).into(),
            enabled: true,
            grant: Grant {
                tenant_id: tenant_id.into(),
                project_id: None,
                topic: None,
                limiter: limiter_for(limits),
                refused_from_ms: u64::MAX,
                metrics_slot: super::labels::slot(tenant_id),
            },
        };
        self.insert(entry)?;
        Ok(self)
    }

    /// Adds a key; one already there (by digest prefix) stays.
    fn insert(&mut self, entry: Entry) -> anyhow::Result<()> {
        match self.by_digest_prefix.entry(digest_prefix(&entry.digest)) {
            std::collections::hash_map::Entry::Occupied(_) => bail!("duplicate key"),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(entry);
                Ok(())
            }
        }
    }

    /// Iterates the keys (for the fleet-wide limit sync).
    pub fn grants(&self) -> impl Iterator<Item = (&[u8; 32], &Grant)> {
        self.by_digest_prefix
            .values()
            .map(|entry| (&entry.digest, &entry.grant))
    }
}

fn limiter_for(limits: KeyLimits) -> Option<Arc<KeyLimiter>> {
    (!limits.is_unlimited()).then(|| Arc::new(KeyLimiter::new(limits)))
}

fn digest_prefix(digest: &[u8; 32]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(prefix)
}

/// One key as a source states it, before checking; a limit left `None`
/// takes the `limits.default_*` value.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// SHA-256 of the raw key.
    pub digest: [u8; 32],
    pub tenant_id: String,
    pub project_id: Option<String>,
    pub topic: Option<String>,
    pub enabled: bool,
    pub rate_events_per_sec: Option<u64>,
    pub burst_events: Option<u64>,
    pub rate_bytes_per_sec: Option<u64>,
    pub burst_bytes: Option<u64>,
    /// Epoch ms from which the key is refused; `u64::MAX`: never.
    pub refused_from_ms: u64,
}

impl KeySpec {
    /// Checks the ids and settles the limits.
    pub fn into_entry(self, defaults: KeyLimits) -> anyhow::Result<Entry> {
        check_id("tenant_id", &self.tenant_id)?;
        if let Some(project_id) = &self.project_id {
            check_id("project_id", project_id)?;
        }
        if let Some(topic) = &self.topic {
            check_id("topic", topic)?;
        }
        let limits = KeyLimits {
            events_per_second: self
                .rate_events_per_sec
                .unwrap_or(defaults.events_per_second),
            burst_events: self.burst_events.unwrap_or(defaults.burst_events),
            bytes_per_second: self.rate_bytes_per_sec.unwrap_or(defaults.bytes_per_second),
            burst_bytes: self.burst_bytes.unwrap_or(defaults.burst_bytes),
        };
        Ok(Entry {
            digest: self.digest,
            enabled: self.enabled,
            grant: Grant {
                metrics_slot: super::labels::slot(&self.tenant_id),
                tenant_id: self.tenant_id.into(),
                project_id: self.project_id.map(Into::into),
                topic: self.topic.map(Into::into),
                limiter: limiter_for(limits),
                refused_from_ms: self.refused_from_ms,
            },
        })
    }
}

fn check_id(name: &str, value: &str) -> anyhow::Result<()> {
    let valid = !value.is_empty()
        && value.len() <= TENANT_ID_BYTES_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !valid {
        bail!("{name} must be 1..={TENANT_ID_BYTES_MAX} characters of A-Z a-z 0-9 _ - .");
    }
    Ok(())
}

/// The current snapshot, shared by all cores.
pub struct KeyStore {
    current: ArcSwap<Snapshot>,
    path: Option<PathBuf>,
    /// Keys that exist whatever the sources say (the `--dev` key).
    extra: Option<(String, String)>,
    /// Limits of keys that set none (`limits.default_*`).
    defaults: KeyLimits,
    last_seen: std::sync::Mutex<Option<FileStamp>>,
    /// Each source's keys as last loaded: reloading one source rebuilds
    /// the snapshot from these, so the others' keys stay.
    sources: std::sync::Mutex<Sources>,
    /// The last snapshot's generation.
    generation: std::sync::atomic::AtomicU64,
}

impl KeyStore {
    /// The snapshot to authenticate against; cheap and lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The limits of keys that set none.
    pub fn defaults(&self) -> KeyLimits {
        self.defaults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keys file with a plain, a hashed and a disabled key (for the
    /// tests of `file.rs` and `reload.rs` too).
    pub(super) const FILE: &str = r#"
        [[keys]]
        key = "cs_live_abc123xyz"
        tenant_id = "tenant_a"
        project_id = "proj_1"

        [[keys]]
        key_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        tenant_id = "tenant_b"

        [[keys]]
        key = "cs_disabled"
        tenant_id = "tenant_c"
        enabled = false
    "#;

    pub(super) fn spec(key: &str, tenant: &str, refused_from_ms: u64) -> KeySpec {
        KeySpec {
            digest: Sha256::digest(key.as_bytes()).into(),
            tenant_id: tenant.into(),
            project_id: None,
            topic: None,
            enabled: true,
            rate_events_per_sec: None,
            burst_events: None,
            rate_bytes_per_sec: None,
            burst_bytes: None,
            refused_from_ms,
        }
    }

    #[test]
    fn a_key_is_refused_from_its_instant() {
        let mut snapshot = Snapshot::default();
        snapshot
            .insert(
                spec("k", "t", 1_000)
                    .into_entry(KeyLimits::default())
                    .unwrap(),
            )
            .unwrap();
        assert!(snapshot.authenticate(b"k", 999).is_ok());
        assert_eq!(
            snapshot.authenticate(b"k", 1_000).err(),
            Some(AuthError::Invalid)
        );
    }
}
