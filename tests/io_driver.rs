//! `server.io_driver = "epoll"` serves the same HTTP as the default
//! io_uring driver: single and pipelined requests, timeouts, events into
//! Kafka (librdkafka's mock cluster here; the driver is HTTP-side only).
//! Either way `sluice_io_driver` and a start-up line say which runs
//! (tests/seccomp.rs: epoll when a seccomp profile refuses io_uring).

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
    // The loop really runs on epoll: an epoll descriptor and no io_uring.
    assert_eq!(descriptors(&sluice, "[io_uring]"), 0);
    assert!(descriptors(&sluice, "[eventpoll]") >= 1);
    // And says so.
    assert_eq!(driver_in_use(&sluice), "epoll");
    assert!(sluice
        .logs()
        .contains("I/O driver: epoll (server.io_driver)"));
}

#[test]
fn the_default_driver_is_io_uring_where_the_kernel_has_it() {
    let sluice = Sluice::dev("");
    let body = event(&format!("uring_{}", now_ms()), "");
    assert_eq!(sluice.post_json("/v1/events", &body).status, 202);
    // Where io_uring is unavailable the driver falls back to epoll; where
    // it is, the loop holds an io_uring descriptor.
    if io_uring_available() {
        assert!(descriptors(&sluice, "[io_uring]") >= 1);
        assert_eq!(driver_in_use(&sluice), "io_uring");
    } else {
        assert_eq!(driver_in_use(&sluice), "epoll");
    }
}

/// The driver `sluice_io_driver` says the loops run on (the series at 1).
fn driver_in_use(sluice: &Sluice) -> String {
    let scrape = sluice.get("/metrics").text();
    let in_use: Vec<&str> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("sluice_io_driver{driver=\""))
        .filter_map(|rest| rest.strip_suffix("\"} 1"))
        .collect();
    assert_eq!(in_use.len(), 1, "{scrape}");
    in_use[0].to_string()
}

/// Descriptors of the server process whose link names `kind`
/// (`anon_inode:[io_uring]`, `anon_inode:[eventpoll]`).
fn descriptors(sluice: &Sluice, kind: &str) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", sluice.pid()))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains(kind))
        .count()
}

/// Whether this kernel lets a process create an io_uring.
fn io_uring_available() -> bool {
    // SAFETY: io_uring_setup with one entry and zeroed parameters (120
    // bytes, the size of struct io_uring_params); the descriptor it may
    // return is closed at once.
    unsafe {
        let mut params = [0u8; 120];
        let fd = libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr());
        if fd >= 0 {
            libc::close(fd as i32);
        }
        fd >= 0
    }
}
