//! `[server]`: listening, cores, deadlines, acknowledgement and logging.

use serde::{Deserialize, Serialize};

/// When a request is answered `202 Accepted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After Kafka acknowledged every event with `acks=all`.
    Durable,
    /// Once the events are handed to the producer queue; lost if the process dies.
    Enqueued,
}

impl AckMode {
    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            AckMode::Durable => "durable",
            AckMode::Enqueued => "enqueued",
        }
    }
}

/// The event loops' I/O driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    /// io_uring, falling back to epoll where the kernel lacks it: cheapest
    /// per request when a loop is busy.
    IoUring,
    /// epoll: cheaper per request when a loop is mostly waiting (durable
    /// mode at moderate load).
    Epoll,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address every core listens on (SO_REUSEPORT).
    pub listen: String,
    /// Event-loop cores; 0 means one per available CPU.
    pub cores: usize,
    /// Pin each event loop to its own CPU.
    pub pin_cores: bool,
    /// `io_uring` (falls back to epoll when unavailable) or `epoll`.
    pub io_driver: IoDriver,
    /// CPUs the event loops run on, as a list like `0-3,8` (loop N on the
    /// N-th CPU of the list, pinned); empty: every CPU the process may use.
    pub cpus: String,
    /// Open connections per core; beyond it new connections get 503 and are closed.
    pub connections_per_core_max: usize,
    pub ack_mode: AckMode,
    /// How long a request waits for Kafka's acknowledgements; past it the
    /// client gets 503 + Retry-After (its events may still be stored later,
    /// within `kafka.message_timeout_ms`).
    pub delivery_timeout_ms: u64,
    /// Time allowed on SIGTERM for in-flight requests and producer flushes.
    pub drain_timeout_ms: u64,
    /// From the first byte of a request until its head is complete (else 408).
    pub header_read_timeout_ms: u64,
    /// From the end of the head until the body is complete (else 408).
    pub body_read_timeout_ms: u64,
    /// Idle keep-alive connection lifetime between requests.
    pub idle_timeout_ms: u64,
    /// A connection whose socket takes no response bytes for this long is
    /// closed (a client that sends and never reads).
    pub write_timeout_ms: u64,
    pub log_format: LogFormat,
    /// Failed-request log lines per second per core; the rest are counted, not logged.
    pub error_logs_per_second_max: u32,
    /// Failed-request log bytes per second per core (each line estimated
    /// at its most, escaped); the rest are counted, not logged.
    pub error_log_bytes_per_second_max: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            cores: 0,
            pin_cores: true,
            io_driver: IoDriver::IoUring,
            cpus: String::new(),
            connections_per_core_max: 20_000,
            ack_mode: AckMode::Durable,
            delivery_timeout_ms: 5_000,
            drain_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            log_format: LogFormat::Text,
            error_logs_per_second_max: 20,
            error_log_bytes_per_second_max: 16 * 1024,
        }
    }
}
