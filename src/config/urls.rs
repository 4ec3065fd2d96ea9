//! The URLs of the configuration, parsed: `auth.postgres_url` as libpq
//! reads it (`sslmode` and `sslrootcert` included, our timeouts added),
//! and the Redis URLs (`limits.redis_url`, `dedup.redis_url`). Checked
//! here when the configuration loads, and used by the threads that
//! connect. No error repeats a URL: it may hold a password.

use std::str::FromStr as _;
use std::time::Duration;

/// The deadline of the small calls to PostgreSQL (connect, LISTEN, the
/// heartbeat): a healthy server answers them in milliseconds.
pub const SMALL_CALL_DEADLINE: Duration = Duration::from_secs(5);

/// Checks the Redis URL of the setting `key`.
pub fn parse_redis_url(key: &str, url: &str) -> anyhow::Result<redis::Client> {
    redis::Client::open(url)
        .map_err(|error| anyhow::anyhow!("{key} is not a Redis URL ({:?})", error.kind()))
}

/// How TLS is used, as libpq's `sslmode` says (default `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, else plaintext; the certificate is
    /// not checked. libpq's `allow` is read as this (it differs only in
    /// trying plaintext first).
    Prefer,
    /// TLS; the certificate is not checked unless `sslrootcert` is given
    /// (then as `verify-ca`, as libpq does).
    Require,
    /// TLS, the certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

/// Where and how to reach PostgreSQL, parsed from `auth.postgres_url`.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// `sslrootcert`: a CA file, or `system` for the system's trust store
    /// (libpq's default file `~/.postgresql/root.crt` when absent).
    pub root_certificate: Option<String>,
    /// The server-side `statement_timeout`: the URL's
    /// (`options=-c statement_timeout=5s`), else
    /// [`STATEMENT_TIMEOUT_DEFAULT`]. A load also waits at most this plus
    /// a margin on the client side, so a server that stopped answering
    /// (its socket still open) is found out.
    pub statement_timeout: Duration,
    /// Whether the URL set it (then sluice does not).
    pub statement_timeout_from_url: bool,
}

/// `statement_timeout` when the URL sets none.
pub const STATEMENT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Parses `auth.postgres_url` with our timeouts added where it sets none;
/// the error never repeats the URL (it may hold a password). `sslmode`
/// and `sslrootcert` follow libpq: `tokio-postgres` knows three of the six
/// modes, so both are read here and taken out of the URL.
pub fn parse_postgres_url(url: &str) -> anyhow::Result<PostgresTarget> {
    let (url, ssl_mode, root_certificate) = take_tls_parameters(url)?;
    let mut config = tokio_postgres::Config::from_str(&url)
        .map_err(|error| anyhow::anyhow!("auth.postgres_url is not a PostgreSQL URL: {error}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(SMALL_CALL_DEADLINE);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("sluice");
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let from_url = config.get_options().and_then(statement_timeout_of);
    Ok(PostgresTarget {
        config,
        ssl_mode,
        root_certificate,
        statement_timeout: from_url.unwrap_or(STATEMENT_TIMEOUT_DEFAULT),
        statement_timeout_from_url: from_url.is_some(),
    })
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query.
fn take_tls_parameters(url: &str) -> anyhow::Result<(String, SslMode, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), SslMode::Prefer, None));
    };
    let mut ssl_mode = SslMode::Prefer;
    let mut root_certificate = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", value)) => {
                ssl_mode = match value {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => anyhow::bail!(
                        "auth.postgres_url: sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                    ),
                }
            }
            Some(("sslrootcert", value)) => root_certificate = Some(percent_decode(value)),
            _ => kept.push(pair),
        }
    }
    let url = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    Ok((url, ssl_mode, root_certificate))
}

/// `%XX` sequences decoded (a file path in a URL).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `statement_timeout` from libpq `options` (`-c statement_timeout=5s`,
/// `--statement_timeout=5s`), in PostgreSQL's units (a bare number is
/// milliseconds). `0` (no timeout) and unreadable values give `None`.
fn statement_timeout_of(options: &str) -> Option<Duration> {
    let (_, setting) = options.split_once("statement_timeout=")?;
    let setting = setting.split_whitespace().next()?.trim_matches('\'');
    let digits = setting
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(setting.len());
    let value: u64 = setting[..digits].parse().ok()?;
    let millis = match setting[digits..].trim() {
        "" | "ms" => value,
        "s" => value.saturating_mul(1_000),
        "min" => value.saturating_mul(60_000),
        "h" => value.saturating_mul(3_600_000),
        "d" => value.saturating_mul(86_400_000),
        _ => return None,
    };
    (millis > 0).then(|| Duration::from_millis(millis))
}

impl PostgresTarget {
    /// `host:port/dbname` for logs: never the user's password.
    pub fn describe(&self) -> String {
        let config = &self.config;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres");
        format!("{host}:{port}/{dbname}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_described_without_their_password() {
        let target =
            parse_postgres_url("postgresql://sluice:hunter2@db.internal:6432/keys").unwrap();
        let shown = target.describe();
        assert_eq!(shown, "db.internal:6432/keys");
        assert!(!shown.contains("hunter2"));
        let error = parse_postgres_url("postgresql://sluice:hunter2@db:notaport/keys")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn sslmode_and_statement_timeout_follow_libpq() {
        let target = parse_postgres_url("postgresql://u@h/db").unwrap();
        assert_eq!(target.ssl_mode, SslMode::Prefer, "libpq's default");
        assert_eq!(target.statement_timeout, STATEMENT_TIMEOUT_DEFAULT);
        for (mode, expected) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let url = format!(
                "postgresql://u@h/db?sslmode={mode}&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3"
            );
            let target = parse_postgres_url(&url).unwrap();
            assert_eq!(target.ssl_mode, expected, "{mode}");
            assert_eq!(target.root_certificate.as_deref(), Some("/tmp/ca.pem"));
            assert_eq!(
                target.config.get_connect_timeout(),
                Some(&Duration::from_secs(3))
            );
        }
        assert!(parse_postgres_url("postgresql://u@h/db?sslmode=sometimes").is_err());
        for (options, millis) in [
            ("-c%20statement_timeout%3D5s", Some(5_000)),
            ("-c%20statement_timeout%3D1500", Some(1_500)),
            ("-c%20statement_timeout%3D2min", Some(120_000)),
            ("-c%20statement_timeout%3D0", None),
        ] {
            let target =
                parse_postgres_url(&format!("postgresql://u@h/db?options={options}")).unwrap();
            assert_eq!(
                target
                    .statement_timeout_from_url
                    .then_some(target.statement_timeout.as_millis() as u64),
                millis,
                "{options}"
            );
        }
    }

    #[test]
    fn redis_urls_are_checked_quietly() {
        let error =
            parse_redis_url("limits.redis_url", "notredis://user:hunter2@host/").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(parse_redis_url("limits.redis_url", "redis://127.0.0.1:6379/").is_ok());
    }
}
