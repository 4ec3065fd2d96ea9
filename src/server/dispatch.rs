//! One request whose head is parsed: route it, refuse what the head
//! already refuses without reading the body, read the body, answer —
//! probes at once, events once Kafka has them (or at hand-off in enqueued
//! mode). Consumes the request's bytes from the read buffer.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq as _;

use super::answer::{write_accepted, write_error, write_preflight, write_probe, Reply};
use super::context::Core;
use super::framing::{read_body, ReadError};
use super::inflight::{Delivery, Settled};
use super::ingest::{ingest, Body, Handed, Outcome};
use super::routing::Provenance;
use super::wire::Wire;
use crate::config::AckMode;
use crate::error::ApiError;
use crate::events::split::BodyKind;
use crate::events::validate::IDEMPOTENCY_KEY_BYTES_MAX;
use crate::handoff::{FleetVerdict, Ticket};
use crate::http::request::{find_header, trim, Framing, Head, Method};
use crate::http::response::CONTINUE;
use crate::http::{gzip, FramingError};
use crate::route::{Route, SegmentCall};
use crate::tenancy::credentials::{basic_user, bearer_token, presented_key, query_key};
use crate::tenancy::keys::{AuthError, Grant, Snapshot};

/// Whether the connection goes on after a request, and how it ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
    /// Close with the request's body unread: drain briefly first, so the
    /// answer is not destroyed by a reset.
    CloseLingering,
}

/// Longest presented key a connection remembers; longer ones are
/// authenticated on every request.
const CACHED_KEY_BYTES_MAX: usize = 64;

/// The key a connection presented last and its grant, so that a connection
/// sending the same key again skips the SHA-256 and the lookup. Valid only
/// while its snapshot is the current one: a reload (a key disabled or
/// removed) makes every connection authenticate afresh. It holds the
/// snapshot's generation, not the snapshot: an idle connection must not
/// keep a whole old snapshot (a million keys) alive.
struct CachedKey {
    generation: u64,
    key: [u8; CACHED_KEY_BYTES_MAX],
    /// 0 when the key was too long to remember: never matches.
    key_bytes: usize,
    grant: Grant,
}

impl CachedKey {
    fn matches(&self, snapshot: &Snapshot, key: &[u8]) -> bool {
        self.generation == snapshot.generation()
            && self.key_bytes == key.len()
            && bool::from(self.key[..self.key_bytes].ct_eq(key))
    }
}

impl Drop for CachedKey {
    fn drop(&mut self) {
        for byte in &mut self.key {
            // SAFETY: a valid, aligned byte of our own array; volatile so
            // the wipe of the key is not optimised away.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// A connection's socket and what its requests share.
pub struct Exchange<'a> {
    pub core: &'a Core,
    pub wire: Wire,
    pub reply: Reply,
    /// The `rejected` and `duplicates` entries of the answer being built.
    outcome: Outcome,
    cached_key: Option<Box<CachedKey>>,
}

impl<'a> Exchange<'a> {
    pub fn new(core: &'a Core, wire: Wire) -> Self {
        Exchange {
            core,
            wire,
            reply: Reply::default(),
            outcome: Outcome::default(),
            cached_key: None,
        }
    }

    /// Answers one request whose head is parsed; consumes its bytes.
    pub async fn respond(&mut self, head: &Head) -> Next {
        let core = self.core;
        self.reply.parsed(core, &self.wire.input, head);
        #[cfg(debug_assertions)]
        if core
            .panic_target
            .as_deref()
            .is_some_and(|target| target == &self.wire.input[head.path.clone()])
        {
            panic!("SLUICE_DEBUG_PANIC_TARGET requested");
        }
        let route = self.reply.route;
        if head.method == Method::Options && route != Route::Other {
            return self.answer_from_head(head, false, |exchange| {
                write_preflight(exchange.core, &mut exchange.wire.output, &exchange.reply)
            });
        }
        let (kind, check) = if route.ingests() {
            let kind = self.body_kind(route, head);
            (Some(kind), self.check_ingest(head, kind).map(Some))
        } else if route == Route::Other {
            (None, Err(ApiError::not_found()))
        } else if matches!(head.method, Method::Get | Method::Head) {
            (None, Ok(None))
        } else {
            (None, Err(ApiError::method_not_allowed()))
        };
        if let Err(error) = &check {
            return self.refuse_from_head(head, error);
        }
        let body_max = core.shared.config.limits.body_bytes_max;
        if matches!(head.framing, Framing::Length(length) if length > body_max) {
            let error = FramingError::BodyTooLarge {
                limit_bytes: body_max,
            };
            return self.refuse_from_head(head, &error.into());
        }
        if head.expect_continue
            && self.wire.input.len() == head.head_bytes
            && head.framing != Framing::None
        {
            self.wire.output.extend_from_slice(CONTINUE);
        }
        let (body, consumed) = match read_body(core, &mut self.wire, head).await {
            Ok(read) => read,
            Err(ReadError::Closed) => return Next::Close,
            Err(ReadError::Api(error)) => {
                self.write_error(&error, None);
                return Next::Close;
            }
        };
        core.metrics().body_bytes(body.len());
        let next = match check {
            Ok(Some(())) => {
                let kind = kind.expect("ingest routes have a body kind");
                // The grant is moved out for the request and back after:
                // no reference count changes per request.
                let cached = self.cached_key.take().expect("authenticated");
                let next = self.answer_ingest(head, &cached.grant, kind, body).await;
                self.cached_key = Some(cached);
                next
            }
            _ => {
                write_probe(core, &mut self.wire.output, &self.reply);
                self.next()
            }
        };
        if self.wire.input.len() >= consumed {
            self.wire.input.drain(..consumed);
        }
        next
    }

    /// Answers a request refused by its head alone, without reading its
    /// body. A body already whole in the buffer (a small request) is
    /// skipped and the connection kept; otherwise the answer says close.
    fn refuse_from_head(&mut self, head: &Head, error: &ApiError) -> Next {
        self.answer_from_head(head, error.close, |exchange| {
            exchange.write_error(error, None)
        })
    }

    /// Answers (with `write`) a request whose body is not needed: a body
    /// already whole in the buffer is skipped and the connection kept;
    /// otherwise (or with `close`) the answer says close.
    fn answer_from_head(
        &mut self,
        head: &Head,
        close: bool,
        write: impl FnOnce(&mut Self),
    ) -> Next {
        let in_hand = match head.framing {
            Framing::None => Some(head.head_bytes),
            Framing::Length(length) => head
                .head_bytes
                .checked_add(length)
                .filter(|&end| end <= self.wire.input.len()),
            Framing::Chunked => None,
        };
        match in_hand {
            Some(end) if !close && !head.expect_continue => {
                write(self);
                self.wire.input.drain(..end);
                self.next()
            }
            _ => {
                self.reply.keep_alive = false;
                write(self);
                Next::CloseLingering
            }
        }
    }

    fn next(&self) -> Next {
        if self.reply.keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    fn write_error(&mut self, error: &ApiError, grant: Option<&Grant>) {
        write_error(self.core, &mut self.wire.output, &self.reply, error, grant);
    }

    fn body_kind(&self, route: Route, head: &Head) -> BodyKind {
        let ndjson = header(&self.wire.input, &head.content_type).is_some_and(|value| {
            let media = media_type(value);
            media.eq_ignore_ascii_case(b"application/x-ndjson")
                || media.eq_ignore_ascii_case(b"application/ndjson")
        });
        match (route, ndjson) {
            (Route::EventsBatch, true) => BodyKind::Ndjson,
            (Route::EventsBatch, false) => BodyKind::JsonBatch,
            (Route::SegmentBatch, _) => BodyKind::SegmentBatch,
            (Route::SegmentCall, _) => SegmentCall::of_target(&self.wire.input[head.path.clone()])
                .map_or(BodyKind::Single, BodyKind::SegmentCall),
            _ => BodyKind::Single,
        }
    }

    /// Everything about an ingest request that can be refused before its
    /// body. On success the key's grant is in `cached_key`.
    fn check_ingest(&mut self, head: &Head, kind: BodyKind) -> Result<(), ApiError> {
        if head.method != Method::Post {
            return Err(ApiError::method_not_allowed());
        }
        if head.framing == Framing::None {
            return Err(FramingError::LengthRequired.into());
        }
        let from_query = self.authenticate(head)?;
        let input = &self.wire.input;
        // A key in a URL can be sent by any page (a beacon needs no
        // preflight): only the allowed origins' pages may use one.
        if from_query && head.origin.is_some() && self.reply.cors.is_none() {
            return Err(ApiError::origin_not_allowed());
        }
        let media_ok = match header(input, &head.content_type).map(media_type) {
            None => true,
            Some(media) if media.eq_ignore_ascii_case(b"application/json") => true,
            // sendBeacon sends a string body as text/plain; it is read as
            // JSON (or NDJSON on the batch route with that type).
            Some(media) if from_query && media.eq_ignore_ascii_case(b"text/plain") => true,
            Some(_) => kind == BodyKind::Ndjson,
        };
        let encoding_ok = header(input, &head.content_encoding)
            .is_none_or(|value| gzip::is_gzip(value) || value.eq_ignore_ascii_case(b"identity"));
        if !media_ok || !encoding_ok {
            return Err(ApiError::unsupported_media_type(
                header(input, &head.content_type).unwrap_or_default(),
                header(input, &head.content_encoding).unwrap_or_default(),
            ));
        }
        if self.core.shared.shutdown.is_triggered() {
            return Err(ApiError::unavailable("server is shutting down"));
        }
        if !self.core.shared.readiness.kafka_ready() {
            return Err(ApiError::unavailable("kafka is unreachable"));
        }
        Ok(())
    }

    /// Finds the grant of the presented key: from `cached_key` when this
    /// connection sent the same key under the current snapshot, else by
    /// hashing and looking it up (and remembering it).
    /// Returns whether the key came from the query (`auth.query_key`).
    fn authenticate(&mut self, head: &Head) -> Result<bool, ApiError> {
        if let Some(repeated) = head.repeated_credential {
            return Err(ApiError::repeated_credential(repeated.name()));
        }
        let input = &self.wire.input;
        let api_key = header(input, &head.api_key);
        let authorization = header(input, &head.authorization);
        let mut key = presented_key(api_key, authorization);
        // Held to the end: `key` may point into it.
        let mut scratch = None;
        let mut from_query = false;
        if let (Some(api_key), Some(authorization)) = (api_key, authorization) {
            // Both headers: served only when they name the same key, since
            // which one the client meant is otherwise a guess.
            let decoded = &mut scratch.insert(self.core.scratch.borrow_mut()).decoded_key;
            let other = match bearer_token(Some(authorization)) {
                Some(token) => Some(token),
                None => basic_user(authorization, decoded).then_some(&decoded[..]),
            };
            if other.is_some_and(|other| other != api_key) {
                return Err(ApiError::two_credentials());
            }
        } else if key.is_empty() {
            let decoded = &mut scratch.insert(self.core.scratch.borrow_mut()).decoded_key;
            // Segment's SDKs send the write key as the Basic user name.
            if header(input, &head.authorization).is_some_and(|value| basic_user(value, decoded)) {
                key = decoded;
            } else if self.core.shared.config.auth.query_key
                && query_key(&input[head.path.clone()], decoded)
            {
                key = decoded;
                from_query = true;
            }
        }
        let snapshot = self.core.shared.keys.load();
        let now_ms = self.core.now_ms();
        if !key.is_empty() {
            if let Some(cached) = self.cached_key.as_ref() {
                if cached.matches(&snapshot, key) {
                    // Expiry and revocation hold from their instant, reload or not.
                    return if cached.grant.valid_at(now_ms) {
                        Ok(from_query)
                    } else {
                        Err(ApiError::invalid_api_key())
                    };
                }
            }
        }
        // Private copies of the grant's strings: the reference counts this
        // connection's requests touch are then not shared with other cores.
        let grant = match snapshot.authenticate(key, now_ms) {
            Ok(grant) => Grant {
                tenant_id: Arc::from(&*grant.tenant_id),
                project_id: grant.project_id.as_deref().map(Arc::from),
                topic: grant.topic.as_deref().map(Arc::from),
                // Shared: one limit per key across the instance's cores.
                limiter: grant.limiter.clone(),
                refused_from_ms: grant.refused_from_ms,
                metrics_slot: grant.metrics_slot,
            },
            Err(AuthError::Missing) => {
                let input = &self.wire.input;
                return Err(missing_key_hint(
                    &input[..head.head_bytes],
                    &input[head.path.clone()],
                    self.core.shared.config.auth.query_key,
                ));
            }
            // A configured key source not loaded yet: the key may be valid,
            // so the client is told to retry, not that its key is wrong.
            Err(AuthError::Invalid) if !snapshot.is_complete() => {
                return Err(ApiError::unavailable("API keys are not loaded yet"))
            }
            Err(AuthError::Invalid) => return Err(ApiError::invalid_api_key()),
        };
        let mut cached = Box::new(CachedKey {
            generation: snapshot.generation(),
            key: [0; CACHED_KEY_BYTES_MAX],
            key_bytes: 0,
            grant,
        });
        if key.len() <= CACHED_KEY_BYTES_MAX {
            cached.key[..key.len()].copy_from_slice(key);
            cached.key_bytes = key.len();
        }
        self.cached_key = Some(cached);
        Ok(from_query)
    }

    async fn answer_ingest(
        &mut self,
        head: &Head,
        grant: &Grant,
        kind: BodyKind,
        body: Range<usize>,
    ) -> Next {
        let core = self.core;
        self.outcome.clear();
        let handed = match self.hand_off(head, grant, kind, body).await {
            Ok(handed) => handed,
            Err(error) => {
                self.write_error(&error, Some(grant));
                return if error.close {
                    Next::Close
                } else {
                    self.next()
                };
            }
        };
        let mut in_flight_elsewhere = None;
        let mut key_refused = None;
        let delivered = match (handed.ticket, core.shared.config.server.ack_mode) {
            // Every event was already stored: nothing to wait for.
            (None, _) => true,
            (Some(ticket), AckMode::Enqueued) => {
                core.inflight.borrow_mut().detach(ticket, core.metrics());
                true
            }
            (Some(ticket), AckMode::Durable) => {
                // Answers already written for earlier pipelined requests go
                // out now, not after this request's wait on Kafka.
                if !self.wire.output.is_empty() && !self.wire.flush(core).await {
                    core.inflight.borrow_mut().detach(ticket, core.metrics());
                    return Next::Close;
                }
                match self.await_delivery(ticket).await {
                    Ok(settled) => {
                        in_flight_elsewhere = settled.in_flight_elsewhere;
                        key_refused = settled.key_refused;
                        settled.delivered
                    }
                    Err(error) => {
                        self.reply.keep_alive &= !core.shared.shutdown.is_triggered();
                        self.write_error(&error, Some(grant));
                        return self.next();
                    }
                }
            }
        };
        // Shutdown may have started while this request waited for Kafka.
        self.reply.keep_alive &= !core.shared.shutdown.is_triggered();
        // The fleet dedup kept the whole request back for its key.
        if let Some(verdict) = key_refused {
            let error = match verdict {
                FleetVerdict::KeyReused => ApiError::idempotency_key_reused(),
                _ => ApiError::idempotency_key_in_flight(),
            };
            self.write_error(&error, Some(grant));
            return self.next();
        }
        if let Some(event) = in_flight_elsewhere {
            let error = ApiError::event_in_flight(event as usize);
            self.write_error(&error, Some(grant));
            return self.next();
        }
        if !delivered {
            let error = ApiError::unavailable("kafka did not store the events");
            self.write_error(&error, Some(grant));
            return self.next();
        }
        self.outcome.duplicates.sort_unstable();
        write_accepted(
            core,
            &mut self.wire.output,
            &self.reply,
            (handed.accepted, handed.rejected),
            &self.outcome,
            grant,
        );
        self.next()
    }

    /// Inflates a gzip body if needed, then validates and hands it over.
    async fn hand_off(
        &mut self,
        head: &Head,
        grant: &Grant,
        kind: BodyKind,
        body: Range<usize>,
    ) -> Result<Handed, ApiError> {
        let core = self.core;
        let input = &self.wire.input;
        let idempotency_key = head
            .has_idempotency_key
            .then(|| find_header(&input[..head.head_bytes], b"idempotency-key"))
            .flatten();
        // As the OpenAPI document states it: 1 to 256 printable ASCII
        // characters, not starting or ending with a space.
        let printable = |key: &[u8]| {
            key.iter().all(|byte| (0x20..=0x7e).contains(byte))
                && key.first() != Some(&b' ')
                && key.last() != Some(&b' ')
        };
        if idempotency_key.is_some_and(|key| {
            key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX || !printable(key)
        }) {
            return Err(ApiError::new(
                400,
                "bad_request",
                "Idempotency-Key must be 1 to 256 printable ASCII characters",
            ));
        }
        let provenance = Provenance {
            request_id: self.reply.request_id(),
            traced_head: head.has_trace_context.then(|| &input[..head.head_bytes]),
        };
        let gzipped = header(input, &head.content_encoding).is_some_and(gzip::is_gzip);
        let mut inflated = None;
        if gzipped {
            let mut buffer = std::mem::take(&mut core.scratch.borrow_mut().inflated);
            let limit = core.shared.config.limits.decompressed_body_bytes_max;
            if let Err(error) = gzip::inflate(&input[body.clone()], &mut buffer, limit) {
                core.keep_inflated(buffer);
                return Err(ApiError::from(error));
            }
            inflated = Some(buffer);
        }
        let bytes = inflated.as_deref().unwrap_or(&input[body]);
        // The events' schema checks first (on this core while cheap).
        let checked = super::contracts::check(core, self.wire.entry, grant, kind, bytes).await;
        let result = checked.and_then(|verdicts| {
            let body = Body {
                kind,
                bytes,
                idempotency_key,
                verdicts: verdicts.as_ref(),
            };
            ingest(core, grant, body, &provenance, &mut self.outcome)
        });
        if let Some(buffer) = inflated {
            core.keep_inflated(buffer);
        }
        result
    }

    /// Waits for every delivery report of the request, up to the deadline.
    async fn await_delivery(&mut self, ticket: Ticket) -> Result<Settled, ApiError> {
        let core = self.core;
        // The clock was read at the hand-off (`ingest::send`) or since: the
        // client never gives up before its batch's deadline, and no batch
        // is dropped for the time its events took to check.
        let deadline =
            core.now() + Duration::from_millis(core.shared.config.server.delivery_timeout_ms);
        let delivery = Delivery {
            inflight: &core.inflight,
            metrics: core.metrics(),
            ticket,
            finished: false,
            duplicates: &mut self.outcome.duplicates,
        };
        let outcome = super::wire::bounded(core, self.wire.entry, deadline, delivery).await;
        // The answer goes out now: its Date and the next deadlines count from here.
        core.tick();
        match outcome {
            Ok(delivered) => Ok(delivered),
            Err(_) => {
                core.metrics().delivery_timeout();
                Err(ApiError::unavailable(
                    "kafka did not acknowledge the events before the delivery deadline",
                ))
            }
        }
    }
}

/// The 401 for a request with no key, saying where the key was probably
/// meant to be when the request put it somewhere else: a near-miss header
/// name, or the query string with `auth.query_key` off. Off the hot path.
fn missing_key_hint(head: &[u8], target: &[u8], query_key_on: bool) -> ApiError {
    let mut error = ApiError::missing_api_key();
    let near_misses: [&[u8]; 6] = [
        b"x-api-key",
        b"api-key",
        b"apikey",
        b"x-cs-apikey",
        b"x-cs-api_key",
        b"x-cs-key",
    ];
    let hint = if let Some(name) = near_misses
        .iter()
        .find(|name| find_header(head, name).is_some())
    {
        Some(format!(
            "; this request sent a {} header: the header is X-CS-API-Key",
            String::from_utf8_lossy(name)
        ))
    } else if !query_key_on
        && target
            .split(|&byte| byte == b'?')
            .nth(1)
            .is_some_and(|query| {
                query
                    .split(|&byte| byte == b'&')
                    .any(|pair| pair.starts_with(b"api_key="))
            })
    {
        Some("; a key in the query string (?api_key=) is taken only with auth.query_key = true (for browsers' sendBeacon); send it in X-CS-API-Key".to_string())
    } else {
        None
    };
    if let Some(hint) = hint {
        error.message = format!("{}{hint}", error.message).into();
    }
    error
}

/// A header's value in the read buffer, if the request sent it.
fn header<'a>(input: &'a [u8], span: &Option<Range<usize>>) -> Option<&'a [u8]> {
    span.as_ref().map(|span| &input[span.clone()])
}

/// The media type of a Content-Type value, without parameters.
fn media_type(value: &[u8]) -> &[u8] {
    trim(value.split(|&byte| byte == b';').next().unwrap_or(value))
}
