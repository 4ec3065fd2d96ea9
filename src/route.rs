//! The server's routes: which target goes where, and the methods each takes.
//! Shared by the request path (dispatch) and the metrics (counted per route).

/// A route, counted separately in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Events,
    EventsBatch,
    /// Segment's batch endpoint, `/v1/batch`.
    SegmentBatch,
    /// Segment's single calls, `/v1/track`, `/v1/identify`, ...
    SegmentCall,
    OpenApi,
    Healthz,
    Readyz,
    Metrics,
    Other,
}

impl Route {
    /// Every route, in metrics order.
    pub const ALL: [Route; 9] = [
        Route::Events,
        Route::EventsBatch,
        Route::SegmentBatch,
        Route::SegmentCall,
        Route::OpenApi,
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
            b"/v1/batch" => Route::SegmentBatch,
            b"/openapi.json" => Route::OpenApi,
            path if SegmentCall::of_path(path).is_some() => Route::SegmentCall,
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
            Route::SegmentBatch => "/v1/batch",
            Route::SegmentCall => "/v1/{segment call}",
            Route::OpenApi => "/openapi.json",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Other => "other",
        }
    }

    /// Whether events are posted to this route.
    pub fn ingests(self) -> bool {
        matches!(
            self,
            Route::Events | Route::EventsBatch | Route::SegmentBatch | Route::SegmentCall
        )
    }

    /// Whether the route speaks Segment's wire format.
    pub fn is_segment(self) -> bool {
        matches!(self, Route::SegmentBatch | Route::SegmentCall)
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

/// Segment's call types, each with its own endpoint (`/v1/<type>`) and
/// named by a batch member's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCall {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl SegmentCall {
    pub const ALL: [SegmentCall; 6] = [
        SegmentCall::Track,
        SegmentCall::Identify,
        SegmentCall::Page,
        SegmentCall::Screen,
        SegmentCall::Group,
        SegmentCall::Alias,
    ];

    /// The type's name, as in `"type"` and the endpoint's path.
    pub fn name(self) -> &'static str {
        match self {
            SegmentCall::Track => "track",
            SegmentCall::Identify => "identify",
            SegmentCall::Page => "page",
            SegmentCall::Screen => "screen",
            SegmentCall::Group => "group",
            SegmentCall::Alias => "alias",
        }
    }

    pub fn of_name(name: &[u8]) -> Option<SegmentCall> {
        SegmentCall::ALL
            .into_iter()
            .find(|call| call.name().as_bytes() == name)
    }

    /// The call type of an endpoint path, `/v1/track` and so on.
    pub fn of_path(path: &[u8]) -> Option<SegmentCall> {
        path.strip_prefix(b"/v1/").and_then(SegmentCall::of_name)
    }

    /// The call type of a request target.
    pub fn of_target(target: &[u8]) -> Option<SegmentCall> {
        SegmentCall::of_path(path_of(target))
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

    #[test]
    fn segment_endpoints_route_by_call_type() {
        assert_eq!(Route::of(b"/v1/batch"), Route::SegmentBatch);
        for call in SegmentCall::ALL {
            let path = format!("/v1/{}?x", call.name());
            assert_eq!(Route::of(path.as_bytes()), Route::SegmentCall, "{path}");
            assert_eq!(SegmentCall::of_target(path.as_bytes()), Some(call));
        }
        assert_eq!(Route::of(b"/v1/trackx"), Route::Other);
        assert_eq!(Route::of(b"/v1/"), Route::Other);
        assert_eq!(SegmentCall::of_target(b"/v1/events"), None);
    }
}
