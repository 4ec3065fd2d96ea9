//! One event-loop core: a monoio runtime pinned to a CPU, its own
//! SO_REUSEPORT listener, the accept loop, the task that applies delivery
//! reports, and the drain at shutdown. Nothing here is shared with other
//! cores except through atomics and queues.

use std::os::fd::AsRawFd as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use monoio::net::TcpListener;

use super::connection;
use super::context::{Core, Shared};
use super::inflight::Inflight;
use crate::config::IoDriver;
use crate::handoff::Batch;

/// Submission queue entries of a core's io_uring.
const IO_URING_ENTRIES: u32 = 1024;
/// Pause after a failed accept (for example EMFILE) before the next.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Clients whose descriptor is this close to the open-files limit are
/// refused (503) rather than served: room for Kafka sockets, log files and
/// the other cores' reserves.
const DESCRIPTOR_HEADROOM: u64 = 16;
/// How often a draining core checks whether its connections are done.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a core thread is started with.
pub struct CoreSetup {
    pub index: usize,
    /// The CPU its thread is pinned to, if any.
    pub cpu: Option<usize>,
    pub listener: std::net::TcpListener,
    pub shared: Arc<Shared>,
    pub batches: Sender<Batch>,
    /// Its way to Kafka from its own thread ([`Core::direct`]).
    pub direct: Option<crate::kafka::producer::LoopProducer>,
    /// Built at start-up, where its fit to the completion queue is checked.
    pub inflight: Inflight,
}

/// The I/O driver the event loops run on, with a start-up line that says
/// which and why. `io_uring` asks for monoio's fusion driver, which takes
/// io_uring only where `detect_uring` (probed once and cached, so this
/// answer and every core's runtime agree) finds it allowed; where the
/// kernel or a seccomp profile refuses it (containerd 2's and Docker's
/// default profiles do) the loops run on epoll without an error, so an
/// operator would not otherwise know.
pub fn io_driver_in_use(configured: IoDriver) -> &'static str {
    match configured {
        IoDriver::Epoll => {
            tracing::info!(io_driver = "epoll", "I/O driver: epoll (server.io_driver)");
            "epoll"
        }
        IoDriver::IoUring if monoio::utils::detect_uring() => {
            tracing::info!(io_driver = "io_uring", "I/O driver: io_uring");
            "io_uring"
        }
        IoDriver::IoUring => {
            tracing::warn!(
                io_driver = "epoll",
                "I/O driver: epoll, because io_uring was refused (by the kernel, or by a seccomp profile: see deploy/kubernetes)"
            );
            "epoll"
        }
    }
}

/// Runs one core until shutdown has drained it.
pub fn run(setup: CoreSetup) -> anyhow::Result<()> {
    if let Some(cpu) = setup.cpu {
        if let Err(error) = crate::cpus::pin_current_thread(&[cpu]) {
            tracing::warn!(core = setup.index, cpu, %error, "could not pin core thread");
        }
    }
    // io_uring batches many operations per system call when the loop is
    // busy; epoll costs less per request when it is not (BENCHMARKS.md,
    // "io driver"). The fusion driver falls back to epoll where io_uring is
    // unavailable.
    match setup.shared.config.server.io_driver {
        IoDriver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(serve_core(setup)),
        IoDriver::IoUring => {
            let fusion = || {
                monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .with_entries(IO_URING_ENTRIES)
                    .enable_timer()
            };
            // The cheaper ring where the kernel has it (6.0 and later);
            // otherwise monoio's default ring, and epoll where io_uring
            // is refused altogether.
            let mut runtime = match fusion().uring_builder(cooperative_ring()).build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::info!(core = setup.index, %error, "io_uring: the cooperative ring flags were refused; using the default ring");
                    fusion().build()?
                }
            };
            runtime.block_on(serve_core(setup))
        }
    }
}

/// The ring setup a core's io_uring asks for: completions are posted when
/// the loop next enters the kernel, not by an interrupt that preempts it
/// (`COOP_TASKRUN`, with `TASKRUN_FLAG` so pending work is still seen),
/// and the kernel may skip the locking a ring shared between threads needs
/// (`SINGLE_ISSUER`: only the core's own thread submits to its ring). The
/// loop enters the kernel at every turn, so nothing waits longer for it.
/// Measured (BENCHMARKS.md, "Performance 3"): fewer reschedule interrupts
/// and less kernel time per request.
fn cooperative_ring() -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    builder
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    builder
}

/// The core's work, inside its runtime: accept until shutdown, then drain.
async fn serve_core(setup: CoreSetup) -> anyhow::Result<()> {
    {
        let listener = TcpListener::from_std(setup.listener)?;
        let core = Rc::new(Core::new(
            setup.index,
            setup.shared,
            setup.batches,
            setup.direct,
            setup.inflight,
        ));
        monoio::spawn(deliver_completions(core.clone()));
        monoio::spawn(sweep_deadlines(core.clone()));
        accept_until_shutdown(&core, &listener).await;
        drop(listener);
        drain(&core).await;
        anyhow::Ok(())
    }
}

async fn accept_until_shutdown(core: &Rc<Core>, listener: &TcpListener) {
    // One descriptor held in reserve. When accept fails for lack of
    // descriptors, the reserve is given up for a moment so that the waiting
    // client can be accepted, answered 503 and closed, instead of waiting
    // in the backlog for a descriptor that may never come.
    //
    // With several cores the descriptor one core frees can be taken by
    // another core's accept, so the reserve alone cannot promise an answer.
    // Each core therefore also refuses a client whose descriptor is within
    // DESCRIPTOR_HEADROOM of the limit: descriptors are allocated lowest
    // first, so a high number means the process has almost none left, and
    // the refusal frees it again at once.
    let mut reserve = open_reserve();
    let mut refuse_next = false;
    let refuse_from = descriptors_max().saturating_sub(DESCRIPTOR_HEADROOM);
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = core.shared.shutdown.wait(core.index) => return,
        };
        match accepted {
            Ok((stream, _peer)) if refuse_next || stream.as_raw_fd() as u64 >= refuse_from => {
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

/// The process's open-files limit (soft), as raised at start-up.
fn descriptors_max() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// The spare descriptor [`accept_until_shutdown`] keeps for refusing
/// clients when the process runs out of descriptors.
fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// After the listener closed: close connections that hold no request
/// (idle, or half-way through a head), let busy ones finish their request,
/// and give up at the drain deadline, which counts from the signal.
async fn drain(core: &Rc<Core>) {
    let deadline = core.shared.shutdown.drain_deadline();
    while std::time::Instant::now() < deadline {
        core.close_connections_without_request();
        let busy = core.connection_count() > 0 || core.inflight.borrow().requests() > 0;
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

/// Ends the connections' waits whose deadline passed (see `Core::within`).
async fn sweep_deadlines(core: Rc<Core>) {
    loop {
        monoio::time::sleep(super::context::SWEEP_INTERVAL).await;
        core.sweep_deadlines(std::time::Instant::now());
    }
}

/// Applies delivery reports from the producer threads to the in-flight table.
async fn deliver_completions(core: Rc<Core>) {
    loop {
        std::future::poll_fn(|context| {
            core.mailbox.register(context.waker());
            match core.mailbox.next_completion() {
                Some(completion) => {
                    let now = core.tick();
                    core.inflight.borrow_mut().complete(
                        completion,
                        now,
                        core.now_ms(),
                        core.metrics(),
                    );
                    std::task::Poll::Ready(())
                }
                None => std::task::Poll::Pending,
            }
        })
        .await;
        let (now, now_ms) = (core.now(), core.now_ms());
        while let Some(completion) = core.mailbox.next_completion() {
            core.inflight
                .borrow_mut()
                .complete(completion, now, now_ms, core.metrics());
        }
    }
}
