//! Regression tests for the second hardening review (issue "Hardening 2:
//! one authenticated request must not cost gigabytes, a revoked key must
//! stop working, no secret may reach Kafka, and no second process may
//! share the port"). Each test is named after the hole it closes and fails
//! on the code before the fix; the issue's closing note says how.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The second key of the test keys file (stored there as its SHA-256):
/// a valid key of `tenant_b`.
const OTHER_KEY: &str = "password";

/// Runs sluice with `config` as its configuration file and returns its
/// exit status and what it printed; it must stop within 10 s.
fn start_with_config(config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("config");
    let output = output_within(
        Command::new(sluice_binary())
            .arg("--dev")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(dir.file("sluice.toml", config)),
        Duration::from_secs(10),
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), printed)
}

// Hole 9: X-CS-API-Key plus an Authorization carrying a different key was
// served with whichever won, and the key header sent twice was served with
// the last one.
#[test]
fn hole9_two_credentials_or_one_header_twice_is_a_400() {
    let sluice = Sluice::dev("");
    let body = event("hole9_user", "");
    let json = ("Content-Type", "application/json");
    let cases: [(&str, Vec<(&str, String)>); 4] = [
        (
            "key header and a Bearer of another key",
            vec![
                ("X-CS-API-Key", KEY.into()),
                ("Authorization", format!("Bearer {OTHER_KEY}")),
            ],
        ),
        (
            "key header and a Basic user of another key",
            vec![
                ("X-CS-API-Key", KEY.into()),
                ("Authorization", "Basic cGFzc3dvcmQ6".into()),
            ],
        ),
        (
            "key header twice",
            vec![
                ("X-CS-API-Key", OTHER_KEY.into()),
                ("X-CS-API-Key", KEY.into()),
            ],
        ),
        (
            "Authorization twice",
            vec![
                ("Authorization", format!("Bearer {KEY}")),
                ("Authorization", format!("Bearer {OTHER_KEY}")),
            ],
        ),
    ];
    for (case, headers) in cases {
        let mut all: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        all.push(json);
        let response = sluice.post("/v1/events", &all, body.as_bytes());
        assert_eq!(response.status, 400, "{case}: {}", response.text());
        assert_eq!(response.code(), "ambiguous_credentials", "{case}");
        assert!(response.text().contains("send one credential"), "{case}");
    }
    // The same key in both headers is one credential, not two.
    let same = format!("Bearer {KEY}");
    let response = sluice.post(
        "/v1/events",
        &[("X-CS-API-Key", KEY), ("Authorization", &same), json],
        body.as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
}

// Hole 10: nonsense numeric settings were accepted: an in-flight table of
// 10^11 events hung start-up allocating 2.4 TB, a connection cap of 0
// refused every client, a body cap of 0 and an in-flight byte cap below
// the largest request started.
#[test]
fn hole10_nonsense_settings_stop_start_up_naming_the_key_and_range() {
    for (config, named) in [
        (
            "[limits]\ninflight_events_per_core_max = 100000000000\n",
            "limits.inflight_events_per_core_max: 100000000000 is out of range: it must be 1..=4194304",
        ),
        (
            "[server]\nconnections_per_core_max = 0\n",
            "server.connections_per_core_max: 0 is out of range: it must be 1..=1000000",
        ),
        (
            "[limits]\nbody_bytes_max = 0\n",
            "limits.body_bytes_max: 0 is out of range",
        ),
        (
            "[limits]\ninflight_bytes_per_core_max = 2097152\n",
            "limits.inflight_bytes_per_core_max: must be at least limits.decompressed_body_bytes_max",
        ),
        ("[kafka]\nlinger_ms = 86400000\n", "kafka.linger_ms: 86400000 is out of range"),
        ("[server]\nidle_timeout_ms = 0\n", "server.idle_timeout_ms: 0 is out of range"),
    ] {
        let (status, printed) = start_with_config(config);
        assert_eq!(status, Some(2), "{config}: {printed}");
        assert!(printed.contains(named), "{config}: expected {named:?} in {printed}");
    }
    // 1e11 written as a float is refused too, not read as a number of slots.
    let (status, printed) = start_with_config("[limits]\ninflight_events_per_core_max = 1e11\n");
    assert_eq!(status, Some(2), "{printed}");
    assert!(
        printed.contains("inflight_events_per_core_max"),
        "{printed}"
    );
}

/// A keys file of `count` keys besides the test keys (`cs_bulk_<i>`).
fn many_keys(count: usize) -> String {
    let mut text = keys_file_text();
    for index in 0..count {
        text.push_str(&format!(
            "\n[[keys]]\nkey = \"cs_bulk_{index}\"\ntenant_id = \"bulk_{}\"\n",
            index % 1000
        ));
    }
    text
}

/// Sends SIGHUP and waits until the reload is counted.
fn reload_keys(sluice: &Sluice) {
    let before = sluice.metric("sluice_key_reloads_total");
    sluice.signal(libc::SIGHUP);
    wait_until("the keys reload", Duration::from_secs(30), || {
        sluice.metric("sluice_key_reloads_total") > before
    });
}

// Hole 2: each connection's key cache held an Arc of the whole snapshot,
// so idle keep-alive connections pinned one old snapshot each: with 50k
// keys and 10 reloads, RSS grew 211 MiB with the connections idle against
// 20 MiB with them closed.
#[test]
fn hole2_idle_connections_do_not_pin_old_key_snapshots() {
    use common::services::time_until;
    use std::io::Write as _;
    const KEYS: usize = 50_000;
    const RELOADS: usize = 10;
    let sluice = Sluice::start(Options {
        keys: many_keys(KEYS),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(60));
    let request = |stream: &mut std::net::TcpStream, index: usize| {
        let body = event(&format!("hole2_{index}"), "");
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let response = read_response(stream).expect("a response");
        assert_eq!(response.status, 202, "{}", response.text());
    };
    // Warm up: one reload and one connection, so allocator pools exist.
    let mut idle = vec![sluice.connect()];
    request(&mut idle[0], 0);
    reload_keys(&sluice);
    let rss_before = rss_bytes(sluice.pid());
    for index in 1..=RELOADS {
        reload_keys(&sluice);
        let mut stream = sluice.connect();
        request(&mut stream, index);
        idle.push(stream);
    }
    let grown_mib = (rss_bytes(sluice.pid()).saturating_sub(rss_before)) as f64 / (1 << 20) as f64;
    println!(
        "{KEYS} keys, {RELOADS} reloads, {} idle connections: RSS grew {grown_mib:.1} MiB",
        idle.len()
    );
    // What is pinned, counted exactly: the snapshots in memory. Each idle
    // connection used to hold the one it authenticated against (RSS grew
    // about 100 MiB here against 10 MiB without, but RSS also moves with
    // the allocator's timing on a loaded machine, so the test counts).
    let metrics = sluice.get("/metrics").text();
    assert!(
        metrics.contains("sluice_api_key_snapshots "),
        "no snapshot gauge"
    );
    let pinned = time_until(Duration::from_secs(10), || {
        sluice.metric("sluice_api_key_snapshots") <= 2.0
    });
    assert!(
        pinned.is_some(),
        "{} key snapshots in memory with {} idle connections",
        sluice.metric("sluice_api_key_snapshots"),
        idle.len()
    );
}

// Hole 3: a key revoked or disabled in PostgreSQL kept working when the
// keys file also held it (the file won), and a key in both sources with
// different tenants was served as the file's tenant without a word.
#[test]
fn hole3_a_refusal_from_any_key_source_wins() {
    use common::services::{time_until, Postgres};
    let broker = Broker::start();
    let postgres = Postgres::start();
    // Both keys are in the file (tenant_a); PostgreSQL has them too.
    const SHARED_KEY: &str = "cs_both_sources";
    const CONFLICTED_KEY: &str = "cs_two_tenants";
    let keys = format!(
        "{}\n[[keys]]\nkey = \"{SHARED_KEY}\"\ntenant_id = \"{TENANT}\"\n\n[[keys]]\nkey = \"{CONFLICTED_KEY}\"\ntenant_id = \"{TENANT}\"\n",
        keys_file_text()
    );
    postgres.insert_key(SHARED_KEY, TENANT, "", "");
    postgres.insert_key(CONFLICTED_KEY, "tenant_elsewhere", "", "");
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        env: vec![("SLUICE_AUTH_POSTGRES_URL".into(), postgres.url())],
        keys,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(30));
    let post = |key: &str| {
        sluice
            .post(
                "/v1/events",
                &[("X-CS-API-Key", key), ("Content-Type", "application/json")],
                event("hole3_user", "").as_bytes(),
            )
            .status
    };
    assert_eq!(
        post(SHARED_KEY),
        202,
        "in both sources, same tenant, enabled"
    );
    assert_eq!(
        post(CONFLICTED_KEY),
        401,
        "two tenants for one key: refused"
    );
    wait_until("the conflict's warn line", Duration::from_secs(5), || {
        let logs = sluice.logs();
        logs.contains("WARN") && logs.contains("tenant \"tenant_elsewhere\" in PostgreSQL")
    });
    assert!(
        !sluice.logs().contains(CONFLICTED_KEY),
        "the key is never logged"
    );
    for (change, sql) in [
        ("disabled", "UPDATE api_keys SET enabled = false"),
        (
            "revoked",
            "UPDATE api_keys SET enabled = true, revoked_at = now()",
        ),
    ] {
        postgres.psql(&format!(
            "{sql} WHERE key_sha256 = sha256('{SHARED_KEY}'::bytea)"
        ));
        let took = time_until(Duration::from_secs(2), || post(SHARED_KEY) == 401);
        assert!(
            took.is_some(),
            "{change} in PostgreSQL: still served through the file's copy"
        );
        postgres.psql(&format!(
            "UPDATE api_keys SET enabled = true, revoked_at = NULL WHERE key_sha256 = sha256('{SHARED_KEY}'::bytea)"
        ));
        let took = time_until(Duration::from_secs(2), || post(SHARED_KEY) == 202);
        assert!(took.is_some(), "re-enabled after {change}");
    }
}

// Hole 4: SPEC §8's table exactly as specified never loaded (the query
// needed sql/003's `topic` and `burst_bytes`), and the error was logged
// as "PostgreSQL unreachable".
#[test]
fn hole4_the_spec_table_loads_and_a_schema_problem_is_named() {
    use common::services::{time_until, Postgres};
    const SPEC_KEY: &str = "cs_spec_table_key";
    let broker = Broker::start();
    let postgres = Postgres::start();
    postgres.psql("ALTER TABLE api_keys DROP COLUMN topic, DROP COLUMN burst_bytes");
    postgres.insert_key(SPEC_KEY, "tenant_spec", "", "");
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        env: vec![("SLUICE_AUTH_POSTGRES_URL".into(), postgres.url())],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(30));
    let response = sluice.post(
        "/v1/events",
        &[
            ("X-CS-API-Key", SPEC_KEY),
            ("Content-Type", "application/json"),
        ],
        event("hole4_user", "").as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    // A column of SPEC §8 missing: named as a schema problem.
    // (DDL notifies nothing: the UPDATE brings the next load now.)
    postgres.psql(
        "ALTER TABLE api_keys DROP COLUMN revoked_at; UPDATE api_keys SET tenant_id = tenant_id",
    );
    let named = time_until(Duration::from_secs(10), || {
        sluice.logs().contains("lacks column(s) revoked_at")
    });
    assert!(named.is_some(), "{}", sluice.logs());
    assert!(sluice.logs().contains("does not match SPEC §8"));
    assert!(
        !sluice.logs().contains("PostgreSQL unreachable"),
        "{}",
        sluice.logs()
    );
}

// Hole 8: a second sluice on the same listen address started silently and
// took a share of the connections (SO_REUSEPORT between processes).
#[test]
fn hole8_a_second_process_on_the_same_address_fails_at_start() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = |cores: usize| {
        let sluice = Sluice::start(Options {
            args: vec!["--listen".into(), listen.clone()],
            cores,
            ..Default::default()
        });
        sluice.wait_ready(200, Duration::from_secs(20));
        sluice
    };
    let mut first = start(2);
    let response = first.post_json("/v1/events", &event("hole8_first", ""));
    assert_eq!(response.status, 202, "{}", response.text());
    let second = output_within(
        Command::new(sluice_binary()).args(["--dev", "--listen", &listen, "--cores", "1"]),
        Duration::from_secs(20),
    );
    let printed = String::from_utf8_lossy(&second.stderr).into_owned()
        + &String::from_utf8_lossy(&second.stdout);
    assert!(
        !second.status.success(),
        "the second process started: {printed}"
    );
    assert!(printed.contains("address in use"), "{printed}");
    // The first one still serves every connection.
    for index in 0..20 {
        let response = first.post_json("/v1/events", &event(&format!("hole8_{index}"), ""));
        assert_eq!(response.status, 202, "{}", response.text());
    }
    // A restart on the same address works, TIME_WAIT connections and all.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(20)), Some(0));
    let again = start(2);
    let response = again.post_json("/v1/events", &event("hole8_again", ""));
    assert_eq!(response.status, 202, "{}", response.text());
}

/// The process's peak resident memory so far (`VmHWM`), in bytes.
fn peak_rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

// Hole 1: a Segment /v1/batch copied the batch's shared `context` into
// every call, and the size checks, the rate limit and the in-flight
// reservation ran after the copies were built: 250 KB (a 200 KB context,
// 1000 small calls) raised peak RSS by 400 MiB and was answered 503, so
// clients retried it. Every route's worst input found is sent here; each
// must be answered without building more than its bound (4 bytes per
// byte sent plus 1 KiB per event), and an amplifying one gets a 413 that
// names the limit.
#[test]
fn hole1_no_route_builds_more_than_its_wire_size_allows() {
    let sluice = Sluice::dev("[limits]\nbatch_events_max = 1000\n");
    let context = format!(r#"{{"padding":"{}"}}"#, "x".repeat(200_000));
    let calls: Vec<String> = (0..1000)
        .map(|i| format!(r#"{{"type":"track","event":"e","userId":"u{i}"}}"#))
        .collect();
    let segment_batch = format!(r#"{{"batch":[{}],"context":{context}}}"#, calls.join(","));
    let tiny_invalid = format!(r#"{{"events":[{}]}}"#, vec!["1"; 1000].join(","));
    let tiny_valid: Vec<String> = (0..1000).map(|i| event(&format!("h1_{i}"), "")).collect();
    let native_batch = format!(r#"{{"events":[{}]}}"#, tiny_valid.join(","));
    let padding = "y".repeat(400_000);
    let big_event = event("h1_big", &format!(r#","properties":{{"p":"{padding}"}}"#));
    let big_call = format!(r#"{{"event":"e","userId":"u","properties":{{"p":"{padding}"}}}}"#);
    let json = ("Content-Type", "application/json");
    let ndjson = ("Content-Type", "application/x-ndjson");
    let gzip_encoding = ("Content-Encoding", "gzip");
    let tiny_invalid_lines = vec!["1"; 1000].join("\n");
    let segment_call = |extra: &str| {
        format!(r#"{{"userId":"u","properties":{{"p":"{padding}"}},"traits":{{"t":"x"}}{extra}}}"#)
    };
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<u8>,
        Vec<(&'a str, &'a str)>,
        &'a [u16],
    );
    let cases: Vec<Case> = vec![
        (
            "/v1/batch",
            "segment batch, 200 KB shared context, 1000 calls",
            segment_batch.clone().into_bytes(),
            vec![json],
            &[413],
        ),
        (
            "/v1/batch",
            "the same, gzipped (bounded by its inflated size)",
            gzip(segment_batch.as_bytes()),
            vec![json, gzip_encoding],
            &[413],
        ),
        (
            "/v1/events/batch",
            "1000 invalid 1-byte events (dead letters)",
            tiny_invalid.clone().into_bytes(),
            vec![json],
            &[400],
        ),
        (
            "/v1/events/batch",
            "1000 invalid 1-byte NDJSON lines (dead letters)",
            tiny_invalid_lines.into_bytes(),
            vec![ndjson],
            &[400],
        ),
        (
            "/v1/events/batch",
            "1000 valid events",
            native_batch.clone().into_bytes(),
            vec![json],
            &[202],
        ),
        (
            "/v1/events",
            "one 400 KB event",
            big_event.clone().into_bytes(),
            vec![json],
            &[202],
        ),
        (
            "/v1/track",
            "segment call, 400 KB property",
            big_call.clone().into_bytes(),
            vec![json],
            &[200],
        ),
        (
            "/v1/identify",
            "segment call, 400 KB property",
            segment_call("").into_bytes(),
            vec![json],
            &[200],
        ),
        (
            "/v1/page",
            "segment call, 400 KB property",
            segment_call("").into_bytes(),
            vec![json],
            &[200],
        ),
        (
            "/v1/screen",
            "segment call, 400 KB property",
            segment_call("").into_bytes(),
            vec![json],
            &[200],
        ),
        (
            "/v1/group",
            "segment call, 400 KB property",
            segment_call(r#","groupId":"g""#).into_bytes(),
            vec![json],
            &[200],
        ),
        (
            "/v1/alias",
            "segment call, 400 KB property",
            segment_call(r#","previousId":"p""#).into_bytes(),
            vec![json],
            &[200],
        ),
    ];
    println!("| route | input | body bytes | status | peak RSS growth (MiB) | server CPU (ms) |");
    for (route, input, body, headers, expected) in cases {
        let before = peak_rss_bytes(sluice.pid());
        let cpu_before = sluice.cpu_time();
        let mut all = vec![("X-CS-API-Key", KEY)];
        all.extend(headers);
        let response = sluice.post(route, &all, &body);
        let grown_mib = (peak_rss_bytes(sluice.pid()) - before) as f64 / (1 << 20) as f64;
        let cpu_ms = (sluice.cpu_time() - cpu_before).as_secs_f64() * 1000.0;
        println!(
            "| {route} | {input} | {} | {} | {grown_mib:.1} | {cpu_ms:.0} |",
            body.len(),
            response.status
        );
        assert!(
            expected.contains(&response.status),
            "{route} {input}: {} {}",
            response.status,
            response.text()
        );
        if response.status == 413 {
            assert_eq!(response.code(), "payload_too_large");
            assert!(
                response.text().contains("4 bytes per byte sent"),
                "{}",
                response.text()
            );
            assert!(response.header("Retry-After").is_none(), "permanent");
        }
        // Far below 4 x body + 1 KiB per event, plus buffers: the peak
        // must not scale with what an amplifying request asks for.
        assert!(
            grown_mib < 40.0,
            "{route} {input}: peak RSS grew {grown_mib:.1} MiB"
        );
    }
}

// Hole 5: a hung PostgreSQL (connection open, server stopped) blocked the
// key loader forever with `sluice_api_keys_postgres_up` still 1 and no
// warn line; and a fixed 30 s statement_timeout overrode the URL's.
#[test]
fn hole5_a_hung_postgres_is_reported_down_and_the_urls_statement_timeout_holds() {
    use common::services::{time_until, Postgres};
    let broker = Broker::start();
    let mut postgres = Postgres::start();
    postgres.insert_key("cs_pg_hole5", "tenant_pg", "", "");
    let start = |url: String| {
        Sluice::start(Options {
            brokers: Some(broker.address.clone()),
            env: vec![("SLUICE_AUTH_POSTGRES_URL".into(), url)],
            ..Default::default()
        })
    };
    let mut sluice = start(postgres.url());
    sluice.wait_ready(200, Duration::from_secs(30));
    assert_eq!(sluice.metric("sluice_api_keys_postgres_up"), 1.0);
    postgres.hang();
    // The heartbeat (every 5 s) finds it within its 5 s deadline.
    let found = time_until(Duration::from_secs(20), || {
        sluice.metric("sluice_api_keys_postgres_up") == 0.0
    });
    println!("hung PostgreSQL reported down after {found:?}");
    assert!(
        found.is_some(),
        "postgres_up stayed 1 while PostgreSQL hung"
    );
    wait_until("the stall's warn line", Duration::from_secs(5), || {
        sluice.logs().contains("PostgreSQL stalled")
    });
    // The last snapshot keeps serving.
    let response = sluice.post(
        "/v1/events",
        &[
            ("X-CS-API-Key", "cs_pg_hole5"),
            ("Content-Type", "application/json"),
        ],
        event("hole5_user", "").as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
    postgres.resume();
    let back = time_until(Duration::from_secs(30), || {
        sluice.metric("sluice_api_keys_postgres_up") == 1.0
    });
    assert!(back.is_some(), "not back up after PostgreSQL resumed");
    // A shutdown is not held by a stalled PostgreSQL either.
    postgres.hang();
    sluice.signal(libc::SIGTERM);
    let exited = sluice.wait_exit(Duration::from_secs(15));
    assert_eq!(exited, Some(0), "shutdown with PostgreSQL hung");
    postgres.resume();

    // The URL's statement_timeout is the one in force: a load that takes
    // 3 s (the table behind a slow view) fails at the URL's 1 s.
    postgres.psql(
        "ALTER TABLE api_keys RENAME TO api_keys_data; \
         CREATE VIEW api_keys AS SELECT d.* FROM api_keys_data d, pg_sleep(3)",
    );
    let sluice = start(format!(
        "{}?options=-c%20statement_timeout%3D1000",
        postgres.url()
    ));
    let refused = time_until(Duration::from_secs(15), || {
        sluice
            .logs()
            .contains("canceling statement due to statement timeout")
    });
    assert!(
        refused.is_some(),
        "the URL's statement_timeout was not in force: {}",
        sluice.logs()
    );
    assert_eq!(sluice.get("/readyz").status, 503);
}

// Hole 6: PostgreSQL TLS did not follow libpq's sslmode: with none, sluice
// insisted on a verified certificate (a self-signed one failed where
// psql's default `prefer` connects), and verify-ca, verify-full and
// sslrootcert were refused.
#[test]
fn hole6_postgres_tls_follows_libpq_sslmode() {
    use common::secure::Certificates;
    use common::services::{time_until, Postgres};
    let broker = Broker::start();
    let mut postgres = Postgres::start();
    let dir = TempDir::new("pg-tls");
    let certificates = Certificates::make(&dir.0, "pg");
    let stranger = Certificates::make(&dir.0, "other");
    postgres.enable_tls(&certificates.server_certificate, &certificates.server_key);
    postgres.insert_key("cs_pg_tls", "tenant_pg", "", "");
    let ca = certificates.ca.display().to_string();
    let other_ca = stranger.ca.display().to_string();
    let tls_sessions = || {
        postgres.psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'sluice' AND s.ssl",
        )
    };
    for (query, connects, encrypted) in [
        ("", true, true),
        ("?sslmode=prefer", true, true),
        ("?sslmode=require", true, true),
        (
            &format!("?sslmode=verify-ca&sslrootcert={ca}") as &str,
            true,
            true,
        ),
        (
            &format!("?sslmode=verify-full&sslrootcert={ca}"),
            true,
            true,
        ),
        ("?sslmode=disable", true, false),
        (
            &format!("?sslmode=verify-ca&sslrootcert={other_ca}"),
            false,
            false,
        ),
        (
            &format!("?sslmode=verify-full&sslrootcert={other_ca}"),
            false,
            false,
        ),
        (
            &format!("?sslmode=require&sslrootcert={other_ca}"),
            false,
            false,
        ),
    ] {
        let mut sluice = Sluice::start(Options {
            brokers: Some(broker.address.clone()),
            env: vec![(
                "SLUICE_AUTH_POSTGRES_URL".into(),
                format!("{}{query}", postgres.url()),
            )],
            ..Default::default()
        });
        if connects {
            sluice.wait_ready(200, Duration::from_secs(30));
            let response = sluice.post(
                "/v1/events",
                &[
                    ("X-CS-API-Key", "cs_pg_tls"),
                    ("Content-Type", "application/json"),
                ],
                event("hole6_user", "").as_bytes(),
            );
            assert_eq!(response.status, 202, "{query}: {}", response.text());
            let sessions: u32 = tls_sessions().parse().unwrap();
            assert_eq!(sessions > 0, encrypted, "{query}: TLS sessions {sessions}");
        } else {
            let refused = time_until(Duration::from_secs(15), || {
                sluice.logs().contains("certificate verify failed")
            });
            assert!(refused.is_some(), "{query}: {}", sluice.logs());
            assert_eq!(sluice.get("/readyz").status, 503, "{query}");
        }
        sluice.signal(libc::SIGTERM);
        assert_eq!(
            sluice.wait_exit(Duration::from_secs(20)),
            Some(0),
            "{query}"
        );
        // Its session is gone before the next case counts TLS sessions.
        wait_until("the session to end", Duration::from_secs(10), || {
            postgres.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice'")
                == "0"
        });
    }
}

// Hole 11: with Kafka down, librdkafka's "brokers are down" and each
// connection error were logged on every reconnect attempt: 460 lines in
// 20 s, about 80,000 an hour of outage.
#[test]
fn hole11_a_kafka_outage_is_logged_once_per_change() {
    const WINDOW: Duration = Duration::from_secs(15);
    let dead_port = free_port();
    let sluice = Sluice::start(Options {
        brokers: Some(format!("127.0.0.1:{dead_port}")),
        env: vec![("RUST_LOG".into(), "info".into())],
        ..Default::default()
    });
    let kafka_lines = || {
        sluice
            .logs()
            .lines()
            .filter(|line| line.contains("librdkafka") || line.contains("kafka delivery failed"))
            .count()
    };
    wait_until("the outage's first line", Duration::from_secs(10), || {
        kafka_lines() > 0
    });
    std::thread::sleep(WINDOW);
    let lines = kafka_lines();
    println!("Kafka down for {WINDOW:?}: {lines} lines from Kafka clients");
    assert_eq!(sluice.get("/readyz").status, 503);
    // A handful of kinds (the connection refused, all brokers down), each
    // once: not one per reconnect attempt.
    assert!(
        lines <= 8,
        "{lines} lines in {WINDOW:?}:\n{}",
        sluice.logs()
    );
}

/// `calls=` of one command in Redis's `INFO commandstats`.
fn redis_calls(connection: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(connection)
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

// Hole 12: fleet limits. A new key's first burst was admitted by every
// instance (N x burst); each sync sent one script call per active key
// (6,000 keys took the whole 100 ms interval); the two Redis keys per API
// key shared no hash tag (CROSSSLOT on Redis Cluster).
#[test]
fn hole12_fleet_limits_bound_the_first_burst_and_sync_in_few_calls() {
    use common::services::{time_until, Redis};
    const FRESH_KEY: &str = "cs_fleet_fresh";
    const BURST: u64 = 90;
    const BULK_KEYS: usize = 1_200;
    let broker = Broker::start();
    let redis_server = Redis::start();
    let mut keys = format!(
        "{}\n[[keys]]\nkey = \"{FRESH_KEY}\"\ntenant_id = \"fleet\"\nrate_events_per_sec = 1\nburst_events = {BURST}\n",
        keys_file_text()
    );
    for index in 0..BULK_KEYS {
        keys.push_str(&format!(
            "\n[[keys]]\nkey = \"cs_fleet_bulk_{index}\"\ntenant_id = \"fleet\"\nrate_events_per_sec = 1000\n"
        ));
    }
    let sluices: Vec<Sluice> = (0..3)
        .map(|_| {
            Sluice::start(Options {
                brokers: Some(broker.address.clone()),
                keys: keys.clone(),
                env: vec![
                    ("SLUICE_LIMITS_REDIS_URL".into(), redis_server.url()),
                    ("SLUICE_LIMITS_REDIS_SYNC_INTERVAL_MS".into(), "250".into()),
                ],
                ..Default::default()
            })
        })
        .collect();
    for sluice in &sluices {
        sluice.wait_ready(200, Duration::from_secs(30));
    }
    // The instances find each other through Redis.
    let counted = time_until(Duration::from_secs(20), || {
        sluices
            .iter()
            .all(|s| s.metric("sluice_rate_limit_redis_instances") == 3.0)
    });
    assert!(counted.is_some(), "the instances did not count each other");
    println!("instances counted after {counted:?}");

    // 1. A fresh key driven on all three at once: about one burst in all.
    let batch = |instance: usize, round: usize| {
        let events: Vec<String> = (0..10)
            .map(|i| event(&format!("fresh_{instance}_{round}_{i}"), ""))
            .collect();
        sluices[instance].post(
            "/v1/events/batch",
            &[
                ("X-CS-API-Key", FRESH_KEY),
                ("Content-Type", "application/json"),
            ],
            format!(r#"{{"events":[{}]}}"#, events.join(",")).as_bytes(),
        )
    };
    let mut admitted = 0;
    for round in 0..9 {
        for instance in 0..3 {
            if batch(instance, round).status == 202 {
                admitted += 10;
            }
        }
    }
    println!("a fresh key with a burst of {BURST}: {admitted} events admitted by three instances");
    // Each instance has a third of the burst as its allowance before its
    // first lease; leases come from the fleet's schedule in Redis, which
    // hears of the others' allowances only when they sync: at most one
    // burst of leases plus the allowances, burst x (2N - 1) / N = 150 for
    // N = 3, where it was N x burst = 270.
    assert!(
        admitted <= BURST * 5 / 3,
        "{admitted} admitted for a burst of {BURST}"
    );

    // 2. Many active keys: a sync is a few script calls, not one per key.
    let mut connection = redis::Client::open(redis_server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    // Pipelined, so that all of them are sent within a moment (each key
    // stays in the exchange for 10 s after its last use).
    let mut stream = sluices[0].connect();
    let mut requests = Vec::new();
    for index in 0..BULK_KEYS {
        let body = event(&format!("bulk_{index}"), "");
        requests.extend_from_slice(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: cs_fleet_bulk_{index}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write as _;
            stream.write_all(&requests).unwrap();
        })
    };
    for _ in 0..BULK_KEYS {
        assert_eq!(read_response(&mut stream).unwrap().status, 202);
    }
    writer.join().unwrap();
    let syncs = || -> f64 {
        sluices
            .iter()
            .map(|s| s.metric("sluice_rate_limit_redis_syncs_total"))
            .sum()
    };
    let (calls_before, syncs_before) = (redis_calls(&mut connection, "evalsha"), syncs());
    std::thread::sleep(Duration::from_secs(2));
    let calls = redis_calls(&mut connection, "evalsha") - calls_before;
    let synced = syncs() - syncs_before;
    let synced_keys = sluices[0].metric("sluice_rate_limit_redis_keys_synced");
    println!("{synced_keys} keys synced: {calls} script calls in {synced} syncs");
    assert!(synced_keys >= BULK_KEYS as f64, "the bulk keys are active");
    assert!(
        (calls as f64) <= 3.0 * synced,
        "{calls} script calls in {synced} syncs"
    );

    // 3. Every Redis key of the state shares one hash tag (one slot).
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("sluice:*")
        .query(&mut connection)
        .unwrap();
    assert!(!names.is_empty());
    for name in &names {
        assert!(
            name.starts_with("sluice:{rl}:"),
            "{name} has no shared hash tag"
        );
    }
}
