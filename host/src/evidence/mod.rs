//! Evidence: what every decision leaves behind. [`log`] is the
//! tamper-evident decision log, [`mod@record`] its records and their canonical
//! encoding, [`audit`] reads a log back (verify, query, stats), and
//! [`metrics`] counts. [`record()`] is the evidence stage of a decision: log,
//! then metrics, then a trace.

pub mod audit;
pub mod log;
pub mod metrics;
pub mod record;

use crate::decision::{Decision, History, Mode, Outcome, Request};
use log::{DecisionLog, Unrecorded};
use metrics::Metrics;

/// The evidence stage: the decision is written to the log before it is
/// answered, then counted and traced. A decision the log cannot take is a
/// deny (`failure.log`) unless the log is configured to serve anyway.
pub fn record(
    log: Option<&DecisionLog>,
    metrics: Option<&Metrics>,
    request: &Request,
    history: &History,
    decision: Decision,
) -> Decision {
    let decision = match log.map(|l| l.record(request, history, &decision)) {
        Some(Err(e)) => unrecorded(decision, &e),
        Some(Ok(_)) | None => decision,
    };
    if let Some(m) = metrics {
        m.record_decision(&decision);
    }
    tracing::debug!(
        decision_id = %decision.decision_id,
        outcome = %decision.outcome,
        rule = %decision.rule,
        micros = decision.micros,
        "decided"
    );
    decision
}

/// A decision the log could not take: deny, keeping what the policies said.
fn unrecorded(decision: Decision, e: &Unrecorded) -> Decision {
    Decision {
        outcome: Outcome::Deny,
        decided: Outcome::Deny,
        mode: Mode::Enforce,
        reason: format!("Arbiter could not record this decision: {e}; failing closed."),
        rule: "failure.log".into(),
        risk: 100,
        params: None,
        ..decision
    }
}
