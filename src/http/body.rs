//! Chunked transfer decoding (RFC 9112 section 7.1), in place.
//!
//! The decoder compacts chunk data toward the start of the body region of
//! the connection's read buffer, so a chunked body needs no second buffer:
//! decoded bytes are always written at or before the bytes being read.
//! [`ChunkedDecoder::compact`] drops the framing already read, so the buffer
//! holds the decoded body plus one read's worth, never the raw stream; and
//! the raw bytes of one body are bounded (framing included), so a stream of
//! tiny chunks with long extensions cannot keep the server reading.

use super::FramingError;

/// Hex digits accepted in a chunk size; 15 keep any size below 2^60.
const CHUNK_SIZE_DIGITS_MAX: usize = 15;
/// Bytes accepted in one chunk-size line including extensions.
const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Chunk framing (size lines, extensions, CRLFs) accepted per body on top of
/// its decoded bytes and trailers. A client sending 8 KiB chunks uses about
/// 1 KiB of framing per MiB; 64 KiB leaves room for small chunks, not for
/// a stream of extensions.
pub const CHUNK_FRAMING_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// Copying chunk data; this many bytes remain.
    Data(usize),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailer,
    Done,
}

/// Incremental in-place chunked decoder over `buffer[start..]`.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Next undecoded byte.
    read: usize,
    /// End of the decoded bytes (decoded body is `start..write`).
    write: usize,
    start: usize,
    body_bytes_max: usize,
    trailer_bytes: usize,
    trailer_bytes_max: usize,
    /// Framing bytes removed from the buffer by [`Self::compact`].
    compacted: usize,
    /// Raw bytes (data, framing, trailers) one body may occupy on the wire.
    wire_bytes_max: usize,
}

/// Progress after feeding the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The body is complete: decoded bytes are `start..end`, and the encoded
    /// body ended at `consumed` (the next request starts there).
    Done { end: usize, consumed: usize },
    /// More bytes are needed.
    NeedMore,
}

impl ChunkedDecoder {
    /// A decoder for a chunked body starting at `start`.
    pub fn new(start: usize, body_bytes_max: usize, trailer_bytes_max: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            read: start,
            write: start,
            start,
            body_bytes_max,
            trailer_bytes: 0,
            trailer_bytes_max,
            compacted: 0,
            wire_bytes_max: body_bytes_max
                .saturating_add(CHUNK_FRAMING_BYTES_MAX)
                .saturating_add(trailer_bytes_max),
        }
    }

    /// The most raw bytes one chunked body may take on the wire.
    pub fn wire_bytes_max(&self) -> usize {
        self.wire_bytes_max
    }

    /// Drops the framing bytes already decoded, moving the undecoded rest
    /// down to the end of the decoded body. Call between [`Self::decode`]
    /// calls that returned `NeedMore`, before reading more.
    pub fn compact(&mut self, buffer: &mut Vec<u8>) {
        if self.read > self.write {
            buffer.drain(self.write..self.read);
            self.compacted += self.read - self.write;
            self.read = self.write;
        }
    }

    /// `NeedMore`, unless the raw bytes received for this body already
    /// exceed [`Self::wire_bytes_max`].
    fn need_more(&self, buffer: &[u8]) -> Result<Progress, FramingError> {
        let wire_bytes = self.compacted + (buffer.len() - self.start);
        if wire_bytes > self.wire_bytes_max {
            return Err(FramingError::WireTooLarge {
                limit_bytes: self.wire_bytes_max,
            });
        }
        Ok(Progress::NeedMore)
    }

    /// Decodes as far as `buffer` allows. `buffer` grows between calls; the
    /// bytes before `read` are never looked at again.
    pub fn decode(&mut self, buffer: &mut [u8]) -> Result<Progress, FramingError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line_end) = find_crlf(buffer, self.read, CHUNK_LINE_BYTES_MAX)? else {
                        return self.need_more(buffer);
                    };
                    let size = parse_chunk_size(&buffer[self.read..line_end])?;
                    self.read = line_end + 2;
                    if size == 0 {
                        self.state = State::Trailer;
                    } else {
                        let decoded = self.write - self.start;
                        if decoded.saturating_add(size) > self.body_bytes_max {
                            return Err(FramingError::BodyTooLarge {
                                limit_bytes: self.body_bytes_max,
                            });
                        }
                        self.state = State::Data(size);
                    }
                }
                State::Data(remaining) => {
                    let available = buffer.len() - self.read;
                    if available == 0 {
                        return self.need_more(buffer);
                    }
                    let take = available.min(remaining);
                    buffer.copy_within(self.read..self.read + take, self.write);
                    self.read += take;
                    self.write += take;
                    self.state = if take == remaining {
                        State::DataEnd
                    } else {
                        State::Data(remaining - take)
                    };
                }
                State::DataEnd => {
                    if buffer.len() - self.read < 2 {
                        return self.need_more(buffer);
                    }
                    if &buffer[self.read..self.read + 2] != b"\r\n" {
                        return Err(FramingError::BadChunk("chunk data not followed by CRLF"));
                    }
                    self.read += 2;
                    self.state = State::Size;
                }
                State::Trailer => {
                    let Some(line_end) = find_crlf(buffer, self.read, CHUNK_LINE_BYTES_MAX)? else {
                        return self.need_more(buffer);
                    };
                    let line_bytes = line_end - self.read;
                    self.trailer_bytes += line_bytes + 2;
                    if self.trailer_bytes > self.trailer_bytes_max {
                        return Err(FramingError::HeadTooLarge {
                            limit_bytes: self.trailer_bytes_max,
                        });
                    }
                    if line_bytes == 0 {
                        self.state = State::Done;
                    } else {
                        check_trailer_line(&buffer[self.read..line_end])?;
                    }
                    self.read = line_end + 2;
                }
                State::Done => {
                    return Ok(Progress::Done {
                        end: self.write,
                        consumed: self.read,
                    })
                }
            }
        }
    }
}

/// Finds the CRLF ending the line that starts at `from`. A bare LF or CR, or
/// a line longer than `line_bytes_max`, is an error.
fn find_crlf(
    buffer: &[u8],
    from: usize,
    line_bytes_max: usize,
) -> Result<Option<usize>, FramingError> {
    let window = &buffer[from..];
    let limit = window.len().min(line_bytes_max + 1);
    for (index, &byte) in window[..limit].iter().enumerate() {
        match byte {
            b'\r' => {
                return match window.get(index + 1) {
                    Some(b'\n') => Ok(Some(from + index)),
                    Some(_) => Err(FramingError::BadChunk("bare CR in chunked framing")),
                    None => Ok(None),
                }
            }
            b'\n' => return Err(FramingError::BadChunk("bare LF in chunked framing")),
            _ => {}
        }
    }
    if window.len() > line_bytes_max {
        return Err(FramingError::BadChunk("chunk line too long"));
    }
    Ok(None)
}

/// A chunk-size line: `chunk-size [ chunk-ext ]` (RFC 9112 section 7.1).
/// The size is hex digits from the first byte; what follows must be chunk
/// extensions, checked by [`check_chunk_extensions`] and then ignored.
fn parse_chunk_size(line: &[u8]) -> Result<usize, FramingError> {
    if line
        .first()
        .is_some_and(|&byte| byte == b' ' || byte == b'\t')
    {
        return Err(FramingError::BadChunk("whitespace before the chunk size"));
    }
    let digits_end = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let digits = &line[..digits_end];
    if digits.is_empty() || digits.len() > CHUNK_SIZE_DIGITS_MAX {
        return Err(FramingError::BadChunk("invalid chunk size"));
    }
    let mut size = 0usize;
    for &byte in digits {
        let value = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => byte - b'A' + 10,
        };
        size = size * 16 + usize::from(value);
    }
    check_chunk_extensions(&line[digits_end..])?;
    Ok(size)
}

/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`
/// with `chunk-ext-name = token` and `chunk-ext-val = token / quoted-string`
/// (RFC 9112 section 7.1.1). Whitespace (BWS) is accepted where the grammar
/// has it: before and after `;` and around `=`; whitespace anywhere else (after
/// the size with no extension following, at the end of the line, inside a
/// name or an unquoted value) is refused, and so is any byte outside token
/// and quoted-string (NUL, other controls, an unterminated quote).
fn check_chunk_extensions(rest: &[u8]) -> Result<(), FramingError> {
    let mut at = 0;
    while at < rest.len() {
        at = skip_whitespace(rest, at);
        match rest.get(at) {
            Some(b';') => {}
            Some(_) if at == 0 => return Err(FramingError::BadChunk("invalid chunk size")),
            Some(_) => return Err(FramingError::BadChunk("invalid chunk extension")),
            None => {
                return Err(FramingError::BadChunk(
                    "whitespace not followed by a chunk extension",
                ))
            }
        }
        at = skip_whitespace(rest, at + 1);
        let name_end = skip_token(rest, at);
        if name_end == at {
            return Err(FramingError::BadChunk("chunk extension without a name"));
        }
        at = name_end;
        let after_name = skip_whitespace(rest, at);
        if rest.get(after_name) == Some(&b'=') {
            at = skip_whitespace(rest, after_name + 1);
            at = if rest.get(at) == Some(&b'"') {
                quoted_string_end(rest, at)?
            } else {
                let value_end = skip_token(rest, at);
                if value_end == at {
                    return Err(FramingError::BadChunk("chunk extension without a value"));
                }
                value_end
            };
        }
    }
    Ok(())
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    at
}

fn skip_token(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|&byte| is_tchar(byte)) {
        at += 1;
    }
    at
}

/// `tchar` (RFC 9110 section 5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// `field-vchar` or SP / HTAB (RFC 9110 section 5.5): VCHAR, obs-text.
fn is_field_value_byte(byte: u8) -> bool {
    matches!(byte, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

/// The end (one past the closing DQUOTE) of the quoted-string opening at
/// `at`: `DQUOTE *( qdtext / quoted-pair ) DQUOTE` (RFC 9110 section 5.6.4).
fn quoted_string_end(bytes: &[u8], mut at: usize) -> Result<usize, FramingError> {
    at += 1;
    loop {
        match bytes.get(at) {
            None => {
                return Err(FramingError::BadChunk(
                    "unterminated quoted string in a chunk extension",
                ))
            }
            Some(b'"') => return Ok(at + 1),
            Some(b'\\') => match bytes.get(at + 1) {
                Some(&escaped) if is_field_value_byte(escaped) => at += 2,
                Some(_) => return Err(FramingError::BadChunk("invalid byte in a chunk extension")),
                None => {
                    return Err(FramingError::BadChunk(
                        "unterminated quoted string in a chunk extension",
                    ))
                }
            },
            Some(&byte) if is_field_value_byte(byte) => at += 1,
            Some(_) => return Err(FramingError::BadChunk("invalid byte in a chunk extension")),
        }
    }
}

/// A trailer line: `field-name ":" OWS field-value OWS` (RFC 9112 section 5,
/// RFC 9110 section 5.5). The field is checked, then ignored. A line with no
/// colon (a request line, say), whitespace before the colon or at the start
/// of the line (obs-fold), or a control byte (NUL, DEL) in the value is
/// refused.
fn check_trailer_line(line: &[u8]) -> Result<(), FramingError> {
    let Some(colon) = line.iter().position(|&byte| byte == b':') else {
        return Err(FramingError::BadChunk("trailer line without a colon"));
    };
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&byte| is_tchar(byte)) {
        return Err(FramingError::BadChunk("invalid trailer field name"));
    }
    if !line[colon + 1..]
        .iter()
        .all(|&byte| is_field_value_byte(byte))
    {
        return Err(FramingError::BadChunk(
            "invalid byte in a trailer field value",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(encoded: &[u8], body_bytes_max: usize) -> Result<(Vec<u8>, usize), FramingError> {
        let mut buffer = encoded.to_vec();
        let mut decoder = ChunkedDecoder::new(0, body_bytes_max, 1024);
        match decoder.decode(&mut buffer)? {
            Progress::Done { end, consumed } => Ok((buffer[..end].to_vec(), consumed)),
            Progress::NeedMore => panic!("incomplete"),
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let encoded = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let (body, consumed) = decode_all(encoded, 100).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&encoded[consumed..], b"NEXT");
    }

    #[test]
    fn decodes_byte_by_byte() {
        let encoded = b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n";
        let mut buffer = Vec::new();
        let mut decoder = ChunkedDecoder::new(0, 100, 1024);
        for &byte in encoded.iter() {
            buffer.push(byte);
            if let Progress::Done { end, consumed } = decoder.decode(&mut buffer).unwrap() {
                assert_eq!(&buffer[..end], b"abc0123456789");
                assert_eq!(consumed, encoded.len());
                return;
            }
        }
        panic!("never completed");
    }

    #[test]
    fn refuses_bad_chunks() {
        for encoded in [
            &b"g\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"fffffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(
                decode_all(encoded, 100).is_err(),
                "{encoded:?} was accepted"
            );
        }
    }

    /// `5` + `line_rest` as the first chunk's size line, then `hello` and
    /// a last chunk with `trailers`.
    fn with(line_rest: &str, trailers: &str) -> Vec<u8> {
        format!("5{line_rest}\r\nhello\r\n0\r\n{trailers}\r\n").into_bytes()
    }

    #[test]
    fn accepts_extensions_by_the_grammar() {
        for line_rest in [
            ";a",
            ";a=b",
            ";a=b;c;d=e",
            ";a=\"\"",
            ";a=\"quoted ; = \\\" value\"",
            ";a=\"obs-text \u{e9}\"",
            // BWS before and after `;` and around `=` (RFC 9112 section 7.1.1).
            " ;a",
            "\t; a = b ;c",
            ";a =\t\"q\"",
            ";!#$%&'*+-.^_`|~09azAZ=!#$%&'*+-.^_`|~",
        ] {
            let (body, _) = decode_all(&with(line_rest, ""), 100)
                .unwrap_or_else(|error| panic!("{line_rest:?}: {error:?}"));
            assert_eq!(body, b"hello", "{line_rest:?}");
        }
        let last = b"5\r\nhello\r\n000;end=\"yes\"\r\n\r\n";
        assert_eq!(decode_all(last, 100).unwrap().0, b"hello");
    }

    #[test]
    fn refuses_extensions_outside_the_grammar() {
        for (line_rest, why) in [
            (" ", "whitespace not followed by a chunk extension"),
            ("\t", "whitespace not followed by a chunk extension"),
            (";a ", "whitespace not followed by a chunk extension"),
            (";a=b ", "whitespace not followed by a chunk extension"),
            ("g", "invalid chunk size"),
            (" 5", "invalid chunk extension"),
            (";", "chunk extension without a name"),
            (";;a", "chunk extension without a name"),
            ("; =b", "chunk extension without a name"),
            (";a=", "chunk extension without a value"),
            (";a= ", "chunk extension without a value"),
            (";a=;b", "chunk extension without a value"),
            (";a b", "invalid chunk extension"),
            (";a=b c", "invalid chunk extension"),
            (";a=\"b\"c", "invalid chunk extension"),
            (";a\0", "invalid chunk extension"),
            (";a=\0", "chunk extension without a value"),
            (";a=b\0", "invalid chunk extension"),
            (";a=\"\0\"", "invalid byte in a chunk extension"),
            (";a=\"\x7f\"", "invalid byte in a chunk extension"),
            (";a=\"\\\0\"", "invalid byte in a chunk extension"),
            (
                ";a=\"open",
                "unterminated quoted string in a chunk extension",
            ),
            (
                ";a=\"open\\\"",
                "unterminated quoted string in a chunk extension",
            ),
            (
                ";a=\"open\\",
                "unterminated quoted string in a chunk extension",
            ),
            (";a=\"", "unterminated quoted string in a chunk extension"),
        ] {
            assert_eq!(
                decode_all(&with(line_rest, ""), 100),
                Err(FramingError::BadChunk(why)),
                "{line_rest:?}"
            );
        }
    }

    #[test]
    fn accepts_trailer_fields_by_the_grammar() {
        for trailers in [
            "X-Checksum: abc\r\n",
            "x:\r\n",
            "x:   \r\n",
            "x:\tv a l\tu e\t\r\n",
            "Server-Timing: a;dur=1, b\r\nX-Obs: \u{e9}\r\n",
            "x: a:b: GET /readyz HTTP/1.1\r\n",
        ] {
            let (body, _) = decode_all(&with("", trailers), 100)
                .unwrap_or_else(|error| panic!("{trailers:?}: {error:?}"));
            assert_eq!(body, b"hello", "{trailers:?}");
        }
    }

    #[test]
    fn refuses_trailer_lines_outside_the_grammar() {
        for (trailers, why) in [
            ("GET /readyz HTTP/1.1\r\n", "trailer line without a colon"),
            ("X-Checksum\r\n", "trailer line without a colon"),
            ("x: a\r\nno colon here\r\n", "trailer line without a colon"),
            (": v\r\n", "invalid trailer field name"),
            ("x : v\r\n", "invalid trailer field name"),
            (" x: v\r\n", "invalid trailer field name"),
            ("x: a\r\n folded\r\n", "trailer line without a colon"),
            ("x: a\r\n\tb: folded\r\n", "invalid trailer field name"),
            ("x\0: v\r\n", "invalid trailer field name"),
            ("x(y): v\r\n", "invalid trailer field name"),
            ("x: a\0b\r\n", "invalid byte in a trailer field value"),
            ("x: \x7f\r\n", "invalid byte in a trailer field value"),
            ("x: \x0b\r\n", "invalid byte in a trailer field value"),
        ] {
            assert_eq!(
                decode_all(&with("", trailers), 100),
                Err(FramingError::BadChunk(why)),
                "{trailers:?}"
            );
        }
    }

    #[test]
    fn a_trailer_error_is_found_when_the_line_arrives_in_pieces() {
        let encoded = with("", "x: a\r\nGET /readyz HTTP/1.1\r\n");
        let mut buffer = Vec::new();
        let mut decoder = ChunkedDecoder::new(0, 100, 1024);
        for &byte in &encoded {
            buffer.push(byte);
            match decoder.decode(&mut buffer) {
                Ok(Progress::NeedMore) => {}
                Ok(done) => panic!("{done:?}"),
                Err(error) => {
                    assert_eq!(
                        error,
                        FramingError::BadChunk("trailer line without a colon")
                    );
                    return;
                }
            }
        }
        panic!("never refused");
    }

    #[test]
    fn compaction_keeps_only_the_decoded_body_and_the_rest() {
        let encoded = b"3;a=bbbbbbbbbbbbbbbbbbbb\r\nabc\r\n2\r\nde\r\n";
        let mut buffer = b"HEAD".to_vec();
        buffer.extend_from_slice(encoded);
        let mut decoder = ChunkedDecoder::new(4, 100, 1024);
        assert_eq!(decoder.decode(&mut buffer), Ok(Progress::NeedMore));
        decoder.compact(&mut buffer);
        assert_eq!(buffer, b"HEADabcde");
        buffer.extend_from_slice(b"0\r\n\r\nNEXT");
        let Ok(Progress::Done { end, consumed }) = decoder.decode(&mut buffer) else {
            panic!("not done");
        };
        assert_eq!(&buffer[4..end], b"abcde");
        assert_eq!(&buffer[consumed..], b"NEXT");
    }

    #[test]
    fn bounds_the_raw_bytes_of_tiny_chunks_with_long_extensions() {
        // 1-byte chunks, each with a ~1000-byte extension: 5 decoded bytes
        // would be fine, their framing is not.
        let mut decoder = ChunkedDecoder::new(0, 5, 64);
        let limit = decoder.wire_bytes_max();
        let chunk = format!("1;x={}\r\na\r\n", "e".repeat(1000));
        let mut buffer = Vec::new();
        let mut sent = 0;
        let error = loop {
            buffer.extend_from_slice(chunk.as_bytes());
            sent += chunk.len();
            match decoder.decode(&mut buffer) {
                Ok(Progress::NeedMore) => decoder.compact(&mut buffer),
                Ok(done) => panic!("{done:?}"),
                Err(error) => break error,
            }
            assert!(
                buffer.len() <= chunk.len(),
                "compaction keeps the buffer small"
            );
        };
        assert!(matches!(
            error,
            FramingError::WireTooLarge { .. } | FramingError::BodyTooLarge { .. }
        ));
        assert!(sent <= limit + chunk.len());
    }

    #[test]
    fn enforces_the_body_limit() {
        let result = decode_all(b"a\r\n0123456789\r\n0\r\n\r\n", 5);
        assert_eq!(result, Err(FramingError::BodyTooLarge { limit_bytes: 5 }));
    }
}
