//! The schema files of `schemas.dir`: `<event_type>.json` for every
//! tenant, `<tenant_id>/<event_type>.json` for one.
//!
//! Laid out by hand or mounted from a Kubernetes ConfigMap: kubelet writes
//! the files into a hidden `..<timestamp>` directory, points `..data` at
//! it, and makes each top-level name a symbolic link through `..data`
//! (`signup.json -> ..data/signup.json`); an update writes a new
//! timestamped directory and renames a `..data_tmp` link over `..data`,
//! so every name changes target at once. So: names starting with `.` are
//! not schemas or tenants (kubelet's `..` entries included), and symbolic
//! links are followed where they stay inside the directory; one that
//! leads out of it is refused, named.

use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use super::SchemaProblem;

/// One schema file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaFile {
    /// `None`: the shared schema of every tenant.
    pub tenant: Option<String>,
    pub event_type: String,
    /// As listed, under `schemas.dir` (a link's own name).
    pub path: PathBuf,
    /// What it resolves to.
    pub target: PathBuf,
    pub bytes: u64,
    pub modified: Option<std::time::SystemTime>,
}

/// A directory entry, links followed.
struct Entry {
    name: String,
    path: PathBuf,
    target: PathBuf,
    metadata: std::fs::Metadata,
}

/// The entries of `dir` that may be schemas or tenants, sorted by name,
/// each resolved; links that leave `root`, or lead nowhere, are problems.
fn entries(
    dir: &Path,
    root: &Path,
    problems: &mut Vec<SchemaProblem>,
    listed_max: usize,
) -> std::io::Result<Vec<Entry>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)?.take(listed_max) {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let target = match std::fs::canonicalize(&path) {
            Ok(target) => target,
            Err(error) => {
                problems.push(SchemaProblem {
                    file: path,
                    reason: format!("cannot be resolved: {error}"),
                });
                continue;
            }
        };
        if !target.starts_with(root) {
            problems.push(SchemaProblem {
                file: path,
                reason: format!(
                    "a symbolic link out of schemas.dir (to {}): refused",
                    target.display()
                ),
            });
            continue;
        }
        match std::fs::metadata(&target) {
            Ok(metadata) => found.push(Entry {
                name,
                path,
                target,
                metadata,
            }),
            Err(error) => problems.push(SchemaProblem {
                file: path,
                reason: error.to_string(),
            }),
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

fn schema_file(tenant: Option<&str>, entry: Entry) -> Option<SchemaFile> {
    if !entry.metadata.is_file() {
        return None;
    }
    let event_type = entry.name.strip_suffix(".json")?;
    if event_type.is_empty() {
        return None;
    }
    Some(SchemaFile {
        tenant: tenant.map(str::to_string),
        event_type: event_type.to_string(),
        bytes: entry.metadata.len(),
        modified: entry.metadata.modified().ok(),
        path: entry.path,
        target: entry.target,
    })
}

/// Every schema file under `dir` (at most `listed_max` entries read per
/// directory), and the problems met; an unreadable `dir` is an error.
pub fn list(
    dir: &Path,
    listed_max: usize,
) -> Result<(Vec<SchemaFile>, Vec<SchemaProblem>), SchemaProblem> {
    let unreadable = |error: std::io::Error| SchemaProblem {
        file: dir.to_path_buf(),
        reason: error.to_string(),
    };
    let root = std::fs::canonicalize(dir).map_err(unreadable)?;
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut tenants = Vec::new();
    for entry in entries(dir, &root, &mut problems, listed_max).map_err(unreadable)? {
        if entry.metadata.is_dir() {
            tenants.push(entry);
        } else if let Some(file) = schema_file(None, entry) {
            files.push(file);
        }
    }
    for tenant in tenants {
        match entries(&tenant.path, &root, &mut problems, listed_max) {
            Ok(inner) => files.extend(
                inner
                    .into_iter()
                    .filter_map(|entry| schema_file(Some(&tenant.name), entry)),
            ),
            Err(error) => problems.push(SchemaProblem {
                file: tenant.path.clone(),
                reason: error.to_string(),
            }),
        }
    }
    Ok((files, problems))
}

/// Entries read per directory for a fingerprint: past `schemas.files_max`'s
/// range, so a change among any files the load would count is seen.
const FINGERPRINT_ENTRIES_MAX: usize = 100_001;

/// What the schema files under `dir` look like now (names, what links
/// resolve to, sizes, modification times, and the problems met): a reload
/// is due when it changes. A ConfigMap update swaps `..data`, so every
/// link's target changes even when sizes and times do not.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    match list(dir, FINGERPRINT_ENTRIES_MAX) {
        Ok((found, problems)) => {
            for file in found {
                file.path.hash(&mut hasher);
                file.target.hash(&mut hasher);
                file.bytes.hash(&mut hasher);
                file.modified.hash(&mut hasher);
            }
            for problem in problems {
                problem.file.hash(&mut hasher);
                problem.reason.hash(&mut hasher);
            }
        }
        Err(problem) => problem.reason.hash(&mut hasher),
    }
    hasher.finish()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory, removed on drop.
    pub struct Scratch(pub PathBuf);

    impl Scratch {
        pub fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("sluice-schema-files-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Lays `files` out as kubelet mounts a ConfigMap: a timestamped
    /// directory, `..data` pointing at it, and every top-level name a link
    /// through `..data`. A second call swaps `..data` atomically, as an
    /// update does.
    pub fn kubelet_mount(dir: &Path, stamp: &str, files: &[(&str, &str)]) {
        let hidden = dir.join(format!("..{stamp}"));
        std::fs::create_dir_all(&hidden).unwrap();
        let mut top = Vec::new();
        for (name, text) in files {
            let path = hidden.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            let first = name.split('/').next().unwrap().to_string();
            if !top.contains(&first) {
                top.push(first);
            }
        }
        let staged = dir.join("..data_tmp");
        symlink(format!("..{stamp}"), &staged).unwrap();
        std::fs::rename(&staged, dir.join("..data")).unwrap();
        for name in top {
            let link = dir.join(&name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }

    #[test]
    fn a_kubelet_mount_lists_the_files_through_its_links() {
        let scratch = Scratch::new("kubelet");
        kubelet_mount(
            &scratch.0,
            "2026_12_06_10_00_00.000000001",
            &[("signup.json", "{}"), ("tenant_b/click.json", "{}")],
        );
        let (files, problems) = list(&scratch.0, 100).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<_> = files
            .iter()
            .map(|file| (file.tenant.clone(), file.event_type.clone()))
            .collect();
        assert_eq!(
            names,
            [
                (None, "signup".to_string()),
                (Some("tenant_b".to_string()), "click".to_string())
            ]
        );
        assert!(files[0].target.to_str().unwrap().contains("..2026_12_06"));
    }

    #[test]
    fn a_link_out_of_the_directory_is_refused_by_name() {
        let scratch = Scratch::new("escape");
        let outside = Scratch::new("escape-outside");
        std::fs::write(outside.0.join("secret.json"), "{}").unwrap();
        symlink(outside.0.join("secret.json"), scratch.0.join("leak.json")).unwrap();
        std::fs::write(scratch.0.join("fine.json"), "{}").unwrap();
        let (files, problems) = list(&scratch.0, 100).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, scratch.0.join("leak.json"));
        assert!(
            problems[0].reason.contains("out of schemas.dir"),
            "{problems:?}"
        );
    }
}
