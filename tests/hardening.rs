//! Regression tests for the holes a hostile-client review found (issue
//! "Hardening: bound every byte and every wait a client controls"). Each
//! test is named after the hole it closes and fails on the code before
//! the fix; the closing note of the issue says how each failed.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;

/// Reads one response head (up to the blank line) and returns it as text;
/// the body, if any, is left in the socket.
fn read_head_only(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(_) => head.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn valid_event() -> String {
    event(&format!("hardening_{}", now_ms()), "")
}

fn single_event_request(body: &str) -> String {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

// Hole 1: a chunked body of 1-byte chunks, each with a chunk extension just
// under the line cap, used to be buffered raw: 256 MiB grew RSS by over
// 500 MiB with no answer until the 30 s body deadline.
#[test]
fn hole1_chunk_framing_is_bounded_in_raw_bytes() {
    let sluice = Sluice::dev("");
    let rss_before = rss_bytes(sluice.pid());
    let mut stream = sluice.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let written = written.clone();
        let chunk = format!("1;ext={}\r\na\r\n", "x".repeat(1000));
        std::thread::spawn(move || {
            let mut pieces = Vec::new();
            for _ in 0..64 {
                pieces.extend_from_slice(chunk.as_bytes());
            }
            while written.load(Ordering::Relaxed) < 64 * MIB {
                if stream.write_all(&pieces).is_err() {
                    break;
                }
                written.fetch_add(pieces.len(), Ordering::Relaxed);
            }
        })
    };
    let response = read_response(&mut stream).expect("an answer before the body deadline");
    let written_at_answer = written.load(Ordering::Relaxed);
    let rss_growth = rss_bytes(sluice.pid()).saturating_sub(rss_before);
    println!(
        "answered {} after {} bytes written by the client; RSS +{} bytes",
        response.status, written_at_answer, rss_growth
    );
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.code(), "payload_too_large");
    assert!(
        written_at_answer < 24 * MIB,
        "the server read {written_at_answer} bytes of framing before answering"
    );
    assert!(is_closed(&mut stream, Duration::from_secs(3)));
    writer.join().unwrap();
    assert!(
        rss_growth < 32 * MIB as u64,
        "RSS grew by {rss_growth} bytes for one request"
    );
}

/// Sends a head announcing a 4 MiB body (by length or chunked) with no key,
/// then 512 KiB of it; returns the answer and whether the connection closed.
fn unauthenticated_upload(sluice: &Sluice, chunked: bool) -> (Response, bool) {
    let mut stream = sluice.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", 4 * MIB)
    };
    stream
        .write_all(format!("POST /v1/events HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n").as_bytes())
        .unwrap();
    let piece = if chunked {
        let mut piece = format!("{:x}\r\n", 64 * 1024).into_bytes();
        piece.extend_from_slice(&[b'a'; 64 * 1024]);
        piece.extend_from_slice(b"\r\n");
        piece
    } else {
        vec![b'a'; 64 * 1024]
    };
    for _ in 0..8 {
        if stream.write_all(&piece).is_err() {
            break;
        }
    }
    let response = read_response(&mut stream).expect("an answer within 5 s, body unread");
    let closed = is_closed(&mut stream, Duration::from_secs(3));
    (response, closed)
}

// Hole 2: a request refused by its head alone (here 401) used to have its
// whole body read first, and its connection kept; a chunked one was read
// to the body limit and answered 413.
#[test]
fn hole2_refused_requests_do_not_read_their_bodies() {
    let sluice = Sluice::dev("");
    for chunked in [false, true] {
        let (response, closed) = unauthenticated_upload(&sluice, chunked);
        assert_eq!(
            response.status,
            401,
            "chunked={chunked}: {}",
            response.text()
        );
        assert_eq!(response.header("Connection"), Some("close"));
        assert!(closed, "chunked={chunked}: the connection stayed open");
    }
    // A small refused request whose body is already in hand keeps its
    // connection: the next request on it is served.
    let mut stream = sluice.connect();
    let body = valid_event();
    let refused = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(refused.as_bytes()).unwrap();
    stream
        .write_all(single_event_request(&valid_event()).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 401);
    assert_eq!(read_response(&mut stream).unwrap().status, 202);

    // 100 such uploads at once: their bodies are not buffered.
    let rss_before = rss_bytes(sluice.pid());
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), sluice.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid) as usize, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let address = sluice.address;
    let uploads: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let head = format!(
                    "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    4 * MIB
                );
                let _ = stream.write_all(head.as_bytes());
                let piece = vec![b'a'; 256 * 1024];
                for _ in 0..16 {
                    if stream.write_all(&piece).is_err() {
                        break;
                    }
                }
                read_response(&mut stream).map(|response| response.status)
            })
        })
        .collect();
    let statuses: Vec<Option<u16>> = uploads.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth = (peak.load(Ordering::Relaxed) as u64).saturating_sub(rss_before);
    println!("100 refused 4 MiB uploads: RSS peak +{growth} bytes; statuses {statuses:?}");
    // A client still writing when the server closes may see a reset before
    // it reads the 401; none may be answered anything else.
    assert!(statuses.iter().flatten().all(|&status| status == 401));
    assert!(growth < 64 * MIB as u64, "RSS grew by {growth} bytes");
}

// Hole 3: a client that pipelines requests and never reads the answers used
// to hold its connection and buffers forever.
#[test]
fn hole3_a_client_that_never_reads_is_closed_at_the_write_timeout() {
    let sluice = Sluice::dev("[server]\nwrite_timeout_ms = 1000\n");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&sluice.address.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(256);
    let started = Instant::now();
    let mut sent = 0usize;
    // Writes stall once the server stops reading (its answers are stuck),
    // then fail once it has closed the connection.
    let outcome = loop {
        match stream.write(&request) {
            Ok(bytes) => sent += bytes,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(error) => break error,
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server never closed a client that does not read ({sent} bytes sent)"
        );
    };
    println!(
        "closed after {:?} and {sent} bytes: {outcome}",
        started.elapsed()
    );
    wait_until("write timeout counted", Duration::from_secs(5), || {
        sluice.metric("sluice_write_timeouts_total") >= 1.0
    });
    // Only the scrape's own connection is left.
    wait_until("connection freed", Duration::from_secs(5), || {
        sluice.metric("sluice_connections") <= 1.0
    });
}

// Hole 3, the other side: a client that sends slowly but reads is not a
// stalled reader. Its answer's write deadline counts from when the body
// arrived, not from when the request started.
#[test]
fn hole3_a_slow_body_longer_than_the_write_timeout_is_answered() {
    // Enqueued: the answer follows the body at once, with no wait on Kafka
    // in between.
    let sluice = Sluice::dev("[server]\nwrite_timeout_ms = 1000\nack_mode = \"enqueued\"\n");
    let mut stream = sluice.connect();
    let body = valid_event();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The body over 2 s: twice the write timeout.
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(body.len() / 4 + 1).collect();
    for piece in pieces {
        std::thread::sleep(Duration::from_millis(500));
        stream.write_all(piece).unwrap();
    }
    let response = read_response(&mut stream).expect("an answer to a slow body");
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(sluice.metric("sluice_write_timeouts_total"), 0.0);
}

// Hole 4: HEAD error responses carried a body, which corrupted the next
// response on the connection.
#[test]
fn hole4_no_response_to_head_has_a_body() {
    let sluice = Sluice::dev("");
    let mut stream = sluice.connect();
    for target in ["/nope", "/v1/events", "/healthz", "/readyz", "/metrics"] {
        stream
            .write_all(format!("HEAD {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let head = read_head_only(&mut stream);
        assert!(head.starts_with("HTTP/1.1 "), "HEAD {target}: {head:?}");
        // The next response must start right after the head.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let next = read_response(&mut stream).expect("a response after HEAD");
        assert_eq!(next.status, 200, "after HEAD {target}");
        assert_eq!(next.json()["status"], "ok");
    }
}

// Hole 5: pipelined durable requests were answered in one burst after the
// last one's delivery, not each as soon as it was ready.
#[test]
fn hole5_pipelined_answers_go_out_as_each_is_ready() {
    // A long linger makes each delivery take about 400 ms.
    let sluice = Sluice::dev("[kafka]\nlinger_ms = 400\n");
    let mut stream = sluice.connect();
    let mut pipeline = String::new();
    for _ in 0..3 {
        pipeline.push_str(&single_event_request(&valid_event()));
    }
    let sent = Instant::now();
    stream.write_all(pipeline.as_bytes()).unwrap();
    let arrivals: Vec<Duration> = (0..3)
        .map(|_| {
            let response = read_response(&mut stream).unwrap();
            assert_eq!(response.status, 202, "{}", response.text());
            sent.elapsed()
        })
        .collect();
    println!("answers arrived at {arrivals:?}");
    assert!(
        arrivals[2] - arrivals[0] >= Duration::from_millis(500),
        "the first answer waited for the later requests: {arrivals:?}"
    );
}

// Hole 6: more than 256 cores was guarded only by a debug assertion when
// the count came from the machine (server.cores = 0).
#[test]
fn hole6_more_cores_than_a_report_can_address_are_refused() {
    use sluice::server::core_count;
    assert_eq!(core_count(0, 8).unwrap(), 8);
    assert_eq!(core_count(3, 8).unwrap(), 3);
    assert_eq!(core_count(0, 256).unwrap(), 256);
    let error = core_count(0, 300).unwrap_err().to_string();
    assert!(error.contains("server.cores"), "{error}");
    assert!(core_count(257, 8).is_err());
}

// Hole 7a: a connection with a half-sent head kept the process alive
// through shutdown.
#[test]
fn hole7_a_half_sent_head_does_not_hold_shutdown() {
    let mut sluice =
        Sluice::dev("[server]\ndrain_timeout_ms = 4000\nheader_read_timeout_ms = 30000\n");
    let mut stream = sluice.connect();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-")
        .unwrap();
    // The server has the partial head once the connection is counted.
    wait_until("connection registered", Duration::from_secs(5), || {
        sluice.metric("sluice_connections") >= 2.0
    });
    let signalled = Instant::now();
    sluice.signal(libc::SIGTERM);
    let code = sluice.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    println!("exit {code:?} after {took:?}");
    assert_eq!(code, Some(0));
    assert!(
        took < Duration::from_secs(2),
        "shutdown waited {took:?} on a connection holding no request"
    );
    assert!(is_closed(&mut stream, Duration::from_secs(1)));
}

/// The harness probes Kafka every 200 ms; these tests need a probe that
/// does not run again while they hold the broker stopped.
fn once_a_minute_probe() -> Vec<(String, String)> {
    vec![("SLUICE_KAFKA_HEALTH_INTERVAL_MS".into(), "60000".into())]
}

// Hole 7b: shutdown could take twice the drain timeout (cores drained for
// it, then producers flushed for it again).
//
// The readiness probe runs once a minute here: at the harness's 200 ms it
// sees the hung broker within 0.7 s and later requests are refused 503 at once
// (as they should be), so on a loaded CI machine the stuck requests never
// got in flight and the test failed waiting for them. The pause after
// SIGSTOP, longer than such a probe round, keeps that case in the test.
#[test]
fn hole7_shutdown_is_bounded_by_the_drain_timeout() {
    let broker = Broker::start();
    let mut sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: "[server]\ndrain_timeout_ms = 2000\ndelivery_timeout_ms = 30000\n".into(),
        env: once_a_minute_probe(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    assert_eq!(sluice.post_json("/v1/events", &valid_event()).status, 202);
    broker.hang();
    std::thread::sleep(Duration::from_millis(2_500));
    // Requests stuck waiting on the hung broker.
    let address = sluice.address;
    let stuck: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                stream
                    .write_all(single_event_request(&valid_event()).as_bytes())
                    .unwrap();
                read_response(&mut stream).map(|response| response.status)
            })
        })
        .collect();
    wait_until("requests in flight", Duration::from_secs(5), || {
        sluice.metric("sluice_inflight_requests") >= 4.0
    });
    let signalled = Instant::now();
    sluice.signal(libc::SIGTERM);
    let code = sluice.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    println!("exit {code:?} after {took:?}");
    assert!(code.is_some(), "still running after 15 s");
    assert!(
        took <= Duration::from_millis(3_000),
        "shutdown took {took:?}, more than drain_timeout (2 s) + 1 s"
    );
    for thread in stuck {
        // Answered 503 at the drain deadline, or cut when the process ended.
        assert_ne!(thread.join().unwrap(), Some(202));
    }
}

// A readiness probe waiting on a hung broker held shutdown for as long as
// the probe interval (its metadata timeout was the interval): with
// health_interval_ms = 60000, a minute past the drain deadline.
#[test]
fn hole7_a_probe_on_a_hung_broker_does_not_hold_shutdown() {
    let broker = Broker::start();
    broker.hang();
    let mut sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: "[server]\ndrain_timeout_ms = 1000\n".into(),
        env: once_a_minute_probe(),
        ..Default::default()
    });
    sluice.wait_ready(503, Duration::from_secs(20));
    // Long enough for the first probe to be waiting on the broker.
    std::thread::sleep(Duration::from_millis(1_000));
    let signalled = Instant::now();
    sluice.signal(libc::SIGTERM);
    let status = sluice.wait_status(Duration::from_secs(30));
    let took = signalled.elapsed();
    broker.signal(libc::SIGCONT);
    println!("exit {status:?} after {took:?}");
    assert!(status.is_some(), "still running 30 s after SIGTERM");
    assert!(
        took <= Duration::from_secs(5),
        "shutdown took {took:?} with the probe waiting on a hung broker"
    );
}

// Hole 7c: a panic on a core thread left a process that listened with a
// dead core.
#[test]
fn hole7_a_panic_on_a_core_aborts_the_process() {
    let mut sluice = Sluice::start(Options {
        env: vec![("SLUICE_DEBUG_PANIC_TARGET".into(), "/debug/panic".into())],
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let mut stream = sluice.connect();
    stream
        .write_all(b"GET /debug/panic HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let status = sluice.wait_status(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.and_then(|status| status.signal()),
        Some(libc::SIGABRT),
        "the process did not abort after a core panicked: {status:?}"
    );
}

// Hole 8: a full completion queue would drop a delivery report and leak its
// in-flight slot. The table is now built against its queue, so it cannot
// have more records outstanding than the queue holds.
#[test]
fn hole8_completion_queue_fits_the_inflight_cap() {
    use sluice::handoff::{Completion, Mailbox, Opaque};
    use sluice::metrics::CoreMetrics;
    use sluice::server::inflight::Inflight;

    let too_small = Mailbox::new(99);
    assert!(Inflight::new(0, 10, 100, 1 << 20, &too_small, None, None).is_err());

    let metrics = CoreMetrics::default();
    let mailbox = Mailbox::new(100);
    let mut inflight = Inflight::new(0, 10, 100, 1 << 20, &mailbox, None, None).unwrap();
    // Exactly at the cap: 10 requests of 10 records, every report queued
    // before the core applies any.
    let tickets: Vec<_> = (0..10)
        .map(|_| inflight.reserve(10, 10, Instant::now(), &metrics).unwrap())
        .collect();
    assert!(
        inflight.reserve(1, 1, Instant::now(), &metrics).is_err(),
        "over the cap"
    );
    for ticket in &tickets {
        inflight.detach(*ticket, &metrics);
        for _ in 0..10 {
            let queued =
                mailbox.complete(Completion::produced(Opaque::new(*ticket, 0, false), true));
            assert!(queued, "a report found the completion queue full");
        }
    }
    while let Some(completion) = mailbox.next_completion() {
        inflight.complete(completion, Instant::now(), 0, &metrics);
    }
    assert_eq!(inflight.requests(), 0, "a slot leaked");
    inflight.reserve(100, 10, Instant::now(), &metrics).unwrap();
}

// Hole 9: HTTP details of RFC 9110/9112.
#[test]
fn hole9_host_absolute_form_expect_and_date() {
    let sluice = Sluice::dev("");
    let no_host = sluice.raw(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(no_host.status, 400);
    let two_hosts = sluice.raw(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(two_hosts.status, 400);
    let http10 = sluice.raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(http10.status, 200, "HTTP/1.0 may omit Host");

    let body = valid_event();
    let absolute = format!(
        "POST http://{}/v1/events HTTP/1.1\r\nHost: {}\r\nX-CS-API-Key: {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        sluice.address,
        sluice.address,
        body.len()
    );
    let response = sluice.raw(absolute.as_bytes());
    assert_eq!(response.status, 202, "{}", response.text());

    let expect = sluice.raw(
        b"POST /v1/events HTTP/1.1\r\nHost: t\r\nExpect: something-else\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(expect.status, 417);

    for response in [
        &no_host,
        &http10,
        &response,
        &expect,
        &sluice.get("/metrics"),
    ] {
        let date = response.header("Date").expect("a Date header");
        let now = now_ms() / 1000;
        let near: Vec<[u8; 29]> = (now - 2..=now + 2).map(sluice::clock::http_date).collect();
        assert!(
            near.iter().any(|candidate| candidate == date.as_bytes()),
            "Date {date:?} is not the current time"
        );
    }
}

// Hole 9: a head arriving in small pieces was parsed from byte 0 on every
// read: quadratic time. The scanner looks at each byte once.
#[test]
fn hole9_head_scanning_is_linear() {
    use sluice::http::request::{HeadScanner, Parsed};
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n".to_vec();
    while head.len() < 256 * 1024 {
        head.extend_from_slice(b"X-Filler: abcdefghijklmnopqrstuvwxyz0123456789\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let mut scanner = HeadScanner::default();
    let mut buffer = Vec::with_capacity(head.len());
    let mut complete = false;
    for piece in head.chunks(16) {
        buffer.extend_from_slice(piece);
        // The header count is over httparse's limit: the outcome is an
        // error, but only once the whole head is there.
        match scanner.parse(&buffer, 1 << 20) {
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Complete(_)) | Err(_) => {
                complete = true;
                break;
            }
        }
    }
    let took = started.elapsed();
    println!("256 KiB head in 16-byte pieces scanned in {took:?}");
    assert!(complete && buffer.len() == head.len());
    // Re-parsing from byte 0 on each of 16,384 reads scans 2 GiB.
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

// Hole 10: logging from the event loops wrote synchronously to stderr, so
// a log pipe nobody reads stalled ingestion.
#[test]
fn hole10_a_stalled_log_pipe_does_not_stall_ingestion() {
    let sluice = Sluice::dev(
        "[server]\nerror_logs_per_second_max = 1000000\nerror_log_bytes_per_second_max = 1073741824\n",
    );
    sluice.logs_paused.store(true, Ordering::Relaxed);
    // Each refused request logs a line: far more than the pipe and the log
    // queue (16,384 lines) hold together.
    let mut stream = sluice.connect();
    let refused = "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100);
    for _ in 0..250 {
        stream.write_all(refused.as_bytes()).unwrap();
        for _ in 0..100 {
            assert_eq!(read_response(&mut stream).expect("an answer").status, 404);
        }
    }
    let started = Instant::now();
    for _ in 0..20 {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream
            .write_all(single_event_request(&valid_event()).as_bytes())
            .unwrap();
        let response = read_response(&mut stream).expect("ingestion stalled on the log pipe");
        assert_eq!(response.status, 202);
    }
    println!(
        "20 events accepted in {:?} with the log pipe full",
        started.elapsed()
    );
    let dropped = sluice.metric("sluice_log_lines_dropped_total");
    sluice.logs_paused.store(false, Ordering::Relaxed);
    println!("log lines dropped: {dropped}");
    assert!(dropped > 0.0, "nothing was dropped, so nothing was stalled");
}

// Hole 10: produce and delivery errors were logged at debug only.
#[test]
fn hole10_delivery_failures_are_logged_with_the_error_name() {
    let broker = Broker::start();
    let sluice = Sluice::start(Options {
        brokers: Some(broker.address.clone()),
        extra_config: "[server]\ndelivery_timeout_ms = 1500\n[kafka]\nmessage_timeout_ms = 1500\n"
            .into(),
        // A probe seeing the hung broker first would refuse the request
        // before it was produced, and no delivery would fail (as in hole 7b).
        env: once_a_minute_probe(),
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(20));
    assert_eq!(sluice.post_json("/v1/events", &valid_event()).status, 202);
    broker.hang();
    let response = sluice.post_json("/v1/events", &valid_event());
    assert_eq!(response.status, 503);
    wait_until(
        "a delivery failure warning",
        Duration::from_secs(10),
        || {
            sluice.logs().lines().any(|line| {
                line.contains("WARN")
                    && line.contains("kafka delivery failed")
                    && line.contains("MessageTimedOut")
            })
        },
    );
    broker.signal(libc::SIGCONT);
}

// Hole 11: /readyz flipped to 503 for a second after any single shed request.
#[test]
fn hole11_readiness_ignores_a_lone_shed_but_not_sustained_overload() {
    let sluice = Sluice::start(Options {
        extra_config: "[kafka]\nlinger_ms = 300\n[limits]\ninflight_requests_per_core_max = 1\n"
            .into(),
        cores: 1,
        ..Default::default()
    });
    sluice.wait_ready(200, Duration::from_secs(10));
    let busy = Arc::new(AtomicBool::new(true));
    // One client keeps the core's only in-flight slot taken.
    let holder = {
        let (busy, address) = (busy.clone(), sluice.address);
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            while busy.load(Ordering::Relaxed) {
                stream
                    .write_all(single_event_request(&valid_event()).as_bytes())
                    .unwrap();
                read_response(&mut stream).unwrap();
            }
        })
    };
    let shed_once = || {
        wait_until("a request shed", Duration::from_secs(5), || {
            sluice.post_json("/v1/events", &valid_event()).status == 503
        })
    };
    shed_once();
    assert_eq!(
        sluice.get("/readyz").status,
        200,
        "one shed request made the instance unready"
    );

    // Shedding for 3.5 s without a pause is overload.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3_500) {
        shed_once();
    }
    let readyz = sluice.get("/readyz");
    assert_eq!(readyz.status, 503, "sustained shedding: {}", readyz.text());
    assert!(readyz.text().contains("shedding"));
    busy.store(false, Ordering::Relaxed);
    holder.join().unwrap();
    sluice.wait_ready(200, Duration::from_secs(5));
}
