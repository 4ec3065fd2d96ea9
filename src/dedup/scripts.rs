//! The Lua scripts the fleet dedup thread (`fleet.rs`) runs in Redis,
//! each run whole by Redis and pipelined by a round: they claim, store
//! and release event keys (and an `Idempotency-Key` request's markers),
//! and keep each tenant's sorted set of live keys within its cap
//! (`dedup.redis_keys_per_tenant_max`), deleting only that tenant's
//! oldest keys: at most 64 a call, so that lowering the cap never has
//! one call delete a tenant's whole excess at once (later claims delete
//! the rest).

/// KEYS: the event's key, its tenant's index. ARGV: this instance's
/// token, the pending TTL (ms), the tenant's cap, the window (ms), the
/// event id (the index's member), the tenant's key prefix. Returns the
/// key's value if it had one; else claims it, and returns nil, or how
/// many of the tenant's oldest keys went to keep it within its cap.
pub const CLAIM: &str = r"
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]) * 1000)
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local over = math.min(redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3]), 64)
if over <= 0 then return false end
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, over)) do
  if removed < over and member ~= ARGV[5] then
    redis.call('ZREM', KEYS[2], member)
    redis.call('DEL', ARGV[6] .. member)
    removed = removed + 1
  end
end
return removed
";

/// KEYS: the event's key, its tenant's index. ARGV: the window (ms), the
/// event id. Marks the event stored for the window.
pub const STORE: &str = r"
redis.call('SET', KEYS[1], 'S', 'PX', ARGV[1])
local time = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(time[1]) * 1000000 + tonumber(time[2]), ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 0
";

/// KEYS: the event's key, its tenant's index. ARGV: this instance's
/// token, the event id. Compare-and-delete: the claim is released only if
/// it is still ours.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS: a request's payload marker, its operation marker (SPEC §12:
/// `handoff::Markers`), its tenant's index. ARGV: this instance's token,
/// the pending TTL (ms), the tenant's cap, the window (ms), the payload
/// marker's member, the operation marker's member, the tenant's key
/// prefix. Returns the payload marker's value if it has one (`S`: an
/// identical retry; `P…`: in flight); else `R` if the operation marker is
/// stored (the key was used for another payload), or its value if it is
/// pending; else claims both (as [`CLAIM`] claims an event, cap
/// included) and returns nil or how many of the tenant's oldest keys went.
pub const MARK: &str = r"
local payload = redis.call('GET', KEYS[1])
if payload then return payload end
local operation = redis.call('GET', KEYS[2])
if operation == 'S' then return 'R' end
if operation then return operation end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]) * 1000)
redis.call('ZADD', KEYS[3], now, ARGV[5], now, ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local over = math.min(redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[3]), 64)
if over <= 0 then return false end
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, over + 1)) do
  if removed < over and member ~= ARGV[5] and member ~= ARGV[6] then
    redis.call('ZREM', KEYS[3], member)
    redis.call('DEL', ARGV[7] .. member)
    removed = removed + 1
  end
end
return removed
";

/// The scripts, by their SHA1 (loaded at each connect).
pub(super) struct Scripts {
    pub(super) claim: redis::Script,
    pub(super) store: redis::Script,
    pub(super) release: redis::Script,
    pub(super) mark: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            claim: redis::Script::new(CLAIM),
            store: redis::Script::new(STORE),
            release: redis::Script::new(RELEASE),
            mark: redis::Script::new(MARK),
        }
    }

    pub(super) fn load(&self, connection: &mut redis::Connection) -> redis::RedisResult<()> {
        for script in [&self.claim, &self.store, &self.release, &self.mark] {
            script.load(connection)?;
        }
        Ok(())
    }
}
