//! `sluice check`, the configuration dry run, on a good configuration
//! (with a real broker) and on broken ones, each of which must be named
//! with its place and fix; and the same wording when a start is refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn sluice(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(sluice_binary());
    command.current_dir(&dir.0).args(args);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SLUICE_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = output_within(&mut command, Duration::from_secs(60));
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into(),
        stderr: String::from_utf8_lossy(&output.stderr).into(),
    }
}

fn check(dir: &TempDir, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let path = dir.file("sluice.toml", config);
    let mut args = vec!["check", "--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = sluice(dir, &args, env);
    eprintln!("sluice check printed:\n{}{}", run.stdout, run.stderr);
    run
}

/// Asserts a `problem:` line holds every one of `parts`.
fn assert_problem(run: &Run, parts: &[&str]) {
    assert!(
        run.stdout
            .lines()
            .any(|line| line.starts_with("problem: ")
                && parts.iter().all(|part| line.contains(part))),
        "no problem line with {parts:?}:\n{}",
        run.stdout
    );
}

fn base_config(dir: &TempDir, brokers: &str) -> String {
    let keys = dir.file("keys.toml", &keys_file_text());
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ncores = 1\n\n[auth]\nkeys_file = \"{}\"\n\n[kafka]\nbrokers = \"{brokers}\"\n",
        free_port(),
        keys.display()
    )
}

#[test]
fn a_good_configuration_passes_with_kafka_checked() {
    let broker = Broker::start();
    let dir = TempDir::new("check-good");
    let run = check(&dir, &base_config(&dir, &broker.address), &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert!(run.stdout.contains("sluice check: no problem found"));
    assert!(run.stdout.contains("answers: 1 broker"), "{}", run.stdout);
    assert!(run.stdout.contains("3 keys"), "{}", run.stdout);
    assert!(!run.stdout.contains("problem:"), "{}", run.stdout);
}

#[test]
fn a_syntax_error_is_named_at_its_line_and_column() {
    let dir = TempDir::new("check-syntax");
    let config = format!("{}enabled = tru\n", base_config(&dir, "127.0.0.1:9"));
    let run = check(&dir, &config, &["--skip-kafka"], &[]);
    assert_eq!(run.code, Some(2));
    assert_problem(
        &run,
        &["sluice.toml:10:11:", "kafka.enabled", "TOML syntax"],
    );
}

#[test]
fn every_wrong_key_is_named_not_only_the_first() {
    let dir = TempDir::new("check-keys");
    let config = base_config(&dir, "127.0.0.1:9").replace("cores = 1", "cores = -1")
        + "lingr_ms = 5\ncompression = 7\n";
    let run = check(&dir, &config, &["--skip-kafka"], &[]);
    assert_eq!(run.code, Some(2));
    assert_problem(
        &run,
        &[
            "sluice.toml:3:1:",
            "server.cores",
            "whole number, 0 or more",
        ],
    );
    assert_problem(
        &run,
        &[
            "sluice.toml:10:1:",
            "kafka.lingr_ms",
            "did you mean `linger_ms`?",
        ],
    );
    assert_problem(
        &run,
        &[
            "sluice.toml:11:1:",
            "kafka.compression",
            "string in double quotes",
        ],
    );
    assert!(run.stdout.contains("3 problems found"), "{}", run.stdout);
}

#[test]
fn values_that_contradict_each_other_are_named_with_where_they_come_from() {
    let dir = TempDir::new("check-relations");
    let config = base_config(&dir, "127.0.0.1:9")
        .replace("listen = \"127.0.0.1:", "listen = \"nope:")
        + "message_timeout_ms = 1000\n\n[limits]\nevent_bytes_max = 99999999\n";
    let run = check(
        &dir,
        &config,
        &["--skip-kafka"],
        &[
            ("SLUICE_KAFKA_LINGR_MS", "5"),
            ("SLUICE_SERVER_DELIVERY_TIMEOUT_MS", "5000"),
        ],
    );
    assert_eq!(run.code, Some(2));
    assert_problem(&run, &["SLUICE_KAFKA_LINGR_MS", "unknown SLUICE_ variable"]);
    assert_problem(&run, &["sluice.toml:2:1:", "server.listen", "IP:PORT"]);
    assert_problem(
        &run,
        &[
            "sluice.toml:10:1:",
            "kafka.message_timeout_ms",
            "server.delivery_timeout_ms (5000)",
        ],
    );
    assert_problem(
        &run,
        &[
            "sluice.toml:13:1:",
            "limits.event_bytes_max",
            "decompressed_body_bytes_max",
        ],
    );
}

#[test]
fn a_broken_keys_file_and_schema_are_named_at_their_place() {
    let dir = TempDir::new("check-files");
    let keys = dir.file(
        "keys.toml",
        "[[keys]]\nkey = \"cs_1\"\ntenant_id = \"t\"\nenabled = tru\n",
    );
    let schemas = dir.0.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(
        schemas.join("checkout.json"),
        "{\"type\": \"object\", \"properties\": {\"total\": {\"type\": \"nummber\"}}}",
    )
    .unwrap();
    let config = format!(
        "[auth]\nkeys_file = \"{}\"\n\n[schemas]\ndir = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:{}\"\n",
        keys.display(),
        schemas.display(),
        free_port()
    );
    let run = check(&dir, &config, &["--skip-kafka"], &[]);
    assert_eq!(run.code, Some(2));
    assert_problem(&run, &["problem: /", "keys.toml:4:11: invalid boolean"]);
    assert!(
        !run.stdout.contains("keys.toml: /"),
        "the place twice:\n{}",
        run.stdout
    );
    assert_problem(&run, &["checkout.json", "nummber"]);
}

#[test]
fn missing_topics_and_an_address_in_use_are_named() {
    let broker = Broker::start();
    let dir = TempDir::new("check-kafka");
    // A key whose topic the cluster lacks, and dead-letter and overflow
    // topics that were never created.
    let keys = dir.file(
        "keys.toml",
        "[[keys]]\nkey = \"cs_1\"\ntenant_id = \"t\"\ntopic = \"events_tenant_missing\"\n",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "[server]\nlisten = \"{}\"\n\n[auth]\nkeys_file = \"{}\"\n\n[kafka]\nbrokers = \"{}\"\ndlq_topic = \"events_dlq_never_created\"\n\n[overflow]\ntopic = \"events_overflow_never_created\"\n",
        taken.local_addr().unwrap(),
        keys.display(),
        broker.address
    );
    let run = check(&dir, &config, &[], &[]);
    assert_eq!(run.code, Some(2));
    assert_problem(
        &run,
        &["kafka.dlq_topic events_dlq_never_created", "no such topic"],
    );
    assert_problem(&run, &["events_tenant_missing", "no such topic"]);
    assert_problem(
        &run,
        &[
            "overflow.topic events_overflow_never_created",
            "no such topic",
        ],
    );
    assert_problem(&run, &["sluice.toml:2:1:", "in use by another process"]);
    // A check changes nothing: the missing topics were not created.
    let after = check(&dir, &config, &[], &[]);
    assert_problem(
        &after,
        &["kafka.dlq_topic events_dlq_never_created", "no such topic"],
    );
    drop(taken);
}

#[test]
fn kafka_out_of_reach_is_a_problem() {
    let dir = TempDir::new("check-unreachable");
    let dead = free_port();
    let run = check(
        &dir,
        &base_config(&dir, &format!("127.0.0.1:{dead}")),
        &["--kafka-timeout-ms", "1500"],
        &[],
    );
    assert_eq!(run.code, Some(2));
    assert_problem(
        &run,
        &["kafka.brokers 127.0.0.1:", "no metadata within 1500 ms"],
    );
}

#[test]
fn a_refused_start_says_the_same_in_one_line_and_exits_2() {
    let dir = TempDir::new("check-start");
    // The configuration: file, line, column, key, in plain words.
    let config = dir.file("bad.toml", "[server]\ncores = -1\n");
    let run = sluice(&dir, &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "bad.toml:2:9: server.cores: the number `-1`, expected a whole number, 0 or more"
        ),
        "{}",
        run.stderr
    );
    // A keys file with a syntax error: one line naming its place.
    let keys = dir.file(
        "keys.toml",
        "[[keys]]\nkey = \"cs_1\"\ntenant_id = \"t\"\nenabled = tru\n",
    );
    let run = sluice(
        &dir,
        &[
            "--keys-file",
            keys.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|line| line.contains("did not start"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(line.contains("keys.toml:4:11: invalid boolean"), "{line}");
    // Plain `sluice` with no keys file: how to get one, and --dev.
    let empty = TempDir::new("check-empty");
    let run = sluice(&empty, &["--listen", "127.0.0.1:0"], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("keys.example.toml"), "{}", run.stderr);
    assert!(run.stderr.contains("sluice --dev"), "{}", run.stderr);
}

#[test]
fn probe_answers_for_a_container_healthcheck() {
    let server = Sluice::dev("");
    let dir = TempDir::new("check-probe");
    let address = server.address.to_string();
    let run = sluice(&dir, &["probe", "--address", &address], &[]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let run = sluice(&dir, &["probe", "--ready", "--address", &address], &[]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let closed = format!("127.0.0.1:{}", free_port());
    let run = sluice(
        &dir,
        &["probe", "--address", &closed, "--timeout-ms", "500"],
        &[],
    );
    assert_eq!(run.code, Some(2));
}

/// A value for each flag of the server, as a command line would give it.
fn flag_value(dir: &TempDir, flag: &str) -> Option<Vec<String>> {
    let value = match flag {
        "--config" => dir.file("flags.toml", "").display().to_string(),
        "--listen" => format!("127.0.0.1:{}", free_port()),
        "--cores" => "1".into(),
        "--brokers" => "127.0.0.1:9".into(),
        "--topic" => "events".into(),
        "--dlq-topic" => "events-dlq".into(),
        "--keys-file" => dir
            .file("keys.toml", &keys_file_text())
            .display()
            .to_string(),
        "--ack-mode" => "enqueued".into(),
        "--log-format" => "json".into(),
        "--dev" => return Some(vec![flag.into()]),
        "--dev-key" => "cs_dev_flag_check_key".into(),
        _ => return None,
    };
    Some(vec![flag.into(), value])
}

/// The long flags of the server, as `sluice --help` lists them.
fn server_flags(dir: &TempDir) -> Vec<String> {
    let help = sluice(dir, &["--help"], &[]);
    let options = help
        .stdout
        .split("Options:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Options in --help:\n{}", help.stdout));
    options
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with(' '))
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with("--"))
                .map(|flag| flag.trim_end_matches(',').to_string())
        })
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// `sluice check` takes every flag the server takes, alone and all on one
/// command line (after `check` or before it), so the command line of a
/// deploy can be checked as it will run.
#[test]
fn check_takes_every_flag_of_the_server() {
    let dir = TempDir::new("check-flags");
    let flags = server_flags(&dir);
    assert!(flags.len() >= 10, "{flags:?}");
    let mut every = Vec::new();
    let mut failures = Vec::new();
    for flag in &flags {
        let Some(args) = flag_value(&dir, flag) else {
            failures.push(format!("{flag}: no value in this test's table: add one"));
            continue;
        };
        every.extend(args.clone());
        // --dev for the keys (no keys file needed) and --dev-key.
        let mut line = vec!["check".to_string(), "--skip-kafka".into()];
        if flag != "--dev" {
            line.push("--dev".into());
        }
        line.extend(args);
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        let run = sluice(&dir, &line, &[]);
        if run.code != Some(0) || !run.stdout.contains("sluice check: no problem found") {
            failures.push(format!(
                "sluice {}: exit {:?}\n{}{}",
                line.join(" "),
                run.code,
                run.stdout,
                run.stderr
            ));
        }
    }
    for before in [false, true] {
        let mut line: Vec<&str> = every.iter().map(String::as_str).collect();
        if before {
            line.extend(["check", "--skip-kafka"]);
        } else {
            line.splice(0..0, ["check", "--skip-kafka"]);
        }
        let run = sluice(&dir, &line, &[]);
        if run.code != Some(0) {
            failures.push(format!(
                "sluice {}: exit {:?}\n{}{}",
                line.join(" "),
                run.code,
                run.stdout,
                run.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A `SLUICE_*` variable that names no key is a problem for `sluice check`
/// and a warning at start, with the closest known name; its value (it may
/// be a secret) is never printed.
#[test]
fn an_unknown_variable_is_named_with_the_closest_and_never_its_value() {
    const SECRET: &str = "s3cr3t-value-never-printed";
    let dir = TempDir::new("check-variables");
    let run = check(
        &dir,
        &base_config(&dir, "127.0.0.1:9"),
        &["--skip-kafka", "--dev"],
        &[
            ("SLUICE_KAFKA_LINGR_MS", SECRET),
            ("SLUICE_LINGER_MS", SECRET),
            ("SLUICE_KAFKA_PROPERTIES_SASL_PASSWORD", SECRET),
            ("SLUICE_DEV_KEY", "cs_known_variable"),
            ("SLUICE_ZZZZZZZZ", SECRET),
        ],
    );
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    for (name, closest) in [
        (
            "SLUICE_KAFKA_LINGR_MS",
            "did you mean SLUICE_KAFKA_LINGER_MS?",
        ),
        ("SLUICE_LINGER_MS", "did you mean SLUICE_KAFKA_LINGER_MS?"),
        (
            "SLUICE_KAFKA_PROPERTIES_SASL_PASSWORD",
            "did you mean SLUICE_KAFKA_PROPERTIES__SASL_PASSWORD?",
        ),
        ("SLUICE_ZZZZZZZZ", "unknown SLUICE_ variable"),
    ] {
        assert_problem(&run, &[name, "unknown SLUICE_ variable", closest]);
    }
    assert!(
        !run.stdout.contains("SLUICE_DEV_KEY"),
        "SLUICE_DEV_KEY sets the dev key:\n{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|line| line.contains("SLUICE_ZZZZZZZZ") && !line.contains("did you mean")),
        "nothing is close to SLUICE_ZZZZZZZZ:\n{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains(SECRET) && !run.stderr.contains(SECRET),
        "a value was printed"
    );

    // At start: a warning naming the closest, the value never shown.
    let server = Sluice::start(Options {
        env: vec![("SLUICE_KAFKA_LINGR_MS".into(), SECRET.into())],
        ..Default::default()
    });
    server.wait_ready(200, Duration::from_secs(10));
    let logs = server.logs();
    assert!(
        logs.lines().any(|line| line.contains("WARN")
            && line.contains("SLUICE_KAFKA_LINGR_MS")
            && line.contains("SLUICE_KAFKA_LINGER_MS")),
        "{logs}"
    );
    assert!(!logs.contains(SECRET), "a value was logged");
}

/// A variable that is not UTF-8 (anyone's, not only sluice's) neither
/// crashes a start nor `sluice check`; a `SLUICE_*` one is named (it sets
/// nothing), never shown.
#[test]
fn a_variable_that_is_not_utf8_is_named_not_a_crash() {
    use std::os::unix::ffi::OsStrExt as _;
    let binary = std::ffi::OsStr::from_bytes(b"\xff\xfebinary");
    let dir = TempDir::new("check-not-utf8");
    let mut command = Command::new(sluice_binary());
    command
        .current_dir(&dir.0)
        .args(["check", "--dev", "--skip-kafka"])
        .env("OTHER_TOOL_VARIABLE", binary)
        .env("SLUICE_KAFKA_LINGER_MS", binary);
    let output = output_within(&mut command, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.lines().any(|line| line
            == "problem: SLUICE_KAFKA_LINGER_MS: not UTF-8 text: it sets nothing (its value is not shown)"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains("OTHER_TOOL_VARIABLE"), "{stdout}");
    // A start: it serves, and warns.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(sluice_binary())
        .current_dir(&dir.0)
        .args(["--dev", "--listen", &listen])
        .env("OTHER_TOOL_VARIABLE", binary)
        .env("SLUICE_KAFKA_LINGER_MS", binary)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let served = loop {
        if std::net::TcpStream::connect(&listen).is_ok() {
            break true;
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(served, "no listener:\n{stderr}");
    assert!(
        stderr.lines().any(|line| line.contains("WARN")
            && line.contains("SLUICE_KAFKA_LINGER_MS")
            && line.contains("not UTF-8 text")),
        "{stderr}"
    );
}
