//! A Kafka broker that requires SASL_SSL, built from real parts: Tansu
//! with sqlite storage (which keeps SCRAM credentials, unlike its memory
//! storage) and `--authentication`, behind stunnel4 terminating TLS with a
//! certificate from a test CA made with the openssl CLI. The broker
//! advertises stunnel's port, so every connection goes through TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, output_within, wait_for_port, TempDir, DLQ_TOPIC, PARTITIONS, TOPIC};

/// The most any set-up command (openssl, tansu) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub const SASL_USER: &str = "ingest";
pub const SASL_PASSWORD: &str = "scram-Pw-4c1d-never-logged";

/// The sqlite-capable Tansu.
fn persistent_tansu() -> PathBuf {
    super::installed_binary(
        "SLUICE_TANSU_PERSISTENT_BIN",
        "sluice/tansu-cargo/bin/tansu",
        "scripts/install-broker --persistent",
    )
}

fn run(command: &mut Command, what: &str) {
    let output = output_within(command, COMMAND_TIMEOUT);
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_certificate: PathBuf,
    pub server_key: PathBuf,
}

impl Certificates {
    pub fn make(dir: &Path, name: &str) -> Certificates {
        let path = |file: &str| dir.join(format!("{name}-{file}"));
        let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
        let (certificate, key, request) =
            (path("server.pem"), path("server.key"), path("server.csr"));
        let extensions = path("san.cnf");
        std::fs::write(&extensions, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", &format!("/CN=sluice test CA {name}")])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca),
            "openssl CA",
        );
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&request),
            "openssl server key",
        );
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(&request)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(&certificate),
            "openssl sign",
        );
        Certificates {
            ca,
            server_certificate: certificate,
            server_key: key,
        }
    }
}

/// Tansu (SASL, SCRAM-SHA-256) behind stunnel (TLS).
pub struct SecureBroker {
    broker: Child,
    stunnel: Child,
    /// The TLS address clients bootstrap from.
    pub address: String,
    pub certificates: Certificates,
    pub dir: TempDir,
}

impl SecureBroker {
    pub fn start() -> SecureBroker {
        let dir = TempDir::new("secure-broker");
        let certificates = Certificates::make(&dir.0, "broker");
        let tansu = persistent_tansu();
        let (plain_port, tls_port) = (free_port(), free_port());
        let plain = format!("tcp://127.0.0.1:{plain_port}");
        // Set-up, unauthenticated: the user and the topics go into sqlite.
        let mut setup = Self::tansu(&tansu, &dir.0, plain_port, plain_port, false);
        wait_for_port(&format!("127.0.0.1:{plain_port}"), Duration::from_secs(20));
        run(
            Command::new(&tansu)
                .args([
                    "user",
                    "create",
                    SASL_USER,
                    SASL_PASSWORD,
                    "--mechanism",
                    "scram256",
                ])
                .args(["--broker", &plain]),
            "tansu user create",
        );
        for topic in [TOPIC, DLQ_TOPIC] {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let created = output_within(
                    Command::new(&tansu)
                        .args(["topic", "create", topic, "--partitions"])
                        .arg(PARTITIONS.to_string())
                        .args(["--broker", &plain]),
                    COMMAND_TIMEOUT,
                );
                if created.status.success() {
                    break;
                }
                assert!(Instant::now() < deadline, "creating {topic}: {created:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = setup.kill();
        let _ = setup.wait();
        // Serving: authentication required, stunnel's port advertised.
        let broker = Self::tansu(&tansu, &dir.0, plain_port, tls_port, true);
        wait_for_port(&format!("127.0.0.1:{plain_port}"), Duration::from_secs(20));
        let config = dir.file(
            "stunnel.conf",
            &format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{plain_port}\ncert = {}\nkey = {}\n",
                certificates.server_certificate.display(),
                certificates.server_key.display()
            ),
        );
        let stunnel = Command::new("stunnel4")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting stunnel4 (scripts/install-test-tools installs it)");
        let address = format!("127.0.0.1:{tls_port}");
        wait_for_port(&address, Duration::from_secs(20));
        SecureBroker {
            broker,
            stunnel,
            address,
            certificates,
            dir,
        }
    }

    fn tansu(tansu: &Path, dir: &Path, port: u16, advertised: u16, authentication: bool) -> Child {
        let mut command = Command::new(tansu);
        command
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
            ])
            // The sqlite path is relative to the working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if authentication {
            command.arg("--authentication");
        }
        command.spawn().expect("starting the sqlite tansu")
    }

    /// Client properties for a SASL_SSL login as `password`, trusting `ca`.
    pub fn client_properties<'a>(
        &'a self,
        password: &'a str,
        ca: &'a Path,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", SASL_USER),
            ("sasl.password", password),
            ("ssl.ca.location", ca.to_str().unwrap()),
        ]
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
        let _ = self.broker.kill();
        let _ = self.broker.wait();
    }
}
