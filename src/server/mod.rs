//! The server: start-up, the core threads, the control plane (signals, key
//! reloads, readiness probe) and the shutdown sequence.
//!
//! Modules, lowest first (each imports only those before it):
//! `inflight`, `context`, `wire`, `framing`, `answer`, `ingest`,
//! `dispatch`, `connection`, `core`, and this one.

pub mod answer;
pub mod connection;
pub mod context;
pub mod core;
pub mod dispatch;
pub mod framing;
pub mod inflight;
pub mod ingest;
pub mod wire;

pub use context::Shared;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use self::inflight::Inflight;
use crate::config::Config;
use crate::health::Readiness;
use crate::kafka::dev::DevCluster;
use crate::kafka::handoff::{Mailbox, CORES_MAX};
use crate::kafka::producer::ProducerPool;
use crate::metrics::Metrics;
use crate::shutdown::{ControlStop, Shutdown};
use crate::tenancy::keys::KeyStore;

/// The number of event-loop cores: as configured, or `default_cores` (one
/// per usable CPU, see [`crate::cpus::event_loop_cpus`]). More than a
/// delivery report can address ([`CORES_MAX`]) is refused, whether
/// configured or found on the machine.
pub fn core_count(configured: usize, default_cores: usize) -> anyhow::Result<usize> {
    let cores = match configured {
        0 => default_cores.max(1),
        cores => cores,
    };
    if cores > CORES_MAX {
        anyhow::bail!(
            "{cores} event-loop cores{}: at most {CORES_MAX} are supported; set server.cores (--cores) to {CORES_MAX} or fewer",
            if configured == 0 { " (one per CPU)" } else { "" }
        );
    }
    Ok(cores)
}

/// The event contracts of `schemas.dir`, compiled now; start-up stops on
/// any file that does not parse or compile, naming each.
fn load_schemas(config: &Config) -> anyhow::Result<crate::events::schema::Schemas> {
    let dir = config.schemas.dir.trim();
    if dir.is_empty() {
        return Ok(None);
    }
    match crate::events::schema::SchemaSet::load(std::path::Path::new(dir), config.schemas.require)
    {
        Ok(set) => {
            tracing::info!(
                dir,
                schemas = set.len(),
                require = config.schemas.require,
                "event schemas loaded"
            );
            Ok(Some(Arc::new(arc_swap::ArcSwap::from_pointee(set))))
        }
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::bail!("schemas.dir {dir}: {}", list.join("; "))
        }
    }
}

/// Compiles `schemas.dir` again and swaps the set in; a set with a broken
/// file is refused (logged, counted) and the last good one stays.
fn reload_schemas(shared: &Shared, trigger: &str) {
    let Some(current) = &shared.schemas else {
        return;
    };
    let dir = std::path::Path::new(shared.config.schemas.dir.trim());
    match crate::events::schema::SchemaSet::load(dir, shared.config.schemas.require) {
        Ok(set) => {
            shared.metrics.schema_reload(true);
            shared.metrics.schemas_loaded(set.len());
            tracing::info!(trigger, schemas = set.len(), "event schemas reloaded");
            current.store(Arc::new(set));
        }
        Err(problems) => {
            shared.metrics.schema_reload(false);
            for problem in &problems {
                tracing::error!(
                    trigger,
                    file = %problem.file.display(),
                    reason = %problem.reason,
                    "event schema not loaded; the last good set stays in use"
                );
            }
        }
    }
}

/// The local dedup table, allocated whole now (`dedup.entries_max`), or
/// `None` with `dedup.enabled = false`.
fn start_dedup(config: &Config, cores: usize) -> Option<Arc<crate::dedup::table::DedupTable>> {
    use crate::dedup::table::{DedupTable, ENTRY_BYTES};
    let settings = &config.dedup;
    if !settings.enabled {
        tracing::info!("dedup is off (dedup.enabled = false): a retried event may be stored twice");
        return None;
    }
    if !DedupTable::is_lock_free() {
        tracing::warn!(
            "this CPU has no 16-byte compare-and-swap: the dedup table takes a lock per event"
        );
    }
    // A request's claims stay pending until Kafka answers; sets full of
    // pending claims refuse new ones (503), so the table should be far
    // larger than what may be in flight.
    let inflight_max = cores.saturating_mul(config.limits.inflight_events_per_core_max);
    if settings.entries_max < inflight_max.saturating_mul(4) {
        tracing::warn!(
            entries_max = settings.entries_max,
            inflight_events_max = inflight_max,
            "dedup.entries_max is under 4x the events that may be in flight (server.cores x limits.inflight_events_per_core_max): with Kafka slow, requests may be shed while their sets of the table are all pending"
        );
    }
    let table = DedupTable::new(settings.entries_max, settings.window_ms);
    tracing::info!(
        entries = table.entries(),
        mib = (table.entries() * ENTRY_BYTES) >> 20,
        window_ms = settings.window_ms,
        "dedup table allocated"
    );
    Some(Arc::new(table))
}

/// Runs the server until SIGTERM or SIGINT has drained it. `log_lines_dropped`
/// counts what the log writer had to drop, for `/metrics`.
pub fn run(
    mut config: Config,
    log_lines_dropped: impl Fn() -> u64 + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let topics = [config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
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
    let readiness = Arc::new(Readiness::default());
    let limits = &config.limits;
    let mailboxes: Arc<[Arc<Mailbox>]> = (0..cores)
        .map(|_| Arc::new(Mailbox::new(limits.inflight_events_per_core_max)))
        .collect();
    let schemas = load_schemas(&config)?;
    if let Some(set) = &schemas {
        metrics.schemas_loaded(set.load().len());
    }
    let dedup = start_dedup(&config, cores);
    if let Some(table) = &dedup {
        let _ = metrics.dedup.set(Arc::clone(table));
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
    let fleet_thread = match fleet {
        Some(state) => {
            let (to_fleet, from_cores) = crossbeam_channel::bounded(config.kafka.queue_batches_max);
            let to_producers = std::mem::replace(&mut batches, to_fleet);
            let fleet = crate::dedup::fleet::Fleet {
                client: crate::tenancy::fleet::parse_url(
                    "dedup.redis_url",
                    config.dedup.redis_url.expose(),
                )?,
                timeout: Duration::from_millis(config.dedup.redis_timeout_ms),
                window_ms: config.dedup.window_ms,
                pending_ttl_ms: config.kafka.message_timeout_ms + 10_000,
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
        metrics.clone(),
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
        dedup,
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

fn open_keys(config: &Config, dev_key: Option<&str>) -> anyhow::Result<KeyStore> {
    let path = config.auth.keys_file.clone();
    let postgres = !config.auth.postgres_url.is_empty();
    // In --dev a missing keys file is fine: the printed dev key works alone;
    // with PostgreSQL the file is optional too.
    let path = (!(config.dev || postgres) || path.exists()).then_some(path);
    KeyStore::open(
        path,
        dev_key.map(|key| (key.to_string(), "dev".to_string())),
        config.limits.default_key_limits(),
        postgres,
    )
}

/// Raises the soft open-files limit to the hard one, as servers with many
/// connections must (the default soft limit is often 1024). Past the limit,
/// accepts fail with EMFILE and new clients wait in the backlog, so it
/// warns when the limit is below connection caps the operator set, or below
/// [`OPEN_FILES_WARN_BELOW`] whatever the caps; the default caps (20,000
/// per core) are a ceiling, not a demand, and a limit under them only
/// gets an info line.
fn raise_open_files_limit(connections: usize, caps_set: bool) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    // Room for listeners, Kafka sockets, io_uring and log files.
    let wanted = connections.saturating_add(256) as u64;
    if limit.rlim_cur >= wanted {
        return;
    }
    if caps_set || limit.rlim_cur < OPEN_FILES_WARN_BELOW {
        tracing::warn!(
            open_files_max = limit.rlim_cur,
            connections_max = connections,
            "the open-files limit is below the connection caps; raise `ulimit -n` (LimitNOFILE= in systemd) or lower server.connections_per_core_max"
        );
    } else {
        tracing::info!(
            open_files_max = limit.rlim_cur,
            "open connections are bounded by the open-files limit (less 256 for the server's own files)"
        );
    }
}

/// An open-files limit below this is worth a warning at any setting.
const OPEN_FILES_WARN_BELOW: u64 = 4_096;

/// One SO_REUSEPORT listener per core, all on the same port; port 0 picks
/// a free port once, for all of them. Only this process's cores may share
/// the port: see [`claim_address`].
fn bind_listeners(address: SocketAddr, cores: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    if address.port() != 0 {
        claim_address(address)?;
    }
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(cores);
    let mut address = address;
    for _ in 0..cores {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&address.into())
            .with_context(|| format!("binding {address}"))?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        address = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Makes sure no other process listens on `address`, since SO_REUSEPORT
/// would otherwise let a second sluice (or anything else of the same user
/// that sets it) bind beside this one and silently take a share of the
/// connections.
/// - A probe socket without SO_REUSEPORT is bound first and closed: the
///   kernel refuses it (EADDRINUSE) while any socket listens there, with
///   or without SO_REUSEPORT. SO_REUSEADDR on the probe keeps a restart
///   working while the previous process's connections sit in TIME_WAIT.
/// - Two sluices started at the same instant could both pass the probe
///   before either listens, so the address is also claimed by an
///   abstract-namespace Unix socket named after it, held for the
///   process's life: the kernel lets only one process bind a name, and
///   releases it when the process exits however it exits (no stale file).
fn claim_address(address: SocketAddr) -> anyhow::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr as UnixAddress, UnixListener};
    let in_use = || {
        anyhow::anyhow!(
            "binding {address}: address in use by another process (is another sluice running?); only one process may serve an address"
        )
    };
    let name = format!("sluice-listen-{address}");
    let lock = UnixAddress::from_abstract_name(name.as_bytes())
        .and_then(|name| UnixListener::bind_addr(&name))
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AddrInUse => in_use(),
            _ => anyhow::Error::new(error).context(format!("claiming {address}")),
        })?;
    // Held until the process exits: the claim is the open socket itself.
    std::mem::forget(lock);
    let probe = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    probe.set_reuse_address(true)?;
    match probe.bind(&address.into()) {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(in_use()),
        Err(error) => Err(anyhow::Error::new(error).context(format!("binding {address}"))),
        Ok(()) => Ok(()),
    }
}

/// Set once the server has logged its ready line.
static READY_ANNOUNCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process got as far as serving: an error before that is a
/// start refused (exit 2), after it a failure (exit 1).
pub fn reached_ready() -> bool {
    READY_ANNOUNCED.load(std::sync::atomic::Ordering::Relaxed)
}

fn announce(
    shared: &Shared,
    address: SocketAddr,
    cores: usize,
    dev_key: Option<&str>,
    dev_bootstrap: Option<&str>,
) {
    let config = &shared.config;
    if let (Some(key), Some(bootstrap)) = (dev_key, dev_bootstrap) {
        tracing::warn!("--dev: in-process mock Kafka cluster; NOTHING IS DURABLE");
        tracing::warn!(dev_api_key = key, "--dev: use this API key");
        let host = if address.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            address.ip().to_string()
        };
        eprintln!(
            "\n  try: curl -i -H 'X-CS-API-Key: {key}' -H 'Content-Type: application/json' \\\n         -d '{{\"user_id\":\"user_123\",\"event_type\":\"page_view\",\"event_time\":'$(date +%s%3N)'}}' \\\n         http://{host}:{}/v1/events\n",
            address.port()
        );
        eprintln!(
            "  mock Kafka bootstrap servers: {bootstrap}\n  read the events back: kcat -C -b {bootstrap} -t {} -o beginning -e\n  (or loadgen --verify {bootstrap}; the key stays the same across starts with --dev-key KEY)\n",
            config.kafka.topic
        );
    }
    READY_ANNOUNCED.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        address = %address,
        cores,
        ack_mode = config.server.ack_mode.name(),
        topic = %config.kafka.topic,
        "sluice ready"
    );
}

fn start_control_plane(
    shared: &Arc<Shared>,
    producers: &ProducerPool,
    stop: &Arc<ControlStop>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();

    let probe_producer = producers.probe_client();
    let topics = vec![
        shared.config.kafka.topic.clone(),
        shared.config.kafka.dlq_topic.clone(),
    ];
    let interval = Duration::from_millis(shared.config.kafka.health_interval_ms.max(50));
    let readiness = shared.readiness.clone();
    let probe_stop = stop.clone();
    threads.push(
        std::thread::Builder::new()
            .name("sluice-probe".into())
            .spawn(move || {
                crate::kafka::probe::run(probe_producer, topics, interval, readiness, |pause| {
                    probe_stop.sleep(pause)
                })
            })?,
    );

    let watcher = shared.clone();
    let watcher_stop = stop.clone();
    threads.push(
        std::thread::Builder::new()
            .name("sluice-keys".into())
            .spawn(move || {
                let interval =
                    Duration::from_millis(watcher.config.auth.reload_interval_ms.max(10));
                let schemas_dir = std::path::PathBuf::from(watcher.config.schemas.dir.trim());
                let mut schemas_seen = crate::events::schema::fingerprint(&schemas_dir);
                while watcher_stop.sleep(interval) {
                    if let Some(result) = watcher.keys.reload_if_changed() {
                        log_reload(&watcher, "file change", result);
                    }
                    if watcher.schemas.is_some() {
                        let now = crate::events::schema::fingerprint(&schemas_dir);
                        if now != schemas_seen {
                            schemas_seen = now;
                            reload_schemas(&watcher, "file change");
                        }
                    }
                }
            })?,
    );

    if !shared.config.auth.postgres_url.is_empty() {
        let pg_config =
            crate::tenancy::postgres::parse_url(shared.config.auth.postgres_url.expose())?;
        let loader_shared = shared.clone();
        let loader_stop = stop.clone();
        // Not joined at shutdown: a query to a hung server waits as long as
        // the server's statement timeout, and nothing of it must be flushed.
        drop(
            std::thread::Builder::new()
                .name("sluice-postgres".into())
                .spawn(move || {
                    let shared = &loader_shared;
                    crate::tenancy::postgres::Loader {
                        target: pg_config,
                        reload_interval: Duration::from_millis(
                            shared.config.auth.postgres_reload_interval_ms,
                        ),
                        store: &shared.keys,
                        readiness: &shared.readiness,
                        metrics: &shared.metrics.keys_postgres,
                        stop: &loader_stop,
                    }
                    .run()
                })?,
        );
    }

    if !shared.config.limits.redis_url.is_empty() {
        let client = crate::tenancy::fleet::parse_url(
            "limits.redis_url",
            shared.config.limits.redis_url.expose(),
        )?;
        let sync_shared = shared.clone();
        let sync_stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("sluice-fleet".into())
                .spawn(move || {
                    let shared = &sync_shared;
                    crate::tenancy::fleet::Sync {
                        client,
                        interval: Duration::from_millis(
                            shared.config.limits.redis_sync_interval_ms,
                        ),
                        keys: &shared.keys,
                        metrics: &shared.metrics.fleet,
                        stop: &sync_stop,
                    }
                    .run()
                })?,
        );
    }

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let signalled = shared.clone();
    // Not joined: it blocks in the signal iterator and ends with the process.
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    log_reload(&signalled, "SIGHUP", signalled.keys.reload());
                    reload_schemas(&signalled, "SIGHUP");
                    continue;
                }
                signalled.readiness.start_draining();
                if signalled.shutdown.trigger() {
                    tracing::warn!("second shutdown signal; exiting now");
                    std::process::exit(1);
                }
                tracing::info!(
                    signal,
                    "shutting down: no new connections, draining in-flight requests"
                );
            }
        })?;
    Ok(threads)
}

fn log_reload(
    shared: &Shared,
    trigger: &str,
    result: anyhow::Result<crate::tenancy::keys::Rebuilt>,
) {
    shared.metrics.key_reload(result.is_ok());
    match result {
        Ok(rebuilt) => {
            tracing::info!(trigger, keys = rebuilt.keys, "API keys reloaded");
            for conflict in &rebuilt.conflicts {
                tracing::warn!("{conflict}");
            }
        }
        Err(error) => tracing::error!(
            trigger,
            error = format!("{error:#}"),
            "API keys reload failed; keeping the previous keys"
        ),
    }
}
