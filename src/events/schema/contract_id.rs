//! The name of the contract that validated an event, as its record's
//! `schema` header gives it (SPEC §2, §13): scope, event type and the
//! first bytes of the schema file's SHA-256, so a consumer knows which
//! version of the file checked the record.

/// Bytes of a schema file's SHA-256 a record's `schema` header shows (12
/// hex digits: two files of one event type collide about once in 2^48).
pub const CONTRACT_SHA256_BYTES: usize = 6;

/// Which contract validated an event: the record's `schema` header,
/// `<scope>/<event_type>@sha256:<12 hex digits>`, scope `tenant` (the
/// file `<tenant_id>/<event_type>.json`) or `global` (`<event_type>.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContractId {
    pub tenant_scope: bool,
    pub sha256: [u8; CONTRACT_SHA256_BYTES],
}

impl ContractId {
    /// `tenant` or `global`.
    pub fn scope(&self) -> &'static str {
        if self.tenant_scope {
            "tenant"
        } else {
            "global"
        }
    }

    /// The digest as the header shows it: lower-case hex.
    pub fn sha256_hex(&self) -> [u8; 2 * CONTRACT_SHA256_BYTES] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0; 2 * CONTRACT_SHA256_BYTES];
        for (index, byte) in self.sha256.iter().enumerate() {
            hex[2 * index] = HEX[usize::from(byte >> 4)];
            hex[2 * index + 1] = HEX[usize::from(byte & 0xf)];
        }
        hex
    }
}

/// The first [`CONTRACT_SHA256_BYTES`] of `bytes`'s SHA-256.
pub fn sha256_prefix(bytes: &[u8]) -> [u8; CONTRACT_SHA256_BYTES] {
    use sha2::Digest as _;
    let full = sha2::Sha256::digest(bytes);
    let mut prefix = [0; CONTRACT_SHA256_BYTES];
    prefix.copy_from_slice(&full[..CONTRACT_SHA256_BYTES]);
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_what_sha256sum_shows_first() {
        // sha256("") = e3b0c44298fc1c149afbf4c8996fb924...
        let id = ContractId {
            tenant_scope: false,
            sha256: sha256_prefix(b""),
        };
        assert_eq!(&id.sha256_hex(), b"e3b0c44298fc");
        assert_eq!(id.scope(), "global");
        let tenant = ContractId {
            tenant_scope: true,
            ..id
        };
        assert_eq!(tenant.scope(), "tenant");
    }
}
