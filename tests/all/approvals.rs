//! The approval life-cycle through a real server: created by a
//! require-approval, answered by a person, used once, refused when
//! declined, expired, used or changed; long-polling wakes on the answer;
//! approvals survive a restart; racing callers cannot use one twice.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbiter::config::{Config, OperatorToken, Role, Secret};
use arbiter::identity::token_digest;
use arbiter::server::{ClockHandle, ServeOptions};
use arbiter::time::Clock;
use arbiter_tests::http::{self, Conn, get};
use arbiter_tests::{Server, log_records, server_config, wait_for};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret";
/// Two approvers, named by their tokens.
const CAROL: &str = "carol-token";
const DAVE: &str = "dave-token";
const T0: u64 = 1_796_169_000_000;

struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

fn config() -> Config {
    let mut c = server_config(&[("procurement", "procurement", json!({}))]);
    c.auth.admin_token = Some(Secret::try_from(ADMIN.to_owned()).expect("token"));
    for (name, token) in [("carol", CAROL), ("dave", DAVE)] {
        c.admin.operators.push(OperatorToken {
            name: name.into(),
            sha256: token_digest(token),
            roles: vec![Role::Approver],
            policies: vec!["*".into()],
            rules: vec!["*".into()],
        });
    }
    c
}

fn start(clock: &Arc<TestClock>, state: &Path, log: &Path) -> Server {
    let mut options = ServeOptions {
        clock: Some(ClockHandle(Arc::clone(clock) as Arc<dyn Clock>)),
        ..ServeOptions::default()
    };
    options.overrides.state_dir = Some(state.to_owned());
    options.overrides.log_dir = Some(log.to_owned());
    Server::start(config(), options)
}

fn transfer(amount: f64, approval: Option<&str>) -> Value {
    let mut body = json!({
        "action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": amount}},
        "context": {"agent": {"id": "procurement-bot"}, "user": {"id": "alice"}, "session": "s-9"},
    });
    if let Some(id) = approval {
        body["approval_id"] = json!(id);
    }
    body
}

fn decide(conn: &mut Conn, body: &Value) -> Value {
    let r = conn.post_json("/v1/decide", body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Asks for a transfer that needs approval; returns the approval's id.
fn ask(conn: &mut Conn, amount: f64) -> String {
    let d = decide(conn, &transfer(amount, None));
    assert_eq!(
        (&d["outcome"], &d["rule"]),
        (&json!("require-approval"), &json!("spend.needs-approval")),
        "{d}"
    );
    assert_eq!(d["approval"]["status"], "pending", "{d}");
    d["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_owned()
}

/// Answers approval `id` on the admin plane at `addr`, as the operator
/// whose token is `token`.
fn answer(
    addr: std::net::SocketAddr,
    token: &str,
    id: &str,
    verb: &str,
    body: &Value,
) -> http::Reply {
    let auth = format!("Bearer {token}");
    http::send(
        addr,
        "POST",
        &format!("/v1/approvals/{id}/{verb}"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn approve(addr: std::net::SocketAddr, id: &str) {
    let r = answer(
        addr,
        CAROL,
        id,
        "approve",
        &json!({"reason": "PO 1182 checked"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

fn verdict(d: &Value) -> (String, String) {
    (
        d["outcome"].as_str().unwrap_or_default().to_owned(),
        d["rule"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn an_approval_is_used_once_and_every_other_answer_is_a_deny_that_says_why() {
    let (state, log) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let clock = Arc::new(TestClock(AtomicU64::new(T0)));
    let server = start(&clock, state.path(), log.path());
    let addr = server.addr;
    let admin = server.admin;
    let mut conn = Conn::open(addr);

    let id = ask(&mut conn, 6000.0);
    // Only an operator lists approvals, and only on the admin plane.
    assert_eq!(get(admin, "/v1/approvals").status, 401);
    assert_eq!(get(addr, "/v1/approvals").status, 404);
    let auth = format!("Bearer {ADMIN}");
    let listed = http::send(
        admin,
        "GET",
        "/v1/approvals?status=pending",
        &[("authorization", &auth)],
        b"",
    )
    .json();
    assert_eq!(listed["approvals"][0]["id"], json!(id));
    assert_eq!(
        listed["approvals"][0]["request"]["action"]["params"]["amount"],
        6000.0
    );
    // Asking again before an answer keeps the same approval pending.
    let d = decide(&mut conn, &transfer(6000.0, Some(&id)));
    assert_eq!(
        (verdict(&d).0.as_str(), &d["approval"]["id"]),
        ("require-approval", &json!(id))
    );

    // A caller long-polls; the answer wakes it.
    let waiter = {
        let id = id.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            // The agent waits on the decision plane, for its own approval.
            let a = get(addr, &format!("/v1/approvals/{id}?wait=20s")).json();
            (a, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let r = answer(admin, CAROL, &id, "approve", &json!({}));
    assert_eq!(r.status, 400, "a reason is required: {}", r.body);
    // Who answers is the credential's name, never a field of the body.
    let r = answer(
        admin,
        CAROL,
        &id,
        "approve",
        &json!({"reason": "ok", "by": "mallory"}),
    );
    assert_eq!(r.status, 400, "`by` is refused: {}", r.body);
    approve(admin, &id);
    let (a, waited) = waiter.join().expect("waiter");
    assert_eq!(a["status"], "approved", "{a}");
    assert_eq!(a["answer"]["by"], "carol");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let r = answer(admin, DAVE, &id, "decline", &json!({"reason": "too late"}));
    assert_eq!(r.status, 409, "{}", r.body);

    // Another action with this approval: refused, and the approval stays.
    let d = decide(&mut conn, &transfer(6001.0, Some(&id)));
    assert_eq!(
        verdict(&d),
        ("deny".into(), "approval.action-changed".into()),
        "{d}"
    );
    // The same action: allowed once.
    let d = decide(&mut conn, &transfer(6000.0, Some(&id)));
    assert_eq!(
        verdict(&d),
        ("allow".into(), "approval.granted".into()),
        "{d}"
    );
    assert_eq!(d["decided"], "require-approval");
    assert!(
        d["reason"].as_str().unwrap_or_default().contains("carol"),
        "{d}"
    );
    let d = decide(&mut conn, &transfer(6000.0, Some(&id)));
    assert_eq!(verdict(&d), ("deny".into(), "approval.used".into()), "{d}");

    // Declined.
    let declined = ask(&mut conn, 7000.0);
    let r = answer(
        admin,
        DAVE,
        &declined,
        "decline",
        &json!({"reason": "no PO on file"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let d = decide(&mut conn, &transfer(7000.0, Some(&declined)));
    assert_eq!(
        verdict(&d),
        ("deny".into(), "approval.declined".into()),
        "{d}"
    );
    assert!(
        d["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no PO on file"),
        "{d}"
    );

    // Expired: nobody answered within the hour.
    let expired = ask(&mut conn, 8000.0);
    clock.0.store(T0 + 3_600_000, Ordering::Release);
    wait_for("the expiry sweep", || {
        server.admin_get(&format!("/v1/approvals/{expired}")).json()["status"] == "expired"
    });
    let d = decide(&mut conn, &transfer(8000.0, Some(&expired)));
    assert_eq!(
        verdict(&d),
        ("deny".into(), "approval.expired".into()),
        "{d}"
    );
    let r = answer(
        admin,
        CAROL,
        &expired,
        "approve",
        &json!({"reason": "late"}),
    );
    assert_eq!(r.status, 409, "{}", r.body);

    // Unknown ids and bad waits.
    let d = decide(&mut conn, &transfer(6000.0, Some("no-such-approval")));
    assert_eq!(
        verdict(&d),
        ("deny".into(), "approval.unknown".into()),
        "{d}"
    );
    let missing = server.admin_get("/v1/approvals/nope");
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("\"unknown_approval\""),
        "a missing approval names its subject: {}",
        missing.body
    );
    assert_eq!(
        server
            .admin_get(&format!("/v1/approvals/{id}?wait=forever"))
            .status,
        400
    );
    assert_eq!(
        server
            .admin_get(&format!("/v1/approvals/{id}?wait=1h"))
            .status,
        400
    );
    drop(conn);
    server.stop().expect("clean stop");

    // The log holds who answered (admin records, with the actor), when
    // and why, and each use and expiry.
    let changes = |kind: &str, who: &str| -> Vec<(String, String, String)> {
        log_records(log.path(), kind)
            .iter()
            .filter(|d| d.get("approval").is_some())
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
                (s("approval"), s("change"), s(who))
            })
            .collect()
    };
    assert_eq!(
        changes("admin", "actor"),
        [
            (id.clone(), "approved".into(), "carol".into()),
            (declined, "declined".into(), "dave".into()),
        ]
    );
    assert_eq!(
        changes("approval", "by"),
        [
            (id.clone(), "used".into(), String::new()),
            (expired, "expired".into(), String::new()),
        ]
    );
    let asked: Vec<Value> = log_records(log.path(), "decision")
        .into_iter()
        .filter(|d| d["approval"] == json!(id))
        .map(|d| d["rule"].clone())
        .collect();
    assert_eq!(
        asked,
        [
            json!("spend.needs-approval"),
            json!("spend.needs-approval"),
            json!("approval.action-changed"),
            json!("approval.granted"),
            json!("approval.used"),
        ]
    );
}

#[test]
fn approvals_survive_a_restart_and_racing_callers_use_one_once() {
    let (state, log) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let clock = Arc::new(TestClock(AtomicU64::new(T0)));
    let server = start(&clock, state.path(), log.path());
    let mut conn = Conn::open(server.addr);
    // Many approvals asked for at once, from many connections.
    let addr = server.addr;
    let admin = server.admin;
    let asked: Vec<String> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                (0..5)
                    .map(|i| ask(&mut conn, 6000.0 + f64::from(t * 10 + i)))
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|h| h.join().expect("asker"))
        .collect();
    assert_eq!(asked.len(), 40);
    let pending_one = ask(&mut conn, 9000.0);
    // Half are answered before the restart, concurrently.
    let answered: Vec<_> = asked[..20]
        .chunks(5)
        .map(|ids| {
            let ids = ids.to_vec();
            std::thread::spawn(move || ids.iter().for_each(|id| approve(admin, id)))
        })
        .collect();
    answered
        .into_iter()
        .for_each(|h| h.join().expect("answerer"));
    drop(conn);
    server.stop().expect("clean stop");

    let server = start(&clock, state.path(), log.path());
    let addr = server.addr;
    let admin = server.admin;
    let auth = format!("Bearer {ADMIN}");
    let list = |status: &str| {
        http::send(
            admin,
            "GET",
            &format!("/v1/approvals?status={status}"),
            &[("authorization", &auth)],
            b"",
        )
        .json()["approvals"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!((list("approved"), list("pending")), (20, 21));
    // The pending one is answered after the restart and used.
    approve(admin, &pending_one);
    let mut conn = Conn::open(addr);
    assert_eq!(
        verdict(&decide(&mut conn, &transfer(9000.0, Some(&pending_one)))).1,
        "approval.granted"
    );

    // Eight callers race with one granted approval: one is allowed.
    let id = asked[0].clone();
    let outcomes: Vec<String> = (0..8)
        .map(|_| {
            let id = id.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                verdict(&decide(&mut conn, &transfer(6000.0, Some(&id)))).1
            })
        })
        .map(|h| h.join().expect("racer"))
        .collect();
    let granted = outcomes.iter().filter(|r| *r == "approval.granted").count();
    let used = outcomes.iter().filter(|r| *r == "approval.used").count();
    assert_eq!((granted, used), (1, 7), "{outcomes:?}");
}
