//! Fleet-wide dedup through Redis (`dedup.redis_url`, SPEC §12): the
//! instances behind one load balancer share which events are stored or
//! being stored, so a retry that lands on another instance is caught too.
//!
//! One thread per instance sits between the cores and the producer
//! threads: the cores hand it their batches (as they would the
//! producers), it asks Redis about every event id of every batch that
//! arrived meanwhile in one pipelined round trip, and forwards the
//! batches with the records Redis knows marked `skip`, reporting those to
//! their cores itself (as stored duplicates, or as in flight elsewhere).
//! The event loops never wait on Redis and make no call per event.
//!
//! Per event, key `sluice:dd:<tenant>:<event id, 32 hex>`, written by
//! three scripts (each run whole by Redis, pipelined by the round):
//! - before producing, [`CLAIM`]: the key's value if it has one (`S`
//!   stored elsewhere, `P…` in flight elsewhere), else the key is set to
//!   `P<instance>` for the pending TTL and this instance claimed it. The
//!   pending TTL is `kafka.message_timeout_ms` plus 10 s: librdkafka
//!   reports every record by then.
//! - after the delivery report (sent by the core through
//!   [`FleetDedup::settle`]): stored, [`STORE`] sets `S` for the window;
//!   not stored, [`RELEASE`] deletes the key if still that request's
//!   claim (a claim's value: this process's token and the request's
//!   dedup owner).
//!
//! A request sent with an `Idempotency-Key` has two markers
//! (`handoff::Markers`, SPEC §12), keys of the same form, claimed before
//! its events by [`MARK`]: its payload marker stored, an identical retry
//! (its events judged one by one); else its operation marker stored, the
//! key was used for another payload: the whole request is kept back
//! (reported `KeyReused`, 422), as it is while either is pending
//! (`KeyInFlight`, 503), and the event keys the round's claims took for
//! it are released. The core settles the markers with the request.
//!
//! Tenant caps (SPEC §15): each tenant's live keys are indexed in a sorted
//! set `sluice:ddi:<tenant>` (member the event id, score the time of the
//! last write), maintained by the same scripts. A claim that takes a
//! tenant past `dedup.redis_keys_per_tenant_max` deletes that tenant's
//! oldest keys (its own, never another tenant's), counted per tenant. So
//! sluice's keys in Redis are bounded by tenants × cap, and Redis itself
//! must never evict: run it with `maxmemory-policy noeviction` (any other
//! policy may evict any tenant's keys when memory runs short, whichever
//! tenant filled it) and `maxmemory` sized for tenants × cap (about 200
//! bytes per key with its index entry). sluice reads the policy at
//! connect and warns when it is another. Out of memory anyway, Redis
//! refuses writes: the rounds fail, counted, and the instances dedup
//! alone meanwhile; no tenant's keys are taken. (Redis Cluster is not
//! supported: the claim deletes keys it was not handed.)
//!
//! Redis down, slow (every call has `dedup.redis_timeout_ms`) or erring:
//! batches go on unchecked (local dedup only), `sluice_dedup_redis_up` is
//! 0 and a warn line says so; reconnects at most once a second. The
//! outcomes of a failed round are kept and sent again with the next
//! rounds, for at most the window (stored) or the pending TTL (released:
//! the claim is gone by then); what is given up is counted.
//!
//! The crash window: an instance killed after producing a record and
//! before its delivery report settled the key leaves it pending in Redis
//! until the TTL ends; retries meanwhile get 503 `event_in_flight`, and a
//! retry after the TTL is stored again if the record had reached Kafka.
//!
//! Needs Redis 7.0 or later (scripts that read `TIME` and then write).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::scripts::Scripts;
pub use super::scripts::{CLAIM, MARK, RELEASE, STORE};
use super::state::SETTLES_MAX;
pub use super::state::{FleetDedup, Settle};
use crate::handoff::{Batch, Completion, FleetVerdict, Mailbox, Opaque};

/// Batches checked in one round trip at most.
const BATCHES_PER_TURN: usize = 256;
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// A settle a failed round did not deliver, kept for the next rounds.
struct Retained {
    settle: Settle,
    /// When the fleet thread took it from the cores.
    since: Instant,
}

/// The fleet thread's settings.
pub struct Fleet {
    pub client: redis::Client,
    pub timeout: Duration,
    pub window_ms: u64,
    pub pending_ttl_ms: u64,
    /// A tenant's live keys in Redis at most
    /// (`dedup.redis_keys_per_tenant_max`).
    pub keys_per_tenant_max: u64,
    pub state: Arc<FleetDedup>,
    pub mailboxes: Arc<[Arc<Mailbox>]>,
}

/// How often an idle dedup thread checks that Redis is there.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The prefix of a tenant's event keys.
fn key_prefix(tenant: &str) -> String {
    format!("sluice:dd:{tenant}:")
}

/// The sorted set indexing a tenant's live keys.
fn index_key(tenant: &str) -> String {
    format!("sluice:ddi:{tenant}")
}

/// The value a claim sets in Redis: this process's token and the
/// claiming request's identity (its dedup `owner`), so that a release
/// deletes only its own claim, never a newer claim of the same key by
/// another request of this instance.
fn claim_token(token: &str, owner: u64) -> String {
    format!("{token}-{owner:x}")
}

fn member(event_id: u128) -> String {
    format!("{event_id:032x}")
}

impl Fleet {
    /// Forwards batches from `input` to `output` until every core has
    /// dropped its sender, or `cores_done` is set (the cores' threads
    /// ended: a task a core's runtime left unfinished may still hold its
    /// sender) and nothing is left to forward.
    pub fn run(self, input: Receiver<Batch>, output: Sender<Batch>, cores_done: &AtomicBool) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let token = format!("P{:x}-{nanos:x}", std::process::id());
        let scripts = Scripts::new();
        let mut connection: Option<redis::Connection> = None;
        let mut last_attempt: Option<Instant> = None;
        let mut reported_down = false;
        let mut last_idle_check = Instant::now() - IDLE_CHECK_INTERVAL;
        let mut batches: Vec<Batch> = Vec::with_capacity(BATCHES_PER_TURN);
        let mut settles: Vec<Retained> = Vec::new();
        loop {
            match input.recv_timeout(Duration::from_millis(5)) {
                Ok(batch) => batches.push(batch),
                Err(RecvTimeoutError::Timeout) if cores_done.load(Relaxed) && input.is_empty() => {
                    break
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batches.len() < BATCHES_PER_TURN {
                match input.try_recv() {
                    Ok(batch) => batches.push(batch),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            while settles.len() < SETTLES_MAX {
                match self.state.pop_settle() {
                    Some(settle) => settles.push(Retained { settle, since: now }),
                    None => break,
                }
            }
            if batches.is_empty() && settles.is_empty() {
                // Idle: `sluice_dedup_redis_up` still tells the truth: a
                // connection is made at start, and checked with a PING
                // once a second while no event passes.
                if last_idle_check.elapsed() >= IDLE_CHECK_INTERVAL {
                    last_idle_check = Instant::now();
                    if let Some(connected) = connection.as_mut() {
                        if let Err(error) = redis::cmd("PING").query::<String>(connected) {
                            self.state.failures.fetch_add(1, Relaxed);
                            self.note_down(&error, &mut reported_down);
                            connection = None;
                        }
                    } else {
                        self.reconnect(
                            &scripts,
                            &mut connection,
                            &mut last_attempt,
                            &mut reported_down,
                        );
                    }
                }
                continue;
            }
            self.reconnect(
                &scripts,
                &mut connection,
                &mut last_attempt,
                &mut reported_down,
            );
            let checked = match connection.as_mut() {
                Some(connected) => {
                    self.exchange(connected, &scripts, &token, &mut batches, &settles)
                }
                None => Err(None),
            };
            match checked {
                Ok(()) => settles.clear(),
                Err(error) => {
                    if let Some(error) = error {
                        self.state.failures.fetch_add(1, Relaxed);
                        self.note_down(&error, &mut reported_down);
                        connection = None;
                    }
                    self.state
                        .unchecked_batches
                        .fetch_add(batches.len() as u64, Relaxed);
                    // Kept for the next round: a stored outcome lost here
                    // would leave its key pending, and a retry after the
                    // pending TTL would be stored again.
                    self.give_up_stale(&mut settles, Instant::now());
                }
            }
            for batch in batches.drain(..) {
                self.forward(batch, &output);
            }
        }
        for batch in batches.drain(..) {
            self.forward(batch, &output);
        }
    }

    /// Drops the kept settles past their use, counted: a stored outcome
    /// kept longer than the window, a release longer than the pending TTL
    /// (its claim has expired by then).
    fn give_up_stale(&self, settles: &mut Vec<Retained>, now: Instant) {
        let before = settles.len();
        settles.retain(|kept| {
            let bound_ms = if kept.settle.stored {
                self.window_ms
            } else {
                self.pending_ttl_ms
            };
            now.saturating_duration_since(kept.since) < Duration::from_millis(bound_ms)
        });
        self.state
            .settles_given_up
            .fetch_add((before - settles.len()) as u64, Relaxed);
    }

    /// Connects when there is no connection and the last attempt is old
    /// enough.
    fn reconnect(
        &self,
        scripts: &Scripts,
        connection: &mut Option<redis::Connection>,
        last_attempt: &mut Option<Instant>,
        reported_down: &mut bool,
    ) {
        if connection.is_some() || last_attempt.is_some_and(|at| at.elapsed() < RECONNECT_INTERVAL)
        {
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.connect(scripts) {
            Ok(connected) => {
                if !self.state.up.swap(true, Relaxed) {
                    tracing::info!("Redis reachable; dedup is fleet-wide");
                }
                *connection = Some(connected);
            }
            Err(error) => self.note_down(&error, reported_down),
        }
    }

    fn connect(&self, scripts: &Scripts) -> redis::RedisResult<redis::Connection> {
        let mut connection = self.client.get_connection_with_timeout(self.timeout)?;
        connection.set_read_timeout(Some(self.timeout))?;
        connection.set_write_timeout(Some(self.timeout))?;
        scripts.load(&mut connection)?;
        self.check_eviction_policy(&mut connection);
        Ok(connection)
    }

    /// Warns (once per process) when Redis may evict keys itself: then a
    /// tenant filling its memory would push out other tenants' keys,
    /// whatever the caps. A Redis that refuses CONFIG is left unchecked,
    /// said once.
    fn check_eviction_policy(&self, connection: &mut redis::Connection) {
        let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query(connection);
        let Ok(policy) = policy else {
            if !self.state.policy_warned.swap(true, Relaxed) {
                tracing::info!(
                    "Redis refused CONFIG GET maxmemory-policy: whether it may evict dedup keys could not be checked (it must be noeviction)"
                );
            }
            return;
        };
        let Some(policy) = policy.get(1) else { return };
        if policy != "noeviction" && !self.state.policy_warned.swap(true, Relaxed) {
            tracing::warn!(
                policy = %policy,
                "Redis maxmemory-policy is not noeviction: with its memory full, Redis may evict any tenant's dedup keys; set noeviction and size maxmemory for tenants x dedup.redis_keys_per_tenant_max (about 200 bytes a key)"
            );
        }
    }

    /// Says once that Redis is gone: when it was up, or at the first
    /// failure if it never was (`reported`), not at every reconnect.
    fn note_down(&self, error: &redis::RedisError, reported: &mut bool) {
        let was_up = self.state.up.swap(false, Relaxed);
        if was_up || !std::mem::replace(reported, true) {
            // Redis errors name the failure, never the URL's password.
            tracing::warn!(
                error = %error,
                "Redis unreachable for dedup; each instance dedups alone until it is back"
            );
        }
    }

    /// One round trip: the settles queued by the cores (first, so a retry
    /// in the same round sees its event stored), and the claims of every
    /// batch's event ids. Marks the records Redis knows as `skip` and
    /// reports them to their cores.
    fn exchange(
        &self,
        connection: &mut redis::Connection,
        scripts: &Scripts,
        token: &str,
        batches: &mut [Batch],
        settles: &[Retained],
    ) -> Result<(), Option<redis::RedisError>> {
        let mut pipe = redis::pipe();
        for Retained { settle, .. } in settles {
            let (key, index) = (
                format!("{}{}", key_prefix(&settle.tenant), member(settle.event_id)),
                index_key(&settle.tenant),
            );
            if settle.stored {
                pipe.cmd("EVALSHA")
                    .arg(scripts.store.get_hash())
                    .arg(2)
                    .arg(key)
                    .arg(index)
                    .arg(self.window_ms)
                    .arg(member(settle.event_id))
                    .ignore();
            } else {
                pipe.cmd("EVALSHA")
                    .arg(scripts.release.get_hash())
                    .arg(2)
                    .arg(key)
                    .arg(index)
                    .arg(claim_token(token, settle.owner))
                    .arg(member(settle.event_id))
                    .ignore();
            }
        }
        let mut asked = 0u64;
        let mut marked = 0u64;
        for batch in batches.iter() {
            let (prefix, index) = (key_prefix(&batch.tenant_id), index_key(&batch.tenant_id));
            let claim_token = claim_token(token, batch.owner);
            // A request's markers before its events: the key may keep the
            // whole request back.
            if let Some(markers) = &batch.markers {
                let (payload, operation) = (member(markers.payload), member(markers.operation));
                pipe.cmd("EVALSHA")
                    .arg(scripts.mark.get_hash())
                    .arg(3)
                    .arg(format!("{prefix}{payload}"))
                    .arg(format!("{prefix}{operation}"))
                    .arg(&index)
                    .arg(&claim_token)
                    .arg(self.pending_ttl_ms)
                    .arg(self.keys_per_tenant_max)
                    .arg(self.window_ms)
                    .arg(&payload)
                    .arg(&operation)
                    .arg(&prefix);
                marked += 1;
            }
            for record in &batch.records {
                if let Some(id) = record.event_id {
                    let member = member(id);
                    pipe.cmd("EVALSHA")
                        .arg(scripts.claim.get_hash())
                        .arg(2)
                        .arg(format!("{prefix}{member}"))
                        .arg(&index)
                        .arg(&claim_token)
                        .arg(self.pending_ttl_ms)
                        .arg(self.keys_per_tenant_max)
                        .arg(self.window_ms)
                        .arg(&member)
                        .arg(&prefix);
                    asked += 1;
                }
            }
        }
        let answers: Vec<redis::Value> = pipe.query(connection).map_err(Some)?;
        if answers.len() as u64 != asked + marked {
            return Err(None);
        }
        self.state.checked.fetch_add(asked, Relaxed);
        let mut answers = answers.into_iter();
        for batch in batches.iter_mut() {
            let mailbox = &self.mailboxes[batch.ticket.core];
            let mut evicted = 0u64;
            let refused = match batch.markers {
                None => None,
                Some(_) => match answers.next() {
                    // An identical retry: its events are judged one by one.
                    Some(redis::Value::BulkString(value)) if value == b"S" => None,
                    Some(redis::Value::BulkString(value)) if value == b"R" => {
                        Some(FleetVerdict::KeyReused)
                    }
                    Some(redis::Value::BulkString(_)) => {
                        self.state.in_flight.fetch_add(1, Relaxed);
                        Some(FleetVerdict::KeyInFlight)
                    }
                    Some(redis::Value::Int(pushed_out)) => {
                        evicted += pushed_out.max(0) as u64;
                        None
                    }
                    _ => None,
                },
            };
            if let Some(verdict) = refused {
                evicted += self.refuse(batch, verdict, &mut answers);
                if evicted > 0 {
                    self.state.evicted(&batch.tenant_id, evicted);
                }
                continue;
            }
            for (index, record) in batch.records.iter_mut().enumerate() {
                if record.event_id.is_none() {
                    continue;
                }
                let verdict = match answers.next() {
                    Some(redis::Value::BulkString(value)) if value == b"S" => {
                        self.state.duplicates.fetch_add(1, Relaxed);
                        FleetVerdict::Duplicate
                    }
                    Some(redis::Value::BulkString(_)) => {
                        self.state.in_flight.fetch_add(1, Relaxed);
                        FleetVerdict::InFlight
                    }
                    Some(redis::Value::Int(pushed_out)) => {
                        evicted += pushed_out.max(0) as u64;
                        continue;
                    }
                    _ => continue,
                };
                record.skip = true;
                mailbox.complete(Completion {
                    opaque: Opaque::new(batch.ticket, index, false),
                    delivered: verdict == FleetVerdict::Duplicate,
                    fleet: verdict,
                    event: record.event,
                });
            }
            if evicted > 0 {
                self.state.evicted(&batch.tenant_id, evicted);
            }
        }
        Ok(())
    }

    /// Keeps a whole request back for its `Idempotency-Key` (`verdict`):
    /// every record is skipped and reported so to its core, and the event
    /// keys its claims took in this round (they ran, pipelined after the
    /// markers) are released with the next round. Returns how many of the
    /// tenant's keys those claims pushed out.
    fn refuse(
        &self,
        batch: &mut Batch,
        verdict: FleetVerdict,
        answers: &mut impl Iterator<Item = redis::Value>,
    ) -> u64 {
        let mailbox = &self.mailboxes[batch.ticket.core];
        let mut evicted = 0u64;
        for (index, record) in batch.records.iter_mut().enumerate() {
            if let Some(event_id) = record.event_id {
                let claimed = match answers.next() {
                    Some(redis::Value::Int(pushed_out)) => {
                        evicted += pushed_out.max(0) as u64;
                        true
                    }
                    Some(redis::Value::Nil) => true,
                    _ => false,
                };
                if claimed {
                    self.state.settle(Settle {
                        tenant: Arc::clone(&batch.tenant_id),
                        event_id,
                        owner: batch.owner,
                        stored: false,
                    });
                }
            }
            record.skip = true;
            mailbox.complete(Completion {
                opaque: Opaque::new(batch.ticket, index, record.dead_letter),
                delivered: false,
                fleet: verdict,
                event: record.event,
            });
        }
        evicted
    }

    /// Hands a batch to the producers, or back to its core's pool when
    /// nothing of it is left to produce.
    fn forward(&self, batch: Batch, output: &Sender<Batch>) {
        if batch.records.iter().all(|record| record.skip) {
            self.mailboxes[batch.ticket.core].recycle(batch);
            return;
        }
        if let Err(returned) = output.send(batch) {
            // The producers are gone (shutdown): report the records as
            // not stored, as a producer would.
            let batch = returned.into_inner();
            let mailbox = &self.mailboxes[batch.ticket.core];
            for (index, record) in batch.records.iter().enumerate() {
                if !record.skip {
                    mailbox.complete(Completion::produced(
                        Opaque::new(batch.ticket, index, record.dead_letter),
                        false,
                    ));
                }
            }
            mailbox.recycle(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release re-sent after failed rounds deletes only its own claim,
    /// not a newer claim of the same key by another request of this
    /// instance (the token was once per process).
    #[test]
    fn a_release_deletes_only_its_own_claim() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        /// Stops the server even when an assertion fails.
        struct Server(std::process::Child);
        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let Ok(server) = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            eprintln!("redis-server is not installed: skipped");
            return;
        };
        let _server = Server(server);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut connection = (0..100)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                client.get_connection().ok()
            })
            .expect("redis-server started");
        let scripts = Scripts::new();
        let (key, index) = ("k", "i");
        let claim = |connection: &mut redis::Connection, owner: u64| {
            let _: redis::Value = scripts
                .claim
                .key(key)
                .key(index)
                .arg(claim_token("P1", owner))
                .arg(15_000)
                .arg(10)
                .arg(60_000)
                .arg("m")
                .arg("p")
                .invoke(connection)
                .unwrap();
        };
        let release = |connection: &mut redis::Connection, owner: u64| -> i64 {
            scripts
                .release
                .key(key)
                .key(index)
                .arg(claim_token("P1", owner))
                .arg("m")
                .invoke(connection)
                .unwrap()
        };
        claim(&mut connection, 1);
        assert_eq!(release(&mut connection, 1), 1);
        // Request 2 claims the key again; request 1's release is re-sent.
        claim(&mut connection, 2);
        assert_eq!(release(&mut connection, 1), 0);
        let value: Option<String> = redis::cmd("GET").arg(key).query(&mut connection).unwrap();
        assert_eq!(value, Some(claim_token("P1", 2)));
        assert_eq!(release(&mut connection, 2), 1);
    }

    fn fleet() -> Fleet {
        Fleet {
            client: redis::Client::open("redis://127.0.0.1:1/").unwrap(),
            timeout: Duration::from_millis(10),
            window_ms: 60_000,
            pending_ttl_ms: 15_000,
            keys_per_tenant_max: 10,
            state: Arc::new(FleetDedup::default()),
            mailboxes: Vec::new().into(),
        }
    }

    fn kept(stored: bool, age: Duration, now: Instant) -> Retained {
        Retained {
            settle: Settle {
                tenant: "t".into(),
                event_id: 1,
                owner: 1,
                stored,
            },
            since: now - age,
        }
    }

    /// The settles of a failed round are kept for the next (they used to
    /// be cleared, uncounted), until they are of no use: a stored outcome
    /// past the window, a release past the pending TTL; those are counted.
    #[test]
    fn failed_settles_are_kept_within_their_bounds_and_counted_when_given_up() {
        let fleet = fleet();
        let now = Instant::now() + Duration::from_secs(3_600);
        let mut settles = vec![
            kept(true, Duration::from_secs(1), now),
            kept(true, Duration::from_secs(59), now),
            kept(true, Duration::from_secs(61), now),
            kept(false, Duration::from_secs(14), now),
            kept(false, Duration::from_secs(16), now),
        ];
        fleet.give_up_stale(&mut settles, now);
        let left: Vec<(bool, u64)> = settles
            .iter()
            .map(|kept| (kept.settle.stored, (now - kept.since).as_secs()))
            .collect();
        assert_eq!(left, [(true, 1), (true, 59), (false, 14)]);
        assert_eq!(fleet.state.settles_given_up.load(Relaxed), 2);
    }
}
