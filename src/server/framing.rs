//! Reading one request off the wire: its head within the header deadline,
//! then its body within the body deadline, every byte bounded.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::context::Core;
use super::wire::{Read, Wire};
use crate::error::ApiError;
use crate::http::body::{ChunkedDecoder, Progress};
use crate::http::request::{Framing, Head, HeadScanner, Parsed};
use crate::http::FramingError;

/// Why a head or body could not be read.
pub enum ReadError {
    /// Answer this, then close.
    Api(ApiError),
    /// The peer went away (or shutdown closed its read side); nothing to answer.
    Closed,
}

impl From<FramingError> for ReadError {
    fn from(error: FramingError) -> Self {
        ReadError::Api(error.into())
    }
}

/// Reads until `wire.input` starts with a whole head, within the header
/// deadline counted from now (the request's first byte is in hand).
pub async fn read_head(core: &Core, wire: &mut Wire) -> Result<Head, ReadError> {
    let server = &core.shared.config.server;
    let deadline = core.now() + Duration::from_millis(server.header_read_timeout_ms);
    let head_bytes_max = core.shared.config.limits.header_bytes_max;
    let mut scanner = HeadScanner::default();
    loop {
        match scanner.parse(&wire.input, head_bytes_max)? {
            Parsed::Complete(head) => return Ok(head),
            Parsed::Partial => read_or_fail(core, wire, deadline).await?,
        }
    }
}

/// Reads the body; returns its span in `input` and where the request ends.
/// A chunked body is decoded in place and its framing dropped as it goes,
/// so the buffer holds at most the decoded body and one read.
pub async fn read_body(
    core: &Core,
    wire: &mut Wire,
    head: &Head,
) -> Result<(Range<usize>, usize), ReadError> {
    let start = head.head_bytes;
    let limits = &core.shared.config.limits;
    let deadline =
        core.now() + Duration::from_millis(core.shared.config.server.body_read_timeout_ms);
    match head.framing {
        Framing::None => Ok((start..start, start)),
        Framing::Length(length) => {
            let end = start + length;
            if wire.input.len() < end {
                wire.input.reserve(end - wire.input.len());
            }
            while wire.input.len() < end {
                read_or_fail(core, wire, deadline).await?;
            }
            Ok((start..end, end))
        }
        Framing::Chunked => {
            let mut decoder =
                ChunkedDecoder::new(start, limits.body_bytes_max, limits.header_bytes_max);
            loop {
                match decoder.decode(&mut wire.input)? {
                    Progress::Done { end, consumed } => return Ok((start..end, consumed)),
                    Progress::NeedMore => {
                        decoder.compact(&mut wire.input);
                        read_or_fail(core, wire, deadline).await?;
                    }
                }
            }
        }
    }
}

async fn read_or_fail(core: &Core, wire: &mut Wire, deadline: Instant) -> Result<(), ReadError> {
    match wire.read_more(core, deadline).await {
        Read::Data => Ok(()),
        Read::Closed => Err(ReadError::Closed),
        Read::TimedOut => Err(ReadError::Api(ApiError::request_timeout())),
    }
}
