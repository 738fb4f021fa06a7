//! Hot reload through a real server watching real files: swaps under load,
//! every failure stage keeping the old version serving, deleted files,
//! configuration reloads and rollback.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use arbiter::evaluate::Limits;
use arbiter_tests::http::{Conn, get, post_json, send};
use arbiter_tests::{Server, artifacts, decide, load_file, replace_by_rename, tool_call, wait_for};
use serde_json::{Value, json};

/// The versions of the two verdict builds, computed once.
fn versions() -> &'static (String, String) {
    static V: OnceLock<(String, String)> = OnceLock::new();
    V.get_or_init(|| {
        let v = |path| {
            load_file("v", path, json!({}), Limits::default())
                .expect("loads")
                .version
        };
        (v(artifacts::VERDICT_ALLOW), v(artifacts::VERDICT_DENY))
    })
}

/// A deployment directory: `arbiter.toml` serving policy `p` from `p.wasm`.
struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    /// `p.wasm` starts as `initial`; `policy_extra` is added to the policy's
    /// table and `extra` after it, before the catch-all route to `p`.
    fn new(initial: &str, policy_extra: &str, extra: &str) -> Self {
        let d = Deployment {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::copy(initial, d.policy()).expect("copy");
        d.write_config(policy_extra, extra);
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn policy(&self) -> PathBuf {
        self.path("p.wasm")
    }

    fn config(&self) -> PathBuf {
        self.path("arbiter.toml")
    }

    fn write_config(&self, policy_extra: &str, extra: &str) {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[cache]
enabled = false

[reload]
debounce_ms = 20

[[policies]]
name = "p"
file = "p.wasm"
{policy_extra}

{extra}

[[routes]]
chain = ["p"]
"#
        );
        replace_by_rename(&self.config(), text.as_bytes());
    }

    fn start(&self) -> Server {
        Server::start_file(&self.config())
    }
}

/// Truncates `path` and writes `bytes` into it, as `cp` does.
fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("rewrite");
}

fn serving(server: &Server) -> String {
    server.policy_status()["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn last_attempt_time(server: &Server) -> String {
    server.policy_status()["last_attempt"]["at"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits for a load attempt after `before` and returns the policy status.
fn next_attempt(server: &Server, before: &str) -> Value {
    wait_for("a load attempt", || last_attempt_time(server) != before);
    server.policy_status()
}

fn metric(server: &Server, line: &str) -> bool {
    get(server.addr, "/metrics").body.lines().any(|l| l == line)
}

#[test]
fn a_hundred_swaps_under_load_fail_no_decision_and_mix_no_versions() {
    let (allow, deny) = versions().clone();
    let allow_bytes = std::fs::read(artifacts::VERDICT_ALLOW).expect("read");
    let deny_bytes = std::fs::read(artifacts::VERDICT_DENY).expect("read");
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let server = d.start();
    assert_eq!(serving(&server), allow);
    // Every core kept busy besides: compiling and waiting for a CPU must
    // not turn into failed decisions (a deadline counts running time only).
    let _burner = arbiter_tests::Burner::start(1);

    let stop = Arc::new(AtomicBool::new(false));
    let decided = Arc::new(AtomicU64::new(0));
    let seen_deny = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (stop, decided, seen_deny) = (
                Arc::clone(&stop),
                Arc::clone(&decided),
                Arc::clone(&seen_deny),
            );
            let (allow, deny, addr) = (allow.clone(), deny.clone(), server.addr);
            thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let body = tool_call();
                while !stop.load(Ordering::Relaxed) {
                    let r = conn.post_json("/v1/decide", &body);
                    assert_eq!(r.status, 200, "a decision failed: {}", r.body);
                    let d = r.json();
                    let version = d["policies"][0]["version"].as_str().unwrap_or_default();
                    let expected = if version == allow {
                        "allow"
                    } else if version == deny {
                        seen_deny.fetch_add(1, Ordering::Relaxed);
                        "deny"
                    } else {
                        panic!("a decision reports an unknown version: {d}")
                    };
                    assert_eq!(d["outcome"], expected, "outcome and version disagree: {d}");
                    assert_eq!(d["policies"][0]["failure"], Value::Null, "{d}");
                    decided.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for i in 0..100 {
        let (bytes, version) = if i % 2 == 0 {
            (&deny_bytes, &deny)
        } else {
            (&allow_bytes, &allow)
        };
        if i % 4 < 2 {
            replace_by_rename(&d.policy(), bytes);
        } else {
            rewrite_in_place(&d.policy(), bytes);
        }
        wait_for(&format!("swap {i} to {version}"), || {
            server
                .registry()
                .arbiter()
                .policy_set()
                .policy("p")
                .map(|p| &p.version)
                == Some(version)
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("no decision failed");
    }
    let n = decided.load(Ordering::Relaxed);
    eprintln!("{n} decisions during 100 swaps");
    assert!(n > 500, "the load was not sustained: {n} decisions");
    assert!(seen_deny.load(Ordering::Relaxed) > 0);
    // Each swap went through the pipeline; a rewrite caught half-way may
    // add refused attempts, never a failed decision. (The counter moves
    // just after the swap it counts: wait for the last one.)
    let swapped = || {
        get(server.addr, "/metrics")
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix("arbiter_policy_reloads_total{policy=\"p\",result=\"swapped\"} ")
            })
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_for("100 swaps counted", || swapped() >= 100);
}

/// Starts `d`, replaces its policy file with `bytes`, and checks that the
/// load fails at `step`, that the old version (allow) keeps answering, and
/// that the metric counts it.
fn refused_at(d: &Deployment, bytes: &[u8], step: &str) -> (Server, Value) {
    let server = d.start();
    let (allow, _) = versions();
    let before = last_attempt_time(&server);
    replace_by_rename(&d.policy(), bytes);
    let status = next_attempt(&server, &before);
    assert_eq!(status["last_error"]["step"], step, "{status}");
    assert_eq!(status["last_attempt"]["step"], step, "{status}");
    assert!(status["last_error"]["at"].is_string(), "{status}");
    assert_eq!(status["version"], *allow, "{status}");
    assert_eq!(status["state"], "serving");
    let d = decide(server.addr);
    assert_eq!(
        (d["outcome"].as_str(), d["rule"].as_str()),
        (Some("allow"), Some("verdict.allow"))
    );
    assert!(metric(
        &server,
        &format!("arbiter_policy_load_failures_total{{policy=\"p\",stage=\"{step}\"}} 1")
    ));
    (server, status)
}

#[test]
fn garbage_bytes_are_refused_at_compile_and_the_old_version_serves() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let (_, status) = refused_at(&d, b"\0asm garbage, not a component", "compile");
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("p.wasm") && message.contains("not a valid WebAssembly component"),
        "{message}"
    );
}

#[test]
fn a_component_of_another_world_is_refused_at_link() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let other = std::fs::read(artifacts::OTHER_WORLD).expect("read");
    let (_, status) = refused_at(&d, &other, "link");
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("arbiter:policy"), "{message}");
}

#[test]
fn a_component_asking_for_the_network_is_refused_at_check_imports() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let net = std::fs::read(artifacts::NET_IMPORT).expect("read");
    let (_, status) = refused_at(&d, &net, "check-imports");
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("wasi:sockets"), "{message}");
}

#[test]
fn a_version_that_refuses_the_settings_is_refused_at_validate_settings() {
    // The allow build takes these settings; the deny build refuses them.
    let d = Deployment::new(
        artifacts::VERDICT_ALLOW,
        r#"settings = { refuse = "deny" }"#,
        "",
    );
    let deny = std::fs::read(artifacts::VERDICT_DENY).expect("read");
    let (_, status) = refused_at(&d, &deny, "validate-settings");
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("settings.refuse"), "{message}");
}

#[test]
fn a_version_failing_a_smoke_sample_is_refused_at_smoke() {
    let smoke = r#"
[[policies.smoke]]
name = "ordinary tool calls are allowed"
action = { kind = "tool", name = "search" }
context = { agent = { id = "bot" } }
expect = "allow"
"#;
    let d = Deployment::new(artifacts::VERDICT_ALLOW, smoke, "");
    let deny = std::fs::read(artifacts::VERDICT_DENY).expect("read");
    let (_, status) = refused_at(&d, &deny, "smoke");
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ordinary tool calls are allowed")
            && message.contains("expected allow, got deny"),
        "{message}"
    );
}

#[test]
fn a_half_written_file_is_refused_then_loaded_once_whole() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let deny = std::fs::read(artifacts::VERDICT_DENY).expect("read");
    let (server, _) = {
        // A copy in place that stalls half-way: the first half is read,
        // refused, and the old version serves.
        let server = d.start();
        let before = last_attempt_time(&server);
        let mut file = std::fs::File::create(d.policy()).expect("create");
        std::io::Write::write_all(&mut file, &deny[..deny.len() / 2]).expect("half");
        file.sync_all().expect("sync");
        let status = next_attempt(&server, &before);
        assert_eq!(status["last_error"]["step"], "compile", "{status}");
        assert_eq!(decide(server.addr)["outcome"], "allow");
        // The copy finishes: the whole file loads.
        std::io::Write::write_all(&mut file, &deny[deny.len() / 2..]).expect("rest");
        drop(file);
        (server, ())
    };
    let (_, deny_version) = versions();
    wait_for("the whole file to load", || {
        serving(&server) == *deny_version
    });
    assert_eq!(decide(server.addr)["outcome"], "deny");
    assert_eq!(server.policy_status()["last_error"], Value::Null);
}

#[test]
fn a_deleted_file_keeps_its_last_good_version_until_it_returns() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let server = d.start();
    let before = last_attempt_time(&server);
    std::fs::remove_file(d.policy()).expect("delete");
    let status = next_attempt(&server, &before);
    assert_eq!(status["last_error"]["step"], "read", "{status}");
    assert_eq!(status["state"], "serving");
    assert_eq!(decide(server.addr)["outcome"], "allow");
    std::fs::copy(artifacts::VERDICT_DENY, d.policy()).expect("restore");
    wait_for("the restored file to load", || {
        decide(server.addr)["outcome"] == "deny"
    });
}

#[test]
fn a_route_change_in_the_configuration_takes_effect() {
    let deny_policy = "[[policies]]\nname = \"deny\"\nfile = \"deny.wasm\"\n";
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", deny_policy);
    std::fs::copy(artifacts::VERDICT_DENY, d.path("deny.wasm")).expect("copy");
    let server = d.start();
    assert_eq!(decide(server.addr)["outcome"], "allow");
    // A new first route sends tool actions to `deny`.
    d.write_config(
        "",
        &format!("{deny_policy}\n[[routes]]\nkind = \"tool\"\nchain = [\"deny\"]\n"),
    );
    wait_for("the new route", || decide(server.addr)["outcome"] == "deny");
    assert_eq!(decide(server.addr)["policies"][0]["name"], "deny");
    let all = server.admin_get("/v1/policies").json();
    assert_eq!(all["config"]["last_attempt"]["error"], Value::Null, "{all}");
    assert_eq!(
        all["policies"][1]["routes"][0]["chain"],
        json!(["deny"]),
        "{all}"
    );
    assert!(metric(
        &server,
        "arbiter_config_reloads_total{result=\"applied\"} 1"
    ));
}

#[test]
fn an_invalid_configuration_is_refused_whole() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    std::fs::copy(artifacts::VERDICT_DENY, d.path("deny.wasm")).expect("copy");
    let server = d.start();
    let new_route = "[[routes]]\nkind = \"tool\"\nchain = [\"deny\"]\n";
    // Each refusal also carries a valid change (a new policy and route),
    // which must not apply either.
    let refusals = [
        // One unknown key.
        (
            "",
            "[[policies]]\nname = \"deny\"\nfile = \"deny.wasm\"\nsetings = {}\n",
            "parse",
        ),
        // A route to a policy that is not configured.
        (
            "",
            "[[routes]]\nkind = \"tool\"\nchain = [\"nobody\"]\n",
            "parse",
        ),
        // A new policy whose file is not a component.
        (
            "",
            "[[policies]]\nname = \"deny\"\nfile = \"arbiter.toml\"\n",
            "compile",
        ),
        // Settings the serving policy refuses.
        (
            r#"settings = { refuse = "allow" }"#,
            "[[policies]]\nname = \"deny\"\nfile = \"deny.wasm\"\n",
            "validate-settings",
        ),
        // What only a restart can change.
        (
            "",
            "[engine]\nmax_instances = 8\n[[policies]]\nname = \"deny\"\nfile = \"deny.wasm\"\n",
            "restart-only",
        ),
    ];
    let config_attempt =
        || server.admin_get("/v1/policies").json()["config"]["last_attempt"].clone();
    for (i, (policy_extra, extra, stage)) in refusals.iter().enumerate() {
        let before = config_attempt()["at"].clone();
        let extra = if extra.contains("nobody") {
            (*extra).to_owned()
        } else {
            format!("{extra}{new_route}")
        };
        d.write_config(policy_extra, &extra);
        wait_for("the configuration attempt", || {
            config_attempt()["at"] != before
        });
        let attempt = config_attempt();
        assert_eq!(attempt["step"], *stage, "case {i}: {attempt}");
        // Nothing of it applied: the same policy, route and settings.
        let r = decide(server.addr);
        assert_eq!(
            (r["outcome"].as_str(), r["policies"][0]["name"].as_str()),
            (Some("allow"), Some("p")),
            "case {i}"
        );
        let policies = server.admin_get("/v1/policies").json()["policies"].clone();
        assert_eq!(
            policies.as_array().map(Vec::len),
            Some(1),
            "case {i}: {policies}"
        );
    }
    assert!(metric(
        &server,
        "arbiter_config_reloads_total{result=\"refused\"} 5"
    ));
}

#[test]
fn tokens_change_without_a_restart() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let server = d.start();
    assert_eq!(decide(server.addr)["outcome"], "allow");
    d.write_config("", "[auth]\ndecide_token = \"t-1\"\n");
    wait_for("the token to apply", || {
        post_json(server.addr, "/v1/decide", &tool_call()).status == 401
    });
    let body =
        json!({"action": {"kind": "tool", "name": "x"}, "context": {"agent": {"id": "bot"}}})
            .to_string();
    let r = send(
        server.addr,
        "POST",
        "/v1/decide",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer t-1"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn rollback_serves_an_earlier_version_at_once() {
    let d = Deployment::new(
        artifacts::VERDICT_ALLOW,
        "",
        "[auth]\nadmin_token = \"root\"\n",
    );
    let server = d.start();
    let (allow, deny) = versions();
    replace_by_rename(
        &d.policy(),
        &std::fs::read(artifacts::VERDICT_DENY).expect("read"),
    );
    wait_for("the deny version", || serving(&server) == *deny);
    let admin = [
        ("Authorization", "Bearer root"),
        ("Content-Type", "application/json"),
    ];
    let rollback = |body: &str| {
        send(
            server.admin,
            "POST",
            "/v1/policies/p/rollback",
            &admin,
            body.as_bytes(),
        )
    };

    // No token, a wrong token: refused.
    let r = send(server.admin, "POST", "/v1/policies/p/rollback", &[], b"");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = send(
        server.admin,
        "POST",
        "/v1/policies/p/rollback",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // Back to the previous version: the very next decision uses it.
    let r = rollback("");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["from"].as_str(), r.json()["to"].as_str()),
        (Some(deny.as_str()), Some(allow.as_str()))
    );
    let d1 = decide(server.addr);
    assert_eq!(
        (
            d1["outcome"].as_str(),
            d1["policies"][0]["version"].as_str()
        ),
        (Some("allow"), Some(allow.as_str()))
    );

    // Nothing older is kept.
    let r = rollback("{}");
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{}",
        r.body
    );
    // Forward again, by a prefix of the version.
    let prefix = &deny["sha256:".len().."sha256:".len() + 12];
    let r = rollback(&json!({"version": prefix}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decide(server.addr)["outcome"], "deny");
    // Unknown version, unknown policy, bad body.
    let r = rollback(r#"{"version": "sha256:0000"}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("kept:")
    );
    let r = send(
        server.admin,
        "POST",
        "/v1/policies/nobody/rollback",
        &admin,
        b"",
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("unknown_policy"))
    );
    let r = rollback(r#"{"versoin": "x"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = send(server.admin, "GET", "/v1/policies/p/rollback", &admin, b"");
    assert_eq!(r.status, 405);
    assert!(metric(
        &server,
        "arbiter_policy_rollbacks_total{policy=\"p\"} 2"
    ));

    // The status lists the versions kept and marks the serving one.
    let status = server.policy_status();
    let kept: Vec<(&str, bool)> = status["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap_or_default(),
                v["serving"] == true,
            )
        })
        .collect();
    assert_eq!(kept, vec![(deny.as_str(), true), (allow.as_str(), false)]);
}

#[test]
fn without_watching_sighup_reloads() {
    let d = Deployment::new(artifacts::VERDICT_ALLOW, "", "");
    let text = std::fs::read_to_string(d.config()).expect("read");
    replace_by_rename(
        &d.config(),
        text.replace("debounce_ms = 20", "watch = false").as_bytes(),
    );
    let server = d.start();
    replace_by_rename(
        &d.policy(),
        &std::fs::read(artifacts::VERDICT_DENY).expect("read"),
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        decide(server.addr)["outcome"],
        "allow",
        "a change was picked up unwatched"
    );
    server.reload();
    wait_for("the reload", || decide(server.addr)["outcome"] == "deny");
}

#[test]
fn settings_and_limits_change_as_a_new_version_that_can_be_rolled_back() {
    let d = Deployment::new(
        artifacts::VERDICT_ALLOW,
        "",
        "[auth]\nadmin_token = \"root\"\n",
    );
    let server = d.start();
    d.write_config(
        "settings = { refuse = \"deny\" }\nlimits = { fuel = 10000000 }",
        "[auth]\nadmin_token = \"root\"\n",
    );
    wait_for("the new limits", || {
        server.policy_status()["limits"]["fuel"] == 10_000_000
    });
    let status = server.policy_status();
    // One component, two settings: two versions kept.
    assert_eq!(
        status["versions"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert_eq!(decide(server.addr)["outcome"], "allow");
    let r = send(
        server.admin,
        "POST",
        "/v1/policies/p/rollback",
        &[("Authorization", "Bearer root")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let serving = server
        .registry()
        .arbiter()
        .policy_set()
        .policy("p")
        .cloned()
        .expect("p");
    assert_eq!(
        (serving.settings.as_str(), serving.limits.fuel),
        ("{}", Limits::default().fuel)
    );
}

#[test]
fn a_policy_leaves_service_only_when_the_configuration_drops_it() {
    let deny_policy = "[[policies]]\nname = \"deny\"\nfile = \"deny.wasm\"\n";
    let deny_route = "[[routes]]\nkind = \"db\"\nchain = [\"deny\"]\n";
    let d = Deployment::new(
        artifacts::VERDICT_ALLOW,
        "",
        &format!("{deny_policy}{deny_route}"),
    );
    std::fs::copy(artifacts::VERDICT_DENY, d.path("deny.wasm")).expect("copy");
    let server = d.start();
    let db = json!({"action": {"kind": "db", "name": "q"}, "context": {"agent": {"id": "bot"}}});
    std::fs::remove_file(d.path("deny.wasm")).expect("delete");
    let deny_status = || server.admin_get("/v1/policies").json()["policies"][1].clone();
    wait_for("the failed read", || {
        deny_status()["last_error"]["step"] == "read"
    });
    assert_eq!(deny_status()["state"], "serving");
    assert_eq!(
        post_json(server.addr, "/v1/decide", &db).json()["outcome"],
        "deny"
    );
    // The configuration drops it: now it is gone, and its route with it.
    d.write_config("", "");
    wait_for("the policy to leave", || {
        server.admin_get("/v1/policies").json()["policies"]
            .as_array()
            .map(Vec::len)
            == Some(1)
    });
    let r = post_json(server.addr, "/v1/decide", &db).json();
    assert_eq!(
        (r["outcome"].as_str(), r["policies"][0]["name"].as_str()),
        (Some("allow"), Some("p"))
    );
}
