//! One HTTP/1.1 connection: read heads and bodies within their deadlines,
//! route, answer in order, keep alive.
//!
//! The read buffer holds the bytes received and not yet consumed; a
//! request's body is decoded in place right after its head, and consumed
//! bytes are drained from the front, so pipelined requests simply follow.
//! Responses accumulate in the write buffer and are flushed before the
//! connection waits for more input, which answers pipelines in order.

use std::ops::Range;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut as _;
use monoio::io::{AsyncReadRent as _, AsyncWriteRent as _, AsyncWriteRentExt as _};
use monoio::net::TcpStream;

use super::core::Core;
use super::inflight::Delivery;
use super::ingest::{ingest, Handed};
use crate::auth::{presented_key, AuthError, Grant};
use crate::config::AckMode;
use crate::error::ApiError;
use crate::event::write_error_object;
use crate::http::body::{ChunkedDecoder, Progress};
use crate::http::request::{parse_head, trim, Framing, Head, Method, Parsed};
use crate::http::response::{write_head, write_json_string, HeadFields, CONTINUE};
use crate::http::{gzip, FramingError};
use crate::metrics::Route;
use crate::split::BodyKind;

/// The idle read buffer: large enough for a typical single-event request.
const IDLE_READ_BYTES: usize = 1024;
/// Smallest free space offered to a read.
const READ_CHUNK_BYTES: usize = 4 * 1024;
/// Pipelined responses are flushed once this many bytes are waiting.
const FLUSH_BYTES: usize = 64 * 1024;
const JSON: &str = "application/json";

/// Serves a connection until it closes, fails, times out, or shutdown.
pub async fn serve(core: &Core, stream: TcpStream, entry: usize) {
    let mut connection = Connection {
        core,
        stream,
        input: Vec::new(),
        output: Vec::new(),
        idle: Vec::with_capacity(IDLE_READ_BYTES),
        entry,
        request_id: [0; crate::http::request::REQUEST_ID_BYTES_MAX],
        request_id_bytes: 0,
        rejected: Vec::new(),
    };
    connection.run().await;
    let Connection { input, output, .. } = connection;
    core.give_buffer(input);
    core.give_buffer(output);
}

/// How long a refused connection is drained before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// Bytes read from a refused connection at most.
const REFUSAL_DRAIN_BYTES_MAX: usize = 64 * 1024;

/// Answers a connection with 503 and closes it: one beyond the per-core
/// cap, or one accepted with the reserve descriptor when the process ran
/// out of descriptors.
///
/// The close lingers: the write side is shut, then whatever the client had
/// already sent is read and dropped until it closes (within a short bound).
/// Closing a socket with unread input makes the kernel send a reset, and a
/// reset can destroy the 503 before the client reads it.
pub async fn refuse(core: &Core, mut stream: TcpStream) {
    let mut output = Vec::with_capacity(256);
    let mut request_id = [0u8; 16];
    core.next_request_id(&mut request_id);
    let error = ApiError::too_many_connections();
    let mut body = Vec::with_capacity(128);
    write_error_body(&mut body, &error);
    let fields = HeadFields {
        content_type: JSON,
        content_length: body.len(),
        request_id: &request_id,
        keep_alive: false,
        retry_after: true,
        allow: None,
    };
    write_head(&mut output, error.status, &fields);
    output.extend_from_slice(&body);
    core.metrics().request(Route::Other, error.status);
    let (written, mut buffer) = stream.write_all(output).await;
    if written.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES_MAX {
            buffer.clear();
            let (read, returned) = stream.read(buffer).await;
            buffer = returned;
            match read {
                Ok(0) | Err(_) => break,
                Ok(bytes) => drained += bytes,
            }
        }
    };
    let _ = monoio::time::timeout(REFUSAL_LINGER, drain).await;
}

enum Read {
    Data,
    Closed,
    TimedOut,
}

enum BodyError {
    Api(ApiError),
    /// The peer went away; nothing to answer.
    Closed,
}

impl From<FramingError> for BodyError {
    fn from(error: FramingError) -> Self {
        BodyError::Api(error.into())
    }
}

/// Whether the connection goes on after a request.
#[derive(PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

struct Connection<'a> {
    core: &'a Core,
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Holds the first bytes of a request while the connection is idle.
    idle: Vec<u8>,
    entry: usize,
    request_id: [u8; crate::http::request::REQUEST_ID_BYTES_MAX],
    request_id_bytes: usize,
    /// The `rejected` entries of a batch response being built.
    rejected: Vec<u8>,
}

impl Connection<'_> {
    async fn run(&mut self) {
        let server = &self.core.shared.config.server;
        let idle_timeout = Duration::from_millis(server.idle_timeout_ms);
        let header_timeout = Duration::from_millis(server.header_read_timeout_ms);
        loop {
            if self.input.is_empty() {
                if self.core.shared.shutdown.is_triggered() {
                    break;
                }
                self.core.set_idle(self.entry, true);
                let read = self.read_idle(Instant::now() + idle_timeout).await;
                self.core.set_idle(self.entry, false);
                if !matches!(read, Read::Data) {
                    break;
                }
            }
            let head_deadline = Instant::now() + header_timeout;
            let head = loop {
                match parse_head(&self.input, self.core.shared.config.limits.header_bytes_max) {
                    Ok(Parsed::Complete(head)) => break Some(head),
                    Ok(Parsed::Partial) => match self.read_more(head_deadline).await {
                        Read::Data => continue,
                        Read::Closed => break None,
                        Read::TimedOut => {
                            self.new_request_id();
                            self.answer_error(
                                Route::Other,
                                &ApiError::request_timeout(),
                                None,
                                false,
                            );
                            break None;
                        }
                    },
                    Err(error) => {
                        self.new_request_id();
                        self.answer_error(Route::Other, &error.into(), None, false);
                        break None;
                    }
                }
            };
            let Some(head) = head else { break };
            self.take_request_id(&head);
            let next = self.respond(&head).await;
            let flush_now =
                next == Next::Close || self.input.is_empty() || self.output.len() >= FLUSH_BYTES;
            if flush_now && !self.flush().await {
                return;
            }
            if next == Next::Close {
                break;
            }
        }
        self.flush().await;
    }

    /// Waits for the next request's first bytes with only the small idle
    /// buffer held: the full buffers go back to the core's pool meanwhile,
    /// so an idle keep-alive connection costs little memory.
    async fn read_idle(&mut self, deadline: Instant) -> Read {
        if !self.output.is_empty() && !self.flush().await {
            return Read::Closed;
        }
        self.release_buffers();
        let idle = std::mem::take(&mut self.idle);
        let remaining = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(remaining, self.stream.read(idle)).await {
            Ok((result, mut idle)) => {
                let read = match result {
                    Ok(0) | Err(_) => Read::Closed,
                    Ok(_) => {
                        self.acquire_buffers();
                        self.input.extend_from_slice(&idle);
                        Read::Data
                    }
                };
                idle.clear();
                self.idle = idle;
                read
            }
            Err(_) => Read::TimedOut,
        }
    }

    fn release_buffers(&mut self) {
        debug_assert!(self.input.is_empty() && self.output.is_empty());
        self.core.give_buffer(std::mem::take(&mut self.input));
        self.core.give_buffer(std::mem::take(&mut self.output));
    }

    fn acquire_buffers(&mut self) {
        if self.input.capacity() == 0 {
            self.input = self.core.take_buffer();
        }
        if self.output.capacity() == 0 {
            self.output = self.core.take_buffer();
        }
    }

    /// Reads more bytes into `input`, first flushing pending responses.
    async fn read_more(&mut self, deadline: Instant) -> Read {
        if !self.output.is_empty() && !self.flush().await {
            return Read::Closed;
        }
        if self.input.capacity() - self.input.len() < READ_CHUNK_BYTES {
            self.input.reserve(READ_CHUNK_BYTES);
        }
        let filled = self.input.len();
        let buffer = std::mem::take(&mut self.input).slice_mut(filled..);
        let remaining = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(remaining, self.stream.read(buffer)).await {
            Ok((result, buffer)) => {
                self.input = buffer.into_inner();
                match result {
                    Ok(0) | Err(_) => Read::Closed,
                    Ok(_) => Read::Data,
                }
            }
            // The cancelled read keeps its buffer; the connection closes.
            Err(_) => Read::TimedOut,
        }
    }

    async fn flush(&mut self) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let output = std::mem::take(&mut self.output);
        let (result, mut output) = self.stream.write_all(output).await;
        output.clear();
        self.output = output;
        result.is_ok()
    }

    fn take_request_id(&mut self, head: &Head) {
        match &head.request_id {
            Some(span) => {
                let id = &self.input[span.clone()];
                self.request_id[..id.len()].copy_from_slice(id);
                self.request_id_bytes = id.len();
            }
            None => self.new_request_id(),
        }
    }

    fn new_request_id(&mut self) {
        let mut id = [0u8; 16];
        self.core.next_request_id(&mut id);
        self.request_id[..16].copy_from_slice(&id);
        self.request_id_bytes = 16;
    }

    /// Answers one request whose head is parsed; consumes its bytes.
    async fn respond(&mut self, head: &Head) -> Next {
        let route = route_of(&self.input[head.path.clone()]);
        let keep_alive = head.keep_alive && !self.core.shared.shutdown.is_triggered();
        let (kind, check) = match route {
            Route::Events | Route::EventsBatch => {
                let kind = self.body_kind(route, head);
                (Some(kind), self.check_ingest(head, kind))
            }
            Route::Other => (None, Err(ApiError::not_found())),
            _ if matches!(head.method, Method::Get | Method::Head) => (None, Ok(None)),
            _ => (None, Err(ApiError::method_not_allowed())),
        };
        // A refused request whose body the client holds back for
        // `100-continue`, or whose length is over the limit, is answered
        // at once and the connection closed: its body will not be read.
        let body_max = self.core.shared.config.limits.body_bytes_max;
        let too_long = matches!(head.framing, Framing::Length(length) if length > body_max);
        if let Err(error) = &check {
            if head.expect_continue || too_long || error.close {
                self.answer_error(route, error, None, false);
                return Next::Close;
            }
        }
        if too_long {
            let error = ApiError::from(FramingError::BodyTooLarge {
                limit_bytes: body_max,
            });
            self.answer_error(route, &error, None, false);
            return Next::Close;
        }
        if head.expect_continue
            && self.input.len() == head.head_bytes
            && head.framing != Framing::None
        {
            self.output.extend_from_slice(CONTINUE);
        }
        let (body, consumed) = match self.read_body(head).await {
            Ok(read) => read,
            Err(BodyError::Closed) => return Next::Close,
            Err(BodyError::Api(error)) => {
                self.answer_error(route, &error, None, false);
                return Next::Close;
            }
        };
        self.core.metrics().body_bytes(body.len());
        let next = match check {
            Err(error) => {
                self.answer_error(route, &error, None, keep_alive);
                if keep_alive {
                    Next::KeepAlive
                } else {
                    Next::Close
                }
            }
            Ok(None) => {
                self.answer_probe(route, head.method == Method::Head, keep_alive);
                if keep_alive {
                    Next::KeepAlive
                } else {
                    Next::Close
                }
            }
            Ok(Some(grant)) => {
                let kind = kind.expect("ingest routes have a body kind");
                self.answer_ingest(route, head, &grant, kind, body, keep_alive)
                    .await
            }
        };
        if self.input.len() >= consumed {
            self.input.drain(..consumed);
        }
        next
    }

    fn body_kind(&self, route: Route, head: &Head) -> BodyKind {
        let ndjson = head.content_type.as_ref().is_some_and(|span| {
            let media = media_type(&self.input[span.clone()]);
            media.eq_ignore_ascii_case(b"application/x-ndjson")
                || media.eq_ignore_ascii_case(b"application/ndjson")
        });
        match (route, ndjson) {
            (Route::EventsBatch, true) => BodyKind::Ndjson,
            (Route::EventsBatch, false) => BodyKind::JsonBatch,
            _ => BodyKind::Single,
        }
    }

    /// Everything about an ingest request that can be refused before its body.
    fn check_ingest(&self, head: &Head, kind: BodyKind) -> Result<Option<Grant>, ApiError> {
        if head.method != Method::Post {
            return Err(ApiError::method_not_allowed());
        }
        if head.framing == Framing::None {
            return Err(FramingError::LengthRequired.into());
        }
        let header =
            |span: &Option<Range<usize>>| span.as_ref().map(|span| &self.input[span.clone()]);
        let key = presented_key(header(&head.api_key), header(&head.authorization));
        let snapshot = self.core.shared.keys.load();
        let grant = match snapshot.authenticate(key) {
            Ok(grant) => grant.clone(),
            Err(AuthError::Missing) => return Err(ApiError::missing_api_key()),
            Err(AuthError::Invalid) => return Err(ApiError::invalid_api_key()),
        };
        let media_ok = match header(&head.content_type).map(media_type) {
            None => true,
            Some(media) if media.eq_ignore_ascii_case(b"application/json") => true,
            Some(_) => kind == BodyKind::Ndjson,
        };
        let encoding_ok = header(&head.content_encoding)
            .is_none_or(|value| gzip::is_gzip(value) || value.eq_ignore_ascii_case(b"identity"));
        if !media_ok || !encoding_ok {
            return Err(ApiError::unsupported_media_type());
        }
        if self.core.shared.shutdown.is_triggered() {
            return Err(ApiError::unavailable("server is shutting down"));
        }
        if !self.core.shared.readiness.kafka_ready() {
            return Err(ApiError::unavailable("kafka is unreachable"));
        }
        Ok(Some(grant))
    }

    /// Reads the body; returns its span in `input` and where the request ends.
    async fn read_body(&mut self, head: &Head) -> Result<(Range<usize>, usize), BodyError> {
        let start = head.head_bytes;
        let limits = &self.core.shared.config.limits;
        let deadline = Instant::now()
            + Duration::from_millis(self.core.shared.config.server.body_read_timeout_ms);
        match head.framing {
            Framing::None => Ok((start..start, start)),
            Framing::Length(length) => {
                let end = start + length;
                if self.input.len() < end {
                    self.input.reserve(end - self.input.len());
                }
                while self.input.len() < end {
                    self.read_body_bytes(deadline).await?;
                }
                Ok((start..end, end))
            }
            Framing::Chunked => {
                let mut decoder =
                    ChunkedDecoder::new(start, limits.body_bytes_max, limits.header_bytes_max);
                loop {
                    match decoder.decode(&mut self.input)? {
                        Progress::Done { end, consumed } => return Ok((start..end, consumed)),
                        Progress::NeedMore => self.read_body_bytes(deadline).await?,
                    }
                }
            }
        }
    }

    async fn read_body_bytes(&mut self, deadline: Instant) -> Result<(), BodyError> {
        match self.read_more(deadline).await {
            Read::Data => Ok(()),
            Read::Closed => Err(BodyError::Closed),
            Read::TimedOut => Err(BodyError::Api(ApiError::request_timeout())),
        }
    }

    async fn answer_ingest(
        &mut self,
        route: Route,
        head: &Head,
        grant: &Grant,
        kind: BodyKind,
        body: Range<usize>,
        keep_alive: bool,
    ) -> Next {
        let next = if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        };
        self.rejected.clear();
        let handed = match self.hand_off(head, grant, kind, body) {
            Ok(handed) => handed,
            Err(error) => {
                self.answer_error(route, &error, Some(&grant.tenant_id), keep_alive);
                return if error.close { Next::Close } else { next };
            }
        };
        let delivered = match self.core.shared.config.server.ack_mode {
            AckMode::Enqueued => {
                self.core
                    .inflight
                    .borrow_mut()
                    .detach(handed.ticket, self.core.metrics());
                true
            }
            AckMode::Durable => match self.await_delivery(&handed).await {
                Ok(delivered) => delivered,
                Err(error) => {
                    let keep_alive = keep_alive && !self.core.shared.shutdown.is_triggered();
                    self.answer_error(route, &error, Some(&grant.tenant_id), keep_alive);
                    return if keep_alive { next } else { Next::Close };
                }
            },
        };
        // Shutdown may have started while this request waited for Kafka.
        let keep_alive = keep_alive && !self.core.shared.shutdown.is_triggered();
        let next = if keep_alive { next } else { Next::Close };
        if !delivered {
            let error = ApiError::unavailable("kafka did not store the events");
            self.answer_error(route, &error, Some(&grant.tenant_id), keep_alive);
            return next;
        }
        self.answer_accepted(route, &handed, keep_alive, Some(&grant.tenant_id));
        next
    }

    /// Inflates a gzip body if needed, then validates and hands it over.
    fn hand_off(
        &mut self,
        head: &Head,
        grant: &Grant,
        kind: BodyKind,
        body: Range<usize>,
    ) -> Result<Handed, ApiError> {
        let gzipped = head
            .content_encoding
            .as_ref()
            .is_some_and(|span| gzip::is_gzip(&self.input[span.clone()]));
        if !gzipped {
            return ingest(
                self.core,
                grant,
                kind,
                &self.input[body],
                &mut self.rejected,
            );
        }
        let mut inflated = std::mem::take(&mut self.core.scratch.borrow_mut().inflated);
        let limit = self.core.shared.config.limits.decompressed_body_bytes_max;
        let result = gzip::inflate(&self.input[body], &mut inflated, limit)
            .map_err(ApiError::from)
            .and_then(|()| ingest(self.core, grant, kind, &inflated, &mut self.rejected));
        if inflated.capacity() > super::core::POOLED_BUFFER_BYTES_MAX {
            inflated = Vec::new();
        }
        self.core.scratch.borrow_mut().inflated = inflated;
        result
    }

    /// Waits for every delivery report of the request, up to the deadline.
    async fn await_delivery(&mut self, handed: &Handed) -> Result<bool, ApiError> {
        let timeout = Duration::from_millis(self.core.shared.config.server.delivery_timeout_ms);
        let delivery = Delivery {
            inflight: &self.core.inflight,
            metrics: self.core.metrics(),
            ticket: handed.ticket,
            finished: false,
        };
        match monoio::time::timeout(timeout, delivery).await {
            Ok(delivered) => Ok(delivered),
            Err(_) => {
                self.core.metrics().delivery_timeout();
                Err(ApiError::unavailable(
                    "kafka did not acknowledge the events before the delivery deadline",
                ))
            }
        }
    }

    fn answer_accepted(
        &mut self,
        route: Route,
        handed: &Handed,
        keep_alive: bool,
        tenant: Option<&str>,
    ) {
        let core = self.core;
        let mut scratch = core.scratch.borrow_mut();
        let body = &mut scratch.body;
        body.clear();
        body.extend_from_slice(b"{\"accepted\":");
        body.extend_from_slice(itoa::Buffer::new().format(handed.accepted).as_bytes());
        if route == Route::EventsBatch {
            body.extend_from_slice(b",\"rejected\":[");
            body.extend_from_slice(&self.rejected);
            body.push(b']');
        }
        body.push(b'}');
        let status = if handed.accepted == 0 { 400 } else { 202 };
        if status == 400 {
            self.log_failure(route, status, "invalid_event", tenant);
        }
        let fields = HeadFields {
            content_type: JSON,
            content_length: body.len(),
            request_id: &self.request_id[..self.request_id_bytes],
            keep_alive,
            retry_after: false,
            allow: None,
        };
        write_head(&mut self.output, status, &fields);
        self.output.extend_from_slice(body);
        core.metrics().request(route, status);
    }

    /// `/healthz`, `/readyz` and `/metrics`.
    fn answer_probe(&mut self, route: Route, head_only: bool, keep_alive: bool) {
        let shared = &self.core.shared;
        let now_ms = crate::health::now_ms();
        let readiness = shared.readiness.status(now_ms);
        let (status, content_type, body): (u16, &str, Vec<u8>) = match route {
            Route::Healthz => (200, JSON, b"{\"status\":\"ok\"}".to_vec()),
            Route::Readyz => match &readiness {
                Ok(()) => (200, JSON, b"{\"status\":\"ready\"}".to_vec()),
                Err(reason) => {
                    let mut body = b"{\"status\":\"not_ready\",\"reason\":".to_vec();
                    write_json_string(&mut body, reason.as_bytes());
                    body.push(b'}');
                    (503, JSON, body)
                }
            },
            _ => (
                200,
                "text/plain; version=0.0.4",
                shared.metrics.render(readiness.is_ok()).into_bytes(),
            ),
        };
        let fields = HeadFields {
            content_type,
            content_length: body.len(),
            request_id: &self.request_id[..self.request_id_bytes],
            keep_alive,
            retry_after: status == 503,
            allow: None,
        };
        write_head(&mut self.output, status, &fields);
        if !head_only {
            self.output.extend_from_slice(&body);
        }
        self.core.metrics().request(route, status);
    }

    fn answer_error(
        &mut self,
        route: Route,
        error: &ApiError,
        tenant: Option<&str>,
        keep_alive: bool,
    ) {
        let mut body = std::mem::take(&mut self.core.scratch.borrow_mut().body);
        body.clear();
        write_error_body(&mut body, error);
        let allow = (error.status == 405).then_some(match route {
            Route::Events | Route::EventsBatch => "POST",
            _ => "GET, HEAD",
        });
        let fields = HeadFields {
            content_type: JSON,
            content_length: body.len(),
            request_id: &self.request_id[..self.request_id_bytes],
            keep_alive: keep_alive && !error.close,
            retry_after: error.retry_after(),
            allow,
        };
        write_head(&mut self.output, error.status, &fields);
        self.output.extend_from_slice(&body);
        self.core.scratch.borrow_mut().body = body;
        self.core.metrics().request(route, error.status);
        self.log_failure(route, error.status, error.code, tenant);
    }

    fn log_failure(&self, route: Route, status: u16, code: &str, tenant: Option<&str>) {
        if self.core.may_log() {
            let request_id = String::from_utf8_lossy(&self.request_id[..self.request_id_bytes]);
            tracing::warn!(status, code, tenant = tenant.unwrap_or("-"), request_id = %request_id, route = ?route, "request refused");
        }
    }
}

fn write_error_body(body: &mut Vec<u8>, error: &ApiError) {
    body.extend_from_slice(b"{\"error\":");
    write_error_object(body, error);
    body.push(b'}');
}

fn route_of(target: &[u8]) -> Route {
    let path = target.split(|&byte| byte == b'?').next().unwrap_or(target);
    match path {
        b"/v1/events" | b"/events" => Route::Events,
        b"/v1/events/batch" => Route::EventsBatch,
        b"/healthz" => Route::Healthz,
        b"/readyz" => Route::Readyz,
        b"/metrics" => Route::Metrics,
        _ => Route::Other,
    }
}

/// The media type of a Content-Type value, without parameters.
fn media_type(value: &[u8]) -> &[u8] {
    trim(value.split(|&byte| byte == b';').next().unwrap_or(value))
}
