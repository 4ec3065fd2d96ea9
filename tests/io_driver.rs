//! `server.io_driver = "epoll"` serves the same HTTP as the default
//! io_uring driver: single and pipelined requests, timeouts, events into
//! Kafka (librdkafka's mock cluster here; the driver is HTTP-side only).

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::*;

#[test]
fn the_epoll_driver_serves_requests_and_deadlines() {
    let sluice = Sluice::dev("[server]\nio_driver = \"epoll\"\nidle_timeout_ms = 500\n");
    let body = event(&format!("epoll_{}", now_ms()), "");
    assert_eq!(sluice.post_json("/v1/events", &body).status, 202);
    let mut stream = sluice.connect();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.repeat(3).as_bytes()).unwrap();
    for _ in 0..3 {
        assert_eq!(read_response(&mut stream).unwrap().status, 202);
    }
    // The idle deadline holds under this driver too.
    assert!(is_closed(&mut stream, Duration::from_secs(3)));
    assert!(
        sluice.logs().contains("io_driver = \"epoll\""),
        "{}",
        sluice.logs()
    );
}
