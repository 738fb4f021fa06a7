//! Fingerprints of text: what lets the host tell that an outgoing argument
//! holds a copy of text a labelled result brought in.
//!
//! Text is normalized first (every character lowercased, whitespace
//! removed), so a copy that differs only in case, spacing or line breaks
//! gives the same fingerprints. Every run of [`WINDOW`] normalized bytes is
//! hashed with a rolling hash, and of each `min_match - WINDOW + 1`
//! consecutive hashes the smallest is kept (winnowing, as MOSS does):
//! a copy of at least `min_match` normalized bytes always shares a kept
//! hash with its source, while only about `2 / (min_match - WINDOW + 2)`
//! of the hashes are kept. Kept hashes are then keyed (SipHash-1-3 under a
//! secret the host holds), so what is stored cannot be matched against a
//! dictionary of guessed texts by someone who reads the store.
//!
//! It does not catch a paraphrase, a translation, or an encoding it was
//! not told about (base64, hex, URL escapes): those change the bytes.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// Normalized bytes hashed together: the shortest unit a print covers.
pub const WINDOW: usize = 12;

/// The polynomial base of the rolling hash (odd, so multiplication by it
/// is a bijection modulo 2^64).
const BASE: u64 = 0x100_0000_01b3;

/// Computes the keyed fingerprints of text, for one key and match length.
#[derive(Clone)]
pub struct Fingerprinter {
    keys: (u64, u64),
    min_match: usize,
    /// `BASE^WINDOW`, to take the oldest byte out of the rolling hash.
    out: u64,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Fingerprinter")
            .field("min_match", &self.min_match)
            .finish_non_exhaustive()
    }
}

impl Fingerprinter {
    /// Fingerprints keyed by `key`, guaranteed to find copies of at least
    /// `min_match` normalized bytes (at least [`WINDOW`]).
    pub fn new(key: &[u8; 32], min_match: usize) -> Self {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&key[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Fingerprinter {
            // SipHash takes 128 bits of key.
            keys: (word(0), word(8)),
            min_match: min_match.max(WINDOW),
            out: (0..WINDOW).fold(1u64, |acc, _| acc.wrapping_mul(BASE)),
        }
    }

    /// The length in normalized bytes from which a copy is always found.
    pub fn min_match(&self) -> usize {
        self.min_match
    }

    /// Calls `keep` with each kept fingerprint of `text` (some may repeat),
    /// using `scratch` for the normalized bytes.
    pub fn prints(&self, text: &str, scratch: &mut Vec<u8>, mut keep: impl FnMut(u64)) {
        normalize(text, scratch);
        let bytes = scratch.as_slice();
        if bytes.len() < WINDOW {
            return;
        }
        // Of each `span` consecutive window hashes, the rightmost smallest
        // is kept: a deque of candidates, increasing, finds it in O(1)
        // amortized per window.
        let span = self.min_match - WINDOW + 1;
        let mut queue: std::collections::VecDeque<(usize, u64, u64)> =
            std::collections::VecDeque::with_capacity(span + 1);
        let mut h = 0u64;
        for &b in &bytes[..WINDOW] {
            h = h.wrapping_mul(BASE).wrapping_add(u64::from(b) + 1);
        }
        let mut last_kept: Option<usize> = None;
        let windows = bytes.len() - WINDOW + 1;
        for i in 0..windows {
            if i > 0 {
                let (old, new) = (bytes[i - 1], bytes[i + WINDOW - 1]);
                h = h
                    .wrapping_mul(BASE)
                    .wrapping_add(u64::from(new) + 1)
                    .wrapping_sub((u64::from(old) + 1).wrapping_mul(self.out));
            }
            let m = mix(h);
            while queue.back().is_some_and(|&(_, bm, _)| bm >= m) {
                queue.pop_back();
            }
            queue.push_back((i, m, h));
            while queue.front().is_some_and(|&(j, _, _)| j + span <= i) {
                queue.pop_front();
            }
            // A text shorter than one span is one window: its smallest.
            if i + 1 < span && i + 1 < windows {
                continue;
            }
            if let Some(&(j, _, raw)) = queue.front()
                && last_kept != Some(j)
            {
                last_kept = Some(j);
                keep(self.keyed(raw));
            }
        }
    }

    fn keyed(&self, h: u64) -> u64 {
        let mut s = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        s.write_u64(h);
        s.finish()
    }
}

/// Lowercases `text` and drops its whitespace, into `out` as UTF-8.
pub fn normalize(text: &str, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            if !c.is_ascii_whitespace() {
                out.push(c.to_ascii_lowercase() as u8);
            }
        } else if !c.is_whitespace() {
            let mut buf = [0u8; 4];
            for l in c.to_lowercase() {
                out.extend_from_slice(l.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// Spreads a rolling hash's bits, so the smallest of a span is not biased
/// to the last bytes (murmur3's finalizer).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn prints(f: &Fingerprinter, text: &str) -> HashSet<u64> {
        let mut out = HashSet::new();
        f.prints(text, &mut Vec::new(), |p| {
            out.insert(p);
        });
        out
    }

    const SOURCE: &str = "The Falcon acquisition closes on March 3 at 41 dollars a share; \
                          do not tell anyone outside the deal team.";

    #[test]
    fn a_copy_reformatted_in_case_and_whitespace_shares_a_print() {
        let f = Fingerprinter::new(&[7; 32], 24);
        let source = prints(&f, SOURCE);
        let copy = "fyi:  the FALCON acquisition closes\n on march 3 at 41 dollars  a share";
        assert!(!source.is_disjoint(&prints(&f, copy)));
    }

    #[test]
    fn every_copy_of_min_match_bytes_is_found_wherever_it_sits() {
        let f = Fingerprinter::new(&[9; 32], 24);
        let source = prints(&f, SOURCE);
        let normalized = {
            let mut n = Vec::new();
            normalize(SOURCE, &mut n);
            String::from_utf8(n).expect("ascii")
        };
        for start in 0..=normalized.len() - 24 {
            let piece = &normalized[start..start + 24];
            let wrapped = format!("Hello, see this: {piece} -- thanks!");
            assert!(
                !source.is_disjoint(&prints(&f, &wrapped)),
                "missed the copy at {start}: {piece}"
            );
        }
    }

    #[test]
    fn unrelated_text_and_another_key_share_nothing() {
        let f = Fingerprinter::new(&[7; 32], 24);
        let source = prints(&f, SOURCE);
        let other = prints(
            &f,
            "Lunch is at noon in the usual place, bring the slides please.",
        );
        assert!(source.is_disjoint(&other));
        let g = Fingerprinter::new(&[8; 32], 24);
        assert!(source.is_disjoint(&prints(&g, SOURCE)));
    }

    #[test]
    fn only_a_fraction_of_windows_is_kept_and_short_text_gives_none() {
        let f = Fingerprinter::new(&[1; 32], 32);
        let long: String = (0..2000).map(|i| format!("word{i} ")).collect();
        let kept = prints(&f, &long).len();
        let windows = long.len();
        assert!(kept * 4 < windows, "{kept} of {windows}");
        assert!(prints(&f, "too short").is_empty());
    }
}
