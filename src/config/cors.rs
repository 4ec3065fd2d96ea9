//! `[cors]`: cross-origin requests from browsers (SPEC §11).

use serde::{Deserialize, Serialize};

/// Cross-origin requests from browsers (SPEC §11).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) whose pages may send events, or
    /// `["*"]` for any; empty: no CORS headers at all.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age_seconds: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age_seconds: 600,
        }
    }
}
