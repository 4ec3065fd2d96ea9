//! Cross-origin resource sharing for browser pages (SPEC §11): which
//! `Origin`s may send events, decided once per request from the head.
//! Origins are compared whole and ASCII-case-insensitively; `*` allows any.

/// Longest origin sluice echoes back; a longer one gets no CORS headers.
pub const ORIGIN_BYTES_MAX: usize = 256;

/// The configured policy, built once at start.
#[derive(Debug, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<Box<[u8]>>,
    pub max_age_seconds: u64,
}

impl Cors {
    /// From `cors.allowed_origins` and `cors.max_age_seconds`.
    pub fn new(allowed_origins: &[String], max_age_seconds: u64) -> Cors {
        Cors {
            any: allowed_origins.iter().any(|origin| origin == "*"),
            origins: allowed_origins
                .iter()
                .filter(|origin| *origin != "*")
                .take(usize::from(u16::MAX))
                .map(|origin| origin.to_ascii_lowercase().into_bytes().into())
                .collect(),
            max_age_seconds,
        }
    }

    /// Which allowed origin a request from `origin` matches (an index
    /// for [`Cors::header_value`]), or `None` when that origin may not send
    /// (no CORS headers at all).
    pub fn allowed(&self, origin: &[u8]) -> Option<Allowed> {
        if origin.is_empty() || origin.len() > ORIGIN_BYTES_MAX {
            return None;
        }
        if self.any {
            return Some(Allowed(u16::MAX));
        }
        self.origins
            .iter()
            .position(|allowed| allowed.eq_ignore_ascii_case(origin))
            .map(|index| Allowed(index as u16))
    }

    /// The `Access-Control-Allow-Origin` value: `*`, or the configured
    /// origin (lowercase, as browsers serialise an origin).
    pub fn header_value(&self, allowed: Allowed) -> &[u8] {
        match self.origins.get(usize::from(allowed.0)) {
            Some(origin) => origin,
            None => b"*",
        }
    }
}

/// A match in the allowed origins (small, so a connection keeps it cheaply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed(u16);

/// Checks one configured origin: `*`, or `scheme://host[:port]` with no
/// path, as browsers send it.
pub fn check_origin(origin: &str) -> anyhow::Result<()> {
    if origin == "*" {
        return Ok(());
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            anyhow::anyhow!("cors origin {origin:?} must start with http:// or https://")
        })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) || origin.len() > ORIGIN_BYTES_MAX {
        anyhow::bail!("cors origin {origin:?} must be scheme://host[:port], with no path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        Cors::new(&origins, 600)
    }

    #[test]
    fn listed_origins_are_echoed_others_get_nothing() {
        let policy = cors(&["https://App.example.com"]);
        let allowed = policy.allowed(b"https://app.EXAMPLE.com").unwrap();
        assert_eq!(policy.header_value(allowed), b"https://app.example.com");
        assert_eq!(policy.allowed(b"https://evil.example.com"), None);
        assert_eq!(policy.allowed(b"https://app.example.com.evil.com"), None);
        let any = cors(&["*"]);
        assert_eq!(
            any.header_value(any.allowed(b"https://any.where").unwrap()),
            b"*"
        );
        assert_eq!(cors(&[]).allowed(b"https://app.example.com"), None);
    }

    #[test]
    fn configured_origins_are_checked() {
        assert!(check_origin("https://app.example.com:8443").is_ok());
        assert!(check_origin("*").is_ok());
        assert!(check_origin("app.example.com").is_err());
        assert!(check_origin("https://app.example.com/").is_err());
    }
}
