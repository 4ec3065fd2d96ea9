//! One event-loop core: a monoio runtime pinned to a CPU, its own
//! SO_REUSEPORT listener, and everything its connections share. Nothing
//! here is shared with other cores except through atomics and queues.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd as _, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use monoio::net::TcpListener;

use super::inflight::Inflight;
use super::{connection, Shared};
use crate::event::{EventLimits, Validator};
use crate::kafka::handoff::{Batch, Mailbox};
use crate::metrics::CoreMetrics;

/// Bytes a connection buffer starts with.
pub const CONNECTION_BUFFER_BYTES: usize = 8 * 1024;
/// Buffers above this are freed rather than pooled, so one large request
/// does not pin its memory for the life of the process.
pub const POOLED_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Connection buffers kept for reuse per core.
const POOLED_BUFFERS_MAX: usize = 1024;
/// Pause after a failed accept (for example EMFILE) before the next.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How often a draining core checks whether its connections are done.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a core thread is started with.
pub struct CoreSetup {
    pub index: usize,
    pub cpu: Option<core_affinity::CoreId>,
    pub listener: std::net::TcpListener,
    pub shared: Arc<Shared>,
    pub batches: Sender<Batch>,
}

/// Per-core state shared by the core's tasks (single-threaded).
pub struct Core {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub batches: Sender<Batch>,
    pub mailbox: Arc<Mailbox>,
    pub inflight: RefCell<Inflight>,
    pub validator: RefCell<Validator>,
    pub scratch: RefCell<Scratch>,
    buffers: RefCell<Vec<Vec<u8>>>,
    connections: RefCell<ConnectionTable>,
    request_counter: Cell<u64>,
    log_budget: Cell<(u64, u32)>,
}

/// Per-core buffers used synchronously between two awaits.
#[derive(Default)]
pub struct Scratch {
    pub spans: Vec<std::ops::Range<usize>>,
    pub inflated: Vec<u8>,
    pub body: Vec<u8>,
}

impl Core {
    pub fn new(index: usize, shared: Arc<Shared>, batches: Sender<Batch>) -> Core {
        let limits = &shared.config.limits;
        let mailbox = shared.mailboxes[index].clone();
        let inflight = Inflight::new(
            index,
            limits.inflight_requests_per_core_max,
            limits.inflight_events_per_core_max,
            limits.inflight_bytes_per_core_max,
        );
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
            mailbox,
            inflight: RefCell::new(inflight),
            validator: RefCell::new(Validator::new(event_limits, seed)),
            scratch: RefCell::new(Scratch::default()),
            buffers: RefCell::new(Vec::new()),
            connections: RefCell::new(ConnectionTable::default()),
            request_counter: Cell::new(seed),
            log_budget: Cell::new((0, 0)),
            shared,
        }
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics.cores[self.index]
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

    /// A pooled batch, recycled by the producer threads.
    pub fn take_batch(&self) -> Batch {
        self.mailbox
            .take_batch()
            .unwrap_or_else(|| Batch::new(&self.shared.topic))
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

    /// Whether a failed-request log line may be written now (per-second budget).
    pub fn may_log(&self) -> bool {
        let second = crate::health::now_ms() / 1000;
        let (current, used) = self.log_budget.get();
        let used = if current == second { used } else { 0 };
        if used >= self.shared.config.server.error_logs_per_second_max {
            self.metrics().log_suppressed();
            return false;
        }
        self.log_budget.set((second, used + 1));
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

    pub fn set_idle(&self, entry: usize, idle: bool) {
        self.connections.borrow_mut().set_idle(entry, idle);
    }

    fn publish_connections(&self) {
        let count = self.connections.borrow().count as u64;
        self.metrics()
            .connections
            .store(count, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Open connections, so a draining core can close the idle ones.
#[derive(Default)]
struct ConnectionTable {
    entries: Vec<Option<(RawFd, bool)>>,
    free: Vec<usize>,
    count: usize,
}

impl ConnectionTable {
    fn insert(&mut self, fd: RawFd, max: usize) -> Option<usize> {
        if self.count >= max {
            return None;
        }
        self.count += 1;
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some((fd, false));
                Some(index)
            }
            None => {
                self.entries.push(Some((fd, false)));
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

    fn set_idle(&mut self, index: usize, idle: bool) {
        if let Some(entry) = self.entries[index].as_mut() {
            entry.1 = idle;
        }
    }

    /// Shuts the read side of idle connections: their pending read returns
    /// end-of-file and their task ends on its own.
    fn close_idle(&self) {
        for (fd, idle) in self.entries.iter().flatten() {
            if *idle {
                // SAFETY: the fd belongs to a live connection of this core;
                // shutdown(2) does not close or invalidate it.
                unsafe { libc::shutdown(*fd, libc::SHUT_RD) };
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

/// Runs one core until shutdown has drained it.
pub fn run(setup: CoreSetup) -> anyhow::Result<()> {
    if let Some(cpu) = setup.cpu {
        if !core_affinity::set_for_current(cpu) {
            tracing::warn!(
                core = setup.index,
                cpu = cpu.id,
                "could not pin core thread"
            );
        }
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(1024)
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(setup.listener)?;
        let core = Rc::new(Core::new(setup.index, setup.shared, setup.batches));
        monoio::spawn(deliver_completions(core.clone()));
        accept_until_shutdown(&core, &listener).await;
        drop(listener);
        drain(&core).await;
        anyhow::Ok(())
    })
}

async fn accept_until_shutdown(core: &Rc<Core>, listener: &TcpListener) {
    // One descriptor held in reserve. When accept fails for lack of
    // descriptors, the reserve is given up for a moment so that the waiting
    // client can be accepted, answered 503 and closed, instead of waiting
    // in the backlog for a descriptor that may never come.
    let mut reserve = open_reserve();
    let mut refuse_next = false;
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = core.shared.shutdown.wait(core.index) => return,
        };
        match accepted {
            Ok((stream, _peer)) if refuse_next => {
                // The reserve is opened again at a later accept, once
                // the refusal has closed and given its descriptor back.
                refuse_next = false;
                let core = core.clone();
                monoio::spawn(async move { connection::refuse(&core, stream).await });
            }
            Ok((stream, _peer)) => {
                if reserve.is_none() {
                    reserve = open_reserve();
                }
                let _ = stream.set_nodelay(true);
                let fd = stream.as_raw_fd();
                let core = core.clone();
                monoio::spawn(async move {
                    match core.register_connection(fd) {
                        Some(entry) => {
                            connection::serve(&core, stream, entry).await;
                            core.unregister_connection(entry);
                        }
                        None => connection::refuse(&core, stream).await,
                    }
                });
            }
            Err(error) => {
                if core.may_log() {
                    tracing::warn!(core = core.index, %error, "accept failed");
                }
                let out_of_descriptors =
                    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_descriptors && reserve.is_some() {
                    reserve = None;
                    refuse_next = true;
                } else {
                    monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    if reserve.is_none() && !refuse_next {
                        reserve = open_reserve();
                    }
                }
            }
        }
    }
}

/// The spare descriptor [`accept_until_shutdown`] keeps for refusing
/// clients when the process runs out of descriptors.
fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// After the listener closed: close idle connections, let busy ones finish
/// their request, and give up at the drain deadline.
async fn drain(core: &Rc<Core>) {
    let deadline =
        Instant::now() + Duration::from_millis(core.shared.config.server.drain_timeout_ms);
    while Instant::now() < deadline {
        core.connections.borrow().close_idle();
        let busy = core.connections.borrow().count > 0 || core.inflight.borrow().requests() > 0;
        if !busy {
            return;
        }
        monoio::time::sleep(DRAIN_POLL_INTERVAL).await;
    }
    tracing::warn!(
        core = core.index,
        "drain deadline passed with connections still open"
    );
}

/// Applies delivery reports from the producer threads to the in-flight table.
async fn deliver_completions(core: Rc<Core>) {
    loop {
        std::future::poll_fn(|context| {
            core.mailbox.register(context.waker());
            match core.mailbox.next_completion() {
                Some(completion) => {
                    core.inflight
                        .borrow_mut()
                        .complete(completion, core.metrics());
                    std::task::Poll::Ready(())
                }
                None => std::task::Poll::Pending,
            }
        })
        .await;
        while let Some(completion) = core.mailbox.next_completion() {
            core.inflight
                .borrow_mut()
                .complete(completion, core.metrics());
        }
    }
}
