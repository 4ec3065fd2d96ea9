//! Liveness and readiness state, written by the control plane and read by
//! the cores with single atomic loads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Sheds less than this far apart belong to one episode of overload.
pub const SHED_EPISODE_GAP_MS: u64 = 1_000;
/// An overload episode makes `/readyz` 503 once it has lasted this long:
/// a lone shed request (a burst) leaves the instance in the load balancer.
pub const SHED_SUSTAINED_MS: u64 = 3_000;

pub struct Readiness {
    kafka_ok: AtomicBool,
    kafka_reason: ArcSwap<String>,
    /// The latest shed request, and the first of its episode (epoch ms; 0: none).
    last_shed_ms: AtomicU64,
    episode_start_ms: AtomicU64,
    draining: AtomicBool,
    /// librdkafka's latest client-level error (a failed login, an untrusted
    /// certificate, a refused connection) and when (epoch ms): the probe's
    /// metadata failure alone says only that the broker was not reached.
    client_error: ArcSwap<Option<(u64, String)>>,
    /// When the last client-error warn line was written (epoch ms).
    client_error_logged_ms: AtomicU64,
    /// Why the API keys are not loaded yet (a configured PostgreSQL never
    /// loaded); `None`: loaded.
    keys_pending: ArcSwap<Option<String>>,
}

/// A client error is shown with an unreachable Kafka for this long.
pub const CLIENT_ERROR_SHOWN_MS: u64 = 30_000;
/// At most one "kafka client error" warn line per this long: librdkafka
/// repeats a failure on every reconnect, with varying timings in the text.
pub const CLIENT_ERROR_LOG_INTERVAL_MS: u64 = 10_000;

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            kafka_ok: AtomicBool::new(false),
            kafka_reason: ArcSwap::from_pointee("kafka not checked yet".to_string()),
            last_shed_ms: AtomicU64::new(0),
            episode_start_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            client_error: ArcSwap::from_pointee(None),
            client_error_logged_ms: AtomicU64::new(0),
            keys_pending: ArcSwap::from_pointee(None),
        }
    }
}

impl Readiness {
    /// Whether Kafka answered the last probe; checked once per request.
    pub fn kafka_ready(&self) -> bool {
        self.kafka_ok.load(Ordering::Relaxed)
    }

    /// Records a probe result, logging transitions only.
    pub fn set_kafka(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if !self.kafka_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("kafka reachable; ready");
                }
            }
            Err(reason) => {
                if self.kafka_ok.swap(false, Ordering::Relaxed)
                    || **self.kafka_reason.load() != reason
                {
                    tracing::warn!(%reason, "kafka unreachable; not ready");
                }
                self.kafka_reason.store(Arc::new(reason));
            }
        }
    }

    /// Records a client-level error from librdkafka (never holds secrets:
    /// librdkafka's messages name mechanisms and brokers, not passwords).
    /// `/readyz` always shows the latest; a warn line is written at most
    /// once per [`CLIENT_ERROR_LOG_INTERVAL_MS`], so a reconnect loop
    /// repeating the failure does not flood the log.
    pub fn note_client_error(&self, now_ms: u64, reason: String) {
        let logged = self.client_error_logged_ms.load(Ordering::Relaxed);
        if logged == 0 || now_ms.saturating_sub(logged) >= CLIENT_ERROR_LOG_INTERVAL_MS {
            self.client_error_logged_ms.store(now_ms, Ordering::Relaxed);
            tracing::warn!(%reason, "kafka client error");
        }
        self.client_error.store(Arc::new(Some((now_ms, reason))));
    }

    /// Records a shed request. Cores race here only at episode starts, and
    /// a lost race moves the start by less than the gap: no lock needed.
    pub fn note_shed(&self, now_ms: u64) {
        let last = self.last_shed_ms.swap(now_ms, Ordering::Relaxed);
        if last == 0 || now_ms.saturating_sub(last) >= SHED_EPISODE_GAP_MS {
            self.episode_start_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Whether requests have been shed for [`SHED_SUSTAINED_MS`] without a
    /// pause of [`SHED_EPISODE_GAP_MS`].
    fn overloaded(&self, now_ms: u64) -> bool {
        let last = self.last_shed_ms.load(Ordering::Relaxed);
        let start = self.episode_start_ms.load(Ordering::Relaxed);
        last != 0
            && now_ms.saturating_sub(last) < SHED_EPISODE_GAP_MS
            && last.saturating_sub(start) >= SHED_SUSTAINED_MS
    }

    /// Records whether the API keys are loaded: `Some(reason)` until a
    /// configured key source first loads (fail closed), then `None`.
    pub fn set_keys_pending(&self, reason: Option<String>) {
        self.keys_pending.store(Arc::new(reason));
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// `Ok` when ready, else why not.
    pub fn status(&self, now_ms: u64) -> Result<(), String> {
        if self.is_draining() {
            return Err("shutting down".into());
        }
        if !self.kafka_ready() {
            let mut reason = (**self.kafka_reason.load()).clone();
            if let Some((at_ms, error)) = &**self.client_error.load() {
                if now_ms.saturating_sub(*at_ms) < CLIENT_ERROR_SHOWN_MS {
                    reason.push_str("; last client error: ");
                    reason.push_str(error);
                }
            }
            return Err(reason);
        }
        if let Some(reason) = &**self.keys_pending.load() {
            return Err(reason.clone());
        }
        if self.overloaded(now_ms) {
            return Err(
                "shedding load: requests refused for lack of capacity for 3 s or more".into(),
            );
        }
        Ok(())
    }
}

/// One `GET path` to a sluice at `address` (`0.0.0.0` and `[::]` read as
/// loopback), for `sluice probe`: the status of its answer.
pub fn probe(address: &str, path: &str, timeout: std::time::Duration) -> std::io::Result<u16> {
    use std::io::{Read as _, Write as _};
    use std::net::ToSocketAddrs as _;
    let mut target = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{address}: no address")))?;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < 12 {
        match stream.read(&mut head[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    std::str::from_utf8(&head[..filled])
        .ok()
        .and_then(|text| text.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Readiness {
        let readiness = Readiness::default();
        readiness.set_kafka(Ok(()));
        readiness
    }

    #[test]
    fn client_errors_are_shown_while_not_ready() {
        let readiness = Readiness::default();
        readiness.set_kafka(Err("kafka metadata unavailable".into()));
        readiness.note_client_error(10_000, "SSL handshake failed".into());
        let reason = readiness.status(10_001).unwrap_err();
        assert!(reason.contains("SSL handshake failed"), "{reason}");
        let later = readiness
            .status(10_000 + CLIENT_ERROR_SHOWN_MS + 1)
            .unwrap_err();
        assert!(
            !later.contains("SSL"),
            "a stale client error is still shown"
        );
    }

    #[test]
    fn a_lone_shed_keeps_the_instance_ready() {
        let readiness = ready();
        readiness.note_shed(10_000);
        assert!(readiness.status(10_001).is_ok());
    }

    #[test]
    fn sustained_shedding_is_not_ready_until_it_stops() {
        let readiness = ready();
        for now in (10_000..=13_000).step_by(500) {
            readiness.note_shed(now);
        }
        assert!(readiness.status(13_001).is_err());
        assert!(
            readiness.status(14_001).is_ok(),
            "a second without a shed ends it"
        );
        readiness.note_shed(20_000);
        assert!(
            readiness.status(20_001).is_ok(),
            "a new episode starts afresh"
        );
    }
}
