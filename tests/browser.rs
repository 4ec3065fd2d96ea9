//! Browsers, for real (SPEC §11): Debian's headless Chromium loads a page
//! from another origin that sends events with fetch() (key in a header,
//! CORS preflight) and navigator.sendBeacon() (key in the query); with a
//! real broker:
//! - from an allowed origin every event lands in Kafka;
//! - from a disallowed origin the browser's own CORS check refuses the
//!   fetch() calls, and sluice refuses the beacons (403), so none lands.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::services::time_until;
use common::*;

/// The page server for one origin.
struct PageServer {
    child: Child,
    port: u16,
    results: std::path::PathBuf,
}

impl PageServer {
    fn start(dir: &TempDir, name: &str) -> PageServer {
        let port = free_port();
        let results = dir.0.join(format!("{name}.json"));
        let child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/browser/serve.py"
            ))
            .arg(port.to_string())
            .arg(&results)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(10));
        PageServer {
            child,
            port,
            results,
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium on `url`, killed on drop.
struct Browser(Child);

impl Browser {
    fn open(profile: &Path, url: &str) -> Browser {
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium is not installed: run scripts/install-test-tools");
        Browser(child)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn page_results(server: &PageServer) -> serde_json::Value {
    assert!(
        time_until(Duration::from_secs(30), || server.results.exists()).is_some(),
        "the page reported nothing within 30 s"
    );
    serde_json::from_slice(&std::fs::read(&server.results).unwrap()).unwrap()
}

#[test]
fn pages_send_with_fetch_and_beacon_from_allowed_origins_only() {
    let broker = Broker::start();
    let dir = TempDir::new("browser");
    let allowed = PageServer::start(&dir, "allowed");
    let disallowed = PageServer::start(&dir, "disallowed");
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        env: vec![
            ("SLUICE_CORS_ALLOWED_ORIGINS".into(), allowed.origin()),
            ("SLUICE_AUTH_QUERY_KEY".into(), "true".into()),
        ],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let tag = format!("browser_{}", now_ms());
    let page = |server: &PageServer, who: &str| {
        format!(
            "{}/page.html?sluice=http://{}&key={KEY}&tag={tag}_{who}",
            server.origin(),
            sluice.address
        )
    };

    // A disallowed origin first: whatever it got through would be in
    // Kafka before the allowed page's events.
    {
        let _browser = Browser::open(&dir.0.join("profile-disallowed"), &page(&disallowed, "no"));
        let results = page_results(&disallowed);
        println!("disallowed origin: {results}");
        for call in ["fetch_single", "fetch_batch"] {
            assert_eq!(
                results[call], "refused: TypeError",
                "the browser's CORS check refuses {call}: {results}"
            );
        }
        wait_until(
            "sluice to refuse both beacons",
            Duration::from_secs(15),
            || {
                sluice.metric("sluice_http_requests_total{route=\"/v1/events\",status=\"403\"}")
                    >= 1.0
                    && sluice.metric(
                        "sluice_http_requests_total{route=\"/v1/events/batch\",status=\"403\"}",
                    ) >= 1.0
            },
        );
    }

    let _browser = Browser::open(&dir.0.join("profile-allowed"), &page(&allowed, "yes"));
    let results = page_results(&allowed);
    println!("allowed origin: {results}");
    assert_eq!(results["fetch_single"], 202, "{results}");
    assert!(
        results["fetch_single_request_id"].is_string(),
        "exposed header: {results}"
    );
    assert_eq!(results["fetch_batch"], 202, "{results}");
    assert_eq!(results["fetch_batch_body"]["accepted"], 2, "{results}");
    assert_eq!(results["beacon_single"], true, "{results}");
    assert_eq!(results["beacon_batch"], true, "{results}");

    let wanted: Vec<String> = [
        "fetch_single",
        "fetch_batch_1",
        "fetch_batch_2",
        "beacon_single",
        "beacon_batch_1",
        "beacon_batch_2",
    ]
    .iter()
    .map(|name| format!("{tag}_yes_{name}"))
    .collect();
    let records = consume_until(&broker.address, TOPIC, Duration::from_secs(30), |records| {
        wanted
            .iter()
            .all(|user| records.iter().any(|r| r.value["user_id"] == user.as_str()))
    });
    for user in &wanted {
        assert!(
            records.iter().any(|r| r.value["user_id"] == user.as_str()),
            "{user} is not in Kafka"
        );
    }
    let leaked: Vec<&Consumed> = records
        .iter()
        .filter(|r| {
            r.value["user_id"]
                .as_str()
                .is_some_and(|user| user.starts_with(&format!("{tag}_no_")))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "events from the disallowed origin: {leaked:?}"
    );
    // The key never reaches the logs, though it travelled in URLs.
    assert!(!sluice.logs().contains(KEY), "the key is in the logs");
}

#[test]
fn preflight_and_cors_headers_over_raw_http() {
    let sluice = Sluice::start(Options {
        env: vec![(
            "SLUICE_CORS_ALLOWED_ORIGINS".into(),
            "https://app.example.com, https://other.example.com".into(),
        )],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let preflight = |origin: &str| {
        sluice.raw(
            format!(
                "OPTIONS /v1/events HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: x-cs-api-key, content-type\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let allowed = preflight("https://app.example.com");
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(allowed.header("vary"), Some("Origin"));
    assert_eq!(
        allowed.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    let headers = allowed.header("access-control-allow-headers").unwrap();
    for wanted in [
        "X-CS-API-Key",
        "Authorization",
        "Content-Type",
        "Content-Encoding",
    ] {
        assert!(headers.contains(wanted), "{headers}");
    }
    assert_eq!(allowed.header("access-control-max-age"), Some("600"));
    assert_eq!(
        allowed.header("content-length"),
        None,
        "a 204 has no length"
    );
    // The second origin of the comma-separated list is allowed too.
    assert_eq!(
        preflight("https://other.example.com").header("access-control-allow-origin"),
        Some("https://other.example.com")
    );

    let refused = preflight("https://evil.example.com");
    assert_eq!(refused.status, 204);
    assert!(
        refused
            .headers
            .iter()
            .all(|(name, _)| !name.to_ascii_lowercase().starts_with("access-control-")),
        "no CORS headers for another origin: {:?}",
        refused.headers
    );

    // Actual responses carry the origin and expose the retry headers.
    let event = event("cors_user", "");
    let posted = sluice.post(
        "/v1/events",
        &[
            ("X-CS-API-Key", KEY),
            ("Content-Type", "application/json"),
            ("Origin", "https://app.example.com"),
        ],
        event.as_bytes(),
    );
    assert_eq!(posted.status, 202);
    assert_eq!(
        posted.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(posted
        .header("access-control-expose-headers")
        .unwrap()
        .contains("Retry-After"));

    // The query key is off by default: a beacon's key is not read.
    let beacon = sluice.post(
        &format!("/v1/events?api_key={KEY}"),
        &[("Content-Type", "text/plain;charset=UTF-8")],
        event.as_bytes(),
    );
    assert_eq!(beacon.status, 401, "{}", beacon.text());
}
