//! Tenants as metric labels, with a bounded count: the first
//! [`TENANT_LABELS_MAX`] tenants a key snapshot names get a slot each, for
//! the life of the process; the rest share the `other` slot. The slot is
//! chosen when a snapshot is built (a lock there), so the event loops
//! count per tenant by index, with no lookup per request.

use std::sync::{Arc, Mutex};

/// Tenants with their own label; more would let a keys file with many
/// tenants multiply the series every scrape returns.
pub const TENANT_LABELS_MAX: usize = 100;

/// The slot every tenant past the first [`TENANT_LABELS_MAX`] shares.
pub const OTHER_SLOT: u16 = TENANT_LABELS_MAX as u16;

static NAMES: Mutex<Vec<Arc<str>>> = Mutex::new(Vec::new());

/// The tenant's slot, assigned on first sight.
pub fn slot(tenant: &str) -> u16 {
    let mut names = NAMES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(index) = names.iter().position(|name| &**name == tenant) {
        return index as u16;
    }
    if names.len() < TENANT_LABELS_MAX {
        names.push(tenant.into());
        return (names.len() - 1) as u16;
    }
    OTHER_SLOT
}

/// The tenants with a slot, in slot order.
pub fn names() -> Vec<Arc<str>> {
    NAMES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_bounded() {
        let first = slot("labels-test-a");
        assert_eq!(slot("labels-test-a"), first);
        assert_ne!(slot("labels-test-b"), first);
        for index in 0..TENANT_LABELS_MAX {
            slot(&format!("labels-test-many-{index}"));
        }
        assert_eq!(slot("labels-test-one-too-many"), OTHER_SLOT);
        assert!(names().len() <= TENANT_LABELS_MAX);
        assert_eq!(slot("labels-test-a"), first);
    }
}
