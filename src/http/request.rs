//! Request-head parsing with httparse into borrowed spans, and the framing
//! decisions RFC 9112 section 6 asks for (no request smuggling).

use super::{FramingError, Span};

/// Headers accepted per request; more is answered 431.
pub const HEADERS_MAX: usize = 64;

/// Longest `X-Request-Id` echoed back; longer ones are replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Head,
    Options,
    Other,
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// A parsed request head. Every span indexes the buffer it was parsed from.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: Method,
    pub path: Span,
    /// HTTP/1.0 (`false`) or HTTP/1.1 (`true`).
    pub http11: bool,
    pub head_bytes: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub content_type: Option<Span>,
    pub content_encoding: Option<Span>,
    pub api_key: Option<Span>,
    pub authorization: Option<Span>,
    /// A header that carries a credential (`X-CS-API-Key`,
    /// `Authorization`) sent more than once: which one was meant is
    /// unknowable, so the request is refused rather than served with either.
    pub repeated_credential: Option<CredentialHeader>,
    pub request_id: Option<Span>,
    /// An `Idempotency-Key` was sent (draft-ietf-httpapi-idempotency-key-header);
    /// [`find_header`] finds it. A flag, not a span: the head is held by
    /// every idle connection's task, and few requests carry the header.
    pub has_idempotency_key: bool,
    /// A `traceparent` or `tracestate` was sent (W3C Trace Context);
    /// `http::trace_context` finds and checks them. A flag for the same
    /// reason as `has_idempotency_key`.
    pub has_trace_context: bool,
    /// `Origin`, sent by browsers on cross-origin requests (CORS).
    pub origin: Option<Span>,
}

/// A header that carries a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    ApiKey,
    Authorization,
}

impl CredentialHeader {
    /// The header's name, as clients write it.
    pub fn name(self) -> &'static str {
        match self {
            CredentialHeader::ApiKey => "X-CS-API-Key",
            CredentialHeader::Authorization => "Authorization",
        }
    }
}

/// Outcome of parsing the bytes received so far.
#[derive(Debug)]
pub enum Parsed {
    /// A whole head was found.
    Complete(Head),
    /// More bytes are needed; not an error while within the head limit.
    Partial,
}

/// The value of the first header called `name` (case-insensitive) in a
/// complete, already validated request head, trimmed.
pub fn find_header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&byte| byte == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&byte| byte == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| trim(&line[colon + 1..]))
    })
}

/// Parses a request head from `buffer`. `head_bytes_max` bounds the head;
/// a partial head already over it is an error, so the caller never buffers more.
pub fn parse_head(buffer: &[u8], head_bytes_max: usize) -> Result<Parsed, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let Some(head_bytes) = parse_syntax(&mut request, buffer, head_bytes_max)? else {
        return Ok(Parsed::Partial);
    };
    let span_of = |slice: &[u8]| -> Span {
        let start = slice.as_ptr() as usize - buffer.as_ptr() as usize;
        start..start + slice.len()
    };
    let http11 = request.version == Some(1);
    let mut head = Head {
        method: method_of(request.method.unwrap_or("")),
        path: span_of(request.path.unwrap_or("/").as_bytes()),
        http11,
        head_bytes,
        framing: Framing::None,
        keep_alive: http11,
        expect_continue: false,
        content_type: None,
        content_encoding: None,
        api_key: None,
        authorization: None,
        repeated_credential: None,
        request_id: None,
        has_idempotency_key: false,
        has_trace_context: false,
        origin: None,
    };
    let found = read_headers(&mut head, request.headers, span_of)?;
    head.framing = framing_of(&found, http11)?;
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; at most one in HTTP/1.0.
    if found.hosts > 1 || (found.hosts == 0 && http11) {
        return Err(FramingError::Malformed(
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    Ok(Parsed::Complete(head))
}

/// Runs httparse; `Some(head bytes)` for a whole head within the limit.
fn parse_syntax<'buffer>(
    request: &mut httparse::Request<'_, 'buffer>,
    buffer: &'buffer [u8],
    head_bytes_max: usize,
) -> Result<Option<usize>, FramingError> {
    let too_large = FramingError::HeadTooLarge {
        limit_bytes: head_bytes_max,
    };
    let status = request.parse(buffer).map_err(|error| match error {
        httparse::Error::TooManyHeaders => too_large.clone(),
        httparse::Error::Version => FramingError::Malformed("unsupported HTTP version"),
        httparse::Error::HeaderName => FramingError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => FramingError::Malformed("invalid header value"),
        httparse::Error::Token => FramingError::Malformed("invalid method or request line"),
        httparse::Error::NewLine => FramingError::Malformed("invalid line ending"),
        httparse::Error::Status => FramingError::Malformed("invalid request line"),
    })?;
    match status {
        httparse::Status::Partial if buffer.len() > head_bytes_max => Err(too_large),
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(length) if length > head_bytes_max => Err(too_large),
        httparse::Status::Complete(length) if has_bare_line_feed(&buffer[..length]) => {
            Err(FramingError::Malformed("line endings must be CRLF"))
        }
        httparse::Status::Complete(length) => Ok(Some(length)),
    }
}

fn method_of(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    }
}

/// What the headers say about framing, beyond what goes into [`Head`].
#[derive(Default)]
struct FramingHeaders {
    content_length: Option<usize>,
    chunked: bool,
    hosts: usize,
}

/// Records every header sluice reads into `head`; refuses duplicated or
/// invalid framing headers and unsupported expectations.
fn read_headers(
    head: &mut Head,
    headers: &[httparse::Header<'_>],
    span_of: impl Fn(&[u8]) -> Span,
) -> Result<FramingHeaders, FramingError> {
    let mut found = FramingHeaders::default();
    for header in headers {
        let name = header.name.as_bytes();
        let value = trim(header.value);
        let is = |wanted: &[u8]| name.eq_ignore_ascii_case(wanted);
        if is(b"content-length") {
            if found.content_length.is_some() {
                return Err(FramingError::Smuggling("duplicate Content-Length"));
            }
            found.content_length = Some(parse_content_length(value)?);
        } else if is(b"transfer-encoding") {
            if found.chunked {
                return Err(FramingError::Smuggling("duplicate Transfer-Encoding"));
            }
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::Smuggling("unsupported Transfer-Encoding"));
            }
            found.chunked = true;
        } else if is(b"host") {
            found.hosts += 1;
        } else if is(b"connection") {
            apply_connection(head, value);
        } else if is(b"expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(FramingError::ExpectationFailed);
            }
            head.expect_continue = head.http11;
        } else if is(b"content-type") {
            head.content_type = Some(span_of(value));
        } else if is(b"content-encoding") {
            head.content_encoding = Some(span_of(value));
        } else if is(b"x-cs-api-key") {
            if head.api_key.replace(span_of(value)).is_some() {
                head.repeated_credential = Some(CredentialHeader::ApiKey);
            }
        } else if is(b"authorization") {
            if head.authorization.replace(span_of(value)).is_some() {
                head.repeated_credential = Some(CredentialHeader::Authorization);
            }
        } else if is(b"x-request-id") && is_valid_request_id(value) {
            head.request_id = Some(span_of(value));
        } else if is(b"idempotency-key") {
            head.has_idempotency_key = true;
        } else if is(b"traceparent") || is(b"tracestate") {
            head.has_trace_context = true;
        } else if is(b"origin") {
            head.origin = Some(span_of(value));
        }
    }
    Ok(found)
}

/// How the body is delimited (RFC 9112 §6.3), refusing the shapes that
/// could frame differently in a proxy in front.
fn framing_of(found: &FramingHeaders, http11: bool) -> Result<Framing, FramingError> {
    match (found.content_length, found.chunked) {
        (Some(_), true) => Err(FramingError::Smuggling(
            "both Content-Length and Transfer-Encoding",
        )),
        (None, true) if !http11 => Err(FramingError::Smuggling(
            "Transfer-Encoding in an HTTP/1.0 request",
        )),
        (None, true) => Ok(Framing::Chunked),
        (Some(length), false) => Ok(Framing::Length(length)),
        (None, false) => Ok(Framing::None),
    }
}

/// Finds where a request head ends as bytes arrive, looking at each byte
/// once: the full parse runs when the blank line is there (or on the first
/// bytes, so that garbage is refused at once), not again on every read.
/// Without it a head arriving in small pieces would be parsed from byte 0
/// on every read: quadratic time.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadScanner {
    /// Bytes already known not to end the head.
    scanned: usize,
}

impl HeadScanner {
    /// Parses `buffer` once its head may be complete; `Partial` until then.
    /// The first bytes are parsed at once (most heads arrive whole, and
    /// garbage is refused early); after that, only once the end is there.
    pub fn parse(&mut self, buffer: &[u8], head_bytes_max: usize) -> Result<Parsed, FramingError> {
        if self.scanned > 0 && !self.find_end(buffer) {
            if buffer.len() > head_bytes_max {
                return Err(FramingError::HeadTooLarge {
                    limit_bytes: head_bytes_max,
                });
            }
            return Ok(Parsed::Partial);
        }
        let parsed = parse_head(buffer, head_bytes_max)?;
        match parsed {
            Parsed::Complete(_) => *self = HeadScanner::default(),
            // Look for the end only in bytes that arrive from now on.
            Parsed::Partial => {
                if self.find_end(buffer) {
                    self.scanned = buffer.len().max(1);
                }
            }
        }
        Ok(parsed)
    }

    /// Whether `buffer` holds a line feed followed by an empty line (CRLF or
    /// bare LF: the parser decides which are allowed). Moves `scanned` to
    /// the first line feed that cannot be decided yet.
    fn find_end(&mut self, buffer: &[u8]) -> bool {
        let from = self.scanned.min(buffer.len());
        for index in memchr::memchr_iter(b'\n', &buffer[from..]).map(|i| from + i) {
            match (buffer.get(index + 1), buffer.get(index + 2)) {
                (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => return true,
                (None, _) | (Some(b'\r'), None) => {
                    self.scanned = index.max(1);
                    return false;
                }
                _ => {}
            }
        }
        self.scanned = buffer.len().max(1);
        false
    }
}

/// RFC 9112 allows bare LF, but a proxy in front may read the same bytes
/// differently: refusing it removes one smuggling vector.
fn has_bare_line_feed(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|index| index == 0 || head[index - 1] != b'\r')
}

fn parse_content_length(value: &[u8]) -> Result<usize, FramingError> {
    // 19 digits always fit a u64; longer is never a length we would accept.
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(FramingError::Smuggling("invalid Content-Length"));
    }
    let length = value
        .iter()
        .fold(0u64, |total, digit| total * 10 + u64::from(digit - b'0'));
    usize::try_from(length).map_err(|_| FramingError::Smuggling("invalid Content-Length"))
}

fn apply_connection(head: &mut Head, value: &[u8]) {
    for token in value.split(|&byte| byte == b',') {
        let token = trim(token);
        if token.eq_ignore_ascii_case(b"close") {
            head.keep_alive = false;
        } else if token.eq_ignore_ascii_case(b"keep-alive") && !head.http11 {
            head.keep_alive = true;
        }
    }
}

fn is_valid_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= REQUEST_ID_BYTES_MAX
        && value
            .iter()
            .all(|&byte| byte.is_ascii_graphic() && byte != b'"' && byte != b'\\')
}

/// Trims optional whitespace (SP and HTAB) from both ends.
pub fn trim(mut value: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = value {
        if *first == b' ' || *first == b'\t' {
            value = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = value {
        if *last == b' ' || *last == b'\t' {
            value = rest;
        } else {
            break;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_header_reads_a_validated_head() {
        let head = b"POST /v1/events HTTP/1.1\r\nHost: t\r\nidempotency-KEY:  abc \r\nX: 1\r\n\r\n";
        assert_eq!(find_header(head, b"Idempotency-Key"), Some(&b"abc"[..]));
        assert_eq!(find_header(head, b"x"), Some(&b"1"[..]));
        assert_eq!(find_header(head, b"absent"), None);
    }

    #[test]
    fn host_is_required_once_in_http11() {
        assert!(matches!(
            head("GET / HTTP/1.1\r\n\r\n"),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.0\r\n\r\n"),
            Ok(Parsed::Complete(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nExpect: 200-ok\r\nHost: a\r\n\r\n"),
            Err(FramingError::ExpectationFailed)
        ));
    }

    #[test]
    fn scanner_parses_a_head_fed_in_pieces_once() {
        let raw = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let mut scanner = HeadScanner::default();
        let mut buffer = Vec::new();
        for (index, &byte) in raw.iter().enumerate() {
            buffer.push(byte);
            match scanner.parse(&buffer, 1024).unwrap() {
                Parsed::Complete(head) => {
                    assert_eq!(
                        index + 1,
                        raw.len() - 2,
                        "complete exactly at the blank line"
                    );
                    assert_eq!(head.framing, Framing::Length(2));
                    return;
                }
                Parsed::Partial => {}
            }
        }
        panic!("never complete");
    }

    #[test]
    fn scanner_refuses_bare_lf_heads_and_garbage() {
        let mut scanner = HeadScanner::default();
        let mut buffer = b"POST / HTTP/1.1".to_vec();
        assert!(matches!(scanner.parse(&buffer, 1024), Ok(Parsed::Partial)));
        buffer.extend_from_slice(b"\nHost: x\n\n");
        assert!(matches!(
            scanner.parse(&buffer, 1024),
            Err(FramingError::Malformed(_))
        ));
        let mut scanner = HeadScanner::default();
        assert!(scanner.parse(b"\x16\x03\x01\x02\x00", 1024).is_err());
    }

    fn head(raw: &str) -> Result<Parsed, FramingError> {
        parse_head(raw.as_bytes(), 16 * 1024)
    }

    fn complete(raw: &str) -> Head {
        match head(raw) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn content_length_and_keep_alive() {
        let parsed = complete("POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(parsed.framing, Framing::Length(12));
        assert!(parsed.keep_alive);
        assert_eq!(parsed.method, Method::Post);
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw), Err(FramingError::Smuggling(_))),
                "{raw:?} was accepted"
            );
        }
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            "POST / HTTP/1.1\nHost: x\n\n",
            "POST / HTTP/1.1\r\nHost : x\r\n\r\n",
            "POST / HTTP/1.1\r\nHo\0st: x\r\n\r\n",
            "POST / HTTP/2.0\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw), Err(FramingError::Malformed(_))),
                "{raw:?} was accepted"
            );
        }
    }

    #[test]
    fn partial_heads_are_bounded() {
        assert!(matches!(
            head("POST / HTTP/1.1\r\nHost"),
            Ok(Parsed::Partial)
        ));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(300));
        assert!(matches!(
            parse_head(long.as_bytes(), 256),
            Err(FramingError::HeadTooLarge { limit_bytes: 256 })
        ));
    }

    #[test]
    fn request_ids_are_echoed_only_when_printable() {
        let raw = "GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\n\r\n";
        let parsed = complete(raw);
        assert_eq!(&raw.as_bytes()[parsed.request_id.unwrap()], b"abc-123");
        assert!(
            complete("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\"b\r\n\r\n")
                .request_id
                .is_none()
        );
    }
}
