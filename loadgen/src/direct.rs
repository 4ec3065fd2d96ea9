//! `--direct-kafka BROKERS`: the same events produced straight to Kafka by
//! librdkafka with sluice's producer settings (acks=all, idempotence,
//! linger.ms 1, lz4), open loop at `--rate`, each timed from its intended
//! send to its delivery report. This is the broker round trip a durable
//! sluice answer waits on; run beside sluice at the same rate, the
//! difference is what sluice adds (HTTP, validation, queueing, hand-off).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::client::{Totals, LATENCY_MAX_US};
use crate::events::Generator;
use crate::{Args, Summary};

/// Delivery reports: each record's intended send time travels as its
/// opaque (microseconds since the run's start).
struct Timing {
    start: Instant,
    measure_from_us: u64,
    totals: Mutex<Totals>,
}

impl ClientContext for Timing {}

impl ProducerContext for Timing {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, intended_us: Self::DeliveryOpaque) {
        let intended_us = *intended_us;
        if intended_us < self.measure_from_us {
            return;
        }
        let now_us = self.start.elapsed().as_micros() as u64;
        let latency = now_us.saturating_sub(intended_us).clamp(1, LATENCY_MAX_US);
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let _ = totals.histogram.record(latency);
        let (status, ok) = if result.is_ok() {
            (202, true)
        } else {
            (503, false)
        };
        *totals.statuses.entry(status).or_default() += 1;
        if ok {
            totals.ok += 1;
            totals.events_ok += 1;
        } else {
            totals.errors += 1;
        }
    }
}

/// Produces at `args.rate` to `brokers` for the warm-up and the measured
/// time; returns the summary as loadgen prints it (status 202 = stored).
pub fn run(args: &Args, brokers: &str) -> anyhow::Result<Summary> {
    anyhow::ensure!(args.rate > 0.0, "--direct-kafka needs --rate");
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let context = Timing {
        start,
        measure_from_us: warmup.as_micros() as u64,
        totals: Mutex::new(Totals::new()),
    };
    let producer: BaseProducer<Timing> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create_with_context(context)
        .context("creating the Kafka producer")?;
    if let Some(cpu) = args.cpu.first() {
        core_affinity::set_for_current(core_affinity::CoreId { id: *cpu });
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut generator = Generator::new(0x5eed ^ start.elapsed().as_nanos() as u64);
    let mut value = Vec::with_capacity(512);
    let mut next = start;
    let stop = start + warmup + duration;
    let mut sent = 0u64;
    let mut retry: VecDeque<(Vec<u8>, u64)> = VecDeque::new();
    while Instant::now() < stop {
        let now = Instant::now();
        while next <= now && next < stop {
            value.clear();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64);
            generator.event(&mut value, now_ms);
            let intended_us = next.duration_since(start).as_micros() as u64;
            retry.push_back((value.clone(), intended_us));
            next += interval;
        }
        while let Some((payload, intended_us)) = retry.pop_front() {
            let record = BaseRecord::with_opaque_to(&args.topic, Box::new(intended_us))
                .payload(&payload)
                .key(&payload[..16]);
            match producer.send(record) {
                Ok(()) => {
                    if intended_us >= warmup.as_micros() as u64 {
                        sent += 1;
                    }
                }
                Err(_) => {
                    // Queue full: poll and try again (the wait counts in
                    // its latency, as it would for sluice).
                    retry.push_front((payload, intended_us));
                    break;
                }
            }
        }
        producer.poll(Duration::ZERO);
        let wait = next.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            producer.poll(wait.min(Duration::from_micros(200)));
        }
    }
    let _ = producer.flush(Duration::from_secs(30));
    let mut totals = std::mem::take(
        &mut *producer
            .context()
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    totals.sent = sent;
    Ok(Summary::new(args, &totals, duration, None))
}
