//! `[schemas]`: event contracts, JSON Schemas per event type (SPEC §13).

use serde::{Deserialize, Serialize};

/// Event contracts: JSON Schemas (draft 2020-12) per event type, and per
/// tenant.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemasConfig {
    /// `<event_type>.json` for every tenant, `<tenant_id>/<event_type>.json`
    /// for one; reloaded on change and SIGHUP. Empty: no schemas.
    pub dir: String,
    /// Refuse events whose type has no schema.
    pub require: bool,
}
