//! Every error code a refusal can carry is listed in `error::CODES`, so
//! `sluice_http_refusals_total{code}` counts it under its own name (an
//! unlisted code would be counted as `other`). Reads every `ApiError::new`
//! (and `Self::new` in src/error.rs) in src/.

use std::path::Path;

/// The string literal after `new(<status>, ` at each constructor call.
fn codes_in(text: &str, constructor: &str) -> Vec<String> {
    let mut codes = Vec::new();
    for (at, _) in text.match_indices(constructor) {
        let rest = text[at + constructor.len()..].trim_start();
        let Some(rest) = rest
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .strip_prefix(',')
        else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = rest.find('"') {
            codes.push(rest[..end].to_string());
        }
    }
    codes
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_refusal_code_in_src_is_listed_for_the_metrics() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        found.extend(codes_in(&text, "ApiError::new("));
        if file.ends_with("error.rs") {
            found.extend(codes_in(&text, "Self::new("));
        }
    }
    found.sort();
    found.dedup();
    assert!(found.len() >= 15, "only {found:?}");
    let unlisted: Vec<&String> = found
        .iter()
        .filter(|code| !sluice::error::CODES.contains(&code.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "codes missing from error::CODES: {unlisted:?}"
    );
}
