//! Replays every committed fuzz input (the corpora the fuzzers grew and the
//! regression inputs of past findings) through the fuzz harnesses on stable,
//! so `cargo test` re-checks them without nightly or libFuzzer.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for directory in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{} fails its harness", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 5, "{target}: only {replayed} inputs found");
}

#[test]
fn http_request_corpus() {
    replay("http_request", harness::http_request);
}

#[test]
fn gzip_body_corpus() {
    replay("gzip_body", harness::gzip_body);
}

#[test]
fn events_corpus() {
    replay("events", harness::events);
}

#[test]
fn segment_corpus() {
    replay("segment", harness::segment);
}
