//! Slow and idle clients cannot take the server from the others: slowloris
//! heads and slow bodies are cut at their deadlines, idle keep-alive
//! connections are closed at theirs, 10,000 idle connections do not starve
//! active ones, and connections beyond the per-core cap get 503 and close.
//! Runs with `--dev`: these are HTTP tests.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const HEADER_TIMEOUT: Duration = Duration::from_millis(1_500);
const BODY_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Sends `bytes` one byte per second, as a slowloris client does, until the
/// server answers or closes. Returns the answer (if any) and the time from
/// the first byte to it.
fn trickle(address: SocketAddr, preamble: &[u8], bytes: &[u8]) -> (Option<Response>, Duration) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(preamble).unwrap();
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    for byte in bytes {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        let mut probe = [0u8; 1];
        match stream.peek(&mut probe) {
            Ok(_) => break,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let response = read_response(&mut stream);
    if response.is_some() {
        assert!(
            is_closed(&mut stream, Duration::from_secs(2)),
            "left open after {response:?}"
        );
    }
    (response, elapsed)
}

/// The active clients beside the slow or idle ones: every request
/// accepted, enough of them, none slow.
fn assert_served_well(outcomes: Vec<Outcome>) {
    let slowest = outcomes.iter().map(|o| o.latency).max().unwrap();
    eprintln!("active requests: {}, slowest {slowest:?}", outcomes.len());
    assert!(
        outcomes.iter().all(|o| o.status == 202),
        "an active request failed"
    );
    assert!(
        outcomes.len() > 100,
        "only {} active requests",
        outcomes.len()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "an active request took {slowest:?}"
    );
}

#[test]
fn slowloris_and_slow_bodies_are_cut_while_others_are_served() {
    let sluice = Sluice::dev(&format!(
        "[server]\nheader_read_timeout_ms = {}\nbody_read_timeout_ms = {}\n",
        HEADER_TIMEOUT.as_millis(),
        BODY_TIMEOUT.as_millis()
    ));
    let load = Load::start(sluice.address, 4, "busy");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    );
    let mut slow = Vec::new();
    for index in 0..20 {
        let address = sluice.address;
        let head = head.clone();
        slow.push(std::thread::spawn(move || {
            let (deadline, outcome) = if index % 2 == 0 {
                (HEADER_TIMEOUT, trickle(address, b"", head.as_bytes()))
            } else {
                (
                    BODY_TIMEOUT,
                    trickle(address, head.as_bytes(), &[b' '; 200]),
                )
            };
            (deadline, outcome)
        }));
    }
    for thread in slow {
        let (deadline, (response, elapsed)) = thread.join().unwrap();
        let response = response.expect("a slow client gets an answer before the close");
        assert_eq!(response.status, 408, "{}", response.text());
        assert!(
            elapsed + Duration::from_millis(100) >= deadline
                && elapsed < deadline + Duration::from_secs(2),
            "cut after {elapsed:?}, deadline {deadline:?}"
        );
    }
    assert_served_well(load.finish());
}

#[test]
fn idle_keep_alive_connections_are_closed_at_their_deadline() {
    let sluice = Sluice::dev("[server]\nidle_timeout_ms = 400\n");
    let mut idle = sluice.connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    let started = Instant::now();
    assert!(
        is_closed(&mut idle, Duration::from_secs(3)),
        "idle connection not closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "closed early"
    );
    assert_eq!(sluice.get("/healthz").status, 200);
}

fn open_connections(sluice: &Sluice) -> u64 {
    sluice
        .get("/metrics")
        .text()
        .lines()
        .filter(|line| line.starts_with("sluice_connections{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn ten_thousand_idle_connections_do_not_starve_active_ones() {
    const IDLE: usize = 10_000;
    let limit = raise_open_files_limit();
    assert!(
        limit > IDLE as u64 + 1_000,
        "open-files hard limit {limit} is too low for this test"
    );
    let sluice = Sluice::dev("");
    let rss_before = rss_bytes(sluice.pid());
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(sluice.address).expect("connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_connections(&sluice) < IDLE as u64 {
        assert!(
            Instant::now() < deadline,
            "only {} accepted",
            open_connections(&sluice)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_idle = rss_bytes(sluice.pid());
    eprintln!(
        "{IDLE} idle connections: rss {} -> {} KiB, {} bytes each",
        rss_before / 1024,
        rss_idle / 1024,
        rss_idle.saturating_sub(rss_before) / IDLE as u64
    );

    let load = Load::start(sluice.address, 4, "active");
    std::thread::sleep(Duration::from_secs(2));
    assert_served_well(load.finish());

    // The idle ones were kept, not dropped: a sample of them is still served.
    for stream in idle.iter_mut().step_by(IDLE / 20) {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(stream).map(|r| r.status), Some(200));
    }
    // Bounded: well under 16 KiB per idle connection (a read buffer each).
    assert!(
        rss_idle < rss_before + (IDLE as u64) * 16 * 1024,
        "rss {rss_before} -> {rss_idle}"
    );
}

/// Polls the parked-connections gauge until it reads `expected`.
fn wait_parked(sluice: &Sluice, expected: f64, within: Duration) {
    wait_until(&format!("{expected} parked connections"), within, || {
        sluice.metric("sluice_connections_parked") == expected
    });
}

/// A keep-alive connection quiet past the park time gives back even its
/// small read buffer (it is counted as parked, waiting on readiness with
/// no read posted), and is served as before when it speaks again. Requests
/// sent around the moment of parking, whole or in two pieces, lose no
/// byte: the cancelled read's bytes are kept.
#[test]
fn quiet_connections_park_and_are_served_when_they_speak() {
    const CONNECTIONS: usize = 40;
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let sluice = Sluice::dev("");
    let mut connections: Vec<TcpStream> = (0..CONNECTIONS).map(|_| sluice.connect()).collect();
    for stream in &mut connections {
        stream.write_all(REQUEST).unwrap();
        assert_eq!(read_response(stream).map(|r| r.status), Some(200));
    }
    wait_parked(&sluice, CONNECTIONS as f64, Duration::from_secs(10));
    for stream in &mut connections {
        stream.write_all(REQUEST).unwrap();
        assert_eq!(read_response(stream).map(|r| r.status), Some(200));
    }
    // Around the park time (250 ms after the answer), in steps of 1 ms,
    // and split so that the first piece may land in the cancelled read.
    let (head, tail) = REQUEST.split_at(7);
    std::thread::scope(|scope| {
        for (index, stream) in connections.iter_mut().enumerate() {
            scope.spawn(move || {
                for round in 0..3 {
                    stream.write_all(REQUEST).unwrap();
                    assert_eq!(read_response(stream).map(|r| r.status), Some(200));
                    let delay = 230 + ((index + round * 13) % CONNECTIONS) as u64;
                    std::thread::sleep(Duration::from_millis(delay));
                    stream.write_all(head).unwrap();
                    std::thread::sleep(Duration::from_millis(index as u64 % 3));
                    stream.write_all(tail).unwrap();
                    assert_eq!(
                        read_response(stream).map(|r| r.status),
                        Some(200),
                        "connection {index}, round {round}"
                    );
                }
            });
        }
    });
    wait_parked(&sluice, CONNECTIONS as f64, Duration::from_secs(10));
    drop(connections);
    wait_parked(&sluice, 0.0, Duration::from_secs(10));
}

#[test]
fn connections_beyond_the_cap_get_503_and_close() {
    // The cap is per core: one core, so every connection counts against it.
    let sluice = Sluice::start(Options {
        extra_config: "[server]\nconnections_per_core_max = 2\n".into(),
        cores: 1,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let mut first = sluice.connect();
    let mut second = sluice.connect();
    // Both are registered once both are served.
    for stream in [&mut first, &mut second] {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(stream).unwrap().status, 200);
    }
    for _ in 0..3 {
        let mut beyond = sluice.connect();
        let response = read_response(&mut beyond).expect("a 503 before close");
        assert_eq!(response.status, 503);
        assert_eq!(response.code(), "unavailable");
        assert!(response.header("Retry-After").is_some());
        assert!(is_closed(&mut beyond, Duration::from_secs(2)));
    }
    // The connections within the cap are served all along.
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut first).unwrap().status, 200);
    // A freed place is taken by the next client.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = sluice.connect();
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut status = [0u8; 12];
        next.read_exact(&mut status).unwrap();
        if &status[9..12] == b"200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Past the process's open-files limit the kernel still completes TCP
/// handshakes, but accept fails. Every client must still get an answer:
/// 200 while descriptors last, then 503 + close (from the descriptor the
/// server keeps in reserve), never silence in the backlog.
#[test]
fn clients_past_the_open_files_limit_get_503_not_silence() {
    let sluice = Sluice::start(Options {
        open_files_max: Some(96),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let mut served = Vec::new();
    let mut refused = 0;
    for index in 0..150 {
        let mut stream = sluice.connect();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let response =
            read_response(&mut stream).unwrap_or_else(|| panic!("client {index} got no answer"));
        match response.status {
            200 => served.push(stream),
            503 => {
                assert!(response.header("Retry-After").is_some());
                // A clean close (FIN), not a reset that could have
                // destroyed the 503 before it was read.
                let mut probe = [0u8; 64];
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let read = stream.read(&mut probe);
                assert!(matches!(read, Ok(0)), "client {index}: {read:?}");
                refused += 1;
            }
            other => panic!("client {index}: {other}"),
        }
    }
    eprintln!("served {}, refused {refused}", served.len());
    assert!(refused > 0, "the limit was never reached");
    assert!(served.len() > 20, "only {} served", served.len());
    // Descriptors freed are descriptors reused.
    drop(served);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sluice.get("/healthz").status != 200 {
        assert!(
            Instant::now() < deadline,
            "not served after the others left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
