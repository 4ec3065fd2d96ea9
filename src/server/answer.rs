//! Writing responses into a connection's output buffer: one function
//! writes every response head, so each carries `Date`, `X-Request-Id` and
//! the right `Connection`, and no response to `HEAD` carries a body.

use std::borrow::Cow;

use super::context::Core;
use super::ingest::Outcome;
use crate::error::ApiError;
use crate::http::request::{Head, REQUEST_ID_BYTES_MAX};
use crate::http::response::{write_head, HeadFields, RETRY_AFTER_SECONDS};
use crate::json::write_json_string;
use crate::route::Route;

const JSON: &str = "application/json";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";
/// The API's description, `GET /openapi.json` (SPEC §11).
pub const OPENAPI: &[u8] = include_bytes!("../../api/openapi.json");

/// What every response to the request in hand shares.
pub struct Reply {
    pub route: Route,
    /// A `HEAD` request: the head is sent, the body is not (RFC 9110 §9.3.2).
    pub head_only: bool,
    pub keep_alive: bool,
    request_id: [u8; REQUEST_ID_BYTES_MAX],
    request_id_bytes: usize,
    /// The browser origin, when it is an allowed one (CORS headers).
    pub cors: Option<crate::cors::Allowed>,
    /// When the request's head was read (the core's clock at its tick),
    /// for the request-duration histogram.
    started: Option<std::time::Instant>,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            route: Route::Other,
            head_only: false,
            keep_alive: false,
            request_id: [0; REQUEST_ID_BYTES_MAX],
            request_id_bytes: 0,
            cors: None,
            started: None,
        }
    }
}

impl Reply {
    /// A reply to a request that could not be parsed: no route, close.
    pub fn unparsed(&mut self, core: &Core) {
        self.route = Route::Other;
        self.head_only = false;
        self.keep_alive = false;
        self.cors = None;
        self.started = Some(core.now());
        self.new_request_id(core);
    }

    /// A reply to `head`, whose spans index `input`.
    pub fn parsed(&mut self, core: &Core, input: &[u8], head: &Head) {
        self.route = Route::of(&input[head.path.clone()]);
        self.started = Some(core.now());
        self.head_only = head.method == crate::http::request::Method::Head;
        self.keep_alive = head.keep_alive && !core.shared.shutdown.is_triggered();
        match &head.request_id {
            Some(span) => {
                let id = &input[span.clone()];
                self.request_id[..id.len()].copy_from_slice(id);
                self.request_id_bytes = id.len();
            }
            None => self.new_request_id(core),
        }
        self.cors = head
            .origin
            .as_ref()
            .and_then(|span| core.shared.cors.allowed(&input[span.clone()]));
    }

    fn new_request_id(&mut self, core: &Core) {
        let mut id = [0u8; 16];
        core.next_request_id(&mut id);
        self.request_id[..16].copy_from_slice(&id);
        self.request_id_bytes = 16;
    }

    pub fn request_id(&self) -> &[u8] {
        &self.request_id[..self.request_id_bytes]
    }
}

/// Headers some responses add.
#[derive(Default, Clone, Copy)]
pub struct Extra {
    pub retry_after_seconds: Option<u64>,
    pub allow: Option<&'static str>,
    /// Close whatever the request asked.
    pub close: bool,
    /// A 429's policy, quota per second and seconds to wait.
    pub rate_limit: Option<crate::http::response::RateLimitFields<'static>>,
    /// A CORS preflight answer: the allowed methods.
    pub preflight: Option<&'static str>,
}

/// Writes one whole response and counts it.
pub fn write_response(
    core: &Core,
    output: &mut Vec<u8>,
    reply: &Reply,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: Extra,
) {
    let date = core.date();
    let fields = HeadFields {
        content_type,
        content_length: body.len(),
        request_id: reply.request_id(),
        date: &date,
        keep_alive: reply.keep_alive && !extra.close,
        retry_after_seconds: extra.retry_after_seconds,
        allow: extra.allow,
        rate_limit: extra.rate_limit,
        cors_origin: reply
            .cors
            .map(|allowed| core.shared.cors.header_value(allowed)),
        preflight: extra
            .preflight
            .map(|methods| (methods, core.shared.cors.max_age_seconds)),
    };
    write_head(output, status, &fields);
    if !reply.head_only {
        output.extend_from_slice(body);
    }
    // One clock read per response: the histogram's cost on the hot path.
    let took = reply
        .started
        .map_or(std::time::Duration::ZERO, |started| started.elapsed());
    core.metrics().request(reply.route, status, took);
}

/// `{"error": {...}}` with the error's status; logged within the core's budget.
pub fn write_error(
    core: &Core,
    output: &mut Vec<u8>,
    reply: &Reply,
    error: &ApiError,
    grant: Option<&crate::tenancy::keys::Grant>,
) {
    let mut body = std::mem::take(&mut core.scratch.borrow_mut().body);
    body.clear();
    error.write_body(&mut body);
    let extra = Extra {
        retry_after_seconds: error.retry_after().then(|| {
            error
                .rate_limit
                .as_deref()
                .map_or(RETRY_AFTER_SECONDS.into(), |refusal| {
                    refusal.retry_after_seconds
                })
        }),
        allow: (error.status == 405).then(|| reply.route.allowed_methods()),
        close: error.close,
        rate_limit: error.rate_limit.as_deref().map(|refusal| {
            crate::http::response::RateLimitFields {
                policy: refusal.dimension,
                quota: refusal.burst,
                window_seconds: refusal
                    .burst
                    .div_ceil(refusal.quota_per_second.max(1))
                    .max(1),
                content_bytes: refusal.dimension == "bytes",
                reset_seconds: refusal.retry_after_seconds,
            }
        }),
        preflight: None,
    };
    write_response(core, output, reply, error.status, JSON, &body, extra);
    core.scratch.borrow_mut().body = body;
    core.metrics()
        .refusal(error.code, grant.map(|grant| grant.metrics_slot));
    log_failure(core, reply, error, grant.map(|grant| &*grant.tenant_id));
}

/// `202 {"accepted": N}`, with `rejected` on the batch routes and
/// `duplicates` (indexes of events already stored, not published again)
/// when there are any; a batch with nothing accepted is a 400 with the
/// same body. Segment's routes answer 200 `{"success": true, "accepted": N}`.
pub fn write_accepted(
    core: &Core,
    output: &mut Vec<u8>,
    reply: &Reply,
    (accepted, rejected): (usize, usize),
    outcome: &Outcome,
    grant: &crate::tenancy::keys::Grant,
) {
    let mut scratch = core.scratch.borrow_mut();
    let body = &mut scratch.body;
    body.clear();
    // Segment's endpoints answer as Segment does, 200 with `success`:
    // SDK versions that take only 200 as success would otherwise resend.
    let segment = reply.route.is_segment();
    body.extend_from_slice(match (segment, accepted) {
        (false, _) => b"{\"accepted\":".as_slice(),
        (true, 0) => b"{\"success\":false,\"accepted\":",
        (true, _) => b"{\"success\":true,\"accepted\":",
    });
    body.extend_from_slice(itoa::Buffer::new().format(accepted).as_bytes());
    if matches!(reply.route, Route::EventsBatch | Route::SegmentBatch) {
        body.extend_from_slice(b",\"rejected\":[");
        body.extend_from_slice(&outcome.rejected);
        body.push(b']');
    }
    if !outcome.duplicates.is_empty() {
        body.extend_from_slice(b",\"duplicates\":[");
        for (position, index) in outcome.duplicates.iter().enumerate() {
            if position > 0 {
                body.push(b',');
            }
            body.extend_from_slice(itoa::Buffer::new().format(*index).as_bytes());
        }
        body.push(b']');
    }
    body.push(b'}');
    let status = match (accepted, segment) {
        (0, _) => 400,
        (_, true) => 200,
        (_, false) => 202,
    };
    write_response(core, output, reply, status, JSON, body, Extra::default());
    drop(scratch);
    core.metrics()
        .tenant_events(grant.metrics_slot, accepted, rejected);
    if status == 400 {
        let error = ApiError::new(
            400,
            "invalid_event",
            "every event of the batch was rejected",
        );
        core.metrics().refusal(error.code, Some(grant.metrics_slot));
        log_failure(core, reply, &error, Some(&grant.tenant_id));
    }
}

/// The answer to a CORS preflight (`OPTIONS`): 204, with the
/// Access-Control-* headers when the origin is allowed and none otherwise,
/// so the browser's own check refuses a disallowed page.
pub fn write_preflight(core: &Core, output: &mut Vec<u8>, reply: &Reply) {
    let methods = reply.route.allowed_methods();
    let extra = Extra {
        allow: Some(methods),
        preflight: Some(methods),
        ..Extra::default()
    };
    write_response(core, output, reply, 204, JSON, b"", extra);
}

/// `/healthz`, `/readyz`, `/metrics` and `/openapi.json`.
pub fn write_probe(core: &Core, output: &mut Vec<u8>, reply: &Reply) {
    let shared = &core.shared;
    let readiness = shared.readiness.status(core.now_ms());
    // Fixed bodies are sent from where they are: a load balancer polls
    // /readyz, and the API document is 90 KB.
    let (status, content_type, body): (u16, &str, Cow<'static, [u8]>) = match reply.route {
        Route::Healthz => (200, JSON, Cow::Borrowed(b"{\"status\":\"ok\"}")),
        Route::OpenApi => (200, JSON, Cow::Borrowed(OPENAPI)),
        Route::Readyz => match &readiness {
            Ok(()) => (200, JSON, Cow::Borrowed(b"{\"status\":\"ready\"}")),
            Err(reason) => {
                let mut body = b"{\"status\":\"not_ready\",\"reason\":".to_vec();
                write_json_string(&mut body, reason.as_bytes());
                body.push(b'}');
                (503, JSON, Cow::Owned(body))
            }
        },
        _ => (
            200,
            PROMETHEUS_TEXT,
            Cow::Owned({
                let mut text = shared.metrics.render(readiness.is_ok());
                crate::metrics::render_keys_loaded(&mut text, shared.keys.load().len());
                text.into_bytes()
            }),
        ),
    };
    let extra = Extra {
        retry_after_seconds: (status == 503).then_some(RETRY_AFTER_SECONDS.into()),
        ..Extra::default()
    };
    write_response(core, output, reply, status, content_type, &body, extra);
}

/// One line per refused request, within the core's log budget (lines and
/// bytes): what a client was told (code, message, field, each as capped
/// for the answer) and whose request it was. A client's mistake (4xx) is
/// `info`; the server's trouble (5xx) is `warn`.
fn log_failure(core: &Core, reply: &Reply, error: &ApiError, tenant: Option<&str>) {
    use super::context::{logged_bytes, LOG_LINE_BYTES_FIXED};
    use crate::error::{ERROR_MESSAGE_BYTES_MAX, ERROR_VALUE_BYTES_MAX};
    let tenant = tenant.unwrap_or("-");
    let shown = |text: &str, max: usize| logged_bytes(&text.as_bytes()[..text.len().min(max)]);
    let line_bytes = LOG_LINE_BYTES_FIXED
        + shown(&error.message, ERROR_MESSAGE_BYTES_MAX)
        + error
            .pointer
            .as_deref()
            .map_or(0, |pointer| shown(pointer, ERROR_VALUE_BYTES_MAX))
        + logged_bytes(tenant.as_bytes());
    if !core.may_log_bytes(line_bytes) {
        return;
    }
    let request_id = String::from_utf8_lossy(reply.request_id());
    let pointer = error.shown_pointer();
    let field = pointer.as_deref().or(error.field).unwrap_or("-");
    let message = error.shown_message();
    let (status, code) = (error.status, error.code);
    let route = reply.route.label();
    if status >= 500 {
        tracing::warn!(status, code, field, tenant, request_id = %request_id, route, "request refused: {message}");
    } else {
        tracing::info!(status, code, field, tenant, request_id = %request_id, route, "request refused: {message}");
    }
}
