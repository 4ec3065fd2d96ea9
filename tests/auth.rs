//! API keys over real HTTP: every way to present a key, every way to be
//! refused, and hot reloads (SIGHUP, file change, broken file).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn dev() -> Sluice {
    let sluice = Sluice::start(Options::default());
    sluice.wait_ready(200, Duration::from_secs(10));
    sluice
}

fn post_with(sluice: &Sluice, headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    sluice.post("/v1/events", &all, event("auth_user", "").as_bytes())
}

fn status_with_key(sluice: &Sluice, key: &str) -> u16 {
    post_with(sluice, &[("X-CS-API-Key", key)]).status
}

/// Polls until a request with `key` gets `status` (reloads are asynchronous).
fn eventually(sluice: &Sluice, key: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_with_key(sluice, key) != status {
        assert!(
            Instant::now() < deadline,
            "key {key} never got {status}; logs:\n{}",
            sluice.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn plain_hashed_bearer_missing_unknown_and_disabled_keys() {
    let sluice = dev();
    assert_eq!(post_with(&sluice, &[("X-CS-API-Key", KEY)]).status, 202);
    // key_sha256 of "password" is in the test keys file.
    assert_eq!(
        post_with(&sluice, &[("X-CS-API-Key", "password")]).status,
        202
    );
    assert_eq!(
        post_with(&sluice, &[("Authorization", &format!("Bearer {KEY}"))]).status,
        202
    );
    let response = post_with(&sluice, &[]);
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "missing_api_key")
    );
    // Basic auth carries a key as its user name (Segment's convention):
    // "user:pass" presents the unknown key "user".
    let response = post_with(&sluice, &[("Authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "invalid_api_key")
    );
    let basic = format!("Basic {}", "Y3NfbGl2ZV90ZXN0X2tleV8xOg==");
    assert_eq!(post_with(&sluice, &[("Authorization", &basic)]).status, 202);
    let response = post_with(&sluice, &[("Authorization", "Basic Og==")]);
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "missing_api_key")
    );
    let response = post_with(&sluice, &[("X-CS-API-Key", "cs_unknown")]);
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "invalid_api_key")
    );
    let response = post_with(&sluice, &[("X-CS-API-Key", "cs_disabled")]);
    assert_eq!(
        (response.status, response.code().as_str()),
        (401, "invalid_api_key")
    );
    let response = post_with(&sluice, &[("X-CS-API-Key", &KEY[..KEY.len() - 1])]);
    assert_eq!(response.status, 401, "a key prefix was accepted");
}

#[test]
fn file_change_reloads_and_broken_file_keeps_the_old_snapshot() {
    let sluice = dev();
    let keys = sluice.dir.0.join("keys.toml");
    assert_eq!(status_with_key(&sluice, "cs_new_key"), 401);

    let with_new = format!(
        "{}\n[[keys]]\nkey = \"cs_new_key\"\ntenant_id = \"tenant_new\"\n",
        keys_file_text()
    );
    std::fs::write(&keys, &with_new).unwrap();
    eventually(&sluice, "cs_new_key", 202);

    std::fs::write(&keys, "[[keys]]\nkey = \"half written\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sluice.logs().contains("API keys reload failed") {
        assert!(
            Instant::now() < deadline,
            "broken file not reported:\n{}",
            sluice.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The reload's error names the file, line and column on one line (it
    // used to be TOML's caret diagram escaped into one string).
    let logs = sluice.logs();
    let failed = logs
        .lines()
        .find(|line| line.contains("API keys reload failed"))
        .unwrap();
    assert!(
        failed.contains("keys.toml:2:20: invalid basic string"),
        "{failed}"
    );
    assert!(!failed.contains("\\n"), "{failed}");
    assert_eq!(
        status_with_key(&sluice, "cs_new_key"),
        202,
        "a broken file dropped the old keys"
    );
    assert_eq!(status_with_key(&sluice, KEY), 202);

    // Removing a key takes effect too.
    std::fs::write(&keys, keys_file_text()).unwrap();
    eventually(&sluice, "cs_new_key", 401);
}

#[test]
fn sighup_reloads() {
    // A long poll interval, so only SIGHUP can explain a prompt reload.
    let sluice = Sluice::start(Options {
        env: vec![("SLUICE_AUTH_RELOAD_INTERVAL_MS".into(), "600000".into())],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let keys = sluice.dir.0.join("keys.toml");
    let text = format!(
        "{}\n[[keys]]\nkey = \"cs_hup\"\ntenant_id = \"tenant_hup\"\n",
        keys_file_text()
    );
    std::fs::write(&keys, text).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status_with_key(&sluice, "cs_hup"),
        401,
        "reloaded without SIGHUP"
    );
    sluice.signal(libc::SIGHUP);
    eventually(&sluice, "cs_hup", 202);
    assert!(sluice.logs().contains("SIGHUP"), "{}", sluice.logs());
}

/// A connection remembers the key it presented, to skip hashing it again;
/// a reload that removes the key must still refuse it on that connection.
#[test]
fn a_removed_key_is_refused_on_a_connection_that_used_it() {
    use std::io::Write as _;
    let sluice = dev();
    let keys = sluice.dir.0.join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "{}\n[[keys]]\nkey = \"cs_kept_alive\"\ntenant_id = \"tenant_k\"\n",
            keys_file_text()
        ),
    )
    .unwrap();
    eventually(&sluice, "cs_kept_alive", 202);
    let mut stream = sluice.connect();
    let send = |stream: &mut std::net::TcpStream| {
        let body = event("kept_alive_user", "");
        let request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: cs_kept_alive\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        read_response(stream).expect("a response").status
    };
    assert_eq!(send(&mut stream), 202);
    assert_eq!(send(&mut stream), 202, "the remembered key");
    std::fs::write(&keys, keys_file_text()).unwrap();
    wait_until(
        "the removed key refused on the same connection",
        Duration::from_secs(5),
        || send(&mut stream) == 401,
    );
}
