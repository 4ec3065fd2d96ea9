//! Event contracts (SPEC §13): JSON Schemas (draft 2020-12) per event type,
//! and per tenant, enforced on each event as sent, within budgets (§15).
//!
//! `schemas.dir` holds `<event_type>.json` for every tenant and
//! `<tenant_id>/<event_type>.json` overriding it for one tenant ([`files`]:
//! a Kubernetes ConfigMap mount included). A set is compiled whole, off the
//! event loops, and swapped in atomically (the cores read it through an
//! `ArcSwap`, as they read the key snapshot); a set with any file that does
//! not parse, compile or fit the budget is refused, naming each file and
//! why, and the last good set stays in use. A reload compiles only the
//! files whose bytes changed: the others' compiled contracts are shared
//! with the set in use.
//!
//! Budgets, at load ([`budget`]): files, bytes per file and in all; per
//! document, the depth of in-place subschemas (`$ref` chains), their
//! expansion (subschemas one event value meets), each pattern's NFA; per
//! set, patterns and their NFA states. Per event ([`metered`]): a
//! validation may spend `schemas.validation_steps_min` plus
//! `schemas.validation_steps_per_event_byte` steps per byte of the event;
//! past that it is cut and the event refused (422
//! `schema_budget_exceeded`).
//!
//! Validation uses the `jsonschema` crate over a metered view of the
//! event's simd-json tape ([`instance`]: no tree), `pattern` matched by
//! [`pattern`] (linear in the input, charged by the pattern's size),
//! formats as annotations, no remote `$ref`. Numbers are compared
//! exactly, big ones included (read from the event's text).

pub mod budget;
pub mod checker;
pub mod checks;
pub mod contract_id;
pub mod equality;
pub mod files;
pub mod instance;
pub mod metered;
pub mod pattern;
pub mod tape;

pub use self::checks::{nesting, INLINE_NESTING_MAX};
pub use self::files::fingerprint;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ahash::AHashMap;
use jsonschema::{PatternOptions, Validator};

use self::budget::{DocumentCost, DocumentLimits};
pub use self::contract_id::{ContractId, CONTRACT_SHA256_BYTES};
use self::instance::{Instance, Metered};
use self::metered::{NamePatterns, Weights};
use crate::error::ApiError;

/// The budgets of `[schemas]` (`config::SchemasConfig` documents each and
/// its default; `BENCHMARKS.md` measures what they cost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaLimits {
    /// Schema files in the set (`schemas.files_max`).
    pub files_max: usize,
    /// One schema file (`schemas.file_bytes_max`).
    pub file_bytes_max: u64,
    /// All schema files together (`schemas.total_bytes_max`).
    pub total_bytes_max: u64,
    /// In-place subschemas nested on one event value
    /// (`schemas.ref_depth_max`).
    pub ref_depth_max: u64,
    /// Subschemas one event value meets in place, `$ref`s expanded
    /// (`schemas.expansion_max`).
    pub expansion_max: u64,
    /// One pattern's compiled NFA (`schemas.pattern_nfa_bytes_max`).
    pub pattern_nfa_bytes_max: usize,
    /// Distinct patterns in the set (`schemas.patterns_max`).
    pub patterns_max: u64,
    /// NFA states of the set's patterns together
    /// (`schemas.pattern_states_max`).
    pub pattern_states_max: u64,
    /// Validation steps per byte of an event
    /// (`schemas.validation_steps_per_event_byte`).
    pub validation_steps_per_event_byte: u64,
    /// Validation steps any event may take, however small
    /// (`schemas.validation_steps_min`).
    pub validation_steps_min: u64,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        SchemaLimits::from_config(&crate::config::SchemasConfig::default())
    }
}

impl SchemaLimits {
    /// The budgets `[schemas]` sets.
    pub fn from_config(config: &crate::config::SchemasConfig) -> SchemaLimits {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        SchemaLimits {
            files_max: size(config.files_max),
            file_bytes_max: config.file_bytes_max,
            total_bytes_max: config.total_bytes_max,
            ref_depth_max: config.ref_depth_max,
            expansion_max: config.expansion_max,
            pattern_nfa_bytes_max: size(config.pattern_nfa_bytes_max),
            patterns_max: config.patterns_max,
            pattern_states_max: config.pattern_states_max,
            validation_steps_per_event_byte: config.validation_steps_per_event_byte,
            validation_steps_min: config.validation_steps_min,
        }
    }

    /// A document's limits, with what the set has left of its pattern
    /// budgets after `spent`.
    fn document(&self, spent: &SetTotals) -> DocumentLimits {
        DocumentLimits {
            depth_max: self.ref_depth_max,
            expansion_max: self.expansion_max,
            pattern_nfa_bytes_max: self.pattern_nfa_bytes_max,
            patterns_left: self.patterns_max.saturating_sub(spent.patterns),
            pattern_states_left: self.pattern_states_max.saturating_sub(spent.pattern_states),
        }
    }

    /// The steps a validation of an event of `bytes` may take.
    pub fn event_steps_max(&self, bytes: usize) -> u64 {
        self.validation_steps_min.saturating_add(
            self.validation_steps_per_event_byte
                .saturating_mul(bytes as u64),
        )
    }
}

/// Steps per subschema applied in place to a value entered: the walk the
/// meter does not see (measured; see `BENCHMARKS.md`).
const SUBSCHEMA_STEPS: u64 = 8;

/// One file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblem {
    pub file: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for SchemaProblem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.file.display(), self.reason)
    }
}

/// One compiled schema, with what it was found to cost.
pub struct Contract {
    validator: Validator<Metered>,
    weights: Weights,
    name_patterns: Option<NamePatterns>,
    cost: DocumentCost,
    /// The file's bytes, hashed: a reload reuses a contract whose file did
    /// not change.
    digest: u64,
    /// The first bytes of the file's SHA-256 (`sha256sum` shows them
    /// first): the version a record's `schema` header names.
    sha256: [u8; CONTRACT_SHA256_BYTES],
}

impl Contract {
    /// What the document was found to cost at load.
    pub fn cost(&self) -> DocumentCost {
        self.cost
    }
}

/// What a set holds in all, for the set-wide budgets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetTotals {
    pub files: usize,
    pub bytes: u64,
    pub patterns: u64,
    pub pattern_states: u64,
}

/// A compiled set of schemas.
#[derive(Default)]
pub struct SchemaSet {
    global: AHashMap<String, Arc<Contract>>,
    tenants: AHashMap<String, AHashMap<String, Arc<Contract>>>,
    /// Refuse event types without a schema (`schemas.require`).
    require: bool,
    limits: SchemaLimits,
    totals: SetTotals,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SchemaSet")
            .field("schemas", &self.len())
            .field("require", &self.require)
            .field("totals", &self.totals)
            .finish()
    }
}

/// Compiles one schema document within `limits`: its cost is checked
/// before jsonschema sees it.
pub fn compile(schema: &serde_json::Value, limits: &SchemaLimits) -> Result<Contract, String> {
    compile_within(schema, limits, &SetTotals::default())
}

/// [`compile`], in a set that has `spent` this much of its budgets.
fn compile_within(
    schema: &serde_json::Value,
    limits: &SchemaLimits,
    spent: &SetTotals,
) -> Result<Contract, String> {
    let (cost, names) = budget::analyze(schema, limits.document(spent))?;
    let validator = jsonschema::options_for::<Metered>()
        .with_draft(jsonschema::Draft::Draft202012)
        // `patternProperties` names are matched by jsonschema's own
        // regexes: bounded in size like ours.
        .with_pattern_options(
            PatternOptions::regex()
                .size_limit(limits.pattern_nfa_bytes_max)
                .dfa_size_limit(pattern::DFA_CACHE_BYTES),
        )
        .with_keyword("pattern", pattern::factory(limits.pattern_nfa_bytes_max))
        .build(schema)
        .map_err(|error| format!("not a valid draft 2020-12 schema: {error}"))?;
    let weights = Weights {
        value_steps: metered::VALUE_STEPS
            .saturating_add(SUBSCHEMA_STEPS.saturating_mul(cost.expansion)),
    };
    let name_patterns = if names.is_empty() {
        None
    } else {
        let compiled = names
            .iter()
            .map(|name| pattern::Pattern::new(name, limits.pattern_nfa_bytes_max))
            .collect::<Result<Vec<_>, _>>()?;
        Some(NamePatterns::from(compiled))
    };
    Ok(Contract {
        validator,
        weights,
        name_patterns,
        cost,
        digest: 0,
        sha256: [0; CONTRACT_SHA256_BYTES],
    })
}

fn digest(bytes: &[u8]) -> u64 {
    ahash::RandomState::with_seeds(5, 6, 7, 8).hash_one(bytes)
}

/// Reads and compiles one file, or takes the contract of the set in use
/// when the file's bytes did not change.
fn load_file(
    file: &files::SchemaFile,
    limits: &SchemaLimits,
    reusable: &AHashMap<u64, Arc<Contract>>,
    spent: &SetTotals,
) -> Result<Arc<Contract>, String> {
    if file.bytes > limits.file_bytes_max {
        return Err(format!(
            "{} bytes; a schema file may be at most {} (schemas.file_bytes_max)",
            file.bytes, limits.file_bytes_max
        ));
    }
    let text = std::fs::read(&file.target).map_err(|error| error.to_string())?;
    if text.len() as u64 > limits.file_bytes_max {
        return Err(format!(
            "{} bytes; a schema file may be at most {} (schemas.file_bytes_max)",
            text.len(),
            limits.file_bytes_max
        ));
    }
    let digest = digest(&text);
    if let Some(contract) = reusable.get(&digest) {
        return Ok(Arc::clone(contract));
    }
    let schema: serde_json::Value = serde_json::from_slice(&text).map_err(|error| {
        format!(
            "not JSON: {error} (line {}, column {})",
            error.line(),
            error.column()
        )
    })?;
    let mut contract = compile_within(&schema, limits, spent)?;
    contract.digest = digest;
    contract.sha256 = contract_id::sha256_prefix(&text);
    Ok(Arc::new(contract))
}

impl SchemaSet {
    /// Compiles every schema under `dir` within the default budgets.
    pub fn load(dir: &Path, require: bool) -> Result<SchemaSet, Vec<SchemaProblem>> {
        SchemaSet::load_within(dir, require, &SchemaLimits::default(), None)
    }

    /// Compiles every schema under `dir` within `limits`, reusing the
    /// contracts of `previous` (the set in use) for files that did not
    /// change; every problem is named.
    pub fn load_within(
        dir: &Path,
        require: bool,
        limits: &SchemaLimits,
        previous: Option<&SchemaSet>,
    ) -> Result<SchemaSet, Vec<SchemaProblem>> {
        let problem = |file: &Path, reason: String| SchemaProblem {
            file: file.to_path_buf(),
            reason,
        };
        let (found, mut problems) =
            files::list(dir, limits.files_max.saturating_add(1)).map_err(|error| vec![error])?;
        if found.len() > limits.files_max {
            problems.push(problem(
                dir,
                format!(
                    "more than {} schema files (schemas.files_max)",
                    limits.files_max
                ),
            ));
            return Err(problems);
        }
        let bytes: u64 = found.iter().map(|file| file.bytes).sum();
        if bytes > limits.total_bytes_max {
            problems.push(problem(
                dir,
                format!(
                    "{bytes} bytes of schema files; at most {} (schemas.total_bytes_max)",
                    limits.total_bytes_max
                ),
            ));
            return Err(problems);
        }
        let reusable: AHashMap<u64, Arc<Contract>> = previous
            .filter(|set| set.limits == *limits)
            .map(|set| {
                set.contracts()
                    .map(|contract| (contract.digest, Arc::clone(contract)))
                    .collect()
            })
            .unwrap_or_default();
        let mut set = SchemaSet {
            require,
            limits: limits.clone(),
            totals: SetTotals {
                files: found.len(),
                bytes,
                ..SetTotals::default()
            },
            ..SchemaSet::default()
        };
        let mut patterns_seen = false;
        for file in found {
            let contract = match load_file(&file, limits, &reusable, &set.totals) {
                Ok(contract) => contract,
                Err(reason) => {
                    problems.push(problem(&file.path, reason));
                    continue;
                }
            };
            set.totals.patterns += contract.cost.patterns;
            set.totals.pattern_states += contract.cost.pattern_states;
            if !patterns_seen
                && (set.totals.patterns > limits.patterns_max
                    || set.totals.pattern_states > limits.pattern_states_max)
            {
                // Named at the file that passed it: the set is refused.
                patterns_seen = true;
                problems.push(problem(
                    &file.path,
                    format!(
                        "with this file the set has {} patterns of {} NFA states; at most {} patterns (schemas.patterns_max) of {} states (schemas.pattern_states_max)",
                        set.totals.patterns,
                        set.totals.pattern_states,
                        limits.patterns_max,
                        limits.pattern_states_max
                    ),
                ));
            }
            let map = match file.tenant {
                None => &mut set.global,
                Some(tenant) => set.tenants.entry(tenant).or_default(),
            };
            map.insert(file.event_type, contract);
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(problems)
        }
    }

    fn contracts(&self) -> impl Iterator<Item = &Arc<Contract>> {
        self.global
            .values()
            .chain(self.tenants.values().flat_map(|map| map.values()))
    }

    /// Schemas in the set, overrides included.
    pub fn len(&self) -> usize {
        self.global.len() + self.tenants.values().map(|map| map.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether events of a type with no schema are refused
    /// (`schemas.require`).
    pub fn requires_schema(&self) -> bool {
        self.require
    }

    /// What the set holds in all.
    pub fn totals(&self) -> SetTotals {
        self.totals
    }

    /// The budgets the set was loaded within.
    pub fn limits(&self) -> &SchemaLimits {
        &self.limits
    }

    /// The schema `tenant`'s events of `event_type` must meet.
    pub fn lookup(&self, tenant: &str, event_type: &str) -> Option<&Contract> {
        self.tenants
            .get(tenant)
            .and_then(|map| map.get(event_type))
            .or_else(|| self.global.get(event_type))
            .map(|contract| &**contract)
    }

    /// The contract `tenant`'s events of `event_type` are checked against,
    /// named (a record's `schema` header).
    pub fn identify(&self, tenant: &str, event_type: &str) -> Option<ContractId> {
        let (tenant_scope, contract) =
            match self.tenants.get(tenant).and_then(|map| map.get(event_type)) {
                Some(contract) => (true, contract),
                None => (false, self.global.get(event_type)?),
            };
        Some(ContractId {
            tenant_scope,
            sha256: contract.sha256,
        })
    }

    /// Whether events of `event_type` from `tenant` are checked at all
    /// (they have a schema, or `schemas.require` refuses them).
    pub fn applies(&self, tenant: &str, event_type: &str) -> bool {
        self.require || self.lookup(tenant, event_type).is_some()
    }

    /// Checks one event (`document`, as sent) of `event_type` from
    /// `tenant`: a `schema_violation` names the first failing location as
    /// a JSON Pointer, the keyword and what it allows; a validation past
    /// the event's budget is a `schema_budget_exceeded`. Its stack grows
    /// with the event's nesting times `schemas.ref_depth_max`: a core
    /// checks only events nested at most [`INLINE_NESTING_MAX`] deep
    /// (see [`SchemaSet::check_within`]), the checker threads the rest.
    pub fn check(&self, tenant: &str, event_type: &str, document: &[u8]) -> Result<(), ApiError> {
        match self.check_within(tenant, event_type, document, u64::MAX) {
            Checked::Done { result, .. } => result,
            Checked::Deferred => unreachable!("an unbounded allowance never defers"),
        }
    }

    /// [`SchemaSet::check`], spending at most `allowance` steps (the
    /// parse counted at [`PARSE_STEPS_PER_BYTE`]): a check that would need
    /// more is abandoned, `Deferred`, to be done where time is plentiful.
    pub fn check_within(
        &self,
        tenant: &str,
        event_type: &str,
        document: &[u8],
        allowance: u64,
    ) -> Checked {
        if self.lookup(tenant, event_type).is_none() {
            return self.without_contract(event_type);
        }
        tape::with_document(document, |parsed| {
            self.check_parsed(tenant, event_type, document.len(), parsed, allowance)
        })
    }

    /// [`SchemaSet::check_within`] of an event of `bytes` bytes parsed by
    /// [`tape::with_document`] (`None`: it is not JSON), the parse charged
    /// as though done here.
    pub fn check_parsed(
        &self,
        tenant: &str,
        event_type: &str,
        bytes: usize,
        parsed: Option<&tape::Document<'_>>,
        allowance: u64,
    ) -> Checked {
        let done = |result, spent_steps| Checked::Done {
            result,
            spent_steps,
        };
        let Some(contract) = self.lookup(tenant, event_type) else {
            return self.without_contract(event_type);
        };
        let parse_steps = PARSE_STEPS_PER_BYTE.saturating_mul(bytes as u64);
        if parse_steps > allowance {
            return Checked::Deferred;
        }
        let Some(document) = parsed else {
            let error = violation(String::new(), "the event is not JSON".into());
            return done(Err(error), parse_steps);
        };
        let budget = self.limits.event_steps_max(bytes);
        let cap = budget.min(allowance - parse_steps);
        let (verdict, spent) = metered::metered(
            cap,
            contract.weights,
            contract.name_patterns.as_ref(),
            || {
                contract
                    .validator
                    .validate(Instance::root(document))
                    .map_err(|error| describe(&error))
            },
        );
        let spent_steps = parse_steps + spent.steps;
        match (spent.cut, cap < budget) {
            (false, _) => done(verdict, spent_steps),
            (true, false) => {
                let error = self.over_budget(event_type, bytes, budget);
                done(Err(error), spent_steps)
            }
            (true, true) => Checked::Deferred,
        }
    }

    /// The verdict on an event of a type with no contract.
    fn without_contract(&self, event_type: &str) -> Checked {
        let problem =
            || format!("no schema for event_type {event_type:?}, and schemas.require is on");
        let result = (!self.require).then_some(()).ok_or_else(problem);
        let result = result.map_err(|problem| violation("/event_type".into(), problem));
        Checked::Done {
            result,
            spent_steps: 0,
        }
    }

    fn over_budget(&self, event_type: &str, bytes: usize, budget: u64) -> ApiError {
        ApiError::new(
            422,
            "schema_budget_exceeded",
            format!(
                "checking this {bytes}-byte event against the schema of {event_type:?} takes more than its budget of {budget} steps (schemas.validation_steps_min {} plus schemas.validation_steps_per_event_byte {} per byte)",
                self.limits.validation_steps_min, self.limits.validation_steps_per_event_byte
            ),
        )
    }
}

/// A violation as the answer shows it.
fn describe(error: &jsonschema::ValidationError<'_>) -> ApiError {
    let mut pointer = error.instance_path().as_str().to_string();
    if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
        if let Some(name) = property.as_str() {
            pointer.push('/');
            pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
        }
    }
    let keyword = error.kind().keyword().to_string();
    // jsonschema's message quotes the offending value whole: a 500 KB
    // string would be answered, dead-lettered and logged per event.
    let shown = crate::error::capped_display(error, crate::error::ERROR_VALUE_BYTES_MAX);
    violation(pointer, format!("{shown} (schema keyword {keyword})"))
}

fn violation(pointer: String, message: String) -> ApiError {
    ApiError {
        pointer: Some(pointer.into_boxed_str()),
        ..ApiError::new(400, "schema_violation", message)
    }
}

/// Steps charged per byte of an event parsed for its check (into a tree:
/// about 2 ns a byte; the tape costs less).
pub const PARSE_STEPS_PER_BYTE: u64 = 4;

/// A check's outcome when its time was limited.
#[derive(Debug)]
pub enum Checked {
    Done {
        result: Result<(), ApiError>,
        spent_steps: u64,
    },
    /// Not finished within the allowance: to be checked again elsewhere
    /// (what it spent is lost: at most the allowance).
    Deferred,
}

/// The schemas in use: `None` without `schemas.dir`.
pub type Schemas = Option<Arc<arc_swap::ArcSwap<SchemaSet>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, files: &[(&str, &str)]) -> (PathBuf, Result<SchemaSet, Vec<SchemaProblem>>) {
        let dir =
            std::env::temp_dir().join(format!("sluice-schemas-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let loaded = SchemaSet::load(&dir, false);
        (dir, loaded)
    }

    #[test]
    fn violations_name_the_pointer_and_the_keyword() {
        let (_dir, loaded) = set(
            "pointer",
            &[(
                "signup.json",
                r#"{"type":"object","required":["properties"],"properties":{"properties":{"type":"object","required":["plan"],"properties":{"plan":{"enum":["free","pro"]}}}}}"#,
            )],
        );
        let set = loaded.unwrap();
        let error = set
            .check("t", "signup", br#"{"properties":{"plan":"gold"}}"#)
            .unwrap_err();
        assert_eq!(error.code, "schema_violation");
        assert_eq!(error.pointer.as_deref(), Some("/properties/plan"));
        assert!(error.message.contains("enum"), "{}", error.message);
        assert!(error.message.contains("free"), "{}", error.message);
        let missing = set
            .check("t", "signup", br#"{"properties":{}}"#)
            .unwrap_err();
        assert_eq!(missing.pointer.as_deref(), Some("/properties/plan"));
        assert!(set
            .check("t", "signup", br#"{"properties":{"plan":"pro"}}"#)
            .is_ok());
        assert!(
            set.check("t", "other", br#"{}"#).is_ok(),
            "no schema, not required"
        );
    }

    #[test]
    fn a_tenant_override_applies_to_that_tenant_only() {
        let (_dir, loaded) = set(
            "override",
            &[
                ("click.json", r#"{"required":["a"]}"#),
                ("tenant_b/click.json", r#"{"required":["b"]}"#),
            ],
        );
        let set = loaded.unwrap();
        assert!(set.check("tenant_a", "click", br#"{"a":1}"#).is_ok());
        assert!(set.check("tenant_b", "click", br#"{"a":1}"#).is_err());
        assert!(set.check("tenant_b", "click", br#"{"b":1}"#).is_ok());
    }

    #[test]
    fn every_broken_file_is_named() {
        let (dir, loaded) = set(
            "broken",
            &[
                ("good.json", r#"{"type":"object"}"#),
                ("bad_json.json", r#"{"type":"#),
                ("bad_schema.json", r#"{"type":"nonsense"}"#),
            ],
        );
        let problems = loaded.unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.file == dir.join("bad_json.json") && p.reason.contains("not JSON")));
        assert!(problems
            .iter()
            .any(|p| p.file == dir.join("bad_schema.json")));
    }

    /// Writes `files` the way the kubelet's atomic writer lays out a
    /// ConfigMap volume: into a fresh `..<version>` directory, `..data`
    /// swapped to it by a rename, one link per top-level name.
    fn write_like_kubelet(dir: &Path, version: &str, files: &[(&str, &str)]) {
        let data = dir.join(format!("..{version}"));
        for (name, text) in files {
            let path = data.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let staged = dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &staged).unwrap();
        std::fs::rename(&staged, dir.join("..data")).unwrap();
        for (name, _) in files {
            let top = name.split('/').next().unwrap();
            let link = dir.join(top);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{top}"), &link).unwrap();
            }
        }
    }

    // A schema directory mounted from a ConfigMap: every schema is a link,
    // and the kubelet's `..data` and `..<version>` entries sit beside them.
    // The links used to be skipped (not regular files) and the version
    // directory taken for a tenant, so no schema applied to anyone.
    #[test]
    fn a_configmap_volume_loads_and_reloads_in_place() {
        let dir =
            std::env::temp_dir().join(format!("sluice-schemas-{}-kubelet", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_like_kubelet(
            &dir,
            "2026_01_01_00_00_00.1",
            &[
                ("click.json", r#"{"required":["a"]}"#),
                ("tenant_b/click.json", r#"{"required":["b"]}"#),
            ],
        );
        let set = SchemaSet::load(&dir, false).unwrap();
        assert_eq!(set.len(), 2, "one shared schema and one override");
        assert!(set.check("tenant_a", "click", br#"{"b":1}"#).is_err());
        assert!(set.check("tenant_a", "click", br#"{"a":1}"#).is_ok());
        assert!(set.check("tenant_b", "click", br#"{"b":1}"#).is_ok());
        let before = fingerprint(&dir);
        // The ConfigMap changes: the kubelet writes the new version beside
        // the old, swaps `..data`, then removes the old version.
        write_like_kubelet(
            &dir,
            "2026_01_01_00_01_00.2",
            &[
                ("click.json", r#"{"required":["c"]}"#),
                ("tenant_b/click.json", r#"{"required":["b"]}"#),
            ],
        );
        std::fs::remove_dir_all(dir.join("..2026_01_01_00_00_00.1")).unwrap();
        assert_ne!(fingerprint(&dir), before, "the swap is seen");
        let set = SchemaSet::load(&dir, false).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.check("tenant_a", "click", br#"{"a":1}"#).is_err());
        assert!(set.check("tenant_a", "click", br#"{"c":1}"#).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A schema using most keywords that descend into or compare values.
    const EVERY_KEYWORD: &str = r##"{
        "$defs": {
            "node": {"$dynamicAnchor": "node", "type": "object",
                     "properties": {"children": {"type": "array", "items": {"$dynamicRef": "#node"}}}},
            "tag": {"type": "string", "pattern": "^[a-z]{1,8}$", "minLength": 1}
        },
        "type": "object",
        "required": ["user_id"],
        "dependentRequired": {"variant": ["experiment_id"]},
        "dependentSchemas": {"experiment_id": {"properties": {"variant": {"enum": ["A", "B"]}}}},
        "propertyNames": {"pattern": "^[a-z_]+$"},
        "properties": {
            "user_id": {"type": "string", "maxLength": 64},
            "event_time": {"type": "integer", "minimum": 0, "multipleOf": 1},
            "tree": {"$ref": "#/$defs/node"},
            "properties": {
                "type": "object",
                "patternProperties": {"^x_": {"type": "number"}},
                "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "array"}, {"type": "object"}]},
                "properties": {
                    "tags": {"type": "array", "uniqueItems": true, "items": {"$ref": "#/$defs/tag"},
                             "contains": {"const": "a"}, "minContains": 1, "maxContains": 3},
                    "pair": {"prefixItems": [{"type": "number"}, {"type": "string"}], "items": false},
                    "amount": {"oneOf": [{"type": "integer"}, {"multipleOf": 0.01}]},
                    "choice": {"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"not": {"type": "null"}}},
                    "fixed": {"const": {"a": [1, 2.0, {"b": null}]}}
                },
                "unevaluatedProperties": true
            }
        },
        "unevaluatedProperties": false
    }"##;

    fn every_keyword_events() -> Vec<String> {
        vec![
            r#"{"user_id":"u","event_time":1,"tree":{"children":[{"children":[]},{"children":[{}]}]},"properties":{"tags":["a","b","c"],"pair":[1,"x"],"amount":1.25,"choice":"ok","fixed":{"a":[1,2,{"b":null}]},"x_y":1.5,"other":"s"}}"#.into(),
            r#"{"user_id":"u","variant":"C","experiment_id":"e","properties":{"tags":["a","a"],"pair":[1,"x",3],"amount":1.255,"choice":null,"fixed":{"a":[1]}}}"#.into(),
            r#"{"user_id":"u","Bad-Name":1,"properties":{"tags":["A"],"x_z":"not a number"}}"#.into(),
        ]
    }

    // The meter may cut a validation at any step: whatever keyword is
    // running then must unwind cleanly (the release build aborts on a
    // panic), whatever the verdict.
    #[test]
    fn a_validation_cut_at_any_step_unwinds_without_panicking() {
        let limits = SchemaLimits::default();
        let schema: serde_json::Value = serde_json::from_str(EVERY_KEYWORD).unwrap();
        let contract = compile(&schema, &limits).unwrap();
        for text in every_keyword_events() {
            tape::with_document(text.as_bytes(), |document| {
                let value = Instance::root(document.unwrap());
                let (_, full) = metered::metered(
                    u64::MAX,
                    contract.weights,
                    contract.name_patterns.as_ref(),
                    || contract.validator.validate(value).is_ok(),
                );
                assert!(!full.cut);
                for budget in 0..=full.steps {
                    let (_, spent) = metered::metered(
                        budget,
                        contract.weights,
                        contract.name_patterns.as_ref(),
                        || {
                            let valid = contract.validator.is_valid(value);
                            let first = contract.validator.validate(value).is_ok();
                            (valid, first)
                        },
                    );
                    assert!(spent.cut || budget >= full.steps, "{budget} of {full:?}");
                }
            });
        }
    }

    #[test]
    fn every_keyword_still_decides_as_before() {
        let limits = SchemaLimits::default();
        let schema: serde_json::Value = serde_json::from_str(EVERY_KEYWORD).unwrap();
        let ours = compile(&schema, &limits).unwrap();
        let reference = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap();
        for text in every_keyword_events() {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let (verdict, spent) = tape::with_document(text.as_bytes(), |document| {
                metered::metered(u64::MAX, ours.weights, ours.name_patterns.as_ref(), || {
                    ours.validator.is_valid(Instance::root(document.unwrap()))
                })
            });
            assert!(!spent.cut);
            assert_eq!(verdict, reference.is_valid(&value), "{text}");
        }
    }

    #[test]
    fn an_event_past_its_budget_is_refused_naming_the_limits() {
        let dir =
            std::env::temp_dir().join(format!("sluice-schemas-{}-budget", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pricey.json"),
            r#"{"properties":{"properties":{"properties":{"s":{"pattern":"a[ab]{1000}[^ab]"}}}}}"#,
        )
        .unwrap();
        let limits = SchemaLimits {
            validation_steps_min: 1_000,
            validation_steps_per_event_byte: 64,
            pattern_nfa_bytes_max: 1 << 20,
            ..SchemaLimits::default()
        };
        let set = SchemaSet::load_within(&dir, false, &limits, None).unwrap();
        let mut text = String::from(r#"{"properties":{"s":""#);
        let mut state = 7u64;
        for _ in 0..50_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push(if state >> 63 == 0 { 'a' } else { 'b' });
        }
        text.push_str(r#""}}"#);
        let started = std::time::Instant::now();
        let error = set.check("t", "pricey", text.as_bytes()).unwrap_err();
        assert_eq!(error.status, 422);
        assert_eq!(error.code, "schema_budget_exceeded");
        assert!(
            error
                .message
                .contains("schemas.validation_steps_per_event_byte"),
            "{}",
            error.message
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reload_reuses_what_did_not_change() {
        let (dir, loaded) = set(
            "reuse",
            &[
                ("a.json", r#"{"type":"object"}"#),
                ("b.json", r#"{"required":["x"]}"#),
            ],
        );
        let first = loaded.unwrap();
        std::fs::write(dir.join("b.json"), r#"{"required":["y"]}"#).unwrap();
        let second =
            SchemaSet::load_within(&dir, false, &SchemaLimits::default(), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.global["a"], &second.global["a"]));
        assert!(!Arc::ptr_eq(&first.global["b"], &second.global["b"]));
        assert!(second.check("t", "b", br#"{"y":1}"#).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_set_budgets_name_the_file_and_the_limit() {
        let (dir, _) = set(
            "set-budget",
            &[
                ("a.json", r#"{"pattern":"^a+$"}"#),
                ("b.json", r#"{"pattern":"^b+$"}"#),
                ("c.json", r#"{"type":"string"}"#),
            ],
        );
        let few_patterns = SchemaLimits {
            patterns_max: 1,
            ..SchemaLimits::default()
        };
        let problems = SchemaSet::load_within(&dir, false, &few_patterns, None).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, dir.join("b.json"));
        assert!(
            problems[0].reason.contains("schemas.patterns_max"),
            "{problems:?}"
        );
        let few_files = SchemaLimits {
            files_max: 2,
            ..SchemaLimits::default()
        };
        let problems = SchemaSet::load_within(&dir, false, &few_files, None).unwrap_err();
        assert!(
            problems[0].reason.contains("schemas.files_max"),
            "{problems:?}"
        );
        let few_bytes = SchemaLimits {
            total_bytes_max: 40,
            ..SchemaLimits::default()
        };
        let problems = SchemaSet::load_within(&dir, false, &few_bytes, None).unwrap_err();
        assert!(
            problems[0].reason.contains("schemas.total_bytes_max"),
            "{problems:?}"
        );
        let small_files = SchemaLimits {
            file_bytes_max: 17,
            ..SchemaLimits::default()
        };
        let problems = SchemaSet::load_within(&dir, false, &small_files, None).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].reason.contains("schemas.file_bytes_max"),
            "{problems:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Prints, per attack class and for ordinary events, the steps a
    /// validation was charged and the time it took: steps must not be
    /// cheaper than time (a step is about a nanosecond). Run in release:
    /// `cargo test --release --lib calibrate -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn calibrate_steps_against_time() {
        let limits = SchemaLimits {
            pattern_nfa_bytes_max: 1 << 20,
            expansion_max: 4_096,
            ..SchemaLimits::default()
        };
        let random_ab = |bytes: usize| {
            let mut state = 7u64;
            (0..bytes)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if state >> 63 == 0 {
                        'a'
                    } else {
                        'b'
                    }
                })
                .collect::<String>()
        };
        let many = |count: usize, item: &dyn Fn(usize) -> String| {
            (0..count).map(item).collect::<Vec<_>>().join(",")
        };
        let nested = |depth: usize| {
            let mut text = String::from("1");
            for _ in 0..depth {
                text = format!(r#"{{"a":{text}}}"#);
            }
            text
        };
        let cases: Vec<(&str, String, String)> = vec![
            ("uniqueItems, 20,000 decimals that round alike", r#"{"uniqueItems":true}"#.into(),
                format!("[{}]", many(20_000, &|i| format!("1.{:020}", i + 1)))),
            ("uniqueItems, 20,000 objects", r#"{"uniqueItems":true}"#.into(),
                format!("[{}]", many(20_000, &|i| format!(r#"{{"a":{i},"b":"x{i}"}}"#)))),
            ("pattern a[ab]{1000}[^ab], 100 KB random a/b", r#"{"pattern":"a[ab]{1000}[^ab]"}"#.into(),
                format!("\"{}\"", random_ab(100_000))),
            ("pattern a[ab]{30}[^ab], 100 KB random a/b", r#"{"pattern":"a[ab]{30}[^ab]"}"#.into(),
                format!("\"{}\"", random_ab(100_000))),
            ("pattern ^[a-z0-9-]{36}$, 10,000 ids", r#"{"items":{"pattern":"^[a-z0-9-]{36}$"}}"#.into(),
                format!("[{}]", many(10_000, &|i| format!("\"{i:036}\"")))),
            ("minimum, 20 numbers of 9,990 digits", r#"{"items":{"minimum":0.5}}"#.into(),
                format!("[{}]", many(20, &|_| format!("1.{}3", "1".repeat(9_990))))),
            ("multipleOf, 20 numbers of 9,990 digits", r#"{"items":{"multipleOf":0.0001}}"#.into(),
                format!("[{}]", many(20, &|_| format!("1.{}3", "1".repeat(9_990))))),
            ("multipleOf, 5,000 numbers 1e300", r#"{"items":{"multipleOf":0.0001}}"#.into(),
                format!("[{}]", many(5_000, &|_| "1e300".to_string()))),
            ("allOf of 2,000 type checks per element, 10,000 elements",
                format!(r#"{{"items":{{"allOf":[{}]}}}}"#, many(2_000, &|_| r#"{"type":"number"}"#.to_string())),
                format!("[{}]", many(10_000, &|i| i.to_string()))),
            ("allOf of 2,000 empty schemas per element, 10,000 elements",
                format!(r#"{{"items":{{"allOf":[{}]}}}}"#, many(2_000, &|_| "{}".to_string())),
                format!("[{}]", many(10_000, &|i| i.to_string()))),
            ("two $refs per level descending, 20 levels",
                r##"{"$defs":{"t":{"properties":{"a":{"allOf":[{"$ref":"#/$defs/t"},{"$ref":"#/$defs/t"}]}}}},"$ref":"#/$defs/t"}"##.into(),
                nested(20)),
            ("enum of 2,000 numbers, 10,000 elements",
                format!(r#"{{"items":{{"enum":[{}]}}}}"#, many(2_000, &|i| format!("{i}.5"))),
                format!("[{}]", many(10_000, &|i| i.to_string()))),
            ("required of 5,000 names, 100 objects",
                format!(r#"{{"items":{{"required":[{}]}}}}"#, many(5_000, &|i| format!("\"n{i}\""))),
                format!("[{}]", many(100, &|_| r#"{"n0":1}"#.to_string()))),
            ("patternProperties of 20 patterns, 10,000 members",
                format!(r#"{{"patternProperties":{{{}}}}}"#, many(20, &|i| format!(r#""^p{i}_[a-z]+$":{{"type":"number"}}"#))),
                format!("{{{}}}", many(10_000, &|i| format!(r#""p{}_abc{i}":1"#, i % 20)))),
            ("ordinary: every keyword", EVERY_KEYWORD.into(), every_keyword_events()[0].clone()),
        ];
        for (name, schema, event) in cases {
            let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
            let contract = compile(&schema, &limits).unwrap();
            for round in ["cold", "warm"] {
                let started = std::time::Instant::now();
                let (valid, spent) = tape::with_document(event.as_bytes(), |document| {
                    metered::metered(
                        u64::MAX,
                        contract.weights,
                        contract.name_patterns.as_ref(),
                        || {
                            let value = Instance::root(document.unwrap());
                            contract.validator.validate(value).is_ok()
                        },
                    )
                });
                let elapsed = started.elapsed();
                println!(
                    "{name} ({round}): {} bytes, valid {valid}, {} steps ({:.1} per byte), {:?}, {:.2} ns per step",
                    event.len(),
                    spent.steps,
                    spent.steps as f64 / event.len() as f64,
                    elapsed,
                    elapsed.as_nanos() as f64 / spent.steps.max(1) as f64
                );
            }
        }
    }

    /// The deepest validation the budgets allow, on a thread with a core's
    /// stack (2 MiB): a chain of `schemas.ref_depth_max` in-place
    /// subschemas at every level of an event nested as deep as the parser
    /// takes (128). Run in release: the debug build's frames are larger.
    #[test]
    #[ignore]
    fn the_deepest_validation_allowed_fits_a_core_stack() {
        let limits = SchemaLimits::default();
        // Two in-place steps a link: the anyOf branch, then its $ref.
        let chain = (limits.ref_depth_max as usize - 2) / 2;
        let mut defs = serde_json::Map::new();
        for link in 0..chain {
            defs.insert(
                format!("c{link}"),
                serde_json::json!({"anyOf": [{"$ref": format!("#/$defs/c{}", link + 1)}, {"type": "null"}]}),
            );
        }
        defs.insert(
            format!("c{chain}"),
            serde_json::json!({"type": ["object", "array"], "properties": {"a": {"$ref": "#/$defs/c0"}}, "items": {"$ref": "#/$defs/c0"}}),
        );
        let schema = serde_json::json!({"$defs": defs, "$ref": "#/$defs/c0"});
        let contract = compile(&schema, &limits).unwrap();
        let mut event = String::from("\"leaf\"");
        for level in 0..127 {
            event = if level % 2 == 0 {
                format!(r#"{{"a":{event}}}"#)
            } else {
                format!("[{event}]")
            };
        }
        let handle = std::thread::Builder::new()
            .stack_size(
                std::env::var("STACK_KB").map_or(2 << 20, |kb| kb.parse::<usize>().unwrap() << 10),
            )
            .spawn(move || {
                tape::with_document(event.as_bytes(), |document| {
                    metered::metered(u64::MAX, contract.weights, None, || {
                        let value = Instance::root(document.unwrap());
                        contract.validator.validate(value).is_ok()
                    })
                })
            })
            .unwrap();
        let (valid, spent) = handle.join().unwrap();
        println!("deepest: valid {valid}, {spent:?}");
    }
}
