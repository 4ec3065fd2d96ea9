//! `[overflow]`: hot keys leave their partition (SPEC §17). Records are
//! keyed `<tenant_id>:<user_id>`, so one hot user puts its whole rate on
//! one partition; a key over its rate has the excess produced to
//! `topic` instead, until it has stayed under the rate for `dwell_ms`.

use serde::{Deserialize, Serialize};

/// Hot-key rerouting; off while `topic` is empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverflowConfig {
    /// Where rerouted records go; empty: off (no key is judged).
    pub topic: String,
    /// A key's sustained rate (events per second, per instance) before its
    /// events overflow.
    pub key_events_per_second: u64,
    /// Events a key may send at once above that rate.
    pub key_burst: u64,
    /// How long a key must stay under the rate before its events go back
    /// to its partition (no flapping).
    pub dwell_ms: u64,
    /// Keys (`tenant_id:user_id`) whose events always overflow.
    pub force_keys: Vec<String>,
    /// Rerouted records are produced without a key, spread over the
    /// overflow topic's partitions, the key in header `key`; `false`:
    /// they keep their key (one partition of the overflow topic).
    pub spread: bool,
}

impl Default for OverflowConfig {
    fn default() -> Self {
        OverflowConfig {
            topic: String::new(),
            key_events_per_second: 1_000,
            key_burst: 1_000,
            dwell_ms: 60_000,
            force_keys: Vec::new(),
            spread: true,
        }
    }
}

/// `overflow.force_keys` entries at most: they are looked up per event.
pub const FORCE_KEYS_MAX: usize = 10_000;

impl OverflowConfig {
    /// Whether keys are judged at all.
    pub fn enabled(&self) -> bool {
        !self.topic.is_empty()
    }

    /// What is wrong with the section beyond its numeric ranges: forced
    /// keys that no record can have, too many of them, and a spread that
    /// the partitioner would not spread.
    pub fn problems(&self, partitioner: &str) -> Vec<super::Problem> {
        let mut problems = Vec::new();
        if self.force_keys.len() > FORCE_KEYS_MAX {
            problems.push(super::Problem::new(
                "overflow.force_keys",
                format!("{} keys; at most {FORCE_KEYS_MAX}", self.force_keys.len()),
            ));
        }
        for key in &self.force_keys {
            let well_formed = key
                .split_once(':')
                .is_some_and(|(tenant, user)| !tenant.is_empty() && !user.is_empty());
            if !well_formed {
                problems.push(super::Problem::new(
                    "overflow.force_keys",
                    format!("{key:?} is not a record key: write tenant_id:user_id"),
                ));
            }
        }
        if !self.force_keys.is_empty() && !self.enabled() {
            problems.push(super::Problem::new(
                "overflow.force_keys",
                "is set but overflow.topic is empty: name the overflow topic".into(),
            ));
        }
        // librdkafka's murmur2, consistent and fnv1a put every record
        // without a key on one partition: no spread at all.
        let spreads_unkeyed = partitioner.ends_with("_random") || partitioner == "random";
        if self.enabled() && self.spread && !spreads_unkeyed {
            problems.push(super::Problem::new(
                "overflow.spread",
                format!(
                    "is true but kafka.partitioner {partitioner:?} puts records without a key on one partition; use murmur2_random (the default), consistent_random or fnv1a_random, or set overflow.spread = false"
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Overrides};

    fn load(variables: &[(&str, &str)]) -> anyhow::Result<Config> {
        let variables: Vec<(String, String)> = variables
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Config::load(&Overrides::default(), |name| {
            variables
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, value)| value.clone())
        })
    }

    #[test]
    fn every_key_comes_from_the_environment() {
        let config = load(&[
            ("SLUICE_OVERFLOW_TOPIC", "events_overflow"),
            ("SLUICE_OVERFLOW_KEY_EVENTS_PER_SECOND", "50"),
            ("SLUICE_OVERFLOW_KEY_BURST", "7"),
            ("SLUICE_OVERFLOW_DWELL_MS", "2500"),
            ("SLUICE_OVERFLOW_FORCE_KEYS", "t:bot, u:shared"),
            ("SLUICE_OVERFLOW_SPREAD", "false"),
        ])
        .unwrap();
        let overflow = &config.overflow;
        assert!(overflow.enabled());
        assert_eq!(overflow.topic, "events_overflow");
        assert_eq!(
            (
                overflow.key_events_per_second,
                overflow.key_burst,
                overflow.dwell_ms
            ),
            (50, 7, 2500)
        );
        assert_eq!(overflow.force_keys, ["t:bot", "u:shared"]);
        assert!(!overflow.spread);
        assert!(!Config::default().overflow.enabled(), "off by default");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        for (variables, key) in [
            (
                vec![
                    ("SLUICE_OVERFLOW_TOPIC", "o"),
                    ("SLUICE_OVERFLOW_KEY_EVENTS_PER_SECOND", "0"),
                ],
                "overflow.key_events_per_second",
            ),
            (
                vec![
                    ("SLUICE_OVERFLOW_TOPIC", "o"),
                    ("SLUICE_OVERFLOW_FORCE_KEYS", "no_colon"),
                ],
                "overflow.force_keys",
            ),
            (
                vec![("SLUICE_OVERFLOW_FORCE_KEYS", "t:u")],
                "overflow.force_keys",
            ),
            (
                vec![
                    ("SLUICE_OVERFLOW_TOPIC", "o"),
                    ("SLUICE_KAFKA_PARTITIONER", "murmur2"),
                ],
                "overflow.spread",
            ),
        ] {
            let error = format!("{:#}", load(&variables).unwrap_err());
            assert!(error.contains(key), "{variables:?}: {error}");
        }
        // Keyed overflow works with any partitioner.
        load(&[
            ("SLUICE_OVERFLOW_TOPIC", "o"),
            ("SLUICE_KAFKA_PARTITIONER", "murmur2"),
            ("SLUICE_OVERFLOW_SPREAD", "false"),
        ])
        .unwrap();
    }
}
