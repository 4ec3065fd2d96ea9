//! Where a request's credential is: the `X-CS-API-Key` header, a Bearer
//! token, a Basic user name (Segment's SDKs) or the query string
//! (`auth.query_key`, for `navigator.sendBeacon`). Reads bytes the HTTP
//! layer found; knows nothing of what a key grants ([`super::keys`]).

/// Longest key taken from a query string.
pub const QUERY_KEY_BYTES_MAX: usize = 256;

/// The `api_key` parameter of a request target's query, percent-decoded
/// into `out` (for `navigator.sendBeacon`, which cannot set headers).
/// `false` when absent, empty, longer than [`QUERY_KEY_BYTES_MAX`] or
/// badly encoded. `out` keeps its capacity: no allocation once grown.
pub fn query_key(target: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(start) = memchr::memchr(b'?', target) else {
        return false;
    };
    let Some(value) = target[start + 1..]
        .split(|&byte| byte == b'&')
        .find_map(|pair| pair.strip_prefix(b"api_key="))
    else {
        return false;
    };
    let mut index = 0;
    while index < value.len() {
        let byte = match value[index] {
            b'%' => {
                let digit = |at: usize| value.get(at).and_then(|&b| (b as char).to_digit(16));
                let (Some(high), Some(low)) = (digit(index + 1), digit(index + 2)) else {
                    out.clear();
                    return false;
                };
                index += 2;
                (high * 16 + low) as u8
            }
            b'+' => b' ',
            byte => byte,
        };
        if out.len() == QUERY_KEY_BYTES_MAX {
            out.clear();
            return false;
        }
        out.push(byte);
        index += 1;
    }
    !out.is_empty()
}

/// The user name of `Authorization: Basic <base64(user:password)>`, the
/// way Segment's SDKs send their write key, decoded into `out`. `false`
/// when the scheme is not Basic, the user name is empty or longer than
/// [`QUERY_KEY_BYTES_MAX`], or the encoding is bad. The password is not
/// looked at. `out` keeps its capacity: no allocation once grown.
pub fn basic_user(authorization: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(encoded) = authorization
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
        .map(|_| crate::http::request::trim(&authorization[6..]))
    else {
        return false;
    };
    // base64 of a user name of QUERY_KEY_BYTES_MAX bytes, ':' and a
    // password no longer than that.
    if encoded.len() > 4 * (2 * QUERY_KEY_BYTES_MAX + 1).div_ceil(3) {
        return false;
    }
    let sextet = |byte: u8| -> Option<u32> {
        match byte {
            b'A'..=b'Z' => Some(u32::from(byte - b'A')),
            b'a'..=b'z' => Some(u32::from(byte - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(byte - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let unpadded = encoded
        .strip_suffix(b"==")
        .or_else(|| encoded.strip_suffix(b"="))
        .unwrap_or(encoded);
    if encoded.len() % 4 != 0 || unpadded.len() % 4 == 1 {
        return false;
    }
    for quad in unpadded.chunks(4) {
        let mut bits = 0u32;
        for &byte in quad {
            let Some(value) = sextet(byte) else {
                out.clear();
                return false;
            };
            bits = bits << 6 | value;
        }
        bits <<= 6 * (4 - quad.len() as u32);
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..quad.len()]);
    }
    match memchr::memchr(b':', out) {
        Some(end) if end > 0 && end <= QUERY_KEY_BYTES_MAX => {
            out.truncate(end);
            true
        }
        _ => {
            out.clear();
            false
        }
    }
}

/// The key a request presents: `X-CS-API-Key`, else `Authorization: Bearer`.
pub fn presented_key<'a>(api_key: Option<&'a [u8]>, authorization: Option<&'a [u8]>) -> &'a [u8] {
    api_key
        .or_else(|| bearer_token(authorization))
        .unwrap_or(b"")
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer_token(authorization: Option<&[u8]>) -> Option<&[u8]> {
    match authorization {
        Some(value) if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") => {
            Some(crate::http::request::trim(&value[7..]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_query_decoded() {
        let mut out = Vec::new();
        assert!(query_key(b"/v1/events?x=1&api_key=cs_live%5Fa+b", &mut out));
        assert_eq!(out, b"cs_live_a b");
        assert!(!query_key(b"/v1/events?api_key=", &mut out));
        assert!(!query_key(b"/v1/events?api_key=%zz", &mut out));
        assert!(!query_key(b"/v1/events?api_key=%4", &mut out));
        assert!(!query_key(b"/v1/events", &mut out));
    }

    #[test]
    fn basic_user_names_are_decoded() {
        let mut out = Vec::new();
        for (header, user) in [
            ("Basic Y3NfbGl2ZV9hYmMxMjN4eXo6", "cs_live_abc123xyz"),
            ("basic  YWJjOg==", "abc"),
            ("BASIC YWI6Y2Q=", "ab"),
            ("Basic YWJjZDplZmdo", "abcd"),
        ] {
            assert!(basic_user(header.as_bytes(), &mut out), "{header}");
            assert_eq!(out, user.as_bytes(), "{header}");
        }
        for header in [
            "Bearer YWJjOg==",
            "Basic Og==",
            "Basic YWJj",
            "Basic YWJjOg=",
            "Basic YW*jOg==",
            "Basic ",
            "Basic",
        ] {
            assert!(!basic_user(header.as_bytes(), &mut out), "{header}");
            assert!(out.is_empty(), "{header}");
        }
        let long = format!("Basic {}", "QUFB".repeat(200));
        assert!(!basic_user(long.as_bytes(), &mut out));
        let long = format!("/v1/events?api_key={}", "k".repeat(QUERY_KEY_BYTES_MAX + 1));
        assert!(!query_key(long.as_bytes(), &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn bearer_is_accepted_after_the_header() {
        assert_eq!(presented_key(None, Some(b"Bearer abc")), b"abc");
        assert_eq!(presented_key(None, Some(b"Basic YWJjOg==")), b"");
        assert_eq!(presented_key(None, Some(b"bearer  abc ")), b"abc");
        assert_eq!(presented_key(Some(b"k"), Some(b"Bearer abc")), b"k");
        assert_eq!(presented_key(None, Some(b"Basic abc")), b"");
    }
}
