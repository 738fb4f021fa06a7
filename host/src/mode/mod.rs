//! Mode: how much each policy's answer binds, and which version of it
//! answers.
//!
//! | mode | the policy runs | the caller is told |
//! |---|---|---|
//! | [`Mode::Monitor`] | no: the action feeds the [`baseline`] | allow |
//! | [`Mode::SoftEnforce`] | yes | allow, with the would-be outcome in `decided` and a warning |
//! | [`Mode::Enforce`] | yes | the decision |
//!
//! A policy's [`Rollout`] holds its mode and its candidate versions: a
//! `shadow` candidate is evaluated beside the serving version and never
//! binds ([`crate::shadow`]); a `canary` answers instead of it for a
//! stable share of sessions ([`Rollout::canary_for`]).
//!
//! [`crate::set::rollout_specs_from_config`] reads modes and candidates from the
//! configuration, and [`crate::set::assemble_one`] brings the candidates in
//! through the load pipeline ([`load_candidate`]), as any policy version
//! comes in.
//!
//! [`fold`] turns a chain's reports into what the caller is told: the
//! enforcing policies' combined outcome, and what every policy that ran
//! would have decided.

pub mod baseline;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

pub use crate::decision::{Mode, UnknownMode};

use crate::combine::combine_where;
use crate::decision::{Outcome, PolicyReport};
use crate::engine::Engine;
use crate::load::{self, CompileCache, LoadError, LoadedPolicy, PolicySpec};

/// What a candidate version is for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum Role {
    /// Evaluated on the same input as the serving version, off the
    /// caller's path; never enforced.
    Shadow,
    /// Answers instead of the serving version for this share of sessions.
    Canary {
        /// Percent of sessions, above 0 and at most 100.
        percent: f64,
    },
}

/// One candidate version of a policy.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its id, unique within the policy.
    pub id: String,
    /// Shadow or canary.
    pub role: Role,
    /// The loaded version.
    pub policy: Arc<LoadedPolicy>,
}

/// A policy's mode and candidates.
#[derive(Debug, Clone, Default)]
pub struct Rollout {
    /// The mode.
    pub mode: Mode,
    /// Candidate versions, in configuration order.
    pub candidates: Vec<Candidate>,
}

/// Canary shares are chosen in units of 1/10 000 of the sessions.
const CANARY_BUCKETS: u64 = 10_000;

impl Rollout {
    /// The canary that answers for `session_key`, if any, with its index
    /// among the candidates: the key is hashed, keyed by `secret` (an
    /// HMAC), with the policy's name into one of 10 000 buckets, and
    /// canaries take consecutive runs of buckets in configuration order.
    /// The same key always lands in the same bucket wherever the secret is
    /// the same, so one session never flips between versions; without the
    /// secret, a caller cannot work out which session ids land in a canary.
    pub fn canary_for<'k>(
        &self,
        policy: &str,
        session_key: impl FnOnce() -> &'k str,
        secret: &[u8; 32],
    ) -> Option<(usize, &Candidate)> {
        if !self
            .candidates
            .iter()
            .any(|c| matches!(c.role, Role::Canary { .. }))
        {
            return None;
        }
        let bucket = bucket(policy, session_key(), secret);
        let mut upto = 0u64;
        for (i, c) in self.candidates.iter().enumerate() {
            if let Role::Canary { percent } = c.role {
                upto += (percent * (CANARY_BUCKETS as f64 / 100.0)).round() as u64;
                if bucket < upto {
                    return Some((i, c));
                }
            }
        }
        None
    }

    /// This rollout in `mode`, with the same candidates.
    #[must_use]
    pub fn with_mode(&self, mode: Mode) -> Rollout {
        Rollout {
            mode,
            candidates: self.candidates.clone(),
        }
    }

    /// This rollout without candidate `id` (promoted, or dropped).
    #[must_use]
    pub fn without_candidate(&self, id: &str) -> Rollout {
        Rollout {
            mode: self.mode,
            candidates: self
                .candidates
                .iter()
                .filter(|c| c.id != id)
                .cloned()
                .collect(),
        }
    }

    /// This rollout with candidate `id` answered by `policy` (its file
    /// reloaded); the other candidates unchanged.
    #[must_use]
    pub fn with_candidate_policy(&self, id: &str, policy: &Arc<LoadedPolicy>) -> Rollout {
        Rollout {
            mode: self.mode,
            candidates: self
                .candidates
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    if c.id == id {
                        c.policy = Arc::clone(policy);
                    }
                    c
                })
                .collect(),
        }
    }

    /// Whether any candidate needs a shadow evaluation beside the version
    /// that answered.
    pub fn has_candidates(&self) -> bool {
        !self.candidates.is_empty()
    }
}

/// What a policy's rollout is to be: its mode and its candidates' specs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutSpec {
    /// The mode.
    pub mode: Mode,
    /// The candidates, in configuration order.
    pub candidates: Vec<CandidateSpec>,
}

/// What to load for one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateSpec {
    /// Its id.
    pub id: String,
    /// Shadow or canary.
    pub role: Role,
    /// Its component, settings and limits, under the policy's name.
    pub spec: PolicySpec,
}

/// Loads one candidate through the load pipeline.
///
/// # Errors
/// Its [`LoadError`], naming the policy and the candidate.
pub fn load_candidate(
    engine: &Engine,
    cache: Option<&CompileCache>,
    c: &CandidateSpec,
) -> Result<Candidate, LoadError> {
    let policy = load::load(engine, cache, &c.spec).map_err(|mut e| {
        e.policy = format!("{} (candidate `{}`)", e.policy, c.id);
        e
    })?;
    tracing::info!(policy = %policy.name, candidate = %c.id, version = %policy.version, "candidate loaded");
    Ok(Candidate {
        id: c.id.clone(),
        role: c.role,
        policy: Arc::new(policy),
    })
}

/// The bucket of `session_key` for `policy`, in `0..CANARY_BUCKETS`.
fn bucket(policy: &str, session_key: &str, secret: &[u8; 32]) -> u64 {
    use hmac::Mac;
    // HMAC takes a key of any length; 32 bytes always fit.
    let mut h = <hmac::Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    h.update(policy.as_bytes());
    h.update(&[0]);
    h.update(session_key.as_bytes());
    let digest = h.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % CANARY_BUCKETS
}

/// A chain's reports folded through the modes.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    /// What the caller must do: the enforcing policies combined; allow
    /// when none enforces.
    pub outcome: Outcome,
    /// The params the action must run with, from an enforcing modify.
    pub params: Option<Value>,
    /// What every policy that ran decided, combined; allow when none ran.
    pub decided: Outcome,
    /// The report that decided `decided`, if any policy ran.
    pub decided_by: Option<usize>,
    /// The mode of that report, or monitor when no policy ran.
    pub mode: Mode,
    /// One sentence for each soft-enforced policy whose answer the caller
    /// is not held to.
    pub warnings: Vec<String>,
}

/// Folds `reports` (in chain order, each carrying its policy's mode).
pub fn fold(reports: &[PolicyReport]) -> Folded {
    let enforced = combine_where(reports, |r| r.mode == Mode::Enforce);
    let decided = combine_where(reports, |r| r.mode != Mode::Monitor);
    let warnings = reports
        .iter()
        .filter(|r| r.mode == Mode::SoftEnforce && r.outcome != Outcome::Allow)
        .map(|r| {
            format!(
                "Policy `{}` is in soft-enforce mode: it would have answered {} ({}); it was not enforced.",
                r.name, r.outcome, r.rule
            )
        })
        .collect();
    Folded {
        outcome: enforced.as_ref().map_or(Outcome::Allow, |c| c.outcome),
        params: enforced.and_then(|c| c.params),
        decided: decided.as_ref().map_or(Outcome::Allow, |c| c.outcome),
        decided_by: decided.as_ref().map(|c| c.decided_by),
        mode: decided
            .as_ref()
            .map_or(Mode::Monitor, |c| reports[c.decided_by].mode),
        warnings,
    }
}

/// The report of a policy in monitor mode: it did not run.
pub fn monitor_report(policy: &LoadedPolicy) -> PolicyReport {
    PolicyReport {
        name: policy.name.clone(),
        version: policy.version.clone(),
        signer: policy.signer.as_ref().map(|s| s.key_id.clone()),
        signed_version: policy.signer.as_ref().map(|s| s.version.clone()),
        mode: Mode::Monitor,
        candidate: None,
        outcome: Outcome::Allow,
        rule: MONITOR_RULE.into(),
        reason: format!(
            "Policy `{}` is in monitor mode: the action is recorded, not judged.",
            policy.name
        ),
        risk: 0,
        params: None,
        fuel: 0,
        micros: 0,
        failure: None,
        labels: Vec::new(),
        questions: Vec::new(),
    }
}

/// The rule of a decision no policy judged, every one being in monitor mode.
pub const MONITOR_RULE: &str = "mode.monitor";

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, mode: Mode, outcome: Outcome, params: Option<Value>) -> PolicyReport {
        PolicyReport {
            name: name.into(),
            version: String::new(),
            signer: None,
            signed_version: None,
            mode,
            candidate: None,
            outcome,
            rule: format!("{name}.rule"),
            reason: String::new(),
            risk: 10,
            params,
            fuel: 0,
            micros: 0,
            failure: None,
            labels: Vec::new(),
            questions: Vec::new(),
        }
    }

    #[test]
    fn modes_fold_into_outcome_and_decided() {
        use Mode::*;
        use Outcome::*;
        // (chain, outcome, decided, mode, warnings)
        type Row = (&'static [(Mode, Outcome)], Outcome, Outcome, Mode, usize);
        let rows: &[Row] = &[
            (&[(Enforce, Deny)], Deny, Deny, Enforce, 0),
            (&[(SoftEnforce, Deny)], Allow, Deny, SoftEnforce, 1),
            (&[(Monitor, Allow)], Allow, Allow, Monitor, 0),
            (
                &[(SoftEnforce, RequireApproval), (Enforce, Allow)],
                Allow,
                RequireApproval,
                SoftEnforce,
                1,
            ),
            (
                &[(SoftEnforce, Allow), (Enforce, Deny)],
                Deny,
                Deny,
                Enforce,
                0,
            ),
            (
                &[(Monitor, Allow), (SoftEnforce, Allow)],
                Allow,
                Allow,
                SoftEnforce,
                0,
            ),
        ];
        for (chain, outcome, decided, mode, warnings) in rows {
            let reports: Vec<_> = chain
                .iter()
                .enumerate()
                .map(|(i, (m, o))| report(&format!("p{i}"), *m, *o, None))
                .collect();
            let f = fold(&reports);
            assert_eq!(
                (f.outcome, f.decided, f.mode, f.warnings.len()),
                (*outcome, *decided, *mode, *warnings),
                "{chain:?}"
            );
        }
    }

    #[test]
    fn only_an_enforcing_modify_changes_the_params() {
        let soft = report(
            "soft",
            Mode::SoftEnforce,
            Outcome::Modify,
            Some(serde_json::json!({"a": 1})),
        );
        let f = fold(std::slice::from_ref(&soft));
        assert_eq!(
            (f.outcome, f.params, f.decided),
            (Outcome::Allow, None, Outcome::Modify)
        );
        let mut enforced = soft;
        enforced.mode = Mode::Enforce;
        assert_eq!(fold(&[enforced]).params, Some(serde_json::json!({"a": 1})));
    }

    #[cfg(feature = "example-policies")]
    #[test]
    fn rollout_changes_keep_what_they_do_not_change() {
        let engine = Engine::new(&crate::engine::EngineConfig::default()).expect("engine");
        let load = |settings: Value| {
            let spec = PolicySpec {
                name: "p".into(),
                source: crate::examples::source("procurement").expect("embedded"),
                settings,
                limits: Default::default(),
                smoke: Vec::new(),
                trust: Default::default(),
            };
            Arc::new(load::load(&engine, None, &spec).expect("loads"))
        };
        let (a, b, c) = (
            load(serde_json::json!({})),
            load(serde_json::json!({"deny_over": 10})),
            load(serde_json::json!({"deny_over": 20})),
        );
        let candidate = |id: &str, policy: &Arc<LoadedPolicy>, role| Candidate {
            id: id.into(),
            role,
            policy: Arc::clone(policy),
        };
        let rollout = Rollout {
            mode: Mode::SoftEnforce,
            candidates: vec![
                candidate("v2", &a, Role::Shadow),
                candidate("v3", &b, Role::Canary { percent: 10.0 }),
            ],
        };
        let monitored = rollout.with_mode(Mode::Monitor);
        assert_eq!(monitored.mode, Mode::Monitor);
        assert_eq!(monitored.candidates.len(), 2);

        let promoted = rollout.without_candidate("v2");
        assert_eq!(promoted.mode, Mode::SoftEnforce);
        let ids: Vec<&str> = promoted.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["v3"]);

        let reloaded = rollout.with_candidate_policy("v3", &c);
        assert!(Arc::ptr_eq(&reloaded.candidates[0].policy, &a));
        assert!(Arc::ptr_eq(&reloaded.candidates[1].policy, &c));
        assert_eq!(reloaded.candidates[1].role, Role::Canary { percent: 10.0 });
    }

    #[test]
    fn modes_parse_by_their_wire_names() {
        for m in [Mode::Monitor, Mode::SoftEnforce, Mode::Enforce] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        assert!("Enforce".parse::<Mode>().is_err());
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        let k = [7u8; 32];
        assert_eq!(bucket("p", "s-1", &k), bucket("p", "s-1", &k));
        // Another secret, other buckets: a caller without it cannot aim.
        let moved = (0..100)
            .filter(|i| {
                bucket("p", &format!("s-{i}"), &k) != bucket("p", &format!("s-{i}"), &[8; 32])
            })
            .count();
        assert!(moved > 90, "{moved} of 100 moved");
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[(bucket("p", &format!("s-{i}"), &k) / 1000) as usize] += 1;
        }
        // Each tenth of the buckets gets about a tenth of the sessions.
        assert!(counts.iter().all(|n| (850..1150).contains(n)), "{counts:?}");
    }
}
