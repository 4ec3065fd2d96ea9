//! `Content-Encoding: gzip` request bodies, inflated with a hard output cap
//! so that a decompression bomb costs at most the cap, never more memory.

use std::io::Read as _;

/// Why a gzip body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum GzipError {
    /// The decompressed body would exceed the cap (413).
    TooLarge { limit_bytes: usize },
    /// Not a valid gzip stream (400).
    Corrupt,
}

/// Inflates `compressed` into `output` (cleared first), reading at most
/// `limit_bytes + 1` bytes so the cap is detected without inflating further.
/// `output` grows by doubling but never past `limit_bytes + 1`, so a bomb
/// costs at most the cap (and a growth step) in memory, not twice the cap.
pub fn inflate(
    compressed: &[u8],
    output: &mut Vec<u8>,
    limit_bytes: usize,
) -> Result<(), GzipError> {
    const CHUNK_BYTES: usize = 16 * 1024;
    output.clear();
    let cap = limit_bytes.saturating_add(1);
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut chunk = [0u8; CHUNK_BYTES];
    loop {
        let wanted = CHUNK_BYTES.min(cap - output.len());
        if wanted == 0 {
            break;
        }
        let read = match decoder.read(&mut chunk[..wanted]) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(GzipError::Corrupt),
        };
        if output.capacity() - output.len() < read {
            let grow = output.capacity().max(CHUNK_BYTES).min(cap - output.len());
            output.reserve_exact(grow.max(read));
        }
        output.extend_from_slice(&chunk[..read]);
    }
    if output.len() > limit_bytes {
        return Err(GzipError::TooLarge { limit_bytes });
    }
    Ok(())
}

/// Whether a `Content-Encoding` value names gzip; `identity` is no encoding.
pub fn is_gzip(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"gzip") || value.eq_ignore_ascii_case(b"x-gzip")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn round_trips_within_the_cap() {
        let mut output = Vec::new();
        inflate(&gzip(b"{\"a\":1}"), &mut output, 100).unwrap();
        assert_eq!(output, b"{\"a\":1}");
    }

    #[test]
    fn a_bomb_stops_at_the_cap() {
        let bomb = gzip(&vec![0u8; 50 * 1024 * 1024]);
        let mut output = Vec::new();
        assert_eq!(
            inflate(&bomb, &mut output, 1024 * 1024),
            Err(GzipError::TooLarge {
                limit_bytes: 1024 * 1024
            })
        );
        assert!(output.len() <= 1024 * 1024 + 1);
        assert!(output.capacity() <= 1024 * 1024 + 1, "grew past the cap");
    }

    #[test]
    fn multi_member_bodies_inflate_whole() {
        let mut body = gzip(b"{\"a\":1}");
        body.extend_from_slice(&gzip(b"\n{\"b\":2}"));
        let mut output = Vec::new();
        inflate(&body, &mut output, 100).unwrap();
        assert_eq!(output, b"{\"a\":1}\n{\"b\":2}");
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut output = Vec::new();
        assert_eq!(
            inflate(b"not gzip at all", &mut output, 100),
            Err(GzipError::Corrupt)
        );
    }
}
