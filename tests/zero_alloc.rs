//! A counting global allocator proves that, in steady state, a core
//! allocates nothing per request on the path socket -> parse -> auth ->
//! validate -> hand-off (and back to the HTTP answer).
//!
//! The core runs in-process on a thread the test marks as counted. A stand-in
//! producer thread takes the handed-off batches, reports every record as
//! delivered and returns the batch: everything beyond the hand-off is out
//! of scope here and proven end to end by the Kafka tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;
use sluice::handoff::{Batch, Completion, Mailbox, Opaque};
use sluice::health::Readiness;
use sluice::metrics::Metrics;
use sluice::server::core::{self, CoreSetup};
use sluice::server::inflight::Inflight;
use sluice::server::Shared;
use sluice::shutdown::Shutdown;
use sluice::tenancy::keys::KeyStore;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Records the stand-in producer was handed for the overflow topic.
static OVERFLOWED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEY: &str = "cs_alloc_key";

/// Starts one core and the stand-in producer; returns the address.
fn start_core() -> std::net::SocketAddr {
    start_core_with(None)
}

/// [`start_core`] with event contracts.
fn start_core_with(schemas: sluice::events::schema::Schemas) -> std::net::SocketAddr {
    let mut config = Config::default();
    config.server.pin_cores = false;
    config.limits.inflight_events_per_core_max = 4096;
    config.limits.inflight_requests_per_core_max = 1024;
    // Hot keys on, as an operator turns them on: every event is judged,
    // and the repeated single event's user goes over its rate (1,000 a
    // second) and overflows; one key is forced.
    config.overflow.topic = "events_overflow".into();
    config.overflow.force_keys = vec!["tenant_a:forced_user".into()];
    let hot_keys = Some(Arc::new(sluice::hot_keys::HotKeys::new(&config.overflow)));
    let mailboxes: Arc<[Arc<Mailbox>]> = vec![Arc::new(Mailbox::new(4096))].into();
    // Dedup on, as by default: its claims are on the measured path.
    let dedup = Some(Arc::new(sluice::dedup::table::DedupTable::new(
        1 << 16,
        3_600_000,
    )));
    let inflight =
        Inflight::new(0, 1024, 4096, 64 << 20, &mailboxes[0], dedup.clone(), None).unwrap();
    let readiness = Arc::new(Readiness::default());
    readiness.set_kafka(Ok(()));
    let shared = Arc::new(Shared {
        topic: "events_raw".into(),
        dead_letter_topic: "events_dlq".into(),
        cors: sluice::cors::Cors::default(),
        // Limits on (high enough never to refuse): the limiter runs on the
        // measured path too.
        keys: KeyStore::open(
            None,
            Some((KEY.into(), "tenant_a".into())),
            sluice::config::KeyLimits {
                events_per_second: 1_000_000_000,
                burst_events: 1_000_000_000,
                bytes_per_second: 1 << 50,
                burst_bytes: 1 << 50,
            },
            false,
        )
        .unwrap(),
        metrics: Arc::new(Metrics::new(1)),
        readiness,
        mailboxes: mailboxes.clone(),
        // With contracts, their checker threads, as the server starts them.
        checker: schemas
            .as_ref()
            .map(|_| Arc::new(sluice::events::schema::checker::Checker::start(1, 16).unwrap())),
        schemas,
        dedup,
        hot_keys,
        shutdown: Shutdown::new(1, Duration::from_secs(1)),
        config,
    });
    let (batches, receiver) = crossbeam_channel::bounded::<Batch>(64);
    std::thread::spawn(move || {
        while let Ok(batch) = receiver.recv() {
            // Like the real producer thread: the batch goes back to the pool
            // once its records are handed over, before any delivery report.
            let mailbox = &mailboxes[batch.ticket.core];
            let ticket = batch.ticket;
            let rerouted = batch
                .records
                .iter()
                .filter(|record| record.overflow != sluice::handoff::Overflow::No)
                .count();
            OVERFLOWED.fetch_add(rerouted as u64, Ordering::Relaxed);
            let dead_letters: Vec<bool> = batch
                .records
                .iter()
                .map(|record| record.dead_letter)
                .collect();
            mailbox.recycle(batch);
            for (index, dead_letter) in dead_letters.into_iter().enumerate() {
                let opaque = Opaque::new(ticket, index, dead_letter);
                mailbox.complete(Completion::produced(opaque, true));
            }
        }
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        COUNTED.with(|counted| counted.set(true));
        core::run(CoreSetup {
            index: 0,
            cpu: None,
            listener,
            shared,
            batches,
            direct: None,
            inflight,
        })
        .unwrap();
    });
    address
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Event ids that [`send`] makes new for every request: the last 12 hex
/// digits after this prefix are replaced by a counter.
const FRESH_ID_PREFIX: &str = "00000000-0000-4000-8000-";

static FRESH_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Sends `request` `count` times on one keep-alive connection, checking 202s.
fn send(stream: &mut TcpStream, request: &[u8], count: usize) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut request = request.to_vec();
    let fresh = request
        .windows(FRESH_ID_PREFIX.len())
        .position(|window| window == FRESH_ID_PREFIX.as_bytes())
        .map(|at| at + FRESH_ID_PREFIX.len());
    for _ in 0..count {
        if let Some(at) = fresh {
            let id = FRESH_IDS.fetch_add(1, Ordering::Relaxed);
            request[at..at + 12].copy_from_slice(format!("{id:012x}").as_bytes());
        }
        stream.write_all(&request).unwrap();
        let mut filled = 0;
        loop {
            filled += stream.read(&mut buffer[filled..]).unwrap();
            let text = &buffer[..filled];
            if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&text[..end]).unwrap();
                assert!(
                    head.starts_with("HTTP/1.1 202"),
                    "{}",
                    String::from_utf8_lossy(text)
                );
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if filled >= end + 4 + length {
                    break;
                }
            }
        }
    }
}

/// Allocations on the core thread per request, after warm-up.
fn allocations_per_request(address: std::net::SocketAddr, request: &[u8]) -> f64 {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    send(&mut stream, request, 2_000);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let measured = 5_000;
    send(&mut stream, request, measured);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    (after - before) as f64 / measured as f64
}

#[test]
fn steady_state_requests_allocate_nothing_on_the_core() {
    let address = start_core();
    let single = request(
        "/v1/events",
        &format!(
            r#"{{"user_id":"user_123","event_type":"page_view","event_time":{},"experiment_id":"exp_42","variant":"A","properties":{{"page":"checkout","cart":[1,2,3]}}}}"#,
            now_ms()
        ),
    );
    let per_single = allocations_per_request(address, &single);
    println!("single event: {per_single} allocations per request");

    // Every header a record can carry: a request id, a W3C trace context
    // (copied), a forced key (rerouted).
    let body = format!(
        r#"{{"user_id":"forced_user","event_type":"page_view","event_time":{}}}"#,
        now_ms()
    );
    let traced = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nX-Request-Id: req-0123456789\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let per_traced = allocations_per_request(address, traced.as_bytes());
    println!("single event, traced and forced to overflow: {per_traced} allocations per request");
    assert_eq!(per_traced, 0.0, "the record headers allocate");
    assert!(
        OVERFLOWED.load(Ordering::Relaxed) >= 7_000,
        "the forced key and the hot user were rerouted: {}",
        OVERFLOWED.load(Ordering::Relaxed)
    );

    // With an event_id: a new one each time (claimed in the dedup table,
    // settled by its report), then the same one (answered as a duplicate).
    let with_id = |id: &str| {
        request(
            "/v1/events",
            &format!(
                r#"{{"event_id":"{id}","user_id":"user_123","event_type":"page_view","event_time":{}}}"#,
                now_ms()
            ),
        )
    };
    let per_fresh =
        allocations_per_request(address, &with_id(&format!("{FRESH_ID_PREFIX}000000000000")));
    println!("single event, new event_id: {per_fresh} allocations per request");
    let per_duplicate =
        allocations_per_request(address, &with_id("0f8fad5b-d9cb-469f-a165-70867728950e"));
    println!("single event, repeated event_id: {per_duplicate} allocations per request");

    // With an Idempotency-Key: a new key each time (its two markers and
    // its event's derived id claimed, settled by the report), then one
    // key with one body again (an identical retry: a duplicate).
    let keyed = |key: &str| {
        let mut request = request(
            "/v1/events",
            &format!(
                r#"{{"user_id":"user_123","event_type":"page_view","event_time":{}}}"#,
                now_ms()
            ),
        );
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        request.splice(
            head_end..head_end,
            format!("\r\nIdempotency-Key: {key}").into_bytes(),
        );
        request
    };
    let per_new_key =
        allocations_per_request(address, &keyed(&format!("{FRESH_ID_PREFIX}000000000000")));
    println!("single event, new Idempotency-Key: {per_new_key} allocations per request");
    let per_same_key = allocations_per_request(address, &keyed("order-42"));
    println!("single event, repeated Idempotency-Key: {per_same_key} allocations per request");

    let events: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"user_id":"user_{i}","event_type":"click","event_time":{},"properties":{{"i":{i}}}}}"#, now_ms()))
        .collect();
    let batch = request(
        "/v1/events/batch",
        &format!(r#"{{"events":[{}]}}"#, events.join(",")),
    );
    let per_batch = allocations_per_request(address, &batch);
    println!("batch of 100: {per_batch} allocations per request");

    // A wide object: the duplicate-member check sorts its 100 names (more
    // than 16 are sorted, not compared pairwise) in its reused buffer.
    let members: Vec<String> = (0..100).map(|i| format!(r#""p{i}":{i}"#)).collect();
    let wide = request(
        "/v1/events",
        &format!(
            r#"{{"user_id":"user_123","event_type":"wide","event_time":{},"properties":{{{}}}}}"#,
            now_ms(),
            members.join(",")
        ),
    );
    let per_wide = allocations_per_request(address, &wide);
    println!("single event, 100 properties: {per_wide} allocations per request");

    assert_eq!(per_single, 0.0, "the single-event path allocates");
    allocations_per_event_with_schemas_on_are_bounded();
    assert_eq!(per_fresh, 0.0, "the dedup claim path allocates");
    assert_eq!(per_duplicate, 0.0, "the duplicate path allocates");
    assert_eq!(per_new_key, 0.0, "the Idempotency-Key path allocates");
    assert_eq!(
        per_same_key, 0.0,
        "the Idempotency-Key retry path allocates"
    );
    assert_eq!(per_batch, 0.0, "the batch path allocates");
    assert_eq!(per_wide, 0.0, "the duplicate-member check allocates");
}

/// With event contracts on, each event is validated on the simd-json tape
/// of a parse that reuses its buffers (no tree is built): at most two
/// allocations per event (the verdicts of the request and the event's
/// verdict), measured for a single event and per event of a batch of 100
/// (the figures are in BENCHMARKS.md). Schemas off is the test above:
/// zero. Run from that test, after it: the allocation counter is
/// process-wide.
fn allocations_per_event_with_schemas_on_are_bounded() {
    let dir = std::env::temp_dir().join(format!("sluice-alloc-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Every kind of value read: an enum, a pattern, bounds, exact numbers
    // (a decimal, an integer past 2^53), uniqueness, required names.
    let schema = r#"{"type":"object","required":["user_id"],"properties":{"variant":{"enum":["A","B"]},"experiment_id":{"pattern":"^exp_[0-9]+$"},"properties":{"type":"object","properties":{"page":{"type":"string","maxLength":64},"cart":{"type":"array","items":{"type":"integer","minimum":0},"uniqueItems":true},"price":{"type":"number","exclusiveMinimum":0,"maximum":1000},"big":{"type":"integer","maximum":9007199254740993}}}}}"#;
    for event_type in ["page_view", "click"] {
        std::fs::write(dir.join(format!("{event_type}.json")), schema).unwrap();
    }
    let set = sluice::events::schema::SchemaSet::load(&dir, false).unwrap();
    let address = start_core_with(Some(Arc::new(arc_swap::ArcSwap::from_pointee(set))));
    let event = |event_type: &str, user: &str, variant: &str| {
        format!(
            r#"{{"user_id":"{user}","event_type":"{event_type}","event_time":{},"experiment_id":"exp_42","variant":"{variant}","properties":{{"page":"checkout","cart":[1,2,3],"price":19.99,"big":9007199254740993}}}}"#,
            now_ms()
        )
    };
    // The contract is applied: a value it refuses is refused.
    let mut stream = TcpStream::connect(address).unwrap();
    let refused = request("/v1/events", &event("page_view", "user_123", "C"));
    stream.write_all(&refused).unwrap();
    let mut answer = [0u8; 512];
    let read = stream.read(&mut answer).unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    let single = request("/v1/events", &event("page_view", "user_123", "A"));
    let per_event = allocations_per_request(address, &single);
    println!("schemas on, single event (13 values): {per_event} allocations per event");
    let events: Vec<String> = (0..100)
        .map(|i| event("click", &format!("user_{i}"), "B"))
        .collect();
    let batch = request(
        "/v1/events/batch",
        &format!(r#"{{"events":[{}]}}"#, events.join(",")),
    );
    let per_batch_event = allocations_per_request(address, &batch) / 100.0;
    println!("schemas on, batch of 100: {per_batch_event} allocations per event");
    assert!(per_event <= 2.0, "{per_event} allocations per event");
    assert!(
        per_batch_event <= 2.0,
        "{per_batch_event} allocations per event of a batch"
    );
}
