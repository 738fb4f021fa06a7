//! Progressive enforcement through a real server: the public cases with a
//! shadow candidate give the confusion matrix the cases imply, a canary
//! takes a stable share of sessions, a mode switch under load holds from
//! the next decision, monitor builds a baseline of what was sent, a
//! promotion goes through the load pipeline, and replay judges a candidate
//! on a recorded log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arbiter::config::{CandidateConfig, CandidateRole, Config, Secret};
use arbiter::evidence::audit::Filter;
use arbiter::server::ServeOptions;
use arbiter_tests::http::{self, Conn, get, post_json};
use arbiter_tests::{
    CASES, Server, artifacts, engine, load_file, log_records, server_config, wait_for,
};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";

/// A procurement candidate: the example component, or a file.
fn candidate(
    id: &str,
    role: CandidateRole,
    percent: Option<f64>,
    settings: Option<Value>,
) -> CandidateConfig {
    CandidateConfig {
        id: id.into(),
        role,
        percent,
        file: None,
        example: None,
        settings,
        limits: None,
    }
}

/// Procurement on every route, with an admin token and the given
/// candidates, logging to `log`.
fn procurement(candidates: Vec<CandidateConfig>) -> Config {
    let mut config = server_config(&[("procurement", "procurement", json!({}))]);
    config.policies[0].candidates = candidates;
    config.auth.admin_token = Some(Secret::try_from(ADMIN.to_owned()).expect("token"));
    config
}

fn start_logging(config: Config, log: &Path) -> Server {
    let mut options = ServeOptions::default();
    options.overrides.log_dir = Some(log.to_owned());
    Server::start(config, options)
}

/// The procurement cases that run with the default settings, as they
/// would reach a server.
fn procurement_cases() -> Vec<Value> {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(CASES).expect("cases")).expect("JSON");
    let chosen: Vec<Value> = cases
        .into_iter()
        .filter(|c| c["policy"] == "procurement" && c.get("settings").is_none())
        .collect();
    assert!(chosen.len() >= 20, "{} cases", chosen.len());
    chosen
}

fn body_of(case: &Value) -> Value {
    let mut context = case["context"].clone();
    if context.get("agent").is_none() {
        context["agent"] = json!({"id": "case-runner"});
    }
    json!({"action": case["action"], "context": context})
}

/// What a candidate with `approval_over = 4000` must answer for a case,
/// from the case's own expectation and the rule table of POLICIES.md: only
/// a valid transfer the primary allows, over 4000, needs approval instead.
fn candidate_outcome_at_4000(case: &Value) -> String {
    let primary = case["expect"]["outcome"]
        .as_str()
        .expect("outcome")
        .to_owned();
    let amount = case["action"]["params"]["amount"].as_f64();
    match (case["action"]["name"].as_str(), amount) {
        (Some("payments.transfer"), Some(a)) if primary == "allow" && a > 4000.0 => {
            "require-approval".into()
        }
        _ => primary,
    }
}

fn ab(addr: std::net::SocketAddr, policy: &str) -> Value {
    let auth = format!("Bearer {ADMIN}");
    let r = http::send(
        addr,
        "GET",
        &format!("/v1/ab/{policy}"),
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Waits until the shadow queue is empty and returns the report.
fn settled_ab(addr: std::net::SocketAddr, policy: &str) -> Value {
    let mut report = Value::Null;
    wait_for("the shadow queue to drain", || {
        report = ab(addr, policy);
        report["queue"]["pending"] == 0
    });
    report
}

fn admin(addr: std::net::SocketAddr, method: &str, path: &str, body: &Value) -> http::Reply {
    let auth = format!("Bearer {ADMIN}");
    http::send(
        addr,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn set_mode(addr: std::net::SocketAddr, policy: &str, body: &Value) -> http::Reply {
    admin(addr, "PUT", &format!("/v1/policies/{policy}/mode"), body)
}

fn promote(addr: std::net::SocketAddr, candidate: &str) -> http::Reply {
    let body = json!({ "candidate": candidate });
    admin(addr, "POST", "/v1/policies/procurement/promote", &body)
}

#[test]
fn the_public_cases_in_shadow_give_the_confusion_matrix_the_cases_imply() {
    let log = tempfile::tempdir().expect("log dir");
    let config = procurement(vec![candidate(
        "threshold-4000",
        CandidateRole::Shadow,
        None,
        Some(json!({"approval_over": 4000})),
    )]);
    let server = start_logging(config, log.path());
    let cases = procurement_cases();
    let mut expected: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut diverging = 0;
    let mut decision_ids = Vec::new();
    for case in &cases {
        let r = post_json(server.addr, "/v1/decide", &body_of(case));
        assert_eq!(r.status, 200, "{}", r.body);
        let d = r.json();
        let name = case["name"].as_str().unwrap_or("?");
        // The caller hears the primary alone.
        assert_eq!(d["outcome"], case["expect"]["outcome"], "{name}");
        assert_eq!(d["decided"], d["outcome"], "{name}");
        assert_eq!(d["mode"], "enforce", "{name}");
        assert!(d["policies"][0].get("candidate").is_none(), "{name}");
        let want = candidate_outcome_at_4000(case);
        if want != d["outcome"] {
            diverging += 1;
            decision_ids.push(d["decision_id"].as_str().expect("id").to_owned());
        }
        *expected
            .entry(d["outcome"].as_str().expect("outcome").to_owned())
            .or_default()
            .entry(want)
            .or_default() += 1;
    }
    assert_eq!(diverging, 2, "4999.5 and 5000 lie between the thresholds");

    let report = settled_ab(server.admin, "procurement");
    let pair = &report["pairs"][0];
    assert_eq!(
        report["pairs"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(pair["candidate"], "threshold-4000");
    assert_eq!(pair["role"], "shadow");
    assert_eq!(pair["compared"], cases.len());
    assert_eq!(pair["agreed"], cases.len() - diverging);
    let confusion: BTreeMap<String, BTreeMap<String, u64>> =
        serde_json::from_value(pair["confusion"].clone()).expect("matrix");
    assert_eq!(confusion, expected);
    assert_eq!(
        pair["diverging_rules"],
        json!([{"primary": "default.allow", "candidate": "spend.needs-approval", "count": 2}])
    );
    let mut sampled: Vec<f64> = pair["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| {
            s["input"]["action"]["params"]["amount"]
                .as_f64()
                .expect("amount")
        })
        .collect();
    sampled.sort_by(f64::total_cmp);
    assert_eq!(sampled, [4999.5, 5000.0]);
    assert_eq!(report["queue"]["dropped"], json!({}));
    let metrics = get(server.addr, "/metrics").body;
    assert!(
        metrics.contains("arbiter_shadow_evaluations_total{policy=\"procurement\",candidate=\"threshold-4000\",result=\"diverge\"} 2"),
        "{metrics}"
    );
    server.stop().expect("clean stop");

    // Each divergence is in the log, naming the decision it came from.
    let shadow = log_records(log.path(), "shadow");
    let mut logged: Vec<String> = shadow
        .iter()
        .map(|d| d["decision_id"].as_str().expect("id").to_owned())
        .collect();
    logged.sort();
    decision_ids.sort();
    assert_eq!(logged, decision_ids);
    assert!(
        shadow
            .iter()
            .all(|d| d["candidate_outcome"] == "require-approval"
                && d["primary_rule"] == "default.allow")
    );
}

/// The procurement component with a custom section appended: the same
/// policy, another version (another `sha256:`).
fn procurement_variant(dir: &Path) -> PathBuf {
    let arbiter::load::Source::Bytes { bytes, .. } =
        arbiter::examples::source("procurement").expect("embedded")
    else {
        panic!("the example is embedded");
    };
    let mut bytes = bytes.to_vec();
    let (name, payload) = (b"arbiter-test-variant", b"2");
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join("procurement-v2.wasm");
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn a_canary_takes_a_stable_share_of_sessions_and_a_session_keeps_its_version() {
    let dir = tempfile::tempdir().expect("dir");
    let variant = procurement_variant(dir.path());
    let mut canary = candidate("v2", CandidateRole::Canary, Some(30.0), None);
    canary.file = Some(variant);
    let server = Server::start(procurement(vec![canary]), Default::default());
    let status = server.admin_get("/v1/policies").json();
    let p = &status["policies"][0];
    let (serving, v2) = (
        p["version"].as_str().expect("version").to_owned(),
        p["candidates"][0]["version"]["version"]
            .as_str()
            .expect("candidate version")
            .to_owned(),
    );
    assert_ne!(serving, v2);

    let sessions = 3000;
    let mut conn = Conn::open(server.addr);
    let mut on_canary = 0;
    for s in 0..sessions {
        let mut seen = Vec::new();
        for amount in [100, 7000] {
            let body = json!({
                "action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": amount}},
                "context": {"agent": {"id": "bot"}, "session": format!("session-{s}")},
            });
            let r = conn.post_json("/v1/decide", &body);
            assert_eq!(r.status, 200, "{}", r.body);
            let d = r.json();
            let report = &d["policies"][0];
            let version = report["version"].as_str().expect("version").to_owned();
            assert_eq!(
                report.get("candidate").is_some(),
                version == v2,
                "a canary answer names its candidate: {d}"
            );
            seen.push(version);
        }
        assert_eq!(seen[0], seen[1], "session-{s} flipped versions");
        on_canary += usize::from(seen[0] == v2);
    }
    let share = on_canary as f64 / sessions as f64 * 100.0;
    assert!(
        (27.0..=33.0).contains(&share),
        "canary share {share:.1}% for 30%"
    );

    // The canary pair is compared on all traffic: the other version runs in
    // the shadow. Same component, same settings: full agreement.
    let report = settled_ab(server.admin, "procurement");
    let pair = &report["pairs"][0];
    let dropped = report["queue"]["dropped"]["procurement"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(pair["role"], "canary");
    assert_eq!(
        pair["compared"].as_u64().expect("compared") + dropped,
        2 * sessions
    );
    assert_eq!(pair["agreement_rate"], 1.0);
    let metrics = get(server.addr, "/metrics").body;
    let canary_line = format!(
        "arbiter_canary_decisions_total{{policy=\"procurement\",candidate=\"v2\"}} {}",
        2 * on_canary
    );
    assert!(
        metrics.lines().any(|l| l == canary_line),
        "{canary_line}\n{metrics}"
    );
}

fn transfer(agent: &str, amount: f64) -> Value {
    json!({
        "action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": amount}},
        "context": {"agent": {"id": agent}, "session": "s"},
    })
}

#[test]
fn a_mode_switch_under_load_holds_from_the_next_decision_and_monitor_builds_a_baseline() {
    let log = tempfile::tempdir().expect("log dir");
    let server = start_logging(procurement(Vec::new()), log.path());
    let addr = server.addr;
    // Load: transfers over the hard limit, denied while enforced.
    let switched = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let monitored = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (switched, stop, monitored) = (
                Arc::clone(&switched),
                Arc::clone(&stop),
                Arc::clone(&monitored),
            );
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let mut after = 0;
                while !stop.load(Ordering::Acquire) {
                    let was_switched = switched.load(Ordering::Acquire);
                    let d = conn
                        .post_json("/v1/decide", &transfer("load-bot", 75_000.0))
                        .json();
                    if d["mode"] == "monitor" {
                        assert_eq!(
                            (&d["outcome"], &d["rule"]),
                            (&json!("allow"), &json!("mode.monitor"))
                        );
                        monitored.fetch_add(1, Ordering::AcqRel);
                    } else {
                        assert!(
                            !was_switched,
                            "a decision sent after the switch enforced: {d}"
                        );
                        assert_eq!(d["outcome"], "deny", "{d}");
                    }
                    after += usize::from(was_switched);
                }
                after
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));

    // Refusals first: no token, a bad mode, an unknown policy.
    let r = http::send(
        server.admin,
        "PUT",
        "/v1/policies/procurement/mode",
        &[("content-type", "application/json")],
        br#"{"mode":"monitor"}"#,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = set_mode(server.admin, "procurement", &json!({"mode": "sometimes"}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("sometimes"), "{}", r.body);
    let r = set_mode(server.admin, "nope", &json!({"mode": "monitor"}));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = admin(
        server.admin,
        "POST",
        "/v1/policies/procurement/mode",
        &json!({"mode": "monitor"}),
    );
    assert_eq!(r.status, 405, "{}", r.body);

    let r = set_mode(server.admin, "procurement", &json!({"mode": "monitor"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"policy": "procurement", "from": "enforce", "to": "monitor"})
    );
    switched.store(true, Ordering::Release);
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let after: usize = load
        .into_iter()
        .map(|t| t.join().expect("load thread"))
        .sum();
    assert!(after > 0, "no decision ran after the switch");

    // Traffic the baseline must describe.
    let mut conn = Conn::open(addr);
    for amount in 1..=40 {
        conn.post_json("/v1/decide", &transfer("baseline-bot", f64::from(amount)));
    }
    for to in ["a@corp.example", "b@Corp.Example", "eve@evil.example"] {
        let body = json!({"action": {"kind": "tool", "name": "send_email", "params": {"to": [to], "subject": "PO"}},
                          "context": {"agent": {"id": "baseline-bot"}}});
        conn.post_json("/v1/decide", &body);
    }
    for table in ["orders", "orders", "ledger"] {
        let body = json!({"action": {"kind": "tool", "name": "db.query", "target": table},
                          "context": {"agent": {"id": "baseline-bot"}}});
        conn.post_json("/v1/decide", &body);
    }
    let b = server.admin_get("/v1/baseline?agent=baseline-bot").json();
    let action = |name: &str| {
        b["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {b}"))
    };
    let pay = action("payments.transfer");
    assert_eq!(pay["count"], 40);
    assert_eq!(pay["params"]["amount"]["types"], json!({"number": 40}));
    assert_eq!(
        pay["params"]["amount"]["number"],
        json!({"count": 40, "min": 1.0, "max": 40.0, "p95": 38.0})
    );
    let mail = action("send_email");
    assert_eq!(mail["count"], 3);
    assert_eq!(
        mail["params"]["to[]"]["domains"],
        json!({"values": {"corp.example": 2, "evil.example": 1}, "more": false})
    );
    assert_eq!(
        mail["params"]["subject"]["values"]["values"],
        json!({"PO": 3})
    );
    assert_eq!(
        action("db.query")["targets"],
        json!({"values": {"orders": 2, "ledger": 1}, "more": false})
    );
    // Only monitored decisions feed it.
    let all = server.admin_get("/v1/baseline").json();
    let load_bot = all["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["agent"] == "load-bot"))
        .expect("load-bot");
    assert_eq!(
        load_bot["count"].as_u64(),
        Some(monitored.load(Ordering::Acquire))
    );
    assert_eq!(server.admin_get("/v1/baseline?who=x").status, 400);

    // Soft-enforce: judged, reported, not enforced.
    let r = set_mode(
        server.admin,
        "procurement",
        &json!({"mode": "soft-enforce"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..5 {
        let d = conn
            .post_json("/v1/decide", &transfer("load-bot", 75_000.0))
            .json();
        assert_eq!(
            (&d["outcome"], &d["decided"], &d["mode"], &d["rule"]),
            (
                &json!("allow"),
                &json!("deny"),
                &json!("soft-enforce"),
                &json!("spend.over-limit")
            ),
            "{d}"
        );
        let warning = d["warnings"][0].as_str().unwrap_or_default();
        assert!(
            warning.contains("would have answered deny (spend.over-limit)"),
            "{d}"
        );
    }
    let metrics = get(addr, "/metrics").body;
    assert!(
        metrics.lines().any(|l| l == "arbiter_policy_decisions_total{policy=\"procurement\",outcome=\"deny\",mode=\"soft-enforce\"} 5"),
        "{metrics}"
    );
    let policies = server.admin_get("/v1/policies").json();
    assert_eq!(policies["policies"][0]["mode"], "soft-enforce");
    assert_eq!(policies["policies"][0]["mode_source"]["source"], "runtime");
    let r = set_mode(server.admin, "procurement", &json!({"mode": "enforce"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let d = conn
        .post_json("/v1/decide", &transfer("load-bot", 75_000.0))
        .json();
    assert_eq!(
        (&d["outcome"], &d["mode"]),
        (&json!("deny"), &json!("enforce"))
    );
    drop(conn);
    server.stop().expect("clean stop");

    // The log holds each change and the mode of every decision.
    let changes: Vec<(String, String)> = log_records(log.path(), "admin")
        .iter()
        .map(|d| {
            (
                d["from"].as_str().unwrap_or("").into(),
                d["to"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let pairs = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        changes,
        [
            pairs("enforce", "monitor"),
            pairs("monitor", "soft-enforce"),
            pairs("soft-enforce", "enforce")
        ]
    );
    let soft: Vec<Value> = log_records(log.path(), "decision")
        .into_iter()
        .filter(|d| d["mode"] == "soft-enforce")
        .collect();
    assert_eq!(soft.len(), 5);
    assert!(soft.iter().all(|d| d["outcome"] == "allow"
        && d["decided"] == "deny"
        && d["policies"][0]["mode"] == "soft-enforce"));
}

#[test]
fn a_promotion_goes_through_the_load_pipeline_and_can_be_rolled_back() {
    let mut config = procurement(vec![
        candidate(
            "strict",
            CandidateRole::Shadow,
            None,
            Some(json!({"approval_over": 4000})),
        ),
        candidate(
            "lenient",
            CandidateRole::Shadow,
            None,
            Some(json!({"approval_over": 6000})),
        ),
    ]);
    // The policy's own smoke sample: 4500 must be allowed, which the
    // strict candidate does not do.
    config.policies[0].smoke = toml_smoke("payments.transfer", 4500.0, "allow");
    let server = Server::start(config, Default::default());
    let addr = server.addr;
    let decide =
        |amount| post_json(addr, "/v1/decide", &transfer("bot", amount)).json()["outcome"].clone();
    assert_eq!(decide(5500.0), "require-approval");

    let r = promote(server.admin, "strict");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("smoke"), "{}", r.body);
    let r = promote(server.admin, "nope");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("strict, lenient"), "{}", r.body);
    assert_eq!(
        decide(5500.0),
        "require-approval",
        "a refused promotion changes nothing"
    );

    let r = promote(server.admin, "lenient");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decide(5500.0), "allow");
    assert_eq!(decide(6500.0), "require-approval");
    let p = &server.admin_get("/v1/policies").json()["policies"][0];
    let ids: Vec<&str> = p["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, ["strict"]);
    // The version it replaced is kept: the same bytes, other settings.
    let r = admin(
        server.admin,
        "POST",
        "/v1/policies/procurement/rollback",
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decide(5500.0), "require-approval");
}

fn toml_smoke(name: &str, amount: f64, expect: &str) -> Vec<arbiter::config::SmokeSample> {
    let text = format!(
        "[[policies]]\nname = \"p\"\nexample = \"procurement\"\n[[policies.smoke]]\n\
         action = {{ kind = \"tool\", name = \"{name}\", params = {{ amount = {amount} }} }}\n\
         context = {{ agent = {{ id = \"smoke\" }} }}\nexpect = \"{expect}\"\n"
    );
    Config::parse(&text, "smoke")
        .expect("smoke")
        .policies
        .remove(0)
        .smoke
}

#[test]
fn a_slow_shadow_never_slows_the_caller_yields_the_cpu_and_a_full_queue_counts_its_drops() {
    let mut misbehave = candidate("spin", CandidateRole::Shadow, None, Some(json!({})));
    misbehave.file = Some(artifacts::MISBEHAVE.into());
    let mut config = procurement(vec![misbehave]);
    config.rollout.shadow_queue = 2;
    let server = Server::start(config, Default::default());
    // `spin` makes the candidate run to its 100 ms deadline; the primary
    // denies the unknown tool in microseconds.
    let body =
        json!({"action": {"kind": "tool", "name": "spin"}, "context": {"agent": {"id": "bot"}}});
    let mut conn = Conn::open(server.addr);
    let start = std::time::Instant::now();
    for _ in 0..20 {
        let d = conn.post_json("/v1/decide", &body).json();
        assert_eq!(
            (&d["outcome"], &d["rule"]),
            (&json!("deny"), &json!("tool.not-allowed"))
        );
    }
    let elapsed = start.elapsed();
    // Twenty shadow runs in line would take two seconds.
    assert!(
        elapsed < std::time::Duration::from_millis(1500),
        "{elapsed:?}"
    );
    // The workers yield to decisions (a comparison is worth less); each
    // lowers its own priority as it starts (with the first comparison).
    wait_for("shadow workers at nice 10", || {
        let workers = arbiter_tests::thread_priorities("arbiter-shadow");
        !workers.is_empty() && workers.iter().all(|(_, nice)| *nice == 10)
    });
    let report = settled_ab(server.admin, "procurement");
    let pair = &report["pairs"][0];
    let dropped = report["queue"]["dropped"]["procurement"]
        .as_u64()
        .expect("drops counted");
    assert!(dropped > 0, "{report}");
    assert_eq!(pair["compared"].as_u64().expect("compared") + dropped, 20);
    // The candidate's failure is its answer in the comparison: deny, by
    // deadline.
    assert_eq!(pair["confusion"]["deny"]["deny"], pair["compared"]);
    assert_eq!(pair["agreement_rate"], 1.0);
    let metrics = get(server.addr, "/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l
                == format!("arbiter_shadow_dropped_total{{policy=\"procurement\"}} {dropped}")),
        "{metrics}"
    );
}

#[test]
fn large_inputs_cannot_fill_the_shadow_queue_past_its_bytes() {
    let config = {
        let mut c = procurement(vec![candidate(
            "next",
            CandidateRole::Shadow,
            None,
            Some(json!({})),
        )]);
        c.rollout.shadow_queue_bytes = 64 << 10;
        c
    };
    let server = Server::start(config, Default::default());
    let memo = "m".repeat(100_000);
    let body = json!({"action": {"kind": "tool", "name": "db.query", "target": "orders",
                                 "params": {"memo": memo}},
                      "context": {"agent": {"id": "bot"}}});
    let mut conn = Conn::open(server.addr);
    for _ in 0..5 {
        assert_eq!(
            conn.post_json("/v1/decide", &body).json()["outcome"],
            "allow"
        );
    }
    let report = settled_ab(server.admin, "procurement");
    arbiter_tests::refused(
        "100 KB shadow inputs past a 64 KiB queue",
        report["queue"]["dropped"]["procurement"] == 5,
        &report,
    );
}

#[test]
fn replay_judges_a_candidate_on_a_recorded_log() {
    let log = tempfile::tempdir().expect("log dir");
    let server = start_logging(procurement(Vec::new()), log.path());
    let cases = procurement_cases();
    for case in &cases {
        assert_eq!(
            post_json(server.addr, "/v1/decide", &body_of(case)).status,
            200
        );
    }
    server.stop().expect("clean stop");

    let file = log.path().join("candidate.wasm");
    let arbiter::load::Source::Bytes { bytes, .. } =
        arbiter::examples::source("procurement").expect("embedded")
    else {
        panic!("embedded");
    };
    std::fs::write(&file, &bytes[..]).expect("write");
    let candidate = load_file(
        "procurement",
        &file,
        json!({"approval_over": 4000}),
        Default::default(),
    )
    .expect("loads");
    let report = arbiter::shadow::replay::replay(
        &engine(),
        log.path(),
        &Filter::default(),
        "procurement",
        &candidate,
        "threshold-4000",
        10,
    )
    .expect("replays");
    assert_eq!(
        (report.records, report.replayed),
        (cases.len() as u64, cases.len() as u64)
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let mut expected: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for case in &cases {
        *expected
            .entry(
                case["expect"]["outcome"]
                    .as_str()
                    .expect("outcome")
                    .to_owned(),
            )
            .or_default()
            .entry(candidate_outcome_at_4000(case))
            .or_default() += 1;
    }
    let pair = &report.pairs[0];
    assert_eq!(pair.confusion, expected);
    assert_eq!((pair.role.as_str(), pair.samples.len()), ("replay", 2));
    assert_eq!(pair.candidate_version.settings, "{\"approval_over\":4000}");
}

#[test]
fn a_reload_keeps_runtime_changes_to_entries_it_leaves_alone_and_follows_candidate_files() {
    let dir = tempfile::tempdir().expect("dir");
    let variant = procurement_variant(dir.path());
    let config = dir.path().join("arbiter.toml");
    let text = |policy_extra: &str, extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n[auth]\nadmin_token = \"{ADMIN}\"\n[cache]\nenabled = false\n\
             [reload]\ndebounce_ms = 20\n\
             [[policies]]\nname = \"procurement\"\nexample = \"procurement\"\n{policy_extra}\n\
             [[policies.candidates]]\nid = \"v2\"\nrole = \"shadow\"\nfile = \"{}\"\n\
             [[routes]]\nchain = [\"procurement\"]\n",
            variant.display()
        )
    };
    std::fs::write(&config, text("", "")).expect("write");
    let server = Server::start_file(&config);
    let addr = server.addr;
    let entry = || server.admin_get("/v1/policies").json()["policies"][0].clone();
    let r = set_mode(server.admin, "procurement", &json!({"mode": "monitor"}));
    assert_eq!(r.status, 200, "{}", r.body);

    // A change elsewhere in the file leaves the runtime mode alone.
    arbiter_tests::replace_by_rename(&config, text("", "max_body_bytes = 4096").as_bytes());
    wait_for("the configuration reload", || {
        metric(addr, "arbiter_config_reloads_total{result=\"applied\"} 1")
    });
    assert_eq!(
        (
            entry()["mode"].clone(),
            entry()["mode_source"]["source"].clone()
        ),
        (json!("monitor"), json!("runtime"))
    );

    // A change to the policy's entry applies the configured mode.
    arbiter_tests::replace_by_rename(
        &config,
        text("mode = \"soft-enforce\"", "max_body_bytes = 4096").as_bytes(),
    );
    wait_for("the entry's mode", || entry()["mode"] == "soft-enforce");
    assert_eq!(entry()["mode_source"]["source"], "config");

    // A new candidate file is loaded through the pipeline; a broken one is
    // refused and the loaded candidate stays.
    let before = entry()["candidates"][0]["version"]["version"].clone();
    let mut bytes = std::fs::read(&variant).expect("read");
    bytes.extend_from_slice(&[0, 3, 1, b'x', b'3']);
    arbiter_tests::replace_by_rename(&variant, &bytes);
    wait_for("the candidate reload", || {
        entry()["candidates"][0]["version"]["version"] != before
    });
    let after = entry()["candidates"][0]["version"]["version"].clone();
    assert_eq!(after, json!(arbiter::load::version_of(&bytes)));
    arbiter_tests::replace_by_rename(&variant, b"not a component");
    wait_for("the refused reload", || {
        entry()["candidates"][0]["last_attempt"]["error"] != Value::Null
    });
    assert_eq!(entry()["candidates"][0]["version"]["version"], after);
    assert_eq!(entry()["candidates"][0]["last_attempt"]["step"], "compile");
}

fn metric(addr: std::net::SocketAddr, line: &str) -> bool {
    get(addr, "/metrics").body.lines().any(|l| l == line)
}
