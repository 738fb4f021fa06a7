//! Agent state through a real server on a clock the test moves: the
//! counters policies see match the traffic sent, window edges included;
//! rate-guard's public cases hold with real traffic in place of the
//! history the case file gives; the kill switch and the circuit breaker
//! hold across a restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arbiter::config::{Config, SafeMode, Secret};
use arbiter::route::RouteSpec;
use arbiter::server::{ClockHandle, ServeOptions};
use arbiter::time::Clock;
use arbiter_tests::http::{self, Conn, get};
use arbiter_tests::{CASES, Server, artifacts, server_config};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";
/// 2026-12-01T23:50:00Z: ten minutes before a UTC midnight.
const T0: u64 = 1_796_169_000_000;

#[derive(Default)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl TestClock {
    fn at(ms: u64) -> Arc<Self> {
        Arc::new(TestClock(AtomicU64::new(ms)))
    }

    fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::Release);
    }
}

fn start(config: Config, clock: &Arc<TestClock>, state: Option<&Path>) -> Server {
    let mut options = ServeOptions {
        clock: Some(ClockHandle(Arc::clone(clock) as Arc<dyn Clock>)),
        ..ServeOptions::default()
    };
    options.overrides.state_dir = state.map(Path::to_owned);
    Server::start(config, options)
}

fn with_admin(mut config: Config) -> Config {
    config.auth.admin_token = Some(Secret::try_from(ADMIN.to_owned()).expect("token"));
    config
}

fn call(conn: &mut Conn, agent: &str, kind: &str, name: &str, params: Value) -> Value {
    let body = json!({"action": {"kind": kind, "name": name, "params": params},
                      "context": {"agent": {"id": agent}}});
    let r = conn.post_json("/v1/decide", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The agent's entry in `GET /v1/agents`: its counters now.
fn history(server: &Server, agent: &str) -> Value {
    let r = server.admin_get(&format!("/v1/agents?agent={agent}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let mut a = r.json()["agents"][0].clone();
    for k in ["agent", "suspended", "breaker"] {
        a.as_object_mut().map(|o| o.remove(k));
    }
    a
}

fn admin(addr: std::net::SocketAddr, path: &str, body: &Value) -> http::Reply {
    let auth = format!("Bearer {ADMIN}");
    http::send(
        addr,
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

#[test]
fn the_counters_policies_see_match_the_traffic_window_edges_included() {
    let clock = TestClock::at(T0);
    let config = server_config(&[(
        "rate-guard",
        "rate-guard",
        json!({"max_calls_per_minute": 5, "max_same_action_per_minute": 3,
               "max_denials_per_hour": 100, "daily_budget_cents": 10000}),
    )]);
    let server = start(config, &clock, None);
    let mut conn = Conn::open(server.addr);
    let rule = |d: Value| d["rule"].as_str().unwrap_or_default().to_owned();

    for _ in 0..3 {
        assert_eq!(
            rule(call(&mut conn, "a", "tool", "search", json!({}))),
            "rate.ok"
        );
    }
    // The fourth search sees three before it: the loop rule.
    assert_eq!(
        rule(call(&mut conn, "a", "tool", "search", json!({}))),
        "rate.loop"
    );
    assert_eq!(
        history(&server, "a"),
        json!({"calls_last_minute": 4, "actions_last_minute": {"tool search": 4},
               "denials_last_hour": 1, "spend_today_cents": 0})
    );
    assert_eq!(
        rule(call(&mut conn, "a", "tool", "fetch", json!({}))),
        "rate.ok"
    );
    // Five calls in the minute: the sixth is refused.
    assert_eq!(
        rule(call(&mut conn, "a", "tool", "fetch", json!({}))),
        "rate.calls"
    );

    // One millisecond before the first calls leave the window, nothing has.
    clock.set(T0 + 59_999);
    assert_eq!(
        rule(call(&mut conn, "a", "tool", "fetch", json!({}))),
        "rate.calls"
    );
    // At 60 000 ms they have; the calls made at 59 999 remain.
    clock.set(T0 + 60_000);
    assert_eq!(history(&server, "a")["calls_last_minute"], 1);
    assert_eq!(
        rule(call(&mut conn, "a", "tool", "search", json!({}))),
        "rate.ok"
    );

    // Spend: only allowed amounts count, in cents, until midnight UTC. A
    // minute apart, so the loop rule stays out of it.
    let mut minute = 1;
    let mut pay = |conn: &mut Conn, amount: f64| {
        minute += 1;
        clock.set(T0 + minute * 60_000);
        rule(call(
            conn,
            "b",
            "tool",
            "payments.transfer",
            json!({"amount": amount}),
        ))
    };
    for _ in 0..3 {
        assert_eq!(pay(&mut conn, 30.0), "rate.ok");
    }
    assert_eq!(history(&server, "b")["spend_today_cents"], 9000);
    assert_eq!(pay(&mut conn, 10.01), "budget.exceeded");
    assert_eq!(
        history(&server, "b")["spend_today_cents"],
        9000,
        "a transfer held for approval is not spend"
    );
    assert_eq!(pay(&mut conn, 10.0), "rate.ok");
    assert_eq!(history(&server, "b")["spend_today_cents"], 10000);
    clock.set(T0 + 10 * 60_000);
    assert_eq!(history(&server, "b")["spend_today_cents"], 0);
    let d = call(
        &mut conn,
        "b",
        "tool",
        "payments.transfer",
        json!({"amount": 99.0}),
    );
    assert_eq!(rule(d), "rate.ok");

    // A caller still may not bring its own history.
    let r = conn.post_json(
        "/v1/decide",
        &json!({"action": {"kind": "tool", "name": "x"}, "context": {"agent": {"id": "a"}},
                "history": {"calls_last_minute": 0}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn rate_guards_public_cases_hold_with_real_traffic_in_place_of_the_given_history() {
    let clock = TestClock::at(T0 - 3_600_000);
    // rate-guard judges tools; `prime` actions of any kind are denied by
    // a policy that denies everything, to make denials.
    let mut config = with_admin(server_config(&[
        ("rate-guard", "rate-guard", json!({})),
        (
            "deny-all",
            &format!("file:{}", artifacts::VERDICT_DENY),
            json!({}),
        ),
    ]));
    config.routes = vec![
        RouteSpec {
            kind: "prime".into(),
            ..RouteSpec::all(["deny-all"])
        },
        RouteSpec::all(["rate-guard"]),
    ];
    let server = start(config, &clock, None);
    let mut conn = Conn::open(server.addr);
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(CASES).expect("cases")).expect("JSON");
    let cases: Vec<&Value> = cases
        .iter()
        .filter(|c| c["policy"] == "rate-guard")
        .collect();
    assert!(cases.len() >= 6);
    let mode = |mode: &str| {
        let auth = format!("Bearer {ADMIN}");
        let r = http::send(
            server.admin,
            "PUT",
            "/v1/policies/rate-guard/mode",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({"mode": mode}).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    for (i, case) in cases.iter().enumerate() {
        let agent = format!("agent-{i}");
        let h = &case["history"];
        let n = |k: &str| h[k].as_u64().unwrap_or(0);
        let action = &case["action"];
        let (kind, name) = (
            action["kind"].as_str().expect("kind"),
            action["name"].as_str().expect("name"),
        );
        // Real traffic that leaves exactly the case's history: in monitor
        // mode rate-guard allows it all, so only the priming denials count.
        mode("monitor");
        for _ in 0..n("denials_last_hour") {
            call(&mut conn, &agent, "prime", "deny", json!({}));
        }
        // Denials are an hour's; the rest of the history is this minute's.
        clock.set(clock.now_ms() + 30 * 60_000);
        let spend = n("spend_today_cents");
        if spend > 0 {
            call(
                &mut conn,
                &agent,
                "tool",
                "prime.spend",
                json!({"amount": spend as f64 / 100.0}),
            );
        }
        let same = n("same_action_last_minute");
        for _ in 0..same {
            call(&mut conn, &agent, kind, name, json!({}));
        }
        // Calls of this minute so far: the spend and the same action.
        let so_far = u64::from(spend > 0) + same;
        for _ in so_far..n("calls_last_minute") {
            call(&mut conn, &agent, "tool", "prime.other", json!({}));
        }
        let seen = history(&server, &agent);
        let want = |k: &str, v: u64| (k.to_owned(), json!(v));
        assert_eq!(
            [
                want(
                    "calls_last_minute",
                    seen["calls_last_minute"].as_u64().unwrap_or(0)
                ),
                want(
                    "same_action_last_minute",
                    seen["actions_last_minute"][format!("{kind} {name}")]
                        .as_u64()
                        .unwrap_or(0)
                ),
                want(
                    "denials_last_hour",
                    seen["denials_last_hour"].as_u64().unwrap_or(0)
                ),
                want(
                    "spend_today_cents",
                    seen["spend_today_cents"].as_u64().unwrap_or(0)
                ),
            ],
            [
                want("calls_last_minute", n("calls_last_minute").max(so_far)),
                want("same_action_last_minute", same),
                want("denials_last_hour", n("denials_last_hour")),
                want("spend_today_cents", spend),
            ],
            "{}: {seen}",
            case["name"]
        );
        mode("enforce");
        let d = call(&mut conn, &agent, kind, name, action["params"].clone());
        assert_eq!(
            (&d["outcome"], &d["rule"]),
            (&case["expect"]["outcome"], &case["expect"]["rule"]),
            "{}: {d}",
            case["name"]
        );
    }
}

#[test]
fn the_kill_switch_and_the_circuit_breaker_hold_across_a_restart() {
    let state = tempfile::tempdir().expect("state dir");
    let log = tempfile::tempdir().expect("log dir");
    let clock = TestClock::at(T0);
    let config = || {
        let mut c = with_admin(server_config(&[
            (
                "allow-all",
                &format!("file:{}", artifacts::VERDICT_ALLOW),
                json!({}),
            ),
            (
                "deny-all",
                &format!("file:{}", artifacts::VERDICT_DENY),
                json!({}),
            ),
        ]));
        c.routes = vec![
            RouteSpec {
                kind: "db".into(),
                read_only: true,
                ..RouteSpec::all(["allow-all"])
            },
            RouteSpec {
                kind: "tool".into(),
                name: "bad.*".into(),
                ..RouteSpec::all(["deny-all"])
            },
            RouteSpec::all(["allow-all"]),
        ];
        c.agents.breaker_denials = 3;
        c.agents.breaker_window_s = 60;
        c.agents.breaker_cooldown_s = 300;
        c.agents.breaker_mode = SafeMode::ReadOnly;
        c.log.dir = Some(log.path().to_owned());
        c
    };
    let server = start(config(), &clock, Some(state.path()));
    let addr = server.addr;
    let mut conn = Conn::open(addr);
    let rule = |d: Value| d["rule"].as_str().unwrap_or_default().to_owned();

    // Suspension: refused without a token or reason; then in force.
    let r = http::send(
        server.admin,
        "POST",
        "/v1/agents/rogue/suspend",
        &[("content-type", "application/json")],
        br#"{"reason":"x"}"#,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = admin(server.admin, "/v1/agents/rogue/suspend", &json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin(server.admin, "/v1/agents/rogue/resume", &json!({}));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin(
        server.admin,
        "/v1/agents/rogue/suspend",
        &json!({"reason": "exfiltrating tickets"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let d = call(&mut conn, "rogue", "db", "db.read", json!({}));
    assert_eq!(
        (&d["outcome"], &d["rule"]),
        (&json!("deny"), &json!("agent.suspended"))
    );
    assert!(
        d["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exfiltrating tickets"),
        "{d}"
    );

    // Breaker: three denials in the window open it, in read-only mode.
    for _ in 0..3 {
        assert_eq!(
            rule(call(&mut conn, "bot", "tool", "bad.delete", json!({}))),
            "verdict.deny"
        );
    }
    assert_eq!(
        rule(call(&mut conn, "bot", "tool", "good.send", json!({}))),
        "agent.circuit-open"
    );
    assert_eq!(
        rule(call(&mut conn, "bot", "db", "db.read", json!({}))),
        "verdict.allow"
    );
    // Spend of the day is kept across the restart too.
    let d = call(
        &mut conn,
        "payer",
        "tool",
        "payments.transfer",
        json!({"amount": 30.0}),
    );
    assert_eq!(rule(d), "verdict.allow");
    let metrics = get(addr, "/metrics").body;
    assert!(
        metrics.contains("arbiter_agent_breaker_changes_total{change=\"open\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("arbiter_agents_suspended 1"), "{metrics}");
    drop(conn);
    server.stop().expect("clean stop");

    // A restart keeps both.
    clock.set(T0 + 120_000);
    let server = start(config(), &clock, Some(state.path()));
    let addr = server.addr;
    let mut conn = Conn::open(addr);
    assert_eq!(
        rule(call(&mut conn, "rogue", "tool", "good.send", json!({}))),
        "agent.suspended"
    );
    assert_eq!(
        rule(call(&mut conn, "bot", "tool", "good.send", json!({}))),
        "agent.circuit-open"
    );
    let payer = server.admin_get("/v1/agents?agent=payer").json();
    assert_eq!(payer["agents"][0]["spend_today_cents"], 3000, "{payer}");
    let agents = server.admin_get("/v1/agents").json();
    let rogue = agents["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["agent"] == "rogue"))
        .cloned();
    assert_eq!(
        rogue.as_ref().map(|r| r["suspended"]["by"].clone()),
        Some(json!("admin"))
    );

    // The cooling period ends; a resumed agent is judged again.
    clock.set(T0 + 300_000);
    assert_eq!(
        rule(call(&mut conn, "bot", "tool", "good.send", json!({}))),
        "verdict.allow"
    );
    let r = admin(server.admin, "/v1/agents/rogue/resume", &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        rule(call(&mut conn, "rogue", "tool", "good.send", json!({}))),
        "verdict.allow"
    );
    drop(conn);
    server.stop().expect("clean stop");

    let changes = |kind: &str| -> Vec<String> {
        arbiter_tests::log_records(log.path(), kind)
            .iter()
            .filter(|d| d.get("agent").is_some())
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
                format!("{} {} {}", s("agent"), s("change"), s("actor"))
            })
            .collect()
    };
    // The kill switch is an operator's: admin records naming them; the
    // breaker is the host's own.
    assert_eq!(
        changes("admin"),
        ["rogue suspend admin", "rogue resume admin"]
    );
    assert_eq!(
        changes("agent"),
        ["bot breaker-open ", "bot breaker-closed "]
    );
}
