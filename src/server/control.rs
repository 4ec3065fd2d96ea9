//! The control plane: the threads beside the cores that keep the shared
//! state current. The Kafka readiness probe, the keys file watcher, the
//! schema watcher (a thread of its own: keys never wait for a schema
//! compile), the PostgreSQL key loader, the fleet-wide limit sync, and the
//! signals (SIGHUP reloads, SIGTERM and SIGINT start the drain). None of
//! them adds work per request.

use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::kafka::producer::ProducerPool;
use crate::server::context::Shared;
use crate::shutdown::{ControlStop, Woken};

/// Starts the control-plane threads; returns those to join at shutdown
/// (the PostgreSQL loader and the signal thread are left to end with the
/// process).
pub(super) fn start_control_plane(
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

    // Keys and schemas reload on threads of their own: a revoked key must
    // stop working within the reload interval however long a schema set
    // takes to compile. A SIGHUP wakes both (`ControlStop::nudge`).
    let interval = Duration::from_millis(shared.config.auth.reload_interval_ms.max(10));
    let watcher = shared.clone();
    let watcher_stop = stop.clone();
    threads.push(
        std::thread::Builder::new()
            .name("sluice-keys".into())
            .spawn(move || {
                let mut nudges_seen = 0;
                loop {
                    match watcher_stop.sleep_or_nudged(interval, &mut nudges_seen) {
                        Woken::Stopped => break,
                        Woken::Nudged => log_reload(&watcher, "SIGHUP", watcher.keys.reload()),
                        Woken::Elapsed => {
                            if let Some(result) = watcher.keys.reload_if_changed() {
                                log_reload(&watcher, "file change", result);
                            }
                        }
                    }
                }
            })?,
    );

    if shared.schemas.is_some() {
        let watcher = shared.clone();
        let watcher_stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("sluice-schemas".into())
                .spawn(move || {
                    let schemas_dir = std::path::PathBuf::from(watcher.config.schemas.dir.trim());
                    let mut schemas_seen = crate::events::schema::fingerprint(&schemas_dir);
                    let mut nudges_seen = 0;
                    loop {
                        let trigger = match watcher_stop.sleep_or_nudged(interval, &mut nudges_seen)
                        {
                            Woken::Stopped => break,
                            Woken::Nudged => "SIGHUP",
                            Woken::Elapsed => "file change",
                        };
                        // Read before the load: a change made during it is
                        // seen by the next round.
                        let now = crate::events::schema::fingerprint(&schemas_dir);
                        if trigger == "SIGHUP" || now != schemas_seen {
                            schemas_seen = now;
                            reload_schemas(&watcher, trigger);
                        }
                    }
                })?,
        );
    }

    if !shared.config.auth.postgres_url.is_empty() {
        let pg_config =
            crate::config::urls::parse_postgres_url(shared.config.auth.postgres_url.expose())?;
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
        let client = crate::config::urls::parse_redis_url(
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
    let signal_stop = stop.clone();
    // Not joined: it blocks in the signal iterator and ends with the process.
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    // The keys and schemas threads reload, each on its own.
                    signal_stop.nudge();
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

/// Counts a key reload and logs its outcome (a failure keeps the keys).
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

/// Compiles `schemas.dir` again and swaps the set in; a set with a broken
/// file is refused (logged, counted) and the last good one stays.
fn reload_schemas(shared: &Shared, trigger: &str) {
    let Some(current) = &shared.schemas else {
        return;
    };
    let dir = std::path::Path::new(shared.config.schemas.dir.trim());
    let limits = crate::events::schema::SchemaLimits::from_config(&shared.config.schemas);
    // Files whose bytes did not change keep their compiled contract: a
    // reload of one file compiles one file.
    let in_use = current.load_full();
    let loaded = crate::events::schema::SchemaSet::load_within(
        dir,
        shared.config.schemas.require,
        &limits,
        Some(&in_use),
    );
    drop(in_use);
    match loaded {
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
