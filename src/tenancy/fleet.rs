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
//! A turn is one round trip whatever the number of keys: script calls of
//! up to 1,000 keys each, sent as one pipeline, every Redis key under the
//! one hash tag `{rl}` (one slot on Redis Cluster, no CROSSSLOT). The first
//! call also registers this instance, so each turn counts the instances
//! sharing the limits ([`crate::tenancy::rate::set_fleet_instances`]).
//!
//! A key's first burst: until an instance has applied the fleet's
//! schedule for a key once, it admits only `burst / N` of it (N: the
//! instances counted), so N instances meeting a new key at once admit
//! about one burst between them, not N. The bound's slack: an instance
//! that has not yet counted the others (its first turn, within one sync
//! interval of its start) admits the whole burst, and each instance may
//! still add one sync interval of the sustained rate.
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
/// in hex (never the key). Every key of the rate-limit state carries the
/// one hash tag `{rl}`, so that on Redis Cluster they share a slot and one
/// script call may touch many of them (no CROSSSLOT): the state is small
/// (two short strings per active API key) and one node serves it.
const KEY_PREFIX: &str = "sluice:{rl}:";
/// The instances sharing the limits: a sorted set of instance ids scored
/// by their last sync (µs on Redis's clock).
const INSTANCES_KEY: &str = "sluice:{rl}:instances";
/// API keys per script call; a sync's calls go in one pipeline (one round
/// trip), and no single call holds Redis for long.
const KEYS_PER_CALL: usize = 1_000;

/// KEYS[1]: the instances set; ARGV[1]: this instance's id ("" in all but
/// a sync's first call), ARGV[2]: how long an instance counts after its
/// last sync (µs). Then KEYS[i], ARGV[i] for i >= 2: each schedule (the
/// events and bytes of each API key) and its increment (µs). Returns the
/// instances counted (0 without an id), then how far each schedule runs
/// ahead of Redis's now (µs). A schedule lives for its lead plus 10 s.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {0}
if ARGV[1] ~= '' then
  local window = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) * 2)
  out[1] = redis.call('ZCARD', KEYS[1])
end
for i = 2, #KEYS do
  local increment = tonumber(ARGV[i + 1])
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
    /// Instances sharing the limits, as the last sync counted them.
    pub instances: AtomicU64,
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

/// This process's id in the instances set.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

impl Sync<'_> {
    pub fn run(&self) {
        crate::tenancy::rate::count_admissions_for_fleet();
        self.metrics.configured.store(true, Relaxed);
        let mut session: Option<Session> = None;
        let mut last_attempt: Option<Instant> = None;
        let mut active: AHashMap<[u8; 16], Instant> = AHashMap::new();
        let mut was_up = true;
        let instance = instance_id();
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
                Some(connected) => self.exchange(connected, &instance, &mut active),
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
        // Limits are per instance now: new keys get their whole burst.
        crate::tenancy::rate::set_fleet_instances(1);
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

    /// One turn, one round trip: this instance's presence, and every key
    /// admitted here lately (or refused on a shared burst), in script
    /// calls of [`KEYS_PER_CALL`] keys sent as one pipeline.
    fn exchange(
        &self,
        session: &mut Session,
        instance: &str,
        active: &mut AHashMap<[u8; 16], Instant>,
    ) -> redis::RedisResult<()> {
        let started = Instant::now();
        let snapshot = self.keys.load();
        let mut limiters = Vec::new();
        let mut increments = Vec::new();
        for (digest, grant) in snapshot.grants() {
            let Some(limiter) = &grant.limiter else {
                continue;
            };
            let mut id = [0u8; 16];
            id.copy_from_slice(&digest[..16]);
            let (events, bytes) = limiter.take_admitted();
            if events > 0 || bytes > 0 || limiter.wants_fleet_view() {
                active.insert(id, started);
            } else if active
                .get(&id)
                .is_none_or(|at| started.duration_since(*at) > ACTIVE_FOR)
            {
                continue;
            }
            increments.push((id, limiter.fleet_increments_us(events, bytes)));
            limiters.push(limiter.clone());
        }
        active.retain(|_, at| started.duration_since(*at) <= ACTIVE_FOR);
        let mut pipe = redis::pipe();
        // At least one call: it registers this instance.
        let chunks: Vec<&[_]> = match increments.is_empty() {
            true => vec![&[]],
            false => increments.chunks(KEYS_PER_CALL).collect(),
        };
        for (index, chunk) in chunks.into_iter().enumerate() {
            let call = pipe.cmd("EVALSHA");
            call.arg(&session.script_sha)
                .arg(1 + 2 * chunk.len())
                .arg(INSTANCES_KEY);
            for (id, _) in chunk {
                let name = redis_key(id);
                call.arg(format!("{name}:e")).arg(format!("{name}:b"));
            }
            call.arg(if index == 0 { instance } else { "" })
                .arg(ACTIVE_FOR.as_micros() as u64);
            for (_, (events_us, bytes_us)) in chunk {
                call.arg(*events_us).arg(*bytes_us);
            }
        }
        let answers: Vec<Vec<u64>> = pipe.query(&mut session.connection)?;
        let now = Instant::now();
        let instances = answers.first().and_then(|first| first.first()).copied();
        crate::tenancy::rate::set_fleet_instances(instances.unwrap_or(1));
        let aheads = answers.iter().flat_map(|answer| answer.iter().skip(1));
        let mut aheads = aheads.copied();
        for limiter in &limiters {
            let (Some(events_ahead_us), Some(bytes_ahead_us)) = (aheads.next(), aheads.next())
            else {
                break;
            };
            limiter.align_to_fleet(
                FleetView {
                    events_ahead_us,
                    bytes_ahead_us,
                },
                now,
            );
        }
        let metrics = self.metrics;
        metrics.syncs.fetch_add(1, Relaxed);
        metrics.keys_synced.store(limiters.len() as u64, Relaxed);
        metrics.instances.store(instances.unwrap_or(1), Relaxed);
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
    fn redis_keys_are_digest_prefixes_under_one_hash_tag_and_urls_are_checked_quietly() {
        assert_eq!(
            redis_key(&[0xab; 16]),
            "sluice:{rl}:abababababababababababababababab"
        );
        let error = parse_url("notredis://user:hunter2@host/").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(parse_url("redis://127.0.0.1:6379/").is_ok());
    }
}
