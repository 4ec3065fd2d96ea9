//! The server: [`run`] starts it (the steps in `startup`), starts the core
//! threads and the control plane (`control`), and runs the shutdown
//! sequence.
//!
//! Modules, lowest first (each imports only those before it, see
//! `scripts/module-graph`): `inflight`, `context`, then `wire`, `ingest`,
//! `startup`, `control`, `answer`, `framing`, `dispatch`, `connection`,
//! `core`, and this one.

pub mod answer;
pub mod connection;
pub mod context;
mod contracts;
mod control;
pub mod core;
pub mod dispatch;
pub mod framing;
pub mod inflight;
pub mod ingest;
pub mod routing;
mod startup;
mod unsent;
pub mod wire;

pub use context::Shared;
pub use startup::{core_count, reached_ready};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use self::control::start_control_plane;
use self::inflight::Inflight;
use self::startup::{
    announce, bind_listeners, load_schemas, open_keys, raise_open_files_limit, start_checker,
    start_dedup,
};
use crate::config::Config;
use crate::handoff::Mailbox;
use crate::health::Readiness;
use crate::kafka::dev::DevCluster;
use crate::kafka::producer::ProducerPool;
use crate::metrics::Metrics;
use crate::shutdown::{ControlStop, Shutdown};

/// Runs the server until SIGTERM or SIGINT has drained it. `log_lines_dropped`
/// counts what the log writer had to drop, for `/metrics`.
pub fn run(
    mut config: Config,
    log_lines_dropped: impl Fn() -> u64 + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let mut topics = vec![config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
    if config.overflow.enabled() {
        topics.push(config.overflow.topic.as_str());
    }
    let dev = if config.dev {
        Some(DevCluster::start(&topics)?)
    } else {
        None
    };
    let brokers = dev.as_ref().map_or_else(
        || config.kafka.brokers.clone(),
        DevCluster::bootstrap_servers,
    );
    // The logged configuration names the brokers really used.
    config.kafka.brokers.clone_from(&brokers);
    let dev_key = dev.as_ref().map(|_| {
        config
            .dev_key
            .clone()
            .unwrap_or_else(|| format!("sluice_dev_{:016x}", context::random_seed()))
    });
    let keys = open_keys(&config, dev_key.as_deref())?;
    if config.server.ack_mode == crate::config::AckMode::Durable {
        crate::kafka::check_durable_properties(&config.kafka.properties)?;
    }

    let configured_cpus = crate::config::cpu_list(&config.server.cpus);
    let (cpus, default_cores) = crate::cpus::event_loop_cpus(configured_cpus.as_deref());
    let cores = core_count(config.server.cores, default_cores)?;
    let connections_set = config.server.connections_per_core_max
        != crate::config::ServerConfig::default().connections_per_core_max;
    raise_open_files_limit(
        cores * config.server.connections_per_core_max,
        connections_set && !config.dev,
    );
    let listeners = bind_listeners(config.listen_address()?, cores)?;
    let address = listeners[0].local_addr()?;

    let metrics = Arc::new(Metrics::new(cores));
    metrics.count_dropped_log_lines(log_lines_dropped);
    metrics.io_driver_in_use(core::io_driver_in_use(config.server.io_driver));
    let readiness = Arc::new(Readiness::default());
    let limits = &config.limits;
    let mailboxes: Arc<[Arc<Mailbox>]> = (0..cores)
        .map(|_| Arc::new(Mailbox::new(limits.inflight_events_per_core_max)))
        .collect();
    let schemas = load_schemas(&config)?;
    if let Some(set) = &schemas {
        metrics.schemas_loaded(set.load().len());
    }
    let checker = start_checker(&config, &schemas)?;
    let dedup = start_dedup(&config, cores);
    if let Some(table) = &dedup {
        let _ = metrics.dedup.set(Arc::clone(table));
    }
    let hot_keys = startup::start_hot_keys(&config);
    if let Some(detector) = &hot_keys {
        let _ = metrics.hot_keys.set(Arc::clone(detector));
    }
    let fleet = (dedup.is_some() && !config.dedup.redis_url.is_empty())
        .then(|| Arc::new(crate::dedup::state::FleetDedup::default()));
    if let Some(fleet) = &fleet {
        let _ = metrics.dedup_fleet.set(Arc::clone(fleet));
    }
    let mut inflight_tables = Vec::with_capacity(cores);
    for (index, mailbox) in mailboxes.iter().enumerate() {
        let table = Inflight::new(
            index,
            limits.inflight_requests_per_core_max,
            limits.inflight_events_per_core_max,
            limits.inflight_bytes_per_core_max,
            mailbox,
            dedup.clone(),
            fleet.clone(),
        )?;
        inflight_tables.push(table);
    }
    let (mut batches, batch_receiver) = crossbeam_channel::bounded(config.kafka.queue_batches_max);
    // With fleet dedup, batches pass through its thread on their way to
    // the producers.
    let cores_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Without fleet dedup a core produces its requests' records itself.
    let direct = fleet.is_none();
    let fleet_thread = match fleet {
        Some(state) => {
            let (to_fleet, from_cores) = crossbeam_channel::bounded(config.kafka.queue_batches_max);
            let to_producers = std::mem::replace(&mut batches, to_fleet);
            let fleet = crate::dedup::fleet::Fleet {
                client: crate::config::urls::parse_redis_url(
                    "dedup.redis_url",
                    config.dedup.redis_url.expose(),
                )?,
                timeout: Duration::from_millis(config.dedup.redis_timeout_ms),
                window_ms: config.dedup.window_ms,
                pending_ttl_ms: config.kafka.message_timeout_ms + 10_000,
                keys_per_tenant_max: config.dedup.redis_keys_per_tenant(),
                state,
                mailboxes: mailboxes.clone(),
            };
            let thread = std::thread::Builder::new()
                .name("sluice-dedup".into())
                .spawn({
                    let cores_done = cores_done.clone();
                    move || fleet.run(from_cores, to_producers, &cores_done)
                })
                .context("spawning the dedup thread")?;
            Some(thread)
        }
        None => None,
    };
    let producers = ProducerPool::start(
        &config,
        &brokers,
        batch_receiver,
        mailboxes.clone(),
        Arc::clone(&metrics.kafka),
        readiness.clone(),
    )?;

    let drain_timeout = Duration::from_millis(config.server.drain_timeout_ms);
    let shared = Arc::new(Shared {
        topic: config.kafka.topic.as_str().into(),
        dead_letter_topic: config.kafka.dlq_topic.as_str().into(),
        cors: crate::cors::Cors::new(&config.cors.allowed_origins, config.cors.max_age_seconds),
        config,
        keys,
        metrics,
        readiness,
        mailboxes,
        schemas,
        checker,
        dedup,
        hot_keys,
        shutdown: Shutdown::new(cores, drain_timeout),
    });
    // The effective configuration, one structured line per key (secrets
    // masked), under its own target so a log pipeline can pick it out.
    for (key, value) in shared.config.masked_entries() {
        tracing::info!(target: "sluice::config", key, value, "configuration");
    }

    let control_stop = Arc::new(ControlStop::default());
    let control = start_control_plane(&shared, &producers, &control_stop)?;

    let mut core_threads = Vec::with_capacity(cores);
    for ((index, listener), inflight) in listeners.into_iter().enumerate().zip(inflight_tables) {
        let setup = core::CoreSetup {
            index,
            cpu: (shared.config.server.pin_cores || configured_cpus.is_some())
                .then(|| cpus.get(index % cpus.len().max(1)).copied())
                .flatten(),
            listener,
            shared: shared.clone(),
            batches: batches.clone(),
            direct: direct.then(|| producers.loop_producer(index)),
            inflight,
        };
        let thread = std::thread::Builder::new()
            .name(format!("sluice-core-{index}"))
            .spawn(move || {
                let index = setup.index;
                if let Err(error) = core::run(setup) {
                    tracing::error!(core = index, %error, "core stopped");
                }
            })
            .context("spawning a core thread")?;
        core_threads.push(thread);
    }
    drop(batches);
    announce(
        &shared,
        address,
        cores,
        dev_key.as_deref(),
        dev.as_ref().map(DevCluster::bootstrap_servers).as_deref(),
    );

    for thread in core_threads {
        let _ = thread.join();
    }
    // The cores are done: the dedup thread forwards what it holds and
    // stops, and with it the producers' input.
    cores_done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(thread) = fleet_thread {
        let _ = thread.join();
    }
    // The same deadline as the cores' drain: the whole shutdown takes the
    // drain timeout, plus at most the control threads' last round.
    let flushed = producers.shutdown(shared.shutdown.drain_deadline());
    control_stop.stop();
    for thread in control {
        let _ = thread.join();
    }
    drop(dev);
    tracing::info!(flushed, "stopped");
    if !flushed {
        anyhow::bail!("some events were not flushed to Kafka before the drain deadline");
    }
    Ok(())
}
