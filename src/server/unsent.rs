//! A request's batch between the core that built it and Kafka: handed to
//! librdkafka from the loop (a producer thread taking over what a full
//! queue left), and given back, claims and all, when the request fails
//! before that.

use crossbeam_channel::TrySendError;

use super::context::Core;
use super::inflight::settle_markers;
use crate::dedup::table::NO_CLAIM;
use crate::handoff::{Batch, Completion, Mailbox, Opaque, Ticket};

/// A batch until a producer thread has it. Dropped before that (the
/// request refused, shed, or the producers gone), it gives back the dedup
/// claims of its records, so that a retry can store its events: through
/// its in-flight slot once it has one (which it frees), else directly;
/// then the batch goes back to the core's pool. Every way out of
/// [`ingest`] and [`send`] cleans up the same way, here.
pub(super) struct Unsent<'c> {
    core: &'c Core,
    /// `None` once handed over.
    batch: Option<Batch>,
    /// The batch's in-flight slot, once reserved.
    pub(super) reserved: Option<Ticket>,
}

impl<'c> Unsent<'c> {
    pub(super) fn new(core: &'c Core, batch: Batch) -> Self {
        Unsent {
            core,
            batch: Some(batch),
            reserved: None,
        }
    }

    /// Sends the batch to a producer thread. When the queue refuses it
    /// (full, or the producers gone) the batch stays here, to be given
    /// back on drop.
    pub(super) fn hand_over(&mut self) -> Result<(), TrySendError<()>> {
        let mut batch = self.batch.take().expect("a batch is handed over once");
        let mailbox = &self.core.mailbox;
        if let Some(direct) = &self.core.direct {
            // While a producer thread still holds some of this core's
            // batches, the next go the same way, so that a key's records
            // keep their order.
            if !mailbox.has_queued_batches() && direct.produce(&mut batch, mailbox) {
                mailbox.recycle(batch);
                return Ok(());
            }
            // librdkafka's queue is full: a producer thread waits for room
            // (up to the deadline) for what is left.
            mailbox.count_queued(&mut batch);
        }
        let started = batch.produced > 0;
        let (error, mut batch) = match self.core.batches.try_send(batch) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(batch)) => (TrySendError::Full(()), batch),
            Err(TrySendError::Disconnected(batch)) => (TrySendError::Disconnected(()), batch),
        };
        mailbox.uncount_queued(&mut batch);
        if started {
            // Some records are librdkafka's already: the request is
            // answered by their reports, the rest reported failed.
            fail_unproduced(mailbox, batch);
            return Ok(());
        }
        self.batch = Some(batch);
        Err(error)
    }
}

/// Reports every record of `batch` not yet produced as failed (its
/// request's other records are librdkafka's), and pools the batch.
fn fail_unproduced(mailbox: &Mailbox, batch: Batch) {
    for (index, record) in batch.records.iter().enumerate().skip(batch.produced) {
        if !record.skip {
            let opaque = Opaque::new(batch.ticket, index, record.dead_letter);
            mailbox.complete(Completion::produced(opaque, false));
        }
    }
    mailbox.recycle(batch);
}

impl std::ops::Deref for Unsent<'_> {
    type Target = Batch;

    fn deref(&self) -> &Batch {
        self.batch
            .as_ref()
            .expect("a batch is held until handed over")
    }
}

impl std::ops::DerefMut for Unsent<'_> {
    fn deref_mut(&mut self) -> &mut Batch {
        self.batch
            .as_mut()
            .expect("a batch is held until handed over")
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        match self.reserved {
            // The slot took a copy of the claims: cancelling settles them.
            Some(ticket) => self
                .core
                .inflight
                .borrow_mut()
                .cancel(ticket, self.core.metrics()),
            None => {
                if let Some(table) = &self.core.shared.dedup {
                    for &claim in &batch.claims {
                        if claim != NO_CLAIM {
                            table.settle(claim, batch.owner, false, 0);
                        }
                    }
                    if let Some(markers) = &batch.markers {
                        settle_markers(table, markers, batch.owner, false, 0);
                    }
                }
            }
        }
        self.core.mailbox.recycle(batch);
    }
}
