//! CPU placement: `server.cpus` pins the event loops, `kafka.producer_cpus`
//! the producer threads and librdkafka's, and without either the default
//! core count follows the CPUs the process may use (taskset, cpusets).

mod common;

use std::time::Duration;

use common::*;

/// This machine's CPUs as the test process sees them.
fn cpus_here() -> Vec<usize> {
    sluice::cpus::allowed_cpus()
}

#[test]
fn server_cpus_pins_the_event_loop() {
    let cpus = cpus_here();
    let target = *cpus.last().unwrap();
    // A real broker: with --dev, the mock cluster's own librdkafka threads
    // would be in the process too.
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: format!(
            "[server]\ncpus = \"{target}\"\n[kafka]\nproducer_cpus = \"{}\"\n",
            cpus[0]
        ),
        cores: 1,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    let threads = sluice.thread_cpus();
    let find = |prefix: &str| -> Vec<&(String, String)> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .collect()
    };
    let loops = find("sluice-core-");
    assert_eq!(loops.len(), 1, "{threads:?}");
    assert_eq!(
        loops[0].1,
        target.to_string(),
        "event loop CPUs: {threads:?}"
    );
    let producers = find("sluice-produce");
    assert_eq!(producers.len(), 1, "{threads:?}");
    assert_eq!(
        producers[0].1,
        cpus[0].to_string(),
        "producer CPUs: {threads:?}"
    );
    let librdkafka = find("rdk:");
    assert!(!librdkafka.is_empty(), "{threads:?}");
    for (name, allowed) in librdkafka {
        assert_eq!(allowed, &cpus[0].to_string(), "{name} CPUs: {threads:?}");
    }
    // It serves, pinned.
    let body = event(&format!("pinned_{}", now_ms()), "");
    assert_eq!(sluice.post_json("/v1/events", &body).status, 202);
}

#[test]
fn default_core_count_follows_the_affinity_mask() {
    let cpus = cpus_here();
    let only = vec![*cpus.last().unwrap()];
    let sluice = Sluice::start(Options {
        affinity: Some(only.clone()),
        // 0: one event loop per CPU the process may use.
        cores: 0,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let ready_line = sluice
        .logs()
        .lines()
        .find(|line| line.contains("sluice ready"))
        .unwrap()
        .to_string();
    assert!(ready_line.contains("cores=1"), "{ready_line}");
    let loops: Vec<_> = sluice
        .thread_cpus()
        .into_iter()
        .filter(|(name, _)| name.starts_with("sluice-core-"))
        .collect();
    assert_eq!(
        loops,
        vec![("sluice-core-0".to_string(), only[0].to_string())]
    );
}

#[test]
fn bad_cpu_lists_stop_start_up_naming_the_key() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--dev", "--listen", "127.0.0.1:0"])
        .env("SLUICE_SERVER_CPUS", "3-1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("server.cpus"), "{said}");
}
