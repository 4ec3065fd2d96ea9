//! `[auth]`: where API keys come from (the keys file, PostgreSQL) and
//! where a request may present one.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of API keys; reloaded on change and on SIGHUP.
    pub keys_file: PathBuf,
    /// How often the keys file is checked for changes.
    pub reload_interval_ms: u64,
    /// PostgreSQL holding the `api_keys` table (SPEC §8), e.g.
    /// `postgresql://sluice@db.internal/sluice`; empty: keys come only from
    /// the file. Masked wherever it is shown: it may hold a password.
    pub postgres_url: Secret,
    /// Full reload from PostgreSQL this often, besides LISTEN/NOTIFY.
    pub postgres_reload_interval_ms: u64,
    /// Accept the key as the `api_key` query parameter of the event routes
    /// (for `navigator.sendBeacon`, which cannot set headers). Off by
    /// default: a key in a URL ends up in access logs.
    pub query_key: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys_file: PathBuf::from("keys.toml"),
            reload_interval_ms: 1_000,
            postgres_url: Secret::default(),
            postgres_reload_interval_ms: 60_000,
            query_key: false,
        }
    }
}
