//! The meter of a validation: each step of one is charged to it (SPEC
//! §15: every cost one request can cause is bounded by its size times a
//! stated constant). The event's values are read through
//! [`super::instance`], which charges each read here.
//!
//! jsonschema walks the instance only through its `Json` trait, so every value
//! it reads, every member or element it descends into, every string and
//! number it looks at is paid for here, in *steps* (about a nanosecond of
//! work each; `BENCHMARKS.md` measures the ratio). Work that does not touch
//! the instance (a schema applying its in-place subschemas: `allOf`,
//! `$ref`, ...) is paid per value entered, at the document's expansion
//! (the most schemas one value can meet in place, bounded at load by
//! `budget`). Three costs jsonschema would otherwise spend without a
//! bound are done here instead: equality (`const`, `enum`), uniqueness
//! (`uniqueItems`: jsonschema hashes exact decimals by their nearest f64,
//! so distinct decimals that round alike make it quadratic) and, in
//! [`super::pattern`], `pattern`.
//!
//! When the budget runs out the meter is *cut*: from then on every value
//! reads as empty (objects and arrays iterate nothing, strings are empty,
//! numbers are zero), so the validation unwinds at once, and its verdict
//! is thrown away: the event is refused for its cost, not judged. A
//! value's type never changes while a keyword holds it, which is all the
//! validator relies on.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// Steps of reading one value's type or handle (an object, an array).
pub const ACCESS_STEPS: u64 = 4;
/// Steps per byte of a string read (compared, hashed, counted).
const TEXT_BYTES_PER_STEP: u64 = 8;
/// Steps per value entered, besides the subschemas applied to it: the
/// keyword's own walk and the path it keeps for an error (measured: a
/// validation that enters a value per schema applied costs about 90 ns
/// per value).
pub const VALUE_STEPS: u64 = 64;

/// What entering a value costs, from the document's analysis at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    /// Steps per value entered (an element, a member): the schemas that
    /// apply to it in place are walked without reading it.
    pub value_steps: u64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            value_steps: ACCESS_STEPS,
        }
    }
}

/// The document's `patternProperties` patterns. jsonschema matches member
/// names against them with its own regexes, out of the meter's sight; each
/// name is matched here first, by the same NFAs run in sight of the meter,
/// and charged what that cost (a name that cannot be afforded is never
/// handed over).
pub type NamePatterns = Arc<[super::pattern::Pattern]>;

#[derive(Clone, Copy, Default)]
struct Meter {
    left: u64,
    spent: u64,
    cut: bool,
    weights: Weights,
}

thread_local! {
    static METER: Cell<Meter> = const {
        Cell::new(Meter {
            left: u64::MAX,
            spent: 0,
            cut: false,
            weights: Weights {
                value_steps: ACCESS_STEPS,
            },
        })
    };
    static NAME_PATTERNS: RefCell<Option<NamePatterns>> = const { RefCell::new(None) };
}

/// What one metered run spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    pub steps: u64,
    /// The budget ran out: the run's verdict means nothing.
    pub cut: bool,
}

/// Runs `work` (one validation) on this thread with `budget` steps.
/// Nested runs are not supported; the meter is this thread's.
pub fn metered<R>(
    budget: u64,
    weights: Weights,
    name_patterns: Option<&NamePatterns>,
    work: impl FnOnce() -> R,
) -> (R, Spent) {
    let previous = METER.get();
    METER.set(Meter {
        left: budget,
        spent: 0,
        cut: false,
        weights,
    });
    let previous_names = NAME_PATTERNS.replace(name_patterns.cloned());
    let result = work();
    let meter = METER.get();
    METER.set(previous);
    NAME_PATTERNS.set(previous_names);
    (
        result,
        Spent {
            steps: meter.spent,
            cut: meter.cut,
        },
    )
}

/// Charges `steps`; `false` once the budget is spent (and from then on).
#[inline]
pub fn charge(steps: u64) -> bool {
    METER.with(|cell| {
        let mut meter = cell.get();
        if meter.cut {
            return false;
        }
        if steps > meter.left {
            meter.spent += meter.left;
            meter.left = 0;
            meter.cut = true;
            cell.set(meter);
            return false;
        }
        meter.left -= steps;
        meter.spent += steps;
        cell.set(meter);
        true
    })
}

/// Whether the budget ran out.
#[inline]
pub fn is_cut() -> bool {
    METER.with(|cell| cell.get().cut)
}

pub(super) fn weights() -> Weights {
    METER.with(|cell| cell.get().weights)
}

pub(super) fn text_steps(bytes: usize) -> u64 {
    ACCESS_STEPS + bytes as u64 / TEXT_BYTES_PER_STEP
}

/// Steps of handing jsonschema one number: past 20 characters, or with an
/// exponent, it computes with arbitrary precision, quadratic in the digits
/// it materializes (up to its own cap of 10,000, past which it compares
/// the decimal text: linear). Measured: 10,000 digits take about 30 ms
/// (`minimum`), 45 ms (`multipleOf`).
pub(super) fn number_steps(text: &str) -> u64 {
    if text.len() <= 20 && !text.contains(['e', 'E']) {
        return ACCESS_STEPS;
    }
    let digits = materialized_digits(text);
    if digits > 10_000 {
        return ACCESS_STEPS + 8 * text.len() as u64;
    }
    ACCESS_STEPS + 64 * digits + 2 * digits * digits
}

/// Digits a number written as `text` takes when written out in full
/// (its exponent's shift included), saturating.
fn materialized_digits(text: &str) -> u64 {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, ""),
    };
    let digits = mantissa.bytes().filter(u8::is_ascii_digit).count() as u64;
    let shift = exponent
        .trim_start_matches(['+', '-'])
        .bytes()
        .try_fold(0u64, |value, byte| {
            value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
        })
        .unwrap_or(u64::MAX);
    digits.saturating_add(shift)
}

/// Matches a member name against the document's `patternProperties`
/// patterns in sight of the meter; `false` once the meter is cut.
pub(super) fn name_affordable(name: &str) -> bool {
    NAME_PATTERNS.with_borrow(|patterns| {
        patterns
            .iter()
            .flat_map(|patterns| patterns.iter())
            .all(|pattern| {
                pattern.is_match(name);
                !is_cut()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_numbers_cost_what_jsonschema_spends_on_them() {
        assert_eq!(number_steps("12345"), ACCESS_STEPS);
        assert!(number_steps("1e9999") > 100_000_000);
        assert!(number_steps(&format!("1.{}", "1".repeat(9_990))) > 100_000_000);
        // Past jsonschema's own digit cap it compares text: linear.
        assert!(number_steps("1e99999999") < 1_000);
    }
}
