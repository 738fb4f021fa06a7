//! The operator console: end to end in a real browser (Debian's Chromium
//! driven by playwright-core, `tests/console/e2e.mjs`) against a real
//! `arbiter serve`, and its guards attacked over raw HTTP, each attack
//! named and its refusal asserted.

use std::net::SocketAddr;
use std::path::Path;

use arbiter::config::{AdminListen, CandidateConfig, CandidateRole, Config, Role, ServerTls};
use arbiter::server::ServeOptions;
use arbiter_tests::http::{self, Reply};
use arbiter_tests::{Server, browser, log_records, operator, refused, server_config};
use serde_json::{Value, json};

const ALICE: &str = "console-alice-token";
const BOB: &str = "console-bob-token";
const AUDREY: &str = "console-audrey-token";

/// Procurement on every route; alice approves and operates, bob approves,
/// audrey audits.
fn config(candidates: Vec<CandidateConfig>) -> Config {
    let mut config = server_config(&[("procurement", "procurement", json!({}))]);
    config.policies[0].candidates = candidates;
    config.admin.operators = vec![
        operator("alice", ALICE, &[Role::Approver, Role::Operator]),
        operator("bob", BOB, &[Role::Approver]),
        operator("audrey", AUDREY, &[Role::Auditor]),
    ];
    config
}

/// Where approval `id` stands, as the admin API says.
fn status_of(admin: SocketAddr, id: &str) -> Value {
    let r = http::send(
        admin,
        "GET",
        &format!("/v1/approvals/{id}"),
        &[("authorization", &format!("Bearer {ALICE}"))],
        b"",
    );
    r.json()["status"].clone()
}

fn input(server: &Server) -> Value {
    json!({
        "admin": format!("http://{}", server.admin),
        "decide": format!("http://{}", server.addr),
        "tokens": {"alice": ALICE, "bob": BOB, "audrey": AUDREY},
    })
}

fn start_logging(config: Config, log: &Path) -> Server {
    let mut options = ServeOptions::default();
    options.overrides.log_dir = Some(log.to_owned());
    Server::start(config, options)
}

#[test]
fn in_a_browser_a_live_request_is_approved_once_and_the_log_names_the_approver() {
    let log = tempfile::tempdir().expect("log");
    let server = start_logging(config(Vec::new()), log.path());
    let found = browser::scenario("approve", &input(&server));
    let id = found["approval"].as_str().expect("approval id");
    drop(server);
    let answers = log_records(log.path(), "admin");
    let answer = answers
        .iter()
        .find(|r| r["approval"] == id)
        .unwrap_or_else(|| panic!("no admin record for {id}: {answers:?}"));
    assert_eq!(answer["actor"], "alice", "{answer}");
    assert_eq!(answer["reason"], "PO 1182 checked with finance", "{answer}");
}

#[test]
fn in_a_browser_own_requests_auditors_and_forged_posts_are_refused() {
    let server = Server::start(config(Vec::new()), Default::default());
    let found = browser::scenario("refusals", &input(&server));
    let id = found["approval"].as_str().expect("approval id");
    assert_eq!(
        status_of(server.admin, id),
        "pending",
        "nothing was answered"
    );
}

#[test]
fn in_a_browser_a_suspension_from_the_console_denies_the_agent() {
    let log = tempfile::tempdir().expect("log");
    let server = start_logging(config(Vec::new()), log.path());
    browser::scenario("suspend", &input(&server));
    drop(server);
    let changes: Vec<(Value, Value, Value)> = log_records(log.path(), "admin")
        .into_iter()
        .filter(|r| r["agent"] == "rogue-bot")
        .map(|r| (r["change"].clone(), r["actor"].clone(), r["reason"].clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (
                json!("suspend"),
                json!("alice"),
                json!("wiring money to unknown payees")
            ),
            (json!("resume"), json!("alice"), json!("payees checked")),
        ]
    );
}

#[test]
fn in_a_browser_modes_promotion_and_rollback_go_through_the_admin_plane() {
    let lenient = CandidateConfig {
        id: "lenient".into(),
        role: CandidateRole::Shadow,
        percent: None,
        file: None,
        example: None,
        settings: Some(json!({"approval_over": 6000})),
        limits: None,
    };
    let server = Server::start(config(vec![lenient]), Default::default());
    // Decisions the candidate answers otherwise, for its matrix.
    for amount in [5500, 5800, 100] {
        let r = http::post_json(
            server.addr,
            "/v1/decide",
            &json!({
                "action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": amount}},
                "context": {"agent": {"id": "bot"}},
            }),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    arbiter_tests::wait_for("the shadow comparisons", || {
        let r = http::send(
            server.admin,
            "GET",
            "/v1/ab/procurement",
            &[("authorization", &format!("Bearer {AUDREY}"))],
            b"",
        );
        r.json()["pairs"][0]["compared"] == 3
    });
    browser::scenario("rollout", &input(&server));
    let status = http::send(
        server.admin,
        "GET",
        "/v1/policies",
        &[("authorization", &format!("Bearer {AUDREY}"))],
        b"",
    )
    .json();
    let p = &status["policies"][0];
    assert_eq!(p["mode"], "enforce", "{p}");
    assert_eq!(p["versions"].as_array().map(Vec::len), Some(2), "{p}");
}

#[test]
fn in_a_browser_a_tampered_copy_of_the_log_shows_where_it_breaks() {
    let (log, state) = (
        tempfile::tempdir().expect("log"),
        tempfile::tempdir().expect("state"),
    );
    let mut first = config(Vec::new());
    first.state.dir = Some(state.path().to_owned());
    // Small segments, each record under a checkpoint: a server opens a log
    // whose older segments were changed (only `verify` reads them all).
    first.log.max_segment_bytes = 4096;
    first.log.checkpoint_every = 1;
    first.log.checkpoint_interval_ms = 20;
    let server = start_logging(first, log.path());
    let decide = |agent: &str, amount: u64| {
        let r = http::post_json(
            server.addr,
            "/v1/decide",
            &json!({
                "action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": amount}},
                "context": {"agent": {"id": agent}},
            }),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    decide("procurement-bot", 48000);
    decide("procurement-bot", 9000);
    let segments = || {
        std::fs::read_dir(log.path())
            .expect("log")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("decisions-"))
            .count()
    };
    arbiter_tests::wait_for("a second segment", || {
        decide("other", 10);
        segments() >= 2
    });
    decide("other", 10);
    arbiter_tests::wait_for("a checkpoint over the last decision", || {
        let last_decision = log_records(log.path(), "decision").len();
        let checkpoints =
            std::fs::read_to_string(log.path().join("checkpoints.jsonl")).unwrap_or_default();
        let covered = checkpoints
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["seq"].as_u64())
            .max()
            .unwrap_or(0);
        // Every decision and more lie at or under the last checkpoint.
        let seqs: Vec<u64> = std::fs::read_dir(log.path())
            .expect("log")
            .filter_map(|e| std::fs::read_to_string(e.expect("entry").path()).ok())
            .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| v["type"] == "decision")
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        seqs.len() == last_decision && seqs.iter().all(|s| *s <= covered)
    });
    server.stop().expect("clean stop");

    // A copy, with the second decision's amount (9000) changed in place.
    let copy = tempfile::tempdir().expect("copy");
    let mut broken_seq = None;
    for entry in std::fs::read_dir(log.path()).expect("log") {
        let path = entry.expect("entry").path();
        if path.is_dir() || path.file_name().is_some_and(|n| n == ".lock") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                if v["type"] == "decision" && v["data"]["params"]["amount"] == 9000 {
                    assert!(broken_seq.is_none(), "one decision of 9000");
                    broken_seq = v["seq"].as_u64();
                    return line.replace("\"amount\":9000", "\"amount\":900");
                }
                line.to_owned()
            })
            .collect();
        let out = copy.path().join(path.file_name().expect("name"));
        std::fs::write(
            &out,
            lines.join("\n") + if text.ends_with('\n') { "\n" } else { "" },
        )
        .expect("write");
    }
    let broken_seq = broken_seq.expect("a second decision to tamper with");

    // A server pointed at the copy, trusting the same checkpoint key.
    let mut second = config(Vec::new());
    second.log.checkpoint_key = Some(state.path().join("checkpoint.key"));
    let server = start_logging(second, copy.path());
    let mut input = input(&server);
    input["broken_seq"] = broken_seq.into();
    input["approvals_asked"] = 2.into();
    let found = browser::scenario("tampered", &input);
    assert_eq!(found["broken_seq"], broken_seq);
}

/// A console session over raw HTTP: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn set_cookie(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

fn csrf_in(body: &str) -> String {
    body.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned()
}

fn form(admin: SocketAddr, path: &str, cookie: &str, extra: &[(&str, &str)], body: &str) -> Reply {
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("cookie", cookie),
    ];
    headers.extend_from_slice(extra);
    http::send(admin, "POST", path, &headers, body.as_bytes())
}

fn sign_in(admin: SocketAddr, token: &str) -> Session {
    let page = http::send(admin, "GET", "/console/login", &[], b"");
    let login = set_cookie(&page, "arbiter_console_login").expect("login cookie");
    let cookie = format!("arbiter_console_login={login}");
    let r = form(
        admin,
        "/console/login",
        &cookie,
        &[],
        &format!("csrf={login}&token={token}"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let session = format!(
        "arbiter_console={}",
        set_cookie(&r, "arbiter_console").expect("session")
    );
    let home = http::send(admin, "GET", "/console", &[("cookie", &session)], b"");
    assert_eq!(home.status, 200, "{}", home.body);
    Session {
        csrf: csrf_in(&home.body),
        cookie: session,
    }
}

#[test]
fn the_session_cookie_is_strict_and_every_page_forbids_inline_script_and_framing() {
    let server = Server::start(config(Vec::new()), Default::default());
    let page = http::send(server.admin, "GET", "/console/login", &[], b"");
    let login = set_cookie(&page, "arbiter_console_login").expect("login cookie");
    let r = form(
        server.admin,
        "/console/login",
        &format!("arbiter_console_login={login}"),
        &[],
        &format!("csrf={login}&token={ALICE}"),
    );
    let cookie = r
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("arbiter_console="))
        .map(|(_, v)| v.clone())
        .expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: {cookie}"
    );
    let s = sign_in(server.admin, ALICE);
    for path in [
        "/console",
        "/console/approvals",
        "/console/agents",
        "/console/policies",
        "/console/decisions",
        "/console/login",
        "/console/nowhere",
    ] {
        let r = http::send(server.admin, "GET", path, &[("cookie", &s.cookie)], b"");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'")
                && csp.contains("frame-ancestors 'none'")
                && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        assert!(!r.body.contains("style=\""), "{path}: an inline style");
        assert!(!r.body.contains("<script>"), "{path}: an inline script");
    }
    // The decision plane does not serve the console.
    let r = http::send(server.addr, "GET", "/console/login", &[], b"");
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn attacks_on_the_console_are_refused() {
    let mut c = config(Vec::new());
    c.console.max_streams = 1;
    let server = Server::start(c, Default::default());
    let admin = server.admin;
    let alice = sign_in(admin, ALICE);
    let audrey = sign_in(admin, AUDREY);
    let asked = http::post_json(
        server.addr,
        "/v1/decide",
        &json!({
            "action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": 48000}},
            "context": {"agent": {"id": "procurement-bot"}},
        }),
    )
    .json();
    let id = asked["approval"]["id"]
        .as_str()
        .expect("an approval")
        .to_owned();
    let approve = format!("/console/approvals/{id}/approve");
    let post = |s: &Session, extra: &[(&str, &str)], body: &str| {
        form(admin, &approve, &s.cookie, extra, body)
    };
    let with_token = |s: &Session| format!("csrf={}&reason=ok", s.csrf);

    let r = post(&alice, &[], "reason=ok");
    refused("a post without the CSRF token", r.status == 403, &r.body);
    let r = post(&alice, &[], &format!("csrf={}&reason=ok", audrey.csrf));
    refused(
        "a post with another session's CSRF token",
        r.status == 403,
        &r.body,
    );
    let r = post(
        &alice,
        &[("origin", "http://evil.example")],
        &with_token(&alice),
    );
    refused("a post from another origin", r.status == 403, &r.body);
    let r = post(
        &alice,
        &[("sec-fetch-site", "cross-site")],
        &with_token(&alice),
    );
    refused(
        "a post a browser marks cross-site",
        r.status == 403,
        &r.body,
    );
    let r = post(&audrey, &[], &format!("csrf={}&reason=forged", audrey.csrf));
    refused(
        "an auditor's forged approval",
        r.status == 403 && r.body.contains("approver"),
        &r.body,
    );
    let r = post(&alice, &[], &format!("{}&by=mallory", with_token(&alice)));
    refused(
        "a field naming someone else as the approver",
        r.status == 400,
        &r.body,
    );
    let r = post(&alice, &[], &format!("{}&reason=twice", with_token(&alice)));
    refused("a field given twice", r.status == 400, &r.body);
    let r = post(&alice, &[], &format!("csrf={}&reason=", alice.csrf));
    refused("an answer without a reason", r.status == 400, &r.body);
    let huge = format!("{}&reason={}", with_token(&alice), "x".repeat(64 * 1024));
    let r = post(&alice, &[], &huge);
    refused("a form over the limit", r.status == 413, &r.body);
    let r = http::send(
        admin,
        "POST",
        &approve,
        &[
            ("content-type", "application/json"),
            ("cookie", &alice.cookie),
        ],
        br#"{"reason":"json"}"#,
    );
    refused("a post that is not a form", r.status == 415, &r.body);
    let r = http::send(
        admin,
        "GET",
        "/console/approvals",
        &[("cookie", "arbiter_console=forged")],
        b"",
    );
    refused(
        "a forged session cookie",
        r.status == 303 && r.header("location") == Some("/console/login"),
        &r.body,
    );
    let r = form(
        admin,
        &approve,
        "arbiter_console=forged",
        &[],
        "csrf=x&reason=ok",
    );
    refused("a post with a forged session", r.status == 401, &r.body);
    let r = form(admin, "/console/login", "", &[], &format!("token={ALICE}"));
    refused(
        "a sign-in without its form's token",
        r.status == 403,
        &r.body,
    );
    let page = http::send(admin, "GET", "/console/login", &[], b"");
    let login = set_cookie(&page, "arbiter_console_login").expect("login cookie");
    let r = form(
        admin,
        "/console/login",
        &format!("arbiter_console_login={login}"),
        &[],
        &format!("csrf={login}&token=guess"),
    );
    refused(
        "a sign-in with a wrong token",
        r.status == 401 && set_cookie(&r, "arbiter_console").is_none(),
        &r.body,
    );
    // A page elsewhere that rebinds its own name to this address.
    let mut s = http::connect(admin);
    std::io::Write::write_all(
        &mut s,
        format!(
            "GET /console/approvals HTTP/1.1\r\nHost: evil.example:{}\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            admin.port(),
            alice.cookie
        )
        .as_bytes(),
    )
    .expect("write");
    let r = http::read_reply(&mut s).expect("a reply");
    refused("a request naming another host", r.status == 421, &r.body);
    // The live view: one stream at most here. The first is open once its
    // head has come.
    let mut stream = http::connect(admin);
    std::io::Write::write_all(
        &mut stream,
        format!(
            "GET /console/events HTTP/1.1\r\nHost: {admin}\r\nCookie: {}\r\n\r\n",
            alice.cookie
        )
        .as_bytes(),
    )
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = std::io::Read::read(&mut stream, &mut byte).expect("the stream's head");
        assert_eq!(
            n,
            1,
            "the stream closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("text/event-stream"),
        "{head}"
    );
    let r = http::send(
        admin,
        "GET",
        "/console/events",
        &[("cookie", &alice.cookie)],
        b"",
    );
    refused(
        "a live view past `console.max_streams`",
        r.status == 429,
        &r.body,
    );
    drop(stream);

    assert_eq!(status_of(admin, &id), "pending", "no attack answered it");

    // Signed out, the cookie opens nothing.
    let r = form(
        admin,
        "/console/logout",
        &alice.cookie,
        &[],
        &format!("csrf={}", alice.csrf),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = http::send(admin, "GET", "/console", &[("cookie", &alice.cookie)], b"");
    refused("a signed-out session's cookie", r.status == 303, &r.body);
}

/// The admin plane on TLS (`[admin.tls]`): the console's cookies are
/// `Secure` and browsers are told to keep to HTTPS; the CLI reaches it
/// only when it trusts the certificate; plain HTTP and clients trusting
/// another CA get nothing.
#[test]
fn over_tls_the_console_cookies_are_secure_and_the_cli_checks_the_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = arbiter_tests::certificate_for("127.0.0.1");
    let ca_pem = ca.pem();
    let files = [
        ("ca.pem", ca_pem.clone()),
        ("admin.pem", cert.pem()),
        ("admin.key", key.serialize_pem()),
    ];
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let mut c = config(Vec::new());
    c.admin.listen = Some(AdminListen::Tcp("127.0.0.1:0".parse().expect("addr")));
    c.admin.tls = Some(ServerTls {
        cert_file: dir.path().join("admin.pem"),
        key_file: dir.path().join("admin.key"),
    });
    let server = Server::start(c, Default::default());
    let admin = server.admin;
    let tls = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        http::send_tls(admin, &ca_pem, method, path, headers, body.as_bytes())
            .expect("an answer over TLS")
    };

    let page = tls("GET", "/console/login", &[], "");
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let login = set_cookie(&page, "arbiter_console_login").expect("login cookie");
    let signed_in = tls(
        "POST",
        "/console/login",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &format!("arbiter_console_login={login}")),
            ("origin", &format!("https://{admin}")),
        ],
        &format!("csrf={login}&token={ALICE}"),
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let cookies: Vec<&str> = signed_in
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for c in &cookies {
        assert!(
            c.ends_with("; Secure") && c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
    }
    let session = set_cookie(&signed_in, "arbiter_console").expect("session");
    let home = tls(
        "GET",
        "/console",
        &[("cookie", &format!("arbiter_console={session}"))],
        "",
    );
    assert_eq!(home.status, 200, "{}", home.body);

    // Attack: plain HTTP to the TLS port, hoping for an answer in the clear.
    let plain = std::panic::catch_unwind(|| http::send(admin, "GET", "/v1/approvals", &[], b""));
    assert!(
        plain.map_or(true, |r| r.status == 0),
        "plain HTTP was answered on the TLS port"
    );
    // Attack: a client that does not trust our CA is not talked to.
    let (other, _, _) = arbiter_tests::certificate_for("127.0.0.1");
    assert!(
        http::send_tls(admin, &other.pem(), "GET", "/console/login", &[], b"").is_none(),
        "a handshake against another CA succeeded"
    );

    // The CLI: with the CA it reads the admin plane; without it, it
    // refuses the certificate and says what to set.
    let cli = |ca: Option<&Path>| {
        let mut cmd = std::process::Command::new(arbiter_tests::binary::arbiter());
        cmd.args(["status", "--admin", &format!("https://{admin}")])
            .env("ARBITER_ADMIN_TOKEN", ALICE)
            .env_remove("ARBITER_ADMIN_CA");
        if let Some(ca) = ca {
            cmd.env("ARBITER_ADMIN_CA", ca);
        }
        cmd.output().expect("arbiter status")
    };
    let ok = cli(Some(&dir.path().join("ca.pem")));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("policy  procurement"),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let refused = cli(None);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("ARBITER_ADMIN_CA") && err.contains("certificate"),
        "{err}"
    );
}

/// A certificate that does not go with its key, a missing key file, or TLS
/// asked of a Unix socket (a command-line override) stops the start with
/// the reason, before any port opens.
#[test]
fn a_bad_admin_certificate_stops_the_start_naming_the_files() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, cert, key) = arbiter_tests::certificate_for("127.0.0.1");
    let (_, _, other_key) = arbiter_tests::certificate_for("127.0.0.1");
    std::fs::write(dir.path().join("admin.pem"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("admin.key"), key.serialize_pem()).expect("write");
    std::fs::write(dir.path().join("other.key"), other_key.serialize_pem()).expect("write");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let socket = AdminListen::Unix(dir.path().join("admin.sock"));
    for (key, listen, says) in [
        ("other.key", None, "do not make a certificate and its key"),
        ("missing.key", None, "missing.key"),
        ("admin.key", Some(socket), "listens on a Unix socket"),
    ] {
        let mut c = config(Vec::new());
        c.admin.listen = Some(AdminListen::Tcp("127.0.0.1:0".parse().expect("addr")));
        c.admin.tls = Some(ServerTls {
            cert_file: dir.path().join("admin.pem"),
            key_file: dir.path().join(key),
        });
        let mut options = ServeOptions::default();
        options.overrides.state_dir = Some(dir.path().join("state"));
        options.overrides.log_dir = Some(dir.path().join("log"));
        options.overrides.admin_listen = listen;
        let e = match runtime.block_on(arbiter::server::bind(c, None, options)) {
            Ok(_) => panic!("{key}: served"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("over TLS") && e.contains(says), "{e}");
    }
}

/// An operator taken out of the configuration is signed out at their next
/// request, and putting them back does not revive the old session; an
/// operator whose roles shrink loses the buttons and the actions at once.
#[test]
fn an_operator_removed_from_the_configuration_loses_their_session() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("arbiter.toml");
    let write = |operators: &[(&str, &str, &str)]| {
        let mut text = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [state]\ndir = \"state\"\n[log]\ndir = \"log\"\n\
             [[policies]]\nname = \"procurement\"\nexample = \"procurement\"\n\
             [[routes]]\nchain = [\"procurement\"]\n"
            .to_owned();
        for (name, token, role) in operators {
            text.push_str(&format!(
                "[[admin.operators]]\nname = \"{name}\"\nsha256 = \"{}\"\nroles = [\"{role}\"]\n",
                arbiter::identity::token_digest(token)
            ));
        }
        std::fs::write(&path, text).expect("config");
    };
    write(&[("alice", ALICE, "operator"), ("bob", BOB, "approver")]);
    let server = Server::start_file(&path);
    let admin = server.admin;
    let alice = sign_in(admin, ALICE);
    let bob = sign_in(admin, BOB);
    let agents = |s: &Session| {
        http::send(
            admin,
            "GET",
            "/console/agents",
            &[("cookie", &s.cookie)],
            b"",
        )
    };
    assert!(agents(&alice).body.contains("Suspend an agent not listed"));

    // Bob leaves; Alice becomes an auditor.
    write(&[("alice", ALICE, "auditor")]);
    server.reload();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agents(&bob).status != 303 {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's session outlived his removal"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(agents(&bob).header("location"), Some("/console/login"));
    let page = agents(&alice);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains(">Suspend<"),
        "an auditor was offered a suspension"
    );
    let post = form(
        admin,
        "/console/agents/bot/suspend",
        &alice.cookie,
        &[],
        &format!("csrf={}&reason=looping", alice.csrf),
    );
    assert_eq!(post.status, 403, "{}", post.body);

    // Bob is back in the configuration; his old cookie still opens nothing.
    write(&[("alice", ALICE, "auditor"), ("bob", BOB, "approver")]);
    server.reload();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !http::send(
        admin,
        "GET",
        "/v1/approvals",
        &[("authorization", &format!("Bearer {BOB}"))],
        b"",
    )
    .status
    .eq(&200)
    {
        assert!(std::time::Instant::now() < deadline, "bob was not restored");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(agents(&bob).status, 303);
    let r = form(
        admin,
        "/console/logout",
        &bob.cookie,
        &[],
        &format!("csrf={}", bob.csrf),
    );
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn the_agents_page_shows_a_sessions_labels_and_where_they_came_from() {
    let mut config = server_config(&[("flow-guard", "flow-guard", json!({}))]);
    config.flow.enabled = true;
    config.admin.operators = vec![operator("audrey", AUDREY, &[Role::Auditor])];
    let server = Server::start(config, Default::default());
    let call = http::post_json(
        server.addr,
        "/v1/decide",
        &json!({"action": {"kind": "tool", "name": "crm.read"},
                "context": {"agent": {"id": "mail-agent"}, "session": "s-42"}}),
    )
    .json();
    let result = http::post_json(
        server.addr,
        "/v1/results",
        &json!({"decision_id": call["decision_id"], "result": {"text": "CONFIDENTIAL: the q3 numbers"}}),
    )
    .json();
    assert_eq!(result["flow"]["attached"], json!(["private"]), "{result}");
    let s = sign_in(server.admin, AUDREY);
    let page = http::send(
        server.admin,
        "GET",
        "/console/agents?q=mail-agent",
        &[("cookie", &s.cookie)],
        b"",
    );
    assert_eq!(page.status, 200, "{}", page.body);
    for shown in ["Session labels", "s-42", ">private<", "tool crm.read"] {
        assert!(
            page.body.contains(shown),
            "{shown} not shown:\n{}",
            page.body
        );
    }
}
