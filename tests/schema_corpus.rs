//! Event contracts decide as the reference does: a generated corpus of
//! events (valid ones, and mutations of them: fields removed or replaced
//! by integers written as 1.0, big numbers, strings whose length differs
//! in bytes and characters, wrong types) is checked against several
//! schemas by sluice (`SchemaSet::check`, what the server runs) and by
//! Python's `jsonschema` (pinned in tests/clients/requirements.txt,
//! `Draft202012Validator`); every accept/refuse decision must agree.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use sluice::events::schema::SchemaSet;

/// The schemas: (event type, schema).
const SCHEMAS: &[(&str, &str)] = &[
    // A typical contract: ten properties, an enum, a pattern, bounds.
    ("checkout", include_str!("fixtures/checkout.schema.json")),
    // Numbers: integers written as 1.0, big numbers, exact bounds.
    (
        "metric",
        r#"{"type":"object","properties":{"properties":{"type":"object","properties":{
              "count":{"type":"integer"},
              "big":{"type":"integer","maximum":9007199254740992},
              "huge":{"minimum":18446744073709551616},
              "ratio":{"type":"number","minimum":0,"maximum":1},
              "neg":{"exclusiveMaximum":0}}}}}"#,
    ),
    // Strings: lengths in characters (not bytes), patterns.
    (
        "profile",
        r#"{"type":"object","properties":{"properties":{"type":"object","properties":{
              "name":{"type":"string","minLength":2,"maxLength":4},
              "code":{"type":"string","pattern":"^[A-Z]{3}$"},
              "email":{"type":"string","format":"email"}},
              "required":["name"]}}}"#,
    ),
    // Composition and references.
    (
        "shape",
        r##"{"$defs":{"pos":{"type":"number","minimum":0}},
            "type":"object","properties":{"properties":{
              "oneOf":[
                {"type":"object","required":["r"],"properties":{"r":{"$ref":"#/$defs/pos"}}},
                {"type":"object","required":["w","h"],"properties":{"w":{"$ref":"#/$defs/pos"},"h":{"$ref":"#/$defs/pos"}}}],
              "not":{"required":["forbidden"]},
              "if":{"properties":{"kind":{"const":"circle"}},"required":["kind"]},
              "then":{"required":["r"]}}}}"##,
    ),
    // Arrays.
    (
        "cart",
        r#"{"type":"object","properties":{"properties":{"type":"object","properties":{
              "lines":{"type":"array","prefixItems":[{"type":"string"}],"items":{"type":"integer"},
                       "minItems":1,"contains":{"const":7},"maxContains":2},
              "set":{"type":"array","uniqueItems":true}}}}}"#,
    ),
];

/// Values that replace a field in the mutations.
const VALUES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "1",
    "1.0",
    "-1",
    "-0.5",
    "0.5",
    "1.5",
    "5",
    "10",
    "10.0",
    "1e2",
    "100",
    "101",
    "1000000",
    "1000000.0001",
    "9007199254740992",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "18446744073709551617",
    "123456789012345678901234567890",
    "\"\"",
    "\"a\"",
    "\"ab\"",
    "\"abcd\"",
    "\"abcde\"",
    "\"éé\"",
    "\"éééé\"",
    "\"ééééé\"",
    "\"😀😀\"",
    "\"😀😀😀😀\"",
    "\"😀😀😀😀😀\"",
    "\"ABC\"",
    "\"abc\"",
    "\"ABCD\"",
    "\"ord_0123abcd\"",
    "\"ord_0123ABCD\"",
    "\"EUR\"",
    "\"eur\"",
    "\"web\"",
    "\"circle\"",
    "\"x@y.z\"",
    "\"not an email\"",
    "[]",
    "[1]",
    "[1,1.0]",
    "[1,2]",
    "[\"a\",\"a\"]",
    "[\"a\",\"b\"]",
    "[\"a\",\"b\",\"c\",\"d\"]",
    "[\"s\",7]",
    "[\"s\",7,7,7]",
    "[\"s\",1,2]",
    "[7]",
    "{}",
    "{\"r\":1}",
    "{\"w\":1,\"h\":2}",
    "{\"r\":1,\"w\":1,\"h\":2}",
    "{\"r\":-1}",
];

/// Valid-looking bases per event type (their `properties`).
fn bases(event_type: &str) -> Vec<String> {
    match event_type {
        "checkout" => vec![
            r#"{"order_id":"ord_0123abcd","amount":12.5,"currency":"EUR","items":2,"coupon":null,"gift":false,"note":"hi","tags":["a","b"],"channel":"web","rank":10}"#.into(),
            r#"{"order_id":"ord_deadbeef","amount":1,"currency":"USD"}"#.into(),
        ],
        "metric" => vec![
            r#"{"count":1,"big":9007199254740992,"huge":18446744073709551616,"ratio":0.5,"neg":-1}"#.into(),
        ],
        "profile" => vec![r#"{"name":"ab","code":"ABC","email":"x@y.z"}"#.into()],
        "shape" => vec![
            r#"{"kind":"circle","r":1}"#.into(),
            r#"{"w":1,"h":2}"#.into(),
        ],
        "cart" => vec![r#"{"lines":["s",7,1],"set":[1,2]}"#.into()],
        _ => unreachable!(),
    }
}

/// The corpus: (event type, document) pairs.
fn corpus() -> Vec<(String, String)> {
    let mut documents = Vec::new();
    let envelope = |event_type: &str, properties: &str| {
        format!(
            r#"{{"user_id":"u","event_type":"{event_type}","event_time":1710000000000,"properties":{properties}}}"#
        )
    };
    for (event_type, _) in SCHEMAS {
        for base in bases(event_type) {
            documents.push((event_type.to_string(), envelope(event_type, &base)));
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&base).unwrap();
            let names: Vec<String> = object
                .keys()
                .cloned()
                .chain(["forbidden".to_string(), "extra".to_string()])
                .collect();
            for name in &names {
                // Removed.
                let mut without = object.clone();
                if without.remove(name).is_some() {
                    let text = serde_json::to_string(&without).unwrap();
                    documents.push((event_type.to_string(), envelope(event_type, &text)));
                }
                // Replaced (written by hand, to keep 1.0 and big numbers
                // exactly as sent).
                for value in VALUES {
                    let fields: Vec<String> = object
                        .iter()
                        .filter(|(key, _)| *key != name)
                        .map(|(key, value)| format!("\"{key}\":{value}"))
                        .chain(std::iter::once(format!("\"{name}\":{value}")))
                        .collect();
                    let text = format!("{{{}}}", fields.join(","));
                    documents.push((event_type.to_string(), envelope(event_type, &text)));
                }
            }
            // Not an object at all.
            for value in ["[]", "1", "\"x\"", "null"] {
                documents.push((event_type.to_string(), envelope(event_type, value)));
            }
        }
    }
    documents
}

#[test]
fn decisions_agree_with_python_jsonschema() {
    let (venv, _) = client_tools();
    let dir = TempDir::new("schema-corpus");
    for (event_type, schema) in SCHEMAS {
        dir.file(&format!("{event_type}.json"), schema);
    }
    let set = SchemaSet::load(&dir.0, false).expect("the schemas compile");
    let documents = corpus();
    let ours: Vec<bool> = documents
        .iter()
        .map(|(event_type, document)| set.check("t", event_type, document.as_bytes()).is_ok())
        .collect();
    let lines: Vec<String> = documents
        .iter()
        .map(|(event_type, document)| format!("{event_type}\t{document}"))
        .collect();
    let corpus_file = dir.file("corpus.tsv", &lines.join("\n"));
    let script = r#"
import json, sys, pathlib
from jsonschema import Draft202012Validator
directory = pathlib.Path(sys.argv[1])
validators = {}
for line in open(sys.argv[2], encoding="utf-8"):
    event_type, document = line.rstrip("\n").split("\t", 1)
    if event_type not in validators:
        schema = json.loads((directory / f"{event_type}.json").read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        validators[event_type] = Draft202012Validator(schema)
    print(1 if validators[event_type].is_valid(json.loads(document)) else 0)
"#;
    let output = output_within(
        Command::new(venv.join("bin/python"))
            .arg("-c")
            .arg(script)
            .arg(&dir.0)
            .arg(&corpus_file),
        Duration::from_secs(120),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: Vec<bool> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line == "1")
        .collect();
    assert_eq!(theirs.len(), documents.len());
    let disagreements: Vec<String> = documents
        .iter()
        .zip(ours.iter().zip(&theirs))
        .filter(|(_, (ours, theirs))| ours != theirs)
        .map(|((event_type, document), (ours, theirs))| {
            format!("{event_type}: sluice {ours}, python {theirs}: {document}")
        })
        .collect();
    let accepted = ours.iter().filter(|&&valid| valid).count();
    println!(
        "schema corpus: {} decisions compared ({accepted} accepted, {} refused), {} disagreements",
        documents.len(),
        documents.len() - accepted,
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
