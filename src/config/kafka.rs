//! `[kafka]`: brokers, topics, producer tuning, security and secrets
//! (masked wherever the configuration is shown).

use crate::secret::Secret;
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// Debug is written by hand: it must mask secret properties.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers.
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    /// Dedicated producer threads (each owns one librdkafka producer).
    pub producer_threads: usize,
    /// CPUs for the producer threads (thread N pinned to the N-th CPU of
    /// the list) and librdkafka's own threads (the whole list), e.g. `4-5`;
    /// empty: not pinned.
    pub producer_cpus: String,
    pub linger_ms: u64,
    /// librdkafka `batch.size`.
    pub batch_bytes: usize,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// How long librdkafka keeps retrying a record (`message.timeout.ms`),
    /// through leader elections and short outages; at least
    /// `server.delivery_timeout_ms`. In-flight slots are held until then.
    pub message_timeout_ms: u64,
    /// librdkafka `partitioner`: `murmur2_random` (the default) places a
    /// key on the partition Java clients and Kafka Streams choose.
    pub partitioner: String,
    /// Request batches queued between the cores and the producer threads.
    pub queue_batches_max: usize,
    /// How often Kafka metadata is fetched for readiness.
    pub health_interval_ms: u64,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// With SASL: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// Never logged or shown; prefer `sasl_password_file`.
    pub sasl_password: Secret,
    /// A file holding the SASL password (read at start; wins over
    /// `sasl_password`; a trailing newline is dropped).
    pub sasl_password_file: String,
    /// CA certificates (PEM) the brokers' certificates must chain to;
    /// empty: the system's trust store.
    pub ssl_ca_file: String,
    /// Client certificate (PEM) for mutual TLS.
    pub ssl_certificate_file: String,
    /// Client private key (PEM) for mutual TLS.
    pub ssl_key_file: String,
    /// Password of `ssl_key_file`, if it is encrypted; never shown.
    pub ssl_key_password: Secret,
    /// A file holding `ssl_key_password` (wins over it).
    pub ssl_key_password_file: String,
    /// librdkafka properties passed through verbatim; they win over ours.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "events_raw".into(),
            dlq_topic: "events_dlq".into(),
            producer_threads: 1,
            producer_cpus: String::new(),
            linger_ms: 1,
            batch_bytes: 1_000_000,
            compression: "lz4".into(),
            partitioner: "murmur2_random".into(),
            message_timeout_ms: 30_000,
            queue_batches_max: 8_192,
            health_interval_ms: 1_000,
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            sasl_password_file: String::new(),
            ssl_ca_file: String::new(),
            ssl_certificate_file: String::new(),
            ssl_key_file: String::new(),
            ssl_key_password: Secret::default(),
            ssl_key_password_file: String::new(),
            properties: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    /// The masked configuration, as TOML: no secret property or password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = toml::to_string(&self.masked()).unwrap_or_default();
        formatter.write_str(&text)
    }
}

impl KafkaConfig {
    /// A copy with secret-looking properties masked (named secrets are
    /// `Secret`s and mask themselves).
    pub(super) fn masked(&self) -> KafkaConfig {
        let mut copy = self.clone();
        for (name, value) in copy.properties.iter_mut() {
            if is_secret_property(name) {
                *value = crate::secret::MASK.into();
            }
        }
        copy
    }

    /// Reads the `*_file` secrets into their values. A missing or
    /// unreadable file is an error naming its key (never its contents).
    pub(super) fn read_secret_files(&mut self) -> anyhow::Result<()> {
        for (key, path, secret) in [
            (
                "kafka.sasl_password_file",
                &self.sasl_password_file,
                &mut self.sasl_password,
            ),
            (
                "kafka.ssl_key_password_file",
                &self.ssl_key_password_file,
                &mut self.ssl_key_password,
            ),
        ] {
            if path.is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{key}: cannot read {path}"))?;
            *secret = Secret::new(text.trim_end_matches(['\r', '\n']));
        }
        Ok(())
    }

    /// The security settings are consistent and their files readable.
    pub(super) fn check_security(&self) -> anyhow::Result<()> {
        let sasl = match self.security_protocol.as_str() {
            "plaintext" | "ssl" => false,
            "sasl_plaintext" | "sasl_ssl" => true,
            other => bail!(
                "kafka.security_protocol {other:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"
            ),
        };
        if sasl {
            match self.sasl_mechanism.as_str() {
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
                    if self.sasl_username.is_empty() || self.sasl_password.is_empty() {
                        bail!(
                            "kafka.sasl_mechanism {} needs kafka.sasl_username and kafka.sasl_password (or kafka.sasl_password_file)",
                            self.sasl_mechanism
                        );
                    }
                }
                "OAUTHBEARER" => {}
                other => bail!(
                    "kafka.sasl_mechanism {other:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"
                ),
            }
        }
        for (key, path) in [
            ("kafka.ssl_ca_file", &self.ssl_ca_file),
            ("kafka.ssl_certificate_file", &self.ssl_certificate_file),
            ("kafka.ssl_key_file", &self.ssl_key_file),
        ] {
            if !path.is_empty() {
                std::fs::File::open(path).with_context(|| format!("{key}: cannot read {path}"))?;
            }
        }
        if self.ssl_certificate_file.is_empty() != self.ssl_key_file.is_empty() {
            bail!("kafka.ssl_certificate_file and kafka.ssl_key_file go together (mutual TLS)");
        }
        Ok(())
    }

    /// librdkafka properties for the named security keys; `[kafka.properties]`
    /// is applied after them and wins.
    pub fn security_properties(&self) -> Vec<(&'static str, &str)> {
        let mut properties = vec![("security.protocol", self.security_protocol.as_str())];
        let named = [
            ("sasl.mechanism", self.sasl_mechanism.as_str()),
            ("sasl.username", self.sasl_username.as_str()),
            ("sasl.password", self.sasl_password.expose()),
            ("ssl.ca.location", self.ssl_ca_file.as_str()),
            (
                "ssl.certificate.location",
                self.ssl_certificate_file.as_str(),
            ),
            ("ssl.key.location", self.ssl_key_file.as_str()),
            ("ssl.key.password", self.ssl_key_password.expose()),
        ];
        properties.extend(named.into_iter().filter(|(_, value)| !value.is_empty()));
        // OpenSSL is vendored, so its built-in CA directory is not the
        // system's: without a CA file, let librdkafka find the system trust
        // store (a managed cluster's public CA).
        let tls = matches!(self.security_protocol.as_str(), "ssl" | "sasl_ssl");
        if tls && self.ssl_ca_file.is_empty() {
            properties.push(("ssl.ca.location", "probe"));
        }
        properties
    }
}

fn is_secret_property(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|s| lower.contains(s))
}
