//! Configuration: one TOML file, every key overridable by an environment
//! variable (`SLUICE_<SECTION>_<KEY>`), the common keys by a flag.
//!
//! Precedence, lowest first: built-in defaults, the file, the environment, flags.
//! Every bound carries its unit in its name (`_ms`, `_bytes`, `_max`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

pub use crate::toml_errors::{key_at, line_column, located_error, plain_serde_message, toml_error};

mod auth;
pub mod bounds;
mod cors;
mod dedup;
mod environment;
mod kafka;
mod limits;
mod overflow;
mod schemas;
mod server;
pub mod urls;

pub use auth::AuthConfig;
pub use cors::CorsConfig;
pub use dedup::DedupConfig;
pub use kafka::KafkaConfig;
pub use limits::{
    KeyLimits, LimitsConfig, KAFKA_MESSAGE_BYTES_MAX_DEFAULT, RECORD_BYTES_PER_BODY_BYTE_MAX,
    RECORD_BYTES_PER_EVENT_MAX, RECORD_OVERHEAD_BYTES_MAX,
};
pub use overflow::{OverflowConfig, FORCE_KEYS_MAX};
pub use schemas::SchemasConfig;
pub use server::{AckMode, IoDriver, LogFormat, ServerConfig};

/// The whole configuration, as read from TOML.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub kafka: KafkaConfig,
    pub cors: CorsConfig,
    pub dedup: DedupConfig,
    pub schemas: SchemasConfig,
    pub overflow: OverflowConfig,
    /// Run with librdkafka's in-process mock cluster and a generated dev key.
    pub dev: bool,
    /// `--dev-key`: the dev key to use instead of a generated one (a flag
    /// only, never read from or shown in the file).
    #[serde(skip)]
    pub dev_key: Option<String>,
}

/// One thing wrong with a configuration: the key it concerns, when one
/// does, and what is wrong, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    /// A problem with `key` (dotted: `server.cores`).
    pub fn new(key: &str, message: String) -> Self {
        Problem {
            key: Some(key.to_string()),
            message,
        }
    }

    /// A problem that is not one key's.
    pub fn general(message: String) -> Self {
        Problem { key: None, message }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(out, "{key}: {}", self.message),
            None => write!(out, "{}", self.message),
        }
    }
}

/// Flags given on the command line; `None` leaves the key as configured.
#[derive(Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub cores: Option<usize>,
    pub brokers: Option<String>,
    pub topic: Option<String>,
    pub dlq_topic: Option<String>,
    pub keys_file: Option<PathBuf>,
    pub ack_mode: Option<String>,
    pub log_format: Option<String>,
    pub dev: bool,
    /// `--dev-key` (or `SLUICE_DEV_KEY`).
    pub dev_key: Option<String>,
}

/// Environment variable prefix.
pub const ENV_PREFIX: &str = "SLUICE_";

/// Environment variables that set `[kafka.properties]` entries:
/// `SLUICE_KAFKA_PROPERTIES__SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=https`
/// sets `ssl.endpoint.identification.algorithm` (lower case, `_` → `.`;
/// librdkafka's property names have no underscores).
pub const PROPERTY_ENV_PREFIX: &str = "SLUICE_KAFKA_PROPERTIES__";

impl Config {
    /// Sets `[kafka.properties]` entries from `SLUICE_KAFKA_PROPERTIES__*`
    /// variables (see [`PROPERTY_ENV_PREFIX`]); they win over the file.
    pub fn apply_property_environment(
        &mut self,
        variables: impl Iterator<Item = (String, String)>,
    ) {
        for (name, value) in variables {
            if let Some(property) = name.strip_prefix(PROPERTY_ENV_PREFIX) {
                let property = property.to_ascii_lowercase().replace('_', ".");
                self.kafka.properties.insert(property, value);
            }
        }
    }
}

/// A CPU-list key: `None` when empty (no constraint).
pub fn cpu_list(text: &str) -> Option<Vec<usize>> {
    // Validated at load, so a parse failure here cannot happen.
    (!text.trim().is_empty()).then(|| crate::cpus::parse_cpu_list(text).unwrap_or_default())
}

impl Config {
    /// Builds the effective configuration from defaults, file, environment
    /// and flags, and checks it (every problem named).
    pub fn load(
        overrides: &Overrides,
        environment: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let config = Self::assemble(overrides, &environment)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] without the checks of [`Config::problems`]: what
    /// the file, environment and flags say, and the secret files read.
    pub fn assemble(
        overrides: &Overrides,
        environment: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let table = match &overrides.config {
            Some(path) => Self::file_table(path)?,
            None => toml::Table::new(),
        };
        Self::from_table(table, overrides, environment)
    }

    /// The configuration file as a table, its first mistake reported at
    /// its line and column, with its key, in plain words.
    pub fn file_table(path: &std::path::Path) -> anyhow::Result<toml::Table> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading config file {} (the path given to --config)",
                path.display()
            )
        })?;
        let name = path.display().to_string();
        if let Err(error) = toml::from_str::<Config>(&text) {
            bail!("{}", located_error(&name, &text, &error));
        }
        toml::from_str::<toml::Table>(&text)
            .map_err(|error| anyhow::anyhow!(located_error(&name, &text, &error)))
    }

    /// The configuration from a file's table, the environment and the flags.
    pub fn from_table(
        mut table: toml::Table,
        overrides: &Overrides,
        environment: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        for (section, key) in Self::keys() {
            let name = env_name(&section, &key);
            if let Some(raw) = environment(&name) {
                let default = match section.as_str() {
                    "" => defaults.get(&key),
                    _ => defaults.get(&section).and_then(|inner| inner.get(&key)),
                };
                // A string key takes the text as it is ("1" is a CPU list,
                // not a number); other keys read it as a TOML value.
                let value = match default {
                    Some(toml::Value::String(_)) => toml::Value::String(raw),
                    // A list key takes a TOML array, or comma-separated text.
                    Some(toml::Value::Array(_)) => match parse_env_value(&raw) {
                        array @ toml::Value::Array(_) => array,
                        _ => toml::Value::Array(
                            raw.split(',')
                                .map(str::trim)
                                .filter(|item| !item.is_empty())
                                .map(|item| toml::Value::String(item.into()))
                                .collect(),
                        ),
                    },
                    _ => parse_env_value(&raw),
                };
                section_table(&mut table, &section)?.insert(key, value);
            }
        }
        apply_flags(&mut table, overrides)?;
        let mut config: Config = toml::Value::Table(table).try_into().map_err(|error| {
            anyhow::anyhow!(
                "invalid configuration (from the environment or a flag): {}",
                plain_serde_message(error.message())
            )
        })?;
        config.dev_key.clone_from(&overrides.dev_key);
        config.kafka.read_secret_files()?;
        Ok(config)
    }

    /// Every (section, key) pair, for environment overrides and `--help`.
    pub fn keys() -> Vec<(String, String)> {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let mut keys = Vec::new();
        for (section, value) in defaults {
            match value {
                toml::Value::Table(inner) => {
                    for (key, value) in inner {
                        if !value.is_table() {
                            keys.push((section.clone(), key));
                        }
                    }
                }
                _ => keys.push((String::new(), section)),
            }
        }
        keys
    }

    /// The environment variables that override keys, one per line, for `--help`.
    pub fn environment_help() -> String {
        let mut out = String::from("Environment overrides (each key of the TOML file):\n");
        for (section, key) in Self::keys() {
            let shown = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            let _ = writeln!(out, "  {:<48} {}", env_name(&section, &key), shown);
        }
        out
    }

    fn validate(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        match problems.len() {
            0 => Ok(()),
            1 => bail!("{}", problems[0]),
            _ => bail!(
                "{} problems:\n  {}",
                problems.len(),
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ),
        }
    }

    /// Every problem of the configuration: values out of their range,
    /// relations between keys that do not hold, lists and URLs that do
    /// not parse. Each names its key and what to do.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.listen_address().is_err() {
            problems.push(Problem::new(
                "server.listen",
                format!(
                    "{:?} is not an address: write IP:PORT, for example 0.0.0.0:8080 or 127.0.0.1:8080",
                    self.server.listen
                ),
            ));
        }
        if self.dev_key.as_deref().is_some_and(|key| {
            key.is_empty() || key.len() > 256 || !key.bytes().all(|byte| byte.is_ascii_graphic())
        }) {
            problems.push(Problem::general(
                "--dev-key must be 1 to 256 printable ASCII characters, no spaces".into(),
            ));
        }
        if self.dev_key.is_some() && !self.dev {
            problems.push(Problem::general(
                "--dev-key (or SLUICE_DEV_KEY) is for dev mode only: add --dev (or dev = true)"
                    .into(),
            ));
        }
        match toml::Table::try_from(self) {
            Ok(table) => problems.extend(bounds::problems(&table)),
            Err(error) => problems.push(Problem::general(format!("configuration: {error}"))),
        }
        let limits = &self.limits;
        let relations = [
            (
                limits.event_bytes_max <= limits.decompressed_body_bytes_max,
                "limits.event_bytes_max",
                "must not exceed limits.decompressed_body_bytes_max",
            ),
            (
                limits.body_bytes_max <= limits.decompressed_body_bytes_max,
                "limits.body_bytes_max",
                "must not exceed limits.decompressed_body_bytes_max",
            ),
            (
                limits.inflight_events_per_core_max >= limits.batch_events_max,
                "limits.inflight_events_per_core_max",
                "must be at least limits.batch_events_max",
            ),
            // The largest valid request's records (its body and the
            // server's fields per event) must fit, or it could never be taken.
            (
                limits.inflight_bytes_per_core_max
                    >= limits.decompressed_body_bytes_max.saturating_add(
                        limits
                            .batch_events_max
                            .saturating_mul(RECORD_BYTES_PER_EVENT_MAX),
                    ),
                "limits.inflight_bytes_per_core_max",
                "must be at least limits.decompressed_body_bytes_max plus 1 KiB per event of limits.batch_events_max (the largest request's records must fit)",
            ),
        ];
        for (_, key, relation) in relations.iter().filter(|(holds, _, _)| !holds) {
            problems.push(Problem::new(key, (*relation).into()));
        }
        let message_bytes_max = match self.kafka.properties.get("message.max.bytes") {
            None => Some(KAFKA_MESSAGE_BYTES_MAX_DEFAULT),
            Some(value) => match value.parse() {
                Ok(number) => Some(number),
                Err(_) => {
                    problems.push(Problem::new(
                        "kafka.properties.\"message.max.bytes\"",
                        format!("{value:?} is not a number"),
                    ));
                    None
                }
            },
        };
        let overhead = RECORD_OVERHEAD_BYTES_MAX;
        if let Some(message_bytes_max) = message_bytes_max {
            if limits.event_bytes_max.saturating_add(overhead) > message_bytes_max {
                problems.push(Problem::new(
                    "limits.event_bytes_max",
                    format!(
                        "{} plus what the server adds to a record ({overhead} bytes) must fit Kafka's message.max.bytes ({message_bytes_max}): a larger event would be refused by Kafka after its client waited; lower limits.event_bytes_max or raise message.max.bytes in [kafka.properties] (and the topic's max.message.bytes)",
                        limits.event_bytes_max
                    ),
                ));
            }
        }
        for (key, list) in [
            ("server.cpus", &self.server.cpus),
            ("kafka.producer_cpus", &self.kafka.producer_cpus),
        ] {
            if !list.trim().is_empty() {
                if let Err(error) = crate::cpus::parse_cpu_list(list) {
                    problems.push(Problem::new(key, format!("{list:?}: {error:#}")));
                }
            }
        }
        for origin in &self.cors.allowed_origins {
            if let Err(error) = crate::cors::check_origin(origin) {
                problems.push(Problem::new("cors.allowed_origins", format!("{error:#}")));
            }
        }
        if !self.dedup.enabled && !self.dedup.redis_url.is_empty() {
            problems.push(Problem::new(
                "dedup.redis_url",
                "is set but dedup.enabled = false: fleet-wide dedup needs dedup on; unset one of them".into(),
            ));
        }
        for (key, url) in [
            ("limits.redis_url", &self.limits.redis_url),
            ("dedup.redis_url", &self.dedup.redis_url),
        ] {
            if !url.is_empty() {
                if let Err(error) = urls::parse_redis_url(key, url.expose()) {
                    problems.push(Problem::new(key, format!("{error:#}")));
                }
            }
        }
        if !self.auth.postgres_url.is_empty() {
            if let Err(error) = urls::parse_postgres_url(self.auth.postgres_url.expose()) {
                problems.push(Problem::new("auth.postgres_url", format!("{error:#}")));
            }
        }
        // A claim's Redis rounds (the claim, and a retry of it) must end
        // well before the client's answer is due.
        let redis_rounds_ms = 2 * self.dedup.redis_timeout_ms + DEDUP_REDIS_MARGIN_MS;
        if !self.dedup.redis_url.is_empty() && self.server.delivery_timeout_ms <= redis_rounds_ms {
            problems.push(Problem::new(
                "server.delivery_timeout_ms",
                format!(
                    "{} must be more than 2 x dedup.redis_timeout_ms ({}) + {DEDUP_REDIS_MARGIN_MS} ms when dedup.redis_url is set: the fleet dedup's Redis rounds would outlast the answer",
                    self.server.delivery_timeout_ms, self.dedup.redis_timeout_ms
                ),
            ));
        }
        if self.kafka.message_timeout_ms < self.server.delivery_timeout_ms {
            problems.push(Problem::new(
                "kafka.message_timeout_ms",
                format!(
                    "{} must be at least server.delivery_timeout_ms ({}): librdkafka would give up on records a client is still waiting for",
                    self.kafka.message_timeout_ms, self.server.delivery_timeout_ms
                ),
            ));
        }
        match self.kafka.partitioner.as_str() {
            "murmur2_random" | "murmur2" | "consistent_random" | "consistent" | "random"
            | "fnv1a" | "fnv1a_random" => {}
            other => problems.push(Problem::new(
                "kafka.partitioner",
                format!("{other:?} is not one of murmur2_random, murmur2, consistent_random, consistent, random, fnv1a, fnv1a_random"),
            )),
        }
        match self.kafka.compression.as_str() {
            "none" | "gzip" | "snappy" | "lz4" | "zstd" => {}
            other => problems.push(Problem::new(
                "kafka.compression",
                format!("{other:?} is not one of none, gzip, snappy, lz4, zstd"),
            )),
        }
        problems.extend(self.overflow.problems(&self.kafka.partitioner));
        if let Err(error) = self.kafka.check_security() {
            problems.push(Problem::general(format!("{error:#}")));
        }
        problems
    }

    /// The parsed listen address.
    pub fn listen_address(&self) -> anyhow::Result<SocketAddr> {
        self.server
            .listen
            .parse()
            .with_context(|| format!("server.listen {:?} is not an address", self.server.listen))
    }

    /// The configuration as (key, value) pairs with secrets masked, for
    /// the start-up log: `server.cores` = `0`, `kafka.properties."linger.ms"`
    /// = `5`; strings as they are, other values as TOML writes them.
    pub fn masked_entries(&self) -> Vec<(String, String)> {
        fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
            for (key, value) in table {
                let bare = !key.is_empty()
                    && key
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
                let name = match (prefix.is_empty(), bare) {
                    (true, _) => key.clone(),
                    (false, true) => format!("{prefix}.{key}"),
                    (false, false) => format!("{prefix}.{key:?}"),
                };
                match value {
                    toml::Value::Table(inner) => flatten(&name, inner, out),
                    toml::Value::String(text) => out.push((name, text.clone())),
                    other => out.push((name, other.to_string())),
                }
            }
        }
        let mut copy = self.clone();
        copy.kafka = self.kafka.masked();
        let table = toml::Table::try_from(&copy).unwrap_or_default();
        let mut entries = Vec::new();
        flatten("", &table, &mut entries);
        entries
    }
}

/// The environment variable of a key: `SLUICE_<SECTION>_<KEY>`.
pub fn env_name(section: &str, key: &str) -> String {
    let path = if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}_{key}")
    };
    format!("{ENV_PREFIX}{}", path.to_ascii_uppercase())
}

/// An environment value is read as a TOML value when it parses as one
/// (numbers, booleans, arrays), otherwise as a plain string.
/// What `server.delivery_timeout_ms` must exceed besides two Redis
/// rounds of the fleet dedup (`dedup.redis_timeout_ms` each).
const DEDUP_REDIS_MARGIN_MS: u64 = 500;

fn parse_env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn section_table<'t>(
    table: &'t mut toml::Table,
    section: &str,
) -> anyhow::Result<&'t mut toml::Table> {
    if section.is_empty() {
        return Ok(table);
    }
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(inner) => Ok(inner),
        _ => bail!("configuration key {section} must be a table"),
    }
}

fn apply_flags(table: &mut toml::Table, flags: &Overrides) -> anyhow::Result<()> {
    let mut set = |section: &str, key: &str, value: toml::Value| -> anyhow::Result<()> {
        section_table(table, section)?.insert(key.into(), value);
        Ok(())
    };
    if let Some(v) = &flags.listen {
        set("server", "listen", v.clone().into())?;
    }
    if let Some(v) = flags.cores {
        set("server", "cores", toml::Value::Integer(v as i64))?;
    }
    if let Some(v) = &flags.ack_mode {
        set("server", "ack_mode", v.clone().into())?;
    }
    if let Some(v) = &flags.log_format {
        set("server", "log_format", v.clone().into())?;
    }
    if let Some(v) = &flags.brokers {
        set("kafka", "brokers", v.clone().into())?;
    }
    if let Some(v) = &flags.topic {
        set("kafka", "topic", v.clone().into())?;
    }
    if let Some(v) = &flags.dlq_topic {
        set("kafka", "dlq_topic", v.clone().into())?;
    }
    if let Some(v) = &flags.keys_file {
        set("auth", "keys_file", v.display().to_string().into())?;
    }
    if flags.dev {
        set("", "dev", true.into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dev_key_needs_dev_mode_and_printable_text() {
        let problems = |dev: bool, key: &str| {
            let overrides = Overrides {
                dev,
                dev_key: Some(key.into()),
                ..Default::default()
            };
            let config = Config::assemble(&overrides, &|_: &str| None).unwrap();
            assert_eq!(config.dev_key.as_deref(), Some(key));
            config
                .problems()
                .into_iter()
                .map(|problem| problem.message)
                .collect::<Vec<_>>()
        };
        assert_eq!(problems(true, "cs_dev_1"), Vec::<String>::new());
        assert!(problems(false, "cs_dev_1")[0].contains("dev mode only"));
        assert!(problems(true, "with space")[0].contains("printable"));
        assert!(problems(true, "")[0].contains("printable"));
        assert!(problems(true, &"k".repeat(257))[0].contains("printable"));
    }

    #[test]
    fn every_numeric_key_has_a_stated_range_and_the_defaults_are_in_it() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, key) in Config::keys().into_iter().filter(|(s, _)| !s.is_empty()) {
            let value = &defaults[section.as_str()][key.as_str()];
            if value.is_integer() {
                assert!(
                    bounds::BOUNDS
                        .iter()
                        .any(|bound| bound.section == section && bound.key == key),
                    "{section}.{key} has no range in config::bounds"
                );
            }
        }
        bounds::check(&defaults).unwrap();
    }

    use super::*;

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let dir = std::env::temp_dir().join(format!("sluice-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(
            &path,
            "[kafka]\ntopic = \"from_file\"\nlinger_ms = 7\n[server]\ncores = 3\n",
        )
        .unwrap();
        let overrides = Overrides {
            config: Some(path),
            cores: Some(2),
            ..Default::default()
        };
        let env = |name: &str| match name {
            "SLUICE_KAFKA_LINGER_MS" => Some("9".to_string()),
            "SLUICE_SERVER_CORES" => Some("5".to_string()),
            "SLUICE_KAFKA_BROKERS" => Some("b1:9092,b2:9092".to_string()),
            "SLUICE_SERVER_CPUS" => Some("1".to_string()),
            "SLUICE_KAFKA_DLQ_TOPIC" => Some("true".to_string()),
            "SLUICE_CORS_ALLOWED_ORIGINS" => {
                Some("https://a.example.com, https://b.example.com".to_string())
            }
            _ => None,
        };
        let config = Config::load(&overrides, env).unwrap();
        assert_eq!(config.kafka.topic, "from_file");
        assert_eq!(config.kafka.linger_ms, 9);
        assert_eq!(config.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(config.server.cores, 2);
        // String keys keep the text, even when it reads as a number or bool.
        assert_eq!(config.server.cpus, "1");
        assert_eq!(config.kafka.dlq_topic, "true");
        // List keys take comma-separated text.
        assert_eq!(
            config.cors.allowed_origins,
            ["https://a.example.com", "https://b.example.com"]
        );
    }

    #[test]
    fn fleet_dedup_without_dedup_is_refused() {
        let env = |name: &str| match name {
            "SLUICE_DEDUP_ENABLED" => Some("false".to_string()),
            "SLUICE_DEDUP_REDIS_URL" => Some("redis://127.0.0.1:6379/".to_string()),
            _ => None,
        };
        let error = Config::load(&Overrides::default(), env).unwrap_err();
        assert!(
            format!("{error:#}").contains("dedup.enabled = false"),
            "{error:#}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = std::env::temp_dir().join(format!("sluice-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[kafka]\ntopik = \"x\"\n").unwrap();
        let overrides = Overrides {
            config: Some(path),
            ..Default::default()
        };
        assert!(Config::load(&overrides, |_| None).is_err());
        let overrides = Overrides {
            ack_mode: Some("sometimes".into()),
            ..Default::default()
        };
        assert!(Config::load(&overrides, |_| None).is_err());
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let example: Config = toml::from_str(include_str!("../../sluice.example.toml")).unwrap();
        assert_eq!(
            toml::to_string(&example).unwrap(),
            toml::to_string(&Config::default()).unwrap()
        );
    }

    #[test]
    fn the_tuning_profiles_load() {
        for profile in ["tuning/low-latency.toml", "tuning/throughput.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(profile);
            let overrides = Overrides {
                config: Some(path),
                ..Default::default()
            };
            Config::load(&overrides, |_| None).unwrap_or_else(|e| panic!("{profile}: {e:#}"));
        }
    }

    #[test]
    fn the_example_keys_file_parses() {
        let snapshot = crate::tenancy::keys::Snapshot::parse(
            include_str!("../../keys.example.toml"),
            Default::default(),
        )
        .unwrap();
        assert_eq!(snapshot.len(), 3);
    }

    fn load_with(file: &str) -> anyhow::Result<Config> {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "sluice-config-security-{}-{call}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, file.replace("DIR", dir.to_str().unwrap())).unwrap();
        std::fs::write(dir.join("password"), "s3cret-from-file\n").unwrap();
        std::fs::write(dir.join("ca.pem"), "not checked here").unwrap();
        let overrides = Overrides {
            config: Some(path),
            ..Default::default()
        };
        Config::load(&overrides, |_| None)
    }

    #[test]
    fn the_delivery_timeout_outlasts_two_redis_rounds_of_the_fleet_dedup() {
        let redis = "[dedup]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_timeout_ms = 1000\n";
        let error =
            load_with(&format!("{redis}[server]\ndelivery_timeout_ms = 2500\n")).unwrap_err();
        assert!(
            format!("{error:#}").contains("2 x dedup.redis_timeout_ms"),
            "{error:#}"
        );
        load_with(&format!("{redis}[server]\ndelivery_timeout_ms = 2501\n")).unwrap();
        // Without Redis, no such bound.
        load_with("[dedup]\nredis_timeout_ms = 1000\n[server]\ndelivery_timeout_ms = 1000\n")
            .unwrap();
    }

    #[test]
    fn too_few_error_log_bytes_are_refused() {
        let error = load_with("[server]\nerror_log_bytes_per_second_max = 255\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("error_log_bytes_per_second_max"),
            "{error:#}"
        );
        load_with("[server]\nerror_log_bytes_per_second_max = 256\n").unwrap();
    }

    #[test]
    fn sasl_secrets_come_from_files_and_are_never_shown() {
        let config = load_with(
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"ingest\"\nsasl_password_file = \"DIR/password\"\nssl_ca_file = \"DIR/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(config.kafka.sasl_password.expose(), "s3cret-from-file");
        let properties = config.kafka.security_properties();
        assert!(properties.contains(&("sasl.password", "s3cret-from-file")));
        assert!(properties.contains(&("sasl.mechanism", "SCRAM-SHA-512")));
        assert!(properties.contains(&("security.protocol", "sasl_ssl")));
        assert!(properties.contains(&("ssl.ca.location", config.kafka.ssl_ca_file.as_str())));
        let mut system_trust = config.kafka.clone();
        system_trust.ssl_ca_file.clear();
        assert!(system_trust
            .security_properties()
            .contains(&("ssl.ca.location", "probe")));
        assert!(!format!("{:?}", config.masked_entries()).contains("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn missing_secret_and_certificate_files_name_their_key() {
        let error = load_with("[kafka]\nsasl_password_file = \"DIR/absent\"\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("kafka.sasl_password_file"),
            "{error:#}"
        );
        let error = load_with("[kafka]\nssl_ca_file = \"DIR/absent.pem\"\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("kafka.ssl_ca_file"),
            "{error:#}"
        );
        let error = load_with(
            "[kafka]\nsecurity_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\n",
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("kafka.sasl_username"),
            "{error:#}"
        );
        let error = load_with("[kafka]\nsecurity_protocol = \"tls\"\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("kafka.security_protocol"),
            "{error:#}"
        );
    }

    #[test]
    fn properties_come_from_the_environment() {
        let mut config = Config::default();
        config.apply_property_environment(
            [
                (
                    "SLUICE_KAFKA_PROPERTIES__SSL_ENDPOINT_IDENTIFICATION_ALGORITHM".to_string(),
                    "none".to_string(),
                ),
                ("SLUICE_KAFKA_LINGER_MS".to_string(), "3".to_string()),
            ]
            .into_iter(),
        );
        assert_eq!(
            config
                .kafka
                .properties
                .get("ssl.endpoint.identification.algorithm"),
            Some(&"none".to_string())
        );
        assert_eq!(config.kafka.properties.len(), 1);
    }

    #[test]
    fn secrets_are_masked_in_the_summary() {
        let mut config = Config::default();
        config
            .kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        let entries = config.masked_entries();
        let password = entries
            .iter()
            .find(|(key, _)| key == "kafka.properties.\"sasl.password\"")
            .expect("the property is listed");
        assert_eq!(password.1, "***");
        assert!(!format!("{entries:?}").contains("hunter2"));
        assert!(entries.contains(&("server.cores".to_string(), "0".to_string())));
        assert!(
            !format!("{config:?}").contains("hunter2"),
            "Debug shows the property"
        );
    }
}
