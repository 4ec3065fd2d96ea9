//! The floor: the least an HTTP/1.1 server on sluice's runtime can cost.
//! One thread runs monoio (sluice's version, features, ring size and
//! timer), accepts, reads each connection into a buffer, finds the end of
//! every head, skips `Content-Length` body bytes and answers each request,
//! in order, with a fixed `202 Accepted` shaped like sluice's enqueued
//! answer. No parsing beyond that, no auth, no Kafka: `scripts/bench-ab`
//! runs it beside nginx, so sluice's loop cost splits into what monoio and
//! the kernel take and what sluice adds.
//!
//!   taskset -c 0 target/release/floor --listen 127.0.0.1:8080 [--plain-ring]
//!
//! The ring is set up with COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER;
//! `--plain-ring` (or FLOOR_PLAIN_RING=1) leaves monoio's default ring.

use std::io;
use std::time::Duration;

use monoio::buf::IoBufMut as _;
use monoio::io::{AsyncReadRent as _, AsyncWriteRentExt as _};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio::time::TimeDriver;

/// Sluice's enqueued answer, byte for byte in size (its Date and request
/// id change per answer; these are fixed: the floor computes nothing).
const ANSWER: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\
Content-Length: 14\r\nX-Request-Id: 0123456789abcdef\r\nDate: Sun, 06 Dec 2026 21:47:42 GMT\r\n\
Connection: keep-alive\r\n\r\n{\"accepted\":1}";
/// Bytes read per connection at most at once; a head longer closes it.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// As sluice's cores (src/server/core.rs) and its listen backlog.
const IO_URING_ENTRIES: u32 = 1024;
const LISTEN_BACKLOG: i32 = 4096;
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

type Runtime =
    monoio::FusionRuntime<TimeDriver<monoio::IoUringDriver>, TimeDriver<monoio::LegacyDriver>>;

fn main() -> io::Result<()> {
    let mut listen = None;
    let mut plain_ring = std::env::var("FLOOR_PLAIN_RING").is_ok_and(|value| value == "1");
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--listen" => listen = arguments.next(),
            "--plain-ring" => plain_ring = true,
            _ => {
                return Err(io::Error::other(format!(
                    "unknown argument {argument}; usage: floor --listen ADDR [--plain-ring]"
                )))
            }
        }
    }
    let listen =
        listen.ok_or_else(|| io::Error::other("usage: floor --listen ADDR [--plain-ring]"))?;
    let mut runtime = runtime(plain_ring)?;
    runtime.block_on(async move {
        let options = ListenerOpts::new().backlog(LISTEN_BACKLOG);
        let listener = TcpListener::bind_with_config(listen.as_str(), &options)?;
        eprintln!("floor: listening on {}", listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve(stream));
                }
                Err(error) => {
                    eprintln!("floor: accept: {error}");
                    monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    })
}

/// The runtime, with the ring's flags unless `plain_ring` or the kernel
/// refuses them (then monoio's default ring, said on stderr).
fn runtime(plain_ring: bool) -> io::Result<Runtime> {
    let build = |ring: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(IO_URING_ENTRIES)
            .uring_builder(ring)
            .enable_timer()
            .build()
    };
    let driver = if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    };
    if !plain_ring {
        let mut ring = io_uring::IoUring::builder();
        ring.setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer();
        match build(ring) {
            Ok(runtime) => {
                eprintln!("floor: {driver}, ring with COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER");
                return Ok(runtime);
            }
            Err(error) => eprintln!("floor: ring with flags refused ({error}); plain ring"),
        }
    }
    eprintln!("floor: {driver}, plain ring");
    build(io_uring::IoUring::builder())
}

/// One keep-alive connection: every request read is answered, in order,
/// all answers to one read in one write.
async fn serve(mut stream: TcpStream) {
    let mut input = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut output = Vec::with_capacity(ANSWER.len() * 16);
    let mut requests = Requests::default();
    while input.len() < READ_BUFFER_BYTES {
        let filled = input.len();
        let (result, buffer) = stream.read(input.slice_mut(filled..)).await;
        input = buffer.into_inner();
        if !matches!(result, Ok(read) if read > 0) {
            return;
        }
        let Some((answers, consumed)) = requests.take(&input) else {
            return;
        };
        input.drain(..consumed);
        if answers > 0 {
            output.clear();
            (0..answers).for_each(|_| output.extend_from_slice(ANSWER));
            let (result, buffer) = stream.write_all(output).await;
            output = buffer;
            if result.is_err() {
                return;
            }
        }
    }
}

/// Where a connection's request stream stands between reads.
#[derive(Default)]
struct Requests {
    /// A head was read and its body is being skipped.
    in_body: bool,
    body_bytes_left: usize,
}

impl Requests {
    /// (requests completed, bytes consumed) from `input`; `None` for a
    /// `Content-Length` that is not a number.
    fn take(&mut self, input: &[u8]) -> Option<(usize, usize)> {
        let (mut answers, mut at) = (0, 0);
        loop {
            if self.in_body {
                let skipped = self.body_bytes_left.min(input.len() - at);
                at += skipped;
                self.body_bytes_left -= skipped;
                if self.body_bytes_left > 0 {
                    return Some((answers, at));
                }
                self.in_body = false;
                answers += 1;
            }
            let Some(end) = memchr::memmem::find(&input[at..], b"\r\n\r\n") else {
                return Some((answers, at));
            };
            self.body_bytes_left = content_length(&input[at..at + end])?;
            self.in_body = true;
            at += end + 4;
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"content-length:";
    let Some(line) = head
        .split(|&byte| byte == b'\n')
        .find(|line| line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
    else {
        return Some(0);
    };
    std::str::from_utf8(&line[NAME.len()..])
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::Requests;

    const POST: &[u8] = b"POST /v1/events HTTP/1.1\r\ncontent-LENGTH: 7\r\n\r\n{\"a\":1}";

    #[test]
    fn pipelined_requests_are_answered_once_their_bodies_are_in() {
        let mut input = [POST, b"GET / HTTP/1.1\r\n\r\n", POST].concat();
        input.truncate(input.len() - 3);
        let mut requests = Requests::default();
        // The third body lacks 3 bytes: two answers, everything consumed.
        assert_eq!(requests.take(&input), Some((2, input.len())));
        assert_eq!(requests.take(b":1"), Some((0, 2)));
        assert_eq!(requests.take(b"}GET"), Some((1, 1)));
        assert_eq!(requests.take(b"GET / HTTP/1.1\r\n"), Some((0, 0)));
    }

    #[test]
    fn a_content_length_that_is_not_a_number_closes() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n";
        assert_eq!(Requests::default().take(head), None);
    }
}
