//! The keys file's format (`auth.keys_file`, SPEC §8): `[[keys]]` tables,
//! each a plain key or its SHA-256, a tenant, and optionally a project, a
//! topic and rate limits; parsed into a [`Snapshot`], every mistake named
//! with its place in the file.

use anyhow::{bail, Context as _};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{Entry, KeySpec, Snapshot};
use crate::config::KeyLimits;

impl Snapshot {
    /// Parses a keys file's text; keys without limits of their own get
    /// `defaults`.
    pub fn parse(text: &str, defaults: KeyLimits) -> anyhow::Result<Snapshot> {
        Self::parse_named(text, "keys file", defaults)
    }

    /// [`Snapshot::parse`], naming the file `name` in errors, each on one
    /// line with the place: `keys.toml:4:11: ...` or `keys.toml: keys[2]: ...`.
    pub fn parse_named(text: &str, name: &str, defaults: KeyLimits) -> anyhow::Result<Snapshot> {
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
    fn into_entry(self, defaults: KeyLimits) -> anyhow::Result<Entry> {
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

/// What to do when the keys file is not there: the first thing a newcomer
/// who runs plain `sluice` sees.
pub fn missing_file_hint(path: &std::path::Path) -> String {
    format!(
        "keys file {} not found (auth.keys_file): create it (keys.example.toml shows the format), point --keys-file or SLUICE_AUTH_KEYS_FILE at one, or set auth.postgres_url; to try sluice with no keys and no Kafka, run `sluice --dev`",
        path.display()
    )
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

#[cfg(test)]
mod tests {
    use super::super::tests::FILE;
    use super::*;
    use crate::tenancy::keys::AuthError;

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
}
