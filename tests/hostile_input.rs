//! Hostile input, table-driven: malformed and smuggling-shaped HTTP, hostile
//! JSON, every JSON type in every schema field, and a gzip bomb. Each gets a
//! clear status (the connection closed where the framing is unknown), the
//! process stays up, and the next client is served.
//! Runs with `--dev`: nothing here reaches Kafka.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::*;

/// How a hostile request must be answered.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// Whether the server must close the connection after answering.
    closes: bool,
}

fn post(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\n{headers}\r\n{body}"
    )
    .into_bytes()
}

fn case(name: &'static str, request: Vec<u8>, status: u16, closes: bool) -> Case {
    Case {
        name,
        request,
        status,
        closes,
    }
}

fn http_cases() -> Vec<Case> {
    let event = event("hostile_http", "");
    let chunked = |chunks: &str| post("Transfer-Encoding: chunked\r\n", chunks);
    let one_chunk = format!("{:x}\r\n{event}\r\n0\r\n\r\n", event.len());
    vec![
        // Accepted shapes, so the table also proves the server is not merely refusing everything.
        case(
            "plain Content-Length",
            post(&format!("Content-Length: {}\r\n", event.len()), &event),
            202,
            false,
        ),
        case("chunked", chunked(&one_chunk), 202, false),
        case(
            "chunked, upper-case coding",
            post("Transfer-Encoding: CHUNKED\r\n", &one_chunk),
            202,
            false,
        ),
        case(
            "chunk extension",
            chunked(&format!(
                "{:x};name=value\r\n{event}\r\n0\r\n\r\n",
                event.len()
            )),
            202,
            false,
        ),
        case(
            "trailer fields",
            chunked(&format!(
                "{:x}\r\n{event}\r\n0\r\nX-Checksum: abc\r\n\r\n",
                event.len()
            )),
            202,
            false,
        ),
        // Request smuggling: CL.TE, TE.CL, TE.TE.
        case(
            "CL.TE",
            post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        case(
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        case(
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "TE identity, chunked",
            post("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "TE gzip",
            post("Transfer-Encoding: gzip\r\n", ""),
            400,
            true,
        ),
        case(
            "TE twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        case(
            "TE chunked then TE x",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
                "0\r\n\r\n",
            ),
            400,
            true,
        ),
        case(
            "TE with vertical tab",
            post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "TE obs-fold",
            post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "space before colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "space before colon in CL",
            post("Content-Length : 2\r\n", "{}"),
            400,
            true,
        ),
        case(
            "TE in HTTP/1.0",
            b"POST /v1/events HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
            true,
        ),
        // Content-Length shapes.
        case(
            "duplicate CL, different",
            post("Content-Length: 4\r\nContent-Length: 5\r\n", "abcd"),
            400,
            true,
        ),
        case(
            "duplicate CL, same",
            post("Content-Length: 4\r\nContent-Length: 4\r\n", "abcd"),
            400,
            true,
        ),
        case(
            "CL list",
            post("Content-Length: 4, 4\r\n", "abcd"),
            400,
            true,
        ),
        case("negative CL", post("Content-Length: -4\r\n", ""), 400, true),
        case(
            "CL with plus sign",
            post("Content-Length: +4\r\n", "abcd"),
            400,
            true,
        ),
        case("hex CL", post("Content-Length: 0x4\r\n", "abcd"), 400, true),
        case(
            "CL with inner space",
            post("Content-Length: 4 4\r\n", ""),
            400,
            true,
        ),
        case(
            "CL beyond u64",
            post("Content-Length: 99999999999999999999999\r\n", ""),
            400,
            true,
        ),
        case(
            "huge CL",
            post("Content-Length: 9999999999999999999\r\n", ""),
            413,
            true,
        ),
        case("POST without length", post("", ""), 411, true),
        // Line endings and bytes.
        case(
            "bare LF head",
            b"POST /v1/events HTTP/1.1\nHost: t\nContent-Length: 0\n\n".to_vec(),
            400,
            true,
        ),
        case(
            "bare CR in head",
            b"GET /healthz HTTP/1.1\rHost: t\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "NUL in header name",
            b"GET /healthz HTTP/1.1\r\nHo\0st: t\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "NUL in header value",
            b"GET /healthz HTTP/1.1\r\nHost: t\0x\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "NUL in target",
            b"GET /heal\0thz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "header without colon",
            b"GET /healthz HTTP/1.1\r\nHost t\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "empty header name",
            b"GET /healthz HTTP/1.1\r\n: t\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "space in method",
            b"GE T /healthz HTTP/1.1\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "HTTP/2.0 version",
            b"GET /healthz HTTP/2.0\r\n\r\n".to_vec(),
            400,
            true,
        ),
        case(
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
            true,
        ),
        // Chunked framing.
        case(
            "chunk size not hex",
            chunked("zz\r\nab\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "negative chunk size",
            chunked("-1\r\nab\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "chunk size too long",
            chunked("000000000000000000001\r\na\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "space before chunk size",
            chunked(" 2\r\nab\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case(
            "chunk longer than its size",
            chunked("3\r\nabcdef\r\n0\r\n\r\n"),
            400,
            true,
        ),
        case("bare LF in chunks", chunked("3\nabc\n0\n\n"), 400, true),
        case(
            "chunk over the body limit",
            chunked("fffffffffffff\r\n"),
            413,
            true,
        ),
        case(
            "over-long trailer line",
            chunked(&format!("0\r\nX-Pad: {}\r\n\r\n", "p".repeat(2_000))),
            400,
            true,
        ),
        case(
            "trailers over the limit",
            chunked(&format!(
                "0\r\n{}\r\n",
                "X-Pad: pppppppppppppppppppp\r\n".repeat(1_000)
            )),
            431,
            true,
        ),
        // Sizes.
        case(
            "over-long request line",
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            431,
            true,
        ),
        case(
            "over-long header",
            format!(
                "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(20_000)
            )
            .into_bytes(),
            431,
            true,
        ),
        case(
            "too many headers",
            format!("GET /healthz HTTP/1.1\r\n{}\r\n", "X-H: v\r\n".repeat(100)).into_bytes(),
            431,
            true,
        ),
    ]
}

#[test]
fn hostile_http_gets_its_status_and_harms_no_one() {
    let mut sluice = Sluice::dev("");
    answers_each_case(&mut sluice, http_cases());
}

/// Chunk lines past the size, parsed by RFC 9112 section 7.1: a chunk
/// extension is `*( BWS ";" BWS token [ BWS "=" BWS ( token /
/// quoted-string ) ] )` and a trailer line is a field line; anything else
/// (a request line as a trailer, NUL, an open quote, whitespace that no
/// extension follows) is a 400 and the connection is closed, so a proxy
/// that reads those bytes another way cannot make them a second request.
#[test]
fn chunk_extensions_and_trailers_follow_the_grammar() {
    let event = event("hostile_chunk", "");
    let size = event.len();
    let chunked = |line_rest: &str, trailers: &str| {
        post(
            "Transfer-Encoding: chunked\r\n",
            &format!("{size:x}{line_rest}\r\n{event}\r\n0\r\n{trailers}\r\n"),
        )
    };
    let mut sluice = Sluice::dev("");
    answers_each_case(
        &mut sluice,
        vec![
            case(
                "extension, BWS before ';' and around '='",
                chunked(" ;a = b\t;c", ""),
                202,
                false,
            ),
            case(
                "extension, quoted value with ';' and an escaped quote",
                chunked(";a=\"x; \\\"y\"", ""),
                202,
                false,
            ),
            case(
                "trailer with an empty value",
                chunked("", "X-Empty:\r\n"),
                202,
                false,
            ),
            case(
                "trailer line that is a request line",
                chunked("", "GET /readyz HTTP/1.1\r\n"),
                400,
                true,
            ),
            case(
                "trailer line without a colon",
                chunked("", "X-Checksum abc\r\n"),
                400,
                true,
            ),
            case(
                "NUL in a trailer value",
                chunked("", "X-A: a\0b\r\n"),
                400,
                true,
            ),
            case(
                "NUL in a trailer name",
                chunked("", "X-\0A: ab\r\n"),
                400,
                true,
            ),
            case(
                "whitespace before a trailer's colon",
                chunked("", "X-A : b\r\n"),
                400,
                true,
            ),
            case(
                "folded trailer line",
                chunked("", "X-A: b\r\n c\r\n"),
                400,
                true,
            ),
            case("NUL in a chunk extension", chunked(";a\0=b", ""), 400, true),
            case(
                "NUL in a quoted extension",
                chunked(";a=\"\0\"", ""),
                400,
                true,
            ),
            case(
                "unterminated quoted extension",
                chunked(";a=\"b", ""),
                400,
                true,
            ),
            case(
                "whitespace after the chunk size",
                chunked(" ", ""),
                400,
                true,
            ),
            case(
                "whitespace after an extension",
                chunked(";a=b ", ""),
                400,
                true,
            ),
            case("extension without a name", chunked(";", ""), 400, true),
            case("extension without a value", chunked(";a=", ""), 400, true),
            case(
                "whitespace after the last chunk's size",
                post(
                    "Transfer-Encoding: chunked\r\n",
                    &format!("{size:x}\r\n{event}\r\n0 \r\n\r\n"),
                ),
                400,
                true,
            ),
        ],
    );
}

/// Sends each case on a connection of its own and checks its answer, that
/// the connection is closed or still serves, and that the server lives.
/// Every case is tried; the failures are reported together.
fn answers_each_case(sluice: &mut Sluice, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let mut stream = sluice.connect();
        stream.write_all(&case.request).unwrap();
        let Some(response) = read_response(&mut stream) else {
            failures.push(format!("{}: no response", case.name));
            continue;
        };
        if response.status != case.status {
            failures.push(format!(
                "{}: {} (expected {}): {}",
                case.name,
                response.status,
                case.status,
                response.text()
            ));
            continue;
        }
        if case.status >= 400 && response.code().is_empty() {
            failures.push(format!("{}: no error code", case.name));
        }
        if case.closes {
            if response.header("Connection") != Some("close") {
                failures.push(format!("{}: no Connection: close", case.name));
            }
            if !is_closed(&mut stream, Duration::from_secs(2)) {
                failures.push(format!("{}: left open", case.name));
            }
        } else {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let next = read_response(&mut stream).map(|r| r.status);
            if next != Some(200) {
                failures.push(format!("{}: next request: {next:?}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(sluice.wait_exit(Duration::ZERO), None, "the server died");
    assert_eq!(sluice.get("/healthz").status, 200);
}

/// Two members of one name in one object, at any depth (I-JSON, RFC
/// 7493): parsers disagree on which one wins, so a consumer could read a
/// value no contract checked. Each is a 400 `invalid_event` whose `field`
/// is the duplicate's JSON Pointer; in a batch only that element is
/// rejected; Segment calls get the same check.
#[test]
fn duplicate_member_names_are_refused_at_any_depth() {
    let sluice = Sluice::dev("");
    let mut failures = Vec::new();
    for (name, extra, field) in [
        (
            "in properties",
            r#","properties":{"plan":"gold","plan":"pro"}"#,
            "/properties/plan",
        ),
        (
            "deep in properties",
            r#","properties":{"a":[0,{"b":{"c":1,"d":2,"c":3}}]}"#,
            "/properties/a/1/b/c",
        ),
        (
            "an unknown top-level field",
            r#","context":{"ip":"1.2.3.4"},"context":{}"#,
            "/context",
        ),
        (
            "inside an unknown field",
            r#","extra":{"x~y/z":1,"x~y/z":2}"#,
            "/extra/x~0y~1z",
        ),
        (
            "one name escaped, one not",
            r#","properties":{"plan":"gold","pl\u0061n":"pro"}"#,
            "/properties/plan",
        ),
    ] {
        let response = sluice.post_json("/v1/events", &event("dup", extra));
        failures.extend(unexpected(name, &response, 400, Some(field)));
    }
    // Not duplicates: one name in different objects, names that differ by case.
    let response = sluice.post_json(
        "/v1/events",
        &event(
            "dup",
            r#","properties":{"plan":"gold","Plan":"pro","nested":{"plan":1},"list":[{"plan":1},{"plan":2}]}"#,
        ),
    );
    failures.extend(unexpected("distinct names", &response, 202, None));
    // A batch: the element with the duplicate alone is rejected.
    let batch = format!(
        r#"{{"events":[{},{}]}}"#,
        event("dup_ok", ""),
        event("dup_bad", r#","properties":{"plan":"gold","plan":"pro"}"#)
    );
    let response = sluice.post_json("/v1/events/batch", &batch);
    let json = response.json();
    let rejected = &json["rejected"][0];
    if (
        response.status,
        &json["accepted"],
        &rejected["index"],
        &rejected["code"],
        &rejected["field"],
    ) != (
        202,
        &serde_json::json!(1),
        &serde_json::json!(1),
        &serde_json::json!("invalid_event"),
        &serde_json::json!("/properties/plan"),
    ) {
        failures.push(format!("batch: {} {json}", response.status));
    }
    // A Segment call goes through the same validator.
    let auth = format!("Basic {}", base64_of(format!("{KEY}:").as_bytes()));
    let response = sluice.post(
        "/v1/track",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"userId":"dup","event":"Bought","properties":{"plan":"gold","plan":"pro"}}"#,
    );
    failures.extend(unexpected(
        "Segment track call",
        &response,
        400,
        Some("/properties/plan"),
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What is wrong with `response` when it should have `status` and, for a
/// refusal, code `invalid_event` naming `field`; `None` when nothing is.
fn unexpected(name: &str, response: &Response, status: u16, field: Option<&str>) -> Option<String> {
    let json = response.json();
    let found = (
        response.status,
        json["error"]["code"].as_str().map(str::to_string),
        json["error"]["field"].as_str().map(str::to_string),
    );
    let wanted = (
        status,
        field.map(|_| "invalid_event".to_string()),
        field.map(str::to_string),
    );
    (found != wanted).then(|| format!("{name}: {found:?}, expected {wanted:?}: {json}"))
}

/// Hostile JSON bodies for `/v1/events`: each is a 400 with a code.
fn json_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let valid = |extra: &str| event("hostile_json", extra).into_bytes();
    // `properties` nested `depth` objects deep (it counts as level 1).
    let deep = |depth: usize| {
        valid(&format!(
            r#","properties":{}{{}}{}"#,
            r#"{"a":"#.repeat(depth - 1),
            "}".repeat(depth - 1)
        ))
    };
    vec![
        ("properties one level too deep", deep(17), "invalid_event"),
        ("very deep properties", deep(50_000), "invalid_json"),
        (
            "deep array",
            format!(
                r#"{{"user_id":"u","event_type":"t","x":{}{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
            "invalid_json",
        ),
        (
            "huge exponent",
            valid(r#","properties":{"n":1e999999}"#),
            "invalid_json",
        ),
        (
            "huge integer",
            valid(&format!(r#","properties":{{"n":{}}}"#, "9".repeat(5_000))),
            "invalid_json",
        ),
        (
            // Valid JSON (read as a double), but no time in milliseconds.
            "huge event_time",
            br#"{"user_id":"u","event_type":"t","event_time":99999999999999999999999}"#.to_vec(),
            "invalid_event",
        ),
        ("NaN", valid(r#","properties":{"n":NaN}"#), "invalid_json"),
        (
            "invalid UTF-8 in a string",
            b"{\"user_id\":\"u\xff\xfe\",\"event_type\":\"t\"}".to_vec(),
            "invalid_json",
        ),
        (
            "invalid UTF-8 in a key",
            b"{\"user_id\":\"u\",\"event_type\":\"t\",\"\xc0\xaf\":1}".to_vec(),
            "invalid_json",
        ),
        (
            "overlong UTF-8",
            b"{\"user_id\":\"\xe0\x80\xaf\",\"event_type\":\"t\"}".to_vec(),
            "invalid_json",
        ),
        (
            "lone high surrogate",
            br#"{"user_id":"\ud800","event_type":"t"}"#.to_vec(),
            "invalid_json",
        ),
        (
            "lone low surrogate",
            br#"{"user_id":"\udc00x","event_type":"t"}"#.to_vec(),
            "invalid_json",
        ),
        (
            "bad escape",
            br#"{"user_id":"\x41","event_type":"t"}"#.to_vec(),
            "invalid_json",
        ),
        (
            "raw control character",
            b"{\"user_id\":\"a\x01b\",\"event_type\":\"t\"}".to_vec(),
            "invalid_json",
        ),
        (
            "duplicate user_id",
            br#"{"user_id":"a","user_id":"b","event_type":"t"}"#.to_vec(),
            "invalid_event",
        ),
        (
            "duplicate event_type",
            br#"{"user_id":"a","event_type":"t","event_type":"u"}"#.to_vec(),
            "invalid_event",
        ),
        (
            "trailing garbage",
            valid(" garbage")
                .iter()
                .chain(b"}")
                .copied()
                .collect::<Vec<u8>>(),
            "invalid_json",
        ),
        (
            "second value",
            [valid(""), b" {}".to_vec()].concat(),
            "invalid_json",
        ),
        (
            "trailing comma",
            br#"{"user_id":"u","event_type":"t",}"#.to_vec(),
            "invalid_json",
        ),
        (
            "single quotes",
            br#"{'user_id':'u','event_type':'t'}"#.to_vec(),
            "invalid_json",
        ),
        (
            "comment",
            br#"{"user_id":"u", /* c */ "event_type":"t"}"#.to_vec(),
            "invalid_json",
        ),
        (
            "unterminated string",
            br#"{"user_id":"u,"event_type":"t"}"#.to_vec(),
            "invalid_json",
        ),
        (
            "truncated",
            br#"{"user_id":"u","event_type":"#.to_vec(),
            "invalid_json",
        ),
        ("empty body", Vec::new(), "invalid_json"),
        (
            "BOM",
            [b"\xef\xbb\xbf".to_vec(), valid("")].concat(),
            "invalid_json",
        ),
        (
            "array instead of object",
            b"[1,2,3]".to_vec(),
            "invalid_event",
        ),
        ("bare string", b"\"event\"".to_vec(), "invalid_event"),
        ("null", b"null".to_vec(), "invalid_event"),
        (
            "reserved tenant_id",
            valid(r#","tenant_id":"other""#),
            "reserved_field",
        ),
    ]
}

#[test]
fn hostile_json_gets_a_clear_400() {
    let mut sluice = Sluice::dev("");
    for (name, body, code) in json_cases() {
        let response = sluice.post(
            "/v1/events",
            &[("X-CS-API-Key", KEY), ("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(
            (response.status, response.code().as_str()),
            (400, code),
            "{name}: {}",
            response.text()
        );
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{name}: no message");
    }
    assert_eq!(sluice.wait_exit(Duration::ZERO), None, "the server died");
    assert_eq!(sluice.get("/healthz").status, 200);
}

/// Every JSON type in every schema field: exactly the declared type (and
/// for strings, a valid value) is accepted; everything else is a 400 that
/// names the field.
#[test]
fn every_json_type_in_every_field() {
    let mut sluice = Sluice::dev("");
    let now = now_ms();
    let types: [(&str, String); 9] = [
        ("null", "null".into()),
        ("true", "true".into()),
        ("zero", "0".into()),
        ("integer", now.to_string()),
        ("float", "1.5".into()),
        ("negative", "-7".into()),
        ("string", r#""s""#.into()),
        ("array", "[]".into()),
        ("object", "{}".into()),
    ];
    // The field, and the type names it accepts.
    let fields: [(&str, &[&str]); 7] = [
        ("user_id", &["string"]),
        ("event_type", &["string"]),
        ("event_time", &["integer"]),
        ("event_id", &[]),
        ("experiment_id", &["string"]),
        ("variant", &["string"]),
        ("properties", &["object"]),
    ];
    for (field, accepted) in fields {
        for (type_name, value) in &types {
            let mut members = vec![
                ("user_id", r#""u""#.to_string()),
                ("event_type", r#""t""#.to_string()),
                ("event_time", now.to_string()),
            ];
            members.retain(|(name, _)| *name != field);
            members.push((field, value.clone()));
            let body = format!(
                "{{{}}}",
                members
                    .iter()
                    .map(|(name, value)| format!("\"{name}\":{value}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let response = sluice.post_json("/v1/events", &body);
            if accepted.contains(type_name) {
                assert_eq!(
                    response.status,
                    202,
                    "{field} = {value}: {}",
                    response.text()
                );
            } else {
                assert_eq!(
                    response.status,
                    400,
                    "{field} = {value}: {}",
                    response.text()
                );
                let error = &response.json()["error"];
                assert_eq!(error["code"], "invalid_event", "{field} = {value}");
                assert_eq!(error["field"], field, "{field} = {value}: {error}");
            }
        }
    }
    assert_eq!(sluice.wait_exit(Duration::ZERO), None, "the server died");
}

/// 1 GiB of zeros, gzipped (about 1 MiB on the wire): refused with 413 as
/// soon as the inflated bytes pass the cap, without inflating the rest.
#[test]
fn a_gzip_bomb_gets_413_fast_with_bounded_memory() {
    const INFLATED: usize = 1 << 30;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..INFLATED / zeros.len() {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 4 << 20, "bomb is {} bytes", bomb.len());

    let sluice = Sluice::dev("");
    let send = || {
        let started = Instant::now();
        let response = sluice.post(
            "/v1/events",
            &[
                ("X-CS-API-Key", KEY),
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
            ],
            &bomb,
        );
        (response, started.elapsed(), rss_bytes(sluice.pid()))
    };
    let rss_before = rss_bytes(sluice.pid());
    let mut rss_seen = Vec::new();
    for attempt in 0..5 {
        let (response, elapsed, rss) = send();
        eprintln!(
            "gzip bomb {attempt}: {} bytes on the wire, answered {} in {elapsed:?}, rss {} -> {} KiB",
            bomb.len(),
            response.status,
            rss_before / 1024,
            rss / 1024
        );
        assert_eq!(response.status, 413, "{}", response.text());
        assert_eq!(response.code(), "payload_too_large");
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        rss_seen.push(rss);
        // Bounded by the 16 MiB cap, not by the 1 GiB the bomb holds: the
        // inflated buffer and its growth steps (freed, kept by the
        // allocator for reuse) come to about 4.5 times the cap here.
        assert!(rss < rss_before + (96 << 20), "rss {rss_before} -> {rss}");
    }
    // And reused: after the first few, more bombs add nothing.
    assert!(
        rss_seen[4] < rss_seen[2] + (4 << 20),
        "rss keeps growing: {rss_seen:?}"
    );
    assert_eq!(sluice.get("/healthz").status, 200);
}
