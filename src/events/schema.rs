//! Event contracts (SPEC §13): JSON Schemas (draft 2020-12) per event type,
//! and per tenant, enforced on each event as sent.
//!
//! `schemas.dir` holds `<event_type>.json` for every tenant and
//! `<tenant_id>/<event_type>.json` overriding it for one tenant. A set is
//! compiled whole, off the event loops, and swapped in atomically (the
//! cores read it through an `ArcSwap`, as they read the key snapshot); a
//! set with any file that does not parse or compile is refused, naming
//! each file and why, and the last good set stays in use.
//!
//! Validation uses the `jsonschema` crate with the `regex` engine for
//! `pattern` (linear time: a tenant's schema cannot make one event burn a
//! core), formats as annotations (draft 2020-12's default), and no remote
//! `$ref` (nothing is fetched). Numbers are compared exactly, big ones
//! included (serde_json's arbitrary precision).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ahash::AHashMap;
use jsonschema::{PatternOptions, Validator};

use crate::error::ApiError;

/// Schema files taken at most: a typo pointing `schemas.dir` at `/` must
/// not compile the whole disk.
pub const SCHEMA_FILES_MAX: usize = 10_000;
/// A schema file's size at most.
pub const SCHEMA_FILE_BYTES_MAX: u64 = 1 << 20;

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

/// A compiled set of schemas.
#[derive(Default)]
pub struct SchemaSet {
    global: AHashMap<String, Validator>,
    tenants: AHashMap<String, AHashMap<String, Validator>>,
    /// Refuse event types without a schema (`schemas.require`).
    require: bool,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SchemaSet")
            .field("schemas", &self.len())
            .field("require", &self.require)
            .finish()
    }
}

/// Compiles one schema document.
pub fn compile(schema: &serde_json::Value) -> Result<Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_pattern_options(PatternOptions::regex())
        .build(schema)
        .map_err(|error| format!("not a valid draft 2020-12 schema: {error}"))
}

fn load_file(path: &Path) -> Result<Validator, String> {
    let size = std::fs::metadata(path)
        .map_err(|error| error.to_string())?
        .len();
    if size > SCHEMA_FILE_BYTES_MAX {
        return Err(format!(
            "{size} bytes; a schema file may be at most {SCHEMA_FILE_BYTES_MAX}"
        ));
    }
    let text = std::fs::read(path).map_err(|error| error.to_string())?;
    let schema: serde_json::Value = serde_json::from_slice(&text).map_err(|error| {
        format!(
            "not JSON: {error} (line {}, column {})",
            error.line(),
            error.column()
        )
    })?;
    compile(&schema)
}

/// `<name>.json` files of `dir`, as (event type, path).
fn schema_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if let Some(event_type) = name.strip_suffix(".json") {
            if !event_type.is_empty() && !event_type.starts_with('.') {
                files.push((event_type.to_string(), path.clone()));
            }
        }
    }
    files.sort();
    Ok(files)
}

impl SchemaSet {
    /// Compiles every schema under `dir`; every problem is named.
    pub fn load(dir: &Path, require: bool) -> Result<SchemaSet, Vec<SchemaProblem>> {
        let problem = |file: &Path, reason: String| SchemaProblem {
            file: file.to_path_buf(),
            reason,
        };
        let mut set = SchemaSet {
            require,
            ..SchemaSet::default()
        };
        let mut problems = Vec::new();
        // Every (map, event type, file) to compile: the shared ones, then
        // each tenant directory's.
        let mut wanted: Vec<(Option<String>, String, PathBuf)> = schema_files(dir)
            .map_err(|error| vec![problem(dir, error.to_string())])?
            .into_iter()
            .map(|(event_type, path)| (None, event_type, path))
            .collect();
        let entries =
            std::fs::read_dir(dir).map_err(|error| vec![problem(dir, error.to_string())])?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let Some(tenant) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            match schema_files(&path) {
                Ok(found) => wanted.extend(
                    found
                        .into_iter()
                        .map(|(event_type, file)| (Some(tenant.to_string()), event_type, file)),
                ),
                Err(error) => problems.push(problem(&path, error.to_string())),
            }
        }
        let files = wanted.len();
        for (tenant, event_type, path) in wanted.into_iter().take(SCHEMA_FILES_MAX) {
            match load_file(&path) {
                Ok(validator) => {
                    let map = match tenant {
                        None => &mut set.global,
                        Some(tenant) => set.tenants.entry(tenant).or_default(),
                    };
                    map.insert(event_type, validator);
                }
                Err(reason) => problems.push(problem(&path, reason)),
            }
        }
        if files > SCHEMA_FILES_MAX {
            problems.push(problem(
                dir,
                format!("{files} schema files; at most {SCHEMA_FILES_MAX} are taken"),
            ));
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(problems)
        }
    }

    /// Schemas in the set, overrides included.
    pub fn len(&self) -> usize {
        self.global.len() + self.tenants.values().map(|map| map.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The schema `tenant`'s events of `event_type` must meet.
    pub fn lookup(&self, tenant: &str, event_type: &str) -> Option<&Validator> {
        self.tenants
            .get(tenant)
            .and_then(|map| map.get(event_type))
            .or_else(|| self.global.get(event_type))
    }

    /// Checks one event (`document`, as sent) of `event_type` from
    /// `tenant`: a `schema_violation` names the first failing location as
    /// a JSON Pointer, the keyword and what it allows.
    pub fn check(&self, tenant: &str, event_type: &str, document: &[u8]) -> Result<(), ApiError> {
        let Some(validator) = self.lookup(tenant, event_type) else {
            if self.require {
                return Err(violation(
                    "/event_type".into(),
                    format!("no schema for event_type {event_type:?}, and schemas.require is on"),
                ));
            }
            return Ok(());
        };
        let value: serde_json::Value = serde_json::from_slice(document)
            .map_err(|error| violation(String::new(), format!("not JSON: {error}")))?;
        let Err(error) = validator.validate(&value) else {
            return Ok(());
        };
        let mut pointer = error.instance_path().as_str().to_string();
        if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
            if let Some(name) = property.as_str() {
                pointer.push('/');
                pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
            }
        }
        let keyword = error.kind().keyword().to_string();
        Err(violation(
            pointer,
            format!("{error} (schema keyword {keyword})"),
        ))
    }
}

fn violation(pointer: String, message: String) -> ApiError {
    ApiError {
        pointer: Some(pointer.into_boxed_str()),
        ..ApiError::new(400, "schema_violation", message)
    }
}

/// What the files under `dir` look like now (names, sizes, modification
/// times): a reload is due when it changes.
pub fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    let mut hasher = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    let mut visit = |path: &Path| {
        if let Ok(meta) = std::fs::metadata(path) {
            path.hash(&mut hasher);
            meta.len().hash(&mut hasher);
            meta.modified().ok().hash(&mut hasher);
        }
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    paths.sort();
    for path in paths.iter().take(SCHEMA_FILES_MAX) {
        visit(path);
        if path.is_dir() {
            if let Ok(inner) = std::fs::read_dir(path) {
                let mut inner: Vec<PathBuf> = inner.flatten().map(|entry| entry.path()).collect();
                inner.sort();
                for file in inner.iter().take(SCHEMA_FILES_MAX) {
                    visit(file);
                }
            }
        }
    }
    hasher.finish()
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
}
