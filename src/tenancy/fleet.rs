//! Fleet-wide rate limits (SPEC §9, `limits.redis_url`): the instances
//! behind a load balancer share each key's usage through Redis, from a
//! control-plane thread; the event loops never touch Redis.
//!
//! Every `limits.redis_sync_interval_ms` the thread takes, per limited key,
//! what this instance admitted since the last turn, and adds it to the
//! key's fleet schedule in Redis: one GCRA "theoretical arrival time" per
//! key and dimension, advanced by a Lua script on Redis's own clock (so
//! instances' clocks need not agree). The script answers how far ahead of
//! now the fleet's schedule runs; the key's local limiter is moved there
//! ([`KeyLimiter::align_to_fleet`]), so each instance refuses once the
//! fleet as a whole has used the key's rate and burst. Between two turns an
//! instance decides alone: the fleet may admit up to one sync interval's
//! worth beyond the limit per instance, and pays it back after.
//!
//! Redis down (or slow: every call has a 1 s deadline): each instance
//! limits alone, `sluice_rate_limit_redis_up` is 0 and a warn line says so;
//! requests are served on. Usage from the outage is not sent afterwards.
//!
//! [`KeyLimiter::align_to_fleet`]: crate::tenancy::rate::KeyLimiter::align_to_fleet

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::shutdown::ControlStop;
use crate::tenancy::keys::KeyStore;
use crate::tenancy::rate::FleetView;

/// Deadline of every Redis call (connect, read, write).
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnects at most this often while Redis is down.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// A key idle here is still synced this long, so the instance keeps
/// learning the fleet's usage while its own traffic pauses.
const ACTIVE_FOR: Duration = Duration::from_secs(10);
/// Redis key prefix; the rest is the first 16 bytes of the key's SHA-256
/// in hex (never the key).
const KEY_PREFIX: &str = "sluice:rl:";

/// KEYS: the events and bytes schedules. ARGV: their increments (µs).
/// Returns how far each schedule runs ahead of Redis's now (µs). A
/// schedule lives for its lead plus 10 s.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local increment = tonumber(ARGV[i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if increment > 0 then
    tat = tat + increment
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 10000)
  end
  out[i] = tat - now
end
return out
"#;

/// What the sync reports to `/metrics`.
#[derive(Debug, Default)]
pub struct FleetMetrics {
    pub configured: AtomicBool,
    pub up: AtomicBool,
    pub syncs: AtomicU64,
    pub sync_failures: AtomicU64,
    /// Keys exchanged in the last sync.
    pub keys_synced: AtomicU64,
    /// Duration of the last sync (µs).
    pub last_sync_us: AtomicU64,
}

/// Checks `limits.redis_url`; the error never repeats the URL.
pub fn parse_url(url: &str) -> anyhow::Result<redis::Client> {
    redis::Client::open(url).map_err(|error| {
        anyhow::anyhow!("limits.redis_url is not a Redis URL ({:?})", error.kind())
    })
}

/// The sync loop; runs until `stop`.
pub struct Sync<'a> {
    pub client: redis::Client,
    pub interval: Duration,
    pub keys: &'a KeyStore,
    pub metrics: &'a FleetMetrics,
    pub stop: &'a ControlStop,
}

struct Session {
    connection: redis::Connection,
    script_sha: String,
}

impl Sync<'_> {
    pub fn run(&self) {
        crate::tenancy::rate::count_admissions_for_fleet();
        self.metrics.configured.store(true, Relaxed);
        let mut session: Option<Session> = None;
        let mut last_attempt: Option<Instant> = None;
        let mut active: AHashMap<[u8; 16], Instant> = AHashMap::new();
        let mut was_up = true;
        while self.stop.sleep(self.interval) {
            if session.is_none() && last_attempt.is_none_or(|at| at.elapsed() >= RECONNECT_INTERVAL)
            {
                last_attempt = Some(Instant::now());
                match self.connect() {
                    Ok(connected) => session = Some(connected),
                    Err(error) => self.note_down(&mut was_up, &error),
                }
            }
            let result = match session.as_mut() {
                Some(connected) => self.exchange(connected, &mut active),
                None => {
                    self.discard_admissions();
                    continue;
                }
            };
            match result {
                Ok(()) => {
                    if !was_up {
                        tracing::info!("Redis reachable; rate limits are fleet-wide again");
                    }
                    was_up = true;
                    self.metrics.up.store(true, Relaxed);
                }
                Err(error) => {
                    self.metrics.sync_failures.fetch_add(1, Relaxed);
                    session = None;
                    self.note_down(&mut was_up, &error);
                }
            }
        }
    }

    fn note_down(&self, was_up: &mut bool, error: &redis::RedisError) {
        self.metrics.up.store(false, Relaxed);
        if std::mem::replace(was_up, false) {
            // Redis errors name the failure, never the URL's password.
            tracing::warn!(
                error = %error,
                "Redis unreachable; rate limits are per instance until it is back"
            );
        }
    }

    fn connect(&self) -> redis::RedisResult<Session> {
        let mut connection = self.client.get_connection_with_timeout(REDIS_TIMEOUT)?;
        connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
        connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
        let script_sha = redis::Script::new(SCRIPT).load(&mut connection)?;
        Ok(Session {
            connection,
            script_sha,
        })
    }

    /// While Redis is down, usage is not saved up: sending it later would
    /// charge the fleet for time that has passed.
    fn discard_admissions(&self) {
        for (_, grant) in self.keys.load().grants() {
            if let Some(limiter) = &grant.limiter {
                limiter.take_admitted();
            }
        }
    }

    /// One turn: every key admitted here lately, in one pipelined round trip.
    fn exchange(
        &self,
        session: &mut Session,
        active: &mut AHashMap<[u8; 16], Instant>,
    ) -> redis::RedisResult<()> {
        let started = Instant::now();
        let snapshot = self.keys.load();
        let mut limiters = Vec::new();
        let mut pipe = redis::pipe();
        for (digest, grant) in snapshot.grants() {
            let Some(limiter) = &grant.limiter else {
                continue;
            };
            let mut id = [0u8; 16];
            id.copy_from_slice(&digest[..16]);
            let (events, bytes) = limiter.take_admitted();
            if events > 0 || bytes > 0 {
                active.insert(id, started);
            } else if active
                .get(&id)
                .is_none_or(|at| started.duration_since(*at) > ACTIVE_FOR)
            {
                continue;
            }
            let (events_us, bytes_us) = limiter.fleet_increments_us(events, bytes);
            let name = redis_key(&id);
            pipe.cmd("EVALSHA")
                .arg(&session.script_sha)
                .arg(2)
                .arg(format!("{name}:e"))
                .arg(format!("{name}:b"))
                .arg(events_us)
                .arg(bytes_us);
            limiters.push(limiter.clone());
        }
        active.retain(|_, at| started.duration_since(*at) <= ACTIVE_FOR);
        if !limiters.is_empty() {
            let views: Vec<(u64, u64)> = pipe.query(&mut session.connection)?;
            let now = Instant::now();
            for (limiter, (events_ahead_us, bytes_ahead_us)) in limiters.iter().zip(views) {
                limiter.align_to_fleet(
                    FleetView {
                        events_ahead_us,
                        bytes_ahead_us,
                    },
                    now,
                );
            }
        } else {
            redis::cmd("PING").query::<()>(&mut session.connection)?;
        }
        let metrics = self.metrics;
        metrics.syncs.fetch_add(1, Relaxed);
        metrics.keys_synced.store(limiters.len() as u64, Relaxed);
        metrics
            .last_sync_us
            .store(started.elapsed().as_micros() as u64, Relaxed);
        Ok(())
    }
}

fn redis_key(id: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(KEY_PREFIX.len() + 32);
    name.push_str(KEY_PREFIX);
    for byte in id {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_are_digest_prefixes_and_urls_are_checked_quietly() {
        assert_eq!(
            redis_key(&[0xab; 16]),
            "sluice:rl:abababababababababababababababab"
        );
        let error = parse_url("notredis://user:hunter2@host/").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(parse_url("redis://127.0.0.1:6379/").is_ok());
    }
}
