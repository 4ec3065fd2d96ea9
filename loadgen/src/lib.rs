//! loadgen: an HTTP/1.1 load generator for sluice (library; `main.rs` is the CLI).
//!
//! One monoio (io_uring) runtime per thread drives many keep-alive
//! connections. Closed loop (`--connections`, as fast as possible) or open
//! loop (`--rate`, a fixed schedule; latency is measured from each request's
//! intended send time, so a stalled server cannot hide behind a slowed-down
//! client: no coordinated omission). HdrHistogram latencies; `--json` prints
//! one summary object; `--verify` consumes the topic afterwards and checks
//! that every acknowledged event landed.

pub mod client;
pub mod direct;
pub mod events;
pub mod progress;
pub mod report;
pub mod verify;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use report::Summary;

use anyhow::Context as _;
use clap::Parser;

/// HTTP load generator for sluice.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version, after_help = EXAMPLES)]
pub struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: SocketAddr,
    /// Request path; defaults to /v1/events, or /v1/events/batch with --batch.
    #[arg(long)]
    pub path: Option<String>,
    /// API key sent as X-CS-API-Key.
    #[arg(long, env = "LOADGEN_KEY", default_value = "cs_live_abc123xyz")]
    pub key: String,
    /// Concurrent keep-alive connections (closed loop: each sends as fast as it can).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Open loop: total requests per second on a fixed schedule (0 = closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Requests in flight per connection (HTTP pipelining depth).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Events per request; 0 sends single events to /v1/events, N > 0 batches of N.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Send batches as NDJSON instead of {"events": [...]}.
    #[arg(long)]
    pub ndjson: bool,
    /// Gzip request bodies (Content-Encoding: gzip); costs client CPU per request.
    #[arg(long)]
    pub gzip: bool,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Client threads, each with its own io_uring runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin the client threads to, e.g. "1" or "2,3" (round robin).
    #[arg(long, value_delimiter = ',')]
    pub cpu: Vec<usize>,
    /// Print one machine-readable JSON summary object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Kafka brokers: afterwards, consume the topic and check that every
    /// acknowledged event_id landed (acknowledged, found, missing).
    #[arg(long, value_name = "BROKERS")]
    pub verify: Option<String>,
    /// Topic to verify.
    #[arg(long, default_value = "events_raw")]
    pub topic: String,
    /// Give up verifying after this many seconds without finding a new event.
    #[arg(long, default_value_t = 30.0)]
    pub verify_idle_timeout: f64,
    /// Retry a request answered 408, 429 or 503 (or 502/504: a load
    /// balancer's "the instance failed", which may or may not have stored
    /// it), or lost (its connection closed, or no answer within
    /// --timeout-ms), up to this many times,
    /// with the same bytes (so the same event ids); never a permanent
    /// refusal (any other 4xx). 0: no retries.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// First backoff before a retry, doubled each attempt (full jitter, at
    /// most 10 s); a Retry-After in the answer is waited at least.
    #[arg(long, default_value_t = 100)]
    pub retry_backoff_ms: u64,
    /// A request unanswered this long is lost: its connection is closed
    /// (and the request retried with --retries). 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u64,
    /// One line a second on stderr while running: rate, errors, p50 and
    /// p99 so far. Default: on when stderr is a terminal.
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// No progress lines, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Write the whole latency distribution to FILE in HdrHistogram's
    /// percentile format (milliseconds; what wrk2 prints and HdrHistogram's
    /// plotter reads).
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<std::path::PathBuf>,
    /// No HTTP: produce the same events straight to Kafka at BROKERS with
    /// sluice's producer settings (acks=all, idempotence, linger.ms 1,
    /// lz4), open loop at --rate, timing each from its intended send to
    /// its delivery report: the broker round trip a durable answer waits
    /// on, to run beside sluice at the same rate.
    #[arg(long, value_name = "BROKERS", conflicts_with = "verify")]
    pub direct_kafka: Option<String>,
}

const EXAMPLES: &str = "Examples:
  loadgen --connections 64 --duration 10                 closed loop, single events
  loadgen --rate 20000 --connections 64                  open loop at 20k req/s
  loadgen --batch 100 --ndjson --gzip                    gzip NDJSON batches of 100
  loadgen --pipeline 8 --connections 16                  HTTP pipelining, depth 8
  loadgen --json --verify 127.0.0.1:9092                 summary JSON, then check Kafka
  loadgen --cpu 1 --threads 1                            pin the client to CPU 1
  loadgen --retries 5 --timeout-ms 2000 --verify 127.0.0.1:9092
                                                         a retrying client, checked in Kafka
  loadgen --rate 10000 --progress --hdr-log run.hgrm    a line a second, and the full distribution
  loadgen --rate 10000 --direct-kafka 127.0.0.1:9092     the broker round trip alone (no sluice)";

impl Args {
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(if self.batch > 0 {
            "/v1/events/batch"
        } else {
            "/v1/events"
        })
    }
}

/// Runs the load described by `args` (and the verification, if asked).
pub fn run(args: &Args) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        args.connections > 0 && args.threads > 0 && args.pipeline > 0,
        "counts must be positive"
    );
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    if let Some(brokers) = &args.direct_kafka {
        return direct::run(args, brokers);
    }
    anyhow::ensure!(
        args.retries == 0 || args.pipeline == 1,
        "--retries needs --pipeline 1 (a retry must not overtake the requests behind it)"
    );
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let show_progress = !args.no_progress
        && (args.progress || std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let progress = show_progress.then(|| {
        progress::Progress::start(
            args.threads,
            client::LATENCY_MAX_US,
            start + warmup,
            Box::new(std::io::stderr()),
        )
    });
    let plan = client::Plan {
        args: args.clone(),
        measure_from: start + warmup,
        stop_at: start + warmup + duration,
        progress: None,
    };
    let totals = client::run(&plan, progress.as_ref().map(|live| live.slots.clone()));
    if let Some(live) = progress {
        live.stop();
    }
    let totals = totals?;
    if let Some(path) = &args.hdr_log {
        std::fs::write(path, progress::percentile_distribution(&totals.histogram))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let verification = match &args.verify {
        Some(brokers) => Some(verify::verify(
            brokers,
            &args.topic,
            &totals.acknowledged_ids,
            Duration::from_secs_f64(args.verify_idle_timeout),
        )?),
        None => None,
    };
    Ok(Summary::new(args, &totals, duration, verification))
}
