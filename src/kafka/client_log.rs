//! Warn lines from Kafka clients, once per change. librdkafka repeats a
//! failing broker's error on every reconnect attempt, from every producer
//! and for every broker connection, and a dead broker fails every record:
//! logged as they come, an outage wrote 460 lines in 20 s (about 80,000
//! an hour). A [`RepeatFilter`] lets the first line of a kind through (a
//! state change), then at most one line a [`REPEAT_INTERVAL`] for the same
//! kind, saying how many it stands for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ahash::AHashMap;

/// At most one line per kind this often while it repeats; a kind not seen
/// for this long is new again (a new state) when it comes back.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Kinds remembered at once; beyond it, kinds quiet for
/// [`REPEAT_INTERVAL`] are forgotten first, so memory stays bounded.
pub const KINDS_MAX: usize = 1024;

/// Whether to write a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it: the first of its kind (or the first after a quiet spell).
    First,
    /// Write it, with how many lines of its kind were held back since the
    /// last one written.
    Repeat(u64),
    /// Hold it back (counted).
    Suppress,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    written_at: Instant,
    seen_at: Instant,
    held_back: u64,
}

/// Shared by every Kafka client of the process (their log callbacks run on
/// librdkafka's threads, never on an event loop: the mutex is theirs).
#[derive(Debug, Default)]
pub struct RepeatFilter {
    kinds: Mutex<AHashMap<String, Seen>>,
}

impl RepeatFilter {
    /// The verdict for a line of `kind` at `now`.
    pub fn check(&self, kind: &str, now: Instant) -> Verdict {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = kinds.get_mut(kind) {
            let quiet = now.saturating_duration_since(seen.seen_at) >= REPEAT_INTERVAL;
            seen.seen_at = now;
            if quiet {
                seen.written_at = now;
                seen.held_back = 0;
                return Verdict::First;
            }
            if now.saturating_duration_since(seen.written_at) >= REPEAT_INTERVAL {
                seen.written_at = now;
                return Verdict::Repeat(std::mem::take(&mut seen.held_back));
            }
            seen.held_back += 1;
            return Verdict::Suppress;
        }
        if kinds.len() >= KINDS_MAX {
            kinds.retain(|_, seen| now.saturating_duration_since(seen.seen_at) < REPEAT_INTERVAL);
            if kinds.len() >= KINDS_MAX {
                kinds.clear();
            }
        }
        let seen = Seen {
            written_at: now,
            seen_at: now,
            held_back: 0,
        };
        kinds.insert(kind.to_string(), seen);
        Verdict::First
    }
}

/// A librdkafka message's kind: its text without numbers (ports, broker
/// ids, milliseconds, counts) and without the "(after …)" detail, so that
/// one broker's reconnect attempts are one kind.
pub fn kind_of(facility: &str, message: &str) -> String {
    let message = message.split(" (after ").next().unwrap_or(message);
    let mut kind = String::with_capacity(facility.len() + 1 + message.len());
    kind.push_str(facility);
    kind.push(' ');
    kind.extend(message.chars().filter(|c| !c.is_ascii_digit()));
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_written_once_then_once_a_minute_with_a_count() {
        let filter = RepeatFilter::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(filter.check("down", at(0)), Verdict::First);
        for second in 1..60 {
            assert_eq!(filter.check("down", at(second)), Verdict::Suppress);
        }
        assert_eq!(filter.check("down", at(60)), Verdict::Repeat(59));
        assert_eq!(filter.check("other", at(61)), Verdict::First, "a new kind");
        // Quiet for a minute: the next one is a new state.
        assert_eq!(filter.check("down", at(125)), Verdict::First);
    }

    #[test]
    fn reconnect_attempts_of_one_broker_are_one_kind() {
        let first = kind_of(
            "FAIL",
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)",
        );
        let again = kind_of(
            "FAIL",
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 12ms in state CONNECT, 4 identical error(s) suppressed)",
        );
        assert_eq!(first, again);
        assert_ne!(
            first,
            kind_of("FAIL", "127.0.0.1:9092/bootstrap: SSL handshake failed")
        );
    }

    #[test]
    fn memory_is_bounded() {
        let filter = RepeatFilter::default();
        let now = Instant::now();
        for index in 0..(3 * KINDS_MAX) {
            filter.check(&format!("kind {index}"), now);
        }
        assert!(filter.kinds.lock().unwrap().len() <= KINDS_MAX);
    }
}
