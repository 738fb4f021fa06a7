//! The decision service over loopback: the conformance cases through
//! `POST /v1/decide`, every bad input, timeouts, saturation, readiness,
//! metrics, tokens, the authorizer and graceful shutdown.

use std::collections::BTreeMap;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use arbiter::cases::{self, Case};
use arbiter::evaluate::Limits;
use arbiter::server::{ServeError, ServeOptions};
use arbiter::{Decision, Outcome};
use arbiter_tests::http::{connect, get, post_json, read_reply, send};
use arbiter_tests::{CASES, Server, artifacts, server_config};
use serde_json::{Value, json};

fn with_history() -> ServeOptions {
    let mut o = ServeOptions::default();
    o.http.accept_caller_history = true;
    o
}

fn misbehave_server(limits: Limits, edit: impl FnOnce(&mut arbiter::config::Config)) -> Server {
    let file = format!("file:{}", artifacts::MISBEHAVE);
    let mut config = server_config(&[("misbehave", file.as_str(), json!({}))]);
    config.policies[0].limits = limits;
    edit(&mut config);
    Server::start(config, ServeOptions::default())
}

fn decide_body(name: &str) -> Value {
    json!({"action": {"kind": "tool", "name": name}, "context": {"agent": {"id": "bot"}}})
}

#[test]
fn every_case_passes_through_post_v1_decide() {
    let cases: Vec<Case> =
        serde_json::from_slice(&std::fs::read(CASES).expect("cases")).expect("parse");
    // One server per policy and settings: a route cannot pick settings per case.
    let mut groups: BTreeMap<(String, String), Vec<&Case>> = BTreeMap::new();
    for c in &cases {
        let settings = c.settings.clone().unwrap_or_else(|| json!({}));
        groups
            .entry((c.policy.clone(), settings.to_string()))
            .or_default()
            .push(c);
    }
    let mut checked = 0;
    for ((policy, settings), group) in groups {
        let settings: Value = serde_json::from_str(&settings).expect("json");
        let server = Server::start(
            server_config(&[(&policy, &policy, settings)]),
            with_history(),
        );
        for case in group {
            let body =
                json!({"action": case.action, "context": case.context, "history": case.history});
            let reply = post_json(server.addr, "/v1/decide", &body);
            assert_eq!(reply.status, 200, "{}: {}", case.name, reply.body);
            let decision: Decision = serde_json::from_str(&reply.body).expect("decision");
            assert_eq!(
                reply.header("x-arbiter-decision-id"),
                Some(decision.decision_id.as_str())
            );
            let mismatches = cases::compare(&case.expect, &decision);
            assert!(mismatches.is_empty(), "{}: {mismatches:?}", case.name);
            checked += 1;
        }
    }
    assert_eq!(checked, cases.len());
}

#[test]
fn callers_may_not_set_history() {
    let server = Server::start(
        server_config(&[("rate-guard", "rate-guard", json!({}))]),
        ServeOptions::default(),
    );
    let mut body = decide_body("x");
    body["history"] = json!({"denials_last_hour": 0});
    let r = post_json(server.addr, "/v1/decide", &body);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "field_not_allowed");
    assert_eq!(r.json()["error"]["path"], "history");
    let mut body = decide_body("x");
    body["context"]["settings"] = json!("{}");
    let r = post_json(server.addr, "/v1/decide", &body);
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .expect("message")
            .contains("unknown field `settings`")
    );
}

#[test]
fn bad_input_gets_a_clear_status_and_message() {
    let mut config = server_config(&[("rate-guard", "rate-guard", json!({}))]);
    config.server.max_body_bytes = 1024;
    let server = Server::start(config, ServeOptions::default());
    let a = server.addr;
    let json_ct = [("Content-Type", "application/json")];
    let cases: Vec<(&str, arbiter_tests::http::Reply, u16, &str)> = vec![
        (
            "malformed",
            send(a, "POST", "/v1/decide", &json_ct, b"{\"action\": {"),
            400,
            "EOF while parsing",
        ),
        (
            "missing field",
            post_json(
                a,
                "/v1/decide",
                &json!({"action": {"kind": "tool"}, "context": {}}),
            ),
            400,
            "at `action`: missing field `name`",
        ),
        (
            "missing context",
            post_json(
                a,
                "/v1/decide",
                &json!({"action": {"kind": "tool", "name": "x"}}),
            ),
            400,
            "missing field `context`",
        ),
        (
            "no agent",
            post_json(
                a,
                "/v1/decide",
                &json!({"action": {"kind": "t", "name": "x"}, "context": {"agent": {"id": ""}}}),
            ),
            400,
            "`context.agent.id` is missing or empty",
        ),
        (
            "wrong type",
            post_json(
                a,
                "/v1/decide",
                &json!({"action": {"kind": 7, "name": "x"}, "context": {}}),
            ),
            400,
            "at `action.kind`: invalid type",
        ),
        (
            "content type",
            send(
                a,
                "POST",
                "/v1/decide",
                &[("Content-Type", "text/plain")],
                b"{}",
            ),
            415,
            "application/json",
        ),
        (
            "no content type",
            send(a, "POST", "/v1/decide", &[], b"{}"),
            415,
            "application/json",
        ),
        (
            "declared too large",
            send(a, "POST", "/v1/decide", &json_ct, &[b' '; 2000]),
            413,
            "over the limit of 1024 bytes",
        ),
        (
            "wrong method",
            get(a, "/v1/decide"),
            405,
            "method not allowed",
        ),
        (
            "unknown path",
            get(a, "/v2/nothing"),
            404,
            "no endpoint `/v2/nothing`",
        ),
    ];
    for (what, reply, status, message) in cases {
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        let m = reply.json()["error"]["message"]
            .as_str()
            .expect("message")
            .to_owned();
        assert!(m.contains(message), "{what}: {m}");
    }
    // Line and column of a malformed body.
    let r = send(a, "POST", "/v1/decide", &json_ct, b"{\n  \"action\": [}");
    assert_eq!(
        (r.json()["error"]["line"].as_u64(), r.status),
        (Some(2), 400)
    );
    assert_eq!(get(a, "/v1/decide").header("allow"), Some("POST"));

    // A chunked body with no declared length is cut off at the limit too.
    let mut s = connect(a);
    let chunk = "x".repeat(600);
    write!(
        s,
        "POST /v1/decide HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    )
    .expect("write");
    assert_eq!(read_reply(&mut s).expect("reply").status, 413);
}

#[test]
fn stalled_clients_time_out() {
    let mut config = server_config(&[("rate-guard", "rate-guard", json!({}))]);
    config.server.header_timeout_ms = 300;
    config.server.body_timeout_ms = 300;
    let server = Server::start(config, ServeOptions::default());

    // Headers that never finish: the connection is closed.
    let start = Instant::now();
    let mut s = connect(server.addr);
    s.write_all(b"POST /v1/decide HTTP/1.1\r\nHost: a\r\n")
        .expect("write");
    let reply = read_reply(&mut s);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "not closed: {reply:?}"
    );
    assert!(
        reply.is_none() || reply.as_ref().is_some_and(|r| r.status == 408),
        "{reply:?}"
    );

    // A body that never finishes: 408.
    let mut s = connect(server.addr);
    s.write_all(b"POST /v1/decide HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"act")
        .expect("write");
    let reply = read_reply(&mut s).expect("a reply");
    assert_eq!(reply.status, 408);
    assert_eq!(reply.json()["error"]["code"], "timeout");
}

#[test]
fn saturation_answers_503_with_retry_after() {
    let limits = Limits {
        fuel: 1 << 50,
        deadline_ms: 1500,
        ..Limits::default()
    };
    let server = misbehave_server(limits, |c| c.server.max_pending_decisions = 1);
    let addr = server.addr;
    // The probe can win the race for the only place; then the slow one is
    // the refused one, and we try again.
    let (refused, slow) = (0..5)
        .find_map(|_| {
            let slow = thread::spawn(move || post_json(addr, "/v1/decide", &decide_body("spin")));
            thread::sleep(Duration::from_millis(300));
            let probe = post_json(addr, "/v1/decide", &decide_body("behave"));
            let slow = slow.join().expect("slow");
            (probe.status == 503 && slow.status == 200).then_some((probe, slow))
        })
        .expect("one probe meets a full server");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["code"], "saturated");
    assert_eq!(slow.json()["rule"], "failure.deadline");
    // And the place is free again.
    assert_eq!(
        post_json(addr, "/v1/decide", &decide_body("behave")).json()["rule"],
        "misbehave.none"
    );
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn metrics_move_as_decisions_are_made() {
    let server = misbehave_server(
        Limits {
            fuel: 1_000_000,
            ..Limits::default()
        },
        |_| {},
    );
    let before = get(server.addr, "/metrics").body;
    assert_eq!(metric(&before, "arbiter_ready "), 1);
    post_json(server.addr, "/v1/decide", &decide_body("behave"));
    post_json(server.addr, "/v1/decide", &decide_body("loop"));
    let after = get(server.addr, "/metrics");
    assert_eq!(
        after.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let t = &after.body;
    assert_eq!(metric(t, "arbiter_decisions_total{outcome=\"allow\"}"), 1);
    assert_eq!(metric(t, "arbiter_decisions_total{outcome=\"deny\"}"), 1);
    assert_eq!(
        metric(
            t,
            "arbiter_policy_failures_total{policy=\"misbehave\",kind=\"fuel\"}"
        ),
        1
    );
    assert_eq!(metric(t, "arbiter_decision_duration_seconds_count"), 2);
    // Each decision that reached a policy waited for an instance first.
    assert_eq!(metric(t, "arbiter_decision_queue_seconds_count"), 2);
    assert!(metric(t, "arbiter_policy_fuel_total{policy=\"misbehave\"}") >= 1_000_000);
    assert_eq!(
        metric(
            t,
            "arbiter_http_responses_total{endpoint=\"decide\",status=\"200\"}"
        ),
        2
    );
}

#[test]
fn readiness_flips_only_when_policies_have_loaded() {
    let (release, hold) = tokio::sync::oneshot::channel();
    let options = ServeOptions {
        hold_load: Some(hold),
        ..ServeOptions::default()
    };
    let server = Server::bind(
        server_config(&[("procurement", "procurement", json!({}))]),
        options,
    );
    assert_eq!(get(server.addr, "/healthz").status, 200);
    let r = get(server.addr, "/readyz");
    assert_eq!((r.status, r.json()["ready"].clone()), (503, json!(false)));
    let r = post_json(server.addr, "/v1/decide", &decide_body("db.query"));
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    assert_eq!(r.json()["error"]["code"], "not_ready");
    assert_eq!(
        server.admin_get("/v1/policies").json()["policies"][0]["state"],
        "loading"
    );
    release.send(()).expect("release");
    server.ready().expect("ready");
    assert_eq!(get(server.addr, "/readyz").status, 200);
    assert_eq!(
        post_json(server.addr, "/v1/decide", &decide_body("db.query")).status,
        200
    );
}

#[test]
fn a_policy_failing_its_first_load_stops_the_server_naming_it() {
    let file = format!("file:{}", artifacts::NET_IMPORT);
    let server = Server::bind(
        server_config(&[("reader", file.as_str(), json!({}))]),
        ServeOptions::default(),
    );
    let e = server.ready().expect_err("must fail");
    assert!(
        matches!(&e, ServeError::Load(errors) if errors.len() == 1),
        "{e}"
    );
    assert!(
        e.to_string().contains("policy `reader`") && e.to_string().contains("wasi:sockets/"),
        "{e}"
    );
    let r = get(server.addr, "/readyz");
    assert_eq!(r.status, 503);
    assert!(
        r.json()["reason"]
            .as_str()
            .expect("reason")
            .contains("failed to load")
    );
    assert!(server.stop().is_err());
}

#[test]
fn shutdown_lets_in_flight_decisions_finish() {
    let limits = Limits {
        fuel: 1 << 50,
        deadline_ms: 800,
        ..Limits::default()
    };
    let server = misbehave_server(limits, |_| {});
    let addr = server.addr;
    let in_flight = thread::spawn(move || post_json(addr, "/v1/decide", &decide_body("spin")));
    thread::sleep(Duration::from_millis(250));
    server.begin_shutdown();
    let reply = in_flight.join().expect("in flight");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["rule"], "failure.deadline");
    assert!(server.stop().is_ok());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn tokens_guard_decisions_and_reads() {
    let mut config = server_config(&[("procurement", "procurement", json!({}))]);
    config.auth.decide_token = Some("d-secret".to_owned().try_into().expect("secret"));
    config.auth.admin_token = Some("a-secret".to_owned().try_into().expect("secret"));
    let server = Server::start(config, ServeOptions::default());
    let body = decide_body("db.query").to_string();
    let ct = ("Content-Type", "application/json");
    let r = send(server.addr, "POST", "/v1/decide", &[ct], body.as_bytes());
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let r = send(
        server.addr,
        "POST",
        "/v1/decide",
        &[ct, ("Authorization", "Bearer nope")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401);
    assert!(!r.body.contains("d-secret"));
    let with = |addr, method, path, token: &str| {
        let auth = format!("Bearer {token}");
        send(
            addr,
            method,
            path,
            &[ct, ("Authorization", &auth)],
            body.as_bytes(),
        )
        .status
    };
    assert_eq!(with(server.addr, "POST", "/v1/decide", "d-secret"), 200);
    // The admin token is an operator's: it opens the admin plane only.
    assert_eq!(with(server.addr, "POST", "/v1/decide", "a-secret"), 401);
    assert_eq!(with(server.admin, "GET", "/v1/policies", "a-secret"), 200);
    assert_eq!(with(server.admin, "GET", "/v1/policies", "d-secret"), 401);
    assert_eq!(
        send(server.admin, "GET", "/v1/policies", &[], b"").status,
        401
    );
    // The decision plane serves no admin path, whatever the token.
    let r = send(
        server.addr,
        "GET",
        "/v1/policies",
        &[("Authorization", "Bearer a-secret")],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("admin listener"), "{}", r.body);
    // The authorizer takes the token only from x-arbiter-token.
    let r = send(
        server.addr,
        "GET",
        "/v1/authz/x",
        &[("Authorization", "Bearer d-secret")],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = send(
        server.addr,
        "GET",
        "/v1/authz/x",
        &[("x-arbiter-token", "d-secret"), ("x-agent-id", "a")],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // Health, readiness and metrics stay open for probes.
    assert_eq!(get(server.addr, "/healthz").status, 200);
    assert_eq!(get(server.addr, "/readyz").status, 200);
}

#[test]
fn policies_endpoint_reports_version_routes_limits_and_state() {
    let server = Server::start(
        server_config(&[("procurement", "procurement", json!({}))]),
        ServeOptions::default(),
    );
    let r = server.admin_get("/v1/policies").json();
    let p = &r["policies"][0];
    assert_eq!(p["name"], "procurement");
    assert_eq!(p["state"], "serving");
    assert!(
        p["version"]
            .as_str()
            .expect("version")
            .starts_with("sha256:")
    );
    assert_eq!(p["routes"][0]["chain"], json!(["procurement"]));
    assert_eq!(p["limits"]["fuel"], Limits::default().fuel);
    assert_eq!(p["last_error"], Value::Null);
}

#[test]
fn the_authorizer_allows_denies_and_explains_approval() {
    let server = misbehave_server(Limits::default(), |c| {
        c.authorizer.agent_header = Some("x-agent-id".into());
        c.authorizer.original_uri_header = Some("x-original-uri".into());
        c.authorizer.original_method_header = Some("x-original-method".into());
    });
    let a = server.addr;
    let r = send(
        a,
        "GET",
        "/v1/authz/orders/allow?x=1",
        &[("x-agent-id", "bot")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("x-arbiter-decision-id")
            .is_some_and(|id| id.len() == 36)
    );
    let r = send(
        a,
        "DELETE",
        "/v1/authz/orders/deny",
        &[("x-agent-id", "bot")],
        b"",
    );
    assert_eq!(r.status, 403);
    let j = r.json();
    assert_eq!(
        (j["rule"].as_str(), j["allowed"].as_bool()),
        (Some("misbehave.http-deny"), Some(false))
    );
    assert_eq!(j["decision_id"].as_str(), r.header("x-arbiter-decision-id"));
    // nginx's form: the original request in headers.
    let r = send(
        a,
        "GET",
        "/v1/authz",
        &[
            ("x-original-uri", "/pay/approve"),
            ("x-original-method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 403);
    assert!(
        r.json()["reason"]
            .as_str()
            .expect("reason")
            .starts_with("Approval required"),
        "{}",
        r.body
    );
    let r = send(a, "PUT", "/v1/authz/doc/modify", &[], b"");
    assert_eq!(r.status, 403);
    assert!(
        r.json()["reason"]
            .as_str()
            .expect("reason")
            .contains("cannot do"),
        "{}",
        r.body
    );
    assert_eq!(r.json()["outcome"], json!(Outcome::Modify));
}
