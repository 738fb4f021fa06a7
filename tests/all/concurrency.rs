//! Many decisions at once from tokio tasks, on one engine and pool: every
//! one must match its case.

use std::collections::BTreeMap;

use arbiter::cases::{self, Case};
use arbiter::route::RouteTable;
use arbiter::{Arbiter, PolicySet, Request};
use arbiter_tests::{CASES, engine, load_example, route_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_from_tokio_tasks_are_all_correct() {
    let cases: Vec<Case> =
        serde_json::from_slice(&std::fs::read(CASES).expect("cases")).expect("parse");
    // Cases without settings overrides run against one arbiter per policy.
    let mut arbiters = BTreeMap::new();
    for case in cases.iter().filter(|c| c.settings.is_none()) {
        arbiters.entry(case.policy.clone()).or_insert_with(|| {
            let set = PolicySet::from_loaded(
                vec![load_example(&case.policy)],
                RouteTable::new(vec![route_all(&[case.policy.as_str()])]),
            );
            Arbiter::new(engine(), set)
        });
    }
    let mut tasks = Vec::new();
    for round in 0..8 {
        for case in cases.iter().filter(|c| c.settings.is_none()) {
            let arbiter = arbiters[&case.policy].clone();
            let case = case.clone();
            tasks.push(tokio::spawn(async move {
                let request = Request {
                    approval_id: None,
                    action: case.action.clone(),
                    context: case.context.clone(),
                    history: case.history,
                    trace: None,
                };
                let d = arbiter.decide_async(request).await;
                (round, case.name.clone(), cases::compare(&case.expect, &d))
            }));
        }
    }
    assert!(tasks.len() > 300);
    for t in tasks {
        let (round, name, mismatches) = t.await.expect("task");
        assert!(
            mismatches.is_empty(),
            "round {round}, {name}: {mismatches:?}"
        );
    }
}
