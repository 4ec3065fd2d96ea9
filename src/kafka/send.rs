//! Records into librdkafka's queue: their headers, the produce call, and
//! the way an event loop produces its requests' records itself
//! ([`LoopProducer`]) while a producer thread waits out a full queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer as _;

use super::client_log::RepeatFilter;
use super::producer::{written, Producer};
use crate::handoff::{Batch, Completion, Mailbox, Opaque, Record};

/// How long a producer thread waits before retrying a full librdkafka queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// A record's headers (SPEC §2): `tenant_id`, `content-type`,
/// `event_type`, `request_id`, `traceparent`/`tracestate` and `schema`
/// when known, `overflow` (and the original `key` when spread) when
/// rerouted.
fn record_headers(batch: &Batch, record: &Record, spread_key: Option<&[u8]>) -> OwnedHeaders {
    let span =
        |range: &std::ops::Range<usize>| (!range.is_empty()).then(|| &batch.data[range.clone()]);
    let mut headers = OwnedHeaders::new_with_capacity(9)
        .insert(Header {
            key: "tenant_id",
            value: Some(batch.tenant_id.as_bytes()),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
    let optional: [(&str, Option<&[u8]>); 7] = [
        ("event_type", span(&record.event_type)),
        ("request_id", span(&batch.request_id)),
        ("traceparent", span(&batch.traceparent)),
        ("tracestate", span(&batch.tracestate)),
        ("schema", span(&record.schema)),
        ("overflow", record.overflow.reason().map(str::as_bytes)),
        ("key", spread_key),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    headers
}

/// What to do when librdkafka's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    /// Wait for room (a producer thread), up to the batch's deadline.
    WaitUntilDeadline,
    /// Stop at once, leaving the rest to a producer thread (an event loop,
    /// which must not sleep).
    Stop,
}

/// Hands the batch's records from `batch.produced` on to librdkafka, in
/// order, advancing `batch.produced`. A record librdkafka refuses for
/// another reason than a full queue is reported failed to its core. Returns
/// `false` when it stopped at a full queue ([`Room::Stop`]) with records
/// left.
pub(super) fn produce_records(
    producer: &Producer,
    batch: &mut Batch,
    mailbox: &Mailbox,
    client_logs: &RepeatFilter,
    room: Room,
) -> bool {
    while batch.produced < batch.records.len() {
        let index = batch.produced;
        let record = &batch.records[index];
        if record.skip {
            batch.produced += 1;
            continue;
        }
        let opaque = Opaque::new(batch.ticket, index, record.dead_letter);
        let overflow = record.overflow.reason();
        let topic: &str = match (record.dead_letter, overflow) {
            (true, _) => &batch.dead_letter_topic,
            (false, None) => &batch.topic,
            (false, Some(_)) => &batch.overflow_topic,
        };
        // Spread: no key, so the partitioner spreads the key's records
        // over the overflow topic's partitions; the key is kept in a header.
        let spread = overflow.is_some() && batch.overflow_spread;
        let key = &batch.data[record.key.clone()];
        let value = &batch.data[record.value.clone()];
        let mut headers = record_headers(batch, record, spread.then_some(key));
        loop {
            let code = match send_record(
                producer,
                topic,
                (!spread).then_some(key),
                value,
                headers,
                opaque,
            ) {
                Ok(()) => break,
                Err((code, returned)) => {
                    headers = returned;
                    code
                }
            };
            match code {
                RDKafkaErrorCode::QueueFull if room == Room::Stop => return false,
                RDKafkaErrorCode::QueueFull if Instant::now() < batch.deadline => {
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                code => {
                    let kind = format!("produce failed: {code:?}");
                    if let Some(repeated) = written(client_logs.check(&kind, Instant::now())) {
                        tracing::warn!(?code, repeated, "kafka produce failed");
                    }
                    mailbox.complete(Completion::produced(opaque, false));
                    break;
                }
            }
        }
        batch.produced += 1;
    }
    true
}

/// Longest topic name Kafka allows (249 bytes), with room to spare.
const TOPIC_BYTES_MAX: usize = 255;

/// One record into librdkafka's queue: the call rdkafka's
/// `BaseProducer::send` makes (`rd_kafka_producev`, the payload and key
/// copied, the headers handed over on success), but with the topic's name
/// NUL-terminated on the stack rather than in a new `CString`, so that an
/// event loop allocates nothing per record. The opaque is read back by
/// [`DeliveryRouter::delivery`] (rdkafka's `usize` opaque is the pointer's
/// value). On failure the headers come back with librdkafka's code.
pub(super) fn send_record(
    producer: &Producer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: OwnedHeaders,
    opaque: Opaque,
) -> Result<(), (RDKafkaErrorCode, OwnedHeaders)> {
    use rdkafka::bindings as rdsys;
    use rdkafka::bindings::rd_kafka_vtype_t::*;
    use std::ffi::{c_char, c_void};

    // Not a name Kafka accepts (at most 249 bytes, no NUL): refused here,
    // reported failed like any record librdkafka refuses. Names come from
    // the configuration and from key entries, which are checked already.
    if topic.len() > TOPIC_BYTES_MAX || topic.contains('\0') {
        return Err((RDKafkaErrorCode::InvalidTopic, headers));
    }
    let mut name = [0u8; TOPIC_BYTES_MAX + 1];
    name[..topic.len()].copy_from_slice(topic.as_bytes());
    let topic_ptr: *const c_char = name.as_ptr().cast();
    let (key_ptr, key_len) = match key {
        Some(key) => (key.as_ptr() as *mut c_void, key.len()),
        None => (std::ptr::null_mut(), 0),
    };
    // The headers' native handle: `BorrowedHeaders` is librdkafka's
    // headers struct itself.
    let headers_ptr = headers.as_borrowed() as *const _ as *mut rdsys::rd_kafka_headers_t;
    // SAFETY: the arguments are what `rd_kafka_producev` documents for
    // each tag, and every pointer is valid for the call: the name is
    // NUL-terminated, the payload and key are copied (MSG_F_COPY), and
    // the headers are librdkafka's from here only on success (forgotten
    // below), destroyed with `headers` otherwise.
    let code = unsafe {
        rdsys::rd_kafka_producev(
            producer.client().native_ptr(),
            RD_KAFKA_VTYPE_TOPIC,
            topic_ptr,
            RD_KAFKA_VTYPE_PARTITION,
            -1i32, // RD_KAFKA_PARTITION_UA: the partitioner chooses
            RD_KAFKA_VTYPE_MSGFLAGS,
            rdsys::RD_KAFKA_MSG_F_COPY,
            RD_KAFKA_VTYPE_VALUE,
            value.as_ptr() as *mut c_void,
            value.len(),
            RD_KAFKA_VTYPE_KEY,
            key_ptr,
            key_len,
            RD_KAFKA_VTYPE_OPAQUE,
            opaque.0 as *mut c_void,
            RD_KAFKA_VTYPE_TIMESTAMP,
            0i64,
            RD_KAFKA_VTYPE_HEADERS,
            headers_ptr,
            RD_KAFKA_VTYPE_END,
        )
    };
    if code == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        std::mem::forget(headers);
        Ok(())
    } else {
        Err((code.into(), headers))
    }
}

/// A core's own way into librdkafka: the records of a request are handed
/// to the producer from the event loop that built them (librdkafka's
/// produce call is thread-safe and never blocks), so no thread is woken
/// per request; a producer thread takes over only what a full queue left.
/// The producer is read at each call, so a replaced one is used at once.
pub struct LoopProducer {
    pub(super) slot: Arc<ArcSwap<Producer>>,
    pub(super) client_logs: Arc<RepeatFilter>,
}

impl LoopProducer {
    /// Produces `batch` (whose in-flight slot is reserved) from the calling
    /// thread, reporting to `mailbox` (its core's). `true`: every record
    /// is librdkafka's (or reported failed), and the batch may be pooled.
    /// `false`: librdkafka's queue is full; the records from
    /// `batch.produced` on are still to be produced.
    pub fn produce(&self, batch: &mut Batch, mailbox: &Mailbox) -> bool {
        let producer = self.slot.load();
        produce_records(&producer, batch, mailbox, &self.client_logs, Room::Stop)
    }
}
