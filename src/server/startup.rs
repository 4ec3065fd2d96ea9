//! Start-up: what the server builds once, before its cores run. The core
//! count, the open-files limit, one listener per core on an address no
//! other process shares, the key store, the event contracts, the dedup
//! table, and the ready line that marks the end of start-up.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::Config;
use crate::handoff::CORES_MAX;
use crate::server::context::Shared;
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
pub(super) fn load_schemas(config: &Config) -> anyhow::Result<crate::events::schema::Schemas> {
    let dir = config.schemas.dir.trim();
    if dir.is_empty() {
        return Ok(None);
    }
    let limits = crate::events::schema::SchemaLimits::from_config(&config.schemas);
    let loaded = crate::events::schema::SchemaSet::load_within(
        std::path::Path::new(dir),
        config.schemas.require,
        &limits,
        None,
    );
    match loaded {
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

/// The threads that check what the cores hand over (`schemas.checker_*`),
/// when there are contracts to check.
pub(super) fn start_checker(
    config: &Config,
    schemas: &crate::events::schema::Schemas,
) -> anyhow::Result<Option<Arc<crate::events::schema::checker::Checker>>> {
    if schemas.is_none() {
        return Ok(None);
    }
    let threads = usize::try_from(config.schemas.checker_threads)?;
    let queue = usize::try_from(config.schemas.checker_queue_requests_max)?;
    let checker = crate::events::schema::checker::Checker::start(threads, queue)
        .map_err(|error| anyhow::anyhow!("cannot start the schema checker threads: {error}"))?;
    Ok(Some(Arc::new(checker)))
}

/// The local dedup table, allocated whole now (`dedup.entries_max`), or
/// `None` with `dedup.enabled = false`.
pub(super) fn start_dedup(
    config: &Config,
    cores: usize,
) -> Option<Arc<crate::dedup::table::DedupTable>> {
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

/// The hot-key detector (`overflow.*`, its table allocated whole now), or
/// `None` while `overflow.topic` is empty.
pub(super) fn start_hot_keys(config: &Config) -> Option<Arc<crate::hot_keys::HotKeys>> {
    use crate::hot_keys::{HotKeys, TRACKED_KEYS};
    let settings = &config.overflow;
    if !settings.enabled() {
        return None;
    }
    let detector = HotKeys::new(settings);
    tracing::info!(
        topic = settings.topic,
        key_events_per_second = settings.key_events_per_second,
        key_burst = settings.key_burst,
        dwell_ms = settings.dwell_ms,
        forced_keys = detector.forced_keys(),
        tracked_keys = TRACKED_KEYS,
        spread = settings.spread,
        "hot keys overflow (ordering per key is relaxed while a key overflows)"
    );
    Some(Arc::new(detector))
}

/// The key store: the keys file (optional with `--dev` or PostgreSQL),
/// the dev key, and the default limits of keys that set none.
pub(super) fn open_keys(config: &Config, dev_key: Option<&str>) -> anyhow::Result<KeyStore> {
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
pub(super) fn raise_open_files_limit(connections: usize, caps_set: bool) {
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
pub(super) fn bind_listeners(
    address: SocketAddr,
    cores: usize,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
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

/// The ready line (and, with `--dev`, how to try it): from here on an
/// error is a failure, not a refused start.
pub(super) fn announce(
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
