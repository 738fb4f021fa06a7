//! Exhaustion, tried as an attacker would against a real server: floods
//! of approvals, waiters that never leave, names as long as a body allows,
//! a reader that never reads, durations that overflow the clock, and a
//! store whose entries were corrupted. Each is refused or failed closed.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use arbiter::config::{Config, Secret};
use arbiter_tests::http::{self, Conn, get, post_json};
use arbiter_tests::{Server, load_example, refused, request, server_config};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";

fn transfer(agent: &str, memo: &str) -> Value {
    json!({
        "action": {"kind": "tool", "name": "payments.transfer",
                   "params": {"amount": 5500, "memo": memo}},
        "context": {"agent": {"id": agent}},
    })
}

fn config() -> Config {
    let mut c = server_config(&[("procurement", "procurement", json!({}))]);
    c.auth.admin_token = Some(Secret::try_from(ADMIN.to_owned()).expect("token"));
    c
}

fn ask(conn: &mut Conn, agent: &str) -> Value {
    let r = conn.post_json("/v1/decide", &transfer(agent, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn a_flood_of_approvals_is_capped_per_agent_and_in_all() {
    let mut c = config();
    c.approvals.max_open_per_agent = 3;
    c.approvals.max_open = 5;
    let server = Server::start(c, Default::default());
    let mut conn = Conn::open(server.addr);
    for _ in 0..3 {
        assert_eq!(ask(&mut conn, "flooder")["outcome"], "require-approval");
    }
    let d = ask(&mut conn, "flooder");
    refused(
        "a fourth open approval for one agent",
        d["outcome"] == "deny" && d["rule"] == "approval.limit",
        &d,
    );
    for _ in 0..2 {
        assert_eq!(ask(&mut conn, "other")["outcome"], "require-approval");
    }
    let d = ask(&mut conn, "third");
    refused(
        "an open approval past the total",
        d["outcome"] == "deny"
            && d["rule"] == "approval.limit"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("5 approvals")),
        &d,
    );
}

/// Three callers wait at once on the approvals of `agents` (one each):
/// whatever their order, two wait and one is refused at once, not queued.
fn one_of_three_waiters_is_refused(c: Config, agents: [&str; 3], attack: &str) {
    let server = Server::start(c, Default::default());
    let mut conn = Conn::open(server.addr);
    let ids: Vec<String> = agents
        .iter()
        .map(|a| {
            ask(&mut conn, a)["approval"]["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    let addr = server.addr;
    let (tx, rx) = std::sync::mpsc::channel();
    let waiters: Vec<_> = ids
        .iter()
        .map(|id| {
            let (path, tx) = (format!("/v1/approvals/{id}?wait=60s"), tx.clone());
            std::thread::spawn(move || {
                let r = get(addr, &path);
                tx.send((r.status, r.body)).expect("send");
            })
        })
        .collect();
    let (status, body) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("one answer soon");
    refused(attack, status == 429 && body.contains("too_many"), &body);
    // The answers release the two who wait.
    for id in &ids {
        let r = http::send(
            server.admin,
            "POST",
            &format!("/v1/approvals/{id}/decline"),
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("content-type", "application/json"),
            ],
            br#"{"reason": "no"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for w in waiters {
        w.join().expect("waiter");
    }
    let rest: Vec<u16> = rx.try_iter().map(|(status, _)| status).collect();
    assert_eq!(rest, [200, 200]);
}

#[test]
fn waiters_on_approvals_are_capped_per_agent_and_in_all() {
    let mut one = config();
    one.approvals.max_waiting_per_agent = 2;
    one_of_three_waiters_is_refused(
        one,
        ["waiter"; 3],
        "a third long-poll on one agent's approvals",
    );
    let mut all = config();
    all.approvals.max_waiting = 2;
    one_of_three_waiters_is_refused(
        all,
        ["x", "y", "z"],
        "a third long-poll, each naming another agent, past the total",
    );
}

#[test]
fn names_past_their_limit_are_refused_at_every_door() {
    let server = Server::start(config(), Default::default());
    let long = "a".repeat(300);
    for (what, body) in [
        ("a 300-byte agent id", transfer(&long, "")),
        (
            "a 300-byte action name",
            json!({"action": {"kind": "tool", "name": long}, "context": {"agent": {"id": "bot"}}}),
        ),
        (
            "a 300-byte session",
            json!({"action": {"kind": "tool", "name": "db.query"},
                   "context": {"agent": {"id": "bot"}, "session": long}}),
        ),
    ] {
        let r = post_json(server.addr, "/v1/decide", &body);
        refused(
            &format!("{what} over HTTP"),
            r.status == 400 && r.json()["error"]["code"] == "field_too_long",
            &r.body,
        );
    }
    // In-process (the MCP gateway's and the authorizer's path): a deny,
    // and nothing kept for the name.
    let a = arbiter_tests::arbiter(vec![load_example("procurement")]);
    let mut r = request("tool", &long, json!({}));
    r.context.agent.id = long.clone();
    let d = a.decide(&r);
    refused(
        "a 300-byte action name in process",
        d.outcome == arbiter::Outcome::Deny && d.rule == arbiter::arbiter::TOO_LONG_RULE,
        &d.reason,
    );
}

#[test]
fn a_reader_that_never_reads_loses_its_connection() {
    let mut c = config();
    c.server.write_timeout_ms = 1000;
    c.approvals.max_open_per_agent = 100;
    let server = Server::start(c, Default::default());
    let memo = "m".repeat(900_000);
    let mut conn = Conn::open(server.addr);
    for _ in 0..20 {
        let r = conn.post_json("/v1/decide", &transfer("big", &memo));
        assert_eq!(r.json()["outcome"], "require-approval");
    }
    let full = server.admin_get("/v1/approvals").body.len();
    assert!(full > 18_000_000, "{full}");
    // Ask for the ~18 MB list, then read nothing.
    let mut s = http::connect(server.admin);
    write!(
        s,
        "GET /v1/approvals HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    )
    .expect("ask");
    std::thread::sleep(Duration::from_secs(4));
    let mut got = Vec::new();
    let ended = s.read_to_end(&mut got);
    refused(
        "a client that stops reading a long answer",
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        format!("{ended:?} after {} of {full} bytes", got.len()),
    );
    assert!(got.len() < full, "{} of {full}", got.len());
}

#[test]
fn bounds_out_of_range_are_refused_naming_the_key() {
    for (text, key) in [
        (
            "[approvals]\nttl_s = 18446744073709551615\n",
            "approvals.ttl_s",
        ),
        ("[approvals]\nmax_wait_s = 100000\n", "approvals.max_wait_s"),
        (
            "[agents]\nbreaker_denials = 3\nbreaker_cooldown_s = 9999999999\n",
            "agents.breaker_cooldown_s",
        ),
        (
            "[server]\nwrite_timeout_ms = 99999999999\n",
            "server.write_timeout_ms",
        ),
        (
            "[log]\nmax_segment_age_s = 999999999999\n",
            "log.max_segment_age_s",
        ),
        (
            "[[mcp.servers]]\nname = \"m\"\ncommand = [\"true\"]\nhold_timeout_s = 18446744073709551615\n",
            "hold_timeout_s",
        ),
        (
            "[log.retention]\nmax_total_bytes = 4096\n",
            "log.retention.max_total_bytes",
        ),
        (
            "[approvals]\nmax_open_per_agent = 0\n",
            "approvals.max_open_per_agent",
        ),
    ] {
        let e = Config::parse(text, "t.toml").expect_err("refused");
        refused(
            &format!("`{key}` out of its range"),
            e.to_string().contains(key),
            &e,
        );
    }
}

#[test]
fn corrupted_store_entries_fail_closed_and_are_counted() {
    let state = tempfile::tempdir().expect("state");
    let start = || {
        let mut options = arbiter::server::ServeOptions::default();
        options.overrides.state_dir = Some(state.path().to_owned());
        Server::start(config(), options)
    };
    start().stop().expect("stops");
    {
        let db = redb::Database::create(state.path().join("state.redb")).expect("db");
        let w = db.begin_write().expect("write");
        for (table, key) in [
            ("suspensions", "mallory"),
            ("mcp_tools", "dict\0lookup"),
            ("spend", "spender"),
        ] {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new(table);
            w.open_table(def)
                .expect("table")
                .insert(key, "{not json")
                .expect("insert");
        }
        w.commit().expect("commit");
    }
    let server = start();
    let d = post_json(
        server.addr,
        "/v1/decide",
        &json!({"action": {"kind": "tool", "name": "db.query", "target": "orders"},
                "context": {"agent": {"id": "mallory"}}}),
    )
    .json();
    refused(
        "a corrupted suspension un-suspending an agent",
        d["outcome"] == "deny" && d["rule"] == "agent.suspended",
        &d,
    );
    let pins = server.admin_get("/v1/mcp/tools").json();
    let pin = pins["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["tool"] == "lookup")
        .cloned()
        .unwrap_or(Value::Null);
    refused(
        "a corrupted pin passing as accepted",
        pin["changed"].is_object(),
        &pins,
    );
    let metrics = get(server.addr, "/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "arbiter_state_undecodable_entries 3"),
        "{metrics}"
    );
}
