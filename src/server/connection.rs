//! One HTTP/1.1 connection's life: wait for a request within the idle
//! timeout, read its head, hand it to [`dispatch`](super::dispatch), flush
//! answers in order, keep alive or close. Also the refusal of connections
//! the core cannot take.
//!
//! Responses accumulate in the write buffer and are flushed before the
//! connection waits for more input (or for Kafka), so pipelined requests
//! are answered in order and as soon as each answer is ready.

use std::time::Duration;

use monoio::net::TcpStream;

use super::answer::{write_error, Reply};
use super::context::{ConnectionState, Core};
use super::dispatch::{Exchange, Next};
use super::framing::{read_head, ReadError};
use super::wire::{Read, Wire};
use crate::error::ApiError;

/// Pipelined responses are flushed once this many bytes are waiting.
const FLUSH_BYTES: usize = 64 * 1024;

/// Serves a connection until it closes, fails, times out, or shutdown.
pub async fn serve(core: &Core, stream: TcpStream, entry: usize) {
    // The core's clock may be old if it was quiet: the first idle deadline
    // counts from now.
    core.tick();
    let mut exchange = Exchange::new(core, Wire::new(stream, Some(entry)));
    let next = run(&mut exchange, entry).await;
    let wire = &mut exchange.wire;
    match next {
        Next::CloseLingering => wire.linger_close(core).await,
        Next::Close | Next::KeepAlive => {
            wire.flush(core).await;
        }
    }
    exchange.wire.release(core);
}

/// Answers a connection with 503 and closes it: one beyond the per-core
/// cap, or one accepted with the reserve descriptor when the process ran
/// out of descriptors. The close lingers (see [`Wire::linger_close`]).
pub async fn refuse(core: &Core, stream: TcpStream) {
    core.tick();
    let mut wire = Wire::new(stream, None);
    wire.output = Vec::with_capacity(512);
    let mut reply = Reply::default();
    reply.unparsed(core);
    write_error(
        core,
        &mut wire.output,
        &reply,
        &ApiError::too_many_connections(),
        None,
    );
    wire.linger_close(core).await;
}

/// The request loop; returns how the connection ends.
async fn run(exchange: &mut Exchange<'_>, entry: usize) -> Next {
    let core = exchange.core;
    let idle_timeout = Duration::from_millis(core.shared.config.server.idle_timeout_ms);
    loop {
        if exchange.wire.input.is_empty() {
            if core.shared.shutdown.is_triggered() {
                return Next::Close;
            }
            core.set_connection_state(entry, ConnectionState::Idle);
            let read = exchange
                .wire
                .read_idle(core, core.now() + idle_timeout)
                .await;
            if !matches!(read, Read::Data) {
                return Next::Close;
            }
        }
        // One clock reading serves the request's deadlines and timestamps.
        core.tick();
        core.set_connection_state(entry, ConnectionState::Head);
        let head = match read_head(core, &mut exchange.wire).await {
            Ok(head) => head,
            Err(ReadError::Closed) => return Next::Close,
            Err(ReadError::Api(error)) => {
                exchange.reply.unparsed(core);
                write_error(
                    core,
                    &mut exchange.wire.output,
                    &exchange.reply,
                    &error,
                    None,
                );
                return Next::Close;
            }
        };
        core.set_connection_state(entry, ConnectionState::Busy);
        let next = exchange.respond(&head).await;
        if next != Next::KeepAlive {
            return next;
        }
        let flush_now = exchange.wire.input.is_empty() || exchange.wire.output.len() >= FLUSH_BYTES;
        if flush_now && !exchange.wire.flush(core).await {
            return Next::Close;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_bytes<'a, Fut>(_: fn(&'a Core, TcpStream, usize) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every idle keep-alive connection holds its task's whole future, so
    /// its size is most of what an idle connection costs (a parked one
    /// holds no buffer). A guard against it growing unnoticed: 1,848 bytes
    /// once waits stopped holding a monoio timer (640 bytes, aligned to
    /// 128) each, 2,560 before.
    #[test]
    fn the_connection_task_stays_small() {
        let bytes = future_bytes(serve);
        eprintln!("connection task future: {bytes} bytes");
        assert!(bytes <= 2_048, "the connection task grew to {bytes} bytes");
    }
}
