//! Dedicated producer threads. Each owns one librdkafka producer, takes
//! request batches from the shared bounded channel, and produces their
//! records; librdkafka's poll thread reports every delivery to the owning
//! core's mailbox.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

use super::handoff::{Batch, Completion, Mailbox, Opaque};
use crate::config::Config;
use crate::metrics::Metrics;

/// How long a producer thread waits before retrying a full librdkafka queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// Routes delivery reports to the cores.
pub struct DeliveryRouter {
    mailboxes: Arc<[Arc<Mailbox>]>,
    metrics: Arc<Metrics>,
}

impl ClientContext for DeliveryRouter {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            _ => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl ProducerContext for DeliveryRouter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let opaque = Opaque(opaque);
        let delivered = result.is_ok();
        if let Err((error, _)) = result {
            self.metrics.delivery_failed(opaque.is_dead_letter());
            tracing::debug!(%error, "delivery failed");
        }
        self.mailboxes[opaque.ticket().core].complete(Completion { opaque, delivered });
    }
}

pub type Producer = ThreadedProducer<DeliveryRouter>;

/// The librdkafka configuration sluice runs with.
pub fn client_config(config: &Config, brokers: &str) -> ClientConfig {
    let kafka = &config.kafka;
    let mut client = ClientConfig::new();
    let request_timeout_ms = config.server.delivery_timeout_ms.min(30_000);
    client
        .set("bootstrap.servers", brokers)
        .set("client.id", "sluice")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", kafka.linger_ms.to_string())
        .set("batch.size", kafka.batch_bytes.to_string())
        .set("compression.type", &kafka.compression)
        .set(
            "message.timeout.ms",
            config.server.delivery_timeout_ms.to_string(),
        )
        .set("request.timeout.ms", request_timeout_ms.to_string())
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("reconnect.backoff.max.ms", "1000");
    for (name, value) in &kafka.properties {
        client.set(name, value);
    }
    client
}

/// The running producer threads.
pub struct ProducerPool {
    producers: Vec<Arc<Producer>>,
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
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<ProducerPool> {
        let mut producers = Vec::new();
        let mut threads = Vec::new();
        let closing = Arc::new(AtomicBool::new(false));
        for index in 0..config.kafka.producer_threads {
            let router = DeliveryRouter {
                mailboxes: mailboxes.clone(),
                metrics: metrics.clone(),
            };
            let producer: Producer = client_config(config, brokers)
                .create_with_context(router)
                .context("creating the Kafka producer")?;
            let producer = Arc::new(producer);
            let (thread_producer, thread_batches, thread_mailboxes, thread_closing) = (
                producer.clone(),
                batches.clone(),
                mailboxes.clone(),
                closing.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("sluice-producer-{index}"))
                .spawn(move || loop {
                    match thread_batches.recv_timeout(CLOSING_POLL_INTERVAL) {
                        Ok(batch) => produce(&thread_producer, batch, &thread_mailboxes),
                        Err(RecvTimeoutError::Timeout)
                            if !thread_closing.load(Ordering::Relaxed) => {}
                        Err(_) => break,
                    }
                })
                .context("spawning a producer thread")?;
            producers.push(producer);
            threads.push(thread);
        }
        Ok(ProducerPool {
            producers,
            threads,
            closing,
        })
    }

    /// A producer whose client the readiness probe can use.
    pub fn probe_client(&self) -> Arc<Producer> {
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
        for producer in &self.producers {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Err(error) = producer.flush(remaining) {
                tracing::error!(%error, "producer did not flush before the drain deadline");
                flushed = false;
            }
        }
        flushed
    }
}

fn produce(producer: &Producer, batch: Batch, mailboxes: &[Arc<Mailbox>]) {
    let mailbox = &mailboxes[batch.ticket.core];
    for record in &batch.records {
        let opaque = Opaque::new(batch.ticket, record.dead_letter);
        let topic: &str = if record.dead_letter {
            &batch.dead_letter_topic
        } else {
            &batch.topic
        };
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "tenant_id",
                value: Some(batch.tenant_id.as_bytes()),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
        if !record.event_type.is_empty() {
            headers = headers.insert(Header {
                key: "event_type",
                value: Some(&batch.data[record.event_type.clone()]),
            });
        }
        let mut pending = BaseRecord::with_opaque_to(topic, opaque.0)
            .key(&batch.data[record.key.clone()])
            .payload(&batch.data[record.value.clone()])
            .headers(headers);
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if Instant::now() < batch.deadline =>
                {
                    pending = returned;
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                Err((error, _)) => {
                    tracing::debug!(%error, "produce failed");
                    mailbox.complete(Completion {
                        opaque,
                        delivered: false,
                    });
                    break;
                }
            }
        }
    }
    mailbox.recycle(batch);
}
