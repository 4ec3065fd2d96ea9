//! `[schemas]`: event contracts, JSON Schemas per event type (SPEC §13),
//! and their budgets (§15). What each budget bounds, and what its default
//! costs, is measured in `BENCHMARKS.md` ("Event contracts under attack").

use serde::{Deserialize, Serialize};

/// Event contracts: JSON Schemas (draft 2020-12) per event type, and per
/// tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemasConfig {
    /// `<event_type>.json` for every tenant, `<tenant_id>/<event_type>.json`
    /// for one; reloaded on change and SIGHUP. Empty: no schemas.
    pub dir: String,
    /// Refuse events whose type has no schema.
    pub require: bool,
    /// Schema files in the set; more refuses the set (the last good stays).
    pub files_max: u64,
    /// One schema file's size.
    pub file_bytes_max: u64,
    /// All schema files' sizes together.
    pub total_bytes_max: u64,
    /// `$ref`s and in-place subschemas (`allOf`, `anyOf`, `oneOf`, `not`,
    /// `if`/`then`/`else`) nested on one event value: bounds a
    /// validation's stack. A file past it is refused.
    pub ref_depth_max: u64,
    /// Subschemas one event value meets in place, `$ref`s expanded with
    /// repeats (two `$ref`s per level double it per level). A file past it
    /// is refused.
    pub expansion_max: u64,
    /// One pattern's compiled NFA (`pattern`, `patternProperties`).
    pub pattern_nfa_bytes_max: u64,
    /// Distinct patterns in the whole set.
    pub patterns_max: u64,
    /// NFA states of the whole set's patterns together (about 80 bytes
    /// each once compiled).
    pub pattern_states_max: u64,
    /// Validation steps (about a nanosecond each) an event may take per
    /// byte; past its budget it is refused, 422 `schema_budget_exceeded`.
    pub validation_steps_per_event_byte: u64,
    /// Validation steps any event may take, however small (a batch of
    /// `limits.batch_events_max` tiny events may take this many times
    /// over: part of a request's bound).
    pub validation_steps_min: u64,
    /// Steps a core spends checking one request's events; the rest are
    /// checked by the checker threads while the core serves others.
    pub core_steps_per_request_max: u64,
    /// A body larger than this is checked by the checker threads whole.
    pub core_body_bytes_max: u64,
    /// Threads that check what the cores hand over (nice +10).
    pub checker_threads: u64,
    /// Requests waiting for a checker thread; past it a request is shed
    /// (503). A tenant may hold this divided by the tenants waiting
    /// (itself counted; half while alone, at least one place).
    pub checker_queue_requests_max: u64,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig {
            dir: String::new(),
            require: false,
            files_max: 1_000,
            file_bytes_max: 1 << 20,
            total_bytes_max: 16 << 20,
            ref_depth_max: 32,
            expansion_max: 2_048,
            pattern_nfa_bytes_max: 256 << 10,
            patterns_max: 2_000,
            pattern_states_max: 500_000,
            validation_steps_per_event_byte: 256,
            validation_steps_min: 250_000,
            core_steps_per_request_max: 500_000,
            core_body_bytes_max: 64 << 10,
            checker_threads: 2,
            checker_queue_requests_max: 1_024,
        }
    }
}
