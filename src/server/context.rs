//! What the parts of a core share: the process-wide [`Shared`] state and
//! the per-core [`Core`] (pools, scratch buffers, the in-flight table, the
//! connection table). Every other `server` module imports this one and it
//! imports none of them, so the arrows run one way along the data path:
//! connection → dispatch → ingest → hand-off to Kafka.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::inflight::Inflight;
use crate::clock::{DateCache, HTTP_DATE_BYTES};
use crate::config::Config;
use crate::events::validate::{EventLimits, Validator};
use crate::handoff::{Batch, Mailbox};
use crate::health::Readiness;
use crate::metrics::{CoreMetrics, Metrics};
use crate::shutdown::Shutdown;
use crate::tenancy::keys::KeyStore;

/// Bytes a connection buffer starts with.
pub const CONNECTION_BUFFER_BYTES: usize = 8 * 1024;
/// Buffers above this are freed rather than pooled, so one large request
/// does not pin its memory for the life of the process.
pub const POOLED_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Connection buffers kept for reuse per core.
const POOLED_BUFFERS_MAX: usize = 1024;
/// The small buffer an idle connection reads its next request's first
/// bytes into: large enough for a typical single-event request.
pub const IDLE_READ_BYTES: usize = 1024;
/// Idle read buffers kept for reuse per core (parked connections give
/// theirs back; at most this many, 1 MiB, stay pooled).
const POOLED_IDLE_BUFFERS_MAX: usize = 1024;

/// What a log line takes besides the texts it quotes (timestamp, level,
/// target, field names, status, request id), counted against
/// `server.error_log_bytes_per_second_max`; a line that quotes nothing
/// counts as this.
pub const LOG_LINE_BYTES_FIXED: usize = 256;

/// The most bytes `text` can take in a log line, escaped (text logs quote
/// fields as Rust strings, JSON logs as JSON strings): a control
/// character at most 6 bytes, a quote or backslash 2, a byte of a
/// non-ASCII character 3 (`\u{10ffff}` for four).
pub fn logged_bytes(text: &[u8]) -> usize {
    text.iter()
        .map(|&byte| match byte {
            0..0x20 | 0x7f => 6,
            b'"' | b'\\' => 2,
            0x80.. => 3,
            _ => 1,
        })
        .sum()
}

/// State shared by all cores and the control plane; read-mostly.
pub struct Shared {
    pub config: Config,
    pub keys: KeyStore,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub mailboxes: Arc<[Arc<Mailbox>]>,
    /// The event contracts (`None`: no `schemas.dir`).
    pub schemas: crate::events::schema::Schemas,
    /// The threads that check what the cores hand over (with `schemas`).
    pub checker: Option<Arc<crate::events::schema::checker::Checker>>,
    /// The local dedup table (`None`: `dedup.enabled = false`).
    pub dedup: Option<Arc<crate::dedup::table::DedupTable>>,
    /// The hot-key detector (`None`: `overflow.topic` unset).
    pub hot_keys: Option<Arc<crate::hot_keys::HotKeys>>,
    pub topic: Arc<str>,
    pub dead_letter_topic: Arc<str>,
    pub shutdown: Shutdown,
    /// Which browser origins may send (`cors.allowed_origins`).
    pub cors: crate::cors::Cors,
}

/// Per-core state shared by the core's tasks (single-threaded).
pub struct Core {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub batches: Sender<Batch>,
    /// Produces a request's records from this core's own thread (none with
    /// fleet dedup, whose thread stands between the cores and Kafka).
    pub direct: Option<crate::kafka::producer::LoopProducer>,
    pub mailbox: Arc<Mailbox>,
    /// This core's own copies of the topic names, so that the reference
    /// count each request's batch bumps is not shared with other cores.
    pub topic: Arc<str>,
    pub dead_letter_topic: Arc<str>,
    /// `overflow.topic` (empty: off).
    pub overflow_topic: Arc<str>,
    pub inflight: RefCell<Inflight>,
    pub validator: RefCell<Validator>,
    pub scratch: RefCell<Scratch>,
    /// How long a socket may take no bytes of a response.
    pub write_timeout: Duration,
    dates: DateCache,
    /// The clock as read at the last [`Core::tick`]: once when a request
    /// starts, after a wait on Kafka, and once per batch of delivery
    /// reports. Deadlines, timestamps and `Date` use it, so a request reads
    /// the clock two or three times instead of about a dozen.
    now: Cell<Instant>,
    now_ms: Cell<u64>,
    buffers: RefCell<Vec<Vec<u8>>>,
    /// Idle read buffers, each of [`IDLE_READ_BYTES`].
    idle_buffers: RefCell<Vec<Vec<u8>>>,
    connections: RefCell<ConnectionTable>,
    request_counter: Cell<u64>,
    /// Requests that claimed dedup slots on this core, to name them.
    dedup_serial: Cell<u64>,
    /// The second the log budget counts, and the lines and (estimated)
    /// bytes logged in it.
    log_budget: Cell<(u64, u32, u64)>,
    /// Debug builds only: a target that panics, to test that a panic on a
    /// core aborts the process (`SLUICE_DEBUG_PANIC_TARGET`).
    #[cfg(debug_assertions)]
    pub panic_target: Option<Vec<u8>>,
}

/// Per-core buffers used synchronously between two awaits.
#[derive(Default)]
pub struct Scratch {
    pub spans: Vec<std::ops::Range<usize>>,
    pub inflated: Vec<u8>,
    pub body: Vec<u8>,
    /// A key decoded from the request: a Basic user name, or the query
    /// string's `api_key` (`auth.query_key`).
    pub decoded_key: Vec<u8>,
    /// A Segment call rewritten as a native event.
    pub translated: Vec<u8>,
}

impl Core {
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        batches: Sender<Batch>,
        direct: Option<crate::kafka::producer::LoopProducer>,
        inflight: Inflight,
    ) -> Core {
        let limits = &shared.config.limits;
        let mailbox = shared.mailboxes[index].clone();
        let event_limits = EventLimits {
            event_bytes_max: limits.event_bytes_max,
            properties_depth_max: limits.properties_depth_max,
            event_time_past_ms: limits.event_time_past_ms,
            event_time_future_ms: limits.event_time_future_ms,
        };
        let seed = random_seed() ^ index as u64;
        Core {
            index,
            batches,
            direct,
            mailbox,
            topic: Arc::from(&*shared.topic),
            dead_letter_topic: Arc::from(&*shared.dead_letter_topic),
            overflow_topic: Arc::from(shared.config.overflow.topic.as_str()),
            inflight: RefCell::new(inflight),
            validator: RefCell::new(Validator::new(event_limits, seed)),
            scratch: RefCell::new(Scratch::default()),
            write_timeout: Duration::from_millis(shared.config.server.write_timeout_ms),
            dates: DateCache::default(),
            now: Cell::new(Instant::now()),
            now_ms: Cell::new(crate::clock::now_ms()),
            buffers: RefCell::new(Vec::new()),
            idle_buffers: RefCell::new(Vec::new()),
            connections: RefCell::new(ConnectionTable::default()),
            request_counter: Cell::new(seed),
            dedup_serial: Cell::new(0),
            log_budget: Cell::new((0, 0, 0)),
            #[cfg(debug_assertions)]
            panic_target: std::env::var("SLUICE_DEBUG_PANIC_TARGET")
                .ok()
                .map(String::into_bytes),
            shared,
        }
    }

    /// A new request's identity in the dedup table's pending slots.
    pub fn next_dedup_owner(&self) -> u64 {
        let serial = self.dedup_serial.get().wrapping_add(1);
        self.dedup_serial.set(serial);
        crate::dedup::table::owner(self.index, serial)
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics.cores[self.index]
    }

    /// Reads the clock; returns the monotonic reading.
    pub fn tick(&self) -> Instant {
        let now = Instant::now();
        self.now.set(now);
        self.now_ms.set(crate::clock::now_ms());
        now
    }

    /// The monotonic clock at the last [`Core::tick`].
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    /// Epoch milliseconds at the last [`Core::tick`].
    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    /// The `Date` header value at the last tick.
    pub fn date(&self) -> [u8; HTTP_DATE_BYTES] {
        self.dates.get(self.now_ms())
    }

    /// A pooled, empty buffer.
    pub fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CONNECTION_BUFFER_BYTES))
    }

    pub fn give_buffer(&self, mut buffer: Vec<u8>) {
        let mut buffers = self.buffers.borrow_mut();
        let capacity = buffer.capacity();
        let poolable = (CONNECTION_BUFFER_BYTES..=POOLED_BUFFER_BYTES_MAX).contains(&capacity);
        if poolable && buffers.len() < POOLED_BUFFERS_MAX {
            buffer.clear();
            buffers.push(buffer);
        }
    }

    /// An idle read buffer, empty, with [`IDLE_READ_BYTES`] of room.
    pub fn take_idle_buffer(&self) -> Vec<u8> {
        self.idle_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(IDLE_READ_BYTES))
    }

    pub fn give_idle_buffer(&self, mut buffer: Vec<u8>) {
        let mut buffers = self.idle_buffers.borrow_mut();
        if buffer.capacity() == IDLE_READ_BYTES && buffers.len() < POOLED_IDLE_BUFFERS_MAX {
            buffer.clear();
            buffers.push(buffer);
        }
    }

    /// Gives the inflate buffer back to the core's scratch, unless it grew
    /// past what is kept.
    pub fn keep_inflated(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() > POOLED_BUFFER_BYTES_MAX {
            buffer = Vec::new();
        }
        self.scratch.borrow_mut().inflated = buffer;
    }

    /// A pooled batch, recycled by the producer threads.
    pub fn take_batch(&self) -> Batch {
        self.mailbox
            .take_batch()
            .unwrap_or_else(|| Batch::new(&self.topic))
    }

    /// A new request id: 16 hex digits, unique per process run.
    pub fn next_request_id(&self, out: &mut [u8; 16]) {
        let value = self.request_counter.get().wrapping_add(1);
        self.request_counter.set(value);
        // Spread consecutive counters so ids do not look sequential.
        let mixed = value.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for (index, byte) in out.iter_mut().enumerate() {
            *byte = b"0123456789abcdef"[((mixed >> (60 - 4 * index)) & 0xf) as usize];
        }
    }

    /// Whether a failed-request log line of the usual size may be written
    /// now (see [`Core::may_log_bytes`]).
    pub fn may_log(&self) -> bool {
        self.may_log_bytes(LOG_LINE_BYTES_FIXED)
    }

    /// Whether a failed-request log line of about `line_bytes` may be
    /// written now: per core and second, at most
    /// `server.error_logs_per_second_max` lines and
    /// `server.error_log_bytes_per_second_max` bytes. A line refused is
    /// counted in `sluice_log_lines_suppressed_total`.
    pub fn may_log_bytes(&self, line_bytes: usize) -> bool {
        let server = &self.shared.config.server;
        let second = self.now_ms() / 1000;
        let (current, lines, bytes) = self.log_budget.get();
        let (lines, bytes) = if current == second {
            (lines, bytes)
        } else {
            (0, 0)
        };
        let bytes_after = bytes.saturating_add(line_bytes as u64);
        if lines >= server.error_logs_per_second_max
            || bytes_after > server.error_log_bytes_per_second_max
        {
            self.metrics().log_suppressed();
            return false;
        }
        self.log_budget.set((second, lines + 1, bytes_after));
        true
    }

    pub fn register_connection(&self, fd: RawFd) -> Option<usize> {
        let max = self.shared.config.server.connections_per_core_max;
        let entry = self.connections.borrow_mut().insert(fd, max);
        self.publish_connections();
        entry
    }

    pub fn unregister_connection(&self, entry: usize) {
        self.connections.borrow_mut().remove(entry);
        self.publish_connections();
    }

    pub fn set_connection_state(&self, entry: usize, state: ConnectionState) {
        self.connections.borrow_mut().set_state(entry, state);
    }

    /// Runs `future` until it ends or `deadline` passes, for the
    /// registered connection `entry` (one wait at a time per connection).
    /// The deadline is checked by [`Core::sweep_deadlines`], not a timer:
    /// see [`ConnectionTable`]. On `Elapsed` the future is dropped.
    pub async fn within<F: Future>(
        &self,
        entry: usize,
        deadline: Instant,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        let armed = self.connections.borrow_mut().arm(entry, deadline);
        debug_assert!(
            armed,
            "a deadline for connection {entry}, which is not registered"
        );
        let mut future = std::pin::pin!(future);
        let outcome = std::future::poll_fn(|context| {
            if let Poll::Ready(output) = future.as_mut().poll(context) {
                return Poll::Ready(Ok(output));
            }
            if self
                .connections
                .borrow_mut()
                .expired_or_register(entry, context.waker())
            {
                return Poll::Ready(Err(Elapsed));
            }
            Poll::Pending
        })
        .await;
        self.connections.borrow_mut().disarm(entry);
        outcome
    }

    /// Ends the waits whose deadline passed (see [`Core::within`]).
    pub fn sweep_deadlines(&self, now: Instant) {
        self.connections.borrow_mut().sweep(now);
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.borrow().count
    }

    /// Shuts the read side of every connection that holds no request: its
    /// pending read returns end-of-file and its task ends on its own.
    pub fn close_connections_without_request(&self) {
        self.connections.borrow().close_without_request();
    }

    fn publish_connections(&self) {
        let count = self.connections.borrow().count as u64;
        self.metrics()
            .connections
            .store(count, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a connection is in its life, for shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Waiting for the first byte of a request.
    Idle,
    /// Reading a request head: nothing has been accepted yet.
    Head,
    /// A request is in hand: it is answered before the connection closes.
    Busy,
}

/// One open connection: its socket, where it is, and the deadline of
/// the wait it is in, if any.
struct Slot {
    fd: RawFd,
    state: ConnectionState,
    deadline: Option<Instant>,
    /// The deadline passed: the wait ends with [`Elapsed`].
    expired: bool,
    /// The connection's task, woken when its deadline passes.
    waker: Option<Waker>,
}

/// Open connections, so a draining core can close those without a
/// request, and the deadlines of their waits, which the core's sweeper
/// checks every [`SWEEP_INTERVAL`] instead of a timer per wait (a monoio
/// timer is 640 bytes, aligned to 128, inside every future waiting with
/// one, and a timer-wheel insert and removal per wait).
#[derive(Default)]
struct ConnectionTable {
    entries: Vec<Option<Slot>>,
    free: Vec<usize>,
    count: usize,
    /// No deadline is earlier than this (`None`: none is set).
    earliest: Option<Instant>,
}

/// How often a core checks its connections' deadlines: the most a wait can
/// overrun its deadline by, beyond the core's own lateness.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// A wait's deadline passed.
#[derive(Debug)]
pub struct Elapsed;

impl ConnectionTable {
    fn insert(&mut self, fd: RawFd, max: usize) -> Option<usize> {
        if self.count >= max {
            return None;
        }
        self.count += 1;
        let entry = Some(Slot {
            fd,
            state: ConnectionState::Busy,
            deadline: None,
            expired: false,
            waker: None,
        });
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = entry;
                Some(index)
            }
            None => {
                self.entries.push(entry);
                Some(self.entries.len() - 1)
            }
        }
    }

    fn remove(&mut self, index: usize) {
        if self.entries[index].take().is_some() {
            self.count -= 1;
            self.free.push(index);
        }
    }

    fn slot(&mut self, index: usize) -> Option<&mut Slot> {
        self.entries.get_mut(index).and_then(Option::as_mut)
    }

    fn set_state(&mut self, index: usize, state: ConnectionState) {
        if let Some(slot) = self.slot(index) {
            slot.state = state;
        }
    }

    /// `false` when `index` holds no connection: a wait armed there would
    /// have no deadline.
    fn arm(&mut self, index: usize, deadline: Instant) -> bool {
        let Some(slot) = self.slot(index) else {
            return false;
        };
        slot.deadline = Some(deadline);
        slot.expired = false;
        self.earliest = Some(self.earliest.map_or(deadline, |e| e.min(deadline)));
        true
    }

    /// The waker stays: the next wait of the same task reuses it (no
    /// clone per wait); it goes with the slot when the connection ends.
    fn disarm(&mut self, index: usize) {
        if let Some(slot) = self.slot(index) {
            slot.deadline = None;
            slot.expired = false;
        }
    }

    /// Whether the slot's deadline passed; if not, its task is woken when
    /// it does.
    fn expired_or_register(&mut self, index: usize, waker: &Waker) -> bool {
        let Some(slot) = self.slot(index) else {
            return false;
        };
        if slot.expired {
            return true;
        }
        if !slot
            .waker
            .as_ref()
            .is_some_and(|held| held.will_wake(waker))
        {
            slot.waker = Some(waker.clone());
        }
        false
    }

    /// Marks every deadline at or before `now` as passed and wakes its
    /// task. Scans only when the earliest deadline is due.
    fn sweep(&mut self, now: Instant) {
        if self.earliest.is_none_or(|earliest| earliest > now) {
            return;
        }
        let mut earliest = None::<Instant>;
        for slot in self.entries.iter_mut().flatten() {
            let Some(deadline) = slot.deadline.filter(|_| !slot.expired) else {
                continue;
            };
            if deadline <= now {
                slot.expired = true;
                if let Some(waker) = &slot.waker {
                    waker.wake_by_ref();
                }
            } else {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        self.earliest = earliest;
    }

    fn close_without_request(&self) {
        for slot in self.entries.iter().flatten() {
            if slot.state != ConnectionState::Busy {
                // SAFETY: the fd belongs to a live connection of this core;
                // shutdown(2) does not close or invalidate it.
                unsafe { libc::shutdown(slot.fd, libc::SHUT_RD) };
            }
        }
    }
}

/// A per-process random value (std's hash seed mixed with the time and pid).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    hasher.finish()
}
