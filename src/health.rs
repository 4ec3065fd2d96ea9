//! Liveness and readiness state, written by the control plane and read by
//! the cores with single atomic loads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// After a request was shed, `/readyz` stays 503 for this long.
pub const SHED_READY_HOLD_MS: u64 = 1_000;

pub struct Readiness {
    kafka_ok: AtomicBool,
    kafka_reason: ArcSwap<String>,
    last_shed_ms: AtomicU64,
    draining: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            kafka_ok: AtomicBool::new(false),
            kafka_reason: ArcSwap::from_pointee("kafka not checked yet".to_string()),
            last_shed_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }
}

impl Readiness {
    /// Whether Kafka answered the last probe; checked once per request.
    pub fn kafka_ready(&self) -> bool {
        self.kafka_ok.load(Ordering::Relaxed)
    }

    /// Records a probe result, logging transitions only.
    pub fn set_kafka(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if !self.kafka_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("kafka reachable; ready");
                }
            }
            Err(reason) => {
                if self.kafka_ok.swap(false, Ordering::Relaxed)
                    || **self.kafka_reason.load() != reason
                {
                    tracing::warn!(%reason, "kafka unreachable; not ready");
                }
                self.kafka_reason.store(Arc::new(reason));
            }
        }
    }

    pub fn note_shed(&self, now_ms: u64) {
        self.last_shed_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// `Ok` when ready, else why not.
    pub fn status(&self, now_ms: u64) -> Result<(), String> {
        if self.is_draining() {
            return Err("shutting down".into());
        }
        if !self.kafka_ready() {
            return Err((**self.kafka_reason.load()).clone());
        }
        let shed = self.last_shed_ms.load(Ordering::Relaxed);
        if shed != 0 && now_ms.saturating_sub(shed) < SHED_READY_HOLD_MS {
            return Err("shedding load".into());
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch by the server clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
