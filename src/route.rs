//! The server's routes: which target goes where, and the methods each takes.
//! Shared by the request path (dispatch) and the metrics (counted per route).

/// A route, counted separately in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Events,
    EventsBatch,
    Healthz,
    Readyz,
    Metrics,
    Other,
}

impl Route {
    /// Every route, in metrics order.
    pub const ALL: [Route; 6] = [
        Route::Events,
        Route::EventsBatch,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Other,
    ];

    /// The route of a request target in origin form (`/v1/events?x`) or
    /// absolute form (`http://host:port/v1/events`, RFC 9112 §3.2.2).
    pub fn of(target: &[u8]) -> Route {
        match path_of(target) {
            b"/v1/events" | b"/events" => Route::Events,
            b"/v1/events/batch" => Route::EventsBatch,
            b"/healthz" => Route::Healthz,
            b"/readyz" => Route::Readyz,
            b"/metrics" => Route::Metrics,
            _ => Route::Other,
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Events => "/v1/events",
            Route::EventsBatch => "/v1/events/batch",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Other => "other",
        }
    }

    /// Whether events are posted to this route.
    pub fn ingests(self) -> bool {
        matches!(self, Route::Events | Route::EventsBatch)
    }

    /// The `Allow` header of a 405 on this route.
    pub fn allowed_methods(self) -> &'static str {
        if self.ingests() {
            "POST, OPTIONS"
        } else {
            "GET, HEAD, OPTIONS"
        }
    }
}

/// The path of a target, without query, scheme or authority.
fn path_of(target: &[u8]) -> &[u8] {
    let target = strip_scheme_and_authority(target);
    let end = memchr::memchr(b'?', target).unwrap_or(target.len());
    match &target[..end] {
        b"" => b"/",
        path => path,
    }
}

fn strip_scheme_and_authority(target: &[u8]) -> &[u8] {
    let after_scheme = [b"http://".as_slice(), b"https://".as_slice()]
        .iter()
        .find(|scheme| {
            target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme)
        })
        .map(|scheme| &target[scheme.len()..]);
    match after_scheme {
        Some(rest) => {
            let authority_end = memchr::memchr2(b'/', b'?', rest).unwrap_or(rest.len());
            &rest[authority_end..]
        }
        None => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_and_absolute_forms_route_alike() {
        for target in [
            "/v1/events",
            "/v1/events?x=1",
            "http://localhost:8080/v1/events",
            "HTTP://h/v1/events?q",
            "https://h:1/v1/events",
        ] {
            assert_eq!(Route::of(target.as_bytes()), Route::Events, "{target}");
        }
        assert_eq!(Route::of(b"http://h"), Route::Other);
        assert_eq!(Route::of(b"http://h/healthz"), Route::Healthz);
        assert_eq!(Route::of(b"/v1/events/"), Route::Other);
        assert_eq!(Route::of(b"*"), Route::Other);
    }
}
