//! Response serialization into a reusable byte buffer.

/// Seconds a client is asked to wait after a 429 or 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// The reason phrase for the statuses sluice sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// What goes into a response head besides the status.
#[derive(Debug, Clone, Copy)]
pub struct HeadFields<'a> {
    pub content_type: &'a str,
    pub content_length: usize,
    pub request_id: &'a [u8],
    /// The `Date` header value (an IMF-fixdate).
    pub date: &'a [u8],
    pub keep_alive: bool,
    /// `Retry-After` in seconds, if any.
    pub retry_after_seconds: Option<u64>,
    /// `Allow` header value for 405.
    pub allow: Option<&'a str>,
    /// draft-ietf-httpapi-ratelimit-headers: written as `RateLimit-Policy`
    /// and `RateLimit` (remaining 0).
    pub rate_limit: Option<RateLimitFields<'a>>,
    /// CORS: the `Access-Control-Allow-Origin` value for an allowed origin.
    pub cors_origin: Option<&'a [u8]>,
    /// CORS preflight: allowed methods and max-age in seconds.
    pub preflight: Option<(&'a str, u64)>,
}

/// A refused rate limit, as draft-ietf-httpapi-ratelimit-headers states
/// it: the policy's quota is its burst, over the window in which the
/// sustained rate refills a whole burst (so quota / window is the rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitFields<'a> {
    pub policy: &'a str,
    pub quota: u64,
    pub window_seconds: u64,
    /// The quota counts request content bytes (`qu="content-bytes"`).
    pub content_bytes: bool,
    /// Seconds until the quota allows again.
    pub reset_seconds: u64,
}

/// The request headers a browser may send cross-origin (preflight answer).
pub const CORS_ALLOWED_HEADERS: &str =
    "X-CS-API-Key, Authorization, Content-Type, Content-Encoding, X-Request-Id";
/// The response headers a page may read.
pub const CORS_EXPOSED_HEADERS: &str = "Retry-After, RateLimit, RateLimit-Policy, X-Request-Id";

/// Appends a status line and headers to `out`.
pub fn write_head(out: &mut Vec<u8>, status: u16, fields: &HeadFields<'_>) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(digits.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    // A 204 has neither (RFC 9110 §8.6).
    if status != 204 {
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(fields.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(digits.format(fields.content_length).as_bytes());
    }
    out.extend_from_slice(b"\r\nX-Request-Id: ");
    out.extend_from_slice(fields.request_id);
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(fields.date);
    if let Some(seconds) = fields.retry_after_seconds {
        out.extend_from_slice(b"\r\nRetry-After: ");
        out.extend_from_slice(digits.format(seconds).as_bytes());
    }
    if let Some(limit) = fields.rate_limit {
        out.extend_from_slice(b"\r\nRateLimit-Policy: \"");
        out.extend_from_slice(limit.policy.as_bytes());
        out.extend_from_slice(b"\";q=");
        out.extend_from_slice(digits.format(limit.quota).as_bytes());
        out.extend_from_slice(b";w=");
        out.extend_from_slice(digits.format(limit.window_seconds).as_bytes());
        if limit.content_bytes {
            out.extend_from_slice(b";qu=\"content-bytes\"");
        }
        out.extend_from_slice(b"\r\nRateLimit: \"");
        out.extend_from_slice(limit.policy.as_bytes());
        out.extend_from_slice(b"\";r=0;t=");
        out.extend_from_slice(digits.format(limit.reset_seconds).as_bytes());
    }
    if let Some(allow) = fields.allow {
        out.extend_from_slice(b"\r\nAllow: ");
        out.extend_from_slice(allow.as_bytes());
    }
    if let Some(origin) = fields.cors_origin {
        out.extend_from_slice(b"\r\nAccess-Control-Allow-Origin: ");
        out.extend_from_slice(origin);
        if origin != b"*" {
            out.extend_from_slice(b"\r\nVary: Origin");
        }
        match fields.preflight {
            Some((methods, max_age)) => {
                out.extend_from_slice(b"\r\nAccess-Control-Allow-Methods: ");
                out.extend_from_slice(methods.as_bytes());
                out.extend_from_slice(b"\r\nAccess-Control-Allow-Headers: ");
                out.extend_from_slice(CORS_ALLOWED_HEADERS.as_bytes());
                out.extend_from_slice(b"\r\nAccess-Control-Max-Age: ");
                out.extend_from_slice(digits.format(max_age).as_bytes());
            }
            None => {
                out.extend_from_slice(b"\r\nAccess-Control-Expose-Headers: ");
                out.extend_from_slice(CORS_EXPOSED_HEADERS.as_bytes());
            }
        }
    }
    out.extend_from_slice(if fields.keep_alive {
        b"\r\nConnection: keep-alive\r\n\r\n"
    } else {
        b"\r\nConnection: close\r\n\r\n"
    });
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_length_request_id_and_connection() {
        let mut out = Vec::new();
        let fields = HeadFields {
            content_type: "application/json",
            content_length: 14,
            request_id: b"rid",
            date: b"Sun, 06 Nov 1994 08:49:37 GMT",
            keep_alive: false,
            retry_after_seconds: Some(1),
            allow: None,
            rate_limit: Some(RateLimitFields {
                policy: "events",
                quota: 100,
                window_seconds: 1,
                content_bytes: false,
                reset_seconds: 3,
            }),
            cors_origin: Some(b"https://app.example.com"),
            preflight: None,
        };
        write_head(&mut out, 503, &fields);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Length: 14\r\n"));
        assert!(text.contains("X-Request-Id: rid\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        assert!(text.contains("RateLimit-Policy: \"events\";q=100;w=1\r\n"));
        assert!(text.contains("RateLimit: \"events\";r=0;t=3\r\n"));
        assert!(text.contains("Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
        assert!(text
            .contains("Access-Control-Allow-Origin: https://app.example.com\r\nVary: Origin\r\n"));
        assert!(text.contains("Access-Control-Expose-Headers: Retry-After"));
        assert!(text.ends_with("Connection: close\r\n\r\n"));
    }
}
