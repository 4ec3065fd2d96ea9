//! Rebuilding the key snapshot off the data path: from the keys file (at
//! start, on a change seen by the control plane's poll, on SIGHUP) and
//! from PostgreSQL's loads, each source's keys kept so that reloading one
//! leaves the others' keys as they were. A failed reload keeps the old
//! snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::file::missing_file_hint;
use super::{digest_prefix, Entry, KeyStore, Snapshot};
use crate::config::KeyLimits;

/// Each source's keys as last loaded.
#[derive(Default)]
pub(super) struct Sources {
    file: Vec<Entry>,
    /// `None`: PostgreSQL is not configured, or never loaded yet.
    postgres: Option<Vec<Entry>>,
    postgres_configured: bool,
}

/// What tells a changed keys file from the one last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
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
        defaults: KeyLimits,
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

    /// Reloads when the file's modification time, length or inode changed.
    /// Returns `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<Rebuilt>> {
        let path = self.path.as_ref()?;
        let now = stamp(path);
        let changed = *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) != now;
        changed.then(|| self.reload())
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

#[cfg(test)]
mod tests {
    use super::super::tests::{spec, FILE};
    use super::*;
    use crate::tenancy::keys::AuthError;

    /// A file caught between its truncation and its new content (an
    /// editor or `cat >` writing in place) does not drop every key.
    #[test]
    fn an_empty_file_on_reload_keeps_the_keys() {
        let dir = std::env::temp_dir().join(format!("sluice-empty-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, FILE).unwrap();
        let store = KeyStore::open(Some(path.clone()), None, KeyLimits::default(), false).unwrap();
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
        let empty = KeyStore::open(Some(path), None, KeyLimits::default(), false).unwrap();
        assert!(empty.load().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn postgres_keys_join_the_file_a_refusal_wins_and_two_tenants_are_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, FILE).unwrap();
        let store = KeyStore::open(Some(path), None, KeyLimits::default(), true).unwrap();
        assert!(
            !store.load().is_complete(),
            "incomplete until PostgreSQL loads"
        );
        assert!(store.load().authenticate(b"cs_live_abc123xyz", 0).is_ok());
        let entry = |key, tenant, enabled, refused_from_ms| {
            let mut spec = spec(key, tenant, refused_from_ms);
            spec.enabled = enabled;
            spec.into_entry(KeyLimits::default()).unwrap()
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
