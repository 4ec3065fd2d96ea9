//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): a request's
//! `traceparent` and `tracestate` headers checked and copied, as sent, into
//! a caller's buffer (a record carries them on). Nothing is allocated; an
//! invalid header is reported, never refused: a trace is the client's
//! business, its events are stored either way.

use std::ops::Range;

/// `traceparent` of version 00: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_V00_BYTES: usize = 55;
/// Longest `traceparent` copied: a later version may append fields after
/// the version-00 shape (the W3C text asks parsers to accept that).
pub const TRACEPARENT_BYTES_MAX: usize = 128;
/// Longest `tracestate` copied, its header lines joined with commas: the
/// W3C text asks vendors to propagate at least 512 characters, and lets
/// them drop what is longer.
pub const TRACESTATE_BYTES_MAX: usize = 512;
/// List members of a `tracestate` at most (W3C: 32; more is invalid).
pub const TRACESTATE_MEMBERS_MAX: usize = 32;

/// What was wrong with a request's trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// `traceparent` malformed, or sent more than once: neither header is
    /// copied.
    Traceparent,
    /// `tracestate` malformed or too long: `traceparent` alone is copied.
    Tracestate,
}

impl Invalid {
    /// The header's name, as a metric label.
    pub fn header(self) -> &'static str {
        match self {
            Invalid::Traceparent => "traceparent",
            Invalid::Tracestate => "tracestate",
        }
    }
}

/// Where the valid trace context was copied in the caller's buffer
/// (empty ranges: not copied), and what was found invalid.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copied {
    pub traceparent: Range<usize>,
    pub tracestate: Range<usize>,
    pub invalid: Option<Invalid>,
}

/// `tracestate` header lines looked at, at most (each holds a member or
/// more, and more than 32 members is invalid).
const TRACESTATE_LINES_MAX: usize = TRACESTATE_MEMBERS_MAX;

/// Copies the trace context of a complete, validated request head
/// (`head`: request line and header lines) to the end of `out`:
/// `traceparent` when it is valid, then `tracestate` (its lines joined
/// with `,`) when it is valid too. A `tracestate` without a `traceparent`
/// is ignored, as the W3C text says. One pass over the head's lines.
pub fn copy_trace_context(head: &[u8], out: &mut Vec<u8>) -> Copied {
    let mut copied = Copied::default();
    let mut parent: Option<&[u8]> = None;
    let mut parents = 0;
    let mut states: [&[u8]; TRACESTATE_LINES_MAX] = [&[]; TRACESTATE_LINES_MAX];
    let mut state_lines = 0;
    let mut too_many_states = false;
    for line in lines(head) {
        // Both names start with a `t`: most lines stop here.
        if !matches!(line.first(), Some(b't' | b'T')) {
            continue;
        }
        if let Some(value) = field_value(line, b"traceparent") {
            parents += 1;
            parent.get_or_insert(value);
        } else if let Some(value) = field_value(line, b"tracestate") {
            if value.is_empty() {
                continue;
            }
            match states.get_mut(state_lines) {
                Some(slot) => *slot = value,
                None => too_many_states = true,
            }
            state_lines += 1;
        }
    }
    let Some(parent) = parent else {
        return copied;
    };
    if parents > 1 || !is_valid_traceparent(parent) {
        copied.invalid = Some(Invalid::Traceparent);
        return copied;
    }
    let start = out.len();
    out.extend_from_slice(parent);
    copied.traceparent = start..out.len();
    let states = &states[..state_lines.min(TRACESTATE_LINES_MAX)];
    let joined =
        states.iter().map(|state| state.len()).sum::<usize>() + states.len().saturating_sub(1);
    if too_many_states || joined > TRACESTATE_BYTES_MAX {
        copied.invalid = Some(Invalid::Tracestate);
        return copied;
    }
    let state_start = out.len();
    for (index, state) in states.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(state);
    }
    if !is_valid_tracestate(&out[state_start..]) {
        out.truncate(state_start);
        copied.invalid = Some(Invalid::Tracestate);
        return copied;
    }
    copied.tracestate = state_start..out.len();
    copied
}

/// The header lines of a validated head (the request line skipped), each
/// without its line end.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = match memchr::memchr(b'\n', head) {
        Some(newline) => &head[newline + 1..],
        None => &[][..],
    };
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// The trimmed value of `line` when it is the field `name` (ASCII case
/// ignored; a validated field name has no whitespace before its colon).
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let value = line.get(name.len()..)?.strip_prefix(b":")?;
    line[..name.len()]
        .eq_ignore_ascii_case(name)
        .then(|| super::request::trim(value))
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte))
}

/// `version-traceid-parentid-flags`, lower-case hex: version `ff` is
/// invalid, a trace id or parent id of zeros is invalid; version 00 is
/// exactly 55 characters, a later version at least that with `-` after.
pub fn is_valid_traceparent(value: &[u8]) -> bool {
    if value.len() < TRACEPARENT_V00_BYTES || value.len() > TRACEPARENT_BYTES_MAX {
        return false;
    }
    let (version, trace_id, parent_id, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let fields_hex = is_lower_hex(version)
        && is_lower_hex(trace_id)
        && is_lower_hex(parent_id)
        && is_lower_hex(flags);
    let length_ok = match version {
        b"00" => value.len() == TRACEPARENT_V00_BYTES,
        _ => value.len() == TRACEPARENT_V00_BYTES || value[TRACEPARENT_V00_BYTES] == b'-',
    };
    dashes
        && fields_hex
        && version != b"ff"
        && length_ok
        && trace_id.iter().any(|&byte| byte != b'0')
        && parent_id.iter().any(|&byte| byte != b'0')
}

/// A `tracestate` list (RFC 9110 list of `key=value`, empty members and
/// optional whitespace allowed): at most [`TRACESTATE_MEMBERS_MAX`]
/// members, each key as the W3C grammar has it, no key twice.
pub fn is_valid_tracestate(list: &[u8]) -> bool {
    let mut keys: [&[u8]; TRACESTATE_MEMBERS_MAX] = [&[]; TRACESTATE_MEMBERS_MAX];
    let mut members = 0;
    for member in list.split(|&byte| byte == b',') {
        let member = trim_whitespace(member);
        if member.is_empty() {
            continue;
        }
        let Some(equals) = member.iter().position(|&byte| byte == b'=') else {
            return false;
        };
        let (key, value) = (&member[..equals], &member[equals + 1..]);
        if members == TRACESTATE_MEMBERS_MAX
            || !is_valid_key(key)
            || !is_valid_value(value)
            || keys[..members].contains(&key)
        {
            return false;
        }
        keys[members] = key;
        members += 1;
    }
    true
}

fn trim_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&byte| byte != b' ' && byte != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&byte| byte != b' ' && byte != b'\t')
        .map_or(start, |last| last + 1);
    &bytes[start..end]
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` (a lower-case letter, then up to 255 key bytes) or
/// `tenant-id@system-id` (a letter or digit then up to 240; a letter
/// then up to 13).
fn is_valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&byte| byte == b'@') {
        None => {
            key.len() <= 256
                && key.first().is_some_and(u8::is_ascii_lowercase)
                && key.iter().all(|&byte| is_key_byte(byte))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
                && tenant.iter().all(|&byte| is_key_byte(byte))
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system.iter().all(|&byte| is_key_byte(byte))
        }
    }
}

/// 1 to 256 printable characters but `,` and `=`, spaces allowed except
/// last (the member was trimmed, so not first either).
fn is_valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&byte| (0x20..=0x7e).contains(&byte) && byte != b',' && byte != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn copy(headers: &str) -> (Copied, Vec<u8>) {
        let head = format!("POST /v1/events HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let mut out = b"prefix".to_vec();
        let copied = copy_trace_context(head.as_bytes(), &mut out);
        (copied, out)
    }

    fn text(out: &[u8], range: &Range<usize>) -> String {
        String::from_utf8(out[range.clone()].to_vec()).unwrap()
    }

    #[test]
    fn a_valid_context_is_copied_as_sent() {
        let (copied, out) = copy(&format!(
            "traceparent: {PARENT}\r\nTraceState: congo=t61rcWkgMzE, rojo=00f067aa0ba902b7\r\ntracestate: a@b=x y\r\n"
        ));
        assert_eq!(copied.invalid, None);
        assert_eq!(text(&out, &copied.traceparent), PARENT);
        assert_eq!(
            text(&out, &copied.tracestate),
            "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,a@b=x y"
        );
        assert!(out.starts_with(b"prefix"), "appended, not overwritten");
    }

    #[test]
    fn no_traceparent_copies_nothing_and_is_not_counted() {
        let (copied, out) = copy("tracestate: congo=t61rcWkgMzE\r\n");
        assert_eq!(copied, Copied::default());
        assert_eq!(out, b"prefix");
    }

    #[test]
    fn invalid_traceparents_are_ignored_and_reported() {
        let zeros_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zeros_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let upper = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let version_ff = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let long_00 = format!("{PARENT}-00");
        let short = &PARENT[..54];
        let no_dash = PARENT.replacen('-', "_", 1);
        for bad in [
            zeros_trace,
            zeros_parent,
            upper,
            version_ff,
            &long_00,
            short,
            &no_dash,
            "",
        ] {
            let (copied, out) = copy(&format!("traceparent: {bad}\r\ntracestate: a=b\r\n"));
            assert_eq!(copied.invalid, Some(Invalid::Traceparent), "{bad:?}");
            assert!(copied.traceparent.is_empty() && copied.tracestate.is_empty());
            assert_eq!(out, b"prefix", "{bad:?}");
        }
        // Twice, even the same value: which one holds is unknowable.
        let (copied, _) = copy(&format!(
            "traceparent: {PARENT}\r\ntraceparent: {PARENT}\r\n"
        ));
        assert_eq!(copied.invalid, Some(Invalid::Traceparent));
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let (copied, out) = copy(&format!("traceparent: {later}\r\n"));
        assert_eq!(
            (copied.invalid, text(&out, &copied.traceparent)),
            (None, later.into())
        );
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert!(!is_valid_traceparent(glued.as_bytes()));
    }

    #[test]
    fn an_invalid_tracestate_drops_only_itself() {
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let long = format!("a={}", "x".repeat(TRACESTATE_BYTES_MAX));
        for bad in [
            "Upper=1".to_string(),
            "novalue".into(),
            "k=a,b".into(),
            "k=v,k=w".into(),
            "k=tab\tinside".into(),
            "1abc=v".into(),
            format!("{}@sys=v", "t".repeat(242)),
            "t@toolongsystemid=v".into(),
            many.join(","),
            long,
        ] {
            let (copied, out) = copy(&format!("traceparent: {PARENT}\r\ntracestate: {bad}\r\n"));
            assert_eq!(copied.invalid, Some(Invalid::Tracestate), "{bad:?}");
            assert_eq!(text(&out, &copied.traceparent), PARENT);
            assert!(copied.tracestate.is_empty(), "{bad:?}");
            assert_eq!(out.len(), b"prefix".len() + PARENT.len(), "{bad:?}");
        }
        // 33 members over 33 header lines: too many, however sent.
        let lines: String = (0..33).map(|i| format!("tracestate: k{i}=v\r\n")).collect();
        let (copied, _) = copy(&format!("traceparent: {PARENT}\r\n{lines}"));
        assert_eq!(copied.invalid, Some(Invalid::Tracestate));
        // 32 members and empty ones between them are fine.
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        let list = format!("{}, ,", members.join(" ,"));
        let (copied, _) = copy(&format!("traceparent: {PARENT}\r\ntracestate: {list}\r\n"));
        assert_eq!(copied.invalid, None);
        assert!(!copied.tracestate.is_empty());
    }
}
