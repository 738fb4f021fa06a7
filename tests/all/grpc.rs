//! Envoy's gRPC external authorizer (`envoy.service.auth.v3.Authorization/
//! Check`) against a real gRPC client built from Envoy's own protos
//! (grpcio and PyPI's `xds-protos`, `tests/grpc/check.py`, installed by
//! `scripts/grpc-peers`): the same action and the same answers as the
//! HTTP authorizer, through the one decision path, and its attacks
//! refused by name.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use arbiter::config::Config;
use arbiter::server::ServeOptions;
use arbiter_tests::{Server, authorizer_config, log_records, refused};
use serde_json::{Value, json};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_owned()
}

/// The client's Python, installed on first use.
pub(crate) fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let o = Command::new(repo().join("scripts/grpc-peers"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/grpc-peers");
        assert!(o.status.success(), "scripts/grpc-peers failed");
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("venv/bin/python")
    })
}

/// Makes `calls` with the real client, one answer per call.
pub(crate) fn check(addr: SocketAddr, calls: &Value) -> Vec<Value> {
    let mut child = Command::new(python())
        .arg(repo().join("tests/grpc/check.py"))
        .arg(addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gRPC client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(calls.to_string().as_bytes())
        .expect("write the calls");
    let out = child.wait_with_output().expect("the client's answers");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an answer"))
        .collect();
    assert_eq!(answers.len(), calls.as_array().map_or(0, Vec::len));
    answers
}

/// [`authorizer_config`], with the agent from a header Envoy forwards and
/// the gRPC authorizer on a loopback port.
pub(crate) fn config() -> Config {
    let mut config = authorizer_config();
    config.authorizer.agent_header = Some("x-agent-id".into());
    config.authorizer.grpc_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config
}

fn http(method: &str, path: &str) -> Value {
    json!({"http": {"method": method, "path": path, "host": "shop.example",
                    "headers": {"x-agent-id": "buyer", "user-agent": "curl/8"}}})
}

#[test]
fn envoy_grpc_check_gives_the_http_authorizers_answers_through_the_one_path() {
    let log = tempfile::tempdir().expect("log");
    let mut options = ServeOptions::default();
    options.overrides.log_dir = Some(log.path().to_owned());
    let server = Server::start(config(), options);
    let grpc = server.grpc_addr().expect("the gRPC authorizer listens");
    let answers = check(
        grpc,
        &json!([
            http("GET", "/orders/allow?page=2"),
            http("GET", "/orders/deny"),
            http("POST", "/payments/approve"),
            http("PUT", "/doc/modify"),
            http("GET", "/admin/allow"),
        ]),
    );

    let ok = &answers[0];
    assert_eq!(
        (ok["code"].as_i64(), ok["kind"].as_str()),
        (Some(0), Some("ok_response")),
        "{ok}"
    );
    let allowed_id = ok["headers"]["x-arbiter-decision-id"]
        .as_str()
        .expect("a decision id on an allow")
        .to_owned();
    for (answer, says) in [
        (&answers[1], "deny"),
        (&answers[2], "Approval required"),
        (&answers[3], "modified"),
        (&answers[4], "deny"),
    ] {
        assert_eq!(answer["code"], 7, "PERMISSION_DENIED: {answer}");
        assert_eq!(answer["kind"], "denied_response", "{answer}");
        assert_eq!(answer["http_status"], 403, "{answer}");
        let body: Value =
            serde_json::from_str(answer["body"].as_str().expect("a body")).expect("JSON");
        assert_eq!(body["allowed"], false);
        assert_eq!(
            answer["headers"]["x-arbiter-decision-id"], body["decision_id"],
            "{answer}"
        );
        assert!(
            body["reason"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains(&says.to_lowercase()),
            "{says}: {body}"
        );
    }

    // Each Check is one decision in the log, as the HTTP authorizer's are:
    // the same action, from Envoy's attributes.
    server.stop().expect("clean stop");
    let records = log_records(log.path(), "decision");
    assert_eq!(records.len(), 5, "{records:?}");
    let first = records
        .iter()
        .find(|r| r["decision_id"] == allowed_id.as_str())
        .unwrap_or_else(|| panic!("the allow {allowed_id} in {records:?}"));
    let data = first;
    assert_eq!(data["action"]["kind"], "http");
    assert_eq!(data["action"]["name"], "GET /orders/allow");
    assert_eq!(data["action"]["target"], "shop.example");
    assert_eq!(data["context"]["agent"]["id"], "buyer");
    assert_eq!(data["params"]["query"], json!({"page": "2"}));
    assert_eq!(data["params"]["headers"]["user-agent"], "curl/8");
}

#[test]
fn attacks_on_the_grpc_authorizer_are_refused() {
    let mut c = config();
    c.auth.decide_token = Some("gw-token".to_owned().try_into().expect("secret"));
    c.server.max_body_bytes = 16 * 1024;
    let server = Server::start(c, ServeOptions::default());
    let grpc = server.grpc_addr().expect("the gRPC authorizer listens");
    let gateway = json!([["authorization", "Bearer gw-token"]]);
    let with = |mut call: Value, metadata: &Value| {
        call["metadata"] = metadata.clone();
        call
    };
    let answers = check(
        grpc,
        &json!([
            // What Envoy asserts is checked: no credential, a wrong one.
            http("GET", "/orders/allow"),
            with(
                http("GET", "/orders/allow"),
                &json!([["authorization", "Bearer nope"]])
            ),
            // The gateway's own credential lets it ask.
            with(http("GET", "/orders/allow"), &gateway),
            // A Check with nothing to decide on.
            with(json!({}), &gateway),
            // A path two servers read two ways, and one that is no path.
            with(http("GET", "/orders/x%2F..%2Fallow"), &gateway),
            with(http("GET", "orders/allow"), &gateway),
            // A header that is not one.
            with(
                json!({"http": {"method": "GET", "path": "/orders/allow",
                                 "headers": {"bad name": "x"}}}),
                &gateway
            ),
            // A message past the body limit.
            with(
                json!({"http": {"method": "GET", "path": "/orders/allow"}, "pad": 64 * 1024}),
                &gateway
            ),
            // A method the service does not have (Envoy's retired v2 API).
            with(
                json!({"http": {"method": "GET", "path": "/orders/allow"},
                        "method": "/envoy.service.auth.v2.Authorization/Check"}),
                &gateway
            ),
        ]),
    );
    let rpc = |i: usize| answers[i]["rpc_error"].as_str().unwrap_or("").to_owned();
    refused(
        "a Check with no credential",
        rpc(0) == "UNAUTHENTICATED",
        &answers[0],
    );
    refused(
        "a Check with a wrong credential",
        rpc(1) == "UNAUTHENTICATED",
        &answers[1],
    );
    assert_eq!(answers[2]["code"], 0, "the gateway's Check: {}", answers[2]);
    refused(
        "a Check without http attributes",
        rpc(3) == "INVALID_ARGUMENT",
        &answers[3],
    );
    for (i, attack, rule) in [
        (4, "an encoded slash in the path", "http.path-ambiguous"),
        (5, "a path without its leading slash", "http.path-invalid"),
    ] {
        let body: Value = serde_json::from_str(answers[i]["body"].as_str().unwrap_or("null"))
            .unwrap_or(Value::Null);
        refused(
            attack,
            answers[i]["code"] == 7 && body["rule"] == rule,
            &answers[i],
        );
    }
    refused(
        "a header name that is not one",
        rpc(6) == "INVALID_ARGUMENT",
        &answers[6],
    );
    refused(
        "a Check past the message limit",
        rpc(7) == "RESOURCE_EXHAUSTED" || rpc(7) == "OUT_OF_RANGE",
        &answers[7],
    );
    refused(
        "a method the service does not have",
        rpc(8) == "UNIMPLEMENTED",
        &answers[8],
    );
}

/// Opens a TCP connection to `addr`, sends HTTP/2's client preface, and
/// says whether the server's first frame arrives within `wait`: only a
/// connection the server accepted gets one.
fn answered(addr: SocketAddr, wait: std::time::Duration) -> (std::net::TcpStream, bool) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("preface");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut frame = [0u8; 9];
    let got = s.read_exact(&mut frame).is_ok();
    (s, got)
}

#[test]
fn grpc_connections_are_capped_and_cannot_hold_the_shutdown() {
    let mut config = config();
    config.server.max_connections = 2;
    config.server.shutdown_grace_ms = 500;
    let server = Server::start(config, ServeOptions::default());
    let addr = server.grpc_addr().expect("grpc");
    let long = std::time::Duration::from_secs(20);
    let (first, ok) = answered(addr, long);
    assert!(ok, "the first connection is served");
    let (_second, ok) = answered(addr, long);
    assert!(ok, "the second connection is served");
    // Past `max_connections`: left in the backlog, not served...
    let (mut third, ok) = answered(addr, std::time::Duration::from_millis(500));
    refused(
        "a gRPC connection past max_connections",
        !ok,
        "it was served",
    );
    // ...until a place frees.
    drop(first);
    third.set_read_timeout(Some(long)).expect("timeout");
    let mut frame = [0u8; 9];
    std::io::Read::read_exact(&mut third, &mut frame).expect("served once a place is free");

    // Open connections that never close cannot hold the shutdown past
    // its grace period.
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(server.stop());
    });
    let result = stopped
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the server stopped with gRPC connections held open");
    result.expect("a clean stop");
}
