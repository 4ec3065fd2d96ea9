//! `pattern`, matched at a metered cost (SPEC §15).
//!
//! jsonschema's own `pattern` runs the `regex` crate, linear in the input
//! but not in the pattern: where the lazy DFA's states do not fit its
//! cache (`a[ab]{1000}[^ab]` on random `a`/`b` text builds a new state
//! almost every byte) the search falls back to a simulation of the NFA,
//! about 14 ns per NFA state per byte: a 500 KB string against that
//! pattern took 3.7 s. This keyword replaces it with the same two engines
//! run in sight of the meter: the lazy DFA first, charged about a step per
//! byte; if it gives up (its cache cleared too often for too little
//! progress) the NFA simulation, charged at its real rate, NFA states per
//! byte, before it starts, so an event that cannot afford it is cut
//! instead of searched. Patterns are translated from ECMA-262 as
//! jsonschema translates them (`jsonschema-regex`), so they mean what
//! they meant.

use std::panic::{RefUnwindSafe, UnwindSafe};

use jsonschema::json::Node as _;
use jsonschema::{Keyword, ValidationError};
use regex_automata::nfa::thompson::{self, pikevm::PikeVM, WhichCaptures, NFA};
use regex_automata::util::pool::Pool;
use regex_automata::{hybrid, Input};
use serde_json::Value;

use super::instance::{Instance, Metered};
use super::metered::charge;

/// Steps per byte the lazy DFA is charged while its states fit its cache.
const DFA_STEPS_PER_BYTE: u64 = 2;
/// Steps of starting one search (a cache from the pool, the start state).
const SEARCH_STEPS: u64 = 32;
/// Steps per NFA state per byte of the NFA simulation (measured: about
/// 14 ns on a 2020s x86 core).
pub const NFA_STEPS_PER_STATE_BYTE: u64 = 16;
/// Each pattern's lazy DFA cache, per thread that matches it.
pub const DFA_CACHE_BYTES: usize = 64 * 1024;
/// Steps of refilling a DFA cache, per NFA state: the states a cache
/// holds, each built by a walk of the NFA. Charged per clear.
const CACHE_FILL_STEPS_PER_STATE: u64 = 256;

type Caches<T> = Pool<T, Box<dyn Fn() -> T + Send + Sync + UnwindSafe + RefUnwindSafe>>;

/// One compiled `pattern`.
pub struct Pattern {
    pattern: String,
    states: u64,
    dfa: hybrid::dfa::DFA,
    nfa: PikeVM,
    dfa_caches: Caches<hybrid::dfa::Cache>,
    nfa_caches: Caches<regex_automata::nfa::thompson::pikevm::Cache>,
}

/// The NFA of an ECMA-262 `pattern`, as jsonschema would build it, within
/// `nfa_bytes_max`; the error says why not.
pub fn nfa(pattern: &str, nfa_bytes_max: usize) -> Result<NFA, String> {
    let translated = jsonschema_regex::to_rust_regex(pattern)
        .map_err(|()| format!("pattern {pattern:?} is not a valid regular expression"))?;
    thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .nfa_size_limit(Some(nfa_bytes_max))
                .which_captures(WhichCaptures::Implicit),
        )
        .build(&translated)
        .map_err(|error| match error.size_limit() {
            Some(limit) => format!(
                "pattern {pattern:?} compiles to an NFA of more than {limit} bytes (schemas.pattern_nfa_bytes_max)"
            ),
            None => format!("pattern {pattern:?}: {error}"),
        })
}

impl Pattern {
    pub fn new(pattern: &str, nfa_bytes_max: usize) -> Result<Pattern, String> {
        let nfa = nfa(pattern, nfa_bytes_max)?;
        let dfa = hybrid::dfa::DFA::builder()
            .configure(
                hybrid::dfa::DFA::config()
                    .cache_capacity(DFA_CACHE_BYTES)
                    .skip_cache_capacity_check(true)
                    .minimum_cache_clear_count(Some(1))
                    .minimum_bytes_per_state(Some(10))
                    // Non-ASCII input near `\b` makes it quit: the NFA
                    // simulation takes over.
                    .unicode_word_boundary(true),
            )
            .build_from_nfa(nfa.clone())
            .map_err(|error| format!("pattern {pattern:?}: {error}"))?;
        let simulation = PikeVM::new_from_nfa(nfa.clone())
            .map_err(|error| format!("pattern {pattern:?}: {error}"))?;
        let (for_dfa, for_nfa) = (dfa.clone(), simulation.clone());
        Ok(Pattern {
            pattern: pattern.to_string(),
            states: nfa.states().len() as u64,
            dfa,
            nfa: simulation,
            dfa_caches: Pool::new(Box::new(move || for_dfa.create_cache())),
            nfa_caches: Pool::new(Box::new(move || for_nfa.create_cache())),
        })
    }

    /// Whether `text` matches (anywhere, as ECMA-262 `test` does). Once
    /// the meter is cut the answer means nothing.
    pub fn is_match(&self, text: &str) -> bool {
        let bytes = text.len() as u64;
        if !charge(SEARCH_STEPS + DFA_STEPS_PER_BYTE * bytes) {
            return true;
        }
        let input = Input::new(text).earliest(true);
        let mut cache = self.dfa_caches.get();
        let clears = cache.clear_count();
        let found = self.dfa.try_search_fwd(&mut cache, &input);
        let cleared = (cache.clear_count() - clears) as u64;
        drop(cache);
        if cleared > 0 {
            charge(cleared * CACHE_FILL_STEPS_PER_STATE * self.states);
        }
        match found {
            Ok(found) => found.is_some(),
            // Gave up, or met a byte it cannot handle (a Unicode word
            // boundary): simulate the NFA, if the event can pay for it.
            Err(_) => {
                charge(
                    NFA_STEPS_PER_STATE_BYTE
                        .saturating_mul(self.states)
                        .saturating_mul(bytes),
                ) && self.nfa.is_match(&mut self.nfa_caches.get(), input)
            }
        }
    }
}

impl<'i> Keyword<'i, Metered> for Pattern {
    fn validate(&self, instance: Instance<'i>) -> Result<(), ValidationError<'i>> {
        if Keyword::<Metered>::is_valid(self, instance) {
            return Ok(());
        }
        let shown = instance.to_value();
        Err(ValidationError::custom(format!(
            "{shown} does not match {}",
            Value::String(self.pattern.clone())
        )))
    }

    fn is_valid(&self, instance: Instance<'i>) -> bool {
        instance.text().is_none_or(|text| self.is_match(text))
    }
}

/// A compiled keyword, as jsonschema takes it.
type BoxedKeyword = Box<dyn for<'i> Keyword<'i, Metered>>;

/// The `pattern` keyword's factory for `jsonschema::options().with_keyword`.
pub fn factory(
    nfa_bytes_max: usize,
) -> impl for<'a> Fn(
    &'a serde_json::Map<String, Value>,
    &'a Value,
    jsonschema::paths::Location,
) -> Result<BoxedKeyword, ValidationError<'a>>
       + Send
       + Sync
       + 'static {
    move |_parent, value, _location| {
        let Value::String(pattern) = value else {
            return Err(ValidationError::custom("pattern must be a string"));
        };
        Pattern::new(pattern, nfa_bytes_max)
            .map(|compiled| Box::new(compiled) as BoxedKeyword)
            .map_err(ValidationError::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::metered::{metered, Weights};
    use super::*;

    fn random_ab(bytes: usize) -> String {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state & 1 == 0 {
                    'a'
                } else {
                    'b'
                }
            })
            .collect()
    }

    #[test]
    fn matches_as_ecma_262_patterns_do() {
        let cases = [
            ("^[a-z]+$", "abc", true),
            ("^[a-z]+$", "abC", false),
            ("b", "abc", true),
            ("^\\d{3}$", "123", true),
            ("^\\d{3}$", "12a", false),
            ("^\\p{L}+$", "héllo", true),
            ("\\bword\\b", "a word here", true),
        ];
        for (pattern, text, expected) in cases {
            let compiled = Pattern::new(pattern, 1 << 20).unwrap();
            let (found, spent) = metered(u64::MAX, Weights::default(), None, || {
                compiled.is_match(text)
            });
            assert_eq!(found, expected, "{pattern} on {text}");
            assert!(!spent.cut);
        }
        assert!(Pattern::new("(", 1 << 20).is_err());
    }

    #[test]
    fn a_thrashing_pattern_is_charged_as_the_nfa_costs_and_cut_before_it_runs() {
        // Issue 30: `a[ab]{1000}[^ab]` on random a/b text.
        let compiled = Pattern::new("a[ab]{1000}[^ab]", 1 << 20).unwrap();
        let text = random_ab(200_000);
        let started = std::time::Instant::now();
        let (_, spent) = metered(10_000_000, Weights::default(), None, || {
            compiled.is_match(&text)
        });
        assert!(spent.cut, "{spent:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_plain_pattern_costs_about_a_step_per_byte() {
        let compiled = Pattern::new("^[ab]+$", 1 << 20).unwrap();
        let text = random_ab(100_000);
        let (found, spent) = metered(u64::MAX, Weights::default(), None, || {
            compiled.is_match(&text)
        });
        assert!(found);
        assert!(spent.steps < 4 * text.len() as u64, "{spent:?}");
    }
}
