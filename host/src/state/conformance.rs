//! The conformance suite every state backend passes: what the stages rely
//! on. The embedded and in-memory stores run it in this crate's tests; a
//! store that needs a server of its own (PostgreSQL) runs it from the
//! end-to-end tests, which start one (feature `conformance`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Approval, Breaker, DAY_MS, DaySpend, Pin, State, StateChange, Suspension};
use crate::decision::ApprovalStatus;

/// A suspension for `reason`, by `ops`.
pub fn suspension(reason: &str) -> Suspension {
    Suspension {
        reason: reason.into(),
        by: "ops".into(),
        at: "2026-01-01T00:00:00Z".into(),
    }
}

/// An approval `id` in `status`, asked about nothing in particular.
pub fn approval(id: &str, status: ApprovalStatus) -> Approval {
    Approval {
        id: id.into(),
        status,
        digest: "sha256:00".into(),
        policies: BTreeMap::new(),
        request: serde_json::json!({}),
        rule: "r".into(),
        reason: "why".into(),
        risk: 50,
        decision_id: "d".into(),
        created_ms: 1,
        expires_ms: 2,
        answer: None,
        required: 1,
        approvers: Vec::new(),
        used_by: None,
        verdicts: Vec::new(),
    }
}

fn pin(tool: &str, digest: &str) -> Pin {
    Pin {
        server: "srv".into(),
        tool: tool.into(),
        digest: digest.into(),
        definition: serde_json::json!({"name": tool}),
        pinned_at: "t".into(),
        accepted_by: None,
        changed: None,
    }
}

/// What every backend must do: each kind of state written, read back,
/// changed and announced.
///
/// # Panics
/// When the backend does not conform.
pub fn conforms(state: &State) {
    let mut changes = state.subscribe();

    let agents = &state.agents;
    agents.suspend("bot", &suspension("leak")).expect("suspend");
    agents.suspend("other", &suspension("x")).expect("suspend");
    agents.resume("other").expect("resume");
    assert_eq!(
        agents.suspensions().expect("read"),
        [("bot".to_owned(), suspension("leak"))]
    );
    let b = Breaker {
        since_ms: 1,
        until_ms: 2,
        denials: 3,
    };
    agents.open_breaker("bot", &b).expect("open");
    assert_eq!(agents.breakers().expect("read"), [("bot".to_owned(), b)]);
    agents.close_breaker("bot").expect("close");
    assert!(agents.breakers().expect("read").is_empty());
    let mut day = DaySpend::default();
    day.add(DAY_MS * 3, 700);
    agents.save_spend(&[("bot".into(), day)]).expect("spend");
    day.add(DAY_MS * 3, 50);
    agents
        .save_spend(&[("bot".into(), day)])
        .expect("spend again");
    let spend = agents.spend().expect("read");
    assert_eq!(spend.len(), 1);
    assert_eq!(spend[0].1.today(DAY_MS * 3), 750, "the last save wins");

    let approvals = &state.approvals;
    approvals
        .create(&approval("a", ApprovalStatus::Pending))
        .expect("create");
    let granted = approval("a", ApprovalStatus::Approved);
    assert!(
        !approvals
            .transition(ApprovalStatus::Approved, &granted)
            .expect("wrong from")
    );
    assert!(
        approvals
            .transition(ApprovalStatus::Pending, &granted)
            .expect("grant")
    );
    let used = approval("a", ApprovalStatus::Used);
    assert!(
        approvals
            .transition(ApprovalStatus::Approved, &used)
            .expect("use")
    );
    assert!(
        !approvals
            .transition(ApprovalStatus::Approved, &used)
            .expect("a second use")
    );
    assert!(
        !approvals
            .transition(
                ApprovalStatus::Pending,
                &approval("nope", ApprovalStatus::Used)
            )
            .expect("unknown")
    );
    assert_eq!(
        approvals.approvals().expect("read")[0].status,
        ApprovalStatus::Used
    );
    assert_eq!(
        approvals.approval("a").expect("read one").map(|a| a.status),
        Some(ApprovalStatus::Used)
    );
    assert_eq!(approvals.approval("nope").expect("read one"), None);
    approvals.remove("a").expect("remove");
    assert!(approvals.approvals().expect("read").is_empty());

    let pins = &state.pins;
    pins.save_pins(&[pin("t1", "d1"), pin("t2", "d2")])
        .expect("pins");
    pins.save_pins(&[pin("t1", "d3")]).expect("pins again");
    let mut all: Vec<(String, String)> = pins
        .pins()
        .expect("read")
        .into_iter()
        .map(|p| (p.tool, p.digest))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [("t1".into(), "d3".into()), ("t2".into(), "d2".into())]
    );

    let mut heard = Vec::new();
    while let Ok(c) = changes.try_recv() {
        heard.push(c);
    }
    for expected in [
        StateChange::Suspended("bot".into()),
        StateChange::Resumed("other".into()),
        StateChange::BreakerOpened("bot".into()),
        StateChange::BreakerClosed("bot".into()),
        StateChange::Approval("a".into()),
        StateChange::Pins,
    ] {
        assert!(heard.contains(&expected), "{expected:?} not in {heard:?}");
    }
}

/// Thirty threads race to use one granted approval: exactly one wins.
///
/// # Panics
/// When none or several win.
pub fn single_use_holds_under_races(state: &State) {
    state
        .approvals
        .create(&approval("race", ApprovalStatus::Approved))
        .expect("create");
    let wins: usize = (0..30)
        .map(|_| {
            let store = Arc::clone(&state.approvals);
            std::thread::spawn(move || {
                store
                    .transition(
                        ApprovalStatus::Approved,
                        &approval("race", ApprovalStatus::Used),
                    )
                    .expect("transition")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| usize::from(t.join().expect("join")))
        .sum();
    assert_eq!(wins, 1);
}
