//! JSON text written by hand into byte buffers: string literals with their
//! escaping. A leaf: it imports nothing of the crate, so the event records,
//! the error bodies and the HTTP answers share one escaper without any of
//! them knowing the others.

/// Appends `bytes` as a JSON string literal. Invalid UTF-8 becomes U+FFFD,
/// so the output is always valid JSON whatever the input.
pub fn write_json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        escape_str(out, chunk.valid());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

fn escape_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..index]);
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
        clean_from = index + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_always_valid() {
        let mut out = Vec::new();
        write_json_string(&mut out, b"a\"b\\c\n\x01\xff\xfez");
        let text = String::from_utf8(out).unwrap();
        let parsed: String = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, "a\"b\\c\n\u{1}\u{fffd}\u{fffd}z");
    }
}
