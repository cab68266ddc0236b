//! One pass over the frames that carry an answered call's negotiation — `sdp` and `ice` — the
//! ones relayed by the thousand per second (docs/benchmarks.md, session 12).
//!
//! [`read`] recognises such a frame in its plain form and nothing else: the keys `type`,
//! `call_id`, the payload (`description` for `sdp`, `candidate` for `ice`) and optionally `ref`
//! and `ack`, in any order, each once; no `\u` escape anywhere and no escape in a key, `type`,
//! `call_id` or `ref`; numbers that are plain non-negative integers. In the same pass it checks
//! the payload's shape exactly as [`super::protocol::parse`] does (contract §2.2; W3C WebRTC
//! §4.8.1 `RTCSessionDescriptionInit`, §4.8.2 `RTCIceCandidateInit`; at most 4 extra scalar
//! keys) and finds its bytes, so the relay copies them without a second parse.
//!
//! It never refuses anything: `None` means only "not in the plain form", and the frame then
//! goes through the full parser, which accepts what it accepts and explains what it refuses.
//! Whatever this module accepts, the full parser accepts too, with the same call, payload bytes,
//! `ref` and `ack` (test `tests::agrees_with_the_full_parser`).

use entity::signaling_messages::SignalingKind;

use crate::domain::CallId;

/// A plain `sdp`/`ice` frame, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay<'a> {
    /// `sdp` or `ice`.
    pub kind: SignalingKind,
    /// The call.
    pub call_id: CallId,
    /// The `description` or `candidate` exactly as sent: valid JSON of the required shape
    /// (`null` for an end-of-candidates `ice`).
    pub raw: &'a str,
    /// The client's `ref`, at most [`super::protocol::MAX_REF_CHARS`] characters.
    pub reference: Option<&'a str>,
    /// A piggybacked acknowledgement (docs/protocol.md, "Sequence numbers").
    pub ack: Option<u64>,
}

/// `text` as a plain `sdp`/`ice` frame, or `None` (see the module documentation).
pub fn read(text: &str) -> Option<Relay<'_>> {
    let mut c = Cursor { text, i: 0 };
    c.ws();
    c.eat(b'{')?;
    let (mut kind, mut call_id, mut payload, mut reference, mut ack) =
        (None, None, None, None, None);
    c.ws();
    if c.peek()? != b'}' {
        loop {
            let key = c.plain_str()?;
            c.ws();
            c.eat(b':')?;
            c.ws();
            match key {
                "type" if kind.is_none() => {
                    kind = Some(match c.plain_str()? {
                        "sdp" => SignalingKind::Sdp,
                        "ice" => SignalingKind::Ice,
                        _ => return None,
                    });
                }
                "call_id" if call_id.is_none() => {
                    call_id = Some(CallId(c.plain_str()?.parse().ok()?));
                }
                "ref" if reference.is_none() => {
                    reference = Some(if c.literal("null") {
                        None
                    } else {
                        let r = c.plain_str()?;
                        if r.chars().count() > super::protocol::MAX_REF_CHARS {
                            return None;
                        }
                        Some(r)
                    });
                }
                "ack" if ack.is_none() => {
                    ack = Some(if c.literal("null") {
                        None
                    } else {
                        Some(c.uint()?)
                    });
                }
                "description" | "candidate" if payload.is_none() => {
                    let start = c.i;
                    let valid = if key == "candidate" && c.literal("null") {
                        true
                    } else {
                        c.payload(key == "candidate")?
                    };
                    if !valid {
                        return None;
                    }
                    payload = Some((key, &text[start..c.i]));
                }
                _ => return None,
            }
            c.ws();
            match c.next()? {
                b',' => c.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    } else {
        c.i += 1;
    }
    c.ws();
    if c.i != text.len() {
        return None;
    }
    let kind = kind?;
    let (key, raw) = payload?;
    let expected = match kind {
        SignalingKind::Sdp => "description",
        SignalingKind::Ice => "candidate",
    };
    (key == expected).then_some(Relay {
        kind,
        call_id: call_id?,
        raw,
        reference: reference.flatten(),
        ack: ack.flatten(),
    })
}

/// Most keys beyond the WebRTC ones a payload may carry (as `protocol::MAX_EXTRA_KEYS`).
const MAX_EXTRA_KEYS: usize = 4;

struct Cursor<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// Skips JSON whitespace (RFC 8259 §2: space, tab, line feed, carriage return).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// `word` (`null`, `true`, `false`) here: consumed, true.
    fn literal(&mut self, word: &str) -> bool {
        let hit = self.bytes()[self.i..].starts_with(word.as_bytes());
        if hit {
            self.i += word.len();
        }
        hit
    }

    /// A string without any escape, its contents. `None` on anything else.
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let n = special(&self.bytes()[start..])?;
        if self.bytes()[start + n] != b'"' {
            return None;
        }
        self.i = start + n + 1;
        // Both ends are ASCII quotes: character boundaries.
        Some(&self.text[start..start + n])
    }

    /// Skips a string whose escapes are all of the two-character kind (`\"`, `\\`, `\/`,
    /// `\b`, `\f`, `\n`, `\r`, `\t`; RFC 8259 §7). `None` on `\u` or a raw control character.
    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let n = special(&self.bytes()[self.i..])?;
            self.i += n;
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// A non-negative integer without sign, fraction, exponent or leading zero, fitting u64.
    fn uint(&mut self) -> Option<u64> {
        let digits = self.bytes()[self.i..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let s = &self.bytes()[self.i..self.i + digits];
        if digits == 0 || (digits > 1 && s[0] == b'0') {
            return None;
        }
        if matches!(self.bytes().get(self.i + digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in s {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += digits;
        Some(n)
    }

    /// A flat object whose values are scalars: a candidate (`candidate`) or a description.
    /// `Some(false)` when it is plain but not of the shape (the full parser then explains why).
    fn payload(&mut self, candidate: bool) -> Option<bool> {
        self.eat(b'{')?;
        self.ws();
        // candidate: [candidate, sdpMid, usernameFragment, sdpMLineIndex]; description:
        // [type, sdp].
        let mut seen = [0u8; 4];
        let mut extras = 0;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(false);
        }
        let mut ok = true;
        loop {
            let key = self.plain_str()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let value = self.scalar()?;
            let slot = match (candidate, key) {
                (true, "candidate") => Some((0, value.is_string())),
                (true, "sdpMid") => Some((1, value.is_string() || value == Value::Null)),
                (true, "usernameFragment") => Some((2, value.is_string() || value == Value::Null)),
                (true, "sdpMLineIndex") => Some((
                    3,
                    matches!(value, Value::Null)
                        || matches!(value, Value::Uint(n) if n <= u64::from(u16::MAX)),
                )),
                (false, "type") => Some((0, value == Value::OfferOrAnswer)),
                (false, "sdp") => Some((1, value.is_string())),
                _ => None,
            };
            match slot {
                Some((i, valid)) => {
                    seen[i] += 1;
                    ok &= valid && seen[i] == 1;
                }
                None => {
                    extras += 1;
                    ok &= extras <= MAX_EXTRA_KEYS;
                }
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => break,
                _ => return None,
            }
        }
        Some(ok && seen[0] == 1 && (candidate || seen[1] == 1))
    }

    /// A scalar value; `None` for an object or array (never acceptable in a payload) and for
    /// anything not plain.
    fn scalar(&mut self) -> Option<Value> {
        Some(match self.peek()? {
            b'"' => {
                // `type` must be exactly "offer" or "answer"; its text is compared unescaped.
                let start = self.i;
                self.skip_str()?;
                match &self.text[start..self.i] {
                    "\"offer\"" | "\"answer\"" => Value::OfferOrAnswer,
                    _ => Value::Str,
                }
            }
            b'0'..=b'9' => Value::Uint(self.uint()?),
            _ if self.literal("null") => Value::Null,
            _ if self.literal("true") || self.literal("false") => Value::Bool,
            _ => return None,
        })
    }
}

/// What a payload's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    OfferOrAnswer,
    Str,
    Null,
    Bool,
    Uint(u64),
}

impl Value {
    fn is_string(self) -> bool {
        matches!(self, Value::Str | Value::OfferOrAnswer)
    }
}

/// The index of the first `"`, `\` or control character (below 0x20) in `s`, eight bytes at a
/// time (the last few padded with a byte that is never special).
fn special(s: &[u8]) -> Option<usize> {
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        if let Some(i) = first_special(u64::from_le_bytes(word)) {
            return Some(at + i);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    let mut word = [b' '; 8];
    word[..rest.len()].copy_from_slice(rest);
    first_special(u64::from_le_bytes(word)).map(|i| at + i)
}

/// The index (0 = least significant) of the first special byte of `w`. Each test sets the high
/// bit of a byte that is `"`, `\` or below 0x20 (the "has zero byte" and "has byte less than
/// n" word tricks); a borrow only runs upward, so a false positive only ever sits above a true
/// hit and the lowest bit set is exact.
fn first_special(w: u64) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = w ^ (ONES * u64::from(b'"'));
    let slash = w ^ (ONES * u64::from(b'\\'));
    let hit = ((quote.wrapping_sub(ONES) & !quote)
        | (slash.wrapping_sub(ONES) & !slash)
        | (w.wrapping_sub(ONES * 0x20) & !w))
        & HIGH;
    (hit != 0).then(|| (hit.trailing_zeros() / 8) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::protocol::{ClientMessage, parse};

    const CALL: &str = "7d0b6a52-8f6e-4c1b-9d3a-2f1e0c9b8a71";

    fn ice(candidate: &str) -> String {
        format!(r#"{{"call_id":"{CALL}","candidate":{candidate},"type":"ice"}}"#)
    }

    const CANDIDATE: &str = r#"{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host generation 0 ufrag EsAw network-id 1","sdpMLineIndex":0,"sdpMid":"0","usernameFragment":"EsAw"}"#;

    /// Frames of the kinds browsers and the load generator send, and near misses of each.
    fn seeds() -> Vec<String> {
        vec![
            ice(CANDIDATE),
            ice("null"),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{CANDIDATE},"ref":"r-1","ack":17}}"#
            ),
            format!(
                " {{ \"type\" : \"sdp\" ,\n\t\"call_id\":\"{CALL}\", \"description\": {{\"type\":\"offer\",\"sdp\":\"v=0\\r\\no=- 1 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\n\"}} , \"ack\":null,\"ref\":null}}\r\n"
            ),
            format!(
                r#"{{"type":"sdp","call_id":"{CALL}","description":{{"sdp":"v=0\r\n","type":"answer","x":1,"y":true,"z":null,"w":"s"}}}}"#
            ),
            format!(
                r#"{{"type":"sdp","call_id":"{CALL}","description":{{"type":"pranswer","sdp":"v=0"}}}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"c","sdpMLineIndex":65536}}}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"c","sdpMid":null,"usernameFragment":null,"sdpMLineIndex":null,"a":1,"b":2,"c":3,"d":4}}}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"c","a":1,"b":2,"c":3,"d":4,"e":5}}}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"c\u0041","type":"x","sdp":"y"}}}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"a","candidate":"b"}}}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"a"}},"ack":01}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"a"}},"ack":18446744073709551616}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{{{CALL}}}","candidate":{{"candidate":"a"}},"ack":1.0}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","description":{{"type":"offer","sdp":"x"}},"candidate":null}}"#
            ),
            format!(
                r#"{{"type":"ice","call_id":"{CALL}","candidate":{{"candidate":"a"}},"to":"bob"}}"#
            ),
        ]
    }

    /// A small deterministic generator (xorshift64*), so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `text` with one random edit: a byte dropped, a JSON-significant byte inserted or
    /// replaced, or a span repeated.
    fn mutate(rng: &mut Rng, text: &str) -> String {
        const ALPHABET: &[u8] = b"\"\\{}[],: \t\n\x01\x1f0129-.eEnultrfabcuU/";
        let mut b = text.as_bytes().to_vec();
        if b.is_empty() {
            return String::new();
        }
        let at = rng.below(b.len());
        match rng.below(4) {
            0 => {
                b.remove(at);
            }
            1 => b.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            2 => b[at] = ALPHABET[rng.below(ALPHABET.len())],
            _ => {
                let end = (at + 1 + rng.below(12)).min(b.len());
                let span = b[at..end].to_vec();
                b.splice(at..at, span);
            }
        }
        String::from_utf8(b).unwrap_or_default()
    }

    /// Whatever the fast path accepts, the full parser accepts with the same meaning.
    fn agree(text: &str) -> bool {
        let Some(fast) = read(text) else {
            return false;
        };
        let full = parse(text).unwrap_or_else(|e| {
            panic!(
                "fast path accepted what the full parser refuses ({}): {text}",
                e.message
            )
        });
        let (kind, call_id, raw) = match &full.message {
            ClientMessage::Sdp {
                call_id,
                description,
            } => (SignalingKind::Sdp, *call_id, description.get()),
            ClientMessage::Ice { call_id, candidate } => {
                (SignalingKind::Ice, *call_id, candidate.get())
            }
            other => panic!("fast path read {fast:?}, the full parser {other:?}: {text}"),
        };
        assert_eq!(
            (fast.kind, fast.call_id, fast.raw, fast.reference, fast.ack),
            (kind, call_id, raw, full.reference.as_deref(), full.ack),
            "{text}"
        );
        true
    }

    #[test]
    fn agrees_with_the_full_parser() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for seed in seeds() {
            agree(&seed);
            // Chains of edits from each seed: most break the frame, some keep it plain and
            // valid, some make it valid but not plain.
            for _ in 0..2000 {
                let mut text = seed.clone();
                for _ in 0..1 + rng.below(3) {
                    text = mutate(&mut rng, &text);
                    accepted += usize::from(agree(&text));
                }
            }
        }
        // The generator does reach the accepting side (the test would prove nothing otherwise).
        assert!(accepted > 3000, "only {accepted} mutants accepted");
    }

    #[test]
    fn plain_frames_are_read_in_one_pass() {
        let f = ice(CANDIDATE);
        let r = read(&f).expect("plain ice");
        assert_eq!(
            (r.kind, r.raw, r.reference, r.ack),
            (SignalingKind::Ice, CANDIDATE, None, None)
        );
        assert_eq!(r.call_id.to_string(), CALL);
        let f = ice("null");
        assert_eq!(read(&f).expect("end of candidates").raw, "null");
        let seeds = seeds();
        let r = read(&seeds[2]).expect("ref and ack");
        assert_eq!((r.reference, r.ack), (Some("r-1"), Some(17)));
        let r = read(&seeds[3]).expect("whitespace, escapes in the sdp, null ref and ack");
        assert_eq!(r.kind, SignalingKind::Sdp);
        assert!(r.raw.starts_with("{\"type\":\"offer\"") && r.raw.ends_with("\\r\\n\"}"));
        assert!(read(&seeds[4]).is_some(), "extra scalar keys");
        assert!(read(&seeds[7]).is_some(), "nulls and four extras");
    }

    #[test]
    fn anything_else_is_left_to_the_full_parser() {
        let seeds = seeds();
        for (i, why) in [
            (5, "not offer/answer"),
            (6, "sdpMLineIndex past u16"),
            (8, "five extras"),
            (9, "a \\u escape"),
            (10, "a key twice"),
            (11, "a leading zero"),
            (12, "past u64"),
            (13, "braced uuid and a fraction"),
            (14, "a payload of the other kind"),
            (15, "a field of another message"),
        ] {
            assert_eq!(read(&seeds[i]), None, "{why}");
        }
        for text in [
            "",
            "{}",
            "[]",
            "\u{feff}{}",
            &ice("{\"candidate\":\"a\"}x"),
            &format!("{} x", ice("null")),
            &ice("{\"candidate\":\"a\\x\"}"),
            &ice("{\"candidate\":\"a\u{1}\"}"),
            &ice("{\"candidate\":\"a\",}"),
            &ice("{\"candidate\":{}}"),
            &ice("{\"sdpMid\":\"0\"}"),
        ] {
            assert_eq!(read(text), None, "{text:?}");
        }
    }

    /// Against a byte-at-a-time scan: every length up to five words, every position of a
    /// special byte, every kind of special byte and of ordinary byte around it (ASCII, the
    /// bytes of multi-byte UTF-8, 0x20 and 0x7f at the edges), a second special byte after it.
    #[test]
    fn the_word_scan_finds_the_first_special_byte() {
        let naive = |s: &[u8]| s.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        for len in 0..40 {
            for fill in [
                b'a', b' ', 0x7f, 0x80, 0xbf, 0xe2, 0xff, b'!', b'#', b'[', b']',
            ] {
                let plain = vec![fill; len];
                assert_eq!(special(&plain), None, "{len} {fill:#x}");
                for at in 0..len {
                    for b in [b'"', b'\\', 0, 0x1f, 0x0a] {
                        let mut t = plain.clone();
                        t[at] = b;
                        for later in [at + 1, at + 2, at + 8] {
                            let mut u = t.clone();
                            if let Some(x) = u.get_mut(later) {
                                *x = b'"';
                            }
                            assert_eq!(special(&u), naive(&u), "{len} {fill:#x} {at} {b:#x}");
                            assert_eq!(special(&u), Some(at));
                        }
                    }
                }
            }
        }
    }
}
