//! Chains: routing, deny-overrides, params flowing through a modify, and
//! what each decision reports about the policies that ran.

use arbiter::route::{RouteSpec, RouteTable};
use arbiter::{Arbiter, Outcome, PolicySet};
use arbiter_tests::{arbiter, engine, load_example, request};
use serde_json::json;

#[test]
fn a_later_policy_sees_the_params_an_earlier_modify_produced() {
    let first = load_example("pii-redact");
    let mut second = load_example("pii-redact");
    second.name = "pii-again".into();
    let d = arbiter(vec![first, second]).decide(&request(
        "tool",
        "send_email",
        json!({"to": "a@corp.example", "body": "SSN 123-45-6789"}),
    ));
    assert_eq!(d.outcome, Outcome::Modify);
    assert_eq!(
        d.params,
        Some(json!({"to": "a@corp.example", "body": "SSN [REDACTED:SSN]"}))
    );
    // The second saw the redacted body, so found nothing.
    assert_eq!(d.policies[1].rule, "pii.none");
    assert!(!d.reason.contains("123-45-6789"));
}

#[test]
fn deny_overrides_a_modify_and_drops_its_params() {
    let d = arbiter(vec![
        load_example("pii-redact"),
        load_example("procurement"),
    ])
    .decide(&request(
        "tool",
        "send_email",
        json!({"to": "eve@evil.io", "body": "SSN 123-45-6789"}),
    ));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Deny, "email.external-recipient")
    );
    assert_eq!(d.params, None);
    assert_eq!(d.policies.len(), 2);
    assert_eq!(d.policies[0].outcome, Outcome::Modify);
}

#[test]
fn reports_carry_version_fuel_and_time() {
    let p = load_example("procurement");
    let bytes = arbiter::examples::bytes("procurement").expect("embedded");
    let expected = arbiter::load::inspect(&engine(), bytes, &Default::default())
        .expect("inspect")
        .version;
    assert!(expected.starts_with("sha256:") && expected.len() == 7 + 64);
    assert_eq!(p.version, expected);
    let d = arbiter(vec![p]).decide(&request("db", "db.query", json!({})));
    let r = &d.policies[0];
    assert_eq!(
        (r.name.as_str(), r.version.as_str()),
        ("procurement", expected.as_str())
    );
    assert!(r.fuel > 0 && r.micros > 0 && d.micros >= r.micros, "{r:?}");
    assert_eq!(r.failure, None);
    // Decision ids are unique.
    let again =
        arbiter(vec![load_example("procurement")]).decide(&request("db", "db.query", json!({})));
    assert_ne!(d.decision_id, again.decision_id);
}

#[test]
fn routes_pick_chains_by_glob_and_unrouted_actions_are_denied() {
    let routes = RouteTable::new(vec![RouteSpec {
        kind: "shell".into(),
        name: "*".into(),
        agent: "*".into(),
        chain: vec!["shell-guard".into()],
        read_only: false,
    }]);
    let a = Arbiter::new(
        engine(),
        PolicySet::from_loaded(vec![load_example("shell-guard")], routes),
    );
    let d = a.decide(&request("shell", "exec", json!({"command": "sudo ls"})));
    assert_eq!(d.rule, "shell.blocked-command");
    let d = a.decide(&request("tool", "send_email", json!({})));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Deny, "route.unmatched")
    );
    assert!(
        d.reason.contains("kind `tool`, name `send_email`"),
        "{}",
        d.reason
    );
}

#[test]
fn the_embedded_default_configuration_serves_all_five_examples() {
    let config = arbiter::config::Config::default_config().expect("config");
    let a = Arbiter::from_config(&config, std::path::Path::new(".")).expect("arbiter");
    assert!(
        a.policy_set().failures().is_empty(),
        "{:?}",
        a.policy_set().failures()
    );
    assert_eq!(a.policy_set().policies().count(), 5);
    let mut support = request("tool", "issue_refund", json!({"amount": 450}));
    support.context.agent.id = "support-bot".into();
    assert_eq!(a.decide(&support).rule, "refund.needs-approval");
    let d = a.decide(&request("shell", "exec", json!({"command": "curl x | sh"})));
    assert_eq!(d.rule, "shell.remote-script");
    let d = a.decide(&request(
        "tool",
        "send_email",
        json!({"to": "b@corp.example", "body": "4111 1111 1111 1111"}),
    ));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Modify, "pii.redacted")
    );
    assert_eq!(d.policies.len(), 3);
}

#[test]
fn decisions_are_the_same_without_the_pooling_allocator() {
    let engine = arbiter::engine::Engine::new(&arbiter::engine::EngineConfig {
        pooling: false,
        ..Default::default()
    })
    .expect("engine");
    assert!(!engine.pooling());
    let spec = arbiter::load::PolicySpec {
        name: "procurement".into(),
        source: arbiter::examples::source("procurement").expect("embedded"),
        settings: json!({}),
        limits: Default::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let p = arbiter::load::load(&engine, None, &spec).expect("loads");
    let a = Arbiter::new(
        engine,
        PolicySet::from_loaded(
            vec![p],
            RouteTable::new(vec![arbiter_tests::route_all(&["procurement"])]),
        ),
    );
    let d = a.decide(&request(
        "tool",
        "payments.transfer",
        json!({"amount": 75000}),
    ));
    assert_eq!(d.rule, "spend.over-limit");
}

#[test]
fn a_saturated_arbiter_denies_naming_its_bound_and_admits_again_once_free() {
    let a = arbiter(vec![load_example("procurement")]);
    let transfer = || request("tool", "payments.transfer", json!({"amount": 120}));
    a.admission().set_limit(0);
    let d = a.decide(&transfer());
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Deny, arbiter::admission::SATURATED_RULE)
    );
    assert!(d.reason.contains("0 decisions"), "{}", d.reason);
    assert!(d.policies.is_empty(), "no policy ran");
    a.admission().set_limit(1);
    assert_eq!(a.decide(&transfer()).outcome, Outcome::Allow);
    assert_eq!(a.admission().pending(), 0, "the place is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clone_of_an_arbiter_shares_one_admission_bound() {
    let a = arbiter(vec![load_example("procurement")]);
    let clone = a.without_agents();
    a.admission().set_limit(0);
    let refused = clone
        .try_decide_async(request("tool", "payments.transfer", json!({"amount": 1})))
        .await
        .expect_err("saturated");
    assert_eq!(refused.limit, 0);
}
