//! What one schema document may cost, checked before it is compiled
//! (SPEC §15: files an operator loads have budgets checked at load).
//!
//! The document is walked as jsonschema would apply it, with `$ref`s
//! resolved as jsonschema resolves them (the `referencing` crate, the
//! meta-schemas included), each subschema once. Edges are of two kinds:
//! *in place* (`allOf`, `anyOf`, `oneOf`, `not`, `if`/`then`/`else`,
//! `dependentSchemas`, `$ref`, `$dynamicRef`), which apply a subschema to
//! the same event value, and *descending* (`properties`, `items`, ...),
//! which apply it to a member or an element. For each subschema:
//!
//! - its **expansion**: the subschemas that apply to one event value in
//!   place, counted with repeats (`allOf: [{$ref: a}, {$ref: a}]` counts
//!   `a` twice), memoized and saturating. Two `$ref`s per level, 60
//!   levels deep, is 2^60: the validation never ends. Refused past
//!   `expansion_max`; an in-place cycle (`$ref` back to itself without
//!   descending into the event) is infinite, and refused.
//! - its **depth**: the longest chain of in-place subschemas. A chain of
//!   15,000 `$ref`s overflows a 2 MiB stack on the first event. Refused
//!   past `depth_max`; with the event's nesting (at most 128: the
//!   parser's limit) it bounds the validation's stack.
//! - its **patterns**: each `pattern` and `patternProperties` name
//!   compiled to an NFA as jsonschema would, each within
//!   `pattern_nfa_bytes_max`; their states are summed (a set's patterns
//!   are bounded in total by the caller) and the heaviest
//!   `patternProperties` sets what a member name costs a validation.
//!
//! Descending edges are not bounded here: they consume the event's own
//! structure, and the validation's meter (`metered`) pays for each value
//! entered, at the expansion found here.

use ahash::{AHashMap, AHashSet};
use referencing::{Draft, Resolver, ResourceRef};
use serde_json::{Map, Value};

/// The per-document limits.
#[derive(Clone, Copy, Debug)]
pub struct DocumentLimits {
    /// Longest chain of in-place subschemas (`schemas.ref_depth_max`).
    pub depth_max: u64,
    /// Most subschemas one event value meets in place
    /// (`schemas.expansion_max`).
    pub expansion_max: u64,
    /// One pattern's compiled NFA (`schemas.pattern_nfa_bytes_max`).
    pub pattern_nfa_bytes_max: usize,
    /// Patterns the set has left for this document
    /// (`schemas.patterns_max`, less the files before it).
    pub patterns_left: u64,
    /// NFA states the set has left for this document
    /// (`schemas.pattern_states_max`, less the files before it).
    pub pattern_states_left: u64,
}

/// What a document was found to cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DocumentCost {
    /// Subschemas (objects and booleans in schema position), each once.
    pub subschemas: u64,
    /// The largest expansion of any subschema.
    pub expansion: u64,
    /// The longest in-place chain.
    pub depth: u64,
    /// `pattern`s and `patternProperties` names.
    pub patterns: u64,
    /// Their NFAs' states, summed.
    pub pattern_states: u64,
    /// Their NFAs' bytes, summed.
    pub pattern_nfa_bytes: u64,
    /// The most NFA states of one subschema's `patternProperties`: each
    /// member name of a value it applies to is matched against all.
    pub name_pattern_states: u64,
}

const BASE_URI: &str = "json-schema:///";

/// In-place keywords whose value is one subschema.
const IN_PLACE_ONE: [&str; 4] = ["not", "if", "then", "else"];
/// In-place keywords whose value is an array of subschemas.
const IN_PLACE_ARRAY: [&str; 3] = ["allOf", "anyOf", "oneOf"];
/// In-place keywords whose value is an object of subschemas.
const IN_PLACE_MAP: [&str; 2] = ["dependentSchemas", "dependencies"];
/// Descending keywords whose value is one subschema.
const DESCENDING_ONE: [&str; 7] = [
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "items",
    "additionalItems",
    "unevaluatedItems",
    "contains",
];
/// Descending keywords whose value is an array of subschemas.
const DESCENDING_ARRAY: [&str; 2] = ["prefixItems", "items"];
/// Descending keywords whose value is an object of subschemas.
const DESCENDING_MAP: [&str; 2] = ["properties", "patternProperties"];
/// Keywords holding subschemas applied only through a `$ref`.
const DEFINITIONS: [&str; 2] = ["$defs", "definitions"];

/// A subschema's own cost, once computed.
#[derive(Clone, Copy)]
struct Found {
    expansion: u64,
    depth: u64,
}

enum State {
    /// On the in-place path being walked: reaching it again is a cycle.
    Walking,
    Done(Found),
}

struct Walk<'r> {
    limits: DocumentLimits,
    cost: DocumentCost,
    states: AHashMap<usize, State>,
    /// Subschemas to walk later, reached by a descending edge or as a
    /// definition, with the resolver of their place.
    pending: Vec<(&'r Value, Resolver<'r>)>,
    dynamic_anchors: AHashMap<&'r str, Vec<&'r Value>>,
    recursive_anchors: Vec<&'r Value>,
    /// Patterns already compiled (one text, one NFA).
    patterns: AHashSet<&'r str>,
    /// `patternProperties` names, each once.
    name_patterns: Vec<&'r str>,
}

/// Walks `document` and says what it costs, or which limit it passes,
/// with its `patternProperties` patterns (member names are matched
/// against them).
pub fn analyze(
    document: &Value,
    limits: DocumentLimits,
) -> Result<(DocumentCost, Vec<String>), String> {
    let registry = referencing::SPECIFICATIONS
        .add(BASE_URI, document)
        .and_then(|builder| builder.draft(Draft::Draft202012).prepare())
        .map_err(|error| format!("not a valid draft 2020-12 schema: {error}"))?;
    let base = referencing::uri::from_str(BASE_URI).map_err(|error| error.to_string())?;
    let resolver = registry.resolver(base);
    let mut walk = Walk {
        limits,
        cost: DocumentCost::default(),
        states: AHashMap::new(),
        pending: Vec::new(),
        dynamic_anchors: AHashMap::new(),
        recursive_anchors: Vec::new(),
        patterns: AHashSet::new(),
        name_patterns: Vec::new(),
    };
    collect_anchors(document, &mut walk, 0);
    walk.pending.push((document, resolver));
    while let Some((schema, resolver)) = walk.pending.pop() {
        walk.subschema(schema, &resolver, 1)?;
    }
    let names = walk
        .name_patterns
        .iter()
        .map(|name| name.to_string())
        .collect();
    Ok((walk.cost, names))
}

/// Finds every `$dynamicAnchor` and `$recursiveAnchor: true` of the
/// document: a `$dynamicRef` may land on any of them.
fn collect_anchors<'r>(value: &'r Value, walk: &mut Walk<'r>, nesting: usize) {
    // The parser refuses nesting past 128; stay well within the stack.
    if nesting > 256 {
        return;
    }
    match value {
        Value::Object(members) => {
            if let Some(Value::String(name)) = members.get("$dynamicAnchor") {
                walk.dynamic_anchors
                    .entry(name.as_str())
                    .or_default()
                    .push(value);
            }
            if members.get("$recursiveAnchor") == Some(&Value::Bool(true)) {
                walk.recursive_anchors.push(value);
            }
            for member in members.values() {
                collect_anchors(member, walk, nesting + 1);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_anchors(item, walk, nesting + 1);
            }
        }
        _ => {}
    }
}

impl<'r> Walk<'r> {
    /// The cost of `schema` applied in place at chain position `depth`.
    fn subschema(
        &mut self,
        schema: &'r Value,
        resolver: &Resolver<'r>,
        depth: u64,
    ) -> Result<Found, String> {
        if depth > self.limits.depth_max {
            return Err(self.too_deep());
        }
        let key = std::ptr::from_ref(schema) as usize;
        match self.states.get(&key) {
            Some(State::Done(found)) => {
                let found = *found;
                if depth - 1 + found.depth > self.limits.depth_max {
                    return Err(self.too_deep());
                }
                return Ok(found);
            }
            Some(State::Walking) => {
                return Err(
                    "a $ref cycle that applies a schema to the same event value again without descending into it (the validation would never end)"
                        .into(),
                )
            }
            None => {}
        }
        let Value::Object(members) = schema else {
            // `true`, `false`, or something jsonschema will refuse.
            let found = Found {
                expansion: 1,
                depth: 1,
            };
            self.cost.subschemas += 1;
            self.states.insert(key, State::Done(found));
            return Ok(found);
        };
        self.states.insert(key, State::Walking);
        self.cost.subschemas += 1;
        let resolver = match resolver.in_subresource(ResourceRef::new(schema, Draft::Draft202012)) {
            Ok(inner) => inner,
            Err(error) => return Err(format!("$id: {error}")),
        };
        self.patterns_of(members)?;
        self.queue_descending(members, &resolver);
        let mut found = Found {
            expansion: 1,
            depth: 1,
        };
        for (target, target_resolver) in self.in_place(members, &resolver)? {
            let inner = self.subschema(target, &target_resolver, depth + 1)?;
            found.expansion = found.expansion.saturating_add(inner.expansion);
            found.depth = found.depth.max(inner.depth + 1);
            if found.expansion > self.limits.expansion_max {
                return Err(format!(
                    "one event value would meet more than {} subschemas in place ($ref, allOf, anyOf, oneOf, ... expanded; schemas.expansion_max)",
                    self.limits.expansion_max
                ));
            }
        }
        self.cost.expansion = self.cost.expansion.max(found.expansion);
        self.cost.depth = self.cost.depth.max(found.depth);
        self.states.insert(key, State::Done(found));
        Ok(found)
    }

    fn too_deep(&self) -> String {
        format!(
            "$ref and in-place subschemas (allOf, anyOf, oneOf, not, if/then/else) nest more than {} deep on one event value (schemas.ref_depth_max)",
            self.limits.depth_max
        )
    }

    /// The subschemas `members` applies in place, each with its resolver.
    fn in_place(
        &mut self,
        members: &'r Map<String, Value>,
        resolver: &Resolver<'r>,
    ) -> Result<Vec<(&'r Value, Resolver<'r>)>, String> {
        let mut targets = Vec::new();
        for keyword in IN_PLACE_ONE {
            if let Some(schema) = members.get(keyword) {
                targets.push((schema, resolver.clone()));
            }
        }
        for keyword in IN_PLACE_ARRAY {
            if let Some(Value::Array(schemas)) = members.get(keyword) {
                targets.extend(schemas.iter().map(|schema| (schema, resolver.clone())));
            }
        }
        for keyword in IN_PLACE_MAP {
            if let Some(Value::Object(schemas)) = members.get(keyword) {
                // `dependencies` also holds arrays of names: not schemas.
                targets.extend(
                    schemas
                        .values()
                        .filter(|schema| matches!(schema, Value::Object(_) | Value::Bool(_)))
                        .map(|schema| (schema, resolver.clone())),
                );
            }
        }
        for keyword in ["$ref", "$dynamicRef"] {
            if let Some(Value::String(reference)) = members.get(keyword) {
                let resolved = resolver
                    .lookup(reference)
                    .map_err(|error| format!("{keyword} {reference:?}: {error}"))?;
                let (contents, target_resolver, _) = resolved.into_inner();
                targets.push((contents, target_resolver));
            }
        }
        if let Some(Value::String(reference)) = members.get("$dynamicRef") {
            // Any anchor of that name the dynamic scope may hold.
            let name = reference.rsplit_once('#').map_or("", |(_, name)| name);
            for anchor in self.dynamic_anchors.get(name).into_iter().flatten() {
                targets.push((anchor, resolver.clone()));
            }
        }
        if members.contains_key("$recursiveRef") {
            let resolved = resolver
                .lookup("#")
                .map_err(|error| format!("$recursiveRef: {error}"))?;
            let (contents, target_resolver, _) = resolved.into_inner();
            targets.push((contents, target_resolver));
            for anchor in self.recursive_anchors.clone() {
                targets.push((anchor, resolver.clone()));
            }
        }
        Ok(targets)
    }

    /// Queues the subschemas `members` applies to members or elements, and
    /// its definitions.
    fn queue_descending(&mut self, members: &'r Map<String, Value>, resolver: &Resolver<'r>) {
        for keyword in DESCENDING_ONE {
            if let Some(schema @ (Value::Object(_) | Value::Bool(_))) = members.get(keyword) {
                self.pending.push((schema, resolver.clone()));
            }
        }
        for keyword in DESCENDING_ARRAY {
            if let Some(Value::Array(schemas)) = members.get(keyword) {
                for schema in schemas {
                    self.pending.push((schema, resolver.clone()));
                }
            }
        }
        for keyword in DESCENDING_MAP.into_iter().chain(DEFINITIONS) {
            if let Some(Value::Object(schemas)) = members.get(keyword) {
                for schema in schemas.values() {
                    self.pending.push((schema, resolver.clone()));
                }
            }
        }
    }

    /// Compiles `pattern` and each `patternProperties` name once.
    fn patterns_of(&mut self, members: &'r Map<String, Value>) -> Result<(), String> {
        if let Some(Value::String(pattern)) = members.get("pattern") {
            self.pattern(pattern)?;
        }
        if let Some(Value::Object(patterns)) = members.get("patternProperties") {
            let mut states = 0u64;
            for pattern in patterns.keys() {
                states = states.saturating_add(self.pattern(pattern)?);
                if !self.name_patterns.contains(&pattern.as_str()) {
                    self.name_patterns.push(pattern);
                }
            }
            self.cost.name_pattern_states = self.cost.name_pattern_states.max(states);
        }
        Ok(())
    }

    /// The NFA states of `pattern`, counted into the document's once.
    fn pattern(&mut self, pattern: &'r str) -> Result<u64, String> {
        let nfa = super::pattern::nfa(pattern, self.limits.pattern_nfa_bytes_max)?;
        let states = nfa.states().len() as u64;
        if self.patterns.insert(pattern) {
            self.cost.patterns += 1;
            self.cost.pattern_states += states;
            self.cost.pattern_nfa_bytes += nfa.memory_usage() as u64;
            // Before anything is compiled for good: 26,000 patterns in one
            // file once took 22.9 GB to compile.
            if self.cost.patterns > self.limits.patterns_left
                || self.cost.pattern_states > self.limits.pattern_states_left
            {
                return Err(format!(
                    "with this file the set's patterns pass their budget: this file alone has {} patterns of {} NFA states so far, and the set has room for {} more patterns (schemas.patterns_max) of {} more states (schemas.pattern_states_max)",
                    self.cost.patterns,
                    self.cost.pattern_states,
                    self.limits.patterns_left,
                    self.limits.pattern_states_left
                ));
            }
        }
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DocumentLimits = DocumentLimits {
        depth_max: 32,
        expansion_max: 1_000,
        pattern_nfa_bytes_max: 64 * 1024,
        patterns_left: 100,
        pattern_states_left: 100_000,
    };

    fn cost(schema: Value) -> Result<DocumentCost, String> {
        analyze(&schema, LIMITS).map(|(cost, _)| cost)
    }

    #[test]
    fn an_ordinary_schema_costs_little() {
        let found = cost(serde_json::json!({
            "type": "object",
            "required": ["properties"],
            "properties": {
                "properties": {
                    "type": "object",
                    "properties": {"plan": {"enum": ["free", "pro"]}, "code": {"pattern": "^[a-z]{2}$"}},
                    "patternProperties": {"^x-": {"type": "string"}}
                }
            },
            "$defs": {"id": {"type": "string"}},
            "allOf": [{"$ref": "#/$defs/id"}]
        }))
        .unwrap();
        assert_eq!(found.expansion, 3, "{found:?}");
        assert_eq!(found.depth, 3, "{found:?}");
        assert_eq!(found.patterns, 2);
        assert!(found.name_pattern_states > 0);
    }

    fn doubling(levels: usize) -> Value {
        let mut defs = Map::new();
        for level in 0..levels {
            let next = format!("#/$defs/a{}", level + 1);
            defs.insert(
                format!("a{level}"),
                serde_json::json!({"allOf": [{"$ref": next}, {"$ref": next}]}),
            );
        }
        defs.insert(format!("a{levels}"), serde_json::json!({"type": "integer"}));
        serde_json::json!({"$defs": defs, "$ref": "#/$defs/a0"})
    }

    #[test]
    fn two_refs_per_level_is_refused_as_exponential() {
        // Issue 30: 60 levels (1.6 KB) spun a core forever.
        assert!(cost(doubling(60)).is_err());
        // Within the depth limit, the expansion is what refuses it.
        let error = cost(doubling(12)).unwrap_err();
        assert!(error.contains("schemas.expansion_max"), "{error}");
        assert!(cost(doubling(6)).is_ok());
    }

    #[test]
    fn a_long_ref_chain_is_refused_before_it_can_overflow_the_stack() {
        let mut defs = Map::new();
        for link in 0..15_000 {
            defs.insert(
                format!("a{link}"),
                serde_json::json!({"$ref": format!("#/$defs/a{}", link + 1)}),
            );
        }
        defs.insert("a15000".into(), serde_json::json!({"type": "integer"}));
        let error = cost(serde_json::json!({"$defs": defs, "$ref": "#/$defs/a0"})).unwrap_err();
        assert!(error.contains("schemas.ref_depth_max"), "{error}");
    }

    #[test]
    fn an_in_place_cycle_is_refused_and_a_descending_one_is_not() {
        let error =
            cost(serde_json::json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}))
                .unwrap_err();
        assert!(error.contains("cycle"), "{error}");
        let tree = cost(serde_json::json!({
            "$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"
        }))
        .unwrap();
        assert_eq!(tree.expansion, 2);
    }

    #[test]
    fn refs_resolve_as_jsonschema_resolves_them() {
        // Against an embedded resource's $id, and to the meta-schema.
        let found = cost(serde_json::json!({
            "$id": "https://example.com/root.json",
            "$defs": {"inner": {"$id": "inner.json", "$defs": {"x": {"type": "string"}}, "$ref": "#/$defs/x"}},
            "allOf": [{"$ref": "inner.json"}, {"$ref": "https://json-schema.org/draft/2020-12/schema"}]
        }))
        .unwrap();
        assert!(found.expansion >= 4, "{found:?}");
        assert!(cost(serde_json::json!({"$ref": "#/$defs/missing"})).is_err());
    }

    #[test]
    fn patterns_past_the_nfa_limit_are_refused_naming_it() {
        let error = cost(serde_json::json!({"pattern": "[a-z]{20000}x"})).unwrap_err();
        assert!(error.contains("schemas.pattern_nfa_bytes_max"), "{error}");
        let found = cost(serde_json::json!({"properties": {"a": {"pattern": "[a-z]{10}x"}, "b": {"pattern": "[a-z]{10}x"}}}))
            .unwrap();
        assert_eq!(found.patterns, 1, "one text, compiled once");
    }
}
