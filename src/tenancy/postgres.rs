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
//!
//! `auth.postgres_url` (libpq's URL, `sslmode` and `sslrootcert`) is
//! parsed by [`crate::config::urls`]; here it is connected to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::urls::{PostgresTarget, SslMode, SMALL_CALL_DEADLINE};
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
/// How much longer than the statement timeout the client waits for an
/// answer before it calls the server stalled.
pub const CALL_DEADLINE_MARGIN: Duration = Duration::from_secs(2);

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

/// The loader: runs until `stop`.
pub struct Loader<'a> {
    pub target: PostgresTarget,
    pub reload_interval: Duration,
    pub store: &'a KeyStore,
    pub readiness: &'a Readiness,
    pub metrics: &'a PgKeyMetrics,
    pub stop: &'a ControlStop,
}

/// An open session: the client, and the notifications its connection
/// task forwards (the task ends, and the channel closes, with the
/// connection).
struct Session {
    client: tokio_postgres::Client,
    notifications: tokio::sync::mpsc::Receiver<()>,
}

/// `call` within `deadline`, else an error saying the server stalled.
async fn within<T, E>(
    deadline: Duration,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.context(what),
        Err(_) => Err(anyhow::anyhow!(
            "{what}: no answer within {} ms (PostgreSQL stalled)",
            deadline.as_millis()
        )),
    }
}

impl Loader<'_> {
    pub fn run(&self) {
        let target = self.target.describe();
        self.metrics.configured.store(true, Relaxed);
        self.readiness.set_keys_pending(Some(format!(
            "API keys not loaded from PostgreSQL {target} yet"
        )));
        let setup = tls_connector(&self.target).and_then(|tls| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the PostgreSQL thread's runtime")?;
            Ok((tls, runtime))
        });
        let (tls, runtime) = match setup {
            Ok(setup) => setup,
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
            let session = runtime.block_on(async {
                let mut session = self.connect(tls.clone()).await?;
                self.follow(&mut session, &mut backoff).await
            });
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

    /// Connects and starts the connection's task, which forwards
    /// notifications until the connection ends.
    async fn connect(&self, tls: postgres_openssl::MakeTlsConnector) -> anyhow::Result<Session> {
        let (client, mut connection) = within(
            SMALL_CALL_DEADLINE,
            "connecting",
            self.target.config.connect(tls),
        )
        .await?;
        // One pending notification is enough: a load reads every change.
        let (sender, notifications) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(message) =
                std::future::poll_fn(|context| connection.poll_message(context)).await
            {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) =
                            sender.try_send(())
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Session {
            client,
            notifications,
        })
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
    /// Returns `Ok` only when stopped. Every call has a client-side
    /// deadline: a server that stopped answering is an error (reported as
    /// down), not a wait forever.
    async fn follow(&self, session: &mut Session, backoff: &mut Duration) -> anyhow::Result<()> {
        let setup = match self.target.statement_timeout_from_url {
            true => format!("LISTEN {CHANNEL}"),
            false => format!(
                "SET statement_timeout = {}; LISTEN {CHANNEL}",
                self.target.statement_timeout.as_millis()
            ),
        };
        within(
            SMALL_CALL_DEADLINE,
            "LISTEN",
            session.client.batch_execute(&setup),
        )
        .await?;
        self.load(&session.client).await?;
        self.metrics.up.store(true, Relaxed);
        *backoff = BACKOFF_MIN;
        tracing::info!(
            postgres = self.target.describe(),
            keys = self.metrics.keys.load(Relaxed),
            "following API keys in PostgreSQL"
        );
        let mut next_load = Instant::now() + self.reload_interval;
        let mut next_heartbeat = Instant::now() + HEARTBEAT;
        loop {
            if !self.stop.sleep(Duration::ZERO) {
                return Ok(());
            }
            let wait = next_load
                .saturating_duration_since(Instant::now())
                .min(TURN);
            let notified = match tokio::time::timeout(wait, session.notifications.recv()).await {
                Ok(Some(())) => true,
                Ok(None) => anyhow::bail!("connection closed"),
                Err(_) => false,
            };
            if notified {
                // Let a burst of changes arrive, then take them all at once.
                tokio::time::sleep(NOTIFY_SETTLE).await;
                while session.notifications.try_recv().is_ok() {}
            }
            if session.client.is_closed() {
                anyhow::bail!("connection closed");
            }
            let now = Instant::now();
            if notified || now >= next_load {
                self.load(&session.client).await?;
                next_load = Instant::now() + self.reload_interval;
                next_heartbeat = Instant::now() + HEARTBEAT;
            } else if now >= next_heartbeat {
                within(
                    SMALL_CALL_DEADLINE,
                    "heartbeat",
                    session.client.simple_query("SELECT 1"),
                )
                .await?;
                self.metrics
                    .current_at_ms
                    .store(crate::clock::now_ms(), Relaxed);
                next_heartbeat = now + HEARTBEAT;
            }
        }
    }

    /// A full load: every usable key, into a new snapshot.
    async fn load(&self, client: &tokio_postgres::Client) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = self.target.statement_timeout + CALL_DEADLINE_MARGIN;
        let columns: Vec<String> = within(
            deadline,
            "reading the api_keys table's columns",
            client.query(COLUMNS_QUERY, &[]),
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
        let query = load_query(&columns).map_err(|problem| {
            self.metrics.load_failures.fetch_add(1, Relaxed);
            anyhow::Error::new(problem)
        })?;
        let rows = match within(
            deadline,
            "loading api_keys",
            client.query(query.as_str(), &[]),
        )
        .await
        {
            Ok(rows) => rows,
            Err(error) => {
                self.metrics.load_failures.fetch_add(1, Relaxed);
                return Err(error);
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
fn entry_of(row: &tokio_postgres::Row) -> anyhow::Result<KeySpec> {
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

/// TLS as the URL's `sslmode` asks: no certificate check for `prefer`
/// and `require` (libpq's meaning: encryption against eavesdropping, not
/// against impersonation), unless `require` has an `sslrootcert`; the
/// chain checked against `sslrootcert` for `verify-ca`, and the host name
/// too for `verify-full`. Without `sslrootcert`, libpq's default file
/// (`~/.postgresql/root.crt`); `sslrootcert=system`: the system's trust
/// store (found by probing, as the vendored OpenSSL's directory is not
/// the system's).
fn tls_connector(target: &PostgresTarget) -> anyhow::Result<postgres_openssl::MakeTlsConnector> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut builder = SslConnector::builder(SslMethod::tls())?;
    let verify = match target.ssl_mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => target.root_certificate.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    if !verify {
        builder.set_verify(SslVerifyMode::NONE);
    } else {
        let default_file = std::env::var_os("HOME")
            .map(|home| std::path::Path::new(&home).join(".postgresql/root.crt"))
            .map(|path| path.display().to_string());
        match target.root_certificate.clone().or(default_file).as_deref() {
            Some("system") | None => {
                let probe = openssl_probe::probe();
                if let Some(file) = &probe.cert_file {
                    builder.set_ca_file(file)?;
                } else if let Some(dir) = probe.cert_dir.first() {
                    builder.load_verify_locations(None, Some(dir))?;
                }
            }
            Some(file) => builder.set_ca_file(file).with_context(|| {
                format!("auth.postgres_url: sslrootcert {file}: cannot read it")
            })?,
        }
    }
    let mut connector = postgres_openssl::MakeTlsConnector::new(builder.build());
    let check_host = verify && target.ssl_mode == SslMode::VerifyFull;
    connector.set_callback(move |connect, _| {
        connect.set_verify_hostname(check_host);
        Ok(())
    });
    Ok(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

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
