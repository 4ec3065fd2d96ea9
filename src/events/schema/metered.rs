//! The event as its contract sees it: a `serde_json::Value` behind
//! jsonschema's `Json` trait, each step of a validation charged to a meter
//! (SPEC §15: every cost one request can cause is bounded by its size
//! times a stated constant).
//!
//! jsonschema walks the instance only through this trait, so every value
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

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, LazyLock};

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::{Map, Number, Value};

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

fn weights() -> Weights {
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

/// The stand-in number read once the meter is cut.
static ZERO: LazyLock<Number> = LazyLock::new(|| Number::from(0u8));

/// The representation: `serde_json`'s, metered.
pub struct Metered;

impl Json for Metered {
    type Node<'a> = Instance<'a>;
    type PreparedKey = String;
    type StringBuffer = Value;

    // The map is a `BTreeMap`, as for jsonschema's own `serde_json` nodes.
    const KEYS_PER_LOOKUP: usize = 2;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(
        buffer: &mut Value,
        string: &str,
        f: impl FnOnce(Instance<'_>) -> T,
    ) -> T {
        if let Value::String(existing) = buffer {
            existing.clear();
            existing.push_str(string);
        } else {
            *buffer = Value::String(string.to_owned());
        }
        f(Instance(buffer))
    }
}

/// One value of the event.
#[derive(Clone, Copy, Debug)]
pub struct Instance<'a>(pub &'a Value);

/// An object of the event.
#[derive(Clone, Copy, Debug)]
pub struct InstanceObject<'a>(&'a Map<String, Value>);

/// An array of the event.
#[derive(Clone, Copy, Debug)]
pub struct InstanceArray<'a>(&'a [Value]);

impl<'a> Node<'a, Metered> for Instance<'a> {
    type Object = InstanceObject<'a>;
    type Array = InstanceArray<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<InstanceObject<'a>> {
        match self.0 {
            Value::Object(members) => {
                charge(ACCESS_STEPS);
                Some(InstanceObject(members))
            }
            _ => None,
        }
    }

    fn as_array(&self) -> Option<InstanceArray<'a>> {
        match self.0 {
            Value::Array(items) => {
                charge(ACCESS_STEPS);
                Some(InstanceArray(items))
            }
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.0 {
            Value::String(string) if charge(text_steps(string.len())) => {
                Some(Cow::Borrowed(string))
            }
            Value::String(_) => Some(Cow::Borrowed("")),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.0 {
            Value::Number(number) if charge(number_steps(number.as_str())) => Some(number),
            Value::Number(_) => Some(&ZERO),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        self.0.as_bool()
    }

    fn is_null(&self) -> bool {
        self.0.is_null()
    }

    fn is_number(&self) -> bool {
        self.0.is_number()
    }

    fn is_string(&self) -> bool {
        self.0.is_string()
    }

    fn json_type(&self) -> JsonType {
        match self.0 {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Boolean,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::Array,
            Value::Object(_) => JsonType::Object,
        }
    }

    fn string_length(&self) -> Option<u64> {
        match self.0 {
            Value::String(string) if charge(text_steps(string.len())) => {
                Some(string.chars().count() as u64)
            }
            Value::String(_) => Some(0),
            _ => None,
        }
    }

    fn equals_value(&self, expected: &Value) -> bool {
        super::equality::equal(self.0, expected)
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Borrowed(self.0)
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<Value>(self.0) as usize
        ))
    }
}

/// An object's members, one value entered each.
pub struct Members<'a>(serde_json::map::Iter<'a>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, Instance<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, value) = self.0.next()?;
        if !charge(weights().value_steps.saturating_add(text_steps(name.len()))) {
            return None;
        }
        let affordable = NAME_PATTERNS.with_borrow(|patterns| {
            patterns
                .iter()
                .flat_map(|patterns| patterns.iter())
                .all(|pattern| {
                    pattern.is_match(name);
                    !is_cut()
                })
        });
        affordable.then_some((name.as_str(), Instance(value)))
    }
}

impl<'a> Object<'a, Metered> for InstanceObject<'a> {
    type Node = Instance<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, key: &String) -> Option<Instance<'a>> {
        if !charge(ACCESS_STEPS) {
            return None;
        }
        let value = self.0.get(key.as_str())?;
        charge(weights().value_steps).then_some(Instance(value))
    }

    fn members(&self) -> Members<'a> {
        Members(self.0.iter())
    }
}

/// An array's elements, one value entered each.
pub struct Elements<'a>(std::slice::Iter<'a, Value>);

impl<'a> Iterator for Elements<'a> {
    type Item = Instance<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let value = self.0.next()?;
        charge(weights().value_steps).then_some(Instance(value))
    }
}

impl<'a> Array<'a, Metered> for InstanceArray<'a> {
    type Node = Instance<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn elements(&self) -> Elements<'a> {
        Elements(self.0.iter())
    }

    fn is_unique(&self) -> bool {
        super::equality::is_unique(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_cut_meter_stops_charging_and_reads_empty() {
        let value = json(r#"{"a":"some text","b":[1,2,3]}"#);
        let (seen, spent) = metered(10, Weights::default(), None, || {
            let instance = Instance(&value);
            let object = instance.as_object().unwrap();
            let members: Vec<_> = object.members().map(|(name, _)| name).collect();
            (members, object.get(&"a".to_string()).is_some())
        });
        assert!(spent.cut);
        assert!(spent.steps <= 10);
        assert!(seen.0.len() < 2, "{seen:?}");
        assert!(!seen.1);
    }

    #[test]
    fn long_numbers_cost_what_jsonschema_spends_on_them() {
        assert_eq!(number_steps("12345"), ACCESS_STEPS);
        assert!(number_steps("1e9999") > 100_000_000);
        assert!(number_steps(&format!("1.{}", "1".repeat(9_990))) > 100_000_000);
        // Past jsonschema's own digit cap it compares text: linear.
        assert!(number_steps("1e99999999") < 1_000);
    }
}
