//! A decision's spans: the [`Timeline`] the flow marks as each stage ends,
//! and the span tree built from it, off the decision's thread.

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

use crate::decision::traceparent::TraceParent;
use crate::decision::{Decision, PolicyReport, Request};

/// The stages of a decision, in the order the flow runs them; each span
/// runs from the end of the stage marked before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A place among the decisions in flight.
    Admission,
    /// The agent's history.
    Enrich,
    /// The chain for the action.
    Route,
    /// Suspension, changed tool, breaker.
    Gate,
    /// The policies of the chain (each a child span).
    Evaluate,
    /// The reports folded through the modes.
    Combine,
    /// Require-approval kept or answered; the fleet's spend.
    Approvals,
    /// Written to the log, counted.
    Evidence,
}

const STAGES: [Stage; 8] = [
    Stage::Admission,
    Stage::Enrich,
    Stage::Route,
    Stage::Gate,
    Stage::Evaluate,
    Stage::Combine,
    Stage::Approvals,
    Stage::Evidence,
];

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Admission => "arbiter.admission",
            Stage::Enrich => "arbiter.enrich",
            Stage::Route => "arbiter.route",
            Stage::Gate => "arbiter.gate",
            Stage::Evaluate => "arbiter.evaluate",
            Stage::Combine => "arbiter.combine",
            Stage::Approvals => "arbiter.approvals",
            Stage::Evidence => "arbiter.evidence",
        }
    }
}

/// When each stage of one decision ended; does nothing when the decision
/// is not traced.
#[derive(Debug)]
pub struct Timeline(Option<Box<Marks>>);

#[derive(Debug)]
struct Marks {
    parent: Option<TraceParent>,
    start: Instant,
    wall: SystemTime,
    ends: [Option<Instant>; STAGES.len()],
    /// Each policy of the chain: when it started and ended.
    policies: Vec<(Instant, Instant)>,
}

impl Timeline {
    /// A timeline that records nothing.
    pub fn off() -> Self {
        Timeline(None)
    }

    pub(super) fn start(parent: Option<TraceParent>) -> Self {
        Timeline(Some(Box::new(Marks {
            parent,
            start: Instant::now(),
            wall: SystemTime::now(),
            ends: [None; STAGES.len()],
            policies: Vec::new(),
        })))
    }

    /// Whether this decision is traced.
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// `stage` ended now.
    pub fn mark(&mut self, stage: Stage) {
        if let Some(m) = &mut self.0 {
            m.ends[stage as usize] = Some(Instant::now());
        }
    }

    /// The next policy of the chain ran from `started` until now.
    pub fn policy(&mut self, started: Option<Instant>) {
        if let (Some(m), Some(s)) = (&mut self.0, started) {
            m.policies.push((s, Instant::now()));
        }
    }

    /// When a policy starts, if it is being recorded.
    pub fn now(&self) -> Option<Instant> {
        self.0.as_ref().map(|_| Instant::now())
    }

    pub(super) fn finish(self, request: &Request, decision: &Decision) -> Option<Finished> {
        let marks = self.0?;
        Some(Finished {
            marks: *marks,
            agent: request.context.agent.id.clone(),
            kind: request.action.kind.clone(),
            action: request.action.name.clone(),
            decision: decision.clone(),
        })
    }
}

/// A traced decision, sent to the export thread.
pub(super) struct Finished {
    marks: Marks,
    agent: String,
    kind: String,
    action: String,
    decision: Decision,
}

impl Finished {
    pub(super) fn decision_id(&self) -> &str {
        &self.decision.decision_id
    }

    /// How many spans it becomes.
    pub(super) fn span_count(&self) -> usize {
        1 + self.marks.ends.iter().flatten().count() + self.marks.policies.len()
    }

    /// The decision's span tree: the decision, then each stage, the
    /// policies under `evaluate`.
    pub(super) fn spans(self, scope: &InstrumentationScope) -> Vec<SpanData> {
        let ids = RandomIdGenerator::default();
        let Finished {
            marks,
            agent,
            kind,
            action,
            decision,
        } = self;
        let at = |i: Instant| marks.wall + i.saturating_duration_since(marks.start);
        let (trace_id, parent_id, remote) = match marks.parent {
            Some(p) => (
                TraceId::from_bytes(p.trace_id),
                SpanId::from_bytes(p.span_id),
                true,
            ),
            None => (ids.new_trace_id(), SpanId::INVALID, false),
        };
        let context = |span: SpanId| {
            SpanContext::new(trace_id, span, TraceFlags::SAMPLED, false, TraceState::NONE)
        };
        let root_id = ids.new_span_id();
        let end = marks
            .ends
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or(marks.start);
        let failed: Vec<&str> = decision
            .policies
            .iter()
            .filter_map(|p| p.failure.as_deref())
            .collect();
        let span = |id: SpanId,
                    parent: SpanId,
                    name: &'static str,
                    kind: SpanKind,
                    (start, end): (SystemTime, SystemTime),
                    attributes: Vec<KeyValue>,
                    status: Status| SpanData {
            span_context: context(id),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        };
        let mut out = Vec::with_capacity(1 + STAGES.len() + marks.policies.len());
        let mut root = span(
            root_id,
            parent_id,
            "arbiter.decision",
            SpanKind::Server,
            (marks.wall, at(end)),
            vec![
                KeyValue::new("arbiter.decision_id", decision.decision_id.clone()),
                KeyValue::new("arbiter.outcome", decision.outcome.as_str()),
                KeyValue::new("arbiter.decided", decision.decided.as_str()),
                KeyValue::new("arbiter.mode", decision.mode.as_str()),
                KeyValue::new("arbiter.rule", decision.rule.clone()),
                KeyValue::new("arbiter.risk", i64::from(decision.risk)),
                KeyValue::new("arbiter.agent.id", agent),
                KeyValue::new("arbiter.action.kind", kind),
                KeyValue::new("arbiter.action.name", action),
            ],
            if failed.is_empty() {
                Status::Unset
            } else {
                Status::error(format!("policy failure: {}", failed.join(", ")))
            },
        );
        root.parent_span_is_remote = remote;
        out.push(root);
        let mut from = marks.start;
        let mut evaluate_id = None;
        for stage in STAGES {
            let Some(until) = marks.ends[stage as usize] else {
                continue;
            };
            let id = ids.new_span_id();
            if stage == Stage::Evaluate {
                evaluate_id = Some(id);
            }
            out.push(span(
                id,
                root_id,
                stage.name(),
                SpanKind::Internal,
                (at(from), at(until)),
                Vec::new(),
                Status::Unset,
            ));
            from = until;
        }
        // A chain that ran has an evaluate span; policies hang under it.
        if let Some(parent) = evaluate_id {
            for (report, (start, end)) in decision.policies.iter().zip(&marks.policies) {
                let status = match &report.failure {
                    Some(f) => Status::error(f.clone()),
                    None => Status::Unset,
                };
                out.push(span(
                    ids.new_span_id(),
                    parent,
                    "arbiter.policy",
                    SpanKind::Internal,
                    (at(*start), at(*end)),
                    policy_attributes(report),
                    status,
                ));
            }
        }
        out
    }
}

fn policy_attributes(p: &PolicyReport) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("arbiter.policy.name", p.name.clone()),
        KeyValue::new("arbiter.policy.version", p.version.clone()),
        KeyValue::new("arbiter.policy.mode", p.mode.as_str()),
        KeyValue::new("arbiter.policy.outcome", p.outcome.as_str()),
        KeyValue::new("arbiter.policy.rule", p.rule.clone()),
        KeyValue::new("arbiter.policy.risk", i64::from(p.risk)),
        KeyValue::new(
            "arbiter.policy.fuel",
            i64::try_from(p.fuel).unwrap_or(i64::MAX),
        ),
    ];
    if let Some(v) = &p.signed_version {
        a.push(KeyValue::new("arbiter.policy.signed_version", v.clone()));
    }
    if let Some(s) = &p.signer {
        a.push(KeyValue::new("arbiter.policy.signer", s.clone()));
    }
    if let Some(c) = &p.candidate {
        a.push(KeyValue::new("arbiter.policy.candidate", c.clone()));
    }
    if let Some(f) = &p.failure {
        a.push(KeyValue::new("arbiter.policy.failure", f.clone()));
    }
    a
}

/// A uniform random draw, for the sample ratio.
pub(super) fn draw() -> u64 {
    let id = RandomIdGenerator::default().new_span_id();
    u64::from_be_bytes(id.to_bytes())
}

/// A span's length, for tests of the tree.
#[cfg(test)]
fn length(s: &SpanData) -> std::time::Duration {
    s.end_time.duration_since(s.start_time).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Action, Context, History, Outcome};

    fn request() -> Request {
        Request {
            action: Action {
                kind: "tool".into(),
                name: "send_email".into(),
                target: String::new(),
                params: serde_json::json!({}),
            },
            context: Context::default(),
            history: History::default(),
            approval_id: None,
            trace: None,
        }
    }

    #[test]
    fn a_gate_deny_has_no_evaluate_span_and_a_chain_has_one_per_policy() {
        let scope = InstrumentationScope::builder("t").build();
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let mut t = Timeline::start(parent);
        t.mark(Stage::Admission);
        t.mark(Stage::Gate);
        t.mark(Stage::Evidence);
        let d = Decision::host_deny("r", "why".into(), Instant::now());
        let spans = t.finish(&request(), &d).expect("recorded").spans(&scope);
        let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "arbiter.decision",
                "arbiter.admission",
                "arbiter.gate",
                "arbiter.evidence"
            ]
        );
        let root = &spans[0];
        assert_eq!(
            root.span_context.trace_id().to_bytes(),
            parent.expect("valid").trace_id
        );
        assert!(root.parent_span_is_remote);
        for child in &spans[1..] {
            assert_eq!(child.parent_span_id, root.span_context.span_id());
            assert!(child.start_time >= root.start_time && child.end_time <= root.end_time);
            assert!(length(child) <= length(root));
        }
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(Timeline::off().finish(&request(), &d).is_none());
    }
}
