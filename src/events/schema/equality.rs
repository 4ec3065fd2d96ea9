//! JSON Schema equality (`const`, `enum`) and uniqueness (`uniqueItems`)
//! at a cost the meter sees and bounds: linear in the values compared.
//!
//! jsonschema's own `uniqueItems` hashes a number by its nearest f64, so
//! exact decimals that round alike (`1.00000000000000000001`, `...02`, ...)
//! share one bucket and are compared pairwise, each comparison an
//! arbitrary-precision parse: 1,000 of them took 1.8 s, 4,000 took 25.8 s.
//! Here a number is hashed by its exact decimal value (sign, significant
//! digits, exponent), under seeds random per process, so distinct values
//! meet in one bucket only by chance, and equal ones always do.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::LazyLock;

use jsonschema::json::JsonNumber;
use serde_json::Value;

use super::instance::{Instance, InstanceArray, View};
use super::metered::{charge, is_cut, number_steps, text_steps, ACCESS_STEPS};

/// Steps of parsing a number's decimal form (compared, hashed), besides
/// two per character (measured: about 50 ns a pair).
const NUMBER_STEPS: u64 = 32;
/// Steps of hashing one element for uniqueness (its slot, the sort).
const ELEMENT_STEPS: u64 = 32;
/// Steps of hashing one member of an object (a hasher of its own).
const MEMBER_STEPS: u64 = 192;
/// Digits of a number hashed from the stack (longer ones: a copy).
const SHORT_DIGITS: usize = 64;

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
        let length = self.integer.len() + self.fraction.len();
        if self.fraction.is_empty() || self.integer.is_empty() {
            hasher.write(self.integer.as_bytes());
            hasher.write(self.fraction.as_bytes());
        } else if length <= SHORT_DIGITS {
            let mut digits = [0u8; SHORT_DIGITS];
            digits[..self.integer.len()].copy_from_slice(self.integer.as_bytes());
            digits[self.integer.len()..length].copy_from_slice(self.fraction.as_bytes());
            hasher.write(&digits[..length]);
            hasher.write(b"");
        } else {
            let mut digits = String::with_capacity(length);
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

/// Whether a number written as `text` is an integer (drafts 6 on: `1.0`
/// and `1e2` are; `1.00000000000000000001` is not).
pub(super) fn is_integer_text(text: &str) -> bool {
    let decimal = Decimal::parse(text);
    match decimal.exponent {
        Some(exponent) => exponent >= 0,
        // An exponent past 64 bits: a whole number unless it is negative
        // (the parse refuses what overflows an f64).
        None => !text.contains("e-") && !text.contains("E-"),
    }
}

/// Two numbers' mathematical equality, charged by their length.
/// Exponents past 64 bits are compared by jsonschema's own arithmetic,
/// charged as it costs (`exact`).
fn equal_number_texts(left: &str, right: &str, exact: impl FnOnce() -> bool) -> bool {
    if !charge(NUMBER_STEPS + 2 * (left.len() + right.len()) as u64) {
        return false;
    }
    if left == right {
        return true;
    }
    let (a, b) = (Decimal::parse(left), Decimal::parse(right));
    if a.exponent.is_some() && b.exponent.is_some() {
        return a.same(&b);
    }
    charge(number_steps(left).saturating_add(number_steps(right))) && exact()
}

/// JSON Schema equality (numbers by value, objects by members) of a value
/// of the event and one of the schema (`const`, `enum`), charged per value
/// and byte compared.
pub fn equal(instance: Instance<'_>, expected: &Value) -> bool {
    if !charge(ACCESS_STEPS) {
        return false;
    }
    match (instance.view(), expected) {
        (View::Null, Value::Null) => true,
        (View::Bool(a), Value::Bool(b)) => a == *b,
        (View::String(a), Value::String(b)) => charge(text_steps(a.len().min(b.len()))) && a == b,
        (View::Number(a), Value::Number(b)) => equal_number_texts(a.text(), b.as_str(), || {
            jsonschema::json::cmp::equal_numbers(&a, b)
        }),
        (View::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.items().zip(b).all(|(a, b)| equal(a, b))
        }
        (View::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.entries().all(|(name, value)| {
                    charge(text_steps(name.len()))
                        && b.get(name).is_some_and(|other| equal(value, other))
                })
        }
        _ => false,
    }
}

/// JSON Schema equality of two values of the event (`uniqueItems`),
/// charged per value and byte compared, and per member passed looking a
/// name up.
fn equal_instances(left: Instance<'_>, right: Instance<'_>) -> bool {
    if !charge(ACCESS_STEPS) {
        return false;
    }
    match (left.view(), right.view()) {
        (View::Null, View::Null) => true,
        (View::Bool(a), View::Bool(b)) => a == b,
        (View::String(a), View::String(b)) => charge(text_steps(a.len().min(b.len()))) && a == b,
        (View::Number(a), View::Number(b)) => equal_number_texts(a.text(), b.text(), || {
            jsonschema::json::cmp::equal_numbers(&a, &b.to_number())
        }),
        (View::Array(a), View::Array(b)) => {
            a.len() == b.len() && a.items().zip(b.items()).all(|(a, b)| equal_instances(a, b))
        }
        (View::Object(a), View::Object(b)) => {
            if a.len() != b.len() {
                return false;
            }
            // Members in the same order (one writer wrote both): pairwise;
            // from the first that differs, by name.
            let mut pairs = a.entries().zip(b.entries());
            let mut unmatched = None;
            for ((name, value), (other_name, other)) in pairs.by_ref() {
                if !charge(text_steps(name.len())) {
                    return false;
                }
                if name != other_name {
                    unmatched = Some((name, value));
                    break;
                }
                if !equal_instances(value, other) {
                    return false;
                }
            }
            unmatched
                .into_iter()
                .chain(pairs.map(|(left, _)| left))
                .all(|(name, value)| {
                    charge(text_steps(name.len()))
                        && b.lookup(name).is_ok_and(|other| {
                            other.is_some_and(|other| equal_instances(value, other))
                        })
                })
        }
        _ => false,
    }
}

/// Seeds of the uniqueness hash, random per process: a client cannot
/// choose values that collide.
static SEEDS: LazyLock<ahash::RandomState> = LazyLock::new(ahash::RandomState::new);

/// A hash under which equal values (by [`equal_instances`]) hash alike,
/// charged per value and byte read.
fn hash_value(value: Instance<'_>, hasher: &mut impl Hasher) {
    charge(ACCESS_STEPS);
    match value.view() {
        View::Null => hasher.write_u8(0),
        View::Bool(boolean) => hasher.write_u8(1 + u8::from(boolean)),
        View::String(string) => {
            charge(text_steps(string.len()));
            hasher.write_u8(3);
            hasher.write(string.as_bytes());
        }
        View::Number(number) => {
            let text = number.text();
            charge(NUMBER_STEPS + 2 * text.len() as u64);
            hasher.write_u8(4);
            let decimal = Decimal::parse(text);
            // Exponents past 64 bits share one bucket: [`equal_number_texts`]
            // tells them apart, charged.
            if decimal.exponent.is_some() {
                decimal.hash_into(hasher);
            }
        }
        View::Array(items) => {
            hasher.write_u8(5);
            hasher.write_usize(items.len());
            for item in items.items() {
                hash_value(item, hasher);
            }
        }
        View::Object(members) => {
            // Members in any order: a sum of per-member hashes.
            hasher.write_u8(6);
            let mut sum = 0u64;
            for (name, member) in members.entries() {
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

thread_local! {
    /// (hash, element) pairs of one `uniqueItems` check, reused.
    static HASHED: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
}

/// `uniqueItems`: no two elements equal. Linear in the array's bytes:
/// each element is hashed once (exactly, numbers by their decimal value)
/// and only elements with the same hash are compared.
pub fn is_unique(array: &InstanceArray<'_>) -> bool {
    if array.len() < 2 {
        return true;
    }
    let mut hashed = HASHED.take();
    hashed.clear();
    let unique = unique_by_hash(array, &mut hashed);
    HASHED.set(hashed);
    unique
}

fn unique_by_hash(array: &InstanceArray<'_>, hashed: &mut Vec<(u64, usize)>) -> bool {
    for index in array.indices() {
        if !charge(ELEMENT_STEPS) {
            return true;
        }
        let mut hasher = SEEDS.build_hasher();
        hash_value(array.at(index), &mut hasher);
        hashed.push((hasher.finish(), index));
    }
    hashed.sort_unstable();
    for run in hashed.chunk_by(|a, b| a.0 == b.0) {
        for (position, &(_, first)) in run.iter().enumerate() {
            for &(_, second) in &run[position + 1..] {
                if is_cut() {
                    return true;
                }
                if equal_instances(array.at(first), array.at(second)) {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use jsonschema::json::Node as _;

    use super::super::metered::{metered, Weights};
    use super::super::tape::with_document;
    use super::*;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// `equal` of the event value `text` and the schema value `expected`.
    fn equal_text(text: &str, expected: &str) -> bool {
        with_document(text.as_bytes(), |document| {
            equal(Instance::root(document.unwrap()), &json(expected))
        })
    }

    /// `is_unique` of the event's array `items`.
    fn unique(items: &[&str]) -> bool {
        with_document(format!("[{}]", items.join(",")).as_bytes(), |document| {
            is_unique(&Instance::root(document.unwrap()).as_array().unwrap())
        })
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
            assert!(equal_text(a, b), "{a} == {b}");
            assert!(equal_text(b, a), "{b} == {a}");
            assert!(!unique(&[a, "7", b]), "{a} {b}");
        }
        let different = [
            ("1", "-1"),
            ("1.00000000000000000001", "1.00000000000000000002"),
            ("0.1", "0.1000000000000000055511151231257827"),
            ("1e2", "1e3"),
            ("10", "1"),
            ("9007199254740993", "9007199254740992"),
            ("123456789012345678901", "123456789012345678902"),
        ];
        for (a, b) in different {
            assert!(!equal_text(a, b), "{a} != {b}");
            assert!(unique(&[a, b]), "{a} {b}");
        }
    }

    #[test]
    fn uniqueness_follows_json_schema_equality() {
        assert!(!unique(&[r#"{"a":1,"b":[1,2]}"#, r#"{"b":[1.0,2],"a":1}"#]));
        assert!(!unique(&[r#"{"a":1,"b":[1,2]}"#, r#"{"a":1,"b":[1.0,2]}"#]));
        assert!(unique(&[r#"{"a":1,"b":2}"#, r#"{"b":1,"a":2}"#]));
        assert!(unique(&["[1,2]", "[2,1]"]));
        assert!(unique(&["1", "\"1\"", "true", "null", "[]", "{}"]));
        assert!(!unique(&["null", "1", "null"]));
        assert!(equal_text(
            r#"{"b":[1.0,2],"a":{"c":null}}"#,
            r#"{"a":{"c":null},"b":[1,2]}"#
        ));
        assert!(!equal_text(r#"{"a":1}"#, r#"{"a":1,"b":2}"#));
    }

    #[test]
    fn distinct_decimals_that_round_alike_stay_linear() {
        // The attack of issue 30: exact decimals sharing one f64.
        let items: Vec<String> = (0..20_000).map(|i| format!("1.{:020}", i + 1)).collect();
        let text = format!("[{}]", items.join(","));
        with_document(text.as_bytes(), |document| {
            let array = Instance::root(document.unwrap()).as_array().unwrap();
            let (unique, spent) = metered(u64::MAX, Weights::default(), None, || is_unique(&array));
            assert!(unique);
            assert!(!spent.cut);
            // Linear: a few dozen steps per element, not one per pair.
            assert!(spent.steps < 200 * items.len() as u64, "{spent:?}");
        });
    }

    #[test]
    fn integers_are_told_by_their_text() {
        for (text, integer) in [
            ("1", true),
            ("1.0", true),
            ("1e2", true),
            ("1.5e1", true),
            ("1.25e1", false),
            ("1.00000000000000000001", false),
            ("-0.0", true),
            ("0e-99999999999999999999", true),
            ("1e-99999999999999999999", false),
        ] {
            assert_eq!(is_integer_text(text), integer, "{text}");
        }
    }
}
