//! Combine: folds the reports of a chain into one outcome with
//! deny-overrides precedence, deny > require-approval > modify > allow.
//! Pure; the evaluation stage has already turned failures into denies.

use serde_json::Value;

use crate::decision::{Outcome, PolicyReport};

/// The combined answer of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    /// The winning outcome.
    pub outcome: Outcome,
    /// Index in the chain of the report that decided.
    pub decided_by: usize,
    /// The params the action must run with: the output of the last modify,
    /// unless the outcome is deny.
    pub params: Option<Value>,
}

/// Combines `reports` (in chain order). The deciding report is the one with
/// the highest-precedence outcome; among equals, the higher risk, then the
/// earlier in the chain. `None` for an empty chain.
pub fn combine(reports: &[PolicyReport]) -> Option<Combined> {
    combine_where(reports, |_| true)
}

/// Combines the reports that `keep` selects, as [`combine`] does;
/// `decided_by` is still an index into the whole of `reports`. `None` when
/// it selects none.
pub fn combine_where(
    reports: &[PolicyReport],
    keep: impl Fn(&PolicyReport) -> bool,
) -> Option<Combined> {
    let kept = || reports.iter().enumerate().filter(|(_, r)| keep(r));
    let (decided_by, winner) = kept().max_by(|(ia, a), (ib, b)| {
        (a.outcome.precedence(), a.risk)
            .cmp(&(b.outcome.precedence(), b.risk))
            // `max_by` keeps the last of equals; prefer the earlier one.
            .then(ib.cmp(ia))
    })?;
    let params = match winner.outcome {
        Outcome::Deny => None,
        _ => kept().rev().find_map(|(_, r)| match r.outcome {
            Outcome::Modify => r.params.clone(),
            _ => None,
        }),
    };
    Some(Combined {
        outcome: winner.outcome,
        decided_by,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;
    use serde_json::json;

    fn report(outcome: Outcome, risk: u8, params: Option<Value>) -> PolicyReport {
        PolicyReport {
            name: format!("{outcome}-{risk}"),
            version: String::new(),
            signer: None,
            signed_version: None,
            mode: Default::default(),
            candidate: None,
            outcome,
            rule: String::new(),
            reason: String::new(),
            risk,
            params,
            fuel: 0,
            micros: 0,
            failure: None,
            labels: Vec::new(),
            questions: Vec::new(),
        }
    }

    #[test]
    fn precedence_table() {
        // (chain of outcome and risk, combined outcome, index that decided)
        type Row = (&'static [(Outcome, u8)], Outcome, usize);
        let cases: &[Row] = &[
            (&[(Allow, 0)], Allow, 0),
            (&[(Allow, 0), (Deny, 10)], Deny, 1),
            (&[(Deny, 10), (RequireApproval, 90)], Deny, 0),
            (&[(Modify, 40), (RequireApproval, 10)], RequireApproval, 1),
            (&[(Allow, 50), (Modify, 10)], Modify, 1),
            (&[(Deny, 10), (Deny, 90)], Deny, 1),
            (&[(Deny, 90), (Deny, 90)], Deny, 0),
            (&[(Allow, 0), (Allow, 10), (Allow, 10)], Allow, 1),
        ];
        for (chain, want, by) in cases {
            let reports: Vec<_> = chain.iter().map(|(o, r)| report(*o, *r, None)).collect();
            let c = combine(&reports).expect("non-empty");
            assert_eq!((c.outcome, c.decided_by), (*want, *by), "{chain:?}");
        }
        assert_eq!(combine(&[]), None);
    }

    #[test]
    fn params_come_from_the_last_modify_unless_denied() {
        let m1 = report(Modify, 40, Some(json!({"a": 1})));
        let m2 = report(Modify, 40, Some(json!({"a": 2})));
        let approve = report(RequireApproval, 60, None);
        let deny = report(Deny, 80, None);
        assert_eq!(
            combine(&[m1.clone(), m2.clone()]).and_then(|c| c.params),
            Some(json!({"a": 2}))
        );
        assert_eq!(
            combine(&[m1.clone(), approve]).and_then(|c| c.params),
            Some(json!({"a": 1}))
        );
        assert_eq!(combine(&[m1, deny]).and_then(|c| c.params), None);
    }
}
