//! `sluice check`: the configuration dry run. It reads what a start would
//! read (the file, the environment, the flags, the keys file, the schema
//! directory, the secret files), asks Kafka for its topics, looks at the
//! host's limits, and names every problem it finds with its place (file,
//! line and column, or environment variable) and what to do. It starts
//! nothing and binds nothing.

use std::path::Path;
use std::time::Duration;

use crate::config::{line_column, Config, Overrides, Problem};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The server would refuse to start, or would run wrongly.
    Problem,
    /// Worth knowing; not a reason to stop a deploy.
    Note,
}

/// One thing `sluice check` found.
#[derive(Clone, Debug)]
pub struct Finding {
    pub severity: Severity,
    /// Where: `FILE:LINE:COLUMN`, an environment variable, a path, or a
    /// subject such as `kafka` or `host`.
    pub place: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = match self.severity {
            Severity::Problem => "problem",
            Severity::Note => "note",
        };
        write!(out, "{label}: {}: {}", self.place, self.message)
    }
}

/// What to check beyond the files.
pub struct Options {
    /// Leave Kafka out (a unit's start check: sluice starts while Kafka is
    /// down and reports not ready).
    pub skip_kafka: bool,
    /// How long Kafka's metadata may take.
    pub kafka_timeout: Duration,
}

/// Runs every check; the findings in the order found.
pub fn run(
    overrides: &Overrides,
    environment: impl Fn(&str) -> Option<String>,
    variables: &[(String, String)],
    options: &Options,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let file = overrides.config.as_deref();
    let text = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) => {
                findings.push(problem(
                    path.display().to_string(),
                    format!("cannot read the configuration file: {error}; check the path given to --config"),
                ));
                None
            }
        },
        None => None,
    };
    let mut table = toml::Table::new();
    if let (Some(path), Some(text)) = (file, &text) {
        match check_file(&path.display().to_string(), text) {
            Ok((usable, bad_keys)) => {
                findings.extend(bad_keys);
                table = usable;
            }
            Err(syntax) => findings.extend(syntax),
        }
    }
    for name in Config::unknown_variables(variables.iter().map(|(name, _)| name.clone())) {
        // A problem, not a note: the setting the name meant is not applied,
        // so the server would run otherwise than intended. The value is
        // never shown (it may be a secret).
        let message = Config::unknown_variable_message(&name);
        findings.push(problem(name, message));
    }
    if file.is_some() && text.is_none()
        || findings
            .iter()
            .any(|finding| finding.place.ends_with(":syntax"))
    {
        return findings;
    }
    // The rest is checked with the keys that were wrong left at their
    // defaults, so one typo does not hide the other problems.
    let config = match Config::from_table(table, overrides, &environment) {
        Ok(mut config) => {
            config.apply_property_environment(variables.iter().cloned());
            config
        }
        Err(error) => {
            findings.push(problem(
                "configuration".into(),
                format!("{error:#} (a value from the environment or a flag)"),
            ));
            return findings;
        }
    };
    let place_of = |key: &str| place_of_key(key, file, text.as_deref(), &environment);
    for Problem { key, message } in config.problems() {
        let place = key
            .as_deref()
            .map_or_else(|| "configuration".into(), place_of);
        let message = match key {
            Some(key) => format!("{key}: {message}"),
            None => message,
        };
        findings.push(problem(place, message));
    }
    let topics = check_keys(&config, &place_of, &mut findings);
    check_schemas(&config, &mut findings);
    if config.dev {
        findings.push(note(
            "kafka".into(),
            "dev = true: the in-process mock cluster is used; nothing is durable".into(),
        ));
    } else if options.skip_kafka {
        findings.push(note("kafka".into(), "not checked (--skip-kafka)".into()));
    } else {
        check_kafka(&config, &topics, options.kafka_timeout, &mut findings);
    }
    check_host(&config, &place_of, &mut findings);
    findings
}

fn problem(place: String, message: String) -> Finding {
    Finding {
        severity: Severity::Problem,
        place,
        message,
    }
}

fn note(place: String, message: String) -> Finding {
    Finding {
        severity: Severity::Note,
        place,
        message,
    }
}

/// The file's syntax, then each of its keys on its own: every bad key is
/// reported, each at its line, not only the first. Returns the file's
/// table without the bad keys, and a finding per bad key; or, when the
/// file is not valid TOML, a finding per syntax error.
fn check_file(name: &str, text: &str) -> Result<(toml::Table, Vec<Finding>), Vec<Finding>> {
    let (document, errors) = toml::de::DeTable::parse_recoverable(text);
    let syntax = |message: String| {
        let mut finding = located(message);
        finding.message = format!("{} (TOML syntax)", finding.message);
        finding
    };
    if !errors.is_empty() {
        let mut findings: Vec<Finding> = errors
            .iter()
            .map(|error| syntax(crate::config::located_error(name, text, error)))
            .collect();
        findings.push(note(
            format!("{name}:syntax"),
            "the rest of the configuration is checked once the file parses".into(),
        ));
        return Err(findings);
    }
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return Err(vec![problem(
            format!("{name}:syntax"),
            "not a TOML table".into(),
        )]);
    };
    let document = document.into_inner();
    let mut findings: Vec<(usize, Finding)> = Vec::new();
    let mut bad_keys: Vec<(String, Option<String>)> = Vec::new();
    for (section, value) in &table {
        let entries: Vec<(Option<&str>, &toml::Value)> = match value {
            toml::Value::Table(inner) if !inner.is_empty() => inner
                .iter()
                .map(|(key, value)| (Some(key.as_str()), value))
                .collect(),
            other => vec![(None, other)],
        };
        for (key, value) in entries {
            let mut single = toml::Table::new();
            match key {
                Some(key) => {
                    let mut inner = toml::Table::new();
                    inner.insert(key.into(), value.clone());
                    single.insert(section.clone(), toml::Value::Table(inner));
                }
                None => {
                    single.insert(section.clone(), value.clone());
                }
            }
            if let Err(error) = toml::Value::Table(single).try_into::<Config>() {
                let offset = key_offset(&document, section, key).unwrap_or(0);
                let (line, column) = line_column(text, offset);
                let dotted = key.map_or_else(|| section.clone(), |key| format!("{section}.{key}"));
                findings.push((
                    offset,
                    problem(
                        format!("{name}:{line}:{column}"),
                        format!(
                            "{dotted}: {}",
                            crate::config::plain_serde_message(error.message())
                        ),
                    ),
                ));
                bad_keys.push((section.clone(), key.map(str::to_string)));
            }
        }
    }
    for (section, key) in bad_keys {
        match key {
            Some(key) => {
                if let Some(toml::Value::Table(inner)) = table.get_mut(&section) {
                    inner.remove(&key);
                }
            }
            None => {
                table.remove(&section);
            }
        }
    }
    findings.sort_by_key(|(offset, _)| *offset);
    Ok((
        table,
        findings.into_iter().map(|(_, finding)| finding).collect(),
    ))
}

/// A `FILE:LINE:COLUMN: message` line as a finding.
fn located(line: String) -> Finding {
    // The place is everything before the first ": " (`FILE:LINE:COLUMN`).
    match line.split_once(": ") {
        Some((place, message)) => problem(place.into(), message.into()),
        None => problem("configuration".into(), line),
    }
}

/// Where `section.key` is written in the document (its key's first byte).
fn key_offset(document: &toml::de::DeTable<'_>, section: &str, key: Option<&str>) -> Option<usize> {
    let (section_key, section_value) = document
        .iter()
        .find(|(name, _)| name.get_ref().as_ref() == section)?;
    let Some(key) = key else {
        return Some(section_key.span().start);
    };
    match section_value.get_ref() {
        toml::de::DeValue::Table(inner) => inner
            .iter()
            .find(|(name, _)| name.get_ref().as_ref() == key)
            .map(|(name, _)| name.span().start),
        _ => Some(section_key.span().start),
    }
}

/// Where a key's value comes from: the file's line, the environment
/// variable, or the default.
fn place_of_key(
    key: &str,
    file: Option<&Path>,
    text: Option<&str>,
    environment: &impl Fn(&str) -> Option<String>,
) -> String {
    let (section, name) = key.split_once('.').unwrap_or(("", key));
    let variable = crate::config::env_name(section, name.split('.').next().unwrap_or(name));
    if environment(&variable).is_some() {
        return format!("environment {variable}");
    }
    if let (Some(path), Some(text)) = (file, text) {
        if let Ok((document, _)) = toml::de::DeTable::parse(text).map(|doc| (doc.into_inner(), ()))
        {
            let name = name.split('.').next().unwrap_or(name);
            if let Some(offset) = key_offset(&document, section, Some(name)) {
                let (line, column) = line_column(text, offset);
                return format!("{}:{line}:{column}", path.display());
            }
        }
    }
    format!("{key} (default or flag)")
}

/// The keys file (unless PostgreSQL or `--dev` makes it optional and it
/// is absent); returns the topics its keys name.
fn check_keys(
    config: &Config,
    place_of: &impl Fn(&str) -> String,
    findings: &mut Vec<Finding>,
) -> Vec<String> {
    let path = &config.auth.keys_file;
    let postgres = !config.auth.postgres_url.is_empty();
    if !path.exists() {
        if config.dev || postgres {
            findings.push(note(
                path.display().to_string(),
                format!(
                    "no keys file: keys come from {} only",
                    if config.dev { "--dev" } else { "PostgreSQL" }
                ),
            ));
        } else {
            findings.push(problem(
                place_of("auth.keys_file"),
                crate::tenancy::keys::missing_file_hint(path),
            ));
        }
        return Vec::new();
    }
    match crate::tenancy::keys::KeyStore::open(
        Some(path.clone()),
        None,
        config.limits.default_key_limits(),
        postgres,
    ) {
        Ok(store) => {
            let snapshot = store.load();
            findings.push(note(
                path.display().to_string(),
                format!("{} keys", snapshot.len()),
            ));
            let mut topics: Vec<String> = snapshot
                .grants()
                .filter_map(|(_, grant)| grant.topic.as_deref().map(str::to_string))
                .collect();
            topics.sort();
            topics.dedup();
            topics
        }
        Err(error) => {
            // The error names its place (`keys.toml:4:11: ...`) when it has one.
            let message = format!("{error:#}");
            let shown = path.display().to_string();
            findings.push(match message.strip_prefix(&format!("{shown}:")) {
                Some(_) => located(message),
                None => problem(shown, message),
            });
            Vec::new()
        }
    }
}

fn check_schemas(config: &Config, findings: &mut Vec<Finding>) {
    let dir = &config.schemas.dir;
    if dir.is_empty() {
        return;
    }
    // The same budgets as the server's, start and reload alike.
    let limits = crate::events::schema::SchemaLimits::from_config(&config.schemas);
    let loaded = crate::events::schema::SchemaSet::load_within(
        Path::new(dir),
        config.schemas.require,
        &limits,
        None,
    );
    match loaded {
        Ok(set) => {
            let totals = set.totals();
            findings.push(note(
                dir.clone(),
                format!(
                    "{} schemas compile within the budgets: {} of {} files (schemas.files_max), {} of {} bytes (schemas.total_bytes_max), {} of {} patterns (schemas.patterns_max), {} of {} pattern states (schemas.pattern_states_max)",
                    set.len(),
                    totals.files,
                    limits.files_max,
                    totals.bytes,
                    limits.total_bytes_max,
                    totals.patterns,
                    limits.patterns_max,
                    totals.pattern_states,
                    limits.pattern_states_max
                ),
            ))
        }
        Err(problems) => {
            for schema_problem in problems {
                findings.push(problem(
                    schema_problem.file.display().to_string(),
                    schema_problem.reason,
                ));
            }
        }
    }
}

/// Kafka answers metadata, and has the event, dead-letter, overflow and
/// per-key topics.
fn check_kafka(
    config: &Config,
    key_topics: &[String],
    timeout: Duration,
    findings: &mut Vec<Finding>,
) {
    use crate::kafka::probe::{cluster_metadata, MetadataError};
    let brokers = &config.kafka.brokers;
    let metadata = match cluster_metadata(config, timeout) {
        Ok(metadata) => metadata,
        Err(MetadataError::Client(error)) => {
            findings.push(problem(
                "kafka".into(),
                format!("the Kafka client refuses the configuration: {error}"),
            ));
            return;
        }
        Err(MetadataError::Unanswered(error)) => {
            findings.push(problem(
                format!("kafka.brokers {brokers}"),
                format!(
                    "no metadata within {} ms: {error}; check the address, the listener's security protocol (kafka.security_protocol) and the network",
                    timeout.as_millis()
                ),
            ));
            return;
        }
    };
    findings.push(note(
        "kafka".into(),
        format!(
            "the cluster at {brokers} answers: {} broker{}",
            metadata.brokers,
            if metadata.brokers == 1 { "" } else { "s" }
        ),
    ));
    let mut wanted = vec![
        ("kafka.topic", config.kafka.topic.clone()),
        ("kafka.dlq_topic", config.kafka.dlq_topic.clone()),
    ];
    if config.overflow.enabled() {
        wanted.push(("overflow.topic", config.overflow.topic.clone()));
    }
    wanted.extend(
        key_topics
            .iter()
            .map(|topic| ("a key's topic", topic.clone())),
    );
    for (key, topic) in wanted {
        match metadata.topic(&topic) {
            Some(found) => {
                if let Some(reason) = &found.problem {
                    findings.push(problem(
                        format!("{key} {topic}"),
                        format!("the topic is not usable: {reason}"),
                    ));
                }
            }
            None => findings.push(problem(
                format!("{key} {topic}"),
                format!("no such topic on the cluster: create it (for example `kafka-topics.sh --create --topic {topic} --partitions 12 --replication-factor 3`); sluice does not create topics"),
            )),
        }
    }
}

/// The open-files limit against the connection caps, io_uring, the CPUs
/// and whether the listen address is free.
fn check_host(config: &Config, place_of: &impl Fn(&str) -> String, findings: &mut Vec<Finding>) {
    let configured_cpus = crate::config::cpu_list(&config.server.cpus);
    let (_, default_cores) = crate::cpus::event_loop_cpus(configured_cpus.as_deref());
    let cores = match crate::server::core_count(config.server.cores, default_cores) {
        Ok(cores) => cores,
        Err(error) => {
            findings.push(problem(place_of("server.cores"), format!("{error:#}")));
            return;
        }
    };
    let connections = cores.saturating_mul(config.server.connections_per_core_max);
    let wanted = connections.saturating_add(256) as u64;
    let hard = open_files_hard_limit();
    let caps_set = config.server.connections_per_core_max
        != crate::config::ServerConfig::default().connections_per_core_max;
    if hard < wanted {
        let message = format!(
            "the open-files limit is {hard}; {cores} cores × server.connections_per_core_max {} need {wanted}: raise `ulimit -n` (LimitNOFILE= under systemd) or lower server.connections_per_core_max",
            config.server.connections_per_core_max
        );
        if caps_set || hard < 4_096 {
            findings.push(problem("host: ulimit -n".into(), message));
        } else {
            findings.push(note(
                "host: ulimit -n".into(),
                format!("{message} (the default caps are a ceiling: connections past the limit wait in the backlog)"),
            ));
        }
    }
    let uring = monoio::utils::detect_uring();
    findings.push(note(
        "host: io_uring".into(),
        match (config.server.io_driver, uring) {
            (crate::config::IoDriver::Epoll, _) => "server.io_driver = epoll".to_string(),
            (_, true) => "available; the event loops use it".into(),
            (_, false) => "not available (kernel or seccomp): the event loops use epoll".into(),
        },
    ));
    findings.push(note(
        "host: cores".into(),
        format!("{cores} event-loop cores"),
    ));
    if let Ok(address) = config.listen_address() {
        if address.port() != 0 && std::net::TcpListener::bind(address).is_err() {
            findings.push(problem(
                place_of("server.listen"),
                format!("{address} is in use by another process (is sluice already running?); stop it or choose another server.listen"),
            ));
        }
    }
}

fn open_files_hard_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_max
    } else {
        0
    }
}
