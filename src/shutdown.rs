//! The shutdown signal: set once by the control plane, awaited by every core.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

pub struct Shutdown {
    triggered: AtomicBool,
    /// When the first signal came plus the drain timeout: the one deadline
    /// for the cores' drain and the producers' flush together.
    deadline: OnceLock<Instant>,
    drain_timeout: Duration,
    wakers: Vec<AtomicWaker>,
}

impl Shutdown {
    pub fn new(cores: usize, drain_timeout: Duration) -> Self {
        Shutdown {
            triggered: AtomicBool::new(false),
            deadline: OnceLock::new(),
            drain_timeout,
            wakers: (0..cores).map(|_| AtomicWaker::new()).collect(),
        }
    }

    /// When draining must be over: the first trigger plus the drain timeout
    /// (or now plus the timeout, if shutdown was never triggered).
    pub fn drain_deadline(&self) -> Instant {
        *self
            .deadline
            .get_or_init(|| Instant::now() + self.drain_timeout)
    }

    /// Starts shutdown; returns whether it had already started.
    pub fn trigger(&self) -> bool {
        self.drain_deadline();
        let already = self.triggered.swap(true, Ordering::SeqCst);
        for waker in &self.wakers {
            waker.wake();
        }
        already
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Relaxed)
    }

    /// Resolves once shutdown has started; for core `core`'s accept loop.
    pub fn wait(&self, core: usize) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |context| {
            self.wakers[core].register(context.waker());
            if self.triggered.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Stops control-plane threads promptly: they sleep on it between rounds
/// and wake as soon as it is set. Never used on a core thread.
#[derive(Default)]
pub struct ControlStop {
    stopped: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl ControlStop {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Sleeps up to `duration`; returns `false` once stopped.
    pub fn sleep(&self, duration: std::time::Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = self
            .changed
            .wait_timeout_while(stopped, duration, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        !*stopped
    }
}
