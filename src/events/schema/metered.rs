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
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::{Map, Number, Value};

/// Steps of reading one value's type or handle (an object, an array).
pub const ACCESS_STEPS: u64 = 4;
/// Steps per byte of a string read (compared, hashed, counted).
const TEXT_BYTES_PER_STEP: u64 = 8;
/// Steps of parsing a number's decimal form (compared, hashed), besides
/// two per character (measured: about 50 ns a pair).
const NUMBER_STEPS: u64 = 32;
/// Steps of hashing one element for uniqueness (its slot, the sort).
const ELEMENT_STEPS: u64 = 32;
/// Steps of hashing one member of an object (a hasher of its own).
const MEMBER_STEPS: u64 = 192;
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

fn text_steps(bytes: usize) -> u64 {
    ACCESS_STEPS + bytes as u64 / TEXT_BYTES_PER_STEP
}

/// Steps of handing jsonschema one number: past 20 characters, or with an
/// exponent, it computes with arbitrary precision, quadratic in the digits
/// it materializes (up to its own cap of 10,000, past which it compares
/// the decimal text: linear). Measured: 10,000 digits take about 30 ms
/// (`minimum`), 45 ms (`multipleOf`).
fn number_steps(text: &str) -> u64 {
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
        equal(self.0, expected)
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
            patterns.iter().flat_map(|patterns| patterns.iter()).all(|pattern| {
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
        is_unique(self.0)
    }
}

/// A number as sign, significant digits and the power of ten of the last
/// one: equal numbers, however written (`1`, `1.0`, `10e-1`), read alike.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Decimal<'a> {
    negative: bool,
    /// The digits of the integer and fraction parts, without leading or
    /// trailing zeros (empty for zero); the parts are kept apart to avoid
    /// copying, and compared as one sequence.
    integer: &'a str,
    fraction: &'a str,
    /// `None` when the exponent does not fit in 64 bits.
    exponent: Option<i64>,
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a str) -> Decimal<'a> {
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, written_exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], parse_exponent(&text[at + 1..])),
            None => (text, Some(0)),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut integer = integer.trim_start_matches('0');
        let mut fraction = fraction.trim_end_matches('0');
        // The last significant digit's power of ten.
        let mut exponent = written_exponent.and_then(|e| e.checked_sub(fraction.len() as i64));
        if fraction.is_empty() {
            let trimmed = integer.trim_end_matches('0');
            exponent = exponent.and_then(|e| e.checked_add((integer.len() - trimmed.len()) as i64));
            integer = trimmed;
        }
        if integer.is_empty() {
            fraction = fraction.trim_start_matches('0');
        }
        if integer.is_empty() && fraction.is_empty() {
            return Decimal {
                negative: false,
                integer: "",
                fraction: "",
                exponent: Some(0),
            };
        }
        Decimal {
            negative,
            integer,
            fraction,
            exponent,
        }
    }

    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.integer.bytes().chain(self.fraction.bytes())
    }

    fn same(&self, other: &Decimal<'_>) -> bool {
        self.negative == other.negative
            && self.exponent == other.exponent
            && self.exponent.is_some()
            && self.integer.len() + self.fraction.len()
                == other.integer.len() + other.fraction.len()
            && self.digits().eq(other.digits())
    }

    /// Hashes the digits as one sequence, however they split between
    /// the parts (`1.5` and `15e-1`).
    fn hash_into(&self, hasher: &mut impl Hasher) {
        self.negative.hash(hasher);
        self.exponent.hash(hasher);
        if self.fraction.is_empty() || self.integer.is_empty() {
            hasher.write(self.integer.as_bytes());
            hasher.write(self.fraction.as_bytes());
        } else {
            let mut digits = String::with_capacity(self.integer.len() + self.fraction.len());
            digits.push_str(self.integer);
            digits.push_str(self.fraction);
            hasher.write(digits.as_bytes());
            hasher.write(b"");
        }
    }
}

fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let value = digits.bytes().try_fold(0i64, |value, byte| {
        value.checked_mul(10)?.checked_add(i64::from(byte - b'0'))
    })?;
    Some(if negative { -value } else { value })
}

/// Two numbers' mathematical equality, charged by their length. Exponents
/// past 64 bits (`1e99999999999999999999`) are compared by jsonschema's
/// own arithmetic, charged as it costs.
fn equal_numbers(left: &Number, right: &Number) -> bool {
    let (left_text, right_text) = (left.as_str(), right.as_str());
    if !charge(NUMBER_STEPS + 2 * (left_text.len() + right_text.len()) as u64) {
        return false;
    }
    if left_text == right_text {
        return true;
    }
    let (a, b) = (Decimal::parse(left_text), Decimal::parse(right_text));
    if a.exponent.is_some() && b.exponent.is_some() {
        return a.same(&b);
    }
    charge(number_steps(left_text).saturating_add(number_steps(right_text)))
        && jsonschema::json::cmp::equal_numbers(&left, right)
}

/// JSON Schema equality (numbers by value, objects by members), charged
/// per value and byte compared.
pub fn equal(left: &Value, right: &Value) -> bool {
    if !charge(ACCESS_STEPS) {
        return false;
    }
    match (left, right) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::String(a), Value::String(b)) => charge(text_steps(a.len().min(b.len()))) && a == b,
        (Value::Number(a), Value::Number(b)) => equal_numbers(a, b),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(name, value)| {
                    charge(text_steps(name.len()))
                        && b.get(name).is_some_and(|other| equal(value, other))
                })
        }
        _ => false,
    }
}

/// Seeds of the uniqueness hash, random per process: a client cannot
/// choose values that collide.
static SEEDS: LazyLock<ahash::RandomState> = LazyLock::new(ahash::RandomState::new);

/// A hash under which equal values (by [`equal`]) hash alike, charged per
/// value and byte read.
fn hash_value(value: &Value, hasher: &mut impl Hasher) {
    charge(ACCESS_STEPS);
    match value {
        Value::Null => hasher.write_u8(0),
        Value::Bool(boolean) => hasher.write_u8(1 + u8::from(*boolean)),
        Value::String(string) => {
            charge(text_steps(string.len()));
            hasher.write_u8(3);
            hasher.write(string.as_bytes());
        }
        Value::Number(number) => {
            charge(NUMBER_STEPS + 2 * number.as_str().len() as u64);
            hasher.write_u8(4);
            let decimal = Decimal::parse(number.as_str());
            // Exponents past 64 bits share one bucket: [`equal_numbers`]
            // tells them apart, charged.
            if decimal.exponent.is_some() {
                decimal.hash_into(hasher);
            }
        }
        Value::Array(items) => {
            hasher.write_u8(5);
            hasher.write_usize(items.len());
            for item in items {
                hash_value(item, hasher);
            }
        }
        Value::Object(members) => {
            // Members in any order: a sum of per-member hashes.
            hasher.write_u8(6);
            let mut sum = 0u64;
            for (name, member) in members {
                charge(MEMBER_STEPS + text_steps(name.len()));
                let mut inner = SEEDS.build_hasher();
                hasher_write_str(&mut inner, name);
                hash_value(member, &mut inner);
                sum = sum.wrapping_add(inner.finish());
            }
            hasher.write_u64(sum);
        }
    }
}

fn hasher_write_str(hasher: &mut impl Hasher, text: &str) {
    hasher.write_usize(text.len());
    hasher.write(text.as_bytes());
}

/// `uniqueItems`: no two elements equal. Linear in the array's bytes:
/// each element is hashed once (exactly, numbers by their decimal value)
/// and only elements with the same hash are compared.
pub fn is_unique(items: &[Value]) -> bool {
    if items.len() < 2 {
        return true;
    }
    let mut hashed: Vec<(u64, usize)> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if !charge(ELEMENT_STEPS) {
            return true;
        }
        let mut hasher = SEEDS.build_hasher();
        hash_value(item, &mut hasher);
        hashed.push((hasher.finish(), index));
    }
    hashed.sort_unstable();
    for run in hashed.chunk_by(|a, b| a.0 == b.0) {
        for (position, &(_, first)) in run.iter().enumerate() {
            for &(_, second) in &run[position + 1..] {
                if is_cut() {
                    return true;
                }
                if equal(&items[first], &items[second]) {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn numbers_are_equal_by_value_however_written() {
        let same = [
            ("1", "1.0"),
            ("1", "10e-1"),
            ("100", "1e2"),
            ("100", "1E+2"),
            ("0", "-0"),
            ("0", "0.000e5"),
            ("-1.5", "-15e-1"),
            ("1.00000000000000000001", "100000000000000000001e-20"),
        ];
        for (a, b) in same {
            assert!(equal(&json(a), &json(b)), "{a} == {b}");
            assert!(!is_unique(&[json(a), json("7"), json(b)]), "{a} {b}");
        }
        let different = [
            ("1", "-1"),
            ("1.00000000000000000001", "1.00000000000000000002"),
            ("0.1", "0.1000000000000000055511151231257827"),
            ("1e2", "1e3"),
            ("10", "1"),
        ];
        for (a, b) in different {
            assert!(!equal(&json(a), &json(b)), "{a} != {b}");
            assert!(is_unique(&[json(a), json(b)]), "{a} {b}");
        }
    }

    #[test]
    fn uniqueness_follows_json_schema_equality() {
        assert!(!is_unique(&[
            json(r#"{"a":1,"b":[1,2]}"#),
            json(r#"{"b":[1.0,2],"a":1}"#)
        ]));
        assert!(is_unique(&[json("[1,2]"), json("[2,1]")]));
        assert!(is_unique(&[
            json("1"),
            json("\"1\""),
            json("true"),
            json("null"),
            json("[]"),
            json("{}")
        ]));
        assert!(!is_unique(&[json("null"), json("1"), json("null")]));
    }

    #[test]
    fn distinct_decimals_that_round_alike_stay_linear() {
        // The attack of issue 30: exact decimals sharing one f64.
        let items: Vec<Value> = (0..20_000)
            .map(|i| json(&format!("1.{:020}", i + 1)))
            .collect();
        let (unique, spent) = metered(u64::MAX, Weights::default(), None, || is_unique(&items));
        assert!(unique);
        assert!(!spent.cut);
        // Linear: a few dozen steps per element, not one per pair.
        assert!(spent.steps < 200 * items.len() as u64, "{spent:?}");
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
