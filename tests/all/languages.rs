//! Policies in any language: the procurement policy built from its Rust,
//! Go, JavaScript and Python sources decides every procurement case of the
//! conformance suite, and every hostile variation of them, exactly as the
//! Rust build does (reasons included); each refuses bad settings naming the
//! key; and bounded instance reuse keeps to its bounds.

use std::collections::BTreeMap;

use arbiter::Outcome;
use arbiter::cases::{self, Case};
use arbiter::decision::{Decision, Principal, Request};
use arbiter::evaluate::{Limits, Reuse};
use arbiter::load::{LoadStep, load_with_settings};
use arbiter_tests::languages::{Lang, load_with, procurement, try_load};
use arbiter_tests::{CASES, arbiter, artifacts, engine, load_file, request};
use serde_json::{Value, json};

fn procurement_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(CASES).expect("read cases.json");
    let all: Vec<Case> = serde_json::from_str(&text).expect("cases parse");
    let mine: Vec<Case> = all
        .into_iter()
        .filter(|c| c.policy == "procurement")
        .collect();
    assert!(mine.len() >= 20, "only {} procurement cases", mine.len());
    mine
}

/// What a decision says, for comparing builds.
fn said(d: &Decision) -> (Outcome, String, u8, String) {
    (d.outcome, d.rule.clone(), d.risk, d.reason.clone())
}

#[test]
fn every_procurement_case_passes_in_every_language_with_the_rust_reasons() {
    let cases = procurement_cases();
    let mut rust = Vec::new();
    for lang in Lang::ALL {
        let policies = BTreeMap::from([("procurement".to_owned(), procurement(lang))]);
        let results = cases::run(&engine(), &policies, &cases);
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed())
            .map(|r| format!("{}: {}", r.name, r.mismatches.join("; ")))
            .collect();
        assert!(failed.is_empty(), "{}: {failed:#?}", lang.name());
        let decided: Vec<_> = results
            .iter()
            .map(|r| said(r.decision.as_ref().expect("decided")))
            .collect();
        if lang == Lang::Rust {
            rust = decided;
        } else {
            for (i, (got, want)) in decided.iter().zip(&rust).enumerate() {
                assert_eq!(got, want, "{}: case `{}`", lang.name(), cases[i].name);
            }
        }
    }
}

/// Inputs no case has: params that are not objects, numbers at the edges,
/// Unicode look-alikes, junk recipients, odd principals.
fn variations() -> Vec<Request> {
    let mut out = Vec::new();
    let mut add = |kind: &str, name: &str, target: &str, params: Value| {
        let mut r = request(kind, name, params);
        r.action.target = target.into();
        out.push(r);
    };
    for params in [
        json!([1, 2]),
        json!(null),
        json!("to=a@corp.example"),
        json!(7),
    ] {
        add("tool", "send_email", "", params.clone());
        add("tool", "payments.transfer", "", params);
    }
    for amount in [
        json!(1e300),
        json!(-0.0),
        json!(5_000.000_000_1),
        json!(123_456_789_012_345_678_u64),
        json!(0.000_001),
        json!(true),
        json!([5]),
        json!({"value": 5}),
    ] {
        add("tool", "payments.transfer", "", json!({ "amount": amount }));
    }
    for target in [
        "PUBLIC.Orders",
        "public.",
        "public",
        "publi",
        "ORDERS",
        "\u{212a}orders",
        "orders ",
        "public.public.orders",
        "пublic.orders",
        "",
    ] {
        add("db", "db.query", target, json!({}));
    }
    for to in [
        json!("bob@corp.example"),
        json!("bob@CORP.EXAMPLE"),
        json!("bob@corp.example\u{00a0}"),
        json!("bob@corp.example\u{2003}"),
        json!("bob@corp.example\u{feff}"),
        json!("bob\u{0085}@corp.example"),
        json!("b;ob@corp.example"),
        json!("bob@c\u{212a}orp.example"),
        json!(["", "bob@corp.example", ""]),
        json!([""]),
        json!([["bob@corp.example"]]),
        json!({"address": "bob@corp.example"}),
        json!(42),
        json!(false),
        json!("@corp.example"),
    ] {
        add("tool", "send_email", "", json!({ "to": to, "cc": [] }));
    }
    add(
        "tool",
        "send_email",
        "",
        json!({"cc": "bob@corp.example", "to": null}),
    );
    add("tool", "Send_Email", "", json!({}));
    add("tool", "send_email\u{0}", "", json!({}));
    add(
        "tool",
        "workflow.trigger",
        "",
        json!({"workflow": "x".repeat(10_000)}),
    );
    let mut intern = request("db", "db.query", json!({}));
    intern.action.target = "orders".into();
    intern.context.user = Some(Principal {
        id: "sam".into(),
        roles: vec!["Intern".into(), "intern".into()],
    });
    out.push(intern.clone());
    intern.context.environment = "PROD".into();
    out.push(intern);
    out
}

#[test]
fn hostile_variations_decide_the_same_in_every_language() {
    let mut requests = variations();
    // Names with a `k` meet the Kelvin sign, which Unicode lower-cases to
    // ASCII `k`: only ASCII case may be ignored.
    for target in ["\u{212a}iosk", "public.KIOSK", "PUBLIC.\u{212a}iosk"] {
        let mut r = request("db", "db.query", json!({}));
        r.action.target = target.into();
        requests.push(r);
    }
    for to in ["a@\u{212a}iosk.example", "a@KIOSK.example"] {
        requests.push(request("tool", "send_email", json!({ "to": to })));
    }
    let kiosk =
        json!({"tables": ["kiosk"], "email_domains": ["kiosk.example"], "approval_over": 0.5});
    let with = |lang, settings: &Value| {
        let policy = load_with_settings(&engine(), &procurement(lang), settings).expect("settings");
        arbiter(vec![policy])
    };
    for settings in [json!({}), kiosk] {
        let rust = with(Lang::Rust, &settings);
        let want: Vec<_> = requests.iter().map(|r| said(&rust.decide(r))).collect();
        // The Rust build itself must not fail on any of them.
        assert!(
            want.iter().all(|w| !w.1.starts_with("failure.")),
            "{want:#?}"
        );
        for lang in [Lang::Go, Lang::JavaScript, Lang::Python] {
            let a = with(lang, &settings);
            for (r, want) in requests.iter().zip(&want) {
                let got = said(&a.decide(r));
                let a = &r.action;
                assert_eq!(
                    &got,
                    want,
                    "{} {settings}: {} {} {}",
                    lang.name(),
                    a.name,
                    a.target,
                    a.params
                );
            }
        }
    }
}

#[test]
fn bad_settings_are_refused_naming_the_key_in_every_language() {
    for lang in Lang::ALL {
        let policy = procurement(lang);
        for (settings, key) in [
            (json!({"tabels": ["orders"]}), "tabels"),
            (json!({"approval_over": "5000"}), "approval_over"),
            (json!({"tables": ["orders", 7]}), "tables"),
            (json!({"deny_over": null}), "deny_over"),
            (json!({"email_domains": "corp.example"}), "email_domains"),
        ] {
            let e = load_with_settings(&engine(), &policy, &settings)
                .map(|_| ())
                .expect_err("refused");
            assert_eq!(e.step, LoadStep::ValidateSettings, "{}: {e}", lang.name());
            assert!(
                e.to_string().contains(&format!("`{key}")),
                "{}: {e}",
                lang.name()
            );
        }
        // A good override is taken, and the defaults stay for the rest.
        let strict = load_with_settings(&engine(), &policy, &json!({"approval_over": 100}))
            .expect("accepted");
        let d = arbiter(vec![strict]).decide(&request(
            "tool",
            "payments.transfer",
            json!({"amount": 150}),
        ));
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::RequireApproval, "spend.needs-approval"),
            "{}",
            lang.name()
        );
        assert_eq!(
            d.reason,
            "The transfer of $150 is over $100 and needs approval.",
            "{}",
            lang.name()
        );
    }
}

#[test]
fn go_without_the_clock_and_random_grants_is_refused_naming_them() {
    let e = try_load(Lang::Go, Limits::default())
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(e.step, LoadStep::CheckImports);
    let message = e.to_string();
    for import in [
        "wasi:clocks/monotonic-clock@",
        "wasi:clocks/wall-clock@",
        "wasi:random/random@",
    ] {
        assert!(message.contains(import), "{message}");
    }
    assert!(
        message.contains("`wasi.clocks = true`") && message.contains("`wasi.random = true`"),
        "{message}"
    );
    // The filesystem and stdio it also imports are linked, inert.
    assert!(
        !message.contains("wasi:filesystem") && !message.contains("wasi:cli"),
        "{message}"
    );
}

fn reusing(decisions: u32, across_agents: bool) -> Limits {
    Limits {
        reuse: Reuse {
            decisions,
            across_agents,
            idle: 2,
        },
        ..Limits::default()
    }
}

fn as_agent(id: &str) -> Request {
    let mut r = request("tool", "payments.transfer", json!({"amount": 9000}));
    r.context.agent.id = id.into();
    r
}

#[test]
fn reuse_keeps_an_instance_per_agent_for_at_most_n_decisions() {
    let policy = load_with(Lang::Python, reusing(3, false));
    let pool = policy.clone();
    let a = arbiter(vec![policy]);
    let first = said(&a.decide(&as_agent("alice")));
    assert_eq!(first.0, Outcome::RequireApproval);
    assert_eq!(pool.instances().idle(), 1);
    // Alice's instance decides again, the same way.
    assert_eq!(said(&a.decide(&as_agent("alice"))), first);
    assert_eq!(pool.instances().idle(), 1);
    // Bob never gets Alice's instance: he gets one of his own.
    assert_eq!(said(&a.decide(&as_agent("bob"))), first);
    assert_eq!(pool.instances().idle(), 2);
    // Alice's third decision is her instance's last: it is dropped.
    assert_eq!(said(&a.decide(&as_agent("alice"))), first);
    assert_eq!(pool.instances().idle(), 1);
    // At most `idle` kept: a third agent's instance pushes the oldest out.
    a.decide(&as_agent("carol"));
    a.decide(&as_agent("dave"));
    assert_eq!(pool.instances().idle(), 2);
}

#[test]
fn reuse_across_agents_only_when_configured_and_off_by_default() {
    let shared = load_with(Lang::JavaScript, reusing(10, true));
    let a = arbiter(vec![shared.clone()]);
    for agent in ["alice", "bob", "carol"] {
        a.decide(&as_agent(agent));
    }
    assert_eq!(
        shared.instances().idle(),
        1,
        "one instance served all three"
    );
    let fresh = procurement(Lang::JavaScript);
    arbiter(vec![fresh.clone()]).decide(&as_agent("alice"));
    assert_eq!(fresh.instances().idle(), 0, "no reuse unless configured");
}

#[test]
fn a_kept_instance_gets_fresh_limits_and_one_that_failed_is_never_reused() {
    let policy = load_file(
        "misbehave",
        artifacts::MISBEHAVE,
        json!({}),
        reusing(100, false),
    )
    .expect("loads");
    let a = arbiter(vec![policy.clone()]);
    let ok = a.decide(&request("tool", "fine", json!({})));
    assert_eq!(ok.rule, "misbehave.none");
    assert_eq!(policy.instances().idle(), 1);
    // The kept instance panics: it is dropped, not put back.
    let d = a.decide(&request("tool", "panic", json!({})));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.rule.starts_with("failure."), "{}", d.rule);
    assert_eq!(policy.instances().idle(), 0);
    // Nor is one whose output the host refused.
    a.decide(&request("tool", "fine", json!({})));
    let d = a.decide(&request("tool", "risk", json!({})));
    assert_eq!(d.rule, "failure.invalid-output");
    assert_eq!(policy.instances().idle(), 0);
    // A kept instance's call has the limits of any call: its own fuel and
    // its own deadline, not what the earlier calls left. Five calls of
    // this fuel budget, each using over a third of it, all succeed...
    let fine = a.decide(&request("tool", "fine", json!({})));
    let per_call = fine.policies[0].fuel;
    let tight = Limits {
        fuel: per_call * 5 / 2,
        ..reusing(100, false)
    };
    let tight_policy =
        load_file("misbehave", artifacts::MISBEHAVE, json!({}), tight).expect("loads");
    let t = arbiter(vec![tight_policy.clone()]);
    for _ in 0..5 {
        assert_eq!(
            t.decide(&request("tool", "fine", json!({}))).rule,
            "misbehave.none"
        );
    }
    // ...as does one after the first call's deadline has long passed.
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(
        t.decide(&request("tool", "fine", json!({}))).rule,
        "misbehave.none"
    );
    assert_eq!(tight_policy.instances().idle(), 1);
    a.decide(&request("tool", "fine", json!({})));
    assert_eq!(policy.instances().idle(), 1);
    let d = a.decide(&request("tool", "loop", json!({})));
    assert_eq!(d.rule, "failure.fuel", "{}", d.reason);
    assert_eq!(policy.instances().idle(), 0);
    let timed = Limits {
        fuel: 1 << 50,
        ..reusing(100, false)
    };
    let policy = load_file("misbehave", artifacts::MISBEHAVE, json!({}), timed).expect("loads");
    let a = arbiter(vec![policy.clone()]);
    a.decide(&request("tool", "fine", json!({})));
    let d = a.decide(&request("tool", "spin", json!({})));
    assert_eq!(d.rule, "failure.deadline", "{}", d.reason);
    assert_eq!(policy.instances().idle(), 0);
    // The async path, as the server runs it, keeps and re-arms the same way.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        a.decide_async(request("tool", "fine", json!({}))).await;
        assert_eq!(policy.instances().idle(), 1);
        let d = a.decide_async(request("tool", "spin", json!({}))).await;
        assert_eq!(d.rule, "failure.deadline", "{}", d.reason);
        assert_eq!(policy.instances().idle(), 0);
    });
}
