//! The case-file runner behind `arbiter test`: each case of
//! `shared/scenarios/cases.json` names a policy, optional settings
//! overrides, an action, a context, optional history and the expected
//! decision. Cases run through the real decision flow, one policy per case.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::arbiter::Arbiter;
use crate::decision::{Action, Context, Decision, History, Outcome, Request};
use crate::engine::Engine;
use crate::load::{LoadedPolicy, load_with_settings};

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it shows.
    pub name: String,
    /// The policy it runs.
    pub policy: String,
    /// Settings overriding the policy's defaults.
    #[serde(default)]
    pub settings: Option<Value>,
    /// The action.
    pub action: Action,
    /// The context; missing fields are empty.
    #[serde(default)]
    pub context: Context,
    /// The history; missing fields are zero.
    #[serde(default)]
    pub history: History,
    /// What must be decided.
    pub expect: Expect,
}

/// The expected decision; absent fields are not checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The outcome.
    pub outcome: Outcome,
    /// The rule.
    #[serde(default)]
    pub rule: Option<String>,
    /// The risk.
    #[serde(default)]
    pub risk: Option<u8>,
    /// The params, with modify.
    #[serde(default)]
    pub params: Option<Value>,
}

/// How one case went.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// The case's policy.
    pub policy: String,
    /// Each expectation that was not met, as `field: expected X, got Y`.
    pub mismatches: Vec<String>,
    /// The decision, when one was made.
    pub decision: Option<Decision>,
}

impl CaseResult {
    /// Whether every expectation was met.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Runs `cases` against `policies` (loaded with their default settings),
/// in order.
pub fn run(
    engine: &Engine,
    policies: &BTreeMap<String, LoadedPolicy>,
    cases: &[Case],
) -> Vec<CaseResult> {
    cases
        .iter()
        .map(|case| run_one(engine, policies, case))
        .collect()
}

fn run_one(engine: &Engine, policies: &BTreeMap<String, LoadedPolicy>, case: &Case) -> CaseResult {
    let result = |mismatches, decision| CaseResult {
        name: case.name.clone(),
        policy: case.policy.clone(),
        mismatches,
        decision,
    };
    let Some(policy) = policies.get(&case.policy) else {
        return result(
            vec![format!("policy `{}` is not loaded", case.policy)],
            None,
        );
    };
    let policy = match &case.settings {
        Some(settings) => match load_with_settings(engine, policy, settings) {
            Ok(p) => p,
            Err(e) => return result(vec![format!("settings refused: {e}")], None),
        },
        None => policy.clone(),
    };
    let arbiter = Arbiter::with_chain(engine.clone(), vec![policy]);
    let decision = arbiter.decide(&Request {
        approval_id: None,
        action: case.action.clone(),
        context: case.context.clone(),
        history: case.history,
        trace: None,
    });
    result(compare(&case.expect, &decision), Some(decision))
}

/// The expectations `decision` does not meet.
pub fn compare(expect: &Expect, decision: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    if expect.outcome != decision.outcome {
        out.push(format!(
            "outcome: expected {}, got {}",
            expect.outcome, decision.outcome
        ));
    }
    if let Some(rule) = &expect.rule
        && *rule != decision.rule
    {
        out.push(format!("rule: expected {rule}, got {}", decision.rule));
    }
    if let Some(risk) = expect.risk
        && risk != decision.risk
    {
        out.push(format!("risk: expected {risk}, got {}", decision.risk));
    }
    if let Some(params) = &expect.params
        && Some(params) != decision.params.as_ref()
    {
        let got = decision
            .params
            .as_ref()
            .map_or("none".to_owned(), Value::to_string);
        out.push(format!("params: expected {params}, got {got}"));
    }
    out
}
