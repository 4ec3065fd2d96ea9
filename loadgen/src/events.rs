//! Realistic ~300-byte events with varied users and unique event ids.

use std::io::Write as _;

const EVENT_TYPES: [&str; 5] = ["page_view", "click", "add_to_cart", "checkout", "search"];
const USERS: u64 = 100_000;

/// A fast per-connection generator (wyrand); ids need uniqueness, not secrecy.
pub struct Generator {
    state: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let product = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((product >> 64) as u64) ^ (product as u64)
    }

    /// Appends one event with a fresh UUIDv4-shaped event_id.
    pub fn event(&mut self, out: &mut Vec<u8>, now_ms: u64) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let id = (u128::from(self.next()) << 64) | u128::from(self.next());
        let mut hex = [0u8; 32];
        for (index, digit) in hex.iter_mut().enumerate() {
            *digit = HEX[((id >> (124 - 4 * index)) & 0xf) as usize];
        }
        hex[12] = b'4';
        hex[16] = b'a';
        let text = std::str::from_utf8(&hex).expect("hex digits");
        let user = self.next() % USERS;
        let kind = EVENT_TYPES[(self.next() % EVENT_TYPES.len() as u64) as usize];
        let detail = self.next();
        let _ = write!(
            out,
            r#"{{"event_id":"{}-{}-{}-{}-{}","user_id":"user_{user}","event_type":"{kind}","event_time":{now_ms},"experiment_id":"exp_{}","variant":"{}","properties":{{"page":"/products/{}","referrer":"https://www.example.com/search?q=running+shoes","session_id":"{:016x}","value":{}.{:02},"items":[{},{},{}]}}}}"#,
            &text[0..8],
            &text[8..12],
            &text[12..16],
            &text[16..20],
            &text[20..32],
            detail % 50,
            if detail & 1 == 0 { "A" } else { "B" },
            detail % 10_000,
            detail.rotate_left(17),
            detail % 1_000,
            detail % 100,
            detail % 97,
            detail % 89,
            detail % 83,
        );
    }

    /// Appends a request body of `events` events (0 = one bare event);
    /// pushes every event_id to `ids`.
    pub fn body(
        &mut self,
        events: usize,
        ndjson: bool,
        out: &mut Vec<u8>,
        ids: &mut Vec<u128>,
        now_ms: u64,
    ) {
        if events == 0 {
            let start = out.len();
            self.event(out, now_ms);
            ids.push(event_id_of(&out[start..]).expect("generated events carry an id"));
            return;
        }
        if !ndjson {
            out.extend_from_slice(b"{\"events\":[");
        }
        for index in 0..events {
            if index > 0 {
                out.push(if ndjson { b'\n' } else { b',' });
            }
            let start = out.len();
            self.event(out, now_ms);
            ids.push(event_id_of(&out[start..]).expect("generated events carry an id"));
        }
        out.extend_from_slice(if ndjson { b"\n" } else { b"]}" });
    }
}

/// The event_id of a JSON event or record value, as a 128-bit number.
pub fn event_id_of(json: &[u8]) -> Option<u128> {
    const FIELD: &[u8] = b"\"event_id\":\"";
    let start = json
        .windows(FIELD.len())
        .position(|window| window == FIELD)?
        + FIELD.len();
    let text = json.get(start..start + 36)?;
    let mut id = 0u128;
    for &byte in text {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'-' => continue,
            _ => return None,
        };
        id = id << 4 | u128::from(digit);
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_of_realistic_size_with_readable_ids() {
        let mut generator = Generator::new(1);
        let mut body = Vec::new();
        let mut ids = Vec::new();
        generator.body(0, false, &mut body, &mut ids, 1_710_000_000_000);
        assert!((250..=350).contains(&body.len()), "{} bytes", body.len());
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.starts_with("{\"event_id\":\"") && text.ends_with("]}}"),
            "{text}"
        );
        assert_eq!(ids.len(), 1);
        assert_eq!(event_id_of(&body), Some(ids[0]));
        let mut batch = Vec::new();
        generator.body(3, true, &mut batch, &mut ids, 1_710_000_000_000);
        assert_eq!(batch.iter().filter(|&&b| b == b'\n').count(), 3);
        assert_eq!(ids.len(), 4);
        assert_ne!(ids[1], ids[2]);
    }
}
