//! The shutdown signal: set once by the control plane, awaited by every core.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use atomic_waker::AtomicWaker;

pub struct Shutdown {
    triggered: AtomicBool,
    wakers: Vec<AtomicWaker>,
}

impl Shutdown {
    pub fn new(cores: usize) -> Self {
        Shutdown {
            triggered: AtomicBool::new(false),
            wakers: (0..cores).map(|_| AtomicWaker::new()).collect(),
        }
    }

    /// Starts shutdown; returns whether it had already started.
    pub fn trigger(&self) -> bool {
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
