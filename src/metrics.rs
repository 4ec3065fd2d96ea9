//! Prometheus metrics. Each core writes only its own cache-line-aligned
//! counters (relaxed atomics, no contention); a scrape reads them all.
//!
//! The delivery-latency histogram uses fixed Prometheus buckets, which is
//! what the exposition format wants; hdrhistogram is the load generator's.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::route::Route;

const STATUSES: [u16; 19] = [
    200, 202, 204, 400, 401, 403, 404, 405, 408, 411, 413, 415, 417, 429, 431, 500, 503, 100, 0,
];

/// Upper bounds of the delivery-latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of the request-duration buckets, in microseconds.
const DURATION_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Status classes of the request-duration histogram.
const STATUS_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

fn status_class(status: u16) -> usize {
    match status / 100 {
        2 => 0,
        4 => 1,
        5 => 2,
        _ => 3,
    }
}

/// Per-tenant counters: one slot per labelled tenant, plus `other`.
const TENANT_SLOTS: usize = crate::tenancy::labels::TENANT_LABELS_MAX + 1;

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// Writes one unlabelled metric: its HELP and TYPE lines and its value.
fn write_metric(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// `sluice_api_keys_loaded`: keys in the snapshot in use (the caller
/// reads the key store, which this module does not know).
pub fn render_keys_loaded(out: &mut String, keys: usize) {
    write_metric(
        out,
        "sluice_api_keys_loaded",
        "API keys in the snapshot in use (every source together).",
        "gauge",
        keys,
    );
}

/// `sluice_build_info` and the standard `process_*` metrics (as the
/// Prometheus client libraries name them), read from /proc at scrape time.
fn render_process(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP sluice_build_info The running build (value 1).\n# TYPE sluice_build_info gauge\nsluice_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    // SAFETY: sysconf and getrlimit only read process-wide values.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 3rd.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |number: usize| -> f64 {
        fields
            .get(number - 3)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    let cpu_seconds = (field(14) + field(15)) / ticks;
    let boot_seconds: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0);
    let start_seconds = boot_seconds + field(22) / ticks;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut pages = statm
        .split_whitespace()
        .map(|value| value.parse::<u64>().unwrap_or(0));
    let (virtual_pages, resident_pages) = (pages.next().unwrap_or(0), pages.next().unwrap_or(0));
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct given.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    write_metric(
        out,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        format_args!("{cpu_seconds:.2}"),
    );
    write_metric(
        out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        resident_pages * page,
    );
    write_metric(
        out,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        virtual_pages * page,
    );
    write_metric(
        out,
        "process_open_fds",
        "Number of open file descriptors.",
        "gauge",
        open_fds,
    );
    write_metric(
        out,
        "process_max_fds",
        "Maximum number of open file descriptors.",
        "gauge",
        max_fds,
    );
    write_metric(
        out,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        format_args!("{start_seconds:.2}"),
    );
}

/// Writes a counter split by `result="ok"` and `result="error"`.
fn write_by_result(out: &mut String, name: &str, help: &str, ok: u64, error: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{result=\"ok\"}} {ok}\n{name}{{result=\"error\"}} {error}"
    );
}

/// One per-tenant counter array of a core.
type TenantField = fn(&CoreMetrics) -> &[AtomicU64; TENANT_SLOTS];

/// A per-core gauge: name, help, and the field it reads.
type Gauge = (&'static str, &'static str, fn(&CoreMetrics) -> &AtomicU64);

/// Adds to a per-core counter. Only the owning core writes its counters,
/// so a plain load and store suffice: no locked read-modify-write on the
/// request path; a scrape on another thread reads whole values.
#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// One core's counters. Written only by the core that owns them.
#[repr(align(128))]
pub struct CoreMetrics {
    requests: [[AtomicU64; STATUSES.len()]; Route::ALL.len()],
    events_accepted: AtomicU64,
    events_rejected: AtomicU64,
    events_duplicate: AtomicU64,
    body_bytes: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    latency_sum_us: AtomicU64,
    durations:
        [[[AtomicU64; DURATION_BOUNDS_US.len() + 1]; STATUS_CLASSES.len()]; Route::ALL.len()],
    duration_sum_us: [[AtomicU64; STATUS_CLASSES.len()]; Route::ALL.len()],
    refusals: [AtomicU64; crate::error::CODES.len() + 1],
    tenant_accepted: [AtomicU64; TENANT_SLOTS],
    tenant_rejected: [AtomicU64; TENANT_SLOTS],
    tenant_refused: [AtomicU64; TENANT_SLOTS],
    shed: AtomicU64,
    delivery_timeouts: AtomicU64,
    logs_suppressed: AtomicU64,
    write_timeouts: AtomicU64,
    pub inflight_requests: AtomicU64,
    pub inflight_events: AtomicU64,
    pub inflight_bytes: AtomicU64,
    pub connections: AtomicU64,
    /// Open connections idle past `wire::PARK_AFTER`: they hold no buffer.
    pub connections_parked: AtomicU64,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        // Arrays this large have no derived Default: every counter is zero.
        CoreMetrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            events_accepted: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            durations: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            }),
            duration_sum_us: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            tenant_accepted: std::array::from_fn(|_| AtomicU64::new(0)),
            tenant_rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            tenant_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            shed: AtomicU64::new(0),
            delivery_timeouts: AtomicU64::new(0),
            logs_suppressed: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
            inflight_requests: AtomicU64::new(0),
            inflight_events: AtomicU64::new(0),
            inflight_bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_parked: AtomicU64::new(0),
        }
    }
}

impl CoreMetrics {
    /// A response, and how long its request took (from its head's first
    /// parse to the response being written).
    pub fn request(&self, route: Route, status: u16, took: Duration) {
        bump(&self.requests[route as usize][status_index(status)], 1);
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = DURATION_BOUNDS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(DURATION_BOUNDS_US.len());
        let class = status_class(status);
        bump(&self.durations[route as usize][class][bucket], 1);
        bump(&self.duration_sum_us[route as usize][class], micros);
    }

    /// A refused request: by its error code, and by tenant when the key was known.
    pub fn refusal(&self, code: &str, tenant_slot: Option<u16>) {
        bump(&self.refusals[crate::error::code_index(code)], 1);
        if let Some(slot) = tenant_slot {
            bump(
                &self.tenant_refused[usize::from(slot).min(TENANT_SLOTS - 1)],
                1,
            );
        }
    }

    /// A tenant's events in an answered request: accepted (duplicates
    /// included: the client's events are stored) and rejected.
    pub fn tenant_events(&self, tenant_slot: u16, accepted: usize, rejected: usize) {
        let slot = usize::from(tenant_slot).min(TENANT_SLOTS - 1);
        bump(&self.tenant_accepted[slot], accepted as u64);
        if rejected > 0 {
            bump(&self.tenant_rejected[slot], rejected as u64);
        }
    }

    pub fn events(&self, accepted: usize, rejected: usize) {
        bump(&self.events_accepted, accepted as u64);
        bump(&self.events_rejected, rejected as u64);
    }

    /// Events found already stored (dedup): answered, not published.
    pub fn duplicates(&self, count: usize) {
        if count > 0 {
            bump(&self.events_duplicate, count as u64);
        }
    }

    pub fn body_bytes(&self, bytes: usize) {
        bump(&self.body_bytes, bytes as u64);
    }

    pub fn delivery_latency(&self, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        bump(&self.latency_buckets[bucket], 1);
        bump(&self.latency_sum_us, micros);
    }

    pub fn shed(&self) {
        bump(&self.shed, 1);
    }

    pub fn delivery_timeout(&self) {
        bump(&self.delivery_timeouts, 1);
    }

    pub fn log_suppressed(&self) {
        bump(&self.logs_suppressed, 1);
    }

    /// A connection closed because its socket took no bytes for the write timeout.
    pub fn write_timeout(&self) {
        bump(&self.write_timeouts, 1);
    }
}

/// All metrics of the process.
pub struct Metrics {
    pub cores: Vec<CoreMetrics>,
    delivery_failures: AtomicU64,
    dead_letter_failures: AtomicU64,
    key_reloads: AtomicU64,
    key_reload_failures: AtomicU64,
    schema_reloads: AtomicU64,
    schema_reload_failures: AtomicU64,
    schemas: AtomicU64,
    producers_replaced: AtomicU64,
    /// The PostgreSQL key loader's state (rendered when configured).
    pub keys_postgres: crate::tenancy::postgres::PgKeyMetrics,
    /// The fleet-wide limit sync's state (rendered when configured).
    pub fleet: crate::tenancy::fleet::FleetMetrics,
    /// The fleet dedup's state, when `dedup.redis_url` is set.
    pub dedup_fleet: std::sync::OnceLock<std::sync::Arc<crate::dedup::state::FleetDedup>>,
    /// The local dedup table, when dedup is on.
    pub dedup: std::sync::OnceLock<std::sync::Arc<crate::dedup::table::DedupTable>>,
    /// Log lines the non-blocking log writer dropped because its queue was
    /// full (a slow log pipe); read at scrape time.
    log_lines_dropped: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl Metrics {
    pub fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            delivery_failures: AtomicU64::new(0),
            dead_letter_failures: AtomicU64::new(0),
            key_reloads: AtomicU64::new(0),
            key_reload_failures: AtomicU64::new(0),
            schema_reloads: AtomicU64::new(0),
            schema_reload_failures: AtomicU64::new(0),
            schemas: AtomicU64::new(0),
            producers_replaced: AtomicU64::new(0),
            keys_postgres: Default::default(),
            fleet: Default::default(),
            dedup: std::sync::OnceLock::new(),
            dedup_fleet: std::sync::OnceLock::new(),
            log_lines_dropped: std::sync::OnceLock::new(),
        }
    }

    /// Where the count of dropped log lines comes from (the log writer).
    pub fn count_dropped_log_lines(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.log_lines_dropped.set(Box::new(source));
    }

    /// Called from librdkafka's delivery callback.
    pub fn delivery_failed(&self, dead_letter: bool) {
        let counter = if dead_letter {
            &self.dead_letter_failures
        } else {
            &self.delivery_failures
        };
        counter.fetch_add(1, Relaxed);
    }

    /// A producer that could no longer send (librdkafka's fatal state, or an
    /// id the broker stopped accepting) was replaced by a new one.
    pub fn producer_replaced(&self) {
        self.producers_replaced.fetch_add(1, Relaxed);
    }

    pub fn key_reload(&self, ok: bool) {
        let counter = if ok {
            &self.key_reloads
        } else {
            &self.key_reload_failures
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn schema_reload(&self, ok: bool) {
        let counter = if ok {
            &self.schema_reloads
        } else {
            &self.schema_reload_failures
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn schemas_loaded(&self, count: usize) {
        self.schemas.store(count as u64, Relaxed);
    }

    fn sum(&self, field: impl Fn(&CoreMetrics) -> &AtomicU64) -> u64 {
        self.cores
            .iter()
            .map(|core| field(core).load(Relaxed))
            .sum()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, ready: bool) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out.push_str("# HELP sluice_http_requests_total HTTP requests by route and status.\n# TYPE sluice_http_requests_total counter\n");
        for (route_index, route) in Route::ALL.iter().map(|r| r.label()).enumerate() {
            for (status_index, status) in STATUSES.iter().enumerate() {
                let count = self.sum(|core| &core.requests[route_index][status_index]);
                if count > 0 {
                    let _ = writeln!(out, "sluice_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}");
                }
            }
        }
        let log_lines_dropped = self.log_lines_dropped.get().map_or(0, |source| source());
        let counters: [(&str, &str, u64); 12] = [
            (
                "sluice_events_accepted_total",
                "Events accepted for Kafka (duplicates not included).",
                self.sum(|c| &c.events_accepted),
            ),
            (
                "sluice_events_duplicate_total",
                "Events answered as already stored (a retry within the dedup window) and not published again.",
                self.sum(|c| &c.events_duplicate),
            ),
            (
                "sluice_events_rejected_total",
                "Events rejected by validation.",
                self.sum(|c| &c.events_rejected),
            ),
            (
                "sluice_http_request_body_bytes_total",
                "Request body bytes received.",
                self.sum(|c| &c.body_bytes),
            ),
            (
                "sluice_load_shed_total",
                "Requests refused with 503 because a queue was full.",
                self.sum(|c| &c.shed),
            ),
            (
                "sluice_delivery_timeouts_total",
                "Requests answered 503 at the delivery deadline.",
                self.sum(|c| &c.delivery_timeouts),
            ),
            (
                "sluice_kafka_delivery_failures_total",
                "Event records Kafka did not store.",
                self.delivery_failures.load(Relaxed),
            ),
            (
                "sluice_kafka_dead_letter_failures_total",
                "Dead-letter records Kafka did not store.",
                self.dead_letter_failures.load(Relaxed),
            ),
            (
                "sluice_kafka_producers_replaced_total",
                "Producers replaced because they could no longer send (fatal error or rejected producer id).",
                self.producers_replaced.load(Relaxed),
            ),
            (
                "sluice_log_lines_suppressed_total",
                "Failed-request log lines dropped by the rate limit.",
                self.sum(|c| &c.logs_suppressed),
            ),
            (
                "sluice_log_lines_dropped_total",
                "Log lines dropped because the log output was too slow to take them.",
                log_lines_dropped,
            ),
            (
                "sluice_write_timeouts_total",
                "Connections closed because the client took no response bytes for server.write_timeout_ms.",
                self.sum(|c| &c.write_timeouts),
            ),
        ];
        for (name, help, value) in counters {
            write_metric(&mut out, name, help, "counter", value);
        }
        write_by_result(
            &mut out,
            "sluice_key_reloads_total",
            "Keys file reloads by result.",
            self.key_reloads.load(Relaxed),
            self.key_reload_failures.load(Relaxed),
        );
        write_by_result(
            &mut out,
            "sluice_schema_reloads_total",
            "Event schema set reloads by result (an error keeps the last good set).",
            self.schema_reloads.load(Relaxed),
            self.schema_reload_failures.load(Relaxed),
        );
        write_metric(
            &mut out,
            "sluice_schemas_loaded",
            "Event schemas (JSON Schema files) in the set in use.",
            "gauge",
            self.schemas.load(Relaxed),
        );
        write_metric(
            &mut out,
            "sluice_api_key_snapshots",
            "API key snapshots in memory: the current one, plus any a request in progress still reads.",
            "gauge",
            crate::tenancy::keys::snapshots_alive(),
        );
        self.render_postgres_keys(&mut out);
        self.render_fleet(&mut out);
        self.render_dedup(&mut out);
        self.render_dedup_fleet(&mut out);
        self.render_latency(&mut out);
        self.render_durations(&mut out);
        self.render_refusals(&mut out);
        self.render_tenants(&mut out);
        render_process(&mut out);
        let gauges: [Gauge; 5] = [
            (
                "sluice_inflight_requests",
                "Requests awaiting Kafka, per core.",
                |c| &c.inflight_requests,
            ),
            (
                "sluice_inflight_events",
                "Kafka records awaiting delivery, per core.",
                |c| &c.inflight_events,
            ),
            (
                "sluice_inflight_bytes",
                "Event bytes awaiting Kafka, per core.",
                |c| &c.inflight_bytes,
            ),
            ("sluice_connections", "Open connections, per core.", |c| {
                &c.connections
            }),
            (
                "sluice_connections_parked",
                "Open connections idle long enough to hold no buffer (a readiness wait, no read posted), per core.",
                |c| &c.connections_parked,
            ),
        ];
        for (name, help, field) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (index, core) in self.cores.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{core=\"{index}\"}} {}",
                    field(core).load(Relaxed)
                );
            }
        }
        write_metric(
            &mut out,
            "sluice_ready",
            "Whether /readyz answers 200.",
            "gauge",
            u8::from(ready),
        );
        out
    }

    fn render_postgres_keys(&self, out: &mut String) {
        let pg = &self.keys_postgres;
        if !pg.configured.load(Relaxed) {
            return;
        }
        write_metric(
            out,
            "sluice_api_keys_postgres_up",
            "Whether the PostgreSQL key source is connected and loaded.",
            "gauge",
            u8::from(pg.up.load(Relaxed)),
        );
        // -1 until the first load: the snapshot holds no PostgreSQL keys.
        let age = pg
            .snapshot_age_seconds(crate::clock::now_ms())
            .unwrap_or(-1.0);
        write_metric(
            out,
            "sluice_api_keys_snapshot_age_seconds",
            "Seconds since the API-key snapshot was last known to match PostgreSQL (-1: never loaded).",
            "gauge",
            format_args!("{age:.3}"),
        );
        write_metric(
            out,
            "sluice_api_keys_postgres_keys",
            "Usable keys in the last PostgreSQL load.",
            "gauge",
            pg.keys.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_api_keys_postgres_rows_skipped",
            "Rows of the last load that were not usable keys.",
            "gauge",
            pg.rows_skipped.load(Relaxed),
        );
        write_by_result(
            out,
            "sluice_api_keys_postgres_loads_total",
            "Full loads from PostgreSQL by result.",
            pg.loads.load(Relaxed),
            pg.load_failures.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_api_keys_postgres_load_seconds",
            "Duration of the last full load.",
            "gauge",
            format_args!("{:.6}", pg.last_load_us.load(Relaxed) as f64 / 1e6),
        );
    }

    fn render_dedup(&self, out: &mut String) {
        let Some(table) = self.dedup.get() else {
            return;
        };
        let counters = &table.counters;
        write_metric(
            out,
            "sluice_dedup_entries_max",
            "Entries the local dedup table holds (16 bytes each).",
            "gauge",
            table.entries(),
        );
        write_metric(
            out,
            "sluice_dedup_evicted_young_total",
            "Dedup entries forced out before dedup.window_ms ended (the table is too small for the event rate).",
            "counter",
            counters.evicted_young.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_dedup_last_evicted_age_seconds",
            "Age of the last entry forced out early: the window the table really keeps.",
            "gauge",
            format_args!(
                "{:.3}",
                counters.last_evicted_age_ms.load(Relaxed) as f64 / 1e3
            ),
        );
    }

    fn render_dedup_fleet(&self, out: &mut String) {
        let Some(fleet) = self.dedup_fleet.get() else {
            return;
        };
        write_metric(
            out,
            "sluice_dedup_redis_up",
            "Whether the fleet dedup's Redis answered its last round trip (0: each instance dedups alone).",
            "gauge",
            u8::from(fleet.up.load(Relaxed)),
        );
        let counters = [
            ("sluice_dedup_redis_checked_total", "Events asked about in Redis.", &fleet.checked),
            ("sluice_dedup_redis_duplicates_total", "Events Redis knew stored (by another instance): answered as duplicates, not published.", &fleet.duplicates),
            ("sluice_dedup_redis_in_flight_total", "Events another instance was storing: answered 503 event_in_flight.", &fleet.in_flight),
            ("sluice_dedup_redis_unchecked_batches_total", "Batches sent on unchecked because Redis did not answer in time.", &fleet.unchecked_batches),
            ("sluice_dedup_redis_failures_total", "Failed round trips to Redis.", &fleet.failures),
            ("sluice_dedup_redis_settles_dropped_total", "Outcomes not sent to Redis because its queue was full (their keys expire).", &fleet.settles_dropped),
        ];
        for (name, help, counter) in counters {
            write_metric(out, name, help, "counter", counter.load(Relaxed));
        }
    }

    fn render_fleet(&self, out: &mut String) {
        let fleet = &self.fleet;
        if !fleet.configured.load(Relaxed) {
            return;
        }
        write_metric(
            out,
            "sluice_rate_limit_redis_up",
            "Whether rate limits are shared through Redis (0: each instance limits alone).",
            "gauge",
            u8::from(fleet.up.load(Relaxed)),
        );
        write_by_result(
            out,
            "sluice_rate_limit_redis_syncs_total",
            "Usage exchanges with Redis by result.",
            fleet.syncs.load(Relaxed),
            fleet.sync_failures.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_rate_limit_redis_keys_synced",
            "Keys exchanged in the last sync.",
            "gauge",
            fleet.keys_synced.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_rate_limit_redis_instances",
            "Instances sharing rate limits, as the last sync counted them; a key not yet synced here gets this share of its burst.",
            "gauge",
            fleet.instances.load(Relaxed),
        );
        write_metric(
            out,
            "sluice_rate_limit_redis_sync_seconds",
            "Duration of the last sync.",
            "gauge",
            format_args!("{:.6}", fleet.last_sync_us.load(Relaxed) as f64 / 1e6),
        );
    }

    fn render_durations(&self, out: &mut String) {
        let name = "sluice_http_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time from a request's head to its response being written (durable requests include Kafka's acknowledgement), by route and status class.\n# TYPE {name} histogram");
        for (route_index, route) in Route::ALL.iter().map(|r| r.label()).enumerate() {
            for (class_index, class) in STATUS_CLASSES.iter().enumerate() {
                let total: u64 = (0..=DURATION_BOUNDS_US.len())
                    .map(|bucket| {
                        self.sum(|core| &core.durations[route_index][class_index][bucket])
                    })
                    .sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("route=\"{route}\",status_class=\"{class}\"");
                let mut cumulative = 0;
                for (bucket, bound) in DURATION_BOUNDS_US.iter().enumerate() {
                    cumulative +=
                        self.sum(|core| &core.durations[route_index][class_index][bucket]);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                        *bound as f64 / 1e6
                    );
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
                let sum = self.sum(|core| &core.duration_sum_us[route_index][class_index]);
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum as f64 / 1e6);
                let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
            }
        }
    }

    fn render_refusals(&self, out: &mut String) {
        let name = "sluice_http_refusals_total";
        let _ = writeln!(out, "# HELP {name} Requests refused, by the error code of the answer.\n# TYPE {name} counter");
        for (index, code) in crate::error::CODES
            .iter()
            .chain(["other"].iter())
            .enumerate()
        {
            let count = self.sum(|core| &core.refusals[index]);
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {count}");
        }
    }

    fn render_tenants(&self, out: &mut String) {
        let names = crate::tenancy::labels::names();
        let series: [(&str, &str, TenantField); 3] = [
            (
                "sluice_tenant_events_accepted_total",
                "Events accepted per tenant (duplicates of stored events included); tenants past the first 100 are counted as tenant=\"other\".",
                |core| &core.tenant_accepted,
            ),
            (
                "sluice_tenant_events_rejected_total",
                "Events of accepted batches rejected by validation, per tenant.",
                |core| &core.tenant_rejected,
            ),
            (
                "sluice_tenant_requests_refused_total",
                "Authenticated requests refused (4xx and 5xx), per tenant.",
                |core| &core.tenant_refused,
            ),
        ];
        for (name, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (slot, tenant) in names.iter().enumerate() {
                let count = self.sum(|core| &field(core)[slot]);
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {count}", label_value(tenant));
            }
            let other = self.sum(|core| &field(core)[TENANT_SLOTS - 1]);
            if other > 0 {
                let _ = writeln!(out, "{name}{{tenant=\"other\"}} {other}");
            }
        }
    }

    fn render_latency(&self, out: &mut String) {
        let name = "sluice_kafka_delivery_seconds";
        let _ = writeln!(out, "# HELP {name} Time from hand-off to the last delivery report of a request.\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += self.sum(|core| &core.latency_buckets[index]);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.sum(|core| &core.latency_buckets[LATENCY_BOUNDS_US.len()]);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum(|core| &core.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sums_cores_and_accumulates_buckets() {
        let metrics = Metrics::new(2);
        let ms = Duration::from_millis;
        metrics.cores[0].request(Route::Events, 202, ms(3));
        metrics.cores[1].request(Route::Events, 202, ms(30));
        metrics.cores[1].request(Route::EventsBatch, 413, ms(0));
        metrics.cores[0].delivery_latency(Duration::from_micros(700));
        metrics.cores[1].delivery_latency(Duration::from_secs(60));
        let text = metrics.render(true);
        assert!(
            text.contains("sluice_http_requests_total{route=\"/v1/events\",status=\"202\"} 2\n")
        );
        assert!(text
            .contains("sluice_http_requests_total{route=\"/v1/events/batch\",status=\"413\"} 1\n"));
        assert!(text.contains("sluice_kafka_delivery_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("sluice_kafka_delivery_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("sluice_kafka_delivery_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("sluice_ready 1\n"));
        let histogram =
            "sluice_http_request_duration_seconds_bucket{route=\"/v1/events\",status_class=\"2xx\"";
        assert!(text.contains(&format!("{histogram},le=\"0.0025\"}} 0\n")));
        assert!(text.contains(&format!("{histogram},le=\"0.005\"}} 1\n")));
        assert!(text.contains(&format!("{histogram},le=\"0.05\"}} 2\n")));
        assert!(text.contains("sluice_http_request_duration_seconds_count{route=\"/v1/events/batch\",status_class=\"4xx\"} 1\n"));
        assert!(text.contains("sluice_http_request_duration_seconds_sum{route=\"/v1/events\",status_class=\"2xx\"} 0.033\n"));
    }

    #[test]
    fn refusals_count_by_code_and_tenants_by_slot() {
        let metrics = Metrics::new(2);
        let slot = crate::tenancy::labels::slot("metrics-test-tenant");
        metrics.cores[0].refusal("rate_limited", Some(slot));
        metrics.cores[1].refusal("rate_limited", None);
        metrics.cores[1].refusal("no_such_code", None);
        metrics.cores[0].tenant_events(slot, 7, 2);
        metrics.cores[1].tenant_events(crate::tenancy::labels::OTHER_SLOT, 5, 0);
        let text = metrics.render(true);
        assert!(text.contains("sluice_http_refusals_total{code=\"rate_limited\"} 2\n"));
        assert!(text.contains("sluice_http_refusals_total{code=\"other\"} 1\n"));
        assert!(text
            .contains("sluice_tenant_events_accepted_total{tenant=\"metrics-test-tenant\"} 7\n"));
        assert!(text
            .contains("sluice_tenant_events_rejected_total{tenant=\"metrics-test-tenant\"} 2\n"));
        assert!(text
            .contains("sluice_tenant_requests_refused_total{tenant=\"metrics-test-tenant\"} 1\n"));
        assert!(text.contains("sluice_tenant_events_accepted_total{tenant=\"other\"} 5\n"));
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
