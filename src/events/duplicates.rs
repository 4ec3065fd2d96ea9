//! I-JSON (RFC 7493 section 2.3): no object in an event names a member
//! twice, at any depth. JSON parsers disagree on which of two members
//! wins (simd-json and serde_json keep the last, others the first, some
//! both), so an event stored with a duplicate could be read by a consumer
//! as a value no contract checked.
//!
//! The check reads the simd-json tape. For each object it gathers the
//! members' key nodes into a per-core buffer that is reused (so a steady
//! stream of events allocates nothing here), then compares names
//! pairwise when the object is small and sorts them when it is not: at
//! most O(m log m) name comparisons for an object of m members, every
//! node visited a bounded number of times. Names are compared unescaped
//! (`"a"` and `"\u0061"` are one name).

use simd_json::Node;

use crate::error::ApiError;

/// Objects of at most this many members are compared pairwise (at most
/// 120 comparisons, no sort); larger ones are sorted.
const PAIRWISE_MEMBERS_MAX: usize = 16;

/// Key node indices of one object, reused from event to event.
pub struct DuplicateCheck {
    keys: Vec<usize>,
}

impl Default for DuplicateCheck {
    fn default() -> Self {
        DuplicateCheck {
            keys: Vec::with_capacity(64),
        }
    }
}

impl DuplicateCheck {
    /// `Ok` when no object in the tape `nodes` has two members of one
    /// name; otherwise a 400 `invalid_event` naming (as a JSON Pointer)
    /// the first such member in document order.
    pub fn check(&mut self, nodes: &[Node<'_>]) -> Result<(), ApiError> {
        for (index, node) in nodes.iter().enumerate() {
            let Node::Object { len, .. } = *node else {
                continue;
            };
            if len < 2 {
                continue;
            }
            self.keys.clear();
            let mut key = index + 1;
            for _ in 0..len {
                self.keys.push(key);
                key = skip_value(nodes, key + 1);
            }
            if let Some(name) = repeated_name(nodes, &mut self.keys) {
                return Err(duplicate(nodes, index, name));
            }
        }
        Ok(())
    }
}

/// A name that two of the key nodes `keys` share, if any (`keys` is
/// reordered).
fn repeated_name<'a>(nodes: &[Node<'a>], keys: &mut [usize]) -> Option<&'a str> {
    let name = |key: usize| match nodes[key] {
        Node::String(name) => name,
        _ => unreachable!("object keys are strings"),
    };
    if keys.len() <= PAIRWISE_MEMBERS_MAX {
        for (position, &first) in keys.iter().enumerate() {
            let first = name(first);
            if keys[position + 1..]
                .iter()
                .any(|&other| name(other) == first)
            {
                return Some(first);
            }
        }
        return None;
    }
    keys.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
    keys.windows(2)
        .find(|pair| name(pair[0]) == name(pair[1]))
        .map(|pair| name(pair[0]))
}

/// Index of the node after the value starting at `index`.
fn skip_value(nodes: &[Node<'_>], index: usize) -> usize {
    match nodes[index] {
        Node::Object { count, .. } | Node::Array { count, .. } => index + 1 + count,
        _ => index + 1,
    }
}

/// The refusal for the member `name` of the object at `object`.
fn duplicate(nodes: &[Node<'_>], object: usize, name: &str) -> ApiError {
    let mut pointer = pointer_to(nodes, object);
    push_token(&mut pointer, name);
    ApiError {
        pointer: Some(pointer.into_boxed_str()),
        ..ApiError::new(
            400,
            "invalid_event",
            "member name appears more than once in one object (RFC 7493 I-JSON)",
        )
    }
}

/// The JSON Pointer (RFC 6901) of the value at node `target`, found by
/// descending from the root into the member or element that holds it.
fn pointer_to(nodes: &[Node<'_>], target: usize) -> String {
    let mut pointer = String::new();
    let mut index = 0;
    while index != target {
        let (members, is_object) = match nodes[index] {
            Node::Object { len, .. } => (len, true),
            Node::Array { len, .. } => (len, false),
            _ => unreachable!("the target lies inside a container"),
        };
        let mut child = index + 1;
        for position in 0..members {
            let value = if is_object { child + 1 } else { child };
            let end = skip_value(nodes, value);
            if target < end {
                match nodes[child] {
                    Node::String(name) if is_object => push_token(&mut pointer, name),
                    _ => {
                        pointer.push('/');
                        pointer.push_str(itoa::Buffer::new().format(position));
                    }
                }
                index = value;
                break;
            }
            child = end;
        }
    }
    pointer
}

/// Appends `/name`, escaped as RFC 6901 says (`~` as `~0`, `/` as `~1`).
fn push_token(pointer: &mut String, name: &str) {
    pointer.push('/');
    for character in name.chars() {
        match character {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            other => pointer.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<(), String> {
        let mut bytes = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).expect("valid JSON");
        DuplicateCheck::default().check(&tape.0).map_err(|error| {
            assert_eq!((error.status, error.code), (400, "invalid_event"));
            error.pointer.expect("a pointer").into_string()
        })
    }

    #[test]
    fn distinct_names_pass_at_every_depth() {
        for json in [
            "{}",
            r#"{"a":1}"#,
            r#"{"a":1,"b":{"a":1,"b":[{"a":1,"b":2},{"a":1}]},"c":{"a":{"a":{"a":{}}}}}"#,
            r#"[{"a":1},{"a":1}]"#,
            r#"{"a":1,"A":2,"a ":3,"ab":4}"#,
        ] {
            assert_eq!(check(json), Ok(()), "{json}");
        }
        let wide = (0..1000)
            .map(|member| format!(r#""k{member}":{member}"#))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(check(&format!("{{{wide}}}")), Ok(()));
    }

    #[test]
    fn duplicates_are_refused_with_their_pointer() {
        for (json, pointer) in [
            (r#"{"a":1,"a":2}"#, "/a"),
            (
                r#"{"user_id":"u","properties":{"plan":"gold","plan":"pro"}}"#,
                "/properties/plan",
            ),
            (r#"{"x":[1,{"y":{"z":1,"q":2,"z":3}}]}"#, "/x/1/y/z"),
            (r#"{"x":{"a~b/c":{},"a~b/c":[]}}"#, "/x/a~0b~1c"),
            // Escapes are undone before names are compared.
            (r#"{"p":{"plan":1,"pl\u0061n":2}}"#, "/p/plan"),
            (r#"{"":1,"":2}"#, "/"),
            (r#"[{"a":{}},{"a":1,"b":[],"a":{}}]"#, "/1/a"),
            // The outer object's duplicate is found first (document order).
            (r#"{"o":{"i":1,"i":2},"o":1}"#, "/o"),
        ] {
            assert_eq!(check(json), Err(pointer.to_string()), "{json}");
        }
    }

    #[test]
    fn large_objects_are_sorted_and_still_found() {
        let mut members = (0..PAIRWISE_MEMBERS_MAX * 40)
            .map(|member| format!(r#""k{member}":{{}}"#))
            .collect::<Vec<_>>();
        members.push(r#""k7":null"#.to_string());
        let json = format!(r#"{{"properties":{{{}}}}}"#, members.join(","));
        assert_eq!(check(&json), Err("/properties/k7".to_string()));
    }

    #[test]
    fn the_buffer_is_reused() {
        let mut duplicates = DuplicateCheck::default();
        let capacity = duplicates.keys.capacity();
        for _ in 0..100 {
            let mut bytes = br#"{"a":1,"b":{"c":2,"d":3},"e":[{"f":4,"g":5}]}"#.to_vec();
            let tape = simd_json::to_tape(&mut bytes).unwrap();
            duplicates.check(&tape.0).unwrap();
        }
        assert_eq!(duplicates.keys.capacity(), capacity);
    }
}
