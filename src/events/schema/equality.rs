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

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::LazyLock;

use serde_json::{Number, Value};

use super::metered::{charge, is_cut, number_steps, text_steps, ACCESS_STEPS};

/// Steps of parsing a number's decimal form (compared, hashed), besides
/// two per character (measured: about 50 ns a pair).
const NUMBER_STEPS: u64 = 32;
/// Steps of hashing one element for uniqueness (its slot, the sort).
const ELEMENT_STEPS: u64 = 32;
/// Steps of hashing one member of an object (a hasher of its own).
const MEMBER_STEPS: u64 = 192;

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
    use super::super::metered::{metered, Weights};
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
}
