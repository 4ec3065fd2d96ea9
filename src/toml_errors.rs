//! TOML mistakes in an operator's words: one line with the file, line,
//! column and key (toml's own text is a multi-line caret diagram, which a
//! log line escapes into one unreadable string), serde's type names
//! ("expected usize") in plain words, and "did you mean" for unknown keys.
//! Shared by the configuration and the keys file.

/// A TOML error as one readable line: `FILE:LINE:COLUMN: what is wrong`
/// (toml's own text is a multi-line caret diagram, which a log line
/// escapes into one unreadable string).
pub fn toml_error(file: &str, text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{file}:{line}:{column}: {message}")
        }
        None => format!("{file}: {message}"),
    }
}

/// serde's wording for a wrong value ("invalid value: integer `-1`,
/// expected usize") in an operator's words, with a hint for an unknown key.
pub fn plain_serde_message(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((unknown, expected)) = rest.split_once("`, expected one of ") {
            let known: Vec<&str> = expected
                .split(", ")
                .map(|name| name.trim_matches('`'))
                .collect();
            let closest = known
                .iter()
                .map(|name| (edit_distance(unknown, name), *name))
                .min()
                .filter(|(distance, _)| *distance <= 3);
            return match closest {
                Some((_, name)) => format!("unknown key `{unknown}`: did you mean `{name}`?"),
                None => format!(
                    "unknown key `{unknown}`; the keys here are {}",
                    known.join(", ")
                ),
            };
        }
        if let Some((unknown, _)) = rest.split_once('`') {
            return format!("unknown key `{unknown}` (`sluice --help` lists every key)");
        }
    }
    let mut plain = message;
    for (serde, words) in [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a string in double quotes"),
        ("invalid value: integer", "the number"),
        ("invalid type: integer", "got the number"),
        ("invalid type: string", "got the string"),
        ("invalid type: boolean", "got"),
        ("invalid type: sequence", "got a list"),
    ] {
        plain = plain.replace(serde, words);
    }
    plain
}

/// Levenshtein distance, for "did you mean" (key and variable names only).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// A TOML error of a configuration or keys file, in one line:
/// `FILE:LINE:COLUMN: section.key: what is wrong, in plain words`.
pub fn located_error(name: &str, text: &str, error: &toml::de::Error) -> String {
    let located = toml_error(name, text, error);
    let (place, message) = located.split_once(": ").unwrap_or(("", &located));
    let message = plain_serde_message(message);
    match key_at(text, error.span().map_or(0, |span| span.start)) {
        Some(key)
            if !message.contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) =>
        {
            format!("{place}: {key}: {message}")
        }
        _ => format!("{place}: {message}"),
    }
}

/// The dotted key written on the line holding byte `offset` of a TOML
/// text (`server.cores`), from its `key =` and the `[section]` above it.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|line| line.strip_prefix('[')?.strip_suffix(']'));
    Some(match section {
        Some(section) => format!("{}.{key}", section.trim()),
        None => key.to_string(),
    })
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |start| start.chars().count())
        + 1;
    (line, column)
}
