//! A sluice process started from a command the test builds (a wrapper
//! such as strace, a seccomp filter, its own flags), its stderr collected,
//! and the address from its ready line; killed on drop.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::common::{read_response, Response};

/// A started server.
pub struct Process {
    pub child: Child,
    pub address: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `command` (stderr piped) and waits for its ready line.
    pub fn start(command: &mut Command) -> Process {
        let mut child = command
            .env("RUST_LOG", "info,librdkafka=off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sluice");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready, address) = std::sync::mpsc::channel();
        let collected = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("sluice ready") {
                    let found = line
                        .split("address=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .or_else(|| line.split("\"address\":\"").nth(1)?.split('"').next());
                    let _ = ready.send(found.map(str::to_string));
                }
                let mut logs = collected.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let address = address
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("sluice did not become ready:\n{}", logs.lock().unwrap()));
        Process {
            child,
            address: address.parse().unwrap(),
            logs,
        }
    }

    /// Sends `request` on a new connection; its response.
    pub fn request(&self, request: &str) -> Response {
        let mut stream = TcpStream::connect(self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        read_response(&mut stream).expect("a response")
    }

    /// GETs `path` on a connection of its own.
    pub fn get(&self, path: &str) -> Response {
        self.request(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ))
    }

    /// POSTs one event with `key`, on a connection of its own.
    pub fn post_event(&self, key: &str, body: &str) -> Response {
        self.request(&format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
