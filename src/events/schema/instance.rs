//! The event as its contract sees it: the simd-json tape of the event
//! ([`super::tape`]) behind jsonschema's `Json` trait, each read charged
//! to the meter ([`super::metered`]): every value it reads, every member
//! or element it descends into, every string and number it looks at. No
//! tree is built: a value is a tape index, and a number is read exactly
//! from the event's text where its tape value is not exact.
//!
//! Once the meter is cut every value reads as empty (objects and arrays
//! iterate nothing, strings are empty, numbers are zero), so the
//! validation unwinds at once; a value's type never changes.

use std::borrow::Cow;
use std::cell::Cell;

use jsonschema::json::{Array, Json, JsonNumber, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::Value;
use simd_json::{Node as TapeNode, StaticNode};

use super::metered::{
    charge, is_cut, name_affordable, number_steps, text_steps, weights, ACCESS_STEPS,
};
use super::tape::Document;

/// The representation: simd-json's tape, metered.
pub struct Metered;

impl Json for Metered {
    type Node<'a> = Instance<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();

    // As for jsonschema's own `serde_json` nodes (a `BTreeMap`): the same
    // keywords take the same paths, so they are charged as they were.
    const KEYS_PER_LOOKUP: usize = 2;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>(_: &mut (), string: &str, f: impl FnOnce(Instance<'_>) -> T) -> T {
        f(Instance::Name(string))
    }
}

/// One value of the event (or a member name, as `propertyNames` sees it).
#[derive(Clone, Copy)]
pub enum Instance<'a> {
    /// The value at this index of the document's tape.
    Value(&'a Document<'a>, usize),
    Name(&'a str),
}

impl std::fmt::Debug for Instance<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Instance::Value(_, index) => write!(formatter, "Instance::Value({index})"),
            Instance::Name(name) => write!(formatter, "Instance::Name({name:?})"),
        }
    }
}

/// A value's kind and contents, read without charge (the callers charge).
pub(super) enum View<'a> {
    Null,
    Bool(bool),
    Number(TapeNumber<'a>),
    String(&'a str),
    Array(InstanceArray<'a>),
    Object(InstanceObject<'a>),
}

impl<'a> Instance<'a> {
    /// The whole event.
    pub fn root(document: &'a Document<'a>) -> Instance<'a> {
        Instance::Value(document, 0)
    }

    /// The string, uncharged (`pattern` charges its own match).
    pub fn text(&self) -> Option<&'a str> {
        match *self {
            Instance::Value(document, index) => match document.node(index) {
                TapeNode::String(text) => Some(text),
                _ => None,
            },
            Instance::Name(name) => Some(name),
        }
    }

    pub(super) fn view(&self) -> View<'a> {
        let (document, index) = match *self {
            Instance::Value(document, index) => (document, index),
            Instance::Name(name) => return View::String(name),
        };
        match *document.node(index) {
            TapeNode::String(text) => View::String(text),
            TapeNode::Object { len, .. } => View::Object(InstanceObject {
                document,
                index,
                len,
            }),
            TapeNode::Array { len, .. } => View::Array(InstanceArray {
                document,
                index,
                len,
            }),
            TapeNode::Static(StaticNode::Bool(value)) => View::Bool(value),
            TapeNode::Static(StaticNode::Null) => View::Null,
            TapeNode::Static(value) => View::Number(TapeNumber {
                value,
                source: Some((document, index)),
                charged: Cell::new(false),
            }),
        }
    }
}

impl<'a> Node<'a, Metered> for Instance<'a> {
    type Object = InstanceObject<'a>;
    type Array = InstanceArray<'a>;
    type Number = TapeNumber<'a>;

    fn as_object(&self) -> Option<InstanceObject<'a>> {
        match self.view() {
            View::Object(object) => {
                charge(ACCESS_STEPS);
                Some(object)
            }
            _ => None,
        }
    }

    fn as_array(&self) -> Option<InstanceArray<'a>> {
        match self.view() {
            View::Array(array) => {
                charge(ACCESS_STEPS);
                Some(array)
            }
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        let text = self.text()?;
        Some(Cow::Borrowed(if charge(text_steps(text.len())) {
            text
        } else {
            ""
        }))
    }

    /// Charged as reading a short number: one written longer is charged
    /// its length when its text is read ([`TapeNumber::read`]), which is
    /// the only work that grows with it.
    fn as_number(&self) -> Option<TapeNumber<'a>> {
        let View::Number(number) = self.view() else {
            return None;
        };
        Some(if charge(ACCESS_STEPS) {
            number
        } else {
            TapeNumber::zero()
        })
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.view() {
            View::Bool(value) => Some(value),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.view(), View::Null)
    }

    fn is_number(&self) -> bool {
        matches!(self.view(), View::Number(_))
    }

    fn is_string(&self) -> bool {
        self.text().is_some()
    }

    fn json_type(&self) -> JsonType {
        match self.view() {
            View::Null => JsonType::Null,
            View::Bool(_) => JsonType::Boolean,
            View::Number(_) => JsonType::Number,
            View::String(_) => JsonType::String,
            View::Array(_) => JsonType::Array,
            View::Object(_) => JsonType::Object,
        }
    }

    fn string_length(&self) -> Option<u64> {
        let text = self.text()?;
        Some(if charge(text_steps(text.len())) {
            text.chars().count() as u64
        } else {
            0
        })
    }

    fn equals_value(&self, expected: &Value) -> bool {
        super::equality::equal(*self, expected)
    }

    /// Errors only: the value read again from the event's text into a
    /// `serde_json::Value` (exact numbers).
    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(match *self {
            Instance::Value(document, index) => {
                serde_json::Deserializer::from_slice(document.text_from(index))
                    .into_iter::<Value>()
                    .next()
                    .and_then(Result::ok)
                    .unwrap_or(Value::Null)
            }
            Instance::Name(name) => Value::String(name.to_owned()),
        })
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(match *self {
            Instance::Value(document, index) => {
                NodeIdentity::new(std::ptr::from_ref(document.node(index)) as usize)
            }
            Instance::Name(name) => NodeIdentity::tagged(name.as_ptr() as usize, 1),
        })
    }
}

/// A number of the event: its tape value, and where its text is.
#[derive(Clone)]
pub struct TapeNumber<'a> {
    value: StaticNode,
    source: Option<(&'a Document<'a>, usize)>,
    /// Its text's length was charged.
    charged: Cell<bool>,
}

impl<'a> TapeNumber<'a> {
    /// The stand-in number read once the meter is cut.
    fn zero() -> TapeNumber<'a> {
        TapeNumber {
            value: StaticNode::U64(0),
            source: None,
            charged: Cell::new(true),
        }
    }

    /// The number as sent, uncharged.
    pub(super) fn text(&self) -> &'a str {
        self.source
            .map_or("0", |(document, index)| document.scalar_text(index))
    }

    /// The number as sent, for jsonschema's exact arithmetic: charged what
    /// that costs, once ([`number_steps`]; an integer's text is at most 20
    /// characters, charged with the number's access). Zero once cut.
    fn read(&self) -> &'a str {
        let text = self.text();
        if self.charged.replace(true) || !matches!(self.value, StaticNode::F64(_)) {
            return if is_cut() { "0" } else { text };
        }
        if charge(number_steps(text) - ACCESS_STEPS) {
            text
        } else {
            "0"
        }
    }
}

impl JsonNumber for TapeNumber<'_> {
    // The tape holds an integer exactly when it was written as one within
    // 64 bits, as serde_json's `as_u64`/`as_i64` parse it; anything else is
    // an `f64`, correctly rounded, as serde_json's `as_f64` parses it.
    fn as_u64(&self) -> Option<u64> {
        match self.value {
            StaticNode::U64(value) => Some(value),
            StaticNode::I64(value) => u64::try_from(value).ok(),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self.value {
            StaticNode::I64(value) => Some(value),
            StaticNode::U64(value) => i64::try_from(value).ok(),
            _ => None,
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn as_f64(&self) -> Option<f64> {
        match self.value {
            StaticNode::F64(value) => Some(value),
            StaticNode::U64(value) => Some(value as f64),
            StaticNode::I64(value) => Some(value as f64),
            _ => None,
        }
    }

    fn as_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.read())
    }

    fn to_number(&self) -> Cow<'_, serde_json::Number> {
        Cow::Owned(
            serde_json::from_str(self.read()).unwrap_or_else(|_| serde_json::Number::from(0u8)),
        )
    }

    fn is_integer(&self) -> bool {
        match self.value {
            // A whole number's nearest f64 is whole: a fraction settles it.
            StaticNode::F64(value) => {
                value.fract() == 0.0 && super::equality::is_integer_text(self.read())
            }
            _ => true,
        }
    }
}

/// An object of the event.
#[derive(Clone, Copy)]
pub struct InstanceObject<'a> {
    document: &'a Document<'a>,
    index: usize,
    len: usize,
}

impl<'a> InstanceObject<'a> {
    /// The members, uncharged.
    pub(super) fn entries(&self) -> Entries<'a> {
        Entries {
            document: self.document,
            key: self.index + 1,
            left: self.len,
        }
    }

    /// The member `name` (the last of that name), charged: the walk of
    /// every member before it starts ([`MEMBER_STEPS`] each: it never
    /// stops early), and the bytes of each name compared whole. `Err`
    /// once the budget is spent, before or during the walk: nothing is
    /// walked past the cut. (Charging after the walk let a schema that
    /// looks up 20,000 names in an event of 40,000 members walk on past
    /// the cut: 1.60 s against a budget of 173 ms.)
    pub(super) fn lookup(&self, name: &str) -> Result<Option<Instance<'a>>, Cut> {
        let walk = ACCESS_STEPS.saturating_add((self.len as u64).saturating_mul(MEMBER_STEPS));
        if !charge(walk) {
            return Err(Cut);
        }
        let mut found = None;
        for (member, value) in self.entries() {
            // Most names differ in length or first byte: no call to compare.
            if member.len() == name.len() && member.as_bytes().first() == name.as_bytes().first() {
                if !charge(compare_steps(name.len())) {
                    return Err(Cut);
                }
                if member == name {
                    found = Some(value);
                }
            }
        }
        Ok(found)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// The budget ran out during a member lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut;

/// Steps per member an object lookup walks past (a name's length and
/// first byte read, the value skipped). With [`compare_steps`], wide
/// objects looked up by hostile schemas (20,000 members by 20 required
/// names, 1,000 in-place copies of 10 `properties`, 5,000 `required`
/// names of 64 bytes) ran at 0.5 to 0.6 ns a charged step in release,
/// under the 1.3 ns a step the budgets assume.
pub(super) const MEMBER_STEPS: u64 = 3;

/// Steps of comparing a member's name of `bytes` whole with the name
/// looked up (it matched in length and first byte): a call and the
/// bytes (about 7 ns for 256 bytes, 22 for 1,024).
fn compare_steps(bytes: usize) -> u64 {
    4 + bytes as u64 / 32
}

/// An object's members, in document order, uncharged.
pub(super) struct Entries<'a> {
    document: &'a Document<'a>,
    key: usize,
    left: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, Instance<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let TapeNode::String(name) = *self.document.node(self.key) else {
            unreachable!("object keys are strings")
        };
        let value = self.key + 1;
        self.key = self.document.after(value);
        Some((name, Instance::Value(self.document, value)))
    }
}

/// An object's members, one value entered each.
pub struct Members<'a>(Entries<'a>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, Instance<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, value) = self.0.next()?;
        if !charge(weights().value_steps.saturating_add(text_steps(name.len()))) {
            return None;
        }
        name_affordable(name).then_some((name, value))
    }
}

impl<'a> Object<'a, Metered> for InstanceObject<'a> {
    type Node = Instance<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.len
    }

    /// A walk of the members, charged before it starts ([`Self::lookup`]).
    fn get(&self, key: &Box<str>) -> Option<Instance<'a>> {
        let value = self.lookup(key).ok()??;
        charge(weights().value_steps).then_some(value)
    }

    fn members(&self) -> Members<'a> {
        Members(self.entries())
    }
}

/// An array of the event.
#[derive(Clone, Copy)]
pub struct InstanceArray<'a> {
    document: &'a Document<'a>,
    index: usize,
    len: usize,
}

impl<'a> InstanceArray<'a> {
    /// The elements, uncharged.
    pub(super) fn items(&self) -> Items<'a> {
        Items {
            document: self.document,
            next: self.index + 1,
            left: self.len,
        }
    }

    /// The elements' tape indices.
    pub(super) fn indices(&self) -> impl Iterator<Item = usize> + 'a {
        let document = self.document;
        let mut next = self.index + 1;
        (0..self.len).map(move |_| {
            let index = next;
            next = document.after(index);
            index
        })
    }

    /// The element at tape index `index` (from [`InstanceArray::indices`]).
    pub(super) fn at(&self, index: usize) -> Instance<'a> {
        Instance::Value(self.document, index)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// An array's elements, uncharged.
pub(super) struct Items<'a> {
    document: &'a Document<'a>,
    next: usize,
    left: usize,
}

impl<'a> Iterator for Items<'a> {
    type Item = Instance<'a>;

    fn next(&mut self) -> Option<Instance<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let value = self.next;
        self.next = self.document.after(value);
        Some(Instance::Value(self.document, value))
    }
}

/// An array's elements, one value entered each.
pub struct Elements<'a>(Items<'a>);

impl<'a> Iterator for Elements<'a> {
    type Item = Instance<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let value = self.0.next()?;
        charge(weights().value_steps).then_some(value)
    }
}

impl<'a> Array<'a, Metered> for InstanceArray<'a> {
    type Node = Instance<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn elements(&self) -> Elements<'a> {
        Elements(self.items())
    }

    fn is_unique(&self) -> bool {
        super::equality::is_unique(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::metered::{metered, Weights};
    use super::super::tape::with_document;
    use super::*;

    #[test]
    fn a_cut_meter_stops_charging_and_reads_empty() {
        with_document(br#"{"a":"some text","b":[1,2,3]}"#, |document| {
            let (seen, spent) = metered(10, Weights::default(), None, || {
                let instance = Instance::root(document.unwrap());
                let object = instance.as_object().unwrap();
                let members: Vec<_> = object.members().map(|(name, _)| name).collect();
                (members, object.get(&"a".into()).is_some())
            });
            assert!(spent.cut);
            assert!(spent.steps <= 10);
            assert!(seen.0.len() < 2, "{seen:?}");
            assert!(!seen.1);
        });
    }

    /// A lookup is charged before it walks, and nothing is walked once
    /// the budget is spent. `dependentRequired` looks up each of its
    /// 20,000 names in an event of 40,000 members: with the budget cut at
    /// a million steps (about 1.3 ms) the check stops within milliseconds.
    /// When the walk was charged after it was done and `get` ignored the
    /// cut, the names went on walking every member: 800 million member
    /// visits (1.6 s in release, minutes here), whatever the budget.
    #[test]
    fn a_lookup_past_the_cut_walks_nothing() {
        let names: Vec<String> = (0..20_000)
            .map(|i| format!("\"k{i:07}\":[\"z\"]"))
            .collect();
        let schema = format!(r#"{{"dependentRequired":{{{}}}}}"#, names.join(","));
        let members: Vec<String> = (0..40_000).map(|i| format!("\"m{i:07}\":1")).collect();
        let event = format!(r#"{{"event_type":"t",{}}}"#, members.join(","));
        let limits = super::super::SchemaLimits::default();
        let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
        let contract = super::super::compile(&schema, &limits).unwrap();
        with_document(event.as_bytes(), |document| {
            let started = std::time::Instant::now();
            let (_, spent) = metered(1_000_000, contract.weights, None, || {
                contract
                    .validator
                    .is_valid(Instance::root(document.unwrap()))
            });
            let took = started.elapsed();
            assert!(spent.cut);
            assert!(
                took < std::time::Duration::from_secs(5),
                "a check cut at a million steps took {took:?}"
            );
        });
    }

    // The tape's numbers read as serde_json's exact numbers read: the same
    // answers from each accessor, for integers at and past 64 bits,
    // decimals that round alike, exponents and negative zero.
    #[test]
    fn numbers_read_as_serde_json_reads_them_exactly() {
        let texts = [
            "0",
            "-0",
            "7",
            "-7",
            "9007199254740993",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "1.0",
            "1.5",
            "-0.0",
            "1e2",
            "1E+2",
            "2.5e-3",
            "1.00000000000000000001",
            "0.1000000000000000055511151231257827",
            "9007199254740993.0",
            "1e-400",
        ];
        for text in texts {
            let exact: serde_json::Number = serde_json::from_str(text).unwrap();
            with_document(format!("[{text}]").as_bytes(), |document| {
                let document = document.unwrap();
                let number = Instance::Value(document, 1).as_number().unwrap();
                // The text as sent (serde_json writes `1e2` as `1e+2`).
                assert_eq!(number.as_str(), text);
                assert_eq!(*number.to_number(), exact, "{text}");
                assert_eq!(number.as_f64(), exact.as_f64(), "{text}");
                if text != "-0" {
                    // `-0` reads as the integer 0: equal, whatever the sign.
                    assert_eq!(number.as_u64(), exact.as_u64(), "{text}");
                }
                assert_eq!(number.as_i64(), exact.as_i64(), "{text}");
                let integer = !text.contains(['.', 'e', 'E'])
                    || matches!(text, "1.0" | "-0.0" | "1e2" | "1E+2" | "9007199254740993.0");
                assert_eq!(number.is_integer(), integer, "{text}");
            });
        }
    }
}
