//! One connection's socket and buffers, and every wait on them bounded:
//! reads by a deadline, writes by `server.write_timeout_ms` without
//! progress, and closes that linger only briefly.
//!
//! The read buffer holds the bytes received and not yet consumed; the
//! write buffer holds responses not yet flushed. While the connection is
//! idle both go back to the core's pool and only a small buffer is held;
//! once it has been idle for [`PARK_AFTER`] that one goes back too, and
//! the connection waits for readiness holding no buffer at all (parked).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf as _, IoBufMut as _};
use monoio::io::{
    AsyncReadRent as _, AsyncWriteRent as _, CancelableAsyncReadRent as _, Canceller,
};
use monoio::net::TcpStream;

use super::context::{Core, Elapsed};

/// How long an idle connection keeps a read posted with its small buffer.
/// A keep-alive client sending more often than this pays one read per
/// request; a quieter one is parked: the read is cancelled, the buffer
/// goes back to the core, and a readiness poll (no buffer) waits for the
/// next request, at the price of two more io_uring operations per wake.
pub const PARK_AFTER: Duration = Duration::from_millis(250);
/// Smallest free space offered to a read.
const READ_CHUNK_BYTES: usize = 4 * 1024;
/// How long a closing connection is drained before it is closed.
const LINGER: Duration = Duration::from_millis(500);
/// Bytes read and dropped from a closing connection at most.
const LINGER_BYTES_MAX: usize = 64 * 1024;

/// Runs `future` until `deadline`: through the core's deadline sweep for
/// a registered connection (`entry`), no timer in the future; with a
/// monoio timer, boxed, for a connection being refused (not registered).
pub async fn bounded<F: std::future::Future>(
    core: &Core,
    entry: Option<usize>,
    deadline: Instant,
    future: F,
) -> Result<F::Output, Elapsed> {
    match entry {
        Some(entry) => core.within(entry, deadline, future).await,
        None => Box::pin(monoio::time::timeout_at(
            monoio::time::Instant::from_std(deadline),
            future,
        ))
        .await
        .map_err(|_| Elapsed),
    }
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
    /// Holds the first bytes of a request while the connection is idle;
    /// no memory while parked.
    idle: Vec<u8>,
    /// Cancels the idle read when the connection parks; `None` while
    /// parked (made again at the next request, to hold nothing meanwhile).
    canceller: Option<Canceller>,
    /// The connection's entry in the core's table (its deadlines); `None`
    /// for a connection being refused.
    pub entry: Option<usize>,
}

/// How an idle read ended.
enum Idle {
    Data,
    Closed,
    /// Nothing came before the read was cancelled.
    Quiet,
}

/// Counts a parked connection in its gauge for as long as it lives, even
/// if the connection's task is dropped while parked.
struct Parked<'a>(&'a AtomicU64);

impl<'a> Parked<'a> {
    fn count(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Wire {
    pub fn new(stream: TcpStream, entry: Option<usize>) -> Wire {
        Wire {
            entry,
            stream,
            input: Vec::new(),
            output: Vec::new(),
            idle: Vec::new(),
            canceller: None,
        }
    }

    /// Gives the buffers back to the core's pools.
    pub fn release(self, core: &Core) {
        core.give_buffer(self.input);
        core.give_buffer(self.output);
        core.give_idle_buffer(self.idle);
    }

    /// Waits for the next request's first bytes with only the small idle
    /// buffer held: the full buffers go back to the core's pool meanwhile,
    /// so an idle keep-alive connection costs little memory. After
    /// [`PARK_AFTER`] of silence it parks and holds no buffer at all.
    pub async fn read_idle(&mut self, core: &Core, deadline: Instant) -> Read {
        if !self.flush(core).await {
            return Read::Closed;
        }
        debug_assert!(self.input.is_empty() && self.output.is_empty());
        core.give_buffer(std::mem::take(&mut self.input));
        core.give_buffer(std::mem::take(&mut self.output));
        loop {
            let park_at = (core.now() + PARK_AFTER).min(deadline);
            match self.read_idle_until(core, park_at).await {
                Idle::Data => {
                    self.input = core.take_buffer();
                    self.output = core.take_buffer();
                    self.input.extend_from_slice(&self.idle);
                    self.idle.clear();
                    return Read::Data;
                }
                Idle::Closed => return Read::Closed,
                Idle::Quiet if park_at >= deadline => return Read::TimedOut,
                Idle::Quiet => {}
            }
            // Parked: nothing of the connection's but its task and socket.
            core.give_idle_buffer(std::mem::take(&mut self.idle));
            self.canceller = None;
            let parked = Parked::count(&core.metrics().connections_parked);
            let ready = bounded(core, self.entry, deadline, self.stream.readable(false)).await;
            drop(parked);
            match ready {
                Err(_) => return Read::TimedOut,
                Ok(Err(_)) => return Read::Closed,
                // The next round's read finds the bytes at once.
                Ok(Ok(())) => core.tick(),
            };
        }
    }

    /// Reads into the idle buffer until bytes come or `park_at`; then the
    /// read is cancelled and its end awaited, so bytes that raced the
    /// cancel are kept, never lost with a dropped buffer.
    async fn read_idle_until(&mut self, core: &Core, park_at: Instant) -> Idle {
        if self.idle.capacity() == 0 {
            self.idle = core.take_idle_buffer();
        }
        let canceller = self.canceller.get_or_insert_with(Canceller::new);
        let buffer = std::mem::take(&mut self.idle);
        let read = self.stream.cancelable_read(buffer, canceller.handle());
        let mut read = std::pin::pin!(read);
        let (result, buffer) = match bounded(core, self.entry, park_at, &mut read).await {
            Ok(done) => done,
            Err(_) => {
                if let Some(canceller) = self.canceller.take() {
                    // A fresh one comes with the next request, not now.
                    drop(canceller.cancel());
                }
                match read.await {
                    (Err(error), buffer) if error.raw_os_error() == Some(libc::ECANCELED) => {
                        self.idle = buffer;
                        return Idle::Quiet;
                    }
                    done => done,
                }
            }
        };
        self.idle = buffer;
        match result {
            Ok(0) | Err(_) => Idle::Closed,
            Ok(_) => Idle::Data,
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
        match bounded(core, self.entry, deadline, self.stream.read(buffer)).await {
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
            match bounded(core, self.entry, deadline, self.stream.write(pending)).await {
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
        if buffer.capacity() == 0 {
            buffer = core.take_idle_buffer();
        }
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
        let _ = bounded(core, self.entry, Instant::now() + LINGER, drain).await;
    }
}
