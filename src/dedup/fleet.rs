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
//! Per event, key `sluice:dd:<tenant>:<event id, 32 hex>`:
//! - before producing: `SET key P<instance> NX GET PX <pending ttl>`; nil
//!   means this instance claimed it, `S` stored elsewhere, `P…` in flight
//!   elsewhere. The pending TTL is `kafka.message_timeout_ms` plus 10 s:
//!   librdkafka reports every record by then.
//! - after the delivery report (sent by the core through [`FleetDedup::settle`]):
//!   stored → `SET key S PX <window>`; not stored → deleted if still this
//!   instance's claim.
//!
//! Redis down, slow (every call has `dedup.redis_timeout_ms`) or erring:
//! batches go on unchecked (local dedup only), `sluice_dedup_redis_up` is
//! 0 and a warn line says so; reconnects at most once a second.
//!
//! The crash window: an instance killed after producing a record and
//! before its delivery report settled the key leaves it pending in Redis
//! until the TTL ends; retries meanwhile get 503 `event_in_flight`, and a
//! retry after the TTL is stored again if the record had reached Kafka.
//!
//! Needs Redis 7.0 or later (`SET` with both `NX` and `GET`).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::state::SETTLES_MAX;
pub use super::state::{FleetDedup, Settle};
use crate::kafka::handoff::{Batch, Completion, FleetVerdict, Mailbox, Opaque};

/// Batches checked in one round trip at most.
const BATCHES_PER_TURN: usize = 256;
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// Compare-and-delete: the claim is released only if it is still ours.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// The fleet thread's settings.
pub struct Fleet {
    pub client: redis::Client,
    pub timeout: Duration,
    pub window_ms: u64,
    pub pending_ttl_ms: u64,
    pub state: Arc<FleetDedup>,
    pub mailboxes: Arc<[Arc<Mailbox>]>,
}

/// How often an idle dedup thread checks that Redis is there.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn redis_key(tenant: &str, event_id: u128) -> String {
    format!("sluice:dd:{tenant}:{event_id:032x}")
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
        let mut connection: Option<redis::Connection> = None;
        let mut last_attempt: Option<Instant> = None;
        let mut reported_down = false;
        let mut last_idle_check = Instant::now() - IDLE_CHECK_INTERVAL;
        let mut batches: Vec<Batch> = Vec::with_capacity(BATCHES_PER_TURN);
        let mut settles: Vec<Settle> = Vec::new();
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
            while settles.len() < SETTLES_MAX {
                match self.state.pop_settle() {
                    Some(settle) => settles.push(settle),
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
                        self.reconnect(&mut connection, &mut last_attempt, &mut reported_down);
                    }
                }
                continue;
            }
            self.reconnect(&mut connection, &mut last_attempt, &mut reported_down);
            let checked = match connection.as_mut() {
                Some(connected) => self.exchange(connected, &token, &mut batches, &settles),
                None => Err(None),
            };
            match checked {
                Ok(()) => {}
                Err(error) => {
                    if let Some(error) = error {
                        self.state.failures.fetch_add(1, Relaxed);
                        self.note_down(&error, &mut reported_down);
                        connection = None;
                    }
                    self.state
                        .unchecked_batches
                        .fetch_add(batches.len() as u64, Relaxed);
                }
            }
            settles.clear();
            for batch in batches.drain(..) {
                self.forward(batch, &output);
            }
        }
        for batch in batches.drain(..) {
            self.forward(batch, &output);
        }
    }

    /// Connects when there is no connection and the last attempt is old
    /// enough.
    fn reconnect(
        &self,
        connection: &mut Option<redis::Connection>,
        last_attempt: &mut Option<Instant>,
        reported_down: &mut bool,
    ) {
        if connection.is_some() || last_attempt.is_some_and(|at| at.elapsed() < RECONNECT_INTERVAL)
        {
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.connect() {
            Ok(connected) => {
                if !self.state.up.swap(true, Relaxed) {
                    tracing::info!("Redis reachable; dedup is fleet-wide");
                }
                *connection = Some(connected);
            }
            Err(error) => self.note_down(&error, reported_down),
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(self.timeout)?;
        connection.set_read_timeout(Some(self.timeout))?;
        connection.set_write_timeout(Some(self.timeout))?;
        Ok(connection)
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

    /// One round trip: the claims of every batch's event ids, and the
    /// settles queued by the cores. Marks the records Redis knows as
    /// `skip` and reports them to their cores.
    fn exchange(
        &self,
        connection: &mut redis::Connection,
        token: &str,
        batches: &mut [Batch],
        settles: &[Settle],
    ) -> Result<(), Option<redis::RedisError>> {
        let mut pipe = redis::pipe();
        let mut asked = 0u64;
        for batch in batches.iter() {
            for record in &batch.records {
                if let Some(id) = record.event_id {
                    pipe.cmd("SET")
                        .arg(redis_key(&batch.tenant_id, id))
                        .arg(token)
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(self.pending_ttl_ms);
                    asked += 1;
                }
            }
        }
        for settle in settles {
            let key = redis_key(&settle.tenant, settle.event_id);
            if settle.stored {
                pipe.cmd("SET")
                    .arg(key)
                    .arg("S")
                    .arg("PX")
                    .arg(self.window_ms)
                    .ignore();
            } else {
                pipe.cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(key)
                    .arg(token)
                    .ignore();
            }
        }
        let answers: Vec<Option<Vec<u8>>> = pipe.query(connection).map_err(Some)?;
        if answers.len() as u64 != asked {
            return Err(None);
        }
        self.state.checked.fetch_add(asked, Relaxed);
        let mut answers = answers.into_iter();
        for batch in batches.iter_mut() {
            let mailbox = &self.mailboxes[batch.ticket.core];
            for (index, record) in batch.records.iter_mut().enumerate() {
                if record.event_id.is_none() {
                    continue;
                }
                let verdict = match answers.next().flatten() {
                    None => continue,
                    Some(value) if value == b"S" => {
                        self.state.duplicates.fetch_add(1, Relaxed);
                        FleetVerdict::Duplicate
                    }
                    Some(_) => {
                        self.state.in_flight.fetch_add(1, Relaxed);
                        FleetVerdict::InFlight
                    }
                };
                record.skip = true;
                mailbox.complete(Completion {
                    opaque: Opaque::new(batch.ticket, index, false),
                    delivered: verdict == FleetVerdict::Duplicate,
                    fleet: verdict,
                    event: record.event,
                });
            }
        }
        Ok(())
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
