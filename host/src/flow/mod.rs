//! Flow: where the data in a session came from.
//!
//! A result the host lets through may carry labels (`private`, `secret`,
//! `untrusted`, `customer:42`), attached by a policy or by configuration.
//! A session then holds each label with the action that introduced it
//! ([`SessionFlow`]), and the fingerprints of the text that result held
//! ([`fingerprint`]), so a later decision can ask which labels a value it
//! is about to send carries ([`LabelQuery`]). This module holds the data
//! and its rules; [`crate::enrich::flow`] keeps it per session.

pub mod fingerprint;

use std::collections::HashMap;

use serde_json::Value;

pub use crate::decision::{Label, Origin, Query};
pub use fingerprint::Fingerprinter;

/// The longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// The most labels one decision may attach.
pub const MAX_LABELS_PER_DECISION: usize = 16;
/// The most labels a session can hold: one bit each in a print's mask.
pub const MAX_SESSION_LABELS: usize = 64;
/// The suffix of the kind of a result's action: `mcp.result`, `tool.result`.
pub const RESULT_SUFFIX: &str = ".result";

/// Whether an action of `kind` is a result, which may carry labels.
pub fn is_result(kind: &str) -> bool {
    kind.ends_with(RESULT_SUFFIX) && kind.len() > RESULT_SUFFIX.len()
}

/// Why `label` is not a label: empty, too long, or a character outside
/// lowercase ASCII letters, digits and `:._-`.
pub fn label_problem(label: &str) -> Option<String> {
    if label.is_empty() {
        return Some("a label is empty".into());
    }
    if label.len() > MAX_LABEL_BYTES {
        return Some(format!(
            "a label is {} bytes; at most {MAX_LABEL_BYTES}",
            label.len()
        ));
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ":._-".contains(c);
    if !label.chars().all(ok) {
        let shown: String = label.chars().take(MAX_LABEL_BYTES).collect();
        return Some(format!(
            "label {shown:?} has a character outside a-z, 0-9 and `:._-`"
        ));
    }
    None
}

/// Answers "which labels does this value carry" for one decision.
pub trait LabelQuery: Send + Sync {
    /// The labels of the results that `value` holds a copy of.
    fn labels_of(&self, value: &str) -> Vec<String>;
}

/// What a session has seen: its labels, and the fingerprints of the
/// labelled text, each with the labels it carries (a bit per label).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionFlow {
    labels: Vec<Label>,
    prints: HashMap<u64, u64>,
    /// Labels some of whose prints did not fit: any value long enough to
    /// be a copy is taken to carry them, since it cannot be ruled out.
    overflow: u64,
}

/// A session's flow as a store keeps it: its labels in order, each print
/// with a mask of the labels it carries (bit i: `labels[i]`), and the
/// mask of the labels that overflowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredFlow {
    /// The labels, in the order they came.
    pub labels: Vec<Label>,
    /// `[print, mask]`, sorted.
    pub prints: Vec<[u64; 2]>,
    /// Labels some of whose prints did not fit.
    pub overflow: u64,
}

/// Why a session could not take a result's labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The session holds as many labels as it may.
    #[error("the session holds {0} labels, as many as [flow] max_labels allows")]
    Labels(usize),
}

impl SessionFlow {
    /// A session's flow as a store keeps it.
    pub fn from_stored(stored: StoredFlow) -> Self {
        let n = stored.labels.len().min(MAX_SESSION_LABELS);
        let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let mut prints: HashMap<u64, u64> = HashMap::with_capacity(stored.prints.len());
        // A print may come once per label it carries.
        for [p, m] in stored.prints {
            if m & all != 0 {
                *prints.entry(p).or_default() |= m & all;
            }
        }
        SessionFlow {
            labels: stored.labels.into_iter().take(n).collect(),
            prints,
            overflow: stored.overflow & all,
        }
    }

    /// This flow as a store keeps it.
    pub fn to_stored(&self) -> StoredFlow {
        let mut prints: Vec<[u64; 2]> = self.prints.iter().map(|(p, m)| [*p, *m]).collect();
        prints.sort_unstable();
        StoredFlow {
            labels: self.labels.clone(),
            prints,
            overflow: self.overflow,
        }
    }

    /// Adds what `other` holds: its labels this one lacks (with their
    /// origins), its prints and its overflow, without bounds: for a store
    /// merging what replicas add.
    pub fn merge(&mut self, other: &SessionFlow) {
        for l in &other.labels {
            if self.labels.len() < MAX_SESSION_LABELS
                && !self.labels.iter().any(|h| h.name == l.name)
            {
                self.labels.push(l.clone());
            }
        }
        // Other's bit i is this one's bit `to[i]`.
        let to: Vec<u64> = other
            .labels
            .iter()
            .map(|l| self.mask_of(std::slice::from_ref(&l.name)))
            .collect();
        let remap = |mask: u64| {
            to.iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .fold(0, |m, (_, bit)| m | bit)
        };
        for (p, m) in &other.prints {
            *self.prints.entry(*p).or_default() |= remap(*m);
        }
        self.overflow |= remap(other.overflow);
    }

    /// The labels held, in the order they came.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// How many fingerprints it keeps.
    pub fn print_count(&self) -> usize {
        self.prints.len()
    }

    /// The names of the labels some of whose prints did not fit.
    pub fn overflowed(&self) -> Vec<String> {
        self.names(self.overflow)
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Adds `names` from `origin` (a label held already keeps its first
    /// origin) and `prints` of the text that carried them, keeping at most
    /// `max_prints` prints; prints past that overflow. Returns the labels
    /// that were new.
    ///
    /// # Errors
    /// [`Full`] when a new label would take it past `max_labels`; then
    /// nothing changed.
    pub fn attach(
        &mut self,
        names: &[String],
        origin: &Origin,
        prints: &[u64],
        max_labels: usize,
        max_prints: usize,
    ) -> Result<Vec<String>, Full> {
        let new: Vec<&String> = names
            .iter()
            .filter(|n| !self.labels.iter().any(|l| &l.name == *n))
            .collect();
        let max = max_labels.min(MAX_SESSION_LABELS);
        if self.labels.len() + new.len() > max {
            return Err(Full::Labels(self.labels.len()));
        }
        for name in &new {
            self.labels.push(Label {
                name: (*name).clone(),
                origin: origin.clone(),
            });
        }
        let mask = self.mask_of(names);
        for p in prints {
            if let Some(m) = self.prints.get_mut(p) {
                *m |= mask;
            } else if self.prints.len() < max_prints {
                self.prints.insert(*p, mask);
            } else {
                self.overflow |= mask;
            }
        }
        Ok(new.into_iter().cloned().collect())
    }

    /// The labels introduced before `cutoff_ms`.
    pub fn expired(&self, cutoff_ms: u64) -> Vec<String> {
        self.labels
            .iter()
            .filter(|l| l.origin.at_ms < cutoff_ms)
            .map(|l| l.name.clone())
            .collect()
    }

    /// Forgets the labels introduced before `cutoff_ms` and the prints
    /// left with no label; whether anything was forgotten.
    pub fn expire(&mut self, cutoff_ms: u64) -> bool {
        let names = self.expired(cutoff_ms);
        self.forget(&names)
    }

    /// Forgets labels `names` and the prints left with no label; whether
    /// anything was forgotten.
    pub fn forget(&mut self, names: &[String]) -> bool {
        if !self.labels.iter().any(|l| names.contains(&l.name)) {
            return false;
        }
        let kept: Vec<usize> = (0..self.labels.len())
            .filter(|&i| !names.contains(&self.labels[i].name))
            .collect();
        // Old bit i becomes new bit `position of i in kept`.
        let remap = |mask: u64| {
            kept.iter()
                .enumerate()
                .filter(|(_, old)| mask & (1 << **old) != 0)
                .fold(0u64, |m, (new, _)| m | (1 << new))
        };
        self.prints.retain(|_, m| {
            *m = remap(*m);
            *m != 0
        });
        self.overflow = remap(self.overflow);
        self.labels = kept.iter().map(|&i| self.labels[i].clone()).collect();
        true
    }

    /// The labels whose text `value` holds a copy of, fingerprinted by
    /// `fp`; a value long enough to be a copy also carries every
    /// overflowed label.
    pub fn labels_of(&self, fp: &Fingerprinter, value: &str) -> Vec<String> {
        if self.labels.is_empty() {
            return Vec::new();
        }
        let mut mask = 0u64;
        let mut scratch = Vec::new();
        fp.prints(value, &mut scratch, |p| {
            if let Some(m) = self.prints.get(&p) {
                mask |= m;
            }
        });
        // `scratch` holds the value normalized.
        if scratch.len() >= fp.min_match() {
            mask |= self.overflow;
        }
        self.names(mask)
    }

    /// Every label, for an answer that cannot be narrowed.
    pub fn all_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }

    fn mask_of(&self, names: &[String]) -> u64 {
        self.labels
            .iter()
            .enumerate()
            .filter(|(_, l)| names.contains(&l.name))
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    fn names(&self, mask: u64) -> Vec<String> {
        self.labels
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, l)| l.name.clone())
            .collect()
    }
}

/// The prints of every string in `value` (a result), each string on its
/// own so no print spans two of them.
pub fn prints_of(fp: &Fingerprinter, value: &Value) -> Vec<u64> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => fp.prints(s, &mut scratch, |p| out.push(p)),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A session's flow and the fingerprinter to ask it with: the live
/// answer to [`LabelQuery`].
pub struct Live {
    /// The session's flow when the decision started.
    pub flow: std::sync::Arc<SessionFlow>,
    /// The host's fingerprinter.
    pub fingerprinter: Fingerprinter,
    /// Values longer than this are answered with every label held.
    pub max_value_bytes: usize,
}

impl LabelQuery for Live {
    fn labels_of(&self, value: &str) -> Vec<String> {
        if value.len() > self.max_value_bytes {
            return self.flow.all_names();
        }
        self.flow.labels_of(&self.fingerprinter, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(at_ms: u64) -> Origin {
        Origin {
            decision_id: "d".into(),
            kind: "mcp".into(),
            name: "read".into(),
            target: String::new(),
            at_ms,
        }
    }

    const TEXT: &str = "Quarterly revenue for ACME was 4.2 million, unannounced.";

    #[test]
    fn labels_are_attached_found_in_copies_and_expire() {
        let fp = Fingerprinter::new(&[3; 32], 24);
        let mut s = SessionFlow::default();
        let prints = prints_of(&fp, &serde_json::json!({"content": [{"text": TEXT}]}));
        let new = s
            .attach(&["private".into()], &origin(10), &prints, 8, 1000)
            .expect("room");
        assert_eq!(new, ["private"]);
        s.attach(&["untrusted".into()], &origin(20), &[], 8, 1000)
            .expect("room");
        assert_eq!(
            s.labels_of(&fp, "fwd: quarterly REVENUE for acme was 4.2 million"),
            ["private"]
        );
        assert!(
            s.labels_of(&fp, "nothing to see in this sentence at all")
                .is_empty()
        );
        assert!(s.expire(15));
        assert_eq!(s.all_names(), ["untrusted"]);
        assert!(s.labels_of(&fp, TEXT).is_empty());
        assert_eq!(s.print_count(), 0);
    }

    #[test]
    fn a_full_session_refuses_new_labels_and_overflowed_prints_answer_conservatively() {
        let fp = Fingerprinter::new(&[3; 32], 24);
        let mut s = SessionFlow::default();
        s.attach(&["a".into()], &origin(1), &[], 1, 10)
            .expect("room");
        assert_eq!(
            s.attach(&["b".into()], &origin(2), &[], 1, 10),
            Err(Full::Labels(1))
        );
        let prints = prints_of(&fp, &Value::String(TEXT.into()));
        s.attach(&["a".into()], &origin(3), &prints, 1, 0)
            .expect("held");
        assert_eq!(s.overflowed(), ["a"]);
        assert_eq!(
            s.labels_of(&fp, "any text that is long enough to be a copy"),
            ["a"]
        );
        assert!(s.labels_of(&fp, "short").is_empty());
    }

    #[test]
    fn stored_parts_give_back_the_same_flow() {
        let fp = Fingerprinter::new(&[3; 32], 24);
        let mut s = SessionFlow::default();
        let prints = prints_of(&fp, &Value::String(TEXT.into()));
        s.attach(
            &["private".into(), "pii".into()],
            &origin(1),
            &prints,
            8,
            1000,
        )
        .expect("room");
        let back = SessionFlow::from_stored(s.to_stored());
        assert_eq!(back, s);
        let mut other = SessionFlow::default();
        other
            .attach(
                &["untrusted".into(), "pii".into()],
                &origin(2),
                &[42],
                8,
                1000,
            )
            .expect("room");
        let mut merged = back.clone();
        merged.merge(&other);
        assert_eq!(merged.all_names(), ["private", "pii", "untrusted"]);
        assert_eq!(merged.labels_of(&fp, TEXT), ["private", "pii"]);
        assert_eq!(
            merged.labels()[1].origin.at_ms,
            1,
            "the first origin is kept"
        );
    }

    #[test]
    fn label_syntax() {
        assert_eq!(label_problem("customer:42"), None);
        assert!(label_problem("").is_some());
        assert!(label_problem("Private").is_some());
        assert!(label_problem(&"x".repeat(65)).is_some());
        assert!(is_result("mcp.result") && !is_result(".result") && !is_result("mcp"));
    }
}
