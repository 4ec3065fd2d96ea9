//! Tenancy: who is calling and what they may do. API keys and the grants
//! they carry ([`keys`]), where a request presents its key
//! ([`credentials`]), PostgreSQL as a key source ([`postgres`]), per-key
//! rate limits ([`rate`]) and their fleet-wide sharing through Redis
//! ([`fleet`]). The event loops read snapshots and atomics from here;
//! everything that talks to a database runs on control-plane threads.

pub mod credentials;
pub mod fleet;
pub mod keys;
pub mod labels;
pub mod postgres;
pub mod rate;
