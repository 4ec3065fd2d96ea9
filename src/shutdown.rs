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
/// and wake as soon as it is set. It also carries SIGHUP's reload request
/// to the threads that reload ([`ControlStop::nudge`]), so each reloads on
/// its own thread and none waits for another's reload. Never used on a
/// core thread.
#[derive(Default)]
pub struct ControlStop {
    state: std::sync::Mutex<ControlState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct ControlState {
    stopped: bool,
    /// Reload requests (SIGHUPs) so far.
    nudges: u64,
}

/// Why [`ControlStop::sleep_or_nudged`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    Stopped,
    /// A reload was requested since the caller last saw one.
    Nudged,
    /// The duration passed.
    Elapsed,
}

impl ControlStop {
    fn state(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stop(&self) {
        self.state().stopped = true;
        self.changed.notify_all();
    }

    /// Asks every thread in [`ControlStop::sleep_or_nudged`] to reload
    /// now; requests made while a thread is busy are seen when it next
    /// sleeps (several as one).
    pub fn nudge(&self) {
        self.state().nudges += 1;
        self.changed.notify_all();
    }

    /// Sleeps up to `duration`; returns `false` once stopped.
    pub fn sleep(&self, duration: std::time::Duration) -> bool {
        let (state, _) = self
            .changed
            .wait_timeout_while(self.state(), duration, |state| !state.stopped)
            .unwrap_or_else(|p| p.into_inner());
        !state.stopped
    }

    /// Sleeps up to `duration`, or until stopped, or until a reload is
    /// requested that `seen` (the requests the caller has handled; start
    /// at 0) does not count yet.
    pub fn sleep_or_nudged(&self, duration: std::time::Duration, seen: &mut u64) -> Woken {
        let (state, _) = self
            .changed
            .wait_timeout_while(self.state(), duration, |state| {
                !state.stopped && state.nudges == *seen
            })
            .unwrap_or_else(|p| p.into_inner());
        if state.stopped {
            Woken::Stopped
        } else if state.nudges != *seen {
            *seen = state.nudges;
            Woken::Nudged
        } else {
            Woken::Elapsed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_nudge_wakes_every_sleeper_once_and_stop_ends_them() {
        let stop = Arc::new(ControlStop::default());
        let long = Duration::from_secs(60);
        let sleepers: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = 0;
                    let first = stop.sleep_or_nudged(long, &mut seen);
                    let second = stop.sleep_or_nudged(long, &mut seen);
                    (first, second)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        stop.nudge();
        std::thread::sleep(Duration::from_millis(50));
        stop.stop();
        for sleeper in sleepers {
            assert_eq!(sleeper.join().unwrap(), (Woken::Nudged, Woken::Stopped));
        }
        // A request made before the sleep is seen at once; plain sleeps ignore it.
        let stop = ControlStop::default();
        stop.nudge();
        assert!(stop.sleep(Duration::from_millis(1)));
        let mut seen = 0;
        let started = Instant::now();
        assert_eq!(stop.sleep_or_nudged(long, &mut seen), Woken::Nudged);
        assert_eq!(
            stop.sleep_or_nudged(Duration::from_millis(1), &mut seen),
            Woken::Elapsed
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
