//! Hostile policies: each misbehaviour becomes its own named failure, a
//! deny, and the host keeps deciding correctly for everyone else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use arbiter::Outcome;
use arbiter::evaluate::Limits;
use arbiter_tests::{arbiter, artifacts, load_example, load_file, request};
use serde_json::json;

fn misbehave(limits: Limits) -> arbiter::Arbiter {
    let p = load_file("misbehave", artifacts::MISBEHAVE, json!({}), limits).expect("loads");
    arbiter(vec![p])
}

/// Each row: the action name that triggers it, the failure kind, a part of
/// the reason that must appear, and the limits to run under.
fn rows() -> Vec<(&'static str, &'static str, &'static str, Limits)> {
    let d = Limits::default();
    vec![
        (
            "loop",
            "fuel",
            "fuel exhausted",
            Limits {
                fuel: 2_000_000,
                deadline_ms: 60_000,
                ..d
            },
        ),
        (
            "spin",
            "deadline",
            "deadline exceeded",
            Limits {
                fuel: 1 << 50,
                deadline_ms: 50,
                ..d
            },
        ),
        (
            "grow",
            "memory",
            "the cap is 4194304 bytes",
            Limits {
                max_memory_bytes: 4 << 20,
                ..d
            },
        ),
        ("recurse", "stack-overflow", "stack exhausted", d),
        ("panic", "panic", "policy bug: index 7 out of range", d),
        ("exit", "exit", "called exit", d),
        ("abort", "trap", "unreachable", d),
        ("risk", "invalid-output", "risk 150 is over 100", d),
        (
            "modify-no-params",
            "invalid-output",
            "modify without params",
            d,
        ),
        (
            "bad-json",
            "invalid-output",
            "modify params are not JSON",
            d,
        ),
        (
            "huge-reason",
            "invalid-output",
            "the reason is 1048576 bytes",
            d,
        ),
    ]
}

#[test]
fn each_misbehaviour_is_its_own_named_deny() {
    for (name, kind, detail, limits) in rows() {
        let arbiter = misbehave(limits);
        let d = arbiter.decide(&request("tool", name, json!({})));
        assert_eq!(d.outcome, Outcome::Deny, "{name}: {d:?}");
        assert_eq!(d.rule, format!("failure.{kind}"), "{name}: {}", d.reason);
        assert_eq!(d.policies[0].failure.as_deref(), Some(kind), "{name}");
        assert!(
            d.reason.contains(&format!("({kind})")),
            "{name}: {}",
            d.reason
        );
        assert!(d.reason.contains(detail), "{name}: {}", d.reason);
        assert_eq!(d.risk, 100);
        // The same instance pool keeps serving the same policy.
        let ok = arbiter.decide(&request("tool", "behave", json!({})));
        assert_eq!(
            (ok.outcome, ok.rule.as_str()),
            (Outcome::Allow, "misbehave.none"),
            "after {name}"
        );
    }
}

#[test]
fn deadline_fires_near_its_time_not_at_fuel() {
    let arbiter = misbehave(Limits {
        fuel: 1 << 50,
        deadline_ms: 30,
        ..Limits::default()
    });
    let d = arbiter.decide(&request("tool", "spin", json!({})));
    assert_eq!(d.rule, "failure.deadline");
    // Epoch ticks are 1 ms: the call stops a little after 30 ms, never
    // before it.
    assert!(d.policies[0].micros >= 30_000, "{}", d.policies[0].micros);
}

/// A policy that really needs 15 ms of CPU, under a 60 ms deadline,
/// decided four at a time while every core is kept busy three times over:
/// each decision takes far longer than 60 ms of wall time, waiting for a
/// CPU, and none is denied for it; a policy that really runs past the
/// deadline is still stopped at it.
#[test]
fn a_slow_decision_waiting_for_a_cpu_is_not_denied_its_deadline() {
    let limits = Limits {
        fuel: 1 << 50,
        deadline_ms: 60,
        ..Limits::default()
    };
    let arbiter = misbehave(limits);
    let work = |rounds: u64| {
        let mut r = request("tool", "work", json!({}));
        r.action.target = rounds.to_string();
        arbiter.decide(&r)
    };
    // Calibrate alone: the rounds that take about 15 ms here.
    let mut rounds = 100_000;
    loop {
        let d = work(rounds);
        assert_eq!(d.rule, "misbehave.worked", "{}", d.reason);
        if d.policies[0].micros >= 15_000 {
            break;
        }
        rounds *= 2;
    }
    let _burner = arbiter_tests::Burner::start(3);
    let walls: Vec<u64> = thread::scope(|s| {
        let deciders: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| {
                            let d = work(rounds);
                            assert_eq!(
                                (d.outcome, d.rule.as_str()),
                                (Outcome::Allow, "misbehave.worked"),
                                "a legitimate decision was denied while it waited: {}",
                                d.reason
                            );
                            d.policies[0].micros
                        })
                        .max()
                        .unwrap_or(0)
                })
            })
            .collect();
        deciders
            .into_iter()
            .map(|t| t.join().expect("decider"))
            .collect()
    });
    let slowest = walls.iter().copied().max().unwrap_or(0);
    // Without the contention this test would prove nothing.
    assert!(
        slowest > 60_000,
        "no decision waited past the deadline ({slowest} µs); the load was not felt"
    );
    let spin = arbiter.decide(&request("tool", "spin", json!({})));
    assert_eq!(spin.rule, "failure.deadline", "{}", spin.reason);
    assert!(spin.policies[0].micros >= 60_000);
}

/// Spare instances are made ahead of the decisions that take them, and
/// each still serves exactly one decision: a policy counting its calls in
/// memory always counts one. (With reuse on, the same count grows: the
/// test would see an instance that served twice.)
#[test]
fn every_decision_runs_in_an_instance_no_other_decision_used() {
    let policy = load_file(
        "misbehave",
        artifacts::MISBEHAVE,
        json!({}),
        Limits::default(),
    )
    .expect("loads");
    let a = arbiter(vec![policy.clone()]);
    for i in 0..50 {
        let d = a.decide(&request("tool", "count", json!({})));
        assert_eq!(
            (d.rule.as_str(), d.risk),
            ("misbehave.counted", 1),
            "decision {i} ran in a used instance"
        );
        if i == 0 {
            arbiter_tests::wait_for("spares made ahead", || policy.instances().spares() == 2);
        }
    }
    let reused = load_file(
        "misbehave",
        artifacts::MISBEHAVE,
        json!({}),
        Limits {
            reuse: arbiter::evaluate::Reuse {
                decisions: 10,
                ..Default::default()
            },
            ..Limits::default()
        },
    )
    .expect("loads");
    let a = arbiter(vec![reused]);
    let risks: Vec<u8> = (0..3)
        .map(|_| a.decide(&request("tool", "count", json!({}))).risk)
        .collect();
    assert_eq!(
        risks,
        [1, 2, 3],
        "reuse keeps one instance, and the count shows it"
    );
}

#[test]
fn healthy_policies_stay_correct_while_hostile_ones_run() {
    let stop = AtomicBool::new(false);
    let hostile = misbehave(Limits {
        fuel: 5_000_000,
        deadline_ms: 20,
        max_memory_bytes: 8 << 20,
        ..Limits::default()
    });
    let healthy = arbiter(vec![load_example("procurement")]);
    thread::scope(|s| {
        for name in ["loop", "spin", "grow", "recurse", "panic"] {
            let (hostile, stop) = (&hostile, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let d = hostile.decide(&request("tool", name, json!({})));
                    assert_eq!(d.outcome, Outcome::Deny, "{name}");
                }
            });
        }
        let checkers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    for i in 0..200 {
                        let amount = if i % 2 == 0 { 100 } else { 9000 };
                        let d = healthy.decide(&request(
                            "tool",
                            "payments.transfer",
                            json!({"amount": amount}),
                        ));
                        let want = if i % 2 == 0 {
                            "default.allow"
                        } else {
                            "spend.needs-approval"
                        };
                        assert_eq!(d.rule, want, "{d:?}");
                    }
                })
            })
            .collect();
        for c in checkers {
            c.join().expect("checker");
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_policy_yields_its_thread_to_other_decisions() {
    let slow = misbehave(Limits {
        fuel: 1 << 50,
        deadline_ms: 400,
        ..Limits::default()
    });
    let fast = arbiter(vec![load_example("procurement")]);
    let spinning =
        tokio::spawn(async move { slow.decide_async(request("tool", "spin", json!({}))).await });
    // Let the spinning policy start; it gives the thread back at its first tick.
    tokio::task::yield_now().await;
    let d = fast
        .decide_async(request("db", "db.query", json!({})))
        .await;
    assert_eq!(d.rule, "db.table-not-allowed");
    assert!(
        !spinning.is_finished(),
        "the fast decision waited for the slow one"
    );
    let s = spinning.await.expect("task");
    assert_eq!(s.rule, "failure.deadline");
}
