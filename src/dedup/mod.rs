//! Edge dedup (SPEC §12): a retried event already stored is answered, not
//! published again. [`table`] is this instance's memory of it.

pub mod fleet;
mod occupancy;
mod scripts;
pub mod state;
pub mod table;
