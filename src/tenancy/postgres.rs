//! API keys from PostgreSQL (SPEC §8): a control-plane thread that loads
//! the `api_keys` table into the same immutable snapshot as the keys file
//! and follows changes with LISTEN/NOTIFY. The event loops never wait on
//! PostgreSQL: they read whatever snapshot is current.
//!
//! - Connected: `LISTEN sluice_api_keys`, then a full load; a notification
//!   (the trigger in `sql/` sends one per changing statement) brings a full
//!   load within [`NOTIFY_SETTLE`]; a full load also runs every
//!   `auth.postgres_reload_interval_ms` and after every reconnect.
//! - Disconnected: the last snapshot keeps serving, `/metrics` shows its
//!   age and a warn line says so every [`STALE_WARN_INTERVAL`]; reconnects
//!   back off from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
//! - Never loaded since start: `/readyz` is 503 and unknown keys get 503
//!   (retry), not 401.

use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::health::Readiness;
use crate::shutdown::ControlStop;
use crate::tenancy::keys::{KeySpec, KeyStore};

/// The channel the `sql/` trigger notifies.
pub const CHANNEL: &str = "sluice_api_keys";
/// How long after a notification more are awaited before loading, so a
/// burst of changes costs one load.
pub const NOTIFY_SETTLE: Duration = Duration::from_millis(50);
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// While PostgreSQL is unreachable, a warn line this often.
pub const STALE_WARN_INTERVAL: Duration = Duration::from_secs(30);
/// A healthy connection is checked (`SELECT 1`) this often, so the
/// snapshot's age is true even while nothing changes.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest wait inside one turn, so a stop is seen promptly.
const TURN: Duration = Duration::from_millis(250);

/// The columns of SPEC §8's table that a load reads: without one of them
/// the table is not the one sluice documents, and the load says so.
const REQUIRED_COLUMNS: [&str; 10] = [
    "key_sha256",
    "tenant_id",
    "project_id",
    "enabled",
    "rate_events_per_sec",
    "burst_events",
    "rate_bytes_per_sec",
    "expires_at",
    "revoked_at",
    "updated_at",
];

/// Columns beyond SPEC §8 (`sql/003`), read when the table has them and
/// taken as NULL (the configured default) when it does not.
const OPTIONAL_COLUMNS: [(&str, &str); 2] = [("topic", "text"), ("burst_bytes", "bigint")];

/// The table's columns, for [`load_query`].
const COLUMNS_QUERY: &str = "SELECT column_name::text FROM information_schema.columns \
     WHERE table_name = 'api_keys' AND table_schema = ANY (current_schemas(false))";

/// A table that is not SPEC §8's: an operator's problem to fix, reported as
/// such rather than as PostgreSQL being unreachable.
#[derive(Debug)]
pub struct SchemaProblem(pub String);

impl std::fmt::Display for SchemaProblem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for SchemaProblem {}

/// The query of a full load for a table with `columns`. Every key is
/// loaded, refused ones too (disabled, expired, revoked), so that a
/// refusal here wins over the keys file's copy of the same key; a future
/// `expires_at`/`revoked_at` travels with the key and is enforced by the
/// cores from its instant.
fn load_query(columns: &[String]) -> Result<String, SchemaProblem> {
    let has = |name: &str| columns.iter().any(|column| column == name);
    if columns.is_empty() {
        return Err(SchemaProblem(
            "there is no api_keys table in the search path: apply sql/ (scripts/migrate)".into(),
        ));
    }
    let missing: Vec<&str> = REQUIRED_COLUMNS.into_iter().filter(|c| !has(c)).collect();
    if !missing.is_empty() {
        return Err(SchemaProblem(format!(
            "the api_keys table lacks column(s) {} of SPEC §8: apply sql/ (scripts/migrate)",
            missing.join(", ")
        )));
    }
    let optional = |(name, kind): (&str, &str)| {
        if has(name) {
            name.to_string()
        } else {
            format!("NULL::{kind}")
        }
    };
    let [topic, burst_bytes] = OPTIONAL_COLUMNS.map(optional);
    Ok(format!(
        "SELECT key_sha256, tenant_id, project_id, {topic}, \
         rate_events_per_sec::bigint, burst_events::bigint, rate_bytes_per_sec, {burst_bytes}, \
         (extract(epoch FROM least(expires_at, revoked_at)) * 1000)::float8, enabled \
         FROM api_keys"
    ))
}

/// What the loader reports to `/metrics`.
#[derive(Debug, Default)]
pub struct PgKeyMetrics {
    pub configured: AtomicBool,
    pub up: AtomicBool,
    /// When the snapshot was last known to match PostgreSQL (epoch ms; 0: never).
    pub current_at_ms: AtomicU64,
    pub keys: AtomicU64,
    pub loads: AtomicU64,
    pub load_failures: AtomicU64,
    pub rows_skipped: AtomicU64,
    /// Duration of the last full load (µs).
    pub last_load_us: AtomicU64,
}

impl PgKeyMetrics {
    /// Seconds since the snapshot was last known current; `None` when
    /// PostgreSQL is not configured or was never loaded.
    pub fn snapshot_age_seconds(&self, now_ms: u64) -> Option<f64> {
        let at = self.current_at_ms.load(Relaxed);
        (self.configured.load(Relaxed) && at != 0)
            .then(|| now_ms.saturating_sub(at) as f64 / 1000.0)
    }
}

/// Parses `auth.postgres_url` with our timeouts added where it sets none;
/// the error never repeats the URL (it may hold a password).
pub fn parse_url(url: &str) -> anyhow::Result<postgres::Config> {
    let mut config = postgres::Config::from_str(url)
        .map_err(|error| anyhow::anyhow!("auth.postgres_url is not a PostgreSQL URL: {error}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("sluice");
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    Ok(config)
}

/// `host:port/dbname` for logs: never the user's password.
pub fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{dbname}")
}

/// The loader: runs until `stop`.
pub struct Loader<'a> {
    pub config: postgres::Config,
    pub reload_interval: Duration,
    pub store: &'a KeyStore,
    pub readiness: &'a Readiness,
    pub metrics: &'a PgKeyMetrics,
    pub stop: &'a ControlStop,
}

impl Loader<'_> {
    pub fn run(&self) {
        let target = describe(&self.config);
        self.metrics.configured.store(true, Relaxed);
        self.readiness.set_keys_pending(Some(format!(
            "API keys not loaded from PostgreSQL {target} yet"
        )));
        let tls = match tls_connector() {
            Ok(tls) => tls,
            Err(error) => {
                let reason = format!("PostgreSQL TLS setup failed: {error:#}");
                tracing::error!(%reason, "API keys will not load");
                self.readiness.set_keys_pending(Some(reason));
                return;
            }
        };
        let mut backoff = BACKOFF_MIN;
        let mut last_warn: Option<Instant> = None;
        loop {
            let session = self
                .config
                .connect(tls.clone())
                .context("connecting")
                .and_then(|mut client| self.follow(&mut client, &mut backoff));
            if let Err(error) = session {
                self.metrics.up.store(false, Relaxed);
                self.report_down(&target, &error, &mut last_warn);
            }
            if !self.stop.sleep(backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn report_down(&self, target: &str, error: &anyhow::Error, last_warn: &mut Option<Instant>) {
        let error_is_schema = |_: &String| error.downcast_ref::<SchemaProblem>().is_some();
        // The error text of postgres never holds the password.
        let error = format!("{error:#}");
        let age = self.metrics.snapshot_age_seconds(crate::clock::now_ms());
        if age.is_none() {
            self.readiness.set_keys_pending(Some(format!(
                "API keys not loaded from PostgreSQL {target} yet: {error}"
            )));
        }
        if last_warn.is_none_or(|at| at.elapsed() >= STALE_WARN_INTERVAL) {
            *last_warn = Some(Instant::now());
            let schema = error_is_schema(&error);
            match age {
                _ if schema => tracing::warn!(
                    postgres = target,
                    problem = %error,
                    snapshot_age_seconds = age.map(|age| age as u64),
                    "PostgreSQL's api_keys table does not match SPEC §8; API keys from it are not loaded"
                ),
                Some(age) => tracing::warn!(
                    postgres = target,
                    %error,
                    snapshot_age_seconds = age as u64,
                    "PostgreSQL unreachable; serving API keys from the last snapshot"
                ),
                None => tracing::warn!(
                    postgres = target,
                    %error,
                    "PostgreSQL unreachable and API keys never loaded; not ready"
                ),
            }
        }
    }

    /// One connection's life: listen, load, then follow notifications.
    /// Returns `Ok` only when stopped.
    fn follow(&self, client: &mut postgres::Client, backoff: &mut Duration) -> anyhow::Result<()> {
        client
            .batch_execute(&format!("SET statement_timeout = '30s'; LISTEN {CHANNEL}"))
            .context("LISTEN")?;
        self.load(client)?;
        self.metrics.up.store(true, Relaxed);
        *backoff = BACKOFF_MIN;
        tracing::info!(
            postgres = describe(&self.config),
            keys = self.metrics.keys.load(Relaxed),
            "following API keys in PostgreSQL"
        );
        let mut next_load = Instant::now() + self.reload_interval;
        let mut next_heartbeat = Instant::now() + HEARTBEAT;
        loop {
            if !self.stop.sleep(Duration::ZERO) {
                return Ok(());
            }
            let now = Instant::now();
            let wait = next_load.saturating_duration_since(now).min(TURN);
            let mut notified = false;
            {
                let mut notifications = client.notifications();
                let mut waiting = notifications.timeout_iter(wait);
                if postgres::fallible_iterator::FallibleIterator::next(&mut waiting)
                    .context("waiting for notifications")?
                    .is_some()
                {
                    notified = true;
                }
            }
            if notified {
                // Let a burst of changes arrive, then take them all at once.
                std::thread::sleep(NOTIFY_SETTLE);
                let mut notifications = client.notifications();
                let mut pending = notifications.iter();
                while postgres::fallible_iterator::FallibleIterator::next(&mut pending)
                    .context("reading notifications")?
                    .is_some()
                {}
            }
            if client.is_closed() {
                anyhow::bail!("connection closed");
            }
            let now = Instant::now();
            if notified || now >= next_load {
                self.load(client)?;
                next_load = Instant::now() + self.reload_interval;
                next_heartbeat = Instant::now() + HEARTBEAT;
            } else if now >= next_heartbeat {
                client.simple_query("SELECT 1").context("heartbeat")?;
                self.metrics
                    .current_at_ms
                    .store(crate::clock::now_ms(), Relaxed);
                next_heartbeat = now + HEARTBEAT;
            }
        }
    }

    /// A full load: every usable key, into a new snapshot.
    fn load(&self, client: &mut postgres::Client) -> anyhow::Result<()> {
        let started = Instant::now();
        let columns: Vec<String> = client
            .query(COLUMNS_QUERY, &[])
            .context("reading the api_keys table's columns")?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let query = load_query(&columns).map_err(|problem| {
            self.metrics.load_failures.fetch_add(1, Relaxed);
            anyhow::Error::new(problem)
        })?;
        let rows = match client.query(query.as_str(), &[]) {
            Ok(rows) => rows,
            Err(error) => {
                self.metrics.load_failures.fetch_add(1, Relaxed);
                return Err(error).context("loading api_keys");
            }
        };
        let defaults = self.store.defaults();
        let mut entries = Vec::with_capacity(rows.len());
        let mut skipped = 0u64;
        let mut first_problem = None;
        for row in &rows {
            match entry_of(row).and_then(|spec| spec.into_entry(defaults)) {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    skipped += 1;
                    first_problem.get_or_insert(format!("{error:#}"));
                }
            }
        }
        let rebuilt = self.store.replace_postgres(entries)?;
        let now_ms = crate::clock::now_ms();
        let metrics = self.metrics;
        metrics.loads.fetch_add(1, Relaxed);
        metrics.keys.store(rows.len() as u64 - skipped, Relaxed);
        metrics.rows_skipped.store(skipped, Relaxed);
        metrics.current_at_ms.store(now_ms, Relaxed);
        metrics
            .last_load_us
            .store(started.elapsed().as_micros() as u64, Relaxed);
        self.readiness.set_keys_pending(None);
        if let Some(problem) = first_problem {
            tracing::warn!(
                skipped,
                first = problem,
                "api_keys rows skipped: not usable as keys"
            );
        }
        if rebuilt.duplicates > 0 {
            tracing::info!(
                duplicates = rebuilt.duplicates,
                "keys in both the keys file and PostgreSQL: the file's settings apply, and a refusal from either source wins"
            );
        }
        for conflict in &rebuilt.conflicts {
            tracing::warn!("{conflict}");
        }
        tracing::debug!(
            keys = rebuilt.keys,
            micros = started.elapsed().as_micros() as u64,
            "API keys loaded from PostgreSQL"
        );
        Ok(())
    }
}

/// One `api_keys` row as a key; an unusable row is an error naming why
/// (never the digest).
fn entry_of(row: &postgres::Row) -> anyhow::Result<KeySpec> {
    let digest: &[u8] = row.try_get(0)?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| anyhow::anyhow!("key_sha256 is {} bytes, not 32", digest.len()))?;
    let limit = |index: usize, name: &str| -> anyhow::Result<Option<u64>> {
        match row.try_get::<_, Option<i64>>(index)? {
            None => Ok(None),
            Some(value) => u64::try_from(value)
                .map(Some)
                .map_err(|_| anyhow::anyhow!("{name} is negative")),
        }
    };
    let refused_from: Option<f64> = row.try_get(8)?;
    Ok(KeySpec {
        digest,
        tenant_id: row.try_get(1)?,
        project_id: row.try_get(2)?,
        topic: row.try_get(3)?,
        enabled: row.try_get(9)?,
        rate_events_per_sec: limit(4, "rate_events_per_sec")?,
        burst_events: limit(5, "burst_events")?,
        rate_bytes_per_sec: limit(6, "rate_bytes_per_sec")?,
        burst_bytes: limit(7, "burst_bytes")?,
        refused_from_ms: refused_from.map_or(u64::MAX, epoch_ms_of),
    })
}

/// A timestamp in epoch ms as PostgreSQL computed it (possibly ±infinity).
fn epoch_ms_of(value: f64) -> u64 {
    if value.is_nan() || value <= 0.0 {
        0
    } else if value >= u64::MAX as f64 {
        u64::MAX
    } else {
        value as u64
    }
}

/// TLS for `sslmode=prefer|require` URLs, verifying the server against
/// the system's trust store (found by probing, as the vendored OpenSSL's
/// built-in directory is not the system's).
fn tls_connector() -> anyhow::Result<postgres_openssl::MakeTlsConnector> {
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())?;
    let probe = openssl_probe::probe();
    if let Some(file) = &probe.cert_file {
        builder.set_ca_file(file)?;
    } else if let Some(dir) = probe.cert_dir.first() {
        builder.load_verify_locations(None, Some(dir))?;
    }
    Ok(postgres_openssl::MakeTlsConnector::new(builder.build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_described_without_their_password() {
        let config = parse_url("postgresql://sluice:hunter2@db.internal:6432/keys").unwrap();
        let shown = describe(&config);
        assert_eq!(shown, "db.internal:6432/keys");
        assert!(!shown.contains("hunter2"));
        let error = parse_url("postgresql://sluice:hunter2@db:notaport/keys")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn the_load_reads_optional_columns_only_where_they_exist() {
        let spec: Vec<String> = REQUIRED_COLUMNS.iter().map(|c| c.to_string()).collect();
        let query = load_query(&spec).unwrap();
        assert!(
            query.contains("NULL::text") && query.contains("NULL::bigint"),
            "{query}"
        );
        let mut all = spec.clone();
        all.extend(["topic".to_string(), "burst_bytes".to_string()]);
        let query = load_query(&all).unwrap();
        assert!(!query.contains("NULL::"), "{query}");
        let problem = load_query(&spec[1..]).unwrap_err().to_string();
        assert!(problem.contains("lacks column(s) key_sha256"), "{problem}");
        assert!(load_query(&[])
            .unwrap_err()
            .to_string()
            .contains("no api_keys table"));
    }

    #[test]
    fn timestamps_from_postgres_map_to_epoch_ms() {
        assert_eq!(epoch_ms_of(f64::INFINITY), u64::MAX);
        assert_eq!(epoch_ms_of(f64::NEG_INFINITY), 0);
        assert_eq!(epoch_ms_of(1_700_000_000_123.0), 1_700_000_000_123);
    }
}
