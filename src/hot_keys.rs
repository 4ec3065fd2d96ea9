//! Hot keys (SPEC §17): which record keys (`<tenant_id>:<user_id>`) are
//! over `overflow.key_events_per_second`, judged per event with no lock,
//! no allocation and no system call, in a table of fixed size shared by
//! every core of the instance.
//!
//! Each key is a GCRA (the rate limiter's algorithm, `tenancy/rate.rs`):
//! its event conforms while its schedule runs at most `key_burst` events
//! ahead of the clock. An event that does not conform puts the key over
//! the rate; a key is *overflowing* from then until it has sent no
//! non-conforming event for `overflow.dwell_ms`, and all its events go to
//! the overflow topic meanwhile (hysteresis: no flapping at the edge).
//! A non-conforming event does not advance the schedule, so what "under
//! the rate" means does not depend on how far over the key was.
//!
//! # Memory and error
//!
//! The table holds [`TRACKED_KEYS`] entries of 16 bytes (1 MiB), in sets
//! of [`WAYS`] that fill one 64-byte cache line, chosen by the key's
//! 64-bit fingerprint under a per-process seed. An entry is two 64-bit
//! words, each tagged with 16 bits of the fingerprint (0: empty): the
//! *schedule* (the key's GCRA schedule, µs since the table's epoch) and
//! the *last time over* (ms + 1; 0: never), which counts only while its
//! tag is the schedule's. A judgment reads the set's four schedule words
//! (one cache line, plain loads), changes the key's schedule by one
//! compare-and-swap, and writes the time over only when the key is over
//! the rate (once a millisecond at most). Times are 48 bits: 8.9 years
//! of uptime. Whatever the number of distinct keys, that is all the
//! memory it takes.
//!
//! A key without an entry takes one in its set: an empty one, else the
//! one with the least *fill* (how far its schedule runs ahead of now).
//! An entry is never taken while its key is overflowing or its fill is at
//! least [`PROTECTED_EVENTS`] events (the heavy hitters; the replacement
//! rule of a space-saving sketch, with decay by the clock). So:
//! - a flood of distinct keys, each sending a little, only ever takes
//!   entries from one another: it cannot make the table forget a key that
//!   is over the rate (its fill is past the threshold, or it overflows);
//! - a key that loses its entry had at most [`PROTECTED_EVENTS`] events
//!   of fill: judged afresh, it may send that many more events before it
//!   is found over the rate (the only false negative besides the next);
//! - a key finds no entry to take only when every entry of its set is
//!   protected, that is when [`WAYS`] other keys of its set are each at or
//!   over the rate: its events stay on their partition and are counted
//!   (`sluice_overflow_untracked_events_total`). With k keys at the rate
//!   spread over 16,384 sets, that takes 5 in one set: the chance that
//!   any set has them is about k^5 / (120 × 16,384^4), 10^-9 for k = 100
//!   and 10^-4 for k = 1,000;
//! - two keys are confused only when they share a set and a 16-bit tag:
//!   at most [`WAYS`] / 2^16 per event (6 in 10^5), and then the event
//!   borrows the other key's judgment (a reroute only if that key is
//!   overflowing: at most one event in 2^30 per key overflowing) and adds
//!   one event to its schedule;
//! - rates are kept in whole microseconds: above 10,000 a second a key's
//!   rate is rounded up by less than 10 % (`overflow.key_events_per_second`
//!   is at most 100,000).
//!
//! The unit test `a_million_distinct_keys_do_not_hide_a_hot_one` holds
//! these up against a million distinct keys and one hot key.

use std::hash::BuildHasher as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::time::Instant;

use crate::config::OverflowConfig;

/// Entries of the table: 16 bytes each, 1 MiB in all.
pub const TRACKED_KEYS: usize = 1 << 16;
/// Entries per set (one 64-byte cache line); a key lives in one set.
pub const WAYS: usize = 4;
/// Fill, in events at the key's rate, past which an entry is not taken
/// by another key (the burst, when that is smaller).
pub const PROTECTED_EVENTS: u64 = 2;
/// Compare-and-swap attempts before an event is let through unjudged
/// (only under a pile of races on one set).
const ATTEMPTS_MAX: usize = 4;
/// Times are microseconds (the schedule) and milliseconds (the last time
/// over) since the table's epoch, 48 bits each: 8.9 years of uptime.
const TIME_MAX: u64 = (1 << 48) - 1;
const TAG_BITS: u32 = 16;
const MICROS_PER_SECOND: u64 = 1_000_000;

/// The verdict on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// To its key's partition.
    Stay,
    /// To the overflow topic: the key is over the rate (or was, within
    /// the dwell).
    Rate,
    /// To the overflow topic: the key is in `overflow.force_keys`.
    Forced,
    /// To its partition, unjudged: no entry of its set could be taken.
    Untracked,
}

/// A word of an entry: tag (16 bits, low) | time (48).
fn pack(tag: u16, time: u64) -> u64 {
    u64::from(tag) | time.min(TIME_MAX) << TAG_BITS
}

fn tag_of(word: u64) -> u16 {
    word as u16
}

fn time_of(word: u64) -> u64 {
    word >> TAG_BITS
}

/// One cache line: the schedules of its four entries, then their last
/// times over (way `i` is `schedules[i]` and `overs[i]`).
#[repr(C, align(64))]
struct Set {
    schedules: [AtomicU64; WAYS],
    overs: [AtomicU64; WAYS],
}

impl Set {
    /// Way `way`'s last time over (ms + 1), when it is `tag`'s; else 0.
    fn over_ms(&self, way: usize, tag: u16) -> u64 {
        let word = self.overs[way].load(Relaxed);
        if tag_of(word) == tag {
            time_of(word)
        } else {
            0
        }
    }
}

/// The keys of `overflow.force_keys`, by fingerprint (sorted), then
/// compared whole.
struct Forced(Vec<(u64, Box<[u8]>)>);

impl Forced {
    fn contains(&self, fingerprint: u64, key: &[u8]) -> bool {
        let start = self.0.partition_point(|(print, _)| *print < fingerprint);
        self.0[start..]
            .iter()
            .take_while(|(print, _)| *print == fingerprint)
            .any(|(_, forced)| **forced == *key)
    }
}

/// The hot-key detector of one instance, shared by its cores.
pub struct HotKeys {
    sets: Box<[Set]>,
    hasher: ahash::RandomState,
    forced: Forced,
    interval_us: u64,
    tolerance_us: u64,
    protected_us: u64,
    dwell_ms: u64,
    epoch: Instant,
}

impl HotKeys {
    /// The detector `overflow.*` describes (its table allocated whole).
    pub fn new(config: &OverflowConfig) -> HotKeys {
        HotKeys::with_seed(config, rand_seed())
    }

    /// [`HotKeys::new`] with a given hash seed (tests).
    pub fn with_seed(config: &OverflowConfig, seed: u64) -> HotKeys {
        let hasher = ahash::RandomState::with_seeds(seed, seed ^ 0x9e37_79b9, 17, 29);
        let mut forced: Vec<(u64, Box<[u8]>)> = config
            .force_keys
            .iter()
            .map(|key| (hasher.hash_one(key.as_bytes()), key.as_bytes().into()))
            .collect();
        forced.sort();
        // Whole microseconds: rates above 10,000 a second are rounded up
        // by less than 10 % (bounded at 100,000 in config/bounds.rs).
        let interval_us = (MICROS_PER_SECOND / config.key_events_per_second.max(1)).max(1);
        let tolerance_us = interval_us.saturating_mul(config.key_burst.max(1));
        let empty = || std::array::from_fn(|_| AtomicU64::new(0));
        HotKeys {
            sets: (0..TRACKED_KEYS / WAYS)
                .map(|_| Set {
                    schedules: empty(),
                    overs: empty(),
                })
                .collect(),
            hasher,
            forced: Forced(forced),
            interval_us,
            tolerance_us,
            protected_us: tolerance_us.min(interval_us.saturating_mul(PROTECTED_EVENTS)),
            dwell_ms: config.dwell_ms,
            epoch: Instant::now(),
        }
    }

    fn micros(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_micros() as u64).min(TIME_MAX)
    }

    /// Judges one event of `key` at `now` (the core's clock reading).
    pub fn judge(&self, key: &[u8], now: Instant) -> Judged {
        let fingerprint = self.hasher.hash_one(key);
        if !self.forced.0.is_empty() && self.forced.contains(fingerprint, key) {
            return Judged::Forced;
        }
        let now_us = self.micros(now);
        let set = &self.sets[(fingerprint as usize) & (self.sets.len() - 1)];
        // The tag is the fingerprint's top bits; the set took its bottom.
        let tag = ((fingerprint >> (64 - TAG_BITS)) as u16).max(1);
        for _ in 0..ATTEMPTS_MAX {
            if let Some(judged) = self.attempt(set, tag, now_us) {
                return judged;
            }
        }
        Judged::Untracked
    }

    /// One pass over the set: the key's entry updated, or a new one
    /// taken; `None` when a race changed an entry under it.
    fn attempt(&self, set: &Set, tag: u16, now_us: u64) -> Option<Judged> {
        let now_ms = now_us / 1_000;
        let words: [u64; WAYS] = std::array::from_fn(|way| set.schedules[way].load(Relaxed));
        if let Some(way) = words.iter().position(|&word| tag_of(word) == tag) {
            return self.step(set, way, words[way], now_us, now_ms);
        }
        // No entry: take the lightest one that may be taken.
        let mut lightest: Option<(usize, u64)> = None;
        for (way, &word) in words.iter().enumerate() {
            if let Some(fill) = self.takeable(set, way, word, now_us, now_ms) {
                if lightest.is_none_or(|(_, least)| fill < least) {
                    lightest = Some((way, fill));
                }
                if fill == 0 {
                    break;
                }
            }
        }
        let Some((way, _)) = lightest else {
            return Some(Judged::Untracked);
        };
        // A first event always conforms (the burst is at least 1).
        let fresh = pack(tag, now_us + self.interval_us);
        set.schedules[way]
            .compare_exchange(words[way], fresh, AcqRel, Relaxed)
            .ok()
            .map(|_| Judged::Stay)
    }

    /// One more event of the key whose schedule is `word`, in way `way`:
    /// the verdict, once the schedule is advanced (conforming) or the
    /// time over written (not).
    fn step(&self, set: &Set, way: usize, word: u64, now_us: u64, now_ms: u64) -> Option<Judged> {
        let tag = tag_of(word);
        let over_ms = set.over_ms(way, tag);
        let next_us = time_of(word).max(now_us) + self.interval_us;
        if next_us - now_us <= self.tolerance_us {
            let judged = if self.overflowing(over_ms, now_ms) {
                Judged::Rate
            } else {
                Judged::Stay
            };
            return set.schedules[way]
                .compare_exchange(word, pack(tag, next_us), AcqRel, Relaxed)
                .ok()
                .map(|_| judged);
        }
        // Over the rate: the schedule stays; the time over is now (one
        // write a millisecond at most). Should another key have taken the
        // entry meanwhile, the word is not its (tag) and counts for nobody.
        if over_ms != now_ms + 1 {
            set.overs[way].store(pack(tag, now_ms + 1), Relaxed);
        }
        Some(Judged::Rate)
    }

    /// Whether a key last over at `over_ms` (ms + 1; 0: never) is
    /// overflowing at `now_ms` (within the dwell).
    fn overflowing(&self, over_ms: u64, now_ms: u64) -> bool {
        over_ms != 0 && now_ms < (over_ms - 1).saturating_add(self.dwell_ms)
    }

    /// `Some(fill)` when another key may take way `way` (its schedule
    /// `word`): empty, or its key neither overflowing nor filled past the
    /// protection.
    fn takeable(&self, set: &Set, way: usize, word: u64, now_us: u64, now_ms: u64) -> Option<u64> {
        let tag = tag_of(word);
        if tag == 0 {
            return Some(0);
        }
        let fill = time_of(word).saturating_sub(now_us);
        (fill < self.protected_us && !self.overflowing(set.over_ms(way, tag), now_ms))
            .then_some(fill)
    }

    /// Keys overflowing for their rate now (a scrape's scan: 1 MiB).
    pub fn overflowing_keys(&self, now: Instant) -> u64 {
        let now_ms = self.micros(now) / 1_000;
        let mut overflowing = 0;
        for set in &self.sets {
            for way in 0..WAYS {
                let tag = tag_of(set.schedules[way].load(Relaxed));
                if tag != 0 && self.overflowing(set.over_ms(way, tag), now_ms) {
                    overflowing += 1;
                }
            }
        }
        overflowing
    }

    /// Keys of `overflow.force_keys`.
    pub fn forced_keys(&self) -> usize {
        self.forced.0.len()
    }
}

/// A per-process hash seed, so nobody can aim keys at one set.
fn rand_seed() -> u64 {
    use std::hash::Hasher as _;
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(crate::clock::now_ms());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(rate: u64, burst: u64, dwell_ms: u64) -> OverflowConfig {
        OverflowConfig {
            topic: "overflow".into(),
            key_events_per_second: rate,
            key_burst: burst,
            dwell_ms,
            ..OverflowConfig::default()
        }
    }

    #[test]
    fn words_pack_and_unpack_and_a_set_is_one_line() {
        for (tag, time) in [(1, 0), (u16::MAX, TIME_MAX), (77, 123_456_789)] {
            let word = pack(tag, time);
            assert_eq!((tag_of(word), time_of(word)), (tag, time));
        }
        assert_eq!(time_of(pack(3, u64::MAX)), TIME_MAX, "times saturate");
        assert_eq!(std::mem::size_of::<Set>(), 64);
        assert_eq!(std::mem::align_of::<Set>(), 64);
    }

    // The last time over counts for the key whose tag it carries, and only
    // while that key holds the entry: a key that takes over an entry (or
    // finds a stale word beside its own) is judged on its own schedule.
    #[test]
    fn a_time_over_counts_only_for_its_key() {
        let keys = HotKeys::with_seed(&config(100, 5, 60_000), 13);
        let now = keys.epoch + Duration::from_secs(1);
        let key = b"t:calm";
        let fingerprint = keys.hasher.hash_one(key);
        let set = &keys.sets[(fingerprint as usize) & (keys.sets.len() - 1)];
        let tag = ((fingerprint >> (64 - TAG_BITS)) as u16).max(1);
        let now_ms = keys.micros(now) / 1_000;
        // Every way's time over is recent, but another key's.
        for over in &set.overs {
            over.store(pack(tag ^ 0x8000, now_ms), Relaxed);
        }
        assert_eq!(keys.judge(key, now), Judged::Stay);
        assert_eq!(keys.judge(key, now), Judged::Stay);
        assert_eq!(keys.overflowing_keys(now), 0);
        // Its own, recent: overflowing.
        let way = (0..WAYS)
            .find(|&way| tag_of(set.schedules[way].load(Relaxed)) == tag)
            .unwrap();
        set.overs[way].store(pack(tag, now_ms + 1), Relaxed);
        assert_eq!(keys.judge(key, now), Judged::Rate);
        assert_eq!(keys.overflowing_keys(now), 1);
    }

    #[test]
    fn a_key_overflows_past_its_burst_and_returns_after_the_dwell() {
        // 100 a second (10 ms apart), burst 5, dwell 1 s.
        let keys = HotKeys::with_seed(&config(100, 5, 1_000), 7);
        let start = keys.epoch + Duration::from_secs(1);
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Ten at once: five conform, the rest overflow.
        let verdicts: Vec<Judged> = (0..10).map(|_| keys.judge(b"t:hot", at(0))).collect();
        assert_eq!(&verdicts[..5], &[Judged::Stay; 5]);
        assert_eq!(&verdicts[5..], &[Judged::Rate; 5]);
        assert_eq!(keys.overflowing_keys(at(0)), 1);
        // Under the rate from then on (one event every 20 ms): still
        // overflowing for the dwell, back after it.
        let mut back_at = None;
        for step in 1..100 {
            let ms = step * 20;
            if keys.judge(b"t:hot", at(ms)) == Judged::Stay && back_at.is_none() {
                back_at = Some(ms);
            }
        }
        assert_eq!(back_at, Some(1_000), "back at the end of the dwell");
        assert_eq!(keys.overflowing_keys(at(2_000)), 0);
        // Another key was never touched.
        assert_eq!(keys.judge(b"t:calm", at(2_000)), Judged::Stay);
    }

    #[test]
    fn at_the_rate_a_key_stays_and_over_it_keeps_overflowing() {
        let keys = HotKeys::with_seed(&config(100, 3, 500), 9);
        let start = keys.epoch + Duration::from_secs(1);
        // Exactly the rate for 10 s: never over.
        for step in 0..1_000 {
            let now = start + Duration::from_millis(step * 10);
            assert_eq!(keys.judge(b"t:steady", now), Judged::Stay, "event {step}");
        }
        // 1.5 times the rate: over, and overflowing until it stops.
        let over: Vec<Judged> = (0..300)
            .map(|step| keys.judge(b"t:fast", start + Duration::from_micros(step * 6_667)))
            .collect();
        let first_over = over.iter().position(|&j| j == Judged::Rate).unwrap();
        assert!(first_over < 20, "{first_over}");
        assert!(over[first_over..].iter().all(|&j| j == Judged::Rate));
    }

    #[test]
    fn forced_keys_always_overflow() {
        let mut config = config(1_000, 1_000, 0);
        config.force_keys = vec!["t:bot".into(), "u:shared".into()];
        let keys = HotKeys::with_seed(&config, 3);
        let now = keys.epoch;
        assert_eq!(keys.judge(b"t:bot", now), Judged::Forced);
        assert_eq!(keys.judge(b"u:shared", now), Judged::Forced);
        assert_eq!(keys.judge(b"t:bo", now), Judged::Stay);
        assert_eq!(keys.judge(b"u:bot", now), Judged::Stay);
        assert_eq!(keys.forced_keys(), 2);
    }

    // SPEC §17's bound, and the module's stated error: a million distinct
    // keys (each sending once, 2 million a second) beside one key at 15
    // times the rate. The hot key is found within a few events of its
    // burst, stays overflowing through the flood, and no other key is
    // ever judged over; the table's memory is what it was.
    #[test]
    fn a_million_distinct_keys_do_not_hide_a_hot_one() {
        let rate = 100;
        let burst = 10;
        let keys = HotKeys::with_seed(&config(rate, burst, 60_000), 11);
        assert_eq!(std::mem::size_of::<Set>() * keys.sets.len(), 1 << 20);
        assert_eq!(keys.sets.len() * WAYS, TRACKED_KEYS);
        let start = keys.epoch + Duration::from_secs(1);
        // The hot key at 1,500 a second: one event per 1,333 flood keys
        // (500 ns apart).
        let hot_every = 2_000_000 / (15 * rate as usize);
        let (mut hot_events, mut hot_rerouted, mut first_rerouted) = (0usize, 0usize, None);
        let mut key = Vec::with_capacity(32);
        for index in 0..1_000_000usize {
            let now = start + Duration::from_nanos(500 * index as u64);
            key.clear();
            key.extend_from_slice(b"tenant_a:user_");
            key.extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
            let judged = keys.judge(&key, now);
            assert!(
                matches!(judged, Judged::Stay),
                "distinct key {index} judged {judged:?}"
            );
            if index % hot_every == 0 {
                hot_events += 1;
                if keys.judge(b"tenant_a:hot", now) == Judged::Rate {
                    hot_rerouted += 1;
                    first_rerouted.get_or_insert(hot_events);
                }
            }
        }
        let first = first_rerouted.expect("the hot key was found");
        assert!(
            first <= burst as usize + 2,
            "found at its event {first}, burst {burst}"
        );
        // Once found, never forgotten: every later event overflows.
        assert_eq!(hot_rerouted, hot_events - first + 1, "of {hot_events}");
        assert_eq!(keys.overflowing_keys(start + Duration::from_secs(1)), 1);
        eprintln!(
            "1,000,000 distinct keys: hot key found at its event {first} (burst {burst}), {hot_rerouted} of {hot_events} rerouted; table {} bytes",
            std::mem::size_of::<Set>() * keys.sets.len()
        );
    }

    #[test]
    fn a_full_set_of_heavy_keys_leaves_the_next_one_untracked() {
        let keys = HotKeys::with_seed(&config(10, 100, 60_000), 5);
        let now = keys.epoch + Duration::from_secs(1);
        // Find WAYS + 1 keys of one set.
        let set_of = |key: &[u8]| (keys.hasher.hash_one(key) as usize) & (keys.sets.len() - 1);
        let target = set_of(b"k0");
        let same_set: Vec<Vec<u8>> = (0..)
            .map(|index| format!("k{index}").into_bytes())
            .filter(|key| set_of(key) == target)
            .take(WAYS + 1)
            .collect();
        // Each of the first WAYS sends 3 events at once: fill 3 intervals,
        // protected.
        for key in &same_set[..WAYS] {
            for _ in 0..3 {
                assert_eq!(keys.judge(key, now), Judged::Stay);
            }
        }
        assert_eq!(keys.judge(&same_set[WAYS], now), Judged::Untracked);
        // Once they drain (0.3 s at 10 a second), there is room again.
        let later = now + Duration::from_millis(300);
        assert_eq!(keys.judge(&same_set[WAYS], later), Judged::Stay);
    }
}
