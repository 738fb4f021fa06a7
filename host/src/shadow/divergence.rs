//! Divergence: where two versions of a policy decide differently, counted
//! per pair of versions. Live shadow evaluation ([`super::Shadow`]) and
//! offline replay ([`super::replay`]) both fill a [`Divergences`] and
//! print the same [`PairReport`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One version of a policy as a pair names it: the component and the
/// settings it ran with (the same bytes with other settings is another
/// version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    /// `sha256:` of the component.
    pub version: String,
    /// The settings, as the JSON text the policy was given.
    pub settings: String,
}

/// What one version answered for one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// `allow`, `deny`, `require-approval`, `modify`, or `not-evaluated`
    /// (a replayed record whose policy was in monitor mode).
    pub outcome: String,
    /// The rule, or `failure.<kind>`.
    pub rule: String,
}

/// The pairs compared so far, with bounded memory: a few pairs per policy,
/// a bounded sample of diverging inputs per pair.
#[derive(Debug)]
pub struct Divergences {
    state: Mutex<State>,
    samples: usize,
}

#[derive(Debug, Default)]
struct State {
    pairs: BTreeMap<String, Vec<Pair>>,
    /// Counts comparisons, to order pairs by their last.
    clock: u64,
}

#[derive(Debug)]
struct Pair {
    primary: VersionRef,
    candidate_id: String,
    candidate: VersionRef,
    role: String,
    compared: u64,
    agreed: u64,
    confusion: BTreeMap<String, BTreeMap<String, u64>>,
    rules: HashMap<(String, String), u64>,
    samples: Vec<Sample>,
    /// Divergences seen, for reservoir sampling.
    diverged: u64,
    rng: u64,
    first_at: String,
    last_at: String,
    /// Order of last update, to evict the stalest pair.
    touched: u64,
}

/// Pairs kept per policy; a reload makes a new pair, so old ones age out.
const PAIRS_PER_POLICY: usize = 8;
/// Diverging rule pairs listed in a report.
const TOP_RULES: usize = 10;

/// One diverging input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The decision it came from, to find it in the decision log.
    pub decision_id: String,
    /// When it was decided.
    pub at: String,
    /// The input as the policy saw it: `action` and `context`.
    pub input: Value,
    /// What the serving version answered.
    pub primary: Side,
    /// What the candidate answered.
    pub candidate: Side,
}

/// Which pair a comparison belongs to.
#[derive(Debug, Clone, Copy)]
pub struct PairOf<'a> {
    /// The policy.
    pub policy: &'a str,
    /// The serving version.
    pub primary: &'a VersionRef,
    /// The candidate's id.
    pub candidate_id: &'a str,
    /// The candidate.
    pub candidate: &'a VersionRef,
    /// `shadow`, `canary` or `replay`.
    pub role: &'a str,
}

/// One comparison to count.
#[derive(Debug, Clone, Copy)]
pub struct Compared<'a> {
    /// What the serving version answered.
    pub primary: &'a Side,
    /// What the candidate answered.
    pub candidate: &'a Side,
    /// The decision.
    pub decision_id: &'a str,
    /// When.
    pub at: &'a str,
}

/// The report of one pair of versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairReport {
    /// The candidate's id.
    pub candidate: String,
    /// `shadow`, `canary` or `replay`.
    pub role: String,
    /// The serving version.
    pub primary_version: VersionRef,
    /// The candidate version.
    pub candidate_version: VersionRef,
    /// Inputs both answered.
    pub compared: u64,
    /// Inputs on which they gave the same outcome.
    pub agreed: u64,
    /// `agreed / compared`; 1 when nothing was compared.
    pub agreement_rate: f64,
    /// Counts by the serving version's outcome, then the candidate's.
    pub confusion: BTreeMap<String, BTreeMap<String, u64>>,
    /// The rule pairs behind the divergences, most frequent first.
    pub diverging_rules: Vec<RulePair>,
    /// A uniform sample of the diverging inputs.
    pub samples: Vec<Sample>,
    /// The first comparison.
    pub first_at: String,
    /// The last comparison.
    pub last_at: String,
}

/// A serving rule and the candidate rule it turned into, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulePair {
    /// The serving version's rule.
    pub primary: String,
    /// The candidate's rule.
    pub candidate: String,
    /// How many inputs.
    pub count: u64,
}

impl Divergences {
    /// An empty set of pairs keeping up to `samples` diverging inputs each.
    pub fn new(samples: usize) -> Self {
        Divergences {
            state: Mutex::new(State::default()),
            samples,
        }
    }

    /// Counts one comparison; `input` makes the sample's input if this
    /// divergence is sampled. Returns whether they diverged.
    pub fn record(
        &self,
        pair: PairOf<'_>,
        seen: Compared<'_>,
        input: impl FnOnce() -> Value,
    ) -> bool {
        let diverged = seen.primary.outcome != seen.candidate.outcome;
        let mut state = self.lock();
        state.clock += 1;
        let touched = state.clock;
        let pairs = state.pairs.entry(pair.policy.to_owned()).or_default();
        let i = match pairs.iter().position(|p| {
            p.candidate_id == pair.candidate_id
                && &p.primary == pair.primary
                && &p.candidate == pair.candidate
        }) {
            Some(i) => i,
            None => {
                if pairs.len() >= PAIRS_PER_POLICY
                    && let Some(stalest) = (0..pairs.len()).min_by_key(|&i| pairs[i].touched)
                {
                    pairs.remove(stalest);
                }
                pairs.push(Pair::new(pair, seen.at));
                pairs.len() - 1
            }
        };
        let p = &mut pairs[i];
        p.touched = touched;
        p.role = pair.role.to_owned();
        p.compared += 1;
        p.last_at = seen.at.to_owned();
        *p.confusion
            .entry(seen.primary.outcome.clone())
            .or_default()
            .entry(seen.candidate.outcome.clone())
            .or_default() += 1;
        if !diverged {
            p.agreed += 1;
            return false;
        }
        *p.rules
            .entry((seen.primary.rule.clone(), seen.candidate.rule.clone()))
            .or_default() += 1;
        p.diverged += 1;
        // Reservoir sampling: every divergence is kept with equal chance.
        let slot = if p.samples.len() < self.samples {
            Some(p.samples.len())
        } else {
            let r = (p.next_random() % p.diverged) as usize;
            (r < self.samples).then_some(r)
        };
        if let Some(slot) = slot {
            let sample = Sample {
                decision_id: seen.decision_id.to_owned(),
                at: seen.at.to_owned(),
                input: input(),
                primary: seen.primary.clone(),
                candidate: seen.candidate.clone(),
            };
            if slot == p.samples.len() {
                p.samples.push(sample);
            } else {
                p.samples[slot] = sample;
            }
        }
        true
    }

    /// The reports of `policy`'s pairs, the most recently compared first.
    pub fn report(&self, policy: &str) -> Vec<PairReport> {
        let state = self.lock();
        let mut pairs: Vec<&Pair> = state.pairs.get(policy).into_iter().flatten().collect();
        pairs.sort_by_key(|p| std::cmp::Reverse(p.touched));
        pairs.into_iter().map(Pair::report).collect()
    }

    /// The policies with at least one pair.
    pub fn policies(&self) -> Vec<String> {
        self.lock().pairs.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pair {
    fn new(pair: PairOf<'_>, at: &str) -> Self {
        Pair {
            primary: pair.primary.clone(),
            candidate_id: pair.candidate_id.to_owned(),
            candidate: pair.candidate.clone(),
            role: pair.role.to_owned(),
            compared: 0,
            agreed: 0,
            confusion: BTreeMap::new(),
            rules: HashMap::new(),
            samples: Vec::new(),
            diverged: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            first_at: at.to_owned(),
            last_at: at.to_owned(),
            touched: 0,
        }
    }

    /// xorshift64: sampling needs spread, not secrecy.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn report(&self) -> PairReport {
        let mut rules: Vec<RulePair> = self
            .rules
            .iter()
            .map(|((primary, candidate), count)| RulePair {
                primary: primary.clone(),
                candidate: candidate.clone(),
                count: *count,
            })
            .collect();
        rules.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| (&a.primary, &a.candidate).cmp(&(&b.primary, &b.candidate)))
        });
        rules.truncate(TOP_RULES);
        PairReport {
            candidate: self.candidate_id.clone(),
            role: self.role.clone(),
            primary_version: self.primary.clone(),
            candidate_version: self.candidate.clone(),
            compared: self.compared,
            agreed: self.agreed,
            agreement_rate: if self.compared == 0 {
                1.0
            } else {
                self.agreed as f64 / self.compared as f64
            },
            confusion: self.confusion.clone(),
            diverging_rules: rules,
            samples: self.samples.clone(),
            first_at: self.first_at.clone(),
            last_at: self.last_at.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(outcome: &str, rule: &str) -> Side {
        Side {
            outcome: outcome.into(),
            rule: rule.into(),
        }
    }

    #[test]
    fn counts_confusion_rules_and_a_bounded_sample() {
        let d = Divergences::new(3);
        let v1 = VersionRef {
            version: "sha256:1".into(),
            settings: "{}".into(),
        };
        let v2 = VersionRef {
            version: "sha256:1".into(),
            settings: "{\"approval_over\":1}".into(),
        };
        let pair = PairOf {
            policy: "p",
            primary: &v1,
            candidate_id: "c",
            candidate: &v2,
            role: "shadow",
        };
        let (allow, approve) = (
            side("allow", "default.allow"),
            side("require-approval", "spend"),
        );
        let mut sampled = 0;
        for i in 0..100 {
            let candidate = if i % 4 == 0 { &approve } else { &allow };
            let id = i.to_string();
            let seen = Compared {
                primary: &allow,
                candidate,
                decision_id: &id,
                at: "t",
            };
            d.record(pair, seen, || {
                sampled += 1;
                serde_json::json!({ "i": i })
            });
        }
        let r = &d.report("p")[0];
        assert_eq!((r.compared, r.agreed), (100, 75));
        assert_eq!(r.confusion["allow"]["allow"], 75);
        assert_eq!(r.confusion["allow"]["require-approval"], 25);
        assert_eq!(r.diverging_rules[0].count, 25);
        assert_eq!(r.samples.len(), 3);
        assert!(r.samples.iter().all(|s| s.candidate == approve));
        // Only sampled inputs are built.
        assert!((3..25).contains(&sampled), "{sampled}");
        assert!((r.agreement_rate - 0.75).abs() < 1e-9);
        assert!(d.report("q").is_empty());
    }
}
