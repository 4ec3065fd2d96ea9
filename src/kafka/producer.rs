//! Dedicated producer threads. Each owns one librdkafka producer, takes
//! request batches from the shared bounded channel, and produces their
//! records; librdkafka's poll thread reports every delivery to the owning
//! core's mailbox.
//!
//! A producer that hits a fatal error, or whose idempotent-producer id the
//! broker stopped accepting (fenced after a hang, say), can never send
//! again, so its thread replaces it with a new one: the old one's
//! outstanding records are purged and reported as failed (503), and the
//! next batch goes to the new one.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};

use super::client_log::{self, RepeatFilter, Verdict};
pub use super::send::LoopProducer;
use super::send::{produce_records, Room};
use crate::config::Config;
use crate::handoff::{Batch, Completion, Mailbox, Opaque};
use crate::health::Readiness;

/// `Some(lines held back since the last one)` when a line is to be
/// written (`0` for the first of its kind).
pub(super) fn written(verdict: Verdict) -> Option<u64> {
    match verdict {
        Verdict::Suppress => None,
        Verdict::First => Some(0),
        Verdict::Repeat(held_back) => Some(held_back),
    }
}

/// The producers' own counters: written on librdkafka's and the producer
/// threads, read by `/metrics` at scrape time (kafka/ knows no metrics
/// module; the metrics module reads these).
#[derive(Debug, Default)]
pub struct ProducerMetrics {
    /// Event records Kafka did not store.
    pub delivery_failures: AtomicU64,
    /// Dead-letter records Kafka did not store.
    pub dead_letter_failures: AtomicU64,
    /// Producers replaced because they could no longer send.
    pub producers_replaced: AtomicU64,
}

impl ProducerMetrics {
    /// Called from librdkafka's delivery callback.
    pub fn delivery_failed(&self, dead_letter: bool) {
        let counter = if dead_letter {
            &self.dead_letter_failures
        } else {
            &self.delivery_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A producer that could no longer send (librdkafka's fatal state, or an
    /// id the broker stopped accepting) was replaced by a new one.
    pub fn producer_replaced(&self) {
        self.producers_replaced.fetch_add(1, Ordering::Relaxed);
    }
}

/// Routes delivery reports to the cores.
pub struct DeliveryRouter {
    mailboxes: Arc<[Arc<Mailbox>]>,
    metrics: Arc<ProducerMetrics>,
    readiness: Arc<Readiness>,
    /// Warn lines of every Kafka client of the process, once per change.
    client_logs: Arc<RepeatFilter>,
    /// Set when the broker stopped accepting this producer's id (fenced,
    /// unknown id, bad epoch or sequence): librdkafka keeps the id and every
    /// later record fails the same way, so the producer must be replaced.
    identity_lost: AtomicBool,
}

/// Delivery errors after which this producer's id is useless.
fn loses_identity(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::Fatal
        )
    )
}

impl ClientContext for DeliveryRouter {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // Connection failures (facility FAIL) carry the specific cause: an
        // SSL handshake failure, a refused SASL login. /readyz shows it.
        if facility == "FAIL" {
            self.readiness
                .note_client_error(crate::clock::now_ms(), message.to_string());
        }
        let verdict = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => self
                .client_logs
                .check(&client_log::kind_of(facility, message), Instant::now()),
            _ => {
                tracing::debug!(target: "librdkafka", facility, "{message}");
                return;
            }
        };
        let repeated = match verdict {
            Verdict::Suppress => return,
            Verdict::First => None,
            Verdict::Repeat(held_back) => Some(held_back),
        };
        match level {
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, repeated, "{message}")
            }
            _ => tracing::error!(target: "librdkafka", facility, repeated, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = client_log::kind_of("error", &format!("{error}: {reason}"));
        match self.client_logs.check(&kind, Instant::now()) {
            Verdict::Suppress => {}
            Verdict::First => tracing::warn!(target: "librdkafka", %error, "{reason}"),
            Verdict::Repeat(repeated) => {
                tracing::warn!(target: "librdkafka", %error, repeated, "{reason}")
            }
        }
        // "All brokers down" only repeats what the FAIL lines said more
        // precisely; other errors (authentication, fatal) are shown as is.
        let generic = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if !generic {
            self.readiness
                .note_client_error(crate::clock::now_ms(), format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for DeliveryRouter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let opaque = Opaque(opaque);
        let delivered = result.is_ok();
        if let Err((error, _)) = result {
            self.metrics.delivery_failed(opaque.is_dead_letter());
            let kind = format!("delivery failed: {:?}", error.rdkafka_error_code());
            if let Some(repeated) = written(self.client_logs.check(&kind, Instant::now())) {
                tracing::warn!(
                    code = ?error.rdkafka_error_code(),
                    %error,
                    dead_letter = opaque.is_dead_letter(),
                    repeated,
                    "kafka delivery failed"
                );
            }
            if loses_identity(error) {
                self.identity_lost.store(true, Ordering::Relaxed);
            }
        }
        self.mailboxes[opaque.ticket().core].complete(Completion::produced(opaque, delivered));
    }
}

pub type Producer = ThreadedProducer<DeliveryRouter>;

/// The librdkafka configuration sluice runs with.
pub fn client_config(config: &Config, brokers: &str) -> ClientConfig {
    let kafka = &config.kafka;
    let mut client = ClientConfig::new();
    // A produce request may take up to this long before librdkafka retries
    // it (its default, bounded by the record's own lifetime).
    let request_timeout_ms = kafka.message_timeout_ms.min(30_000);
    client
        .set("bootstrap.servers", brokers)
        .set("client.id", "sluice")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", kafka.linger_ms.to_string())
        .set("batch.size", kafka.batch_bytes.to_string())
        .set("compression.type", &kafka.compression)
        // Java's partitioner: a key lands where a Java producer or Kafka
        // Streams would put it (librdkafka's default, CRC32, differs).
        .set("partitioner", &kafka.partitioner)
        // Records outlive the HTTP wait: a leader election (commonly
        // 5–30 s) is retried through instead of failing every record.
        .set("message.timeout.ms", kafka.message_timeout_ms.to_string())
        .set("request.timeout.ms", request_timeout_ms.to_string())
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("reconnect.backoff.max.ms", "1000");
    // rdkafka takes librdkafka's log level from the `log` crate, which
    // sluice does not use (tracing): without this, librdkafka's warnings
    // and connection failures (an SSL handshake, a refused login) are
    // never reported.
    client.set_log_level(RDKafkaLogLevel::Warning);
    for (name, value) in kafka.security_properties() {
        client.set(name, value);
    }
    for (name, value) in &kafka.properties {
        client.set(name, value);
    }
    client
}

/// The running producer threads.
pub struct ProducerPool {
    /// Each thread's current producer; swapped when one is replaced.
    producers: Vec<Arc<ArcSwap<Producer>>>,
    client_logs: Arc<RepeatFilter>,
    threads: Vec<JoinHandle<()>>,
    closing: Arc<AtomicBool>,
}

/// How often an idle producer thread checks whether the pool is closing.
const CLOSING_POLL_INTERVAL: Duration = Duration::from_millis(50);

impl ProducerPool {
    /// Starts `kafka.producer_threads` threads reading `batches`.
    pub fn start(
        config: &Config,
        brokers: &str,
        batches: Receiver<Batch>,
        mailboxes: Arc<[Arc<Mailbox>]>,
        metrics: Arc<ProducerMetrics>,
        readiness: Arc<Readiness>,
    ) -> anyhow::Result<ProducerPool> {
        let mut producers = Vec::new();
        let mut threads = Vec::new();
        let closing = Arc::new(AtomicBool::new(false));
        let producer_cpus = crate::config::cpu_list(&config.kafka.producer_cpus);
        let client_logs = Arc::new(RepeatFilter::default());
        let durable = config.server.ack_mode == crate::config::AckMode::Durable;
        for index in 0..config.kafka.producer_threads {
            let factory = Factory {
                client: client_config(config, brokers),
                mailboxes: mailboxes.clone(),
                metrics: metrics.clone(),
                readiness: readiness.clone(),
                client_logs: client_logs.clone(),
                cpus: producer_cpus.clone(),
            };
            let slot = Arc::new(ArcSwap::new(factory.create()?));
            let thread_cpu = producer_cpus.as_ref().map(|cpus| cpus[index % cpus.len()]);
            let (thread_slot, thread_batches, thread_closing) =
                (slot.clone(), batches.clone(), closing.clone());
            let thread = std::thread::Builder::new()
                .name(format!("sluice-producer-{index}"))
                .spawn(move || {
                    if let Some(cpu) = thread_cpu {
                        if let Err(error) = crate::cpus::pin_current_thread(&[cpu]) {
                            tracing::warn!(cpu, %error, "could not pin a producer thread");
                        }
                    }
                    let mut producer = thread_slot.load_full();
                    let mut retired = Retired::default();
                    loop {
                        match thread_batches.recv_timeout(CLOSING_POLL_INTERVAL) {
                            Ok(batch) => produce_unless_expired(
                                &producer,
                                batch,
                                durable,
                                &factory.mailboxes,
                                &factory.client_logs,
                            ),
                            Err(RecvTimeoutError::Timeout)
                                if !thread_closing.load(Ordering::Relaxed) => {}
                            Err(_) => break,
                        }
                        if let Some(replacement) = factory.replace_if_broken(&producer) {
                            thread_slot.store(replacement.clone());
                            retired.keep(std::mem::replace(&mut producer, replacement));
                        }
                        retired.release();
                    }
                })
                .context("spawning a producer thread")?;
            producers.push(slot);
            threads.push(thread);
        }
        Ok(ProducerPool {
            producers,
            client_logs,
            threads,
            closing,
        })
    }

    /// Core `core`'s [`LoopProducer`]: the producers are shared among the
    /// cores in turn.
    pub fn loop_producer(&self, core: usize) -> LoopProducer {
        LoopProducer {
            slot: self.producers[core % self.producers.len()].clone(),
            client_logs: self.client_logs.clone(),
        }
    }

    /// The first thread's producer, current at each load, for the readiness probe.
    pub fn probe_client(&self) -> Arc<ArcSwap<Producer>> {
        self.producers[0].clone()
    }

    /// Waits for the threads (they stop once the queue is empty), then
    /// flushes librdkafka's queues until `deadline`. Returns whether all flushed.
    pub fn shutdown(self, deadline: Instant) -> bool {
        self.closing.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let mut flushed = true;
        for slot in &self.producers {
            let producer = slot.load();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Err(error) = producer.flush(remaining) {
                tracing::error!(%error, "producer did not flush before the drain deadline");
                flushed = false;
            }
        }
        flushed
    }
}

/// Producers a thread replaced, kept until nobody else holds them. An
/// event loop reads the producer through the slot while it produces; if
/// its read held the last reference, dropping it there would purge,
/// flush (up to 500 ms) and join librdkafka's threads on the loop. So the
/// producer thread drops a replaced producer itself, once it holds the
/// only reference (an event loop's read lasts one produce call).
struct Retired<T>(Vec<Arc<T>>);

impl<T> Default for Retired<T> {
    fn default() -> Self {
        Retired(Vec::new())
    }
}

impl<T> Retired<T> {
    fn keep(&mut self, old: Arc<T>) {
        self.0.push(old);
    }

    /// Drops, here, every kept value no one else holds any more.
    fn release(&mut self) {
        self.0.retain(|old| Arc::strong_count(old) > 1);
    }
}

/// Everything a producer thread needs to make a producer, again if need be.
struct Factory {
    client: ClientConfig,
    mailboxes: Arc<[Arc<Mailbox>]>,
    metrics: Arc<ProducerMetrics>,
    readiness: Arc<Readiness>,
    client_logs: Arc<RepeatFilter>,
    /// `kafka.producer_cpus`: librdkafka's threads inherit the creating
    /// thread's mask, so producers are created with it set to these.
    cpus: Option<Vec<usize>>,
}

impl Factory {
    fn create(&self) -> anyhow::Result<Arc<Producer>> {
        match &self.cpus {
            Some(cpus) => crate::cpus::with_affinity(cpus, || self.create_here()),
            None => self.create_here(),
        }
    }

    fn create_here(&self) -> anyhow::Result<Arc<Producer>> {
        let router = DeliveryRouter {
            mailboxes: self.mailboxes.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            client_logs: self.client_logs.clone(),
            identity_lost: AtomicBool::new(false),
        };
        let producer: Producer = self
            .client
            .create_with_context(router)
            .context("creating the Kafka producer")?;
        Ok(Arc::new(producer))
    }

    /// A new producer if `current` is in librdkafka's fatal state or the
    /// broker no longer accepts its id. Dropping the last handle to the old
    /// one purges its queues, which reports every record it still held as
    /// failed, so no in-flight slot waits forever.
    fn replace_if_broken(&self, current: &Producer) -> Option<Arc<Producer>> {
        let (code, reason) = match current.client().fatal_error() {
            Some(fatal) => fatal,
            None if current.context().identity_lost.load(Ordering::Relaxed) => (
                RDKafkaErrorCode::ProducerFenced,
                "the broker no longer accepts this producer's id".to_string(),
            ),
            None => return None,
        };
        match self.create() {
            Ok(replacement) => {
                self.metrics.producer_replaced();
                tracing::error!(?code, %reason, "kafka producer broken; replaced it with a new one");
                Some(replacement)
            }
            Err(error) => {
                tracing::error!(?code, %reason, %error, "kafka producer broken and could not be replaced");
                None
            }
        }
    }
}

/// Hands a batch's records to librdkafka, unless its delivery deadline
/// has passed in durable mode: its client has been answered 503 then
/// ("not stored, retry"), so producing it now would store events a retry
/// stores again. It is failed instead, as if Kafka had.
fn produce_unless_expired(
    producer: &Producer,
    batch: Batch,
    durable: bool,
    mailboxes: &[Arc<Mailbox>],
    client_logs: &RepeatFilter,
) {
    if durable && Instant::now() >= batch.deadline {
        let mailbox = &mailboxes[batch.ticket.core];
        // Records an event loop produced already (`batch.produced`) are
        // librdkafka's: their reports come from it.
        for (index, record) in batch.records.iter().enumerate().skip(batch.produced) {
            if record.skip {
                continue;
            }
            mailbox.complete(Completion::produced(
                Opaque::new(batch.ticket, index, record.dead_letter),
                false,
            ));
        }
        if let Some(repeated) = written(client_logs.check("batch expired", Instant::now())) {
            tracing::warn!(
                repeated,
                "a batch reached a producer after its delivery deadline (its client was answered 503): not produced"
            );
        }
        mailbox.recycle(batch);
        return;
    }
    produce(producer, batch, mailboxes, client_logs);
}

fn produce(
    producer: &Producer,
    mut batch: Batch,
    mailboxes: &[Arc<Mailbox>],
    client_logs: &RepeatFilter,
) {
    let mailbox = &mailboxes[batch.ticket.core];
    produce_records(
        producer,
        &mut batch,
        mailbox,
        client_logs,
        Room::WaitUntilDeadline,
    );
    mailbox.recycle(batch);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_name_kafka_refuses_is_refused_before_librdkafka() {
        let (producer, _mailboxes, _batch) = producer_and_batch(Instant::now());
        let opaque = Opaque(0);
        for bad in ["a\0b".to_string(), "t".repeat(300)] {
            let refused = crate::kafka::send::send_record(
                &producer,
                &bad,
                None,
                b"{}",
                rdkafka::message::OwnedHeaders::new(),
                opaque,
            );
            assert!(
                matches!(refused, Err((RDKafkaErrorCode::InvalidTopic, _))),
                "{bad:?}"
            );
        }
        let queued = crate::kafka::send::send_record(
            &producer,
            "events_raw",
            None,
            b"{}",
            Default::default(),
            opaque,
        );
        assert!(queued.is_ok());
    }

    #[test]
    fn a_replaced_producer_is_dropped_by_its_thread_not_by_a_reader() {
        let mut retired = Retired::default();
        let old = Arc::new(7u8);
        let watch = Arc::downgrade(&old);
        // An event loop's read of the slot, still in its produce call.
        let reader = Arc::clone(&old);
        retired.keep(old);
        retired.release();
        assert!(watch.upgrade().is_some(), "kept while a reader holds it");
        drop(reader);
        assert!(
            watch.upgrade().is_some(),
            "the reader's drop was not the last: the thread still holds it"
        );
        retired.release();
        assert!(watch.upgrade().is_none(), "dropped by the thread");
    }

    /// A real librdkafka producer (no broker: nothing is sent), a mailbox
    /// and a one-record batch whose deadline is `deadline`.
    fn producer_and_batch(deadline: Instant) -> (Arc<Producer>, Arc<[Arc<Mailbox>]>, Batch) {
        let config = Config::default();
        let mailboxes: Arc<[Arc<Mailbox>]> = vec![Arc::new(Mailbox::new(16))].into();
        let factory = Factory {
            client: client_config(&config, "127.0.0.1:1"),
            mailboxes: mailboxes.clone(),
            metrics: Arc::new(ProducerMetrics::default()),
            readiness: Arc::new(Readiness::default()),
            client_logs: Arc::new(RepeatFilter::default()),
            cpus: None,
        };
        let empty: Arc<str> = Arc::from("");
        let mut batch = Batch::new(&empty);
        batch.topic = Arc::from("events_raw");
        batch.deadline = deadline;
        batch.data.extend_from_slice(b"k{}");
        batch.records.push(crate::handoff::Record {
            dead_letter: false,
            key: 0..1,
            value: 1..3,
            event_type: 0..0,
            event_id: None,
            event: 0,
            skip: false,
            schema: 0..0,
            overflow: crate::handoff::Overflow::No,
        });
        (factory.create().unwrap(), mailboxes, batch)
    }

    /// Purges the producer's queues and waits (2 s at most) for the
    /// report a purged record gets: whether librdkafka held a record.
    fn purged_report(producer: &Producer, mailbox: &Mailbox) -> bool {
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if mailbox.next_completion().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    // Issue "Retry-safe ingestion": a batch taken from the producer queue
    // after its client was answered 503 (its deadline passed) was still
    // produced, so the client's retry stored its events a second time.
    #[test]
    fn a_batch_past_its_deadline_is_not_produced_in_durable_mode() {
        let logs = RepeatFilter::default();
        let past = Instant::now() - Duration::from_millis(1);
        let (producer, mailboxes, batch) = producer_and_batch(past);
        produce_unless_expired(&producer, batch, true, &mailboxes, &logs);
        let completion = mailboxes[0].next_completion().expect("failed at once");
        assert!(!completion.delivered, "failed, as its client was told");
        // Purging librdkafka's queues reports every record it holds: none.
        assert!(
            !purged_report(&producer, &mailboxes[0]),
            "handed to librdkafka"
        );
        // In time, or in enqueued mode (its client already has its 202),
        // it is produced: no failure at once, and librdkafka holds it.
        let future = Instant::now() + Duration::from_secs(60);
        for (deadline, durable) in [(future, true), (past, false)] {
            let (producer, mailboxes, batch) = producer_and_batch(deadline);
            produce_unless_expired(&producer, batch, durable, &mailboxes, &logs);
            assert!(
                mailboxes[0].next_completion().is_none(),
                "durable {durable}"
            );
            assert!(purged_report(&producer, &mailboxes[0]), "durable {durable}");
        }
    }

    #[test]
    fn only_producer_id_errors_replace_the_producer() {
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        let sequence = KafkaError::MessageProduction(RDKafkaErrorCode::OutOfOrderSequenceNumber);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(loses_identity(&fenced) && loses_identity(&sequence));
        assert!(!loses_identity(&timed_out) && !loses_identity(&too_large));
    }
}
