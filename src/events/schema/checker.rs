//! Checker threads: where a request's schema checks go when they would
//! keep its core from its other connections (see [`super::checks`]).
//!
//! A fixed number of threads (`schemas.checker_threads`) take jobs from one
//! bounded queue (`schemas.checker_queue_requests_max`; full: the request
//! is shed with a 503, as a full in-flight table sheds it). Each job owns a
//! copy of its body and the set it is checked against; its verdicts go
//! back through a one-slot queue and a waker, so the core awaits them
//! without a lock. The threads run at a lower priority than the cores
//! (nice +10): a validation never takes a core's CPU from it. Their stacks
//! hold the deepest validation the budgets allow: an event nested 128
//! deep (the parser's limit) with `schemas.ref_depth_max` in-place
//! subschemas at every level.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};
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
    jobs: Sender<Job>,
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
        let (jobs, queue) = crossbeam_channel::bounded(queue_max.max(1));
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("sluice-checker-{index}"))
                .stack_size(CHECKER_STACK_BYTES)
                .spawn(move || run(queue))?;
        }
        Ok(Checker { jobs })
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
        match self.jobs.try_send(job) {
            Ok(()) => Ok(Pending { reply }),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Full),
        }
    }
}

fn run(queue: Receiver<Job>) {
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
    while let Ok(mut job) = queue.recv() {
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
        let verdicts = futures_lite_block_on(pending);
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

    #[test]
    fn a_full_queue_refuses() {
        let set = Arc::new(SchemaSet::default());
        // No thread takes jobs while the test holds the only receiver.
        let (jobs, _queue) = crossbeam_channel::bounded(1);
        let checker = Checker { jobs };
        let shape = RequestShape {
            kind: BodyKind::Single,
            batch_events_max: 1,
            received_at_ms: 0,
        };
        assert!(checker
            .submit(Arc::clone(&set), "t".into(), shape, b"{}", 0, Vec::new())
            .is_ok());
        assert!(checker
            .submit(set, "t".into(), shape, b"{}", 0, Vec::new())
            .is_err());
    }

    /// Polls `future` on this thread until it is ready.
    fn futures_lite_block_on<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        let mut context = Context::from_waker(waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
