//! `SLUICE_*` variables that set nothing. A misspelt name would otherwise
//! be ignored without a word, and the setting it meant left at its
//! default; the server warns at start and `sluice check` reports a
//! problem, each naming the closest known variable. Only names are looked
//! at and printed, never values: one may hold a secret.

use super::{env_name, Config, ENV_PREFIX, PROPERTY_ENV_PREFIX};
use crate::toml_errors::edit_distance;

/// Variables that set a flag rather than a key of the file.
const FLAG_VARIABLES: [&str; 1] = ["SLUICE_DEV_KEY"];
/// Test and debug switches: known, never suggested.
const OTHER_VARIABLES: [&str; 3] = [
    "SLUICE_DEBUG_PANIC_TARGET",
    "SLUICE_TEST_CORES",
    "SLUICE_CACHE_DIR",
];
/// The most single-character edits between a misspelt name and the
/// known name suggested for it.
const SUGGESTION_EDITS_MAX: usize = 3;

impl Config {
    /// The `SLUICE_*` variables among `names` that set nothing: neither a
    /// configuration key, nor a flag's variable, nor a `[kafka.properties]`
    /// entry, nor one of the test and debug switches.
    pub fn unknown_variables(names: impl Iterator<Item = String>) -> Vec<String> {
        let known = known_variables();
        let mut unknown: Vec<String> = names
            .filter(|name| name.starts_with(ENV_PREFIX))
            .filter(|name| !name.starts_with(PROPERTY_ENV_PREFIX))
            .filter(|name| !known.contains(name) && !OTHER_VARIABLES.contains(&name.as_str()))
            .filter(|name| !name.starts_with("SLUICE_TANSU_"))
            .collect();
        unknown.sort();
        unknown
    }

    /// The known variable the unknown `name` most likely means: the
    /// closest by edit distance (at most [`SUGGESTION_EDITS_MAX`] edits),
    /// else the one variable whose key is `name` without its section
    /// (`SLUICE_LINGER_MS`); a `[kafka.properties]` entry written with one
    /// underscore gets the two it needs.
    pub fn closest_variable(name: &str) -> Option<String> {
        const PROPERTY_TYPO: &str = "SLUICE_KAFKA_PROPERTIES_";
        if let Some(property) = name.strip_prefix(PROPERTY_TYPO) {
            if !property.is_empty() && !property.starts_with('_') {
                return Some(format!("{PROPERTY_ENV_PREFIX}{property}"));
            }
        }
        let closest = known_variables()
            .into_iter()
            .map(|known| (edit_distance(name, &known), known))
            .min()
            .filter(|(edits, _)| *edits <= SUGGESTION_EDITS_MAX)
            .map(|(_, known)| known);
        if closest.is_some() {
            return closest;
        }
        let bare = name.strip_prefix(ENV_PREFIX)?;
        let mut sections = Self::keys()
            .into_iter()
            .filter(|(_, key)| key.eq_ignore_ascii_case(bare))
            .map(|(section, key)| env_name(&section, &key));
        match (sections.next(), sections.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// What to say of the unknown variable `name` (never its value).
    pub fn unknown_variable_message(name: &str) -> String {
        match Self::closest_variable(name) {
            Some(known) => format!(
                "unknown SLUICE_ variable: it sets nothing; did you mean {known}? (`sluice --help` lists every variable)"
            ),
            None => "unknown SLUICE_ variable: it sets nothing (misspelt? `sluice --help` lists every variable)".into(),
        }
    }
}

/// The variables of the configuration's keys and of the flags.
fn known_variables() -> Vec<String> {
    Config::keys()
        .iter()
        .map(|(section, key)| env_name(section, key))
        .chain(FLAG_VARIABLES.iter().map(|name| name.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_variables_are_found() {
        let names = [
            "SLUICE_KAFKA_LINGER_MS",
            "SLUICE_KAFKA_LINGR_MS",
            "SLUICE_KAFKA_PROPERTIES__SOCKET_KEEPALIVE_ENABLE",
            "SLUICE_SERVER_WRITE_TIMEOUT_MS",
            "SLUICE_DEV_KEY",
            "SLUICE_TEST_CORES",
            "PATH",
        ];
        let unknown = Config::unknown_variables(names.iter().map(|name| name.to_string()));
        assert_eq!(unknown, vec!["SLUICE_KAFKA_LINGR_MS".to_string()]);
    }

    #[test]
    fn the_closest_known_variable_is_suggested() {
        for (typo, meant) in [
            ("SLUICE_KAFKA_LINGR_MS", Some("SLUICE_KAFKA_LINGER_MS")),
            ("SLUICE_KAFKA__LINGER_MS", Some("SLUICE_KAFKA_LINGER_MS")),
            ("SLUICE_SERVR_CORES", Some("SLUICE_SERVER_CORES")),
            ("SLUICE_DEV_KY", Some("SLUICE_DEV_KEY")),
            ("SLUICE_LINGER_MS", Some("SLUICE_KAFKA_LINGER_MS")),
            (
                "SLUICE_BODY_BYTES_MAX",
                Some("SLUICE_LIMITS_BODY_BYTES_MAX"),
            ),
            (
                "SLUICE_KAFKA_PROPERTIES_SASL_PASSWORD",
                Some("SLUICE_KAFKA_PROPERTIES__SASL_PASSWORD"),
            ),
            (
                "SLUICE_RELOAD_INTERVAL_MS",
                Some("SLUICE_AUTH_RELOAD_INTERVAL_MS"),
            ),
            // A key of two sections (dedup.redis_url, limits.redis_url): no guess.
            ("SLUICE_REDIS_URL", None),
            ("SLUICE_ZZZZZZZZZZ", None),
        ] {
            assert_eq!(Config::closest_variable(typo).as_deref(), meant, "{typo}");
        }
        let message = Config::unknown_variable_message("SLUICE_KAFKA_LINGR_MS");
        assert!(
            message.contains("did you mean SLUICE_KAFKA_LINGER_MS?"),
            "{message}"
        );
    }
}
