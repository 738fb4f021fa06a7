//! Replay: a candidate judged on recorded traffic before it sees live
//! traffic. Each decision record of a log that the policy took part in is
//! turned back into the input that policy saw, the candidate evaluates
//! it, and the two answers are counted in the same [`Divergences`] a live
//! shadow fills.
//!
//! The input is rebuilt from the record: the action with its stored
//! params, after the params of any enforced modify earlier in the chain;
//! the context; the history the host filled. Records whose params were not
//! kept (`log.params = "sha256"`) cannot be replayed and are counted as
//! skipped; redacted params are replayed as stored, and counted.
//!
//! A decision that depended on labels is replayed on them: the session's
//! labels the record names are the context's, and `labels-of` answers
//! each value the recorded policy asked about as it was answered then (the
//! record keeps the value's hash). A value the recorded policy never asked
//! about has no recorded answer: it is answered with none, and counted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use serde::Serialize;
use serde_json::Value;

use super::divergence::{Compared, Divergences, PairOf, PairReport, Side, VersionRef};
use super::version_ref;
use crate::decision::{Action, Context, History, Label, Principal, Query};
use crate::engine::Engine;
use crate::evaluate::{self, Input};
use crate::evidence::audit::{self, AuditError, Filter};
use crate::evidence::record::{Parsed, REDACTED};
use crate::flow::LabelQuery;
use crate::load::LoadedPolicy;

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The policy replayed.
    pub policy: String,
    /// Decision records the policy took part in.
    pub records: u64,
    /// Of those, replayed against the candidate.
    pub replayed: u64,
    /// Of those replayed, how many had redacted params.
    pub redacted: u64,
    /// Records not replayed, by why.
    pub skipped: BTreeMap<String, u64>,
    /// `labels-of` questions the candidate asked that the record holds no
    /// answer to (answered with no label).
    pub unanswered_questions: u64,
    /// One pair per recorded version of the policy.
    pub pairs: Vec<PairReport>,
}

/// Replays the decision records of `dir` that `filter` keeps and in which
/// policy `policy` ran, against `candidate` (called `candidate_id` in the
/// report), keeping up to `samples` diverging inputs.
///
/// # Errors
/// An [`AuditError`] when a log file cannot be read.
pub fn replay(
    engine: &Engine,
    dir: &Path,
    filter: &Filter,
    policy: &str,
    candidate: &LoadedPolicy,
    candidate_id: &str,
    samples: usize,
) -> Result<ReplayReport, AuditError> {
    let divergences = Divergences::new(samples);
    let candidate_ref = version_ref(candidate);
    let mut out = ReplayReport {
        policy: policy.to_owned(),
        records: 0,
        replayed: 0,
        redacted: 0,
        skipped: BTreeMap::new(),
        unanswered_questions: 0,
        pairs: Vec::new(),
    };
    let filter = Filter {
        policy: Some(policy.to_owned()),
        ..filter.clone()
    };
    audit::query(&[dir], &filter, |p| {
        out.records += 1;
        let mut rebuilt = match rebuild(p, policy) {
            Ok(r) => r,
            Err(why) => {
                *out.skipped.entry(why.to_owned()).or_default() += 1;
                return true;
            }
        };
        out.replayed += 1;
        if contains_redacted(&rebuilt.action.params) {
            out.redacted += 1;
        }
        let recorded = Arc::new(Recorded {
            answers: std::mem::take(&mut rebuilt.answers),
            unanswered: AtomicU64::new(0),
        });
        let mut input = Input::new(&rebuilt.action, &rebuilt.context, &rebuilt.history).with_flow(
            &rebuilt.labels,
            Arc::clone(&recorded) as Arc<dyn LabelQuery>,
        );
        let eval = evaluate::evaluate(
            engine,
            &candidate.pre,
            &candidate.limits,
            &candidate.settings,
            &mut input,
            None,
        );
        out.unanswered_questions += recorded.unanswered.load(Ordering::Relaxed);
        let candidate_side = super::side(&candidate.report(eval));
        let pair = PairOf {
            policy,
            primary: &rebuilt.recorded,
            candidate_id,
            candidate: &candidate_ref,
            role: "replay",
        };
        let seen = Compared {
            primary: &rebuilt.primary,
            candidate: &candidate_side,
            decision_id: p.data()["decision_id"].as_str().unwrap_or_default(),
            at: p.ts(),
        };
        divergences.record(pair, seen, || input.wire());
        true
    })?;
    out.pairs = divergences.report(policy);
    Ok(out)
}

/// A recorded decision turned back into the input the policy saw.
struct Rebuilt {
    action: Action,
    context: Context,
    history: History,
    /// The version that ran, as recorded (the log does not hold settings).
    recorded: VersionRef,
    /// What it answered.
    primary: Side,
    /// The session's labels when it was decided.
    labels: Vec<Label>,
    /// What `labels-of` answered the recorded policy, by value hash.
    answers: HashMap<String, Vec<String>>,
}

/// `labels-of` as a record answered it.
struct Recorded {
    answers: HashMap<String, Vec<String>>,
    unanswered: AtomicU64,
}

impl LabelQuery for Recorded {
    fn labels_of(&self, value: &str) -> Vec<String> {
        let hash = format!(
            "sha256:{}",
            crate::hex::encode(&Sha256::digest(value.as_bytes()))
        );
        match self.answers.get(&hash) {
            Some(labels) => labels.clone(),
            None => {
                self.unanswered.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        }
    }
}

fn rebuild(p: &Parsed, policy: &str) -> Result<Rebuilt, &'static str> {
    let d = p.data();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut params = d
        .get("params")
        .cloned()
        .ok_or("params not stored (log.params = \"sha256\")")?;
    let reports = d["policies"].as_array().ok_or("not a decision record")?;
    let mut ran = None;
    for q in reports {
        if q["name"].as_str() == Some(policy) {
            ran = Some(q);
            break;
        }
        // What an enforced modify earlier in the chain made of the params
        // is what the policy saw.
        let enforced = q
            .get("mode")
            .and_then(Value::as_str)
            .is_none_or(|m| m == "enforce");
        if enforced && q["outcome"] == "modify" {
            params = q
                .get("params")
                .cloned()
                .ok_or("params not stored (log.params = \"sha256\")")?;
        }
    }
    let q = ran.ok_or("the policy did not run")?;
    let primary = if q.get("mode").and_then(Value::as_str) == Some("monitor") {
        Side {
            outcome: "not-evaluated".into(),
            rule: text(&q["rule"]),
        }
    } else {
        Side {
            outcome: text(&q["outcome"]),
            rule: text(&q["rule"]),
        }
    };
    let principal = |v: &Value| -> Result<Principal, &'static str> {
        serde_json::from_value(v.clone()).map_err(|_| "the record's context does not parse")
    };
    let c = &d["context"];
    let context = Context {
        agent: principal(&c["agent"])?,
        user: match &c["user"] {
            Value::Null => None,
            u => Some(principal(u)?),
        },
        environment: text(&c["environment"]),
        session: text(&c["session"]),
        attributes: serde_json::from_value(c["attributes"].clone())
            .map_err(|_| "the record's context does not parse")?,
    };
    let history = serde_json::from_value(d["history"].clone())
        .map_err(|_| "the record's history does not parse")?;
    let labels: Vec<Label> = match d.get("flow") {
        Some(f) => serde_json::from_value(f["held"].clone())
            .map_err(|_| "the record's labels do not parse")?,
        None => Vec::new(),
    };
    let questions: Vec<Query> = match q.get("questions") {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| "the record's labels-of answers do not parse")?,
        None => Vec::new(),
    };
    let answers = questions
        .into_iter()
        .map(|q| (q.value_sha256, q.labels))
        .collect();
    let a = &d["action"];
    Ok(Rebuilt {
        action: Action {
            kind: text(&a["kind"]),
            name: text(&a["name"]),
            target: text(&a["target"]),
            params,
        },
        context,
        history,
        recorded: VersionRef {
            version: text(&q["version"]),
            settings: String::new(),
        },
        primary,
        labels,
        answers,
    })
}

fn contains_redacted(v: &Value) -> bool {
    match v {
        Value::String(s) => s == REDACTED,
        Value::Array(items) => items.iter().any(contains_redacted),
        Value::Object(map) => map.values().any(contains_redacted),
        _ => false,
    }
}
