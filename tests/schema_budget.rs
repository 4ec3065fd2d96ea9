//! Event contracts under attack (issue 30, items 1, 3 and 5; SPEC §15): one
//! tenant's event, or one schema file, may not take what belongs to every
//! tenant. Each test is an attack that worked on the code before: an
//! event whose check burned a core for seconds while another connection
//! waited, schema files that crashed or exhausted the process, and a
//! Kubernetes ConfigMap mount that silently turned the contracts off.
//!
//! Every test runs with the default budgets, so it runs unchanged against
//! an older binary (`SLUICE_TEST_BIN`), where it fails.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::*;

/// A server whose contracts live in `dir`, on one core: every connection
/// shares the core the attacker's event lands on.
fn start(dir: &TempDir) -> Sluice {
    let sluice = Sluice::start(Options {
        extra_config: format!("[schemas]\ndir = \"{}\"\n", dir.0.display()),
        cores: 1,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    sluice
}

fn event_with(event_type: &str, user: &str, properties: &str) -> String {
    format!(
        r#"{{"user_id":"{user}","event_type":"{event_type}","event_time":{},"properties":{properties}}}"#,
        now_ms()
    )
}

/// Sends `body` to `/v1/events` on its own connection, and returns the
/// status and how long the answer took (`None`: no answer in `timeout`).
fn timed_post(sluice: &Sluice, body: &str, timeout: Duration) -> (Option<u16>, Duration) {
    let mut stream = TcpStream::connect(sluice.address).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    let status = match stream.read_exact(&mut answer) {
        Ok(()) => std::str::from_utf8(&answer[9..12])
            .ok()
            .and_then(|code| code.parse().ok()),
        Err(_) => None,
    };
    (status, started.elapsed())
}

/// While `attack` runs on its own connection, a victim on another sends a
/// small valid event every 20 ms: the slowest answer it got.
fn victim_latency_during(sluice: &Sluice, attack: impl FnOnce() + Send) -> Duration {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let victim = scope.spawn(|| {
            let mut slowest = Duration::ZERO;
            let mut index = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = event_with("victim", &format!("victim_{index}"), "{}");
                let (status, took) = timed_post(sluice, &body, Duration::from_secs(30));
                assert_eq!(status, Some(202), "the victim's event");
                slowest = slowest.max(took);
                index += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            slowest
        });
        // Let the victim's connection get going first.
        std::thread::sleep(Duration::from_millis(100));
        attack();
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        victim.join().unwrap()
    })
}

fn random_ab(bytes: usize) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state & 1 == 0 {
                'a'
            } else {
                'b'
            }
        })
        .collect()
}

// Item 1: exact decimals that round to one f64 made jsonschema's
// uniqueItems quadratic (4,000 numbers: 25.8 s on a core) while every
// other connection of that core waited.
#[test]
fn unique_items_over_decimals_that_round_alike_is_linear_and_stalls_no_one() {
    let dir = TempDir::new("schema-unique");
    dir.file(
        "readings.json",
        r#"{"properties":{"properties":{"properties":{"values":{"type":"array","uniqueItems":true}}}}}"#,
    );
    let sluice = start(&dir);
    let values: Vec<String> = (0..20_000).map(|i| format!("1.{:020}", i + 1)).collect();
    let attack = event_with(
        "readings",
        "attacker",
        &format!(r#"{{"values":[{}]}}"#, values.join(",")),
    );
    let mut answer = (None, Duration::ZERO);
    let slowest = victim_latency_during(&sluice, || {
        answer = timed_post(&sluice, &attack, Duration::from_secs(10));
    });
    println!(
        "uniqueItems, {} bytes: {answer:?}; the victim's slowest answer {slowest:?}",
        attack.len()
    );
    assert_eq!(answer.0, Some(202), "20,000 distinct decimals are unique");
    // Linear: well under a second in release (BENCHMARKS.md), a few in
    // a debug build; quadratic, it took minutes.
    assert!(answer.1 < Duration::from_secs(5), "{:?}", answer.1);
    assert!(
        slowest < Duration::from_millis(250),
        "the victim waited {slowest:?}"
    );
    // A repeat, written otherwise, is still found.
    let repeated = event_with("readings", "attacker", r#"{"values":[1.5,2,"1.5",15e-1]}"#);
    let (status, _) = timed_post(&sluice, &repeated, Duration::from_secs(10));
    assert_eq!(status, Some(400));
}

// Item 1: `pattern` cost pattern size times input: a[ab]{1000}[^ab] over
// 500 KB of a/b took 3.7 s of a core. Now its cost is charged as it is
// spent, and the event is refused at its budget, naming it.
#[test]
fn a_pattern_that_costs_more_than_the_event_may_spend_is_refused_and_stalls_no_one() {
    let dir = TempDir::new("schema-pattern");
    dir.file(
        "notes.json",
        r#"{"properties":{"properties":{"properties":{"text":{"type":"string","pattern":"a[ab]{1000}[^ab]"}}}}}"#,
    );
    let sluice = start(&dir);
    let attack = event_with(
        "notes",
        "attacker",
        &format!(r#"{{"text":"{}"}}"#, random_ab(400_000)),
    );
    let mut answer = (None, Duration::ZERO);
    let slowest = victim_latency_during(&sluice, || {
        answer = timed_post(&sluice, &attack, Duration::from_secs(10));
    });
    println!(
        "pattern, {} bytes: {answer:?}; the victim's slowest answer {slowest:?}",
        attack.len()
    );
    assert_eq!(answer.0, Some(422), "refused for its cost");
    assert!(answer.1 < Duration::from_secs(3), "{:?}", answer.1);
    assert!(
        slowest < Duration::from_millis(250),
        "the victim waited {slowest:?}"
    );
    // A short note is still judged (this pattern needs 1,002 characters
    // to match, and matching that many costs more than a small event may
    // spend: the pattern, not the event, is what is too dear).
    let refused = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Content-Type", "application/json")],
        event_with("notes", "writer", r#"{"text":"abc"}"#).as_bytes(),
    );
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.code(), "schema_violation");
    let message = refused.json()["error"]["message"].to_string();
    assert!(message.contains("pattern"), "{message}");
}

/// A schema file that replaces `fine.json`'s contract, written while the
/// server runs: the reload must refuse it, naming the file and `limit`,
/// keep the last good set, and stay up.
fn a_reload_refuses(name: &str, schema: &str, limit: &str) {
    let dir = TempDir::new(&format!("schema-{name}"));
    dir.file("fine.json", r#"{"required":["properties"]}"#);
    let sluice = start(&dir);
    let path = dir.file(&format!("{name}.json"), schema);
    wait_until("the reload is refused", Duration::from_secs(20), || {
        sluice.logs().contains("event schema not loaded")
    });
    let logs = sluice.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("event schema not loaded"))
        .unwrap();
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains(limit), "{line}");
    // The last good set stays: `fine` is still checked, the new type is
    // not, and the server answers.
    let (status, _) = timed_post(
        &sluice,
        &event_with(name, "u", r#"{"a":1}"#),
        Duration::from_secs(5),
    );
    assert_eq!(status, Some(202), "{name}: no contract, no crash, no spin");
    let (status, _) = timed_post(
        &sluice,
        &format!(
            r#"{{"user_id":"u","event_type":"fine","event_time":{}}}"#,
            now_ms()
        ),
        Duration::from_secs(5),
    );
    assert_eq!(status, Some(400), "the last good set is in use");
    assert_eq!(sluice.get("/healthz").status, 200);
}

// Item 3: a chain of 15,000 $refs compiled, and the first event overflowed
// the core's stack: the process aborted.
#[test]
fn a_ref_chain_past_the_depth_budget_is_refused_at_reload() {
    let links: Vec<String> = (0..15_000)
        .map(|link| format!(r##""a{link}":{{"$ref":"#/$defs/a{}"}}"##, link + 1))
        .collect();
    let schema = format!(
        r##"{{"$defs":{{{},"a15000":{{"type":"integer"}}}},"$ref":"#/$defs/a0"}}"##,
        links.join(",")
    );
    a_reload_refuses("chain", &schema, "schemas.ref_depth_max");
}

// Item 3: allOf of two $refs per level costs 2^levels: 60 levels (1.6 KB)
// spun the core forever and /healthz stopped answering.
#[test]
fn an_exponential_expansion_is_refused_at_reload() {
    // 12 levels: within `schemas.ref_depth_max` (two steps a level), past
    // `schemas.expansion_max` (3 * 2^12).
    let mut defs: Vec<String> = (0..12)
        .map(|level| {
            format!(
                r##""a{level}":{{"allOf":[{{"$ref":"#/$defs/a{next}"}},{{"$ref":"#/$defs/a{next}"}}]}}"##,
                next = level + 1
            )
        })
        .collect();
    defs.push(r#""a12":{"type":"object"}"#.into());
    let schema = format!(
        r##"{{"$defs":{{{}}},"$ref":"#/$defs/a0"}}"##,
        defs.join(",")
    );
    a_reload_refuses("doubling", &schema, "schemas.expansion_max");
}

// Item 3: one 1 MB file of 26,000 patterns reached 22.9 GB (3,000 of them:
// 472 MB). Kept to 3,000 here so the old binary survives the test.
#[test]
fn patterns_past_the_set_budget_are_refused_at_reload_without_compiling_them() {
    let properties: Vec<String> = (0..3_000)
        .map(|i| format!(r#""p{i}":{{"pattern":"[a-z]{{{i}}}x"}}"#))
        .collect();
    let schema = format!(r#"{{"properties":{{{}}}}}"#, properties.join(","));
    let dir = TempDir::new("schema-patterns");
    dir.file("fine.json", r#"{"required":["properties"]}"#);
    let sluice = start(&dir);
    let before = rss_bytes(sluice.pid());
    dir.file("patterns.json", &schema);
    wait_until("the reload is refused", Duration::from_secs(60), || {
        sluice.logs().contains("event schema not loaded")
    });
    let logs = sluice.logs();
    assert!(logs.contains("schemas.pattern_states_max"), "{logs}");
    let grown = rss_bytes(sluice.pid()).saturating_sub(before);
    println!("patterns: resident memory grew {} MiB", grown >> 20);
    assert!(grown < 64 << 20, "grew {} MiB", grown >> 20);
}

// Item 3: 10,000 small files took 3.1 GB and 11 s to start. Past
// `schemas.files_max` (1,000) a set is refused, before anything compiles.
#[test]
fn more_files_than_the_budget_are_refused() {
    let dir = TempDir::new("schema-files");
    dir.file("fine.json", r#"{"required":["properties"]}"#);
    let sluice = start(&dir);
    let staging = TempDir::new("schema-files-staging");
    for index in 0..1_500 {
        staging.file(&format!("type_{index}.json"), r#"{"type":"object"}"#);
    }
    // One rename: the reload sees all of them or none.
    let tenant = dir.0.join("tenant_many");
    std::fs::rename(&staging.0, &tenant).unwrap();
    wait_until("the reload is refused", Duration::from_secs(60), || {
        sluice.logs().contains("event schema not loaded")
    });
    assert!(
        sluice.logs().contains("schemas.files_max"),
        "{}",
        sluice.logs()
    );
    let _ = std::fs::remove_dir_all(&tenant);
}

/// Lays `files` out as kubelet mounts a ConfigMap: the files in a
/// `..<stamp>` directory, `..data` pointing at it (a `..data_tmp` link
/// renamed over it), each top-level name a link through `..data`.
fn kubelet_mount(dir: &std::path::Path, stamp: &str, files: &[(&str, &str)]) {
    let hidden = dir.join(format!("..{stamp}"));
    for (name, text) in files {
        let path = hidden.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let staged = dir.join("..data_tmp");
    symlink(format!("..{stamp}"), &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for (name, _) in files {
        let top = name.split('/').next().unwrap();
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{top}"), &link).unwrap();
        }
    }
}

// Item 5: from a ConfigMap, every schema is a symbolic link and kubelet's
// `..` entries sit beside them; sluice skipped the links, took the
// timestamped directory for a tenant, and a violating event got 202.
#[test]
fn a_configmap_mount_is_enforced_and_its_atomic_swap_reloads() {
    let dir = TempDir::new("schema-configmap");
    kubelet_mount(
        &dir.0,
        "2026_12_06_10_00_00.000000001",
        &[
            (
                "signup.json",
                r#"{"properties":{"properties":{"required":["plan"]}}}"#,
            ),
            (
                "tenant_a/click.json",
                r#"{"properties":{"properties":{"required":["button"]}}}"#,
            ),
        ],
    );
    let sluice = start(&dir);
    let post = |event_type: &str, properties: &str| {
        timed_post(
            &sluice,
            &event_with(event_type, "u", properties),
            Duration::from_secs(5),
        )
        .0
    };
    assert_eq!(
        post("signup", "{}"),
        Some(400),
        "the shared contract applies"
    );
    assert_eq!(post("signup", r#"{"plan":"pro"}"#), Some(202));
    assert_eq!(
        post("click", "{}"),
        Some(400),
        "tenant_a's own contract applies"
    );
    assert_eq!(post("click", r#"{"button":"buy"}"#), Some(202));
    // An update: a new timestamped directory, `..data` swapped atomically.
    kubelet_mount(
        &dir.0,
        "2026_12_06_10_05_00.000000002",
        &[
            (
                "signup.json",
                r#"{"properties":{"properties":{"required":["plan","seats"]}}}"#,
            ),
            (
                "tenant_a/click.json",
                r#"{"properties":{"properties":{"required":["button"]}}}"#,
            ),
        ],
    );
    std::fs::remove_dir_all(dir.0.join("..2026_12_06_10_00_00.000000001")).unwrap();
    wait_until(
        "the swapped contract applies",
        Duration::from_secs(20),
        || post("signup", r#"{"plan":"pro"}"#) == Some(400),
    );
    assert_eq!(post("signup", r#"{"plan":"pro","seats":2}"#), Some(202));
    // A link out of the directory is refused, named; the set in use stays.
    let outside = TempDir::new("schema-configmap-outside");
    let leak = outside.file("leak.json", "{}");
    symlink(&leak, dir.0.join("leak.json")).unwrap();
    wait_until(
        "the escaping link is refused",
        Duration::from_secs(20),
        || {
            sluice
                .logs()
                .lines()
                .any(|line| line.contains("event schema not loaded") && line.contains("leak.json"))
        },
    );
    assert_eq!(post("signup", r#"{"plan":"pro"}"#), Some(400));
}

/// `sluice` with none of the harness's own `SLUICE_*` variables: the
/// command reads the environment as configuration.
fn sluice_command() -> std::process::Command {
    let mut command = std::process::Command::new(sluice_binary());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SLUICE_")) {
        command.env_remove(name);
    }
    command
}

/// A schema directory holding one file of each budget class that used to
/// load: a deep `$ref` chain, a doubling expansion, and a link out.
fn over_budget_schemas(dir: &TempDir) -> std::path::PathBuf {
    let schemas = dir.0.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    let links: Vec<String> = (0..200)
        .map(|link| format!(r##""a{link}":{{"$ref":"#/$defs/a{}"}}"##, link + 1))
        .collect();
    std::fs::write(
        schemas.join("chain.json"),
        format!(
            r##"{{"$defs":{{{},"a200":{{}}}},"$ref":"#/$defs/a0"}}"##,
            links.join(",")
        ),
    )
    .unwrap();
    let outside = dir.file("outside.json", "{}");
    symlink(outside, schemas.join("leak.json")).unwrap();
    schemas
}

// Item 3: `sluice check` applies the same budgets as the server, naming
// each file and the limit it passes.
#[test]
fn sluice_check_names_each_file_over_budget_and_the_limit() {
    let dir = TempDir::new("schema-check");
    let schemas = over_budget_schemas(&dir);
    let config = dir.file(
        "sluice.toml",
        &format!("[schemas]\ndir = \"{}\"\n", schemas.display()),
    );
    let output = output_within(
        sluice_command()
            .args(["check", "--skip-kafka", "--config"])
            .arg(&config),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("sluice check printed:\n{stdout}");
    assert_ne!(output.status.code(), Some(0));
    let problem = |parts: &[&str]| {
        stdout
            .lines()
            .any(|line| line.starts_with("problem") && parts.iter().all(|part| line.contains(part)))
    };
    assert!(
        problem(&["chain.json", "schemas.ref_depth_max"]),
        "{stdout}"
    );
    assert!(problem(&["leak.json", "out of schemas.dir"]), "{stdout}");
}

// Item 3: at start-up, too: the server does not start, naming the file
// and the limit (before, it started, and the first event aborted it).
#[test]
fn a_server_does_not_start_on_a_schema_over_budget() {
    let dir = TempDir::new("schema-start");
    let schemas = over_budget_schemas(&dir);
    let config = dir.file(
        "sluice.toml",
        &format!("[schemas]\ndir = \"{}\"\n", schemas.display()),
    );
    let output = output_within(
        sluice_command()
            .args(["--dev", "--listen", "127.0.0.1:0", "--keys-file"])
            .arg(dir.file("keys.toml", &keys_file_text()))
            .arg("--config")
            .arg(&config),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chain.json"), "{stderr}");
    assert!(stderr.contains("schemas.ref_depth_max"), "{stderr}");
}
