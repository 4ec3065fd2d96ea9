//! The `sluice` binary: flags, logging, then [`sluice::server::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use sluice::config::{Config, LogFormat, Overrides};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Thread-per-core HTTP/1.1-to-Kafka event ingestion server.
#[derive(Parser, Debug)]
#[command(name = "sluice", version)]
struct Flags {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address (server.listen), default 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Event-loop cores (server.cores); 0 = one per CPU.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Kafka bootstrap brokers (kafka.brokers), comma-separated.
    #[arg(long, value_name = "LIST")]
    brokers: Option<String>,
    /// Topic for events (kafka.topic).
    #[arg(long, value_name = "NAME")]
    topic: Option<String>,
    /// Dead-letter topic (kafka.dlq_topic).
    #[arg(long, value_name = "NAME")]
    dlq_topic: Option<String>,
    /// API keys file (auth.keys_file).
    #[arg(long, value_name = "FILE")]
    keys_file: Option<PathBuf>,
    /// When to answer 202: after Kafka acks (durable) or once queued (enqueued).
    #[arg(long, value_name = "durable|enqueued")]
    ack_mode: Option<String>,
    /// Log format (server.log_format).
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
    /// No external services: in-process mock Kafka and a printed dev key. Not durable.
    #[arg(long)]
    dev: bool,
}

fn main() -> ExitCode {
    let command = Flags::command().after_help(Config::environment_help());
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
    };
    let mut config = match Config::load(&overrides, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            return ExitCode::from(2);
        }
    };
    if config.dev && overrides.listen.is_none() && std::env::var("SLUICE_SERVER_LISTEN").is_err() {
        // A dev server is for this machine only unless asked otherwise.
        config.server.listen = "127.0.0.1:8080".into();
    }
    init_logging(config.server.log_format);
    match sluice::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "sluice failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
