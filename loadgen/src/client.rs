//! The connection loops: one monoio runtime per client thread, one task per
//! keep-alive connection.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut as _;
use monoio::io::{AsyncReadRent as _, AsyncWriteRentExt as _};
use monoio::net::TcpStream;

use crate::events::Generator;
use crate::Args;

/// Longest latency recorded, in microseconds.
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// After the run, responses still due are awaited this long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before reconnecting after the server closed a connection.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What to run.
pub struct Plan {
    pub args: Args,
    /// Requests intended before this are warm-up and not counted.
    pub measure_from: Instant,
    pub stop_at: Instant,
    /// This thread's `--progress` slot.
    pub progress: Option<std::sync::Arc<crate::progress::Slot>>,
}

/// Counts and latencies, per connection and merged.
pub struct Totals {
    pub histogram: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Measured requests sent.
    pub sent: u64,
    /// Measured requests answered 2xx.
    pub ok: u64,
    /// Measured requests answered otherwise, or lost with their connection.
    pub errors: u64,
    pub connection_errors: u64,
    /// Events in measured 2xx responses.
    pub events_ok: u64,
    /// Every event_id that got a 2xx, warm-up included (only with --verify).
    pub acknowledged_ids: Vec<u128>,
    /// Retries sent (--retries): each resend of a request counts once.
    pub retried: u64,
    /// Requests still refused or lost after their last retry.
    pub gave_up: u64,
}

impl Default for Totals {
    fn default() -> Self {
        Totals::new()
    }
}

impl Totals {
    pub fn new() -> Totals {
        Totals {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid bounds"),
            statuses: BTreeMap::new(),
            sent: 0,
            ok: 0,
            errors: 0,
            connection_errors: 0,
            events_ok: 0,
            acknowledged_ids: Vec::new(),
            retried: 0,
            gave_up: 0,
        }
    }

    fn merge(&mut self, other: Totals) {
        self.histogram.add(&other.histogram).expect("same bounds");
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.sent += other.sent;
        self.ok += other.ok;
        self.errors += other.errors;
        self.connection_errors += other.connection_errors;
        self.events_ok += other.events_ok;
        self.acknowledged_ids.extend(other.acknowledged_ids);
        self.retried += other.retried;
        self.gave_up += other.gave_up;
    }
}

/// Runs the plan on `--threads` threads; returns the merged totals.
pub fn run(
    plan: &Plan,
    progress: Option<Vec<std::sync::Arc<crate::progress::Slot>>>,
) -> anyhow::Result<Totals> {
    let args = &plan.args;
    let per_connection_rate = (args.rate > 0.0).then(|| args.rate / args.connections as f64);
    let mut threads = Vec::new();
    for thread in 0..args.threads {
        let connections: Vec<usize> = (0..args.connections)
            .filter(|c| c % args.threads == thread)
            .collect();
        let cpu = (!args.cpu.is_empty()).then(|| args.cpu[thread % args.cpu.len()]);
        let plan = Plan {
            args: args.clone(),
            measure_from: plan.measure_from,
            stop_at: plan.stop_at,
            progress: progress.as_ref().map(|slots| slots[thread].clone()),
        };
        threads.push(std::thread::spawn(move || -> anyhow::Result<Totals> {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(1024)
                .enable_timer()
                .build()
                .context("building the client runtime")?;
            runtime.block_on(async move {
                let plan = Rc::new(plan);
                let tasks: Vec<_> = connections
                    .into_iter()
                    .map(|index| {
                        monoio::spawn(connection(plan.clone(), index, per_connection_rate))
                    })
                    .collect();
                let mut totals = Totals::new();
                for task in tasks {
                    totals.merge(task.await);
                }
                Ok(totals)
            })
        }));
    }
    let mut totals = Totals::new();
    for thread in threads {
        totals.merge(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    Ok(totals)
}

struct Pending {
    intended: Instant,
    events: usize,
    ids: Vec<u128>,
    /// The request as sent (kept only with --retries, to resend it).
    bytes: Vec<u8>,
    /// Sends so far beyond the first.
    attempt: u32,
    /// When it was last sent (for --timeout-ms).
    sent_at: Instant,
}

/// A connection's retries: requests waiting to be sent again, soonest
/// first.
struct Retries {
    waiting: VecDeque<(Instant, Pending)>,
    /// xorshift state for the backoff's jitter.
    jitter: u64,
}

impl Retries {
    /// Puts `request` back for a retry after `wait` at least (and its
    /// jittered backoff), or counts it as given up after its last attempt.
    fn schedule(
        &mut self,
        args: &Args,
        mut request: Pending,
        wait: Duration,
        totals: &mut Totals,
        plan: &Plan,
    ) {
        if request.attempt >= args.retries {
            if request.intended >= plan.measure_from {
                totals.errors += 1;
            }
            totals.gave_up += 1;
            return;
        }
        let ceiling_ms = args
            .retry_backoff_ms
            .saturating_mul(1 << request.attempt.min(16))
            .clamp(1, 10_000);
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let backoff = Duration::from_millis(self.jitter % ceiling_ms);
        request.attempt += 1;
        totals.retried += 1;
        let due = Instant::now() + wait.max(backoff);
        let at = self.waiting.partition_point(|(other, _)| *other <= due);
        self.waiting.insert(at, (due, request));
    }
}

/// One connection: send on schedule (or as fast as allowed), read
/// responses in order, record each against its intended send time.
async fn connection(plan: Rc<Plan>, index: usize, rate: Option<f64>) -> Totals {
    let args = &plan.args;
    let mut totals = Totals::new();
    let mut generator =
        Generator::new((index as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ seed());
    let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    // Stagger open-loop connections across one interval.
    let mut next_send = Instant::now()
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / args.connections as f64)
        });
    let mut output = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut input = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut body = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut pending: VecDeque<Pending> = VecDeque::with_capacity(args.pipeline);
    let mut retries = Retries {
        waiting: VecDeque::new(),
        jitter: seed() | 1,
    };
    let mut stream: Option<TcpStream> = None;
    loop {
        let now = Instant::now();
        if now >= plan.stop_at && pending.is_empty() && retries.waiting.is_empty() {
            break;
        }
        if now >= plan.stop_at + DRAIN_TIMEOUT {
            let left = (pending.len() + retries.waiting.len()) as u64;
            totals.errors += left;
            totals.gave_up += retries.waiting.len() as u64;
            break;
        }
        let Some(connected) = stream.as_mut() else {
            match TcpStream::connect(args.target).await {
                Ok(connected) => {
                    let _ = connected.set_nodelay(true);
                    stream = Some(connected);
                }
                Err(_) => {
                    totals.connection_errors += 1;
                    monoio::time::sleep(RECONNECT_BACKOFF).await;
                }
            }
            continue;
        };
        // Retries that are due go first.
        while pending.len() < args.pipeline
            && retries
                .waiting
                .front()
                .is_some_and(|(due, _)| *due <= Instant::now())
        {
            let (_, mut request) = retries.waiting.pop_front().expect("a due retry");
            output.extend_from_slice(&request.bytes);
            request.sent_at = Instant::now();
            pending.push_back(request);
        }
        // Send what the schedule (or the pipeline depth) allows. Closed
        // loop: a request waiting for its retry holds its place, as a
        // client waiting out Retry-After sends nothing new meanwhile.
        let waiting = match interval {
            None => retries.waiting.len(),
            Some(_) => 0,
        };
        while pending.len() + waiting < args.pipeline && now < plan.stop_at {
            let intended = match interval {
                Some(_) if next_send > Instant::now() => break,
                Some(interval) => {
                    let intended = next_send;
                    next_send += interval;
                    intended
                }
                None => Instant::now(),
            };
            let mut ids = Vec::new();
            let start = output.len();
            write_request(args, &mut generator, &mut body, &mut output, &mut ids);
            let bytes = match args.retries {
                0 => Vec::new(),
                _ => output[start..].to_vec(),
            };
            if intended >= plan.measure_from {
                totals.sent += 1;
            }
            let events = args.batch.max(1);
            if args.verify.is_none() {
                ids.clear();
            }
            pending.push_back(Pending {
                intended,
                events,
                ids,
                bytes,
                attempt: 0,
                sent_at: Instant::now(),
            });
        }
        if !output.is_empty() {
            let (result, buffer) = connected.write_all(std::mem::take(&mut output)).await;
            output = buffer;
            output.clear();
            if result.is_err() {
                lose_connection(&mut totals, &mut pending, &mut retries, &plan);
                (stream, input) = (None, Vec::with_capacity(READ_CHUNK_BYTES));
                continue;
            }
        }
        if pending.is_empty() {
            // Ahead of schedule (open loop), or waiting for a retry (a
            // closed loop has no schedule: it would spin until the retry).
            let now = Instant::now();
            let scheduled =
                (interval.is_some() && now < plan.stop_at).then(|| next_send.min(plan.stop_at));
            let retry = retries.waiting.front().map(|(due, _)| *due);
            let until = match (scheduled, retry) {
                (Some(scheduled), Some(retry)) => scheduled.min(retry),
                (Some(at), None) | (None, Some(at)) => at,
                (None, None) => now,
            };
            monoio::time::sleep(until.saturating_duration_since(now)).await;
            continue;
        }
        if input.capacity() - input.len() < READ_CHUNK_BYTES / 4 {
            input.reserve(READ_CHUNK_BYTES);
        }
        let filled = input.len();
        let read = connected.read(std::mem::take(&mut input).slice_mut(filled..));
        let outcome = match (args.timeout_ms, pending.front()) {
            (0, _) | (_, None) => Some(read.await),
            (timeout_ms, Some(oldest)) => {
                let left = (oldest.sent_at + Duration::from_millis(timeout_ms))
                    .saturating_duration_since(Instant::now());
                monoio::time::timeout(left, read).await.ok()
            }
        };
        // No answer in time (the buffer went with the read), a closed
        // connection or an error: what is in flight on it is lost.
        let received = match outcome {
            Some((result, buffer)) => {
                input = buffer.into_inner();
                matches!(result, Ok(bytes) if bytes > 0)
            }
            None => false,
        };
        if !received {
            lose_connection(&mut totals, &mut pending, &mut retries, &plan);
            (stream, input) = (None, Vec::with_capacity(READ_CHUNK_BYTES));
            monoio::time::sleep(RECONNECT_BACKOFF).await;
            continue;
        }
        let consumed = consume_responses(&input, &mut pending, &mut totals, &mut retries, &plan);
        input.drain(..consumed);
    }
    totals
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn write_request(
    args: &Args,
    generator: &mut Generator,
    body: &mut Vec<u8>,
    output: &mut Vec<u8>,
    ids: &mut Vec<u128>,
) {
    body.clear();
    generator.body(args.batch, args.ndjson, body, ids, now_ms());
    if args.gzip {
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        let _ = encoder.write_all(body);
        *body = encoder.finish().unwrap_or_default();
    }
    let content_type = if args.batch > 0 && args.ndjson {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let _ = write!(
        output,
        "POST {} HTTP/1.1\r\nHost: {}\r\nX-CS-API-Key: {}\r\nContent-Type: {content_type}\r\n{}Content-Length: {}\r\n\r\n",
        args.path(),
        args.target,
        args.key,
        if args.gzip { "Content-Encoding: gzip\r\n" } else { "" },
        body.len()
    );
    output.extend_from_slice(body);
}

/// A connection was lost with `pending` in flight: each is retried (with
/// --retries; its outcome is unknown, so it is sent again with the same
/// bytes) or counted as an error.
fn lose_connection(
    totals: &mut Totals,
    pending: &mut VecDeque<Pending>,
    retries: &mut Retries,
    plan: &Plan,
) {
    totals.connection_errors += 1;
    for request in pending.drain(..) {
        if plan.args.retries > 0 {
            retries.schedule(&plan.args, request, Duration::ZERO, totals, plan);
        } else if request.intended >= plan.measure_from {
            totals.errors += 1;
        }
    }
}

/// Parses every complete response in `input`; returns the bytes consumed.
fn consume_responses(
    input: &[u8],
    pending: &mut VecDeque<Pending>,
    totals: &mut Totals,
    retries: &mut Retries,
    plan: &Plan,
) -> usize {
    let mut consumed = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_bytes)) = response.parse(&input[consumed..]) else {
            return consumed;
        };
        let status = response.code.unwrap_or(0);
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .unwrap_or(0);
        if input.len() - consumed < head_bytes + length {
            return consumed;
        }
        consumed += head_bytes + length;
        if status == 100 {
            continue;
        }
        let Some(request) = pending.pop_front() else {
            return consumed;
        };
        if plan.args.retries > 0 && matches!(status, 408 | 429 | 502 | 503 | 504) {
            // Retryable: sent again after Retry-After (whole seconds) at
            // least; the answer is counted, the outcome comes later.
            let retry_after = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map_or(Duration::ZERO, Duration::from_secs);
            if request.intended >= plan.measure_from {
                *totals.statuses.entry(status).or_default() += 1;
            }
            retries.schedule(&plan.args, request, retry_after, totals, plan);
            continue;
        }
        let ok = (200..300).contains(&status);
        if ok {
            totals.acknowledged_ids.extend_from_slice(&request.ids);
        }
        if request.intended < plan.measure_from {
            continue;
        }
        let latency = request
            .intended
            .elapsed()
            .as_micros()
            .clamp(1, u128::from(LATENCY_MAX_US)) as u64;
        let _ = totals.histogram.record(latency);
        if let Some(slot) = &plan.progress {
            slot.record(latency, ok);
        }
        *totals.statuses.entry(status).or_default() += 1;
        if ok {
            totals.ok += 1;
            totals.events_ok += request.events as u64;
        } else {
            totals.errors += 1;
        }
    }
}
