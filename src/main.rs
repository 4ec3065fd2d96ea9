//! The `sluice` binary: flags, logging, then [`sluice::server::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use sluice::config::{Config, LogFormat, Overrides};
use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes, for `--help` and the README.
const EXIT_CODES: &str = "Exit codes:
  0  stopped cleanly (drained), or `check`/`probe` found nothing wrong
  1  failed while serving (a drain that could not flush every event)
  2  did not start: a configuration, keys, schema or address problem
     (the message names the file, line and key); `check` found a problem;
     `probe` got no 200";

/// Thread-per-core HTTP/1.1-to-Kafka event ingestion server.
#[derive(Parser, Debug)]
#[command(name = "sluice", version)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Listen address (server.listen), default 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR", global = true)]
    listen: Option<String>,
    /// Event-loop cores (server.cores); 0 = one per CPU.
    #[arg(long, value_name = "N", global = true)]
    cores: Option<usize>,
    /// Kafka bootstrap brokers (kafka.brokers), comma-separated.
    #[arg(long, value_name = "LIST", global = true)]
    brokers: Option<String>,
    /// Topic for events (kafka.topic).
    #[arg(long, value_name = "NAME", global = true)]
    topic: Option<String>,
    /// Dead-letter topic (kafka.dlq_topic).
    #[arg(long, value_name = "NAME", global = true)]
    dlq_topic: Option<String>,
    /// API keys file (auth.keys_file).
    #[arg(long, value_name = "FILE", global = true)]
    keys_file: Option<PathBuf>,
    /// When to answer 202: after Kafka acks (durable) or once queued (enqueued).
    #[arg(long, value_name = "durable|enqueued", global = true)]
    ack_mode: Option<String>,
    /// Log format (server.log_format).
    #[arg(long, value_name = "text|json", global = true)]
    log_format: Option<String>,
    /// No external services: in-process mock Kafka and a printed dev key. Not durable.
    #[arg(long, global = true)]
    dev: bool,
    /// With --dev: use this API key instead of a new one each start (1 to
    /// 256 printable ASCII characters).
    // Not clap's `requires = "dev"`: dev mode may come from the file or
    // SLUICE_DEV too, and clap checks it before a `--dev` given after
    // `check` is seen; `Config::problems` refuses a dev key without it.
    #[arg(long, value_name = "KEY", env = "SLUICE_DEV_KEY", global = true)]
    dev_key: Option<String>,
}

/// What to do instead of serving.
#[derive(Subcommand, Debug)]
enum Command {
    /// Check the configuration without starting: the file, environment and
    /// flags, the keys file, the schemas, the secret files, Kafka's
    /// reachability and topics, and host limits (open files, io_uring, the
    /// listen address). Prints every problem with its place and fix; exits
    /// 0 when there is none, 2 otherwise.
    Check {
        /// Leave Kafka out (for a start check: sluice starts while Kafka is down).
        #[arg(long)]
        skip_kafka: bool,
        /// How long Kafka may take to answer.
        #[arg(long, value_name = "MS", default_value_t = 5_000)]
        kafka_timeout_ms: u64,
    },
    /// Ask a running sluice whether it is alive (GET /healthz), or ready
    /// with --ready (GET /readyz): exit 0 on 200, 2 otherwise. For a
    /// container HEALTHCHECK, which has no curl.
    Probe {
        /// GET /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// The server's address; default: server.listen from the
        /// configuration, with 0.0.0.0 read as 127.0.0.1.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// How long the answer may take.
        #[arg(long, value_name = "MS", default_value_t = 2_000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let command =
        Flags::command().after_help(format!("{}\n{EXIT_CODES}", Config::environment_help()));
    let flags = match Flags::from_arg_matches(&command.get_matches()) {
        Ok(flags) => flags,
        Err(error) => error.exit(),
    };
    let overrides = Overrides {
        config: flags.config,
        listen: flags.listen,
        cores: flags.cores,
        brokers: flags.brokers,
        topic: flags.topic,
        dlq_topic: flags.dlq_topic,
        keys_file: flags.keys_file,
        ack_mode: flags.ack_mode,
        log_format: flags.log_format,
        dev: flags.dev,
        dev_key: flags.dev_key,
    };
    match flags.command {
        Some(Command::Check {
            skip_kafka,
            kafka_timeout_ms,
        }) => return check(&overrides, skip_kafka, kafka_timeout_ms),
        Some(Command::Probe {
            ready,
            address,
            timeout_ms,
        }) => return probe(&overrides, ready, address, timeout_ms),
        None => {}
    }
    let mut config = match Config::load(&overrides, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            return ExitCode::from(2);
        }
    };
    let (variables, not_text) = text_environment();
    config.apply_property_environment(variables.iter().cloned());
    if config.dev && overrides.listen.is_none() && std::env::var("SLUICE_SERVER_LISTEN").is_err() {
        // A dev server is for this machine only unless asked otherwise.
        config.server.listen = "127.0.0.1:8080".into();
    }
    abort_on_panic();
    tune_c_allocator();
    // Flushes the log lines still queued when main returns.
    let (_log_guard, log_lines_dropped) = init_logging(config.server.log_format);
    for name in Config::unknown_variables(variables.into_iter().map(|(name, _)| name)) {
        // The name only: the value may be a secret.
        tracing::warn!(variable = %name, "{}", Config::unknown_variable_message(&name));
    }
    for name in not_text {
        tracing::warn!(variable = %name, "{NOT_TEXT}");
    }
    match sluice::server::run(config, move || log_lines_dropped.dropped_lines() as u64) {
        Ok(()) => ExitCode::SUCCESS,
        // Before the ready line the server did not start (2, as a
        // configuration refused before logging); after it, it failed (1).
        Err(error) if !sluice::server::reached_ready() => {
            tracing::error!("sluice did not start: {error:#}");
            ExitCode::from(2)
        }
        Err(error) => {
            tracing::error!("sluice failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What is said of a `SLUICE_*` variable whose name or value is not UTF-8.
const NOT_TEXT: &str = "not UTF-8 text: it sets nothing (its value is not shown)";

/// The environment as text. `std::env::vars` panics on any variable, not
/// only sluice's, whose name or value is not UTF-8: such variables are left
/// out, and the `SLUICE_*` ones among them are returned by name (never by
/// value) to be reported, since they set nothing.
fn text_environment() -> (Vec<(String, String)>, Vec<String>) {
    let mut text = Vec::new();
    let mut not_text = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => text.push((name, value)),
            (name, _) => {
                let name = name.unwrap_or_else(|name| name.to_string_lossy().into_owned());
                if name.starts_with(sluice::config::ENV_PREFIX) {
                    not_text.push(name);
                }
            }
        }
    }
    (text, not_text)
}

/// `sluice check`: prints each finding, then a summary; 0 or 2.
fn check(overrides: &Overrides, skip_kafka: bool, kafka_timeout_ms: u64) -> ExitCode {
    let (variables, not_text) = text_environment();
    let options = sluice::check::Options {
        skip_kafka,
        kafka_timeout: std::time::Duration::from_millis(kafka_timeout_ms),
    };
    // librdkafka's own log lines would interleave with the findings.
    let mut findings = sluice::check::run(
        overrides,
        |name| std::env::var(name).ok(),
        &variables,
        &options,
    );
    findings.extend(not_text.into_iter().map(|name| sluice::check::Finding {
        severity: sluice::check::Severity::Problem,
        place: name,
        message: NOT_TEXT.into(),
    }));
    for finding in &findings {
        println!("{finding}");
    }
    let problems = findings
        .iter()
        .filter(|finding| finding.severity == sluice::check::Severity::Problem)
        .count();
    if problems == 0 {
        println!("sluice check: no problem found");
        ExitCode::SUCCESS
    } else {
        println!(
            "sluice check: {problems} problem{} found",
            if problems == 1 { "" } else { "s" }
        );
        ExitCode::from(2)
    }
}

/// `sluice probe`: one GET on loopback, 0 on a 200.
fn probe(overrides: &Overrides, ready: bool, address: Option<String>, timeout_ms: u64) -> ExitCode {
    let address = address.unwrap_or_else(|| {
        Config::assemble(overrides, &|name| std::env::var(name).ok())
            .map_or_else(|_| "127.0.0.1:8080".into(), |config| config.server.listen)
    });
    let path = if ready { "/readyz" } else { "/healthz" };
    match sluice::health::probe(&address, path, std::time::Duration::from_millis(timeout_ms)) {
        Ok(200) => {
            println!("{path} 200");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{path} {status}");
            ExitCode::from(2)
        }
        Err(error) => {
            println!("{path}: {error}");
            ExitCode::from(2)
        }
    }
}

/// Log lines queued for the log writer thread; past it lines are dropped
/// (and counted) rather than making an event loop wait on a slow pipe.
const LOG_LINES_QUEUED_MAX: usize = 16 * 1024;

/// Logs go through a bounded queue to a writer thread: an event loop never
/// blocks on stderr. Returns the guard that flushes the queue at exit and
/// the counter of dropped lines.
fn init_logging(format: LogFormat) -> (WorkerGuard, ErrorCounter) {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_QUEUED_MAX)
        .thread_name("sluice-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        // Flat: an event's fields sit beside `timestamp`, `level` and
        // `message`, where log pipelines look for them.
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    (guard, dropped)
}

/// librdkafka is C and allocates with glibc's malloc (Rust code uses
/// mimalloc). Past glibc's default mmap threshold its per-request buffers
/// (message sets, LZ4 frame contexts) are mmapped and unmapped on every
/// produce request: page faults and zeroing in the broker threads. Keep
/// them on the heap, and keep freed memory for reuse instead of trimming.
fn tune_c_allocator() {
    /// Allocations below this come from glibc's heap, not mmap.
    const C_MMAP_THRESHOLD_BYTES: libc::c_int = 32 * 1024 * 1024;
    /// Free heap memory kept before glibc returns it to the kernel.
    const C_TRIM_THRESHOLD_BYTES: libc::c_int = 128 * 1024 * 1024;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocator settings; called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, C_MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, C_TRIM_THRESHOLD_BYTES);
    }
}

/// A panic on any thread aborts the process. A core thread that died would
/// leave its listener bound, taking connections nobody serves; a process
/// that exits is restarted by its supervisor and leaves the load balancer.
/// (Release builds also set `panic = "abort"`; this covers every build.)
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}
