//! Real PostgreSQL, Redis and HAProxy for the tests, from Debian's packages
//! (`scripts/install-test-tools` installs them), each on a free loopback
//! port in a scratch directory, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, output_within, wait_for_port, TempDir};

/// The PostgreSQL server programs: Debian keeps them out of PATH.
fn postgres_bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|version| version.join("bin").join(program))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL's {program} is not installed: run scripts/install-test-tools")
        })
}

fn is_root() -> bool {
    // SAFETY: geteuid only reads the process's credentials.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL cluster with sluice's migrations applied.
pub struct Postgres {
    pub dir: TempDir,
    pub port: u16,
    running: bool,
    /// Processes stopped by `hang`, continued by `resume` or on drop.
    hung: Vec<i32>,
    /// Server options beyond the harness's own (TLS).
    extra_options: String,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = TempDir::new("postgres");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0)
                .status()
                .unwrap();
            assert!(status.success(), "chown of the PostgreSQL directory");
        }
        let data = dir.0.join("data");
        let output = output_within(
            as_postgres(&postgres_bin("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]),
            Duration::from_secs(120),
        );
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut postgres = Postgres {
            dir,
            port: free_port(),
            running: false,
            hung: Vec::new(),
            extra_options: String::new(),
        };
        postgres.start_again();
        let migrate = output_within(
            Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/migrate"))
                .arg(postgres.url()),
            Duration::from_secs(60),
        );
        assert!(
            migrate.status.success(),
            "scripts/migrate: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// Starts the (stopped) server again, on the same port.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port,
            self.dir.0.display(),
            self.extra_options
        );
        let output = output_within(
            as_postgres(&postgres_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "60", "-l"])
                .arg(self.dir.0.join("server.log"))
                .args(["-o", &options, "start"]),
            Duration::from_secs(90),
        );
        assert!(
            output.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&output.stdout),
            std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
        );
        self.running = true;
    }

    /// Restarts the server with TLS on, using `certificate` and `key`
    /// (copied into its directory, owned by the server's user, as
    /// PostgreSQL requires of a key file).
    pub fn enable_tls(&mut self, certificate: &Path, key: &Path) {
        let (certificate_copy, key_copy) =
            (self.dir.0.join("server.crt"), self.dir.0.join("server.key"));
        std::fs::copy(certificate, &certificate_copy).unwrap();
        std::fs::copy(key, &key_copy).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&certificate_copy)
                .arg(&key_copy)
                .status()
                .unwrap();
            assert!(status.success(), "chown of the TLS files");
        }
        self.extra_options = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            certificate_copy.display(),
            key_copy.display()
        );
        self.stop();
        self.start_again();
    }

    /// Stops the server (fast: connections are ended at once).
    pub fn stop(&mut self) {
        let output = output_within(
            as_postgres(&postgres_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "60", "-m", "fast", "stop"]),
            Duration::from_secs(90),
        );
        assert!(output.status.success(), "pg_ctl stop");
        self.running = false;
    }

    /// The URL sluice and psql use.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL with psql; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let output = output_within(
            Command::new("psql").arg(self.url()).args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]),
            Duration::from_secs(30),
        );
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The server's processes: the postmaster and its children (the
    /// backends serving connections among them).
    pub fn pids(&self) -> Vec<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let postmaster: i32 = text.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let parent = stat
                .rfind(')')
                .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
                .and_then(|field| field.parse::<i32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Stops every process of the server (SIGSTOP): connections stay open
    /// and the kernel still acknowledges what is sent, but nothing answers.
    pub fn hang(&mut self) {
        self.hung = self.pids();
        for pid in &self.hung {
            // SAFETY: kill(2) on processes of our own server.
            unsafe { libc::kill(*pid, libc::SIGSTOP) };
        }
        super::wait_until("PostgreSQL stopped", Duration::from_secs(5), || {
            self.hung.iter().all(|pid| super::all_threads_stopped(*pid))
        });
    }

    /// Lets a hung server go on (SIGCONT).
    pub fn resume(&mut self) {
        for pid in self.hung.drain(..) {
            // SAFETY: as in `hang`.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }

    /// Inserts a key as another tool would: its SHA-256, never the key.
    pub fn insert_key(&self, key: &str, tenant: &str, extra_columns: &str, extra_values: &str) {
        self.psql(&format!(
            "INSERT INTO api_keys (key_sha256, key_prefix, tenant_id{extra_columns}) \
             VALUES (sha256('{key}'::bytea), left('{key}', 8), '{tenant}'{extra_values})"
        ));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.resume();
        if self.running {
            let _ = as_postgres(&postgres_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A redis-server with no persistence.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    _dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = TempDir::new("redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/install-test-tools");
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(20));
        Redis {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy balancing HTTP round-robin over `backends`.
pub struct Haproxy {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Haproxy {
    pub fn start(backends: &[std::net::SocketAddr]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let mut config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-request 10s\n\
             frontend sluice\n  bind 127.0.0.1:{port}\n  default_backend sluices\n\
             backend sluices\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n"
        );
        for (index, backend) in backends.iter().enumerate() {
            config.push_str(&format!(
                "  server sluice{index} {backend} check inter 500 fall 2 rise 1\n"
            ));
        }
        let path = dir.file("haproxy.cfg", &config);
        Haproxy::run(&path, port, dir)
    }

    /// Runs HAProxy with the configuration at `path`, which listens on
    /// `port`; `dir` (which holds the file) lives as long as it.
    pub fn run(path: &std::path::Path, port: u16, dir: TempDir) -> Haproxy {
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is not installed: run scripts/install-test-tools");
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(20));
        Haproxy {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn address(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `timeout` for `condition`, returning how long it took.
pub fn time_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
