//! deploy/kubernetes (SPEC §16): the kustomize base and each overlay
//! render; their core objects pass kubernetes-validate's strict schemas
//! and the bundle passes checkov (a skipped check only with a reason); the
//! grace period outlasts the preStop pause, the drain and Kafka's retries;
//! the pods are Guaranteed with whole cores matching `server.cores`,
//! unprivileged, and keep io_uring; the PrometheusRule is
//! deploy/prometheus/alerts.yml; the autoscaler's metrics are served by the
//! adapter rules from series sluice exports; keys and schemas mounted the
//! way the kubelet mounts them reload in place; and a rolling restart
//! (scripts/rolling-restart, short form) loses and duplicates nothing.
//!
//! The tools (kubectl for `kubectl kustomize`, kubernetes-validate,
//! checkov) come pinned from scripts/install-client-tools.

mod common;
#[path = "support/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use process::Process;
use serde_json::Value;

/// The Kubernetes version the objects are validated against: the newest
/// the pinned kubernetes-validate knows.
const KUBERNETES_VERSION: &str = "1.37.0";
/// What the shutdown needs beyond the drain timeout: the control threads'
/// last round (under a second, ARCHITECTURE.md "Shutdown") and the exit,
/// with room for a loaded node.
const SHUTDOWN_MARGIN_SECONDS: u64 = 5;
/// Every rendering of the bundle: the base and each overlay.
const BUNDLES: [&str; 3] = ["", "overlays/runtime-default", "overlays/bare-metal"];

fn kubernetes(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(path)
}

/// The virtual environment with the pinned Kubernetes tools (the third
/// line scripts/install-client-tools prints), installed once per run.
fn tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let output = output_within(
            &mut Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/install-client-tools"
            )),
            Duration::from_secs(900),
        );
        assert!(
            output.status.success(),
            "scripts/install-client-tools failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let venv = stdout.lines().nth(2).expect("the Kubernetes tools' line");
        PathBuf::from(venv)
    })
}

fn tool(name: &str) -> PathBuf {
    tools().join("bin").join(name)
}

/// Runs `command` within `timeout` with its output in files (a pipe would
/// fill up and block a tool that prints much); its status, stdout and
/// stderr.
fn run(command: &mut Command, timeout: Duration) -> (std::process::ExitStatus, String, String) {
    let dir = TempDir::new("run");
    let stdout = dir.0.join("stdout");
    let stderr = dir.0.join("stderr");
    let mut child = command
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |path: &Path| String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
    (status, read(&stdout), read(&stderr))
}

/// `run`, failing the test unless the command succeeds; its stdout.
fn run_ok(command: &mut Command, timeout: Duration, what: &str) -> String {
    let (status, stdout, stderr) = run(command, timeout);
    assert!(status.success(), "{what}: {stdout}{stderr}");
    stdout
}

/// `kubectl kustomize` of `bundle` (a directory under deploy/kubernetes).
fn render_text(bundle: &str) -> String {
    run_ok(
        Command::new(tool("kubectl"))
            .arg("kustomize")
            .arg(kubernetes(bundle)),
        Duration::from_secs(60),
        &format!("kubectl kustomize deploy/kubernetes/{bundle}"),
    )
}

/// YAML documents as JSON values (PyYAML, from the tools' environment).
fn yaml_documents(text: &str) -> Vec<Value> {
    let dir = TempDir::new("yaml");
    let input = dir.file("input.yaml", text);
    let output = run_ok(
        Command::new(tool("python")).args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
            input.to_str().unwrap(),
        ]),
        Duration::from_secs(60),
        "reading YAML",
    );
    serde_json::from_str::<Vec<Value>>(&output).unwrap()
}

fn render(bundle: &str) -> Vec<Value> {
    yaml_documents(&render_text(bundle))
}

fn object<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|object| object["kind"] == kind)
}

/// The workload running sluice: the Deployment, or the bare-metal
/// overlay's DaemonSet.
fn workload(objects: &[Value]) -> &Value {
    let workloads: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
        .collect();
    assert_eq!(workloads.len(), 1, "one workload: {workloads:?}");
    workloads[0]
}

fn pod_spec(objects: &[Value]) -> &Value {
    &workload(objects)["spec"]["template"]["spec"]
}

fn pod_spec_mut(objects: &mut [Value]) -> &mut Value {
    let workload = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
        .unwrap();
    &mut workload["spec"]["template"]["spec"]
}

fn container(objects: &[Value]) -> &Value {
    let containers = pod_spec(objects)["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// sluice's configuration as the pods get it: the ConfigMap's sluice.toml,
/// then the container's `SLUICE_<SECTION>_<KEY>` variables over it.
fn configuration(objects: &[Value]) -> toml::Table {
    let config_map = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("sluice-config"))
        })
        .expect("the sluice-config ConfigMap");
    let text = config_map["data"]["sluice.toml"].as_str().unwrap();
    let mut table: toml::Table = toml::from_str(text).expect("sluice.toml is TOML");
    for variable in container(objects)["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap();
        let Some(rest) = name.strip_prefix("SLUICE_") else {
            continue;
        };
        let (section, key) = rest.split_once('_').unwrap();
        let text = variable["value"].as_str().unwrap();
        let value = toml::from_str::<toml::Table>(&format!("v = {text}"))
            .map(|parsed| parsed["v"].clone())
            .unwrap_or_else(|_| toml::Value::String(text.into()));
        table
            .entry(section.to_ascii_lowercase())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap()
            .insert(key.to_ascii_lowercase(), value);
    }
    table
}

fn setting<'a>(config: &'a toml::Table, section: &str, key: &str) -> &'a toml::Value {
    config
        .get(section)
        .and_then(|table| table.get(key))
        .unwrap_or_else(|| panic!("the bundle's configuration sets no {section}.{key}"))
}

fn milliseconds(config: &toml::Table, section: &str, key: &str) -> u64 {
    setting(config, section, key).as_integer().unwrap() as u64
}

/// The shutdown budget: the drain outlasts a request's delivery deadline
/// plus librdkafka's retries of its records, and the kubelet's grace
/// period (which counts from the preStop hook's start) outlasts the pause
/// plus the drain. Err names what is short.
fn shutdown_budget(objects: &[Value]) -> Result<(), String> {
    let config = configuration(objects);
    let delivery = milliseconds(&config, "server", "delivery_timeout_ms");
    let message = milliseconds(&config, "kafka", "message_timeout_ms");
    let drain = milliseconds(&config, "server", "drain_timeout_ms");
    if drain < delivery + message {
        return Err(format!(
            "server.drain_timeout_ms {drain} < server.delivery_timeout_ms {delivery} + kafka.message_timeout_ms {message}: the process could exit with records whose fate is unknown"
        ));
    }
    let grace = pod_spec(objects)["terminationGracePeriodSeconds"]
        .as_u64()
        .ok_or("no terminationGracePeriodSeconds")?;
    let pause = container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .ok_or("no preStop sleep")?;
    let needed = pause + drain.div_ceil(1000) + SHUTDOWN_MARGIN_SECONDS;
    if grace < needed {
        return Err(format!(
            "terminationGracePeriodSeconds {grace} < preStop pause {pause} s + drain {drain} ms + {SHUTDOWN_MARGIN_SECONDS} s = {needed} s: the kubelet would SIGKILL a drain"
        ));
    }
    Ok(())
}

#[test]
fn the_grace_period_outlasts_the_pause_the_drain_and_kafka() {
    for bundle in BUNDLES {
        let objects = render(bundle);
        shutdown_budget(&objects).unwrap_or_else(|problem| panic!("{bundle:?}: {problem}"));
        // The rule bites: a second less grace, or a drain shorter than
        // Kafka's retries, is refused.
        let pause = container(&objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap();
        let drain = milliseconds(&configuration(&objects), "server", "drain_timeout_ms");
        let mut short = objects.clone();
        pod_spec_mut(&mut short)["terminationGracePeriodSeconds"] =
            (pause + drain.div_ceil(1000) + SHUTDOWN_MARGIN_SECONDS - 1).into();
        assert!(shutdown_budget(&short)
            .unwrap_err()
            .contains("terminationGracePeriodSeconds"));
        let mut quick = objects.clone();
        pod_spec_mut(&mut quick)["containers"][0]["env"] = serde_json::json!([
            {"name": "SLUICE_SERVER_DRAIN_TIMEOUT_MS", "value": "10000"}
        ]);
        assert!(shutdown_budget(&quick)
            .unwrap_err()
            .contains("drain_timeout_ms"));
    }
}

/// The bundle's configuration passes `sluice check` (ranges, relations,
/// the host), with this machine's paths for the files the pods mount.
#[test]
fn the_bundle_configuration_passes_sluice_check() {
    let objects = render("");
    let config = configuration(&objects);
    let dir = TempDir::new("kubernetes-check");
    let path = dir.file("sluice.toml", &toml::to_string(&config).unwrap());
    let keys = dir.file("keys.toml", &keys_file_text());
    let schemas = dir.0.join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    let output = output_within(
        Command::new(sluice_binary())
            .args(["check", "--skip-kafka", "--config"])
            .arg(&path)
            .env("SLUICE_AUTH_KEYS_FILE", &keys)
            .env("SLUICE_SCHEMAS_DIR", &schemas)
            .env("SLUICE_SERVER_LISTEN", "127.0.0.1:0"),
        Duration::from_secs(60),
    );
    assert_success(
        &output,
        "sluice check of deploy/kubernetes/base/sluice.toml",
    );
}

#[test]
fn pods_are_guaranteed_whole_cores_unprivileged_and_keep_io_uring() {
    let profile = kubernetes("seccomp/io-uring.json");
    assert!(profile.exists(), "{}", profile.display());
    for bundle in BUNDLES {
        let objects = render(bundle);
        let spec = pod_spec(&objects);
        let container = container(&objects);
        let config = configuration(&objects);
        // Guaranteed QoS with whole CPUs, and as many event loops as the
        // tuning guide's split gives (three quarters, the rest for Kafka).
        let resources = &container["resources"];
        assert_eq!(
            resources["requests"], resources["limits"],
            "{bundle:?}: requests = limits"
        );
        let cpus: u64 = resources["limits"]["cpu"]
            .as_str()
            .and_then(|cpu| cpu.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{bundle:?}: whole CPUs, as \"N\": {}",
                    resources["limits"]["cpu"]
                )
            });
        assert!(resources["limits"]["memory"].is_string());
        let cores = setting(&config, "server", "cores").as_integer().unwrap() as u64;
        assert_eq!(
            cores,
            (cpus * 3 / 4).max(1),
            "{bundle:?}: server.cores for {cpus} CPUs"
        );
        // Unprivileged.
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert!(security["capabilities"]["add"].is_null());
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert!(spec["securityContext"]["runAsUser"].as_u64().unwrap() >= 10_000);
        assert_eq!(spec["automountServiceAccountToken"], false);
        // io_uring: the Localhost profile shipped in the bundle, except in
        // the overlay for clusters that cannot install it.
        for seccomp in [
            &spec["securityContext"]["seccompProfile"],
            &security["seccompProfile"],
        ] {
            if bundle == "overlays/runtime-default" {
                assert_eq!(seccomp["type"], "RuntimeDefault");
            } else {
                assert_eq!(seccomp["type"], "Localhost", "{bundle:?}");
                let path = seccomp["localhostProfile"].as_str().unwrap();
                assert_eq!(
                    Path::new(path).file_name(),
                    profile.file_name(),
                    "{bundle:?}: the profile the README installs"
                );
            }
        }
        // Probes and the preStop pause.
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert!(
            container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap()
                > 0
        );
        // Files as the kubelet mounts them: whole volumes (a subPath mount
        // is never updated), the paths sluice.toml names.
        let mounts = container["volumeMounts"].as_array().unwrap();
        assert!(mounts.iter().all(|mount| mount["subPath"].is_null()));
        let mount_of = |volume: &str| -> String {
            mounts
                .iter()
                .find(|mount| mount["name"] == volume)
                .and_then(|mount| mount["mountPath"].as_str())
                .unwrap_or_else(|| panic!("{bundle:?}: no mount of {volume}"))
                .to_string()
        };
        let volumes = spec["volumes"].as_array().unwrap();
        let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(volume("keys")["secret"]["secretName"], "sluice-keys");
        assert_eq!(volume("schemas")["configMap"]["name"], "sluice-schemas");
        let keys_file = setting(&config, "auth", "keys_file").as_str().unwrap();
        assert_eq!(
            Path::new(keys_file).parent(),
            Some(Path::new(&mount_of("keys")))
        );
        assert_eq!(
            setting(&config, "schemas", "dir").as_str(),
            Some(mount_of("schemas").as_str())
        );
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|arg| arg.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            ["--config", &format!("{}/sluice.toml", mount_of("config"))]
        );
        let config_map = volume("config")["configMap"]["name"].as_str().unwrap();
        assert!(object(&objects, "ConfigMap").is_some_and(|c| c["metadata"]["name"] == config_map));
    }
    // Pinning only where the static CPU manager gives the pod CPUs of its
    // own: the bare-metal overlay.
    let pinned = |bundle| setting(&configuration(&render(bundle)), "server", "pin_cores").clone();
    assert_eq!(pinned(""), toml::Value::Boolean(false));
    assert_eq!(pinned("overlays/bare-metal"), toml::Value::Boolean(true));
}

#[test]
fn the_bundle_passes_kubernetes_validate_and_checkov() {
    let dir = TempDir::new("kubernetes-render");
    let rendered = dir.0.join("rendered");
    let core = dir.0.join("core");
    std::fs::create_dir_all(&rendered).unwrap();
    std::fs::create_dir_all(&core).unwrap();
    let mut core_files = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for bundle in BUNDLES {
        let name = if bundle.is_empty() {
            "base"
        } else {
            &bundle["overlays/".len()..]
        };
        let text = render_text(bundle);
        std::fs::write(rendered.join(format!("{name}.yaml")), &text).unwrap();
        // The objects of Kubernetes itself; the Prometheus Operator's
        // (ServiceMonitor, PrometheusRule) have no schema there.
        for (index, object) in yaml_documents(&text).into_iter().enumerate() {
            kinds.insert(object["kind"].as_str().unwrap().to_string());
            if object["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("monitoring.coreos.com/")
            {
                continue;
            }
            let path = core.join(format!("{name}-{index}.json"));
            std::fs::write(&path, object.to_string()).unwrap();
            core_files.push(path);
        }
    }
    for kind in [
        "Deployment",
        "DaemonSet",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(kind), "no {kind} in the bundle");
    }
    let said = run_ok(
        Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .args(&core_files),
        Duration::from_secs(120),
        "kubernetes-validate --strict",
    );
    assert_eq!(
        said.lines()
            .filter(|line| line.contains(" passed for resource "))
            .count(),
        core_files.len(),
        "{said}"
    );
    // checkov, offline (--skip-download: no policy updates fetched). It
    // exits 1 when a check fails; the report says which.
    let (_, stdout, stderr) = run(
        Command::new(tool("checkov"))
            .arg("--directory")
            .arg(&rendered)
            .args([
                "--framework",
                "kubernetes",
                "--skip-download",
                "--output",
                "json",
            ]),
        Duration::from_secs(300),
    );
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("checkov: {stdout}{stderr}"));
    let summary = &report["summary"];
    let results = &report["results"];
    let failed: Vec<String> = results["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|check| {
            format!(
                "{} {} {}",
                check["check_id"], check["resource"], check["check_name"]
            )
        })
        .collect();
    assert!(failed.is_empty(), "checkov failed checks: {failed:#?}");
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert!(summary["passed"].as_u64().unwrap() >= 100, "{summary}");
    // A check is skipped only by an annotation that says why.
    for skipped in results["skipped_checks"].as_array().into_iter().flatten() {
        let reason = skipped["check_result"]["suppress_comment"]
            .as_str()
            .unwrap_or_default();
        assert!(
            reason.len() >= 40,
            "{} skipped for {} without a reason: {reason:?}",
            skipped["check_id"],
            skipped["resource"]
        );
    }
}

/// The rules in the PrometheusRule are deploy/prometheus/alerts.yml's:
/// the file is what scripts/kubernetes-rules makes of it, the rendered
/// object's groups equal the rules file's, and they pass its unit tests.
#[test]
fn the_prometheus_rule_is_deploy_prometheus_alerts() {
    let dir = TempDir::new("kubernetes-rules");
    let generated = dir.0.join("prometheusrule.yaml");
    run_ok(
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kubernetes-rules"
        ))
        .arg(&generated),
        Duration::from_secs(30),
        "scripts/kubernetes-rules",
    );
    assert_eq!(
        std::fs::read_to_string(&generated).unwrap(),
        std::fs::read_to_string(kubernetes("base/prometheusrule.yaml")).unwrap(),
        "deploy/kubernetes/base/prometheusrule.yaml is stale: run scripts/kubernetes-rules"
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let rules_file = yaml_documents(&std::fs::read_to_string(source.join("alerts.yml")).unwrap());
    for bundle in BUNDLES {
        let objects = render(bundle);
        let rule = object(&objects, "PrometheusRule").expect("a PrometheusRule");
        assert_eq!(
            rule["spec"]["groups"], rules_file[0]["groups"],
            "{bundle:?}"
        );
    }
    // The object's groups, as a rules file, pass alerts.test.yml.
    let objects = render("");
    let groups = &object(&objects, "PrometheusRule").unwrap()["spec"]["groups"];
    let rules = dir.file(
        "alerts.yml",
        &serde_json::json!({ "groups": groups }).to_string(),
    );
    std::fs::copy(
        source.join("alerts.test.yml"),
        dir.0.join("alerts.test.yml"),
    )
    .unwrap();
    let output = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert_success(
        &output,
        "promtool check rules (the PrometheusRule's groups)",
    );
    let output = promtool(
        &[
            "test",
            "rules",
            dir.0.join("alerts.test.yml").to_str().unwrap(),
        ],
        None,
    );
    assert_success(&output, "promtool test rules (the PrometheusRule's groups)");
}

/// The autoscaler's Pods metrics are the names the prometheus-adapter
/// rules serve, from series a live sluice exports, with queries that parse.
#[test]
fn the_autoscaler_scales_on_metrics_the_adapter_serves_from_sluice() {
    let objects = render("");
    let autoscaler = object(&objects, "HorizontalPodAutoscaler").expect("an autoscaler");
    assert_eq!(autoscaler["spec"]["scaleTargetRef"]["kind"], "Deployment");
    let wanted: Vec<&str> = autoscaler["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|metric| {
            assert_eq!(
                metric["type"], "Pods",
                "per-pod metrics of sluice's own load"
            );
            metric["pods"]["metric"]["name"].as_str().unwrap()
        })
        .collect();
    assert!(wanted.len() >= 2, "{wanted:?}");
    let adapter = yaml_documents(
        &std::fs::read_to_string(kubernetes("autoscaling/prometheus-adapter.yaml")).unwrap(),
    );
    let rules = adapter[0]["rules"].as_array().unwrap();
    let served: Vec<&str> = rules
        .iter()
        .map(|rule| rule["name"]["as"].as_str().unwrap())
        .collect();
    assert_eq!(
        served, wanted,
        "the adapter serves the autoscaler's metrics"
    );
    let sluice = Sluice::dev("");
    let scrape = sluice.get("/metrics").text();
    let mut queries = String::from("groups:\n  - name: adapter\n    rules:\n");
    for (index, rule) in rules.iter().enumerate() {
        let series = rule["seriesQuery"].as_str().unwrap();
        let name = series.split('{').next().unwrap();
        assert!(
            scrape.contains(&format!("# TYPE {name} ")),
            "sluice exports no {name}"
        );
        assert_eq!(
            rule["name"]["matches"].as_str().unwrap(),
            format!("^{name}$")
        );
        assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");
        // The adapter's template, filled as it fills it for one pod.
        let query = rule["metricsQuery"]
            .as_str()
            .unwrap()
            .replace("<<.Series>>", name)
            .replace(
                "<<.LabelMatchers>>",
                "namespace=\"sluice\",pod=~\"sluice-.*\"",
            )
            .replace("<<.GroupBy>>", "pod");
        queries.push_str(&format!(
            "      - record: adapter:query{index}\n        expr: {}\n",
            serde_json::to_string(&query).unwrap()
        ));
    }
    let dir = TempDir::new("adapter-rules");
    let path = dir.file("adapter.rules.yml", &queries);
    let output = promtool(&["check", "rules", path.to_str().unwrap()], None);
    assert_success(&output, "the adapter's queries");
}

/// A directory written the way the kubelet writes a ConfigMap or Secret
/// volume (its atomic writer): the files in a fresh `..<version>`
/// directory, `..data` switched to it by a rename, one link per name
/// (`keys.toml` -> `..data/keys.toml`), the old version removed.
struct KubeletVolume {
    dir: PathBuf,
    version: u32,
}

impl KubeletVolume {
    fn new(dir: PathBuf) -> KubeletVolume {
        std::fs::create_dir_all(&dir).unwrap();
        KubeletVolume { dir, version: 0 }
    }

    fn write(&mut self, files: &[(&str, &str)]) {
        let old = (self.version > 0).then(|| self.dir.join(format!("..version_{}", self.version)));
        self.version += 1;
        let name = format!("..version_{}", self.version);
        for (file, text) in files {
            let path = self.dir.join(&name).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
        for (file, _) in files {
            let top = file.split('/').next().unwrap();
            let link = self.dir.join(top);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{top}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

/// Keys from a Secret volume and schemas from a ConfigMap volume: loaded
/// through the kubelet's links at start, and reloaded in place when the
/// kubelet swaps a new version in.
#[test]
fn keys_and_schemas_mounted_by_the_kubelet_reload_in_place() {
    let dir = TempDir::new("kubelet-volumes");
    let mut keys = KubeletVolume::new(dir.0.join("keys"));
    let mut schemas = KubeletVolume::new(dir.0.join("schemas"));
    let key_file = |key: &str| format!("[[keys]]\nkey = \"{key}\"\ntenant_id = \"{TENANT}\"\n");
    keys.write(&[("keys.toml", &key_file("first_key"))]);
    schemas.write(&[("page_view.json", r#"{"required":["first_field"]}"#)]);
    let config = dir.file("sluice.toml", "[auth]\nreload_interval_ms = 100\n");
    let sluice = Process::start(
        Command::new(sluice_binary())
            .args([
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "1",
                "--config",
            ])
            .arg(&config)
            .arg("--keys-file")
            .arg(dir.0.join("keys/keys.toml"))
            .env("SLUICE_SERVER_PIN_CORES", "false")
            .env("SLUICE_SCHEMAS_DIR", dir.0.join("schemas")),
    );
    wait_until("ready", Duration::from_secs(20), || {
        sluice.get("/readyz").status == 200
    });
    let with = |field: &str| event("kubelet_user", &format!(r#","{field}":1"#));
    assert_eq!(
        sluice.post_event("first_key", &with("first_field")).status,
        202
    );
    let refused = sluice.post_event("first_key", &with("other_field"));
    assert_eq!(
        refused.status,
        400,
        "the schema applies: {}",
        refused.text()
    );
    // The Secret and the ConfigMap change.
    keys.write(&[("keys.toml", &key_file("second_key"))]);
    schemas.write(&[("page_view.json", r#"{"required":["second_field"]}"#)]);
    wait_until("the new key", Duration::from_secs(20), || {
        sluice
            .post_event("second_key", &with("second_field"))
            .status
            == 202
    });
    assert_eq!(
        sluice.post_event("first_key", &with("second_field")).status,
        401
    );
    wait_until("the new schema", Duration::from_secs(20), || {
        sluice.post_event("second_key", &with("first_field")).status == 400
    });
}

/// The rolling restart, short form: scripts/rolling-restart with a 2 s
/// preStop pause and the endpoint dropped 1 s in (the long form's result
/// is in BENCHMARKS.md).
#[test]
fn a_rolling_restart_loses_and_duplicates_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The load generator is another package's binary: built here, in the
    // profile of this test (cargo is not holding the build lock now).
    let release = std::env::current_exe()
        .unwrap()
        .components()
        .any(|part| part.as_os_str() == "release");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .current_dir(root)
        .args(["build", "--quiet", "-p", "loadgen"]);
    if release {
        build.arg("--release");
    }
    run_ok(&mut build, Duration::from_secs(600), "building loadgen");
    let loadgen = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join(if release { "release" } else { "debug" })
        .join("loadgen");
    let (status, stdout, stderr) = run(
        Command::new(root.join("scripts/rolling-restart"))
            .args(["2", "1"])
            .env("SLUICE_BIN", sluice_binary())
            .env("LOADGEN_BIN", &loadgen),
        Duration::from_secs(300),
    );
    assert!(
        status.success(),
        "scripts/rolling-restart 2 1:\n{stdout}{stderr}"
    );
    assert!(stdout.contains("| 2 s | 1 s |"), "{stdout}");
}
