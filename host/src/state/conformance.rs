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
    flows_conform(state);
}

/// A session's flow: additions merge (the first origin of a label kept),
/// labels are forgotten with their prints, and an emptied session goes.
fn flows_conform(state: &State) {
    use crate::flow::{Label, Origin, StoredFlow};
    let f = &state.flows;
    let label = |name: &str, at_ms: u64| Label {
        name: name.into(),
        origin: Origin {
            decision_id: format!("d{at_ms}"),
            kind: "mcp".into(),
            name: "read".into(),
            target: "/x".into(),
            at_ms,
        },
    };
    assert_eq!(f.flow("s").expect("read"), None);
    let first = StoredFlow {
        labels: vec![label("private", 1)],
        prints: vec![[7, 1], [u64::MAX, 1]],
        overflow: 0,
    };
    f.add_flow("s", &first).expect("add");
    let second = StoredFlow {
        labels: vec![label("untrusted", 2), label("private", 3)],
        prints: vec![[7, 1], [9, 2]],
        overflow: 1,
    };
    f.add_flow("s", &second).expect("add");
    let got = crate::flow::SessionFlow::from_stored(f.flow("s").expect("read").expect("held"));
    assert_eq!(got.all_names(), ["private", "untrusted"]);
    assert_eq!(got.labels()[0].origin.at_ms, 1, "first origin kept");
    assert_eq!(got.print_count(), 3);
    assert_eq!(got.overflowed(), ["untrusted"]);
    assert_eq!(f.flows().expect("all").len(), 1);
    f.forget_flow("s", &["private".into()]).expect("forget");
    let got = crate::flow::SessionFlow::from_stored(f.flow("s").expect("read").expect("held"));
    assert_eq!(
        (got.all_names(), got.print_count()),
        (vec!["untrusted".to_owned()], 1)
    );
    f.forget_flow("s", &["untrusted".into()]).expect("forget");
    assert_eq!(f.flow("s").expect("read"), None);
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
