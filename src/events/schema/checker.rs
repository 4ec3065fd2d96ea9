//! Checker threads: where a request's schema checks go when they would
//! keep its core from its other connections (see [`super::checks`]).
//!
//! A fixed number of threads (`schemas.checker_threads`) take jobs from one
//! bounded queue (`schemas.checker_queue_requests_max`; full: the request
//! is shed with a 503, as a full in-flight table sheds it). The queue is
//! fair between tenants: each tenant with jobs waiting has its own line,
//! and the threads take one job from each line in turn, so a tenant's job
//! waits behind at most one job of each other tenant, not behind a
//! flood. A tenant may hold at most its share of the queue's places (the
//! places divided by the tenants waiting, itself counted; never more
//! than half while it is alone), so a flood cannot take every place from
//! the next tenant. A job whose request stopped waiting (its deadline
//! passed, its connection closed) is dropped unchecked. Each job owns a
//! copy of its body and the set it is checked against; its verdicts go
//! back through a one-slot queue and a waker, so the core awaits them
//! without a lock. Submitting takes the queue's mutex for a few
//! instructions (this is the slow path: only requests whose checks would
//! hold their core come here). The threads run at a lower priority than the cores
//! (nice +10): a validation never takes a core's CPU from it. Their stacks
//! hold the deepest validation the budgets allow: an event nested 128
//! deep (the parser's limit) with `schemas.ref_depth_max` in-place
//! subschemas at every level.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

use super::checks::{check_events, RequestShape, Verdict};
use super::SchemaSet;

/// A checker thread's stack: reserved, touched only as deep as a
/// validation goes (the default budgets' deepest needs under 2 MiB).
const CHECKER_STACK_BYTES: usize = 64 << 20;
/// How much lower than the cores the checker threads run.
const CHECKER_NICENESS: i32 = 10;

struct Job {
    set: Arc<SchemaSet>,
    tenant: Arc<str>,
    shape: RequestShape,
    body: Box<[u8]>,
    from: usize,
    verdicts: Vec<Verdict>,
    reply: Arc<Reply>,
}

struct Reply {
    verdicts: ArrayQueue<Vec<Verdict>>,
    waker: AtomicWaker,
}

/// The checker threads' queue.
pub struct Checker {
    queue: Arc<FairQueue>,
}

/// Jobs in one line per tenant, served in turn.
struct FairQueue {
    lines: Mutex<Lines>,
    ready: Condvar,
    places: usize,
    /// Jobs dropped unchecked: their requests had stopped waiting.
    abandoned: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Lines {
    by_tenant: HashMap<Arc<str>, VecDeque<Job>>,
    /// Tenants with jobs waiting, in the order they are served.
    turns: VecDeque<Arc<str>>,
    waiting: usize,
    closed: bool,
}

impl FairQueue {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A checker thread holds the lock only to move jobs; a panic
        // there leaves the lines whole.
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, job: Job) -> Result<(), Full> {
        let mut lines = self.lock();
        let held = lines.by_tenant.get(&job.tenant).map_or(0, VecDeque::len);
        let tenants = lines.by_tenant.len() + usize::from(held == 0);
        let share = (self.places / tenants.max(2)).max(1);
        if lines.waiting >= self.places || held >= share {
            return Err(Full);
        }
        if held == 0 {
            lines.turns.push_back(Arc::clone(&job.tenant));
        }
        lines
            .by_tenant
            .entry(Arc::clone(&job.tenant))
            .or_default()
            .push_back(job);
        lines.waiting += 1;
        drop(lines);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, in the tenants' turn; `None` once closed.
    fn pop(&self) -> Option<Job> {
        let mut lines = self.lock();
        loop {
            if let Some(tenant) = lines.turns.pop_front() {
                // A tenant has a turn while its line holds jobs.
                let Some(line) = lines.by_tenant.get_mut(&tenant) else {
                    continue;
                };
                let job = line.pop_front();
                if line.is_empty() {
                    lines.by_tenant.remove(&tenant);
                } else {
                    lines.turns.push_back(tenant);
                }
                if let Some(job) = job {
                    lines.waiting -= 1;
                    return Some(job);
                }
                continue;
            }
            if lines.closed {
                return None;
            }
            lines = self
                .ready
                .wait(lines)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The queue was full: shed the request.
#[derive(Debug)]
pub struct Full;

/// The verdicts of a job, once a checker thread has them.
pub struct Pending {
    reply: Arc<Reply>,
}

impl Future for Pending {
    type Output = Vec<Verdict>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Vec<Verdict>> {
        if let Some(verdicts) = self.reply.verdicts.pop() {
            return Poll::Ready(verdicts);
        }
        self.reply.waker.register(context.waker());
        match self.reply.verdicts.pop() {
            Some(verdicts) => Poll::Ready(verdicts),
            None => Poll::Pending,
        }
    }
}

impl Checker {
    /// Starts `threads` checker threads behind a queue of `queue_max` jobs.
    pub fn start(threads: usize, queue_max: usize) -> std::io::Result<Checker> {
        let checker = Checker::idle(queue_max);
        for index in 0..threads.max(1) {
            checker.spawn_thread(index)?;
        }
        Ok(checker)
    }

    /// The queue, with no thread taking jobs yet.
    fn idle(queue_max: usize) -> Checker {
        let queue = Arc::new(FairQueue {
            lines: Mutex::new(Lines::default()),
            ready: Condvar::new(),
            places: queue_max.max(1),
            abandoned: Default::default(),
        });
        Checker { queue }
    }

    fn spawn_thread(&self, index: usize) -> std::io::Result<()> {
        let queue = Arc::clone(&self.queue);
        std::thread::Builder::new()
            .name(format!("sluice-checker-{index}"))
            .stack_size(CHECKER_STACK_BYTES)
            .spawn(move || run(queue))?;
        Ok(())
    }

    /// Queues the check of `body`'s events from index `from` on (earlier
    /// verdicts in `verdicts`), against `set`.
    pub fn submit(
        &self,
        set: Arc<SchemaSet>,
        tenant: Arc<str>,
        shape: RequestShape,
        body: &[u8],
        from: usize,
        verdicts: Vec<Verdict>,
    ) -> Result<Pending, Full> {
        let reply = Arc::new(Reply {
            verdicts: ArrayQueue::new(1),
            waker: AtomicWaker::new(),
        });
        let job = Job {
            set,
            tenant,
            shape,
            body: body.into(),
            from,
            verdicts,
            reply: Arc::clone(&reply),
        };
        self.queue.push(job)?;
        Ok(Pending { reply })
    }
}

fn run(queue: Arc<FairQueue>) {
    // SAFETY: setpriority on this thread's own id only lowers its priority;
    // it reads and writes no memory of ours.
    let lowered = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            CHECKER_NICENESS,
        )
    };
    if lowered != 0 {
        tracing::debug!("checker thread runs at the cores' priority: setpriority failed");
    }
    while let Some(mut job) = queue.pop() {
        if Arc::strong_count(&job.reply) == 1 {
            // Its request stopped waiting: nobody will read the verdicts.
            queue
                .abandoned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        check_events(
            &job.set,
            &job.tenant,
            job.shape,
            &job.body,
            job.from,
            u64::MAX,
            &mut job.verdicts,
        );
        // One reply per job: the slot is empty.
        let _ = job.reply.verdicts.push(job.verdicts);
        job.reply.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::split::BodyKind;

    #[test]
    fn a_job_comes_back_with_every_verdict() {
        let scratch = super::super::files::tests::Scratch::new("checker");
        std::fs::write(scratch.0.join("signup.json"), r#"{"required":["plan"]}"#).unwrap();
        let set = Arc::new(SchemaSet::load(&scratch.0, false).unwrap());
        let checker = Checker::start(1, 4).unwrap();
        let body = br#"{"events":[{"event_type":"signup","plan":1},{"event_type":"signup"}]}"#;
        let shape = RequestShape {
            kind: BodyKind::JsonBatch,
            batch_events_max: 10,
            received_at_ms: 0,
        };
        let pending = checker
            .submit(set, "t".into(), shape, body, 0, Vec::new())
            .unwrap();
        let verdicts = block_on(pending);
        assert_eq!(verdicts.len(), 2);
        assert!(matches!(
            &verdicts[0],
            Verdict::Checked { result: Ok(()), .. }
        ));
        assert!(matches!(
            &verdicts[1],
            Verdict::Checked { result: Err(_), .. }
        ));
    }

    fn shape(kind: BodyKind) -> RequestShape {
        RequestShape {
            kind,
            batch_events_max: 100,
            received_at_ms: 0,
        }
    }

    /// Queues the check of one empty event of `tenant`.
    fn submit_empty(
        checker: &Checker,
        set: &Arc<SchemaSet>,
        tenant: &str,
    ) -> Result<Pending, Full> {
        let shape = shape(BodyKind::Single);
        checker.submit(Arc::clone(set), tenant.into(), shape, b"{}", 0, Vec::new())
    }

    /// A tenant alone holds half the places at most; with others waiting,
    /// the places divided by the tenants; and never more than the queue.
    #[test]
    fn a_full_queue_refuses() {
        let set = Arc::new(SchemaSet::default());
        let checker = Checker::idle(4);
        let submit = |tenant: &str| submit_empty(&checker, &set, tenant).is_ok();
        assert!(submit("a") && submit("a"));
        assert!(!submit("a"), "alone, a tenant holds half the queue");
        assert!(submit("b") && submit("b"));
        assert!(!submit("c"), "the queue is full");
    }

    /// A flood of 40 jobs from one tenant, then one job from another:
    /// the threads take the other's second, after one of the flood's (one
    /// line per tenant, served in turn), not 41st (one line for all: it
    /// failed so). The order is read from the queue itself, so the test
    /// does not race a checker thread.
    #[test]
    fn a_flood_does_not_delay_another_tenants_job() {
        let set = Arc::new(SchemaSet::default());
        let checker = Checker::idle(1_024);
        let submit = |tenant: &str| submit_empty(&checker, &set, tenant).unwrap();
        let _flood: Vec<Pending> = (0..40).map(|_| submit("attacker")).collect();
        let _victim = submit("victim");
        let order: Vec<Arc<str>> = std::iter::from_fn(|| {
            let lines = checker.queue.lock();
            let more = lines.waiting > 0;
            drop(lines);
            more.then(|| checker.queue.pop()).flatten()
        })
        .map(|job| job.tenant)
        .collect();
        assert_eq!(order.len(), 41);
        let victim_at = order.iter().position(|tenant| &**tenant == "victim");
        assert_eq!(
            victim_at,
            Some(1),
            "the victim's job came {victim_at:?}th of 41"
        );
    }

    /// A job whose request stopped waiting is dropped unchecked.
    #[test]
    fn an_abandoned_job_is_not_checked() {
        let set = Arc::new(SchemaSet::default());
        let checker = Checker::idle(8);
        let submit = || submit_empty(&checker, &set, "t").unwrap();
        drop(submit());
        let kept = submit();
        checker.spawn_thread(0).unwrap();
        block_on(kept);
        let abandoned = &checker.queue.abandoned;
        assert_eq!(abandoned.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// Waits for `future`, woken by its waker, for two minutes at most.
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            assert!(std::time::Instant::now() < deadline, "no verdicts in 120 s");
            std::thread::park_timeout(std::time::Duration::from_millis(100));
        }
    }
}
