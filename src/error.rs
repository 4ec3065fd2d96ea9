//! Request-level errors and the one place they become HTTP statuses.

use std::borrow::Cow;

use crate::http::gzip::GzipError;
use crate::http::FramingError;
use crate::json::write_json_string;

/// Every error code a refusal carries, in metrics order
/// (`sluice_http_refusals_total{code}`); tests/refusal_codes.rs checks
/// that every code in src/ is listed.
pub const CODES: [&str; 22] = [
    "ambiguous_credentials",
    "bad_request",
    "event_in_flight",
    "expectation_failed",
    "header_too_large",
    "idempotency_key_reused",
    "invalid_api_key",
    "invalid_event",
    "invalid_json",
    "length_required",
    "method_not_allowed",
    "missing_api_key",
    "not_found",
    "origin_not_allowed",
    "payload_too_large",
    "rate_limited",
    "request_timeout",
    "reserved_field",
    "schema_budget_exceeded",
    "schema_violation",
    "unavailable",
    "unsupported_media_type",
];

/// The code's index in [`CODES`]; `CODES.len()` for one not listed.
pub fn code_index(code: &str) -> usize {
    CODES
        .iter()
        .position(|&known| known == code)
        .unwrap_or(CODES.len())
}

/// A refusal sent to the client as `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// The event field at fault, for event validation errors.
    pub field: Option<&'static str>,
    /// Whether the connection must be closed after the response because
    /// the request's framing, and so the next request's start, is unknown.
    pub close: bool,
    /// For 429: which limit refused and how long to wait (boxed: a
    /// refusal path, and it keeps every `Result<_, ApiError>` small).
    pub rate_limit: Option<Box<crate::tenancy::rate::Refusal>>,
    /// A JSON Pointer to the part of the event at fault (schema
    /// violations); shown as `field`, in place of the named field.
    pub pointer: Option<Box<str>>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            close: false,
            rate_limit: None,
            pointer: None,
        }
    }

    /// 429: the key is over one of its rate limits.
    pub fn rate_limited(refusal: crate::tenancy::rate::Refusal) -> Self {
        if refusal.permanent {
            let message = format!(
                "this request is over the API key's burst of {} {}: it can never be admitted whole; send at most {} {} per request",
                refusal.burst, refusal.dimension, refusal.burst, refusal.dimension
            );
            return Self::new(413, "payload_too_large", message);
        }
        let message = format!(
            "this API key is over its limit of {} {} per second; retry after {} s",
            refusal.quota_per_second, refusal.dimension, refusal.retry_after_seconds
        );
        ApiError {
            rate_limit: Some(Box::new(refusal)),
            ..Self::new(429, "rate_limited", message)
        }
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn not_found() -> Self {
        Self::new(404, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    pub fn missing_api_key() -> Self {
        Self::new(
            401,
            "missing_api_key",
            "send the API key in X-CS-API-Key, Authorization: Bearer, or as the Basic user name",
        )
    }

    /// `X-CS-API-Key` and an `Authorization` naming another key: which one
    /// was meant is unknowable. Permanent: the client must send one.
    pub fn two_credentials() -> Self {
        ApiError::new(
            400,
            "ambiguous_credentials",
            "X-CS-API-Key and Authorization carry different keys: send one credential",
        )
    }

    /// A credential header (`header`) sent more than once.
    pub fn repeated_credential(header: &'static str) -> Self {
        ApiError::new(
            400,
            "ambiguous_credentials",
            format!("the {header} header is sent more than once: send one credential"),
        )
    }

    pub fn invalid_api_key() -> Self {
        Self::new(401, "invalid_api_key", "unknown or disabled API key")
    }

    /// A key sent in the query string from a browser page whose origin is
    /// not in `cors.allowed_origins`.
    pub fn origin_not_allowed() -> Self {
        Self::new(
            403,
            "origin_not_allowed",
            "this page's origin may not send events (cors.allowed_origins)",
        )
    }

    /// 415, naming what the request sent and what is accepted.
    pub fn unsupported_media_type(content_type: &[u8], content_encoding: &[u8]) -> Self {
        let shown = |value: &[u8]| {
            let text = String::from_utf8_lossy(&value[..value.len().min(64)]).into_owned();
            if text.is_empty() {
                "none".to_string()
            } else {
                format!("{text:?}")
            }
        };
        Self::new(
            415,
            "unsupported_media_type",
            format!(
                "got Content-Type {} and Content-Encoding {}; accepted: Content-Type application/json (or application/x-ndjson on /v1/events/batch) and Content-Encoding gzip, identity or none",
                shown(content_type),
                shown(content_encoding)
            ),
        )
    }

    pub fn unavailable(reason: &'static str) -> Self {
        Self::new(503, "unavailable", reason)
    }

    pub fn overloaded() -> Self {
        Self::unavailable("server is at capacity; retry later")
    }

    /// 503: an earlier request with the same event is still waiting for
    /// Kafka; once it is answered a retry is stored or found stored.
    pub fn event_in_flight(index: usize) -> Self {
        Self::new(
            503,
            "event_in_flight",
            format!(
                "event {index} (the same event_id) is being stored by an earlier request; retry once that request is answered"
            ),
        )
    }

    /// 503: a request with the same `Idempotency-Key` is still waiting
    /// for Kafka; once it is answered a retry is found stored (the same
    /// payload) or refused (422, another payload) or stored (it stored
    /// nothing).
    pub fn idempotency_key_in_flight() -> Self {
        Self::new(
            503,
            "event_in_flight",
            "a request with this Idempotency-Key is being stored; retry once it is answered",
        )
    }

    /// 422 (permanent): the `Idempotency-Key` named another payload within
    /// the dedup window, and events of that payload are stored
    /// (draft-ietf-httpapi-idempotency-key-header).
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request body, whose events are stored; a retry must send the same bytes, and other events need another key",
        )
    }

    pub fn too_many_connections() -> Self {
        Self::unavailable("too many connections on this core").closing()
    }

    pub fn request_timeout() -> Self {
        Self::new(408, "request_timeout", "request not received in time").closing()
    }

    pub fn batch_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "payload_too_large",
            format!("a batch may hold at most {limit} events"),
        )
    }

    /// A request whose records would pass what its size allows it to
    /// build (`events::validate::record_bytes_max`): permanent.
    pub fn amplification(body_bytes: usize, record_bytes_max: usize) -> Self {
        ApiError::new(
            413,
            "payload_too_large",
            format!(
                "this request's events would take more than {record_bytes_max} bytes as records, the limit for its {body_bytes} bytes (4 bytes per byte sent plus 1024 per event); a Segment batch's shared context is copied into every call: send it in fewer calls, or in each call"
            ),
        )
    }

    pub fn event_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "payload_too_large",
            format!("an event may be at most {limit} bytes"),
        )
    }

    /// Whether a response to this error carries `Retry-After`.
    pub fn retry_after(&self) -> bool {
        self.status == 429 || self.status == 503
    }

    /// Appends the response body `{"error": {"code", "message"[, "field"]}}`.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"error\":");
        self.write_object(out);
        out.push(b'}');
    }

    /// Appends `{"code", "message"[, "field"]}` (a dead letter's `error`).
    pub fn write_object(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        self.write_fields(out);
        out.push(b'}');
    }

    /// Appends `"code":..,"message":..[,"field":..]` without braces, for
    /// an object that carries more members (a rejected event's `index`).
    pub fn write_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"code\":\"");
        out.extend_from_slice(self.code.as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        write_json_string(out, self.shown_message().as_bytes());
        if let Some(pointer) = self.shown_pointer() {
            out.extend_from_slice(b",\"field\":");
            write_json_string(out, pointer.as_bytes());
        } else if let Some(field) = self.field {
            out.extend_from_slice(b",\"field\":\"");
            out.extend_from_slice(field.as_bytes());
            out.push(b'"');
        }
    }
}

impl ApiError {
    /// The message as answered, dead-lettered and logged: at most
    /// [`ERROR_MESSAGE_BYTES_MAX`] bytes, whatever it quotes.
    pub fn shown_message(&self) -> Cow<'_, str> {
        truncate_utf8(&self.message, ERROR_MESSAGE_BYTES_MAX)
    }

    /// The pointer as answered and logged: at most
    /// [`ERROR_VALUE_BYTES_MAX`] bytes (member names are the client's).
    pub fn shown_pointer(&self) -> Option<Cow<'_, str>> {
        let pointer = self.pointer.as_deref()?;
        Some(truncate_utf8(pointer, ERROR_VALUE_BYTES_MAX))
    }
}

/// The most bytes of one value a client sent that a refusal quotes (a
/// schema violation names the offending value; a 500 KB string would
/// otherwise be answered, dead-lettered and logged whole, per event).
pub const ERROR_VALUE_BYTES_MAX: usize = 256;

/// The most bytes of a refusal's message, whatever it quotes (several
/// values, a list of unexpected member names, a schema).
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// What a cut text ends with.
pub const ELLIPSIS: &str = "\u{2026}";

/// `text`, or its first bytes cut on a character boundary and ended with
/// [`ELLIPSIS`], `max_bytes` in all (`max_bytes` is at least 4).
pub fn truncate_utf8(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let mut end = max_bytes.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{ELLIPSIS}", &text[..end]))
}

/// `value` as `Display` writes it, at most `max_bytes` bytes (cut as
/// [`truncate_utf8`] cuts). The writing stops once past the limit, so a
/// huge value costs `max_bytes`, not its size.
pub fn capped_display(value: &impl std::fmt::Display, max_bytes: usize) -> String {
    use std::fmt::Write as _;
    let mut capped = Capped {
        text: String::new(),
        room: max_bytes,
        cut: false,
    };
    // An error is the cap, reached.
    let _ = write!(capped, "{value}");
    let mut text = capped.text;
    if capped.cut {
        let mut end = max_bytes.saturating_sub(ELLIPSIS.len()).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(ELLIPSIS);
    }
    text
}

/// A `fmt::Write` that takes `room` bytes, then fails.
struct Capped {
    text: String,
    room: usize,
    cut: bool,
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, piece: &str) -> std::fmt::Result {
        let left = self.room - self.text.len();
        if piece.len() <= left {
            self.text.push_str(piece);
            return Ok(());
        }
        let mut end = left;
        while !piece.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&piece[..end]);
        self.cut = true;
        Err(std::fmt::Error)
    }
}

impl From<FramingError> for ApiError {
    fn from(error: FramingError) -> Self {
        let error = match error {
            FramingError::Malformed(why) => ApiError::new(400, "bad_request", why),
            FramingError::Smuggling(why) => ApiError::new(400, "bad_request", why),
            FramingError::BadChunk(why) => ApiError::new(400, "bad_request", why),
            FramingError::HeadTooLarge { limit_bytes } => ApiError::new(
                431,
                "header_too_large",
                format!(
                    "request head exceeds {limit_bytes} bytes or {} headers",
                    crate::http::request::HEADERS_MAX
                ),
            ),
            FramingError::BodyTooLarge { limit_bytes } => ApiError::new(
                413,
                "payload_too_large",
                format!("request body exceeds {limit_bytes} bytes"),
            ),
            FramingError::WireTooLarge { limit_bytes } => ApiError::new(
                413,
                "payload_too_large",
                format!("chunked request body exceeds {limit_bytes} bytes on the wire, chunk framing included"),
            ),
            FramingError::ExpectationFailed => ApiError::new(
                417,
                "expectation_failed",
                "only Expect: 100-continue is supported",
            ),
            FramingError::LengthRequired => ApiError::new(
                411,
                "length_required",
                "Content-Length or Transfer-Encoding: chunked is required",
            ),
        };
        error.closing()
    }
}

impl From<GzipError> for ApiError {
    fn from(error: GzipError) -> Self {
        match error {
            GzipError::TooLarge { limit_bytes } => ApiError::new(
                413,
                "payload_too_large",
                format!("decompressed request body exceeds {limit_bytes} bytes"),
            ),
            GzipError::Corrupt => ApiError::new(400, "bad_request", "body is not valid gzip"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &ApiError) -> serde_json::Value {
        let mut out = Vec::new();
        error.write_body(&mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn error_bodies_carry_code_message_and_field() {
        let plain = ApiError::new(400, "bad_request", "a \"quoted\" reason");
        assert_eq!(
            body(&plain),
            serde_json::json!({"error": {"code": "bad_request", "message": "a \"quoted\" reason"}})
        );
        let field = ApiError {
            field: Some("user_id"),
            ..ApiError::new(400, "invalid_event", "user_id is required")
        };
        assert_eq!(body(&field)["error"]["field"], "user_id");
        // A schema violation's pointer is shown in place of the field.
        let pointer = ApiError {
            field: Some("properties"),
            pointer: Some("/properties/a\"b".into()),
            ..ApiError::new(400, "schema_violation", "wrong type")
        };
        assert_eq!(body(&pointer)["error"]["field"], "/properties/a\"b");
    }

    #[test]
    fn error_fields_extend_an_enclosing_object() {
        let mut out = b"{\"index\":3,".to_vec();
        ApiError::not_found().write_fields(&mut out);
        out.push(b'}');
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["index"], 3);
        assert_eq!(value["code"], "not_found");
        assert_eq!(value["message"], "no such route");
    }

    #[test]
    fn refusals_quote_at_most_the_capped_bytes_cut_on_a_character() {
        assert_eq!(truncate_utf8("short", 16), "short");
        // 'é' is two bytes: a cut never splits it.
        let long = "é".repeat(100);
        for max in [4, 5, 6, 7, 64] {
            let cut = truncate_utf8(&long, max);
            assert!(cut.len() <= max && cut.ends_with(ELLIPSIS), "{max}: {cut}");
            assert!(cut.len() + 2 > max, "{max}: {cut}");
        }
        let value = serde_json::Value::String("x".repeat(1 << 20));
        let shown = capped_display(&value, ERROR_VALUE_BYTES_MAX);
        assert_eq!(shown.len(), ERROR_VALUE_BYTES_MAX);
        assert!(
            shown.starts_with("\"xxx") && shown.ends_with(ELLIPSIS),
            "{shown}"
        );
        assert_eq!(capped_display(&"fits", 4), "fits");
        assert_eq!(capped_display(&"é".repeat(3), 5), "é\u{2026}");
        // The answer, the dead letter and the log line show capped texts.
        let error = ApiError {
            pointer: Some(format!("/properties/{}", "k".repeat(10_000)).into()),
            ..ApiError::new(400, "schema_violation", "v".repeat(100_000))
        };
        let shown = body(&error);
        let message = shown["error"]["message"].as_str().unwrap();
        assert_eq!(message.len(), ERROR_MESSAGE_BYTES_MAX);
        let field = shown["error"]["field"].as_str().unwrap();
        assert_eq!(field.len(), ERROR_VALUE_BYTES_MAX);
        assert!(field.starts_with("/properties/kkk") && field.ends_with(ELLIPSIS));
    }
}
