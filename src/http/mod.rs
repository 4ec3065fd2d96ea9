//! HTTP/1.1 (RFC 9112) framing: request heads, bodies, responses.
//!
//! This module knows bytes and headers, nothing of events, keys or Kafka.
//! Parsing is zero-copy: a parsed [`request::Head`] holds byte ranges into
//! the connection's read buffer, so it borrows nothing and allocates nothing.

pub mod body;
pub mod gzip;
pub mod request;
pub mod response;
pub mod trace_context;

use std::ops::Range;

/// A byte range into the connection's read buffer.
pub type Span = Range<usize>;

/// Why a request could not be framed. Each maps to one status in
/// by the server's error module; the connection is closed after any of them,
/// because the next request's start can no longer be found reliably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// The head is not valid HTTP/1.1 (400).
    Malformed(&'static str),
    /// The head exceeds the configured byte limit or header count (431).
    HeadTooLarge { limit_bytes: usize },
    /// Content-Length together with Transfer-Encoding, duplicate or invalid
    /// lengths, or a transfer coding other than `chunked` (400).
    Smuggling(&'static str),
    /// The body exceeds the configured byte limit (413).
    BodyTooLarge { limit_bytes: usize },
    /// A chunked body's raw bytes (framing included) exceed the body limit
    /// plus the framing allowance (413).
    WireTooLarge { limit_bytes: usize },
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
    /// A POST without Content-Length or Transfer-Encoding (411).
    LengthRequired,
    /// An invalid chunk in a chunked body (400).
    BadChunk(&'static str),
}
