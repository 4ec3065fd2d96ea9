//! One connection's socket and buffers, and every wait on them bounded:
//! reads by a deadline, writes by `server.write_timeout_ms` without
//! progress, and closes that linger only briefly.
//!
//! The read buffer holds the bytes received and not yet consumed; the
//! write buffer holds responses not yet flushed. While the connection is
//! idle both go back to the core's pool and only a small buffer is held.

use std::time::{Duration, Instant};

use monoio::buf::{IoBuf as _, IoBufMut as _};
use monoio::io::{AsyncReadRent as _, AsyncWriteRent as _};
use monoio::net::TcpStream;

use super::context::Core;

/// The idle read buffer: large enough for a typical single-event request.
const IDLE_READ_BYTES: usize = 1024;
/// Smallest free space offered to a read.
const READ_CHUNK_BYTES: usize = 4 * 1024;
/// How long a closing connection is drained before it is closed.
const LINGER: Duration = Duration::from_millis(500);
/// Bytes read and dropped from a closing connection at most.
const LINGER_BYTES_MAX: usize = 64 * 1024;

/// `monoio::time::timeout_at` with a std `Instant` (the core's clock).
fn timeout_at<F: std::future::Future>(deadline: Instant, future: F) -> monoio::time::Timeout<F> {
    monoio::time::timeout_at(monoio::time::Instant::from_std(deadline), future)
}

/// What a read brought.
pub enum Read {
    Data,
    Closed,
    TimedOut,
}

pub struct Wire {
    pub stream: TcpStream,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    /// Holds the first bytes of a request while the connection is idle.
    idle: Vec<u8>,
}

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            idle: Vec::with_capacity(IDLE_READ_BYTES),
        }
    }

    /// Gives the buffers back to the core's pool.
    pub fn release(self, core: &Core) {
        core.give_buffer(self.input);
        core.give_buffer(self.output);
    }

    /// Waits for the next request's first bytes with only the small idle
    /// buffer held: the full buffers go back to the core's pool meanwhile,
    /// so an idle keep-alive connection costs little memory.
    pub async fn read_idle(&mut self, core: &Core, deadline: Instant) -> Read {
        if !self.flush(core).await {
            return Read::Closed;
        }
        debug_assert!(self.input.is_empty() && self.output.is_empty());
        core.give_buffer(std::mem::take(&mut self.input));
        core.give_buffer(std::mem::take(&mut self.output));
        let idle = std::mem::take(&mut self.idle);
        match timeout_at(deadline, self.stream.read(idle)).await {
            Ok((result, mut idle)) => {
                let read = match result {
                    Ok(0) | Err(_) => Read::Closed,
                    Ok(_) => {
                        self.input = core.take_buffer();
                        self.output = core.take_buffer();
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

    /// Reads more bytes into `input`, first flushing pending responses.
    pub async fn read_more(&mut self, core: &Core, deadline: Instant) -> Read {
        if !self.flush(core).await {
            return Read::Closed;
        }
        if self.input.capacity() - self.input.len() < READ_CHUNK_BYTES {
            self.input.reserve(READ_CHUNK_BYTES);
        }
        let filled = self.input.len();
        let buffer = std::mem::take(&mut self.input).slice_mut(filled..);
        match timeout_at(deadline, self.stream.read(buffer)).await {
            Ok((result, buffer)) => {
                self.input = buffer.into_inner();
                match result {
                    Ok(0) | Err(_) => Read::Closed,
                    Ok(_) => {
                        // A head or body read in pieces can take long: keep
                        // the clock that later write deadlines count from fresh.
                        core.tick();
                        Read::Data
                    }
                }
            }
            // The cancelled read keeps its buffer; the connection closes.
            Err(_) => Read::TimedOut,
        }
    }

    /// Writes every pending response byte. `false` when the peer is gone or
    /// its socket took no bytes for the core's write timeout: the
    /// connection must close (its output buffer is then dropped).
    pub async fn flush(&mut self, core: &Core) -> bool {
        let mut output = std::mem::take(&mut self.output);
        let mut written = 0;
        // From the last progress: the tick of this request, then each write.
        let mut deadline = core.now() + core.write_timeout;
        while written < output.len() {
            let pending = output.slice(written..);
            match timeout_at(deadline, self.stream.write(pending)).await {
                Ok((Ok(bytes), pending)) if bytes > 0 => {
                    output = pending.into_inner();
                    written += bytes;
                    if written < output.len() {
                        deadline = core.tick() + core.write_timeout;
                    }
                }
                Ok(_) => return false,
                Err(_) => {
                    core.metrics().write_timeout();
                    if core.may_log() {
                        tracing::warn!(
                            core = core.index,
                            write_timeout_ms = core.write_timeout.as_millis() as u64,
                            "closing a connection that took no response bytes in time"
                        );
                    }
                    return false;
                }
            }
        }
        output.clear();
        self.output = output;
        true
    }

    /// Closes after a response that left the request's body unread: the
    /// write side is shut, then what the client already sent is read and
    /// dropped until it closes (within a short bound). Closing a socket
    /// with unread input makes the kernel send a reset, and a reset can
    /// destroy the response before the client reads it.
    pub async fn linger_close(&mut self, core: &Core) {
        if !self.flush(core).await || self.stream.shutdown().await.is_err() {
            return;
        }
        let mut buffer = std::mem::take(&mut self.idle);
        let drain = async {
            let mut drained = 0;
            while drained < LINGER_BYTES_MAX {
                buffer.clear();
                let (read, returned) = self.stream.read(buffer).await;
                buffer = returned;
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(bytes) => drained += bytes,
                }
            }
        };
        let _ = monoio::time::timeout(LINGER, drain).await;
    }
}
