//! Prometheus text exposition format 0.0.4: the writers every renderer
//! shares.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A Prometheus label value: backslash, double quote and newline escaped.
pub(super) fn label_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// Writes a metric's HELP and TYPE lines; its samples follow.
pub(super) fn write_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one unlabelled metric: its HELP and TYPE lines and its value.
pub(super) fn write_metric(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Writes a counter split by `result="ok"` and `result="error"`.
pub(super) fn write_by_result(out: &mut String, name: &str, help: &str, ok: u64, error: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{result=\"ok\"}} {ok}\n{name}{{result=\"error\"}} {error}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("plain"), "plain");
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
