//! Criterion benches of the per-request hot path, piece by piece:
//! HTTP head parsing, chunked decoding, event validation (simd-json, with a
//! serde_json baseline), a Segment call's rewrite and validation beside the
//! native event's, key lookup, and batch encoding for the producer; the
//! headers a record carries, and the hot-key detector per event.
//!
//! `cargo bench --bench hot_path`; numbers and hardware go in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::events::record::Enrichment;
use sluice::events::segment::{translate, Envelope};
use sluice::events::split::{event_spans, BodyKind};
use sluice::events::validate::{EventLimits, Validator};
use sluice::http::body::{ChunkedDecoder, Progress};
use sluice::http::request::{parse_head, Parsed};
use sluice::route::SegmentCall;
use sluice::tenancy::keys::Snapshot;

const NOW_MS: u64 = 1_710_000_000_000;

/// A realistic ~300-byte event, like loadgen's.
fn event(index: usize) -> String {
    format!(
        r#"{{"event_id":"0f8fad5b-d9cb-469f-a165-{index:012x}","user_id":"user_{index}","event_type":"page_view","event_time":{NOW_MS},"experiment_id":"exp_42","variant":"A","properties":{{"page":"/products/{index}","referrer":"https://www.example.com/search?q=running+shoes","session_id":"9f86d081884c7d65","value":19.99,"items":[3,14,15]}}}}"#
    )
}

fn limits() -> EventLimits {
    EventLimits {
        event_bytes_max: 512 * 1024,
        properties_depth_max: 16,
        event_time_past_ms: 7 * 86_400_000,
        event_time_future_ms: 600_000,
    }
}

fn enrichment() -> Enrichment<'static> {
    Enrichment {
        tenant_id: "tenant_a",
        project_id: Some("proj_1"),
        received_at_ms: NOW_MS,
        ..Default::default()
    }
}

fn head_parsing(c: &mut Criterion) {
    let head = b"POST /v1/events HTTP/1.1\r\nHost: ingest.example.com\r\nUser-Agent: sdk-js/3.2.1\r\nX-CS-API-Key: cs_live_abc123xyz\r\nContent-Type: application/json\r\nAccept: */*\r\nX-Request-Id: 7f9c2ba4e88f827d\r\nContent-Length: 312\r\n\r\n";
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_head", |b| {
        b.iter(|| match parse_head(black_box(head), 16 * 1024) {
            Ok(Parsed::Complete(head)) => black_box(head.head_bytes),
            _ => unreachable!(),
        })
    });
    let body = event(1).repeat(10);
    let mut chunked = Vec::new();
    for piece in body.as_bytes().chunks(512) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("chunked_decode_3KiB_in_512B_chunks", |b| {
        b.iter_batched_ref(
            || chunked.clone(),
            |buffer| {
                let mut decoder = ChunkedDecoder::new(0, 1 << 20, 1024);
                match decoder.decode(buffer) {
                    Ok(Progress::Done { end, .. }) => black_box(end),
                    _ => unreachable!(),
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn validation(c: &mut Criterion) {
    let raw = event(7);
    let mut group = c.benchmark_group("validate_event");
    group.throughput(Throughput::Elements(1));
    let mut validator = Validator::new(limits(), 1);
    let mut out = Vec::with_capacity(4096);
    group.bench_function("simd_json_validate_and_enrich", |b| {
        b.iter(|| {
            out.clear();
            black_box(
                validator
                    .validate_into(black_box(raw.as_bytes()), &enrichment(), &mut out)
                    .unwrap(),
            );
        })
    });
    // Baseline: serde_json into a Value, then the same field checks.
    group.bench_function("serde_json_value_baseline", |b| {
        b.iter(|| {
            let value: serde_json::Value =
                serde_json::from_slice(black_box(raw.as_bytes())).unwrap();
            let object = value.as_object().unwrap();
            let user = object.get("user_id").and_then(|v| v.as_str()).unwrap();
            let kind = object.get("event_type").and_then(|v| v.as_str()).unwrap();
            let time = object.get("event_time").and_then(|v| v.as_i64()).unwrap();
            assert!(!object.contains_key("tenant_id"));
            black_box((user.len(), kind.len(), time))
        })
    });
    group.finish();
}

fn key_lookup(c: &mut Criterion) {
    let mut file = String::new();
    for index in 0..10_000 {
        file.push_str(&format!(
            "[[keys]]\nkey = \"cs_live_key_{index:08}\"\ntenant_id = \"tenant_{index}\"\n"
        ));
    }
    let snapshot = Snapshot::parse(&file, Default::default()).unwrap();
    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));
    group.bench_function("authenticate_in_10k_keys", |b| {
        b.iter(|| {
            black_box(
                snapshot
                    .authenticate(black_box(b"cs_live_key_00004242"), 0)
                    .is_ok(),
            )
        })
    });
    group.bench_function("reject_unknown_in_10k_keys", |b| {
        b.iter(|| {
            black_box(
                snapshot
                    .authenticate(black_box(b"cs_live_key_unknown!"), 0)
                    .is_err(),
            )
        })
    });
    group.finish();
}

fn batch_encoding(c: &mut Criterion) {
    let events: Vec<String> = (0..100).map(event).collect();
    let json_batch = format!(r#"{{"events":[{}]}}"#, events.join(","));
    let ndjson_batch = events.join("\n");
    let mut group = c.benchmark_group("batch_of_100");
    group.throughput(Throughput::Elements(100));
    for (name, kind, body) in [
        ("json", BodyKind::JsonBatch, &json_batch),
        ("ndjson", BodyKind::Ndjson, &ndjson_batch),
    ] {
        let mut validator = Validator::new(limits(), 1);
        let mut spans = Vec::with_capacity(128);
        let mut data = Vec::with_capacity(64 * 1024);
        group.bench_function(format!("split_validate_encode_{name}"), |b| {
            b.iter(|| {
                data.clear();
                event_spans(kind, black_box(body.as_bytes()), &mut spans, 1000).unwrap();
                for span in &spans {
                    black_box(
                        validator
                            .validate_into(&body.as_bytes()[span.clone()], &enrichment(), &mut data)
                            .unwrap(),
                    );
                }
                black_box(data.len())
            })
        });
    }
    group.finish();
}

/// A track call as analytics-node sends it: the same content as `event`,
/// in Segment's member names, with an RFC 3339 timestamp and the SDK's
/// context.
fn segment_track(index: usize) -> String {
    format!(
        r#"{{"type":"track","event":"page_view","userId":"user_{index}","messageId":"0f8fad5b-d9cb-469f-a165-{index:012x}","timestamp":"2024-03-09T16:00:00.000Z","properties":{{"page":"/products/{index}","referrer":"https://www.example.com/search?q=running+shoes","session_id":"9f86d081884c7d65","value":19.99,"items":[3,14,15],"experiment_id":"exp_42","variant":"A"}},"context":{{"library":{{"name":"@segment/analytics-node","version":"3.1.0"}}}},"_metadata":{{"jsonRuntime":"node"}}}}"#
    )
}

/// A Segment call costs its rewrite (`segment::translate`) plus the native
/// validation of the result; `native` is the native event alone, for the
/// ratio.
fn segment_calls(c: &mut Criterion) {
    let native = event(7);
    let call = segment_track(7);
    let mut group = c.benchmark_group("segment_call");
    group.throughput(Throughput::Elements(1));
    let mut validator = Validator::new(limits(), 1);
    let mut out = Vec::with_capacity(4096);
    let mut translated = Vec::with_capacity(4096);
    group.bench_function("native_validate_and_enrich", |b| {
        b.iter(|| {
            out.clear();
            black_box(
                validator
                    .validate_into(black_box(native.as_bytes()), &enrichment(), &mut out)
                    .unwrap(),
            );
        })
    });
    group.bench_function("translate_validate_and_enrich", |b| {
        let envelope = Envelope {
            endpoint: Some(SegmentCall::Track),
            received_at_ms: NOW_MS,
            ..Envelope::default()
        };
        b.iter(|| {
            out.clear();
            let raw = black_box(call.as_bytes());
            translate(raw, &envelope, &mut translated).unwrap();
            black_box(
                validator
                    .validate_into(&translated, &enrichment(), &mut out)
                    .unwrap(),
            );
        })
    });
    group.finish();
}

/// One key's limiter admitting a single-event request, as each core does
/// per request with limits on (never refusing here: the admitted path).
fn rate_limiting(c: &mut Criterion) {
    use sluice::config::KeyLimits;
    use sluice::tenancy::rate::KeyLimiter;
    let limiter = KeyLimiter::new(KeyLimits {
        events_per_second: 1_000_000_000,
        burst_events: 1_000_000_000,
        bytes_per_second: 1 << 50,
        burst_bytes: 1 << 50,
    });
    let now = std::time::Instant::now();
    c.bench_function("rate_limiter_admit_one_event", |b| {
        b.iter(|| black_box(limiter.admit(black_box(1), black_box(300), now)))
    });
    // With limits.redis_url set (and Redis up), admissions also spend the
    // key's lease from the fleet.
    sluice::tenancy::rate::set_fleet_mode(true);
    c.bench_function("rate_limiter_admit_one_event_fleet_lease", |b| {
        b.iter(|| black_box(limiter.admit(black_box(1), black_box(300), now)))
    });
}

/// What each response adds for the metrics: the request counter, and the
/// request-duration histogram with its one clock read (`Instant::elapsed`).
/// The accepted path also counts the tenant's events.
fn response_metrics(c: &mut Criterion) {
    use sluice::metrics::Metrics;
    use sluice::route::Route;
    let metrics = Metrics::new(1);
    let core = &metrics.cores[0];
    let started = std::time::Instant::now();
    c.bench_function("metrics_per_response_with_duration_histogram", |b| {
        b.iter(|| {
            core.request(black_box(Route::Events), black_box(202), started.elapsed());
            core.tenant_events(black_box(3), black_box(1), black_box(0));
        })
    });
    c.bench_function("metrics_per_response_without_the_clock_read", |b| {
        b.iter(|| {
            core.request(
                black_box(Route::Events),
                black_box(202),
                black_box(std::time::Duration::ZERO),
            )
        })
    });
}

/// The local dedup table per event: a fresh id claimed then settled as
/// stored (what every new event with an id costs), and a retry found
/// stored (a duplicate). The table is the default size (4 Mi entries,
/// 64 MiB), filled to its size first, so lookups miss the cache as they do
/// in a long-running process.
fn dedup(c: &mut Criterion) {
    use sluice::dedup::table::{owner, Claim, DedupTable};
    let table = DedupTable::new(4 << 20, 3_600_000);
    let tenant = table.tenant_hash("tenant_a");
    let class = table.tenant(0, tenant);
    let entries = table.entries() as u128;
    for id in 0..entries {
        if let Claim::Fresh(slot) =
            table.claim(class, table.fingerprint(tenant, id), owner(0, 0), 1)
        {
            table.settle(slot, owner(0, 0), true, 1);
        }
    }
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(1));
    let mut next = entries;
    group.bench_function("claim_and_settle_new_id", |b| {
        b.iter(|| {
            next += 1;
            let print = table.fingerprint(tenant, next);
            if let Claim::Fresh(slot) = table.claim(class, print, owner(0, next as u64), 2) {
                table.settle(slot, owner(0, next as u64), true, 2);
            }
        })
    });
    let mut seen = entries;
    group.bench_function("find_duplicate", |b| {
        b.iter(|| {
            seen = if seen <= entries { next } else { seen - 1 };
            black_box(table.claim(class, table.fingerprint(tenant, seen), owner(1, 0), 3))
        })
    });
    group.finish();
}

/// One of `events`, the other one each time.
fn in_turn<'a>(events: &'a [String; 2], turn: &mut usize) -> &'a [u8] {
    *turn += 1;
    black_box(events[*turn % 2].as_bytes())
}

/// An event contract per event: a typical schema (ten properties, an
/// enum, a pattern, bounds) on a valid event and on one that breaks it.
/// `check` parses the event into a simd-json tape (buffers reused) and
/// validates the tape (before issue 31: into a `serde_json::Value`);
/// `check_ahead` is the whole check a core does before a single event's
/// records are built (find the event, parse it, read its `event_type`,
/// validate, keep the verdict), and `check_ahead_and_record` that and the
/// event's record, against `record_only`: what schemas on add per event.
fn schemas(c: &mut Criterion) {
    use sluice::events::schema::checks::{check_events, RequestShape};
    use sluice::events::schema::SchemaSet;
    let dir = std::env::temp_dir().join(format!("sluice-bench-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("checkout.json"),
        include_str!("../tests/fixtures/checkout.schema.json"),
    )
    .unwrap();
    let set = SchemaSet::load(&dir, false).unwrap();
    // Two of each, taken in turn: a thread's last parse is reused for the
    // same bytes (the record after the check), never across events.
    let event = |user: &str, currency: &str| {
        format!(
            r#"{{"user_id":"{user}","event_type":"checkout","event_time":{NOW_MS},"properties":{{"order_id":"ord_0123abcd","amount":12.5,"currency":"{currency}","items":2,"coupon":null,"gift":false,"note":"hi","tags":["a","b"],"channel":"web","rank":10}}}}"#
        )
    };
    let valid = [event("user_123", "EUR"), event("user_124", "EUR")];
    let invalid = [event("user_123", "JPY"), event("user_124", "JPY")];
    let mut turn = 0usize;
    let mut group = c.benchmark_group("schema");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_valid_event_10_properties", |b| {
        b.iter(|| {
            black_box(
                set.check("tenant_a", "checkout", in_turn(&valid, &mut turn))
                    .is_ok(),
            )
        })
    });
    // What the check parsed each event into before (issue 31): a tree.
    group.bench_function("parse_only_into_serde_json_value", |b| {
        b.iter(|| {
            black_box(
                serde_json::from_slice::<serde_json::Value>(in_turn(&valid, &mut turn)).is_ok(),
            )
        })
    });
    group.bench_function("check_violating_event_10_properties", |b| {
        b.iter(|| {
            black_box(
                set.check("tenant_a", "checkout", in_turn(&invalid, &mut turn))
                    .is_err(),
            )
        })
    });
    let shape = RequestShape {
        kind: BodyKind::Single,
        batch_events_max: 1_000,
        received_at_ms: NOW_MS,
    };
    group.bench_function("check_ahead_single_event", |b| {
        b.iter(|| {
            let mut verdicts = Vec::new();
            let progress = check_events(
                &set,
                "tenant_a",
                shape,
                in_turn(&valid, &mut turn),
                0,
                500_000,
                &mut verdicts,
            );
            black_box((progress, verdicts))
        })
    });
    // A core's whole work on a single event with its contract: the check
    // ahead, then its record (validated, enriched); `record_only` is the
    // record alone, as with schemas off.
    let mut validator = Validator::new(limits(), 7);
    let mut out = Vec::with_capacity(4096);
    group.bench_function("check_ahead_and_record_single_event", |b| {
        b.iter(|| {
            let event = in_turn(&valid, &mut turn);
            let mut verdicts = Vec::new();
            let progress = check_events(&set, "tenant_a", shape, event, 0, 500_000, &mut verdicts);
            out.clear();
            let record = validator.validate_into(event, &enrichment(), &mut out);
            black_box((progress, verdicts, record.is_ok()))
        })
    });
    group.bench_function("record_only_single_event", |b| {
        b.iter(|| {
            out.clear();
            let record =
                validator.validate_into(in_turn(&valid, &mut turn), &enrichment(), &mut out);
            black_box(record.is_ok())
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a request's records say of where they came from (SPEC §2): the
/// request id and a W3C trace context (parsed, checked, copied into the
/// batch's data, once per request), and a record's `schema` header (once
/// per event with schemas on).
fn record_headers(c: &mut Criterion) {
    use sluice::events::schema::ContractId;
    use sluice::http::trace_context::copy_trace_context;
    let head = b"POST /v1/events HTTP/1.1\r\nHost: ingest.example.com\r\nX-CS-API-Key: cs_live_abc123xyz\r\nContent-Type: application/json\r\nX-Request-Id: 4f1c2a0e-7b9d-4c55-9a51-2d6f0b1e8c33\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\nContent-Length: 312\r\n\r\n";
    let request_id = b"4f1c2a0e-7b9d-4c55-9a51-2d6f0b1e8c33";
    let mut data = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("record_headers");
    group.bench_function("request_id_and_trace_context_per_request", |b| {
        b.iter(|| {
            data.clear();
            data.extend_from_slice(black_box(request_id));
            black_box(copy_trace_context(black_box(head), &mut data))
        })
    });
    let empty: std::sync::Arc<str> = "".into();
    let mut batch = sluice::handoff::Batch::new(&empty);
    let id = ContractId {
        tenant_scope: false,
        sha256: [0x9f, 0x86, 0xd0, 0x81, 0x88, 0x4c],
    };
    group.bench_function("schema_header_per_event", |b| {
        b.iter(|| {
            batch.data.clear();
            batch.data.extend_from_slice(b"page_view");
            black_box(sluice::server::routing::write_schema_header(
                black_box(&id),
                0..9,
                &mut batch,
            ))
        })
    });
    group.finish();
}

/// The hot-key detector per event (overflow on): distinct keys that stay
/// on their partition (overflow on with no hot key: the common case), one
/// key overflowing for its rate, and a forced key.
fn hot_keys(c: &mut Criterion) {
    use sluice::config::OverflowConfig;
    use sluice::hot_keys::HotKeys;
    let config = OverflowConfig {
        topic: "events_overflow".into(),
        force_keys: vec!["tenant_a:bot".into()],
        ..OverflowConfig::default()
    };
    let detector = HotKeys::new(&config);
    let keys: Vec<Vec<u8>> = (0..100_000)
        .map(|index| format!("tenant_a:user_{index}").into_bytes())
        .collect();
    let start = std::time::Instant::now();
    let mut group = c.benchmark_group("hot_keys");
    // 10 µs apart: 100,000 events a second over 100,000 keys, each far
    // under its rate.
    let mut tick = 0u64;
    group.bench_function("judge_distinct_keys", |b| {
        b.iter(|| {
            tick += 1;
            let now = start + std::time::Duration::from_micros(10 * tick);
            black_box(detector.judge(&keys[tick as usize % keys.len()], now))
        })
    });
    group.bench_function("judge_hot_key_overflowing", |b| {
        b.iter(|| {
            tick += 1;
            let now = start + std::time::Duration::from_micros(10 * tick);
            black_box(detector.judge(black_box(b"tenant_a:hot"), now))
        })
    });
    group.bench_function("judge_forced_key", |b| {
        b.iter(|| black_box(detector.judge(black_box(b"tenant_a:bot"), start)))
    });
    // The server's case: loadgen's 100,000 users in random order, and
    // between two judgments the rest of a request's work, modelled as
    // other memory written (a line in every 64 bytes of a 4 MiB ring):
    // 64 KiB a judgment pushes the table out of L1 and L2 (a set comes
    // back after ~10,000 judgments) while the detector's own fields stay
    // in L2, as on a busy loop; 2 MiB a judgment evicts those too. The
    // key is copied into a hot buffer first, as the request's is. Only
    // the judgment is timed (two clock reads included, ~22 ns here).
    let order = shuffled(keys.len(), 0x5eed);
    let mut ring = vec![0u8; 4 << 20];
    let (mut next, mut at, mut key) = (0usize, 0usize, [0u8; 32]);
    for (between, name) in [
        (64 << 10, "judge_100k_keys_random_order_64KiB_between"),
        (2 << 20, "judge_100k_keys_random_order_2MiB_between"),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = std::time::Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..between / 64 {
                        ring[at] = ring[at].wrapping_add(1);
                        at = (at + 64) % ring.len();
                    }
                    black_box(&mut ring);
                    // Those stores drained before the clock starts (the
                    // compare-and-swap would wait for them).
                    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                    next = (next + 1) % order.len();
                    tick += 1;
                    let user = &keys[order[next]];
                    key[..user.len()].copy_from_slice(user);
                    let now = start + std::time::Duration::from_micros(10 * tick);
                    let began = std::time::Instant::now();
                    black_box(detector.judge(black_box(&key[..user.len()]), now));
                    timed += began.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

/// `0..len` in a random order (a fixed xorshift, Fisher-Yates).
fn shuffled(len: usize, mut state: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    for index in (1..len).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(index, (state % (index as u64 + 1)) as usize);
    }
    order
}

criterion_group!(
    benches,
    record_headers,
    hot_keys,
    dedup,
    schemas,
    head_parsing,
    validation,
    segment_calls,
    key_lookup,
    batch_encoding,
    rate_limiting,
    response_metrics
);
criterion_main!(benches);
