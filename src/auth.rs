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

use crate::rate::{KeyLimiter, Limits};

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
}

#[derive(Debug)]
struct Entry {
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
#[derive(Debug, Default)]
pub struct Snapshot {
    by_digest_prefix: AHashMap<u64, Entry>,
}

impl Snapshot {
    /// Looks a presented key up; never logs or keeps it.
    pub fn authenticate(&self, presented: &[u8]) -> Result<&Grant, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let entry = self
            .by_digest_prefix
            .get(&digest_prefix(&digest))
            .ok_or(AuthError::Invalid)?;
        let matches: bool = entry.digest.ct_eq(&digest).into();
        if matches && entry.enabled {
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
        let file: KeysFile = toml::from_str(text).context("keys file is not valid")?;
        let mut snapshot = Snapshot::default();
        for (index, key) in file.keys.into_iter().enumerate() {
            let entry = key
                .into_entry(defaults)
                .with_context(|| format!("keys[{index}]"))?;
            snapshot
                .insert(entry)
                .with_context(|| format!("keys[{index}]"))?;
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
            },
        };
        self.insert(entry)?;
        Ok(self)
    }

    fn insert(&mut self, entry: Entry) -> anyhow::Result<()> {
        let prefix = digest_prefix(&entry.digest);
        if self.by_digest_prefix.insert(prefix, entry).is_some() {
            bail!("duplicate key");
        }
        Ok(())
    }
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
            digest,
            enabled: self.enabled,
            grant: Grant {
                tenant_id: self.tenant_id.into(),
                project_id: self.project_id.map(Into::into),
                topic: self.topic.map(Into::into),
                limiter: limiter_for(limits),
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
    /// Keys that exist whatever the file says (the `--dev` key).
    extra: Option<(String, String)>,
    /// Limits of keys that set none (`limits.default_*`).
    defaults: Limits,
    last_seen: std::sync::Mutex<Option<FileStamp>>,
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

impl KeyStore {
    /// Loads the keys file; failing at start-up is an error.
    pub fn open(
        path: Option<PathBuf>,
        extra: Option<(String, String)>,
        defaults: Limits,
    ) -> anyhow::Result<KeyStore> {
        let store = KeyStore {
            current: ArcSwap::from_pointee(Snapshot::default()),
            path,
            extra,
            defaults,
            last_seen: std::sync::Mutex::new(None),
        };
        let snapshot = store.build()?;
        store.current.store(Arc::new(snapshot));
        Ok(store)
    }

    /// The snapshot to authenticate against; cheap and lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    fn build(&self) -> anyhow::Result<Snapshot> {
        let mut snapshot = match &self.path {
            Some(path) => {
                *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(path);
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading keys file {}", path.display()))?;
                Snapshot::parse(&text, self.defaults)
                    .with_context(|| format!("keys file {}", path.display()))?
            }
            None => Snapshot::default(),
        };
        if let Some((key, tenant)) = &self.extra {
            snapshot = snapshot.with_plain_key(key, tenant, self.defaults)?;
        }
        adopt_limiters(&mut snapshot, &self.current.load());
        Ok(snapshot)
    }

    /// Rebuilds the snapshot from the file and swaps it in; on failure the
    /// old snapshot stays and the error says why.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let snapshot = self.build()?;
        let count = snapshot.len();
        self.current.store(Arc::new(snapshot));
        Ok(count)
    }

    /// Reloads when the file's modification time, length or inode changed.
    /// Returns `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<usize>> {
        let path = self.path.as_ref()?;
        let now = stamp(path);
        let changed = *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) != now;
        changed.then(|| self.reload())
    }
}

/// The key a request presents: `X-CS-API-Key`, else `Authorization: Bearer`.
pub fn presented_key<'a>(api_key: Option<&'a [u8]>, authorization: Option<&'a [u8]>) -> &'a [u8] {
    if let Some(key) = api_key {
        return key;
    }
    match authorization {
        Some(value) if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") => {
            crate::http::request::trim(&value[7..])
        }
        _ => b"",
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
        let grant = snapshot.authenticate(b"cs_live_abc123xyz").unwrap();
        assert_eq!(&*grant.tenant_id, "tenant_a");
        assert_eq!(grant.project_id.as_deref(), Some("proj_1"));
        assert_eq!(
            &*snapshot.authenticate(b"password").unwrap().tenant_id,
            "tenant_b"
        );
        assert_eq!(
            snapshot.authenticate(b"cs_disabled").err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(
            snapshot.authenticate(b"nope").err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(snapshot.authenticate(b"").err(), Some(AuthError::Missing));
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

    #[test]
    fn bearer_is_accepted_after_the_header() {
        assert_eq!(presented_key(None, Some(b"Bearer abc")), b"abc");
        assert_eq!(presented_key(None, Some(b"bearer  abc ")), b"abc");
        assert_eq!(presented_key(Some(b"k"), Some(b"Bearer abc")), b"k");
        assert_eq!(presented_key(None, Some(b"Basic abc")), b"");
    }
}
