//! The event as its contract check reads it: the simd-json tape the
//! request path parses events into, on the thread's reused buffers
//! ([`crate::events::validate::with_kept_parse`]), so a check builds no tree,
//! a steady stream of events allocates nothing, and an event checked on
//! a core is parsed once for its check and its record.
//!
//! The tape keeps each number as an `i64`, `u64` or (anything with a
//! fraction or an exponent, and, with simd-json's `big-int-as-float`,
//! integers past 64 bits) the nearest `f64`: exact for the first two, not
//! for the third. A contract compares numbers exactly, so a number's
//! text is read back from the event as sent: simd-json's first stage
//! records where every value starts (its structural indexes, which also
//! mark the `:`, `,`, `}` and `]` between them), and the tape lists the
//! values in the same order, so the value at tape index `i` starts at the
//! `i`-th of those offsets that is not one of the four separators. The
//! offsets are gathered on the first number text asked for, once per
//! event.

use std::cell::RefCell;

use simd_json::{Node, StaticNode};

use crate::events::validate::with_kept_parse;

/// The deepest nesting the check parses: serde_json's (127 levels), which
/// the check parsed with before. The checker threads' stacks are sized
/// for it (`checker`); an event nested deeper is left to the request path,
/// which refuses it with a retryable 503 when a contract applies (as
/// before).
pub const PARSE_DEPTH_MAX: usize = 127;

/// One parsed event.
pub struct Document<'a> {
    nodes: &'a [Node<'a>],
    /// The event as sent: numbers are read from it.
    raw: &'a [u8],
    structurals: &'a [u32],
    /// Where each node's value starts in `raw`, gathered on first need.
    starts: &'a RefCell<Vec<u32>>,
    /// How deep objects and arrays nest, counted up to one past
    /// [`PARSE_DEPTH_MAX`].
    depth: usize,
}

impl<'a> Document<'a> {
    /// The tape, in document order.
    pub fn nodes(&self) -> &'a [Node<'a>] {
        self.nodes
    }

    /// The node at `index`.
    pub fn node(&self, index: usize) -> &'a Node<'a> {
        &self.nodes[index]
    }

    /// Index of the node after the value at `index`.
    pub fn after(&self, index: usize) -> usize {
        match self.nodes[index] {
            Node::Object { count, .. } | Node::Array { count, .. } => index + 1 + count,
            _ => index + 1,
        }
    }

    /// The text of the scalar at `index` as sent (a number's digits).
    pub fn scalar_text(&self, index: usize) -> &'a str {
        let start = self.start(index);
        let length = self.raw[start..]
            .iter()
            .position(|byte| !matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(self.raw.len() - start);
        // ASCII digits and signs, validated by the parse.
        std::str::from_utf8(&self.raw[start..start + length]).unwrap_or("0")
    }

    /// The event as sent, from where the value at `index` starts.
    pub fn text_from(&self, index: usize) -> &'a [u8] {
        &self.raw[self.start(index)..]
    }

    fn start(&self, index: usize) -> usize {
        let mut starts = self.starts.borrow_mut();
        if starts.is_empty() {
            let raw = self.raw;
            starts.extend(self.structurals.iter().copied().filter(|&at| {
                raw.get(at as usize)
                    .is_some_and(|byte| !matches!(byte, b':' | b',' | b'}' | b']'))
            }));
            debug_assert_eq!(starts.len(), self.nodes.len(), "one start per value");
        }
        starts.get(index).map_or(0, |&at| at as usize)
    }

    /// Whether objects and arrays nest more than `depth_max` deep.
    pub fn nests_deeper_than(&self, depth_max: usize) -> bool {
        self.depth > depth_max
    }

    /// `event_type` of the event: `None` unless it is an object with one
    /// `event_type` member, a string.
    pub fn event_type(&self) -> Option<&'a str> {
        let Some(Node::Object { len, .. }) = self.nodes.first() else {
            return None;
        };
        let mut found = None;
        let mut key = 1;
        for _ in 0..*len {
            if let Node::String("event_type") = self.nodes[key] {
                if found.is_some() {
                    return None;
                }
                found = Some(match self.nodes[key + 1] {
                    Node::String(name) => Some(name),
                    _ => None,
                });
            }
            key = self.after(key + 1);
        }
        found.flatten()
    }

    /// A number node's value: `None` for anything else.
    pub fn number(&self, index: usize) -> Option<StaticNode> {
        match self.nodes[index] {
            Node::Static(
                number @ (StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_)),
            ) => Some(number),
            _ => None,
        }
    }
}

/// How deep `nodes` nest (past [`PARSE_DEPTH_MAX`], not exactly).
fn depth(nodes: &[Node<'_>]) -> usize {
    // Where each open container ends, innermost last.
    let mut ends = [0usize; PARSE_DEPTH_MAX + 1];
    let (mut open, mut deepest, mut index) = (0, 0, 0);
    while index < nodes.len() {
        while open > 0 && ends[open - 1] <= index {
            open -= 1;
        }
        let (count, scalars) = match nodes[index] {
            Node::Object { len, count } => (count, 2 * len),
            Node::Array { len, count } => (count, len),
            _ => {
                index += 1;
                continue;
            }
        };
        if open == ends.len() {
            return open + 1;
        }
        deepest = deepest.max(open + 1);
        if count == scalars {
            // Only scalars inside: nothing deeper to find there.
            index += 1 + count;
            continue;
        }
        ends[open] = index + 1 + count;
        open += 1;
        index += 1;
    }
    deepest
}

thread_local! {
    /// [`Document::start`]'s offsets, reused from event to event.
    static STARTS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` on `raw` parsed (`None`: not JSON, or nested deeper than
/// [`PARSE_DEPTH_MAX`]), on the thread's buffers. Not reentrant: `work`
/// parses nothing itself.
pub fn with_document<R>(raw: &[u8], work: impl FnOnce(Option<&Document<'_>>) -> R) -> R {
    with_kept_parse(raw, |parsed| {
        let Ok(parsed) = parsed else {
            return work(None);
        };
        let depth = depth(parsed.nodes);
        if depth > PARSE_DEPTH_MAX {
            return work(None);
        }
        STARTS.with(|starts| {
            starts.borrow_mut().clear();
            work(Some(&Document {
                nodes: parsed.nodes,
                raw,
                structurals: parsed.structural_indexes,
                starts,
                depth,
            }))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_found_where_it_starts_in_the_text() {
        let text = br#" { "a" : [ 1 , -2.5e+3 ,true,null , "x\"y" ] ,"b":{"c":{}},"d" :12345678901234567890123,
            "e": 1.00000000000000000001, "\u0066": -0, "g":[[]] } "#;
        with_document(text, |document| {
            let document = document.unwrap();
            let texts: Vec<String> = (0..document.nodes().len())
                .filter(|&index| document.number(index).is_some())
                .map(|index| document.scalar_text(index).to_string())
                .collect();
            assert_eq!(
                texts,
                [
                    "1",
                    "-2.5e+3",
                    "12345678901234567890123",
                    "1.00000000000000000001",
                    "-0"
                ]
            );
            assert_eq!(document.starts.borrow().len(), document.nodes().len());
            assert!(document.text_from(0).starts_with(b"{"));
        });
    }

    #[test]
    fn event_types_and_nesting_are_read_from_the_tape() {
        let cases: [(&[u8], Option<&str>); 6] = [
            (
                br#"{"a":[1,{"event_type":"no"}],"event_type":"sign\u0075p"}"#,
                Some("signup"),
            ),
            (br#"{"event_type":1}"#, None),
            (br#"{"event_type":null}"#, None),
            (br#"{"event_type":"a","event_type":"b"}"#, None),
            (br#"["event_type"]"#, None),
            (br#"{"x":{"event_type":"a"}}"#, None),
        ];
        for (text, expected) in cases {
            with_document(text, |document| {
                assert_eq!(document.unwrap().event_type(), expected);
            });
        }
        with_document(b"not json", |document| assert!(document.is_none()));
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        for depth in [0, 1, 5, 32, 33, 40, 100] {
            with_document(nested(depth).as_bytes(), |document| {
                let document = document.unwrap();
                assert_eq!(document.nests_deeper_than(32), depth > 32, "{depth}");
                if depth < 64 {
                    assert!(!document.nests_deeper_than(depth), "{depth} within {depth}");
                }
            });
        }
        let mixed = br#"{"a":[1,{"b":[[2],{}]},[3]],"c":{"d":4},"e":[]}"#;
        with_document(mixed, |document| {
            let document = document.unwrap();
            assert!(document.nests_deeper_than(4) && !document.nests_deeper_than(5));
        });
        // The parse stops where serde_json's does.
        for depth in [PARSE_DEPTH_MAX, PARSE_DEPTH_MAX + 1] {
            let text = nested(depth);
            let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            with_document(text.as_bytes(), |document| {
                assert_eq!(document.is_some(), serde, "{depth}");
                assert_eq!(serde, depth == PARSE_DEPTH_MAX, "{depth}");
            });
        }
    }
}
