//! The attack suite: Arbiter tried as a careful attacker would, against
//! real servers and the real gateways. Each attack is named, and its
//! refusal asserted through [`arbiter_tests::refused`], which prints `attack refused:
//! NAME`; `cargo test --test all attacks -- --nocapture` lists them all.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbiter::config::{
    AgentToken, ApprovalRule, Config, IdentityConfig, JwtConfig, OperatorToken, Role,
};
use arbiter::identity::token_digest;
use arbiter::server::ServeOptions;
use arbiter::signing::KeyPair;
use arbiter_tests::http::{Reply, send};
use arbiter_tests::{
    Server, artifacts, operator, refused, replace_by_rename, server_config, wait_for,
};
use serde_json::{Value, json};

/// A request with a bearer token and a JSON body.
fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: &Value) -> Reply {
    let auth = format!("Bearer {token}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send(
        addr,
        method,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
}

fn transfer(agent: &str, amount: f64) -> Value {
    json!({"action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": amount}},
           "context": {"agent": {"id": agent}}})
}

fn agent_token(token: &str, agent: &str, user: Option<&str>) -> AgentToken {
    AgentToken {
        sha256: token_digest(token),
        agent: agent.into(),
        roles: vec!["procurement".into()],
        user: user.map(str::to_owned),
    }
}

/// Procurement on every route, agents `bot-a` and `bot-b`, and operators
/// `carol` (approver), `olga` (operator) and `audrey` (auditor).
fn guarded() -> Config {
    let mut c = server_config(&[("procurement", "procurement", json!({}))]);
    c.identity.tokens = vec![
        agent_token("agent-a-token", "bot-a", Some("alice")),
        agent_token("agent-b-token", "bot-b", None),
    ];
    c.admin.operators = vec![
        operator("carol", "carol-token", &[Role::Approver]),
        operator("olga", "olga-token", &[Role::Operator]),
        operator("audrey", "audrey-token", &[Role::Auditor]),
    ];
    c
}

/// Asks for a transfer that needs approval, as the agent of `token`.
fn ask_approval(server: &Server, token: &str) -> String {
    let r = call(
        server.addr,
        "POST",
        "/v1/decide",
        token,
        &transfer("", 6000.0),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["approval"]["id"]
        .as_str()
        .expect("an approval")
        .to_owned()
}

#[test]
fn a_governed_mcp_server_sees_none_of_arbiters_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("arbiter.toml");
    std::fs::write(
        &config,
        "[auth]\nadmin_token = \"env:ARBITER_ADMIN_TOKEN\"\n\
         [[policies]]\nname = \"p\"\nexample = \"procurement\"\n[[routes]]\nkind = \"mcp\"\nchain = [\"p\"]\n\
         [[mcp.servers]]\nname = \"dumper\"\nagent = \"bot\"\nenv = { GREETING = \"hello\" }\n",
    )
    .expect("config");
    let dump = dir.path().join("env.txt");
    let mut gateway = std::process::Command::new(arbiter_tests::binary::arbiter())
        .args(["--no-cache", "mcp", "stdio", "--name", "dumper", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--log-dir")
        .arg(dir.path().join("log"))
        .args(["--", "/bin/sh", "-c"])
        .arg(format!("env > '{}'", dump.display()))
        .env("ARBITER_ADMIN_TOKEN", "admin-secret-0451")
        .env("ARBITER_TOKEN", "decide-secret-7733")
        .env("ARBITER_SIGNING_KEY", "signing-secret-9912")
        .env("AWS_SECRET_ACCESS_KEY", "cloud-secret-1234")
        // The client's side stays open: the server ends the session.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("gateway");
    let status = gateway.wait().expect("gateway");
    assert!(status.success(), "{status}");
    let env = std::fs::read_to_string(&dump).expect("the server dumped its environment");
    for secret in [
        "admin-secret-0451",
        "decide-secret-7733",
        "signing-secret-9912",
        "cloud-secret-1234",
    ] {
        refused(
            &format!("a secret ({secret}) in Arbiter's environment reaches the governed server"),
            !env.contains(secret),
            &env,
        );
    }
    refused(
        "an ARBITER_ variable reaches the governed server",
        !env.lines().any(|l| l.starts_with("ARBITER_")),
        &env,
    );
    // What the entry allows does arrive.
    assert!(env.lines().any(|l| l == "GREETING=hello"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
}

#[test]
fn an_agents_credential_opens_no_admin_path_on_either_listener_and_cannot_approve() {
    let mut config = guarded();
    // A proxy's agent header, trusted: it must still agree with the credential.
    config.authorizer.agent_header = Some("x-agent-id".into());
    config.mcp.servers.push(arbiter::config::McpServerConfig {
        name: "bank".into(),
        upstream: Some("http://127.0.0.1:9/mcp".into()),
        ..Default::default()
    });
    let server = Server::start(config, ServeOptions::default());
    let id = ask_approval(&server, "agent-a-token");
    // The MCP gateway over HTTP: the credential names the agent, in
    // Arbiter's own header, before anything reaches the upstream.
    let call_tool = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"payments.transfer","arguments":{"amount":6000}}}"#;
    let ct = ("content-type", "application/json");
    let r = send(server.addr, "POST", "/mcp/bank", &[ct], call_tool);
    refused(
        "an MCP call over HTTP without a credential",
        r.status == 401,
        &r.body,
    );
    let r = send(
        server.addr,
        "POST",
        "/mcp/bank",
        &[
            ct,
            ("x-arbiter-token", "agent-a-token"),
            ("x-agent-id", "bot-b"),
        ],
        call_tool,
    );
    refused(
        "an MCP call over HTTP naming another agent in a header",
        r.status == 403 && r.body.contains("bot-a"),
        &r.body,
    );
    let admin_paths = [
        ("GET", "/v1/whoami".to_owned()),
        ("GET", "/v1/policies".to_owned()),
        ("POST", "/v1/policies/procurement/rollback".to_owned()),
        ("PUT", "/v1/policies/procurement/mode".to_owned()),
        ("POST", "/v1/policies/procurement/promote".to_owned()),
        ("POST", "/v1/reload".to_owned()),
        ("GET", "/v1/ab/procurement".to_owned()),
        ("GET", "/v1/baseline".to_owned()),
        ("GET", "/v1/agents".to_owned()),
        ("POST", "/v1/agents/bot-b/suspend".to_owned()),
        ("POST", "/v1/agents/bot-a/resume".to_owned()),
        ("GET", "/v1/approvals".to_owned()),
        ("POST", format!("/v1/approvals/{id}/approve")),
        ("POST", format!("/v1/approvals/{id}/decline")),
        ("GET", "/v1/mcp/tools".to_owned()),
        ("POST", "/v1/mcp/tools/s/t/accept".to_owned()),
    ];
    let body = json!({"reason": "looks fine to me", "mode": "monitor"});
    for (method, path) in &admin_paths {
        let r = call(server.addr, method, path, "agent-a-token", &body);
        refused(
            &format!("an agent's credential on the decision listener: {method} {path}"),
            r.status == 404,
            &r.body,
        );
        let r = call(server.admin, method, path, "agent-a-token", &body);
        refused(
            &format!("an agent's credential on the admin listener: {method} {path}"),
            r.status == 401,
            &r.body,
        );
    }
    // Still pending: nothing the agent sent answered it.
    let a = call(
        server.admin,
        "GET",
        &format!("/v1/approvals/{id}"),
        "audrey-token",
        &Value::Null,
    );
    assert_eq!(a.json()["status"], "pending", "{}", a.body);
    // The agent may follow its own approval on the decision plane, and
    // no other agent may.
    let own = call(
        server.addr,
        "GET",
        &format!("/v1/approvals/{id}"),
        "agent-a-token",
        &Value::Null,
    );
    assert_eq!(own.status, 200, "{}", own.body);
    let other = call(
        server.addr,
        "GET",
        &format!("/v1/approvals/{id}"),
        "agent-b-token",
        &Value::Null,
    );
    refused(
        "an agent reads another agent's approval",
        other.status == 404,
        &other.body,
    );
    // An auditor reads but changes nothing; an approver does not operate.
    let r = call(
        server.admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        "audrey-token",
        &json!({"reason": "ok"}),
    );
    refused("an auditor approves", r.status == 403, &r.body);
    let r = call(
        server.admin,
        "POST",
        "/v1/agents/bot-a/suspend",
        "carol-token",
        &json!({"reason": "x"}),
    );
    refused("an approver suspends an agent", r.status == 403, &r.body);
}

#[test]
fn an_approver_cannot_answer_for_their_own_agent_or_user_and_four_eyes_need_two_names() {
    let mut config = guarded();
    config.admin.operators.extend([
        operator("alice", "alice-token", &[Role::Approver]),
        operator("bot-a", "bot-a-op-token", &[Role::Approver]),
        operator("dave", "dave-token", &[Role::Approver]),
        OperatorToken {
            policies: vec!["other-*".into()],
            ..operator("pat", "pat-token", &[Role::Approver])
        },
    ]);
    config.approvals.rules = vec![ApprovalRule {
        rule: "spend.*".into(),
        min_risk: 0,
        required: 2,
    }];
    let server = Server::start(config, ServeOptions::default());
    let id = ask_approval(&server, "agent-a-token");
    let approve = |token: &str, reason: &str| {
        call(
            server.admin,
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            token,
            &json!({"reason": reason}),
        )
    };
    let r = approve("alice-token", "my own request, fine");
    refused(
        "an approver approves a request made on their own behalf (user)",
        r.status == 403 && r.body.contains("user"),
        &r.body,
    );
    let r = approve("bot-a-op-token", "mine");
    refused(
        "an approver approves their own agent's request",
        r.status == 403 && r.body.contains("agent"),
        &r.body,
    );
    let r = approve("pat-token", "outside my policies");
    refused(
        "an approver answers outside the policies they may",
        r.status == 403,
        &r.body,
    );
    let r = call(
        server.admin,
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        "carol-token",
        &json!({"reason": "ok", "by": "dave"}),
    );
    refused(
        "an approver names someone else as the approver",
        r.status == 400,
        &r.body,
    );
    let r = approve("carol-token", "PO 1182 checked");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["status"].clone(), r.json()["required"].clone()),
        (json!("pending"), json!(2)),
        "one of two: {}",
        r.body
    );
    let early = call(
        server.addr,
        "POST",
        "/v1/decide",
        "agent-a-token",
        &json!({"action": transfer("", 6000.0)["action"], "context": {}, "approval_id": id}),
    );
    refused(
        "an approval with one of two approvers is used",
        early.json()["outcome"] != "allow",
        &early.body,
    );
    let r = approve("carol-token", "and again");
    refused(
        "the same approver counts twice for four eyes",
        r.status == 409,
        &r.body,
    );
    let r = approve("dave-token", "second pair of eyes");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "approved", "{}", r.body);
    let d = call(
        server.addr,
        "POST",
        "/v1/decide",
        "agent-a-token",
        &json!({"action": transfer("", 6000.0)["action"], "context": {}, "approval_id": id}),
    )
    .json();
    assert_eq!(d["outcome"], "allow", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("carol") && reason.contains("dave"), "{d}");
}

/// A base64url encoding without padding, as JWTs and JWKs use.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// An Ed25519 signing key of the test identity provider.
struct IdpKey {
    kid: String,
    seed: [u8; 32],
}

impl IdpKey {
    fn new(kid: &str) -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("random");
        IdpKey {
            kid: kid.into(),
            seed,
        }
    }

    fn public(&self) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&self.seed)
            .verifying_key()
            .to_bytes()
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": self.kid, "x": b64url(&self.public())})
    }

    fn sign(&self, claims: &Value) -> String {
        // PKCS#8 for an Ed25519 seed: a fixed prefix, then the seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&self.seed);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
        )
        .expect("sign")
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "https://idp.test", "aud": "arbiter", "exp": now_s() + 600, "roles": ["procurement"]})
}

/// An identity provider serving its JWKS over TLS, signed by a CA of its
/// own; the JWKS can be swapped (a key rotation).
struct Idp {
    addr: SocketAddr,
    jwks: Arc<Mutex<String>>,
    ca_pem: String,
}

impl Idp {
    fn start(jwks: &Value) -> Self {
        let (ca, leaf, leaf_key) = arbiter_tests::certificate_for("localhost");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("tls");
        let tls = Arc::new(tls);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let jwks_text = Arc::new(Mutex::new(jwks.to_string()));
        let serving = Arc::clone(&jwks_text);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (tls, serving) = (Arc::clone(&tls), Arc::clone(&serving));
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(tls) else {
                        return;
                    };
                    let mut s = rustls::StreamOwned::new(conn, stream);
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let body = serving.lock().expect("jwks").clone();
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.flush();
                    s.conn.send_close_notify();
                    let _ = s.flush();
                });
            }
        });
        Idp {
            addr,
            jwks: jwks_text,
            ca_pem: ca.pem(),
        }
    }

    fn rotate(&self, jwks: &Value) {
        *self.jwks.lock().expect("jwks") = jwks.to_string();
    }
}

#[test]
fn credentials_cannot_be_borrowed_forged_stale_or_confused_and_a_key_rotation_is_taken() {
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&json!({"keys": [k1.jwk()]}));
    let dir = tempfile::tempdir().expect("dir");
    let ca = dir.path().join("idp-ca.pem");
    std::fs::write(&ca, &idp.ca_pem).expect("ca");
    let mut config = guarded();
    config.identity = IdentityConfig {
        tokens: vec![agent_token("agent-a-token", "bot-a", None)],
        jwt: Some(JwtConfig {
            jwks: format!("https://localhost:{}/jwks.json", idp.addr.port()),
            jwks_ca: Some(ca),
            issuer: "https://idp.test".into(),
            audience: "arbiter".into(),
            algorithms: vec!["EdDSA".into()],
            leeway_s: 5,
            refresh_s: 300,
            subject_claim: "sub".into(),
            roles_claim: "roles".into(),
            user_claim: None,
        }),
    };
    let server = Server::start(config, ServeOptions::default());
    let decide = |token: &str, agent: &str| {
        call(
            server.addr,
            "POST",
            "/v1/decide",
            token,
            &transfer(agent, 120.0),
        )
    };
    // The static token and a good JWT decide as their own agents.
    assert_eq!(decide("agent-a-token", "").status, 200);
    let good = k1.sign(&claims("jwt-bot"));
    assert_eq!(decide(&good, "jwt-bot").status, 200, "the JWKS over TLS");

    let r = decide("agent-a-token", "bot-b");
    refused(
        "a token bound to bot-a decides as bot-b",
        r.status == 403 && r.body.contains("bot-a"),
        &r.body,
    );
    let r = decide(&good, "bot-a");
    refused(
        "a JWT for jwt-bot decides as bot-a",
        r.status == 403,
        &r.body,
    );
    let r = call(server.addr, "GET", "/v1/authz/payments", "", &Value::Null);
    refused(
        "the authorizer without a credential",
        r.status == 401,
        &r.body,
    );

    let mut expired = claims("jwt-bot");
    expired["exp"] = json!(now_s() - 3600);
    let mut wrong_aud = claims("jwt-bot");
    wrong_aud["aud"] = json!("another-service");
    let mut wrong_iss = claims("jwt-bot");
    wrong_iss["iss"] = json!("https://evil.test");
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        b64url(claims("jwt-bot").to_string().as_bytes())
    );
    // HS/RS confusion: an HMAC keyed with the provider's public key.
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &claims("jwt-bot"),
        &jsonwebtoken::EncodingKey::from_secret(&k1.public()).expect("key"),
    )
    .expect("hs256");
    let impostor = IdpKey {
        kid: "k1".into(),
        ..IdpKey::new("k1")
    };
    for (attack, token) in [
        ("an expired JWT", k1.sign(&expired)),
        ("a JWT for another audience", k1.sign(&wrong_aud)),
        ("a JWT from another issuer", k1.sign(&wrong_iss)),
        ("a JWT with alg none", none),
        ("a JWT signed HS256 with the public key", confused),
        (
            "a JWT signed by another key under a known kid",
            impostor.sign(&claims("jwt-bot")),
        ),
        ("a JWT with a mangled signature", format!("{good}x")),
    ] {
        let r = decide(&token, "jwt-bot");
        refused(attack, r.status == 401, &r.body);
    }

    // The provider rotates to k2: its tokens are taken on first sight,
    // and k1's no longer are.
    let k2 = IdpKey::new("k2");
    idp.rotate(&json!({"keys": [k2.jwk()]}));
    std::thread::sleep(Duration::from_millis(1100));
    let r = decide(&k2.sign(&claims("jwt-bot")), "jwt-bot");
    assert_eq!(r.status, 200, "the rotated key is picked up: {}", r.body);
    let r = decide(&k1.sign(&claims("jwt-bot")), "jwt-bot");
    refused(
        "a JWT signed by a key rotated out",
        r.status == 401,
        &r.body,
    );
}

/// A served policy file `p.wasm` signed by `key` as `version`.
fn deploy(dir: &Path, component: &str, key: &KeyPair, version: &str) {
    let bytes = std::fs::read(component).expect("component");
    let sig = key
        .sign("p", version, &bytes, SystemTime::now())
        .expect("sign");
    std::fs::write(dir.join("p.wasm.sig"), sig.to_json()).expect("sig");
    replace_by_rename(&dir.join("p.wasm"), &bytes);
}

fn supply_config(dir: &Path, trust: &str, floor: &str) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\nenabled = false\n\
         [auth]\nadmin_token = \"root\"\n{trust}\n\
         [[policies]]\nname = \"p\"\nfile = \"p.wasm\"\n{floor}\n[[routes]]\nchain = [\"p\"]\n"
    );
    replace_by_rename(&dir.join("arbiter.toml"), text.as_bytes());
}

fn trusting(keys: &[&KeyPair], revoked: &[&str]) -> String {
    let mut t = format!(
        "[trust]\nrequire_signatures = true\nrevoked = {}\n",
        serde_json::to_string(revoked).expect("json")
    );
    for k in keys {
        t.push_str(&format!(
            "[[trust.keys]]\nid = \"{}\"\npublic_key = \"{}\"\n",
            k.id(),
            k.public().hex()
        ));
    }
    t
}

#[test]
fn rollback_and_reload_cannot_bring_back_revoked_or_downgraded_releases() {
    let dir = tempfile::tempdir().expect("dir");
    let (old, team) = (
        KeyPair::generate("old-team").expect("key"),
        KeyPair::generate("team").expect("key"),
    );
    deploy(dir.path(), artifacts::VERDICT_ALLOW, &old, "1.0.0");
    supply_config(dir.path(), &trusting(&[&old, &team], &[]), "");
    let server = Server::start_file(&dir.path().join("arbiter.toml"));
    let v1 = server.policy_status()["version"].clone();
    deploy(dir.path(), artifacts::VERDICT_DENY, &team, "2.0.0");
    wait_for("version 2", || server.policy_status()["version"] != v1);
    let outcome = || arbiter_tests::decide(server.addr)["outcome"].clone();
    assert_eq!(outcome(), "deny");

    // The old key is revoked: rolling back to what it signed is refused.
    supply_config(dir.path(), &trusting(&[&old, &team], &["old-team"]), "");
    wait_for("the revocation", || {
        server.registry().config().trust.revoked == ["old-team"]
    });
    let rollback = |to: &Value| {
        call(
            server.admin,
            "POST",
            "/v1/policies/p/rollback",
            "root",
            &json!({"version": to}),
        )
    };
    let r = rollback(&v1);
    refused(
        "rollback to a version signed by a revoked key",
        r.status == 409 && r.body.contains("revoked"),
        &r.body,
    );
    assert_eq!(outcome(), "deny", "the serving version stays");

    // A floor: no signed version below 2.0.0 may serve again.
    supply_config(
        dir.path(),
        &trusting(&[&old, &team], &[]),
        "min_signed_version = \"2.0.0\"",
    );
    wait_for("the floor", || {
        server.registry().config().policies[0]
            .min_signed_version
            .is_some()
    });
    let r = rollback(&v1);
    refused(
        "rollback below min_signed_version",
        r.status == 409 && r.body.contains("downgrade"),
        &r.body,
    );
    deploy(dir.path(), artifacts::VERDICT_ALLOW, &team, "1.9.9");
    wait_for("the refused reload", || {
        server.policy_status()["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("downgrade"))
    });
    refused(
        "a validly signed older release dropped in as a file",
        outcome() == "deny",
        "the downgrade served",
    );
}

#[test]
fn a_canary_that_fails_its_smoke_samples_never_serves() {
    let mut config = Config::default_config().expect("default");
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.cache.enabled = false;
    let procurement = config
        .policies
        .iter_mut()
        .find(|p| p.name == "procurement")
        .expect("procurement");
    assert!(!procurement.smoke.is_empty());
    procurement.candidates = vec![arbiter::config::CandidateConfig {
        id: "loose".into(),
        role: arbiter::config::CandidateRole::Canary,
        percent: Some(50.0),
        file: None,
        example: None,
        // Everything needs approval: the smoke sample's small transfer
        // would no longer go through.
        settings: Some(json!({"approval_over": 1})),
        limits: None,
    }];
    let server = Server::bind(config, ServeOptions::default());
    let e = server.ready().expect_err("the canary must not load");
    refused(
        "a canary candidate that fails the policy's smoke samples",
        e.to_string().contains("smoke"),
        e,
    );
}

/// Which of 200 sessions a 50% canary answers, on a server keeping its
/// state in `state`.
fn canary_sessions(state: &Path) -> Vec<bool> {
    let mut config = server_config(&[("procurement", "procurement", json!({}))]);
    config.policies[0].candidates = vec![arbiter::config::CandidateConfig {
        id: "canary".into(),
        role: arbiter::config::CandidateRole::Canary,
        percent: Some(50.0),
        file: None,
        example: None,
        settings: None,
        limits: None,
    }];
    let mut options = ServeOptions::default();
    options.overrides.state_dir = Some(state.to_owned());
    let server = Server::start(config, options);
    let mut conn = arbiter_tests::http::Conn::open(server.addr);
    (0..200)
        .map(|i| {
            let mut body = transfer("bot", 120.0);
            body["context"]["session"] = json!(format!("s-{i}"));
            let d = conn.post_json("/v1/decide", &body).json();
            d["policies"][0]["candidate"] == "canary"
        })
        .collect()
}

#[test]
fn a_caller_cannot_work_out_or_choose_its_canary_bucket() {
    let (a, b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let first = canary_sessions(a.path());
    let again = canary_sessions(a.path());
    assert_eq!(first, again, "a session keeps its bucket across a restart");
    let share = first.iter().filter(|c| **c).count();
    assert!((60..=140).contains(&share), "about half: {share}");
    // Under another server's key the same sessions land elsewhere: the
    // bucket is not a function of what the caller sends.
    let other = canary_sessions(b.path());
    let moved = first.iter().zip(&other).filter(|(x, y)| x != y).count();
    refused(
        "a caller computes its canary bucket from its session id",
        moved >= 60,
        format!("{moved} of 200 sessions moved under another key"),
    );
}

/// The cached entries under `dir`.
fn cwasm(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(cwasm(&p));
        } else if p.extension().is_some_and(|x| x == "cwasm") {
            out.push(p);
        }
    }
    out
}

#[test]
fn native_code_planted_in_the_compile_cache_is_never_loaded() {
    use arbiter::load::{self, CacheStatus, CompileCache};
    let engine = arbiter_tests::engine();
    let spec = |file: &str| load::PolicySpec {
        name: "p".into(),
        source: load::Source::File(file.into()),
        settings: json!({}),
        limits: Default::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let (ours, theirs) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let cache = CompileCache::open(ours.path()).expect("cache");
    let deny = load::load(&engine, Some(&cache), &spec(artifacts::VERDICT_DENY)).expect("loads");
    assert_eq!(deny.cache, CacheStatus::Miss);
    // The attacker compiles the allow-everything policy in a cache of its
    // own and plants that native code under the deny policy's name, whole
    // entry (its own tag) and bare artifact both.
    let planter = CompileCache::open(theirs.path()).expect("cache");
    load::load(&engine, Some(&planter), &spec(artifacts::VERDICT_ALLOW)).expect("loads");
    let planted = std::fs::read(&cwasm(theirs.path())[0]).expect("entry");
    let target = cwasm(ours.path())[0].clone();
    for (attack, bytes) in [
        (
            "a cache entry planted with another cache's tag",
            planted.clone(),
        ),
        (
            "a bare compiled artifact planted in the cache",
            planted[40..].to_vec(),
        ),
    ] {
        std::fs::write(&target, &bytes).expect("plant");
        let reopened = CompileCache::open(ours.path()).expect("cache");
        let loaded =
            load::load(&engine, Some(&reopened), &spec(artifacts::VERDICT_DENY)).expect("loads");
        let set = arbiter::set::PolicySet::from_loaded(
            vec![loaded.clone()],
            arbiter::route::RouteTable::new(vec![arbiter_tests::route_all(&["p"])]),
        );
        let d = arbiter::Arbiter::new(arbiter_tests::engine(), set)
            .decide(&arbiter_tests::request("tool", "x", json!({})));
        refused(
            attack,
            loaded.cache == CacheStatus::Rejected
                && reopened.rejected() == 1
                && d.outcome == arbiter::decision::Outcome::Deny,
            format!(
                "{:?}, {} rejected, {:?}",
                loaded.cache,
                reopened.rejected(),
                d.outcome
            ),
        );
    }
}

#[test]
fn every_admin_action_is_recorded_with_its_actor_and_the_log_verifies() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("log");
    let (olga, carol) = (token_digest("olga-token"), token_digest("carol-token"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\nenabled = false\n[log]\ndir = \"{}\"\n[state]\ndir = \"state\"\n\
         [auth]\ndecide_token = \"gw-token\"\n[[mcp.servers]]\nname = \"dict\"\n\
         [[admin.operators]]\nname = \"olga\"\nsha256 = \"{olga}\"\nroles = [\"operator\"]\n\
         [[admin.operators]]\nname = \"carol\"\nsha256 = \"{carol}\"\nroles = [\"approver\"]\n\
         [[policies]]\nname = \"p\"\nfile = \"p.wasm\"\n\
         [[policies.candidates]]\nid = \"next\"\nrole = \"shadow\"\nfile = \"next.wasm\"\n\
         [[policies]]\nname = \"procurement\"\nexample = \"procurement\"\n\
         [[policies]]\nname = \"q\"\nfile = \"q.wasm\"\n\
         [[routes]]\nkind = \"tool\"\nname = \"payments.*\"\nchain = [\"procurement\"]\n\
         [[routes]]\nkind = \"mcp\"\nchain = [\"procurement\"]\n\
         [[routes]]\nchain = [\"p\"]\n",
        log.display()
    );
    let config = dir.path().join("arbiter.toml");
    std::fs::write(&config, &text).expect("config");
    std::fs::copy(artifacts::VERDICT_ALLOW, dir.path().join("p.wasm")).expect("copy");
    std::fs::copy(artifacts::VERDICT_DENY, dir.path().join("next.wasm")).expect("copy");
    std::fs::copy(artifacts::VERDICT_ALLOW, dir.path().join("q.wasm")).expect("copy");
    let server = Server::start_file(&config);
    let admin = |token: &str, method: &str, path: &str, body: Value| {
        let r = call(server.admin, method, path, token, &body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {}",
            r.body
        );
        r
    };
    admin(
        "olga-token",
        "PUT",
        "/v1/policies/p/mode",
        json!({"mode": "monitor"}),
    );
    admin(
        "olga-token",
        "PUT",
        "/v1/policies/p/mode",
        json!({"mode": "enforce"}),
    );
    admin(
        "olga-token",
        "POST",
        "/v1/policies/p/promote",
        json!({"candidate": "next"}),
    );
    admin("olga-token", "POST", "/v1/policies/p/rollback", Value::Null);
    admin(
        "olga-token",
        "POST",
        "/v1/agents/bot/suspend",
        json!({"reason": "looping"}),
    );
    admin("olga-token", "POST", "/v1/agents/bot/resume", Value::Null);
    for (amount, verb) in [(6000.0, "approve"), (7000.0, "decline")] {
        let r = call(
            server.addr,
            "POST",
            "/v1/decide",
            "gw-token",
            &transfer("buyer", amount),
        );
        let id = r.json()["approval"]["id"]
            .as_str()
            .expect("approval")
            .to_owned();
        admin(
            "carol-token",
            "POST",
            &format!("/v1/approvals/{id}/{verb}"),
            json!({"reason": "checked"}),
        );
    }
    // A tool pinned by a remote gateway, changed, then accepted.
    let tools = |description: &str| json!({"tools": [{"name": "lookup", "description": description, "inputSchema": {"type": "object"}}]});
    for d in ["Looks up a word.", "Looks up a word, then mails it out."] {
        let r = call(
            server.addr,
            "POST",
            "/v1/mcp/tools/dict/observe",
            "gw-token",
            &tools(d),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    admin(
        "olga-token",
        "POST",
        "/v1/mcp/tools/dict/lookup/accept",
        Value::Null,
    );
    let recorded = |change: &str, actor: &str| {
        arbiter_tests::log_records(&log, "admin")
            .iter()
            .any(|r| r["change"] == change && r["actor"] == actor)
    };
    // The file watcher's own changes: a policy file and the configuration.
    let q_version = || {
        let all = call(
            server.admin,
            "GET",
            "/v1/policies",
            "olga-token",
            &Value::Null,
        )
        .json();
        all["policies"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "q"))
            .map(|q| q["version"].clone())
            .unwrap_or_default()
    };
    let before = q_version();
    replace_by_rename(
        &dir.path().join("q.wasm"),
        &std::fs::read(artifacts::VERDICT_DENY).expect("deny"),
    );
    wait_for("the file swap", || q_version() != before);
    replace_by_rename(&config, format!("{text}\n").as_bytes());
    wait_for("the configuration reload by the watcher", || {
        recorded("config", "file-watch")
    });
    // Then an operator's reload, which runs on the same worker.
    admin("olga-token", "POST", "/v1/reload", Value::Null);
    // The reload runs on the worker, after the answer: let it finish.
    wait_for("the operator's reload", || recorded("config", "olga"));
    server.stop().expect("clean stop");

    let records = arbiter_tests::log_records(&log, "admin");
    let seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (s("change"), s("actor"))
        })
        .collect();
    for (change, actor) in [
        ("mode", "olga"),
        ("promote", "olga"),
        ("rollback", "olga"),
        ("suspend", "olga"),
        ("resume", "olga"),
        ("approved", "carol"),
        ("declined", "carol"),
        ("pin-accept", "olga"),
        ("config", "olga"),
        ("policy-file", "file-watch"),
        ("config", "file-watch"),
    ] {
        refused(
            &format!("an unrecorded admin action: {change} by {actor}"),
            seen.contains(&(change.to_owned(), actor.to_owned())),
            format!("{seen:?}"),
        );
    }
    // Every change that names versions says which, before and after.
    for r in records
        .iter()
        .filter(|r| r["change"] == "rollback" || r["change"] == "promote")
    {
        assert!(r["from"].is_string() && r["to"].is_string(), "{r}");
    }
    let verify = std::process::Command::new(arbiter_tests::binary::arbiter())
        .args(["log", "verify"])
        .arg(&log)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("arbiter log verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn a_process_busy_in_the_policy_directory_cannot_hold_a_reload_back() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::copy(artifacts::VERDICT_ALLOW, dir.path().join("p.wasm")).expect("copy");
    let config = dir.path().join("arbiter.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\nenabled = false\n\
         [[policies]]\nname = \"p\"\nfile = \"p.wasm\"\n[[routes]]\nchain = [\"p\"]\n",
    )
    .expect("config");
    let server = Server::start_file(&config);
    let outcome = || arbiter_tests::decide(server.addr)["outcome"].clone();
    assert_eq!(outcome(), "allow");
    // One process reads the directory without a pause; another writes a
    // file of its own there every few milliseconds.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = [true, false]
        .into_iter()
        .map(|reader| {
            let (dir, stop) = (dir.path().to_owned(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if reader {
                        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
                            let _ = std::fs::read(e.path());
                        }
                    } else {
                        let _ = std::fs::write(dir.join("noise.txt"), b"x");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    replace_by_rename(
        &dir.path().join("p.wasm"),
        &std::fs::read(artifacts::VERDICT_DENY).expect("deny"),
    );
    let start = std::time::Instant::now();
    while outcome() != "deny" && start.elapsed() < arbiter_tests::PATIENCE {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.into_iter().for_each(|t| t.join().expect("busy"));
    refused(
        "reads and writes in the policy directory postpone a new version for ever",
        outcome() == "deny",
        format!("still serving the old version after {:?}", start.elapsed()),
    );
}
