//! Fleet-wide rate limits (SPEC §9, `limits.redis_url`): the instances
//! behind a load balancer share each key's rate and burst through Redis,
//! from a control-plane thread; the event loops never touch Redis.
//!
//! Redis keeps one GCRA schedule ("theoretical arrival time") per key and
//! dimension, on Redis's own clock (instances' clocks need not agree).
//! Instances *lease* from it: every `limits.redis_sync_interval_ms` this
//! thread asks, for each key asked for here lately, for a lease sized from
//! that demand (twice it, at most the burst); a Lua script grants as much
//! as the schedule's tolerance allows and advances the schedule by it. The
//! event loops admit against the lease ([`KeyLimiter`]): the fleet as a
//! whole admits no more than the schedule, except for allowances. Before
//! its first lease for a key an instance may admit `burst / N` (N: the
//! instances counted, each turn registering this one), charged whole to
//! the schedule at the next turn. So N instances meeting a new or long
//! idle key at once admit at most `burst x (2N - 1) / N` (one burst of
//! leases plus the others' allowances not yet charged), where each used
//! to admit a whole burst (N x burst). A new instance, before its first
//! turn has counted the others, takes a whole burst as its allowance.
//!
//! A turn is one round trip whatever the number of keys: script calls of
//! up to 1,000 keys each, sent as one pipeline, every Redis key under the
//! one hash tag `{rl}` (one slot on Redis Cluster, no CROSSSLOT).
//!
//! Redis down (or slow: every call has a 1 s deadline): each instance
//! limits alone on its own schedule (no leases), `sluice_rate_limit_redis_up`
//! is 0 and a warn line says so; requests are served on. When Redis is
//! back every key starts again from an allowance.
//!
//! [`KeyLimiter`]: crate::tenancy::rate::KeyLimiter

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::shutdown::ControlStop;
use crate::tenancy::keys::KeyStore;
use crate::tenancy::rate::{LeaseGrant, LeaseRequest};

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
/// last sync (µs). Then for each KEYS[i], i >= 2 (a schedule: the events
/// or bytes of an API key), three ARGV: the charge (allowance this
/// instance spent before its lease), the lease asked for, and the
/// schedule's tolerance (the burst), all in µs of schedule. The charge is
/// added whatever it does to the schedule (the events were admitted);
/// the lease is granted as far as the tolerance allows. Returns the
/// instances counted (0 without an id), then for each schedule the lease
/// granted and how far the schedule runs ahead of Redis's now. A schedule
/// lives for its lead plus 10 s.
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
  local base = 2 + (i - 2) * 3
  local charge = tonumber(ARGV[base + 1])
  local request = tonumber(ARGV[base + 2])
  local tolerance = tonumber(ARGV[base + 3])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tat = tat + charge
  local room = tolerance - (tat - now)
  if room < 0 then room = 0 end
  local grant = math.min(request, room)
  tat = tat + grant
  if tat > now then
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 10000)
  end
  out[#out + 1] = grant
  out[#out + 1] = tat - now
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
        crate::tenancy::rate::set_fleet_mode(true);
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
                None => continue,
            };
            match result {
                Ok(()) => {
                    if !was_up {
                        tracing::info!("Redis reachable; rate limits are fleet-wide again");
                        self.reset_leases();
                        crate::tenancy::rate::set_fleet_mode(true);
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
        // Limits are per instance now: no leases, the whole burst. The
        // count starts again, so the first turn back re-shares allowances.
        crate::tenancy::rate::set_fleet_instances(1);
        self.metrics.instances.store(1, Relaxed);
        crate::tenancy::rate::set_fleet_mode(false);
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

    /// Every key starts from an allowance again (after an outage, or a
    /// failed turn whose grants never arrived).
    fn reset_leases(&self) {
        for (_, grant) in self.keys.load().grants() {
            if let Some(limiter) = &grant.limiter {
                limiter.reset_lease();
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
        let mut requests = Vec::new();
        for (digest, grant) in snapshot.grants() {
            let Some(limiter) = &grant.limiter else {
                continue;
            };
            let mut id = [0u8; 16];
            id.copy_from_slice(&digest[..16]);
            if limiter.has_demand() {
                active.insert(id, started);
            } else if active
                .get(&id)
                .is_none_or(|at| started.duration_since(*at) > ACTIVE_FOR)
            {
                // Out of the exchange (idle here): what it held has aged
                // in Redis; it starts again from an allowance.
                if active.remove(&id).is_some() {
                    limiter.reset_lease();
                }
                continue;
            }
            requests.push((id, limiter.lease_requests()));
            limiters.push(limiter.clone());
        }
        let mut pipe = redis::pipe();
        // At least one call: it registers this instance.
        let chunks: Vec<&[_]> = match requests.is_empty() {
            true => vec![&[]],
            false => requests.chunks(KEYS_PER_CALL).collect(),
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
            for (_, (events, bytes)) in chunk {
                for LeaseRequest {
                    charge_us,
                    request_us,
                    tolerance_us,
                } in [events, bytes]
                {
                    call.arg(*charge_us).arg(*request_us).arg(*tolerance_us);
                }
            }
        }
        let answers: Vec<Vec<u64>> = pipe.query(&mut session.connection)?;
        let now = Instant::now();
        let instances = answers.first().and_then(|first| first.first()).copied();
        let counted = instances.unwrap_or(1).max(1);
        if counted != self.metrics.instances.swap(counted, Relaxed) {
            // The allowance of keys not in the exchange is a share of the
            // burst among the instances: recount it.
            crate::tenancy::rate::set_fleet_instances(counted);
            for (digest, grant) in snapshot.grants() {
                let mut id = [0u8; 16];
                id.copy_from_slice(&digest[..16]);
                if let (Some(limiter), false) = (&grant.limiter, active.contains_key(&id)) {
                    limiter.reset_lease();
                }
            }
        }
        let mut grants = answers
            .iter()
            .flat_map(|answer| answer.iter().skip(1).copied());
        let mut next = || LeaseGrant {
            granted_us: grants.next().unwrap_or(0),
            ahead_us: grants.next().unwrap_or(0),
        };
        for limiter in &limiters {
            let (events, bytes) = (next(), next());
            limiter.add_leases(events, bytes, now);
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
    fn redis_keys_are_digest_prefixes_under_one_hash_tag() {
        assert_eq!(
            redis_key(&[0xab; 16]),
            "sluice:{rl}:abababababababababababababababab"
        );
    }
}
