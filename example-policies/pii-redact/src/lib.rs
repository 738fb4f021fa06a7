//! Redacts US social security numbers, payment card numbers and secrets
//! from every string inside the params of outgoing messages, and lets the
//! message go with the redacted params.

use arbiter_sdk::{Action, Context, Decision, Policy, export_policy};
use serde::Deserialize;
use serde_json::Value;

/// Settings; a missing key takes the default below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The action names whose params are scanned.
    pub tools: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tools: ["send_email", "post_message", "http.post"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The policy.
pub struct PiiRedact;

impl Policy for PiiRedact {
    type Settings = Settings;

    fn evaluate(s: &Settings, action: &Action, _context: &Context) -> Decision {
        if !s.tools.contains(&action.name) {
            return Decision::allow(
                "pii.not-applicable",
                "This action is not scanned for personal data.",
            );
        }
        // Params that are not an object count as `{}`: nothing to scan.
        if !action.params.is_object() {
            return none();
        }
        let mut params = action.params.clone();
        let mut found = Found::default();
        redact_value(&mut params, &mut found);
        if found.total() == 0 {
            return none();
        }
        // The reason says what kinds were found, never the values.
        Decision::modify(
            "pii.redacted",
            format!("Redacted {}.", found.describe()),
            40,
            params,
        )
    }
}

fn none() -> Decision {
    Decision::allow("pii.none", "No personal data or secrets found.")
}

/// How many of each kind were replaced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    ssn: usize,
    card: usize,
    secret: usize,
}

impl Found {
    fn total(&self) -> usize {
        self.ssn + self.card + self.secret
    }

    fn describe(&self) -> String {
        [
            (self.ssn, "social security number"),
            (self.card, "card number"),
            (self.secret, "secret"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Redacts every string inside `value`, in place; keys are left alone.
pub fn redact_value(value: &mut Value, found: &mut Found) {
    match value {
        Value::String(s) => {
            if let Some(r) = redact(s, found) {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, found)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_value(v, found)),
        _ => {}
    }
}

/// The redacted text, or `None` when nothing matched. Secrets go first,
/// then SSNs, then cards, so an earlier replacement breaks up digit runs
/// that a later pattern would otherwise see.
fn redact(text: &str, found: &mut Found) -> Option<String> {
    if !text
        .bytes()
        .any(|b| b.is_ascii_digit() || b == b'-' || b == b'A')
    {
        return None;
    }
    let before = found.total();
    let t = replace(text, "[REDACTED:SECRET]", &mut found.secret, secret_at);
    let t = replace(&t, "[REDACTED:SSN]", &mut found.ssn, ssn_at);
    let t = replace(&t, "[REDACTED:CARD]", &mut found.card, card_at);
    (found.total() > before).then_some(t)
}

/// Scans `text` left to right; wherever `matcher` reports a match of some
/// length, writes `label` instead of it.
fn replace(
    text: &str,
    label: &str,
    count: &mut usize,
    matcher: fn(&[u8], usize) -> Option<usize>,
) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        match matcher(b, i) {
            Some(len) => {
                out.push_str(&text[copied..i]);
                out.push_str(label);
                *count += 1;
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn digit(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

fn word_char(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_alphanumeric)
}

/// `ddd-dd-dddd`, not part of a longer run of digits.
fn ssn_at(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && digit(b, i - 1) {
        return None;
    }
    let shape = b"ddd-dd-dddd";
    let ok = shape.iter().enumerate().all(|(k, c)| match c {
        b'd' => digit(b, i + k),
        _ => b.get(i + k) == Some(c),
    });
    (ok && !digit(b, i + shape.len())).then_some(shape.len())
}

/// 13 to 19 digits, optionally grouped by single spaces or dashes, passing
/// the Luhn check, not part of a longer run.
fn card_at(b: &[u8], i: usize) -> Option<usize> {
    if !digit(b, i) || (i > 0 && digit(b, i - 1)) {
        return None;
    }
    let mut digits = Vec::with_capacity(19);
    let mut end = i;
    let mut j = i;
    while j < b.len() {
        if digit(b, j) {
            digits.push(b[j] - b'0');
            j += 1;
            end = j;
        } else if (b[j] == b' ' || b[j] == b'-') && digit(b, j + 1) {
            j += 1;
        } else {
            break;
        }
        if digits.len() > 19 {
            return None;
        }
    }
    ((13..=19).contains(&digits.len()) && luhn(&digits)).then_some(end - i)
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &d)| {
            let d = u32::from(d);
            if k % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `sk-` and 20 or more of `[A-Za-z0-9_-]`, or `AKIA` and 16 of `[A-Z0-9]`,
/// starting a word (so `risk-assessment-...` is left alone).
fn secret_at(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && word_char(b, i - 1) {
        return None;
    }
    let rest = &b[i..];
    if rest.starts_with(b"sk-") {
        let n = rest[3..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'_')
            .count();
        return (n >= 20).then_some(3 + n);
    }
    if rest.starts_with(b"AKIA") {
        let n = rest[4..]
            .iter()
            .take(16)
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .count();
        return (n == 16).then_some(20);
    }
    None
}

export_policy!(PiiRedact);

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> String {
        redact(text, &mut Found::default()).unwrap_or_else(|| text.to_owned())
    }

    #[test]
    fn ssn_boundaries() {
        assert_eq!(r("id 123-45-6789."), "id [REDACTED:SSN].");
        assert_eq!(r("1123-45-6789"), "1123-45-6789");
        assert_eq!(r("123-45-67890"), "123-45-67890");
    }

    #[test]
    fn cards() {
        assert_eq!(r("4111111111111111"), "[REDACTED:CARD]");
        assert_eq!(r("4111-1111-1111-1111 ok"), "[REDACTED:CARD] ok");
        assert_eq!(r("4111  1111 1111 1111"), "4111  1111 1111 1111");
        assert_eq!(r("4111111111111112"), "4111111111111112");
        // 20 digits is a longer run, not a card.
        assert_eq!(r("41111111111111111110"), "41111111111111111110");
    }

    #[test]
    fn secrets() {
        assert_eq!(r("key=sk-abcdefghijklmnopqrst"), "key=[REDACTED:SECRET]");
        assert_eq!(r("sk-short"), "sk-short");
        assert_eq!(
            r("risk-assessment-for-the-quarterly-review"),
            "risk-assessment-for-the-quarterly-review"
        );
        assert_eq!(r("AKIAABCDEFGHIJKLMNOP"), "[REDACTED:SECRET]");
        assert_eq!(r("AKIAabcdefghijklmnop"), "AKIAabcdefghijklmnop");
    }

    #[test]
    fn reason_never_holds_the_value() {
        let action = Action::new("tool", "send_email").with_params(
            serde_json::json!({"body": ["123-45-6789", {"k": "4111 1111 1111 1111"}]}),
        );
        let d = PiiRedact::evaluate(&Settings::default(), &action, &Context::default());
        assert_eq!(
            d.reason,
            "Redacted 1 social security number, 1 card number."
        );
        assert_eq!(
            d.params,
            Some(serde_json::json!({"body": ["[REDACTED:SSN]", {"k": "[REDACTED:CARD]"}]}))
        );
    }
}
