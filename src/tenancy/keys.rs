//! API keys: an immutable snapshot looked up on the data path, rebuilt off
//! it and swapped in atomically when the keys file changes or on SIGHUP.
//!
//! Keys are held only as SHA-256 digests. A presented key is hashed, found
//! by the first eight digest bytes, and confirmed by a constant-time
//! comparison of the whole digest, so neither the file (with `key_sha256`)
//! nor response timing gives a usable secret away.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ahash::AHashMap;
use anyhow::{bail, Context as _};
use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::tenancy::rate::{KeyLimiter, Limits};

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

    /// Parses a keys file's text; keys without limits of their own get
    /// `defaults`.
    pub fn parse(text: &str, defaults: Limits) -> anyhow::Result<Snapshot> {
        Self::parse_named(text, "keys file", defaults)
    }

    /// [`Snapshot::parse`], naming the file `name` in errors, each on one
    /// line with the place: `keys.toml:4:11: ...` or `keys.toml: keys[2]: ...`.
    pub fn parse_named(text: &str, name: &str, defaults: Limits) -> anyhow::Result<Snapshot> {
        let file: KeysFile = toml::from_str(text).map_err(|error| {
            let located = crate::toml_errors::toml_error(name, text, &error);
            match located.split_once(": ") {
                Some((place, message)) => {
                    anyhow::anyhow!(
                        "{place}: {}",
                        crate::toml_errors::plain_serde_message(message)
                    )
                }
                None => anyhow::anyhow!(located),
            }
        })?;
        let mut snapshot = Snapshot::default();
        for (index, key) in file.keys.into_iter().enumerate() {
            let entry = key.into_entry(defaults).with_context(|| {
                format!(
                    "{name}: keys[{index}] (the key's entry number {}, counting from 1)",
                    index + 1
                )
            })?;
            snapshot.insert(entry).with_context(|| {
                format!(
                    "{name}: keys[{index}] (the key's entry number {}, counting from 1)",
                    index + 1
                )
            })?;
        }
        Ok(snapshot)
    }

    /// Adds a plain key, for `--dev`.
    pub fn with_plain_key(
        mut self,
        key: &str,
        tenant_id: &str,
        limits: Limits,
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

/// Folds PostgreSQL's copy of a key into the file's: the key is refused if
/// either source refuses it, from the earlier of their instants. Different
/// tenants refuse the key and return the line to log (no key in it: the
/// digest's first four bytes, which identify it to an operator who can
/// hash their keys, and give nothing usable away).
fn merge_refusals(file: &mut Entry, postgres: &Entry) -> Option<String> {
    file.enabled &= postgres.enabled;
    file.grant.refused_from_ms = file
        .grant
        .refused_from_ms
        .min(postgres.grant.refused_from_ms);
    if file.grant.tenant_id == postgres.grant.tenant_id {
        return None;
    }
    file.enabled = false;
    let shown: String = file.digest[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!(
        "key sha256:{shown}… is tenant {:?} in the keys file and tenant {:?} in PostgreSQL: refused until one source is corrected",
        file.grant.tenant_id, postgres.grant.tenant_id
    ))
}

/// Keeps the limiters (and so the usage) of keys whose limits did not
/// change, so that a reload does not hand every key a fresh burst.
fn adopt_limiters(new: &mut Snapshot, old: &Snapshot) {
    for (prefix, entry) in new.by_digest_prefix.iter_mut() {
        let Some(previous) = old.by_digest_prefix.get(prefix) else {
            continue;
        };
        if let (Some(current), Some(kept)) = (&entry.grant.limiter, &previous.grant.limiter) {
            if previous.digest == entry.digest && kept.limits() == current.limits() {
                entry.grant.limiter = Some(Arc::clone(kept));
            }
        }
    }
}

fn limiter_for(limits: Limits) -> Option<Arc<KeyLimiter>> {
    (!limits.is_unlimited()).then(|| Arc::new(KeyLimiter::new(limits)))
}

fn digest_prefix(digest: &[u8; 32]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(prefix)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    key: Option<String>,
    key_sha256: Option<String>,
    tenant_id: String,
    project_id: Option<String>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    topic: Option<String>,
    /// Per-key limits; absent: the `limits.default_*` values.
    rate_events_per_sec: Option<u64>,
    burst_events: Option<u64>,
    rate_bytes_per_sec: Option<u64>,
    burst_bytes: Option<u64>,
}

fn enabled_by_default() -> bool {
    true
}

impl KeyRecord {
    fn into_entry(self, defaults: Limits) -> anyhow::Result<Entry> {
        let digest = match (self.key.as_deref(), self.key_sha256.as_deref()) {
            (Some(key), None) => match key.strip_prefix("sha256:") {
                Some(hex) => parse_hex_digest(hex)?,
                None if key.is_empty() => bail!("key is empty"),
                None => Sha256::digest(key.as_bytes()).into(),
            },
            (None, Some(hex)) => parse_hex_digest(hex)?,
            _ => bail!("exactly one of key and key_sha256 is required"),
        };
        KeySpec {
            digest,
            tenant_id: self.tenant_id,
            project_id: self.project_id,
            topic: self.topic,
            enabled: self.enabled,
            rate_events_per_sec: self.rate_events_per_sec,
            burst_events: self.burst_events,
            rate_bytes_per_sec: self.rate_bytes_per_sec,
            burst_bytes: self.burst_bytes,
            refused_from_ms: u64::MAX,
        }
        .into_entry(defaults)
    }
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
    pub fn into_entry(self, defaults: Limits) -> anyhow::Result<Entry> {
        check_id("tenant_id", &self.tenant_id)?;
        if let Some(project_id) = &self.project_id {
            check_id("project_id", project_id)?;
        }
        if let Some(topic) = &self.topic {
            check_id("topic", topic)?;
        }
        let limits = Limits {
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

/// What to do when the keys file is not there: the first thing a newcomer
/// who runs plain `sluice` sees.
pub fn missing_file_hint(path: &std::path::Path) -> String {
    format!(
        "keys file {} not found (auth.keys_file): create it (keys.example.toml shows the format), point --keys-file or SLUICE_AUTH_KEYS_FILE at one, or set auth.postgres_url; to try sluice with no keys and no Kafka, run `sluice --dev`",
        path.display()
    )
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

fn parse_hex_digest(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        bail!("a SHA-256 digest is 64 hex digits");
    }
    let mut digest = [0u8; 32];
    for (index, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).context("digest is not hex")?;
        digest[index] = u8::from_str_radix(text, 16).context("digest is not hex")?;
    }
    Ok(digest)
}

/// The current snapshot, shared by all cores.
pub struct KeyStore {
    current: ArcSwap<Snapshot>,
    path: Option<PathBuf>,
    /// Keys that exist whatever the sources say (the `--dev` key).
    extra: Option<(String, String)>,
    /// Limits of keys that set none (`limits.default_*`).
    defaults: Limits,
    last_seen: std::sync::Mutex<Option<FileStamp>>,
    /// Each source's keys as last loaded: reloading one source rebuilds
    /// the snapshot from these, so the others' keys stay.
    sources: std::sync::Mutex<Sources>,
    /// The last snapshot's generation.
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Sources {
    file: Vec<Entry>,
    /// `None`: PostgreSQL is not configured, or never loaded yet.
    postgres: Option<Vec<Entry>>,
    postgres_configured: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    length: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        length: metadata.len(),
        inode: metadata.ino(),
    })
}

/// What a rebuild did, for its log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Keys in the new snapshot.
    pub keys: usize,
    /// Keys in both the file and PostgreSQL (merged into one entry).
    pub duplicates: usize,
    /// Keys in both sources with different tenants, refused: one line each
    /// naming the key by its digest's first bytes and the two tenants.
    pub conflicts: Vec<String>,
}

impl KeyStore {
    /// Loads the keys file; failing at start-up is an error. With
    /// `postgres` the snapshot stays incomplete (unknown keys get 503, not
    /// 401) until [`KeyStore::replace_postgres`] is first called.
    pub fn open(
        path: Option<PathBuf>,
        extra: Option<(String, String)>,
        defaults: Limits,
        postgres: bool,
    ) -> anyhow::Result<KeyStore> {
        let store = KeyStore {
            current: ArcSwap::from_pointee(Snapshot::default()),
            path,
            extra,
            defaults,
            last_seen: std::sync::Mutex::new(None),
            sources: std::sync::Mutex::new(Sources {
                postgres_configured: postgres,
                ..Sources::default()
            }),
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        store.reload()?;
        Ok(store)
    }

    /// The snapshot to authenticate against; cheap and lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    fn read_file(&self) -> anyhow::Result<Vec<Entry>> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(path);
        let text = std::fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(missing_file_hint(path))
            } else {
                anyhow::anyhow!("reading keys file {}: {error}", path.display())
            }
        })?;
        // Writing a file in place truncates it first: a reload in between
        // would take the empty file as "no keys" and refuse every client.
        let loaded = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .len();
        if text.is_empty() && loaded > 0 {
            anyhow::bail!(
                "keys file {} is empty: keeping the {loaded} keys loaded from it (an empty file is taken for one being written; to remove every key, leave a comment in it)",
                path.display()
            );
        }
        let snapshot = Snapshot::parse_named(&text, &path.display().to_string(), self.defaults)?;
        let mut snapshot = snapshot;
        Ok(std::mem::take(&mut snapshot.by_digest_prefix)
            .into_values()
            .collect())
    }

    /// Builds a snapshot from every source's keys and swaps it in. A key
    /// in both sources is one entry: the file's settings, but refused when
    /// either source refuses it (disabled, expired, revoked: a refusal from
    /// any source wins), and refused outright when the two name different
    /// tenants (which one is meant is unknowable; see `conflicts`).
    fn rebuild(&self, sources: &Sources) -> anyhow::Result<Rebuilt> {
        let mut snapshot = Snapshot::new(
            sources.file.len() + sources.postgres.as_ref().map_or(0, Vec::len) + 1,
            !sources.postgres_configured || sources.postgres.is_some(),
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
        );
        for entry in &sources.file {
            snapshot.insert(entry.clone())?;
        }
        let mut duplicates = 0;
        let mut conflicts = Vec::new();
        for entry in sources.postgres.iter().flatten() {
            let prefix = digest_prefix(&entry.digest);
            match snapshot.by_digest_prefix.get_mut(&prefix) {
                None => {
                    snapshot.by_digest_prefix.insert(prefix, entry.clone());
                }
                Some(file) => {
                    duplicates += 1;
                    if let Some(conflict) = merge_refusals(file, entry) {
                        conflicts.push(conflict);
                    }
                }
            }
        }
        if let Some((key, tenant)) = &self.extra {
            snapshot = snapshot.with_plain_key(key, tenant, self.defaults)?;
        }
        adopt_limiters(&mut snapshot, &self.current.load());
        let keys = snapshot.len();
        self.current.store(Arc::new(snapshot));
        Ok(Rebuilt {
            keys,
            duplicates,
            conflicts,
        })
    }

    /// Re-reads the keys file and swaps a new snapshot in; on failure the
    /// old snapshot stays and the error says why.
    pub fn reload(&self) -> anyhow::Result<Rebuilt> {
        let file = self.read_file()?;
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.file = file;
        self.rebuild(&sources)
    }

    /// Replaces PostgreSQL's keys (a full load) and swaps a new snapshot in.
    pub fn replace_postgres(&self, entries: Vec<Entry>) -> anyhow::Result<Rebuilt> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources.postgres = Some(entries);
        self.rebuild(&sources)
    }

    /// The limits of keys that set none.
    pub fn defaults(&self) -> Limits {
        self.defaults
    }

    /// Reloads when the file's modification time, length or inode changed.
    /// Returns `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<Rebuilt>> {
        let path = self.path.as_ref()?;
        let now = stamp(path);
        let changed = *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) != now;
        changed.then(|| self.reload())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
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

    #[test]
    fn plain_hashed_and_disabled_keys() {
        let snapshot = Snapshot::parse(FILE, Default::default()).unwrap();
        let grant = snapshot.authenticate(b"cs_live_abc123xyz", 0).unwrap();
        assert_eq!(&*grant.tenant_id, "tenant_a");
        assert_eq!(grant.project_id.as_deref(), Some("proj_1"));
        assert_eq!(
            &*snapshot.authenticate(b"password", 0).unwrap().tenant_id,
            "tenant_b"
        );
        assert_eq!(
            snapshot.authenticate(b"cs_disabled", 0).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(
            snapshot.authenticate(b"nope", 0).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(
            snapshot.authenticate(b"", 0).err(),
            Some(AuthError::Missing)
        );
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(Snapshot::parse("[[keys]]\ntenant_id = \"t\"\n", Default::default()).is_err());
        assert!(Snapshot::parse(
            "[[keys]]\nkey = \"k\"\ntenant_id = \"a:b\"\n",
            Default::default()
        )
        .is_err());
        assert!(Snapshot::parse(
            "[[keys]]\nkey_sha256 = \"abc\"\ntenant_id = \"t\"\n",
            Default::default()
        )
        .is_err());
        assert!(Snapshot::parse(
            "[[keys]]\nkey = \"k\"\ntenant_id = \"t\"\n[[keys]]\nkey = \"k\"\ntenant_id = \"u\"\n",
            Default::default()
        )
        .is_err());
        assert!(Snapshot::parse("not toml [", Default::default()).is_err());
    }

    fn spec(key: &str, tenant: &str, refused_from_ms: u64) -> KeySpec {
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
            .insert(spec("k", "t", 1_000).into_entry(Limits::default()).unwrap())
            .unwrap();
        assert!(snapshot.authenticate(b"k", 999).is_ok());
        assert_eq!(
            snapshot.authenticate(b"k", 1_000).err(),
            Some(AuthError::Invalid)
        );
    }

    /// A file caught between its truncation and its new content (an
    /// editor or `cat >` writing in place) does not drop every key.
    #[test]
    fn an_empty_file_on_reload_keeps_the_keys() {
        let dir = std::env::temp_dir().join(format!("sluice-empty-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, FILE).unwrap();
        let store = KeyStore::open(Some(path.clone()), None, Limits::default(), false).unwrap();
        std::fs::write(&path, "").unwrap();
        let error = store.reload().unwrap_err().to_string();
        assert!(error.contains("is empty: keeping the 3 keys"), "{error}");
        assert!(store.load().authenticate(b"cs_live_abc123xyz", 0).is_ok());
        // A file that says so on purpose empties the snapshot.
        std::fs::write(&path, "# every key removed\n").unwrap();
        store.reload().unwrap();
        assert!(store.load().authenticate(b"cs_live_abc123xyz", 0).is_err());
        // And an empty file at start-up is no keys, as before.
        std::fs::write(&path, "").unwrap();
        let empty = KeyStore::open(Some(path), None, Limits::default(), false).unwrap();
        assert!(empty.load().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn postgres_keys_join_the_file_a_refusal_wins_and_two_tenants_are_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, FILE).unwrap();
        let store = KeyStore::open(Some(path), None, Limits::default(), true).unwrap();
        assert!(
            !store.load().is_complete(),
            "incomplete until PostgreSQL loads"
        );
        assert!(store.load().authenticate(b"cs_live_abc123xyz", 0).is_ok());
        let entry = |key, tenant, enabled, refused_from_ms| {
            let mut spec = spec(key, tenant, refused_from_ms);
            spec.enabled = enabled;
            spec.into_entry(Limits::default()).unwrap()
        };
        let generation = store.load().generation();
        let rebuilt = store
            .replace_postgres(vec![entry("pg_key", "tenant_pg", true, u64::MAX)])
            .unwrap();
        assert_eq!((rebuilt.duplicates, rebuilt.conflicts.len()), (0, 0));
        let snapshot = store.load();
        assert!(snapshot.is_complete());
        assert!(snapshot.generation() > generation);
        assert_eq!(
            &*snapshot.authenticate(b"pg_key", 0).unwrap().tenant_id,
            "tenant_pg"
        );
        // The same tenant in both: the file's settings, PostgreSQL's refusals.
        for (enabled, refused_from_ms) in [(false, u64::MAX), (true, 500)] {
            store
                .replace_postgres(vec![entry(
                    "cs_live_abc123xyz",
                    "tenant_a",
                    enabled,
                    refused_from_ms,
                )])
                .unwrap();
            assert_eq!(
                store.load().authenticate(b"cs_live_abc123xyz", 600).err(),
                Some(AuthError::Invalid),
                "enabled {enabled}, refused from {refused_from_ms}"
            );
        }
        let rebuilt = store
            .replace_postgres(vec![entry("cs_live_abc123xyz", "tenant_a", true, u64::MAX)])
            .unwrap();
        assert!(rebuilt.conflicts.is_empty());
        let snapshot = store.load();
        let grant = snapshot.authenticate(b"cs_live_abc123xyz", 0).unwrap();
        assert_eq!(
            grant.project_id.as_deref(),
            Some("proj_1"),
            "the file's grant"
        );
        // Another tenant in PostgreSQL: refused, and said.
        let rebuilt = store
            .replace_postgres(vec![entry(
                "cs_live_abc123xyz",
                "tenant_other",
                true,
                u64::MAX,
            )])
            .unwrap();
        assert_eq!(rebuilt.conflicts.len(), 1);
        assert!(rebuilt.conflicts[0]
            .contains("\"tenant_a\" in the keys file and tenant \"tenant_other\""));
        assert!(
            !rebuilt.conflicts[0].contains("cs_live"),
            "no key in the line"
        );
        assert!(store.load().authenticate(b"cs_live_abc123xyz", 0).is_err());
        // A file reload keeps PostgreSQL's keys.
        store
            .replace_postgres(vec![entry("pg_key", "tenant_pg", true, u64::MAX)])
            .unwrap();
        store.reload().unwrap();
        assert!(store.load().authenticate(b"pg_key", 0).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
