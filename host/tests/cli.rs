//! The `arbiter` binary, run as a user would: exit codes, output, errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn arbiter(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .env("ARBITER_CACHE_DIR", cache)
        .output()
        .expect("run arbiter")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes an embedded example to a file, as a user's policy file.
fn example_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, arbiter::examples::bytes(name).expect("embedded")).expect("write");
    path
}

#[test]
fn test_runs_the_copy_of_the_shared_cases_and_passes_them_all() {
    let cache = tempfile::tempdir().expect("tempdir");
    let cases = repo().join("tests/cases.json");
    let o = arbiter(&["test", cases.to_str().expect("utf-8")], cache.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let total =
        serde_json::from_slice::<Vec<serde_json::Value>>(&std::fs::read(&cases).expect("read"))
            .expect("json")
            .len();
    assert_eq!(out.trim_end(), format!("{total} passed, 0 failed"));
}

#[test]
fn a_failing_case_prints_expected_and_got_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        r#"[{"name": "wrong on purpose", "policy": "procurement",
             "action": {"kind": "db", "name": "db.query", "target": "salaries"},
             "expect": {"outcome": "allow", "rule": "default.allow", "risk": 0}},
            {"name": "right", "policy": "procurement",
             "action": {"kind": "db", "name": "db.query", "target": "orders"},
             "expect": {"outcome": "allow"}}]"#,
    )
    .expect("write");
    let o = arbiter(&["test", cases.to_str().expect("utf-8")], dir.path());
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL procurement / wrong on purpose"), "{out}");
    assert!(out.contains("outcome: expected allow, got deny"), "{out}");
    assert!(
        out.contains("rule: expected default.allow, got db.table-not-allowed"),
        "{out}"
    );
    assert!(out.contains("risk: expected 0, got 70"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");
}

#[test]
fn test_with_an_unknown_policy_says_how_to_give_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = dir.path().join("cases.json");
    std::fs::write(&cases, r#"[{"name": "n", "policy": "mine", "action": {"kind": "a", "name": "b"}, "expect": {"outcome": "allow"}}]"#)
        .expect("write");
    let o = arbiter(&["test", cases.to_str().expect("utf-8")], dir.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("give it with --policy mine=FILE"), "{err}");
    // And with --policy it runs the given file.
    let file = example_file(dir.path(), "rate-guard");
    let arg = format!("mine={}", file.display());
    let o = arbiter(
        &["test", "--policy", &arg, cases.to_str().expect("utf-8")],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out.trim_end(), "1 passed, 0 failed");
}

#[test]
fn eval_prints_the_decision_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = example_file(dir.path(), "procurement");
    let request = dir.path().join("req.json");
    std::fs::write(
        &request,
        r#"{"action": {"kind": "tool", "name": "payments.transfer", "params": {"amount": 75000}},
            "context": {"agent": {"id": "bot", "roles": []}, "environment": "prod"}}"#,
    )
    .expect("write");
    let o = arbiter(
        &[
            "eval",
            "--policy",
            policy.to_str().expect("utf-8"),
            request.to_str().expect("utf-8"),
        ],
        dir.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(d["outcome"], "deny");
    assert_eq!(d["rule"], "spend.over-limit");
    assert_eq!(d["policies"][0]["name"], "procurement");
    assert!(
        d["policies"][0]["version"]
            .as_str()
            .expect("version")
            .starts_with("sha256:")
    );
    assert!(d["policies"][0]["fuel"].as_u64().expect("fuel") > 0);
}

#[test]
fn eval_errors_name_the_input_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = example_file(dir.path(), "procurement");
    let p = policy.to_str().expect("utf-8");
    let request = dir.path().join("req.json");
    std::fs::write(&request, r#"{"action": {"kind": "tool"}}"#).expect("write");
    let bad = request.to_str().expect("utf-8");
    let good_path = dir.path().join("good.json");
    std::fs::write(&good_path, r#"{"action": {"kind": "tool", "name": "x"}}"#).expect("write");
    let good = good_path.to_str().expect("utf-8");
    let cases: &[(&[&str], &str)] = &[
        (
            &["eval", "--policy", p, bad],
            "at `action`: missing field `name`",
        ),
        (
            &["eval", "--policy", p, "--settings", "{", good],
            "--settings is not valid JSON",
        ),
        (
            &[
                "eval",
                "--policy",
                p,
                "--settings",
                r#"{"deny_over": "x"}"#,
                good,
            ],
            "settings key `deny_over`",
        ),
        (
            &["eval", "--policy", "/nonexistent.wasm", good],
            "/nonexistent.wasm",
        ),
    ];
    for (args, want) in cases {
        let o = arbiter(args, dir.path());
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn inspect_shows_version_world_and_imports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = example_file(dir.path(), "shell-guard");
    let o = arbiter(&["inspect", policy.to_str().expect("utf-8")], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("version: sha256:"), "{out}");
    assert!(
        out.contains("world:   arbiter:policy/policy@0.2.0 (conforms)"),
        "{out}"
    );
    assert!(
        out.contains("evaluate") && out.contains("validate-settings"),
        "{out}"
    );
    assert!(
        out.contains("wasi:cli/stderr@0.2.6") && !out.contains("REFUSED"),
        "{out}"
    );
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"junk").expect("write");
    let o = arbiter(&["inspect", junk.to_str().expect("utf-8")], dir.path());
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(
        err.contains("cannot inspect") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
}

mod serve {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Starts `arbiter serve` with `args`; returns the child, the address it
    /// announced, and the rest of its stderr as it comes.
    fn serve(args: &[&str], cache: &std::path::Path) -> (Child, String, mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .arg("serve")
            .args(args)
            .env("ARBITER_CACHE_DIR", cache)
            .env("ARBITER_LOG_DIR", cache.join("decisions"))
            .env("ARBITER_STATE_DIR", cache.join("state"))
            .env("ARBITER_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("serve announces its address");
            if let Some(a) = line.strip_prefix("arbiter: listening on http://") {
                // "ADDR; admin plane on ..."
                break a.split(';').next().unwrap_or(a).to_owned();
            }
        };
        (child, addr, rx)
    }

    fn http(addr: &str, request: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn wait_ready(addr: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .starts_with("HTTP/1.1 200")
        {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigterm(child: &Child) {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    #[test]
    fn serve_answers_on_the_default_configuration_and_drains_on_sigterm() {
        let cache = tempfile::tempdir().expect("tempdir");
        let (mut child, addr, rx) = serve(&["--listen", "127.0.0.1:0"], cache.path());
        wait_ready(&addr);
        let body = r#"{"action": {"kind": "shell", "name": "exec", "params": {"command": "sudo reboot"}}, "context": {"agent": {"id": "coder"}}}"#;
        let reply = http(
            &addr,
            &format!(
                "POST /v1/decide HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            reply.contains("\"rule\":\"shell.blocked-command\""),
            "{reply}"
        );
        sigterm(&child);
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(0));
        let rest: Vec<String> = rx.try_iter().collect();
        assert!(rest.iter().any(|l| l == "arbiter: stopped"), "{rest:?}");
    }

    #[test]
    fn json_logs_are_one_object_per_line() {
        let cache = tempfile::tempdir().expect("tempdir");
        let (mut child, addr, rx) = serve(
            &["--listen", "127.0.0.1:0", "--log-format", "json"],
            cache.path(),
        );
        wait_ready(&addr);
        sigterm(&child);
        assert_eq!(child.wait().expect("wait").code(), Some(0));
        let logs: Vec<serde_json::Value> = rx
            .try_iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(&l).expect("a JSON log line"))
            .collect();
        assert!(
            logs.iter().any(|l| l["fields"]["message"] == "ready"),
            "{logs:?}"
        );
    }

    /// Writes `config` to DIR/arbiter.toml and serves it on a free port
    /// until ready; returns the child and its address.
    fn serve_config(dir: &std::path::Path, config: &str) -> (Child, String) {
        let path = dir.join("arbiter.toml");
        std::fs::write(&path, config).expect("write");
        let (child, addr, _rx) = serve(
            &[
                "--listen",
                "127.0.0.1:0",
                "--config",
                path.to_str().expect("utf-8"),
            ],
            dir,
        );
        wait_ready(&addr);
        (child, addr)
    }

    /// Runs `arbiter ARGS` against the admin socket of the server serving
    /// from `dir` (its state in `dir/state`), with the admin token `s3cret`:
    /// the exit code, stdout and stderr.
    fn remote_cli(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
        let socket = dir.join("state").join("admin.sock");
        let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(args)
            .args(["--admin", &format!("unix:{}", socket.display())])
            .env("ARBITER_ADMIN_TOKEN", "s3cret")
            .output()
            .expect("run");
        let (out, err) = super::text(&o);
        (o.status.code(), out, err)
    }

    /// Decides `body` on the server at `addr`.
    fn decide(addr: &str, body: &str) -> serde_json::Value {
        let reply = http(
            addr,
            &format!(
                "POST /v1/decide HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        let json = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(json).expect("a decision")
    }

    fn decided_version(addr: &str) -> String {
        let body = r#"{"action": {"kind": "tool", "name": "search"}, "context": {"agent": {"id": "bot"}}}"#;
        decide(addr, body)["policies"][0]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn approvals_and_agents_commands_drive_a_running_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, addr) = serve_config(
            dir.path(),
            "[auth]\nadmin_token = \"s3cret\"\n[[policies]]\nname = \"p\"\nexample = \"procurement\"\n\
             [[routes]]\nchain = [\"p\"]\n",
        );
        let transfer = |approval: &str| {
            format!(
                r#"{{"action": {{"kind": "tool", "name": "payments.transfer", "params": {{"amount": 6000}}}}, "context": {{"agent": {{"id": "bot"}}}}{approval}}}"#
            )
        };
        let d = decide(&addr, &transfer(""));
        let id = d["approval"]["id"]
            .as_str()
            .expect("an approval")
            .to_owned();
        let cli = |args: &[&str]| remote_cli(dir.path(), args);
        let (code, out, err) = cli(&["approvals", "list"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains(&id) && out.contains("payments.transfer"),
            "{out}"
        );
        let (code, out, err) = cli(&["approvals", "approve", &id, "--reason", "PO checked"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains(&format!("approval {id} approved")), "{out}");
        let (code, _, err) = cli(&["approvals", "decline", &id, "--reason", "no"]);
        assert_eq!(code, Some(2));
        assert!(
            err.contains("(409)") && err.contains("not pending"),
            "{err}"
        );
        let again = decide(&addr, &transfer(&format!(r#", "approval_id": "{id}""#)));
        assert_eq!(again["rule"], "approval.granted", "{again}");

        let (code, out, err) = cli(&["agents", "suspend", "bot", "--reason", "runaway"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert_eq!(decide(&addr, &transfer(""))["rule"], "agent.suspended");
        let (code, out, err) = cli(&["agents", "list"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains("SUSPENDED by admin") && out.contains("runaway"),
            "{out}"
        );
        let (code, out, err) = cli(&["agents", "resume", "bot"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("resumed"), "{out}");
        let (code, _, err) = cli(&["agents", "resume", "bot"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("not suspended"), "{err}");
        sigterm(&child);
        let mut child = child;
        assert_eq!(child.wait().expect("wait").code(), Some(0));
    }

    #[test]
    fn mode_baseline_ab_promote_and_replay_as_a_rollout_would_run_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = super::example_file(dir.path(), "procurement");
        let (child, addr) = serve_config(
            dir.path(),
            "[auth]\nadmin_token = \"s3cret\"\n[[policies]]\nname = \"p\"\nfile = \"procurement.wasm\"\n\
             [[policies.candidates]]\nid = \"strict\"\nrole = \"shadow\"\nsettings = { approval_over = 4000 }\n\
             [[routes]]\nchain = [\"p\"]\n",
        );
        let transfer = |amount: u32| {
            format!(
                r#"{{"action": {{"kind": "tool", "name": "payments.transfer", "params": {{"amount": {amount}}}}}, "context": {{"agent": {{"id": "bot"}}}}}}"#
            )
        };
        for amount in [100, 4500, 4600] {
            assert_eq!(decide(&addr, &transfer(amount))["mode"], "enforce");
        }
        let cli = |args: &[&str]| remote_cli(dir.path(), args);

        let (code, _, err) = cli(&["mode", "p", "sometimes"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("unknown mode `sometimes`"), "{err}");
        let (code, out, err) = cli(&["mode", "p", "monitor"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("mode enforce -> monitor"), "{out}");
        for amount in [300, 200] {
            assert_eq!(decide(&addr, &transfer(amount))["mode"], "monitor");
        }
        let (code, out, err) = cli(&["baseline", "--agent", "bot"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("bot  tool payments.transfer  x2"), "{out}");
        assert!(out.contains("min 200.0  max 300.0"), "{out}");

        // Monitor runs no policy, so only the enforced three were compared.
        let (code, out, err) = cli(&["ab", "report", "p"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("candidate strict (shadow)"), "{out}");
        assert!(out.contains("compared 3, agreed 1 (33.3%)"), "{out}");
        assert!(
            out.contains("2  default.allow -> spend.needs-approval"),
            "{out}"
        );

        let (code, out, err) = cli(&["promote", "p", "strict"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("candidate `strict` now serves"), "{out}");
        let (code, _, err) = cli(&["promote", "p", "strict"]);
        assert_eq!(code, Some(2));
        assert!(
            err.contains("(404)") && err.contains("no candidate `strict`"),
            "{err}"
        );
        sigterm(&child);
        let mut child = child;
        assert_eq!(child.wait().expect("wait").code(), Some(0));

        // Last hour's traffic against the candidate, offline.
        let log = dir.path().join("decisions");
        let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args([
                "replay",
                "--log",
                log.to_str().expect("utf-8"),
                "--policy",
                "p",
            ])
            .args(["--candidate", policy.to_str().expect("utf-8")])
            .args(["--settings", r#"{"approval_over": 4000}"#, "--since", "1h"])
            .env("ARBITER_CACHE_DIR", dir.path().join("cache"))
            .output()
            .expect("run");
        let (out, err) = super::text(&o);
        assert!(o.status.success(), "{out}{err}");
        assert!(
            out.contains("policy p: 5 decisions recorded, 5 replayed against `procurement`"),
            "{out}"
        );
        assert!(out.contains("candidate procurement (replay)"), "{out}");
        // The two monitored decisions had no answer to compare with.
        assert!(out.contains("not-evaluated     -> allow 2"), "{out}");
        assert!(
            out.contains("allow             -> allow 1, require-approval 2"),
            "{out}"
        );
    }

    #[test]
    fn sighup_reloads_and_rollback_and_status_drive_a_running_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = super::example_file(dir.path(), "procurement");
        let first = arbiter::load::version_of(&std::fs::read(&policy).expect("read"));
        let config = dir.path().join("arbiter.toml");
        // The file's listen address is overridden on the command line, at
        // start and on every reload.
        let text = "[server]\nlisten = \"127.0.0.1:9\"\n[auth]\nadmin_token = \"env:TEST_ADMIN\"\n\
             [reload]\nwatch = false\n[[policies]]\nname = \"p\"\nfile = \"procurement.wasm\"\n\
             [[routes]]\nchain = [\"p\"]\n";
        std::fs::write(&config, text).expect("write");
        let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                config.to_str().expect("utf-8"),
            ])
            .env("ARBITER_CACHE_DIR", dir.path().join("cache"))
            .env("ARBITER_LOG_DIR", dir.path().join("decisions"))
            .env("ARBITER_STATE_DIR", dir.path().join("state"))
            .env("TEST_ADMIN", "s3cret")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let addr = loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).expect("address");
            if let Some(a) = line.strip_prefix("arbiter: listening on http://") {
                // "ADDR; admin plane on ..."
                break a.split(';').next().unwrap_or(a).to_owned();
            }
        };
        wait_ready(&addr);
        assert_eq!(decided_version(&addr), first);

        // A new version and a new configuration on disk; unwatched,
        // SIGHUP brings both in.
        let second_bytes = arbiter::examples::bytes("shell-guard").expect("embedded");
        std::fs::write(&policy, second_bytes).expect("write");
        std::fs::write(
            &config,
            text.replace("[auth]", "max_body_bytes = 4096\n[auth]"),
        )
        .expect("write");
        let second = arbiter::load::version_of(second_bytes);
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while decided_version(&addr) != second {
            assert!(Instant::now() < deadline, "SIGHUP did not reload");
            std::thread::sleep(Duration::from_millis(20));
        }

        // The CLI finds the admin socket by default, in the state directory.
        let cli = |args: &[&str], token: &str| {
            Command::new(env!("CARGO_BIN_EXE_arbiter"))
                .args(args)
                .env("ARBITER_STATE_DIR", dir.path().join("state"))
                .env("ARBITER_ADMIN_TOKEN", token)
                .output()
                .expect("run")
        };
        let o = cli(&["status"], "s3cret");
        let (out, err) = super::text(&o);
        assert!(o.status.success(), "{out}{err}");
        assert!(
            out.contains(&format!("* {second}")) && out.contains(&format!("  {first}")),
            "{out}"
        );

        let o = cli(&["rollback", "p"], "wrong");
        let (out, err) = super::text(&o);
        assert_eq!(o.status.code(), Some(2), "{out}{err}");
        assert!(err.contains("the server refused (401)"), "{err}");

        let o = cli(&["rollback", "p"], "s3cret");
        let (out, err) = super::text(&o);
        assert!(o.status.success(), "{out}{err}");
        assert!(
            out.contains(&format!("policy `p` rolled back: {second} -> {first}")),
            "{out}"
        );
        assert_eq!(decided_version(&addr), first);

        let o = cli(&["rollback", "p"], "s3cret");
        let (out, err) = super::text(&o);
        assert_eq!(o.status.code(), Some(2), "{out}{err}");
        assert!(
            err.contains("(409)") && err.contains("no earlier version"),
            "{err}"
        );

        sigterm(&child);
        assert_eq!(child.wait().expect("wait").code(), Some(0));
    }

    #[test]
    fn an_invalid_configuration_is_refused_naming_file_line_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("arbiter.toml");
        std::fs::write(
            &config,
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_byts = 10\n",
        )
        .expect("write");
        let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["serve", "--config", config.to_str().expect("utf-8")])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("arbiter.toml") && err.contains("line 3") && err.contains("max_body_byts"),
            "{err}"
        );

        std::fs::write(&config, "[[policies]]\nname = \"p\"\nfile = \"missing.wasm\"\n[[routes]]\nchain = [\"p\"]\n[server]\nlisten = \"127.0.0.1:0\"\n")
            .expect("write");
        let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["serve", "--config", config.to_str().expect("utf-8")])
            .env("ARBITER_CACHE_DIR", dir.path().join("cache"))
            .env("ARBITER_LOG_DIR", dir.path().join("decisions"))
            .env("ARBITER_STATE_DIR", dir.path().join("state"))
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("policy `p`") && err.contains("missing.wasm") && err.contains("step read"),
            "{err}"
        );
    }

    /// One keep-alive connection: POSTs a decision and reads the reply's
    /// decision id, or `None` once the server is gone.
    fn decide_on(s: &mut TcpStream, body: &str) -> Option<String> {
        let request = format!(
            "POST /v1/decide HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(&mut *s);
        let mut status = String::new();
        reader.read_line(&mut status).ok()?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        if !status.starts_with("HTTP/1.1 200") {
            return None;
        }
        let d: serde_json::Value = serde_json::from_slice(&body).ok()?;
        d["decision_id"].as_str().map(str::to_owned)
    }

    #[test]
    fn a_kill_while_writing_at_full_speed_loses_no_answered_decision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).expect("cache");
        // Where `serve` puts the log.
        let log = cache.join("decisions");
        let body = r#"{"action": {"kind": "tool", "name": "db.query", "target": "orders"}, "context": {"agent": {"id": "procurement-bot"}, "environment": "prod"}}"#;
        let mut answered = Vec::new();
        for round in 0..3 {
            let (mut child, addr, _rx) = serve(&["--listen", "127.0.0.1:0"], &cache);
            wait_ready(&addr);
            let clients: Vec<_> = (0..4)
                .map(|_| {
                    let addr = addr.clone();
                    std::thread::spawn(move || {
                        let mut ids = Vec::new();
                        let mut s = TcpStream::connect(&addr).expect("connect");
                        while let Some(id) = decide_on(&mut s, body) {
                            ids.push(id);
                        }
                        ids
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(700 + 150 * round));
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            for c in clients {
                answered.extend(c.join().expect("client"));
            }
        }
        assert!(answered.len() > 300, "only {} decisions", answered.len());
        // A last start repairs whatever the last kill tore, then stops cleanly.
        let (mut child, addr, _rx) = serve(&["--listen", "127.0.0.1:0"], &cache);
        wait_ready(&addr);
        sigterm(&child);
        assert_eq!(child.wait().expect("wait").code(), Some(0));

        let log_arg = log.to_str().expect("utf-8");
        // The key `serve` made beside the state, outside the log.
        let key = cache.join("state").join("checkpoint.pub");
        let key_arg = key.to_str().expect("utf-8");
        let o = super::arbiter(&["log", "verify", log_arg, "--key", key_arg], &cache);
        let (out, err) = super::text(&o);
        assert!(o.status.success(), "{out}{err}");
        assert!(out.starts_with("verified "), "{out}");
        let o = super::arbiter(&["log", "query", log_arg], &cache);
        let (out, _) = super::text(&o);
        let logged: std::collections::HashSet<String> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a record per line");
                v["data"]["decision_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let lost: Vec<&String> = answered.iter().filter(|id| !logged.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "{} answered decisions are not in the log: {lost:?}",
            lost.len()
        );
        let o = super::arbiter(&["log", "stats", log_arg, "--json"], &cache);
        let stats: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stats json");
        assert_eq!(stats["decisions"], logged.len());
        // rate-guard sees the host's real counters: past 60 calls a minute
        // the agent is denied, and those decisions are logged too.
        let by_outcome: u64 = stats["by_outcome"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, n)| n.as_u64())
            .sum();
        assert_eq!(by_outcome, logged.len() as u64);
        assert!(
            stats["by_policy"]["rate-guard"]["deny"]
                .as_u64()
                .unwrap_or(0)
                > 0,
            "{stats}"
        );
    }
}

#[test]
fn keygen_sign_and_verify_as_a_security_team_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let run = |args: &[&str]| arbiter(args, dir.path());
    let o = run(&["keygen", "--id", "secteam-2026", "--out", d]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("[[trust.keys]]") && out.contains("id = \"secteam-2026\""),
        "{out}"
    );
    let key = dir.path().join("secteam-2026.key");
    let public = dir.path().join("secteam-2026.pub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key is owner-only from the start"
        );
    }
    // Never overwritten.
    let o = run(&["keygen", "--id", "secteam-2026", "--out", d]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("File exists"), "{}", text(&o).1);

    let component = example_file(dir.path(), "procurement");
    let c = component.to_str().expect("utf-8");
    let (k, p) = (
        key.to_str().expect("utf-8"),
        public.to_str().expect("utf-8"),
    );
    let o = run(&[
        "sign",
        "--key",
        k,
        "--name",
        "procurement",
        "--version",
        "1.4.0",
        c,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(dir.path().join("procurement.wasm.sig").exists());

    let o = run(&["verify", "--key", p, c]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.starts_with("ok: `procurement` 1.4.0 (sha256:")
            && out.contains("signed by `secteam-2026`"),
        "{out}"
    );

    // Each refusal exits 2 and says why.
    let o = run(&["verify", "--key", p, "--name", "refunds", c]);
    assert!(
        text(&o)
            .1
            .contains("signed as policy `procurement` but is configured as `refunds`"),
        "{}",
        text(&o).1
    );
    let o = run(&[
        "sign",
        "--key",
        k,
        "--name",
        "procurement",
        "--version",
        "one",
        c,
    ]);
    assert!(
        text(&o).1.contains("not a semantic version"),
        "{}",
        text(&o).1
    );
    let mut bytes = std::fs::read(&component).expect("read");
    bytes[1000] ^= 1;
    std::fs::write(&component, &bytes).expect("tamper");
    let o = run(&["verify", "--key", p, c]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("do not match the signed digest"),
        "{}",
        text(&o).1
    );
    std::fs::write(dir.path().join("procurement.wasm.sig"), "{\"format\"").expect("truncate");
    let o = run(&["verify", "--key", p, c]);
    assert!(text(&o).1.contains("malformed"), "{}", text(&o).1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let o = run(&[
            "sign",
            "--key",
            k,
            "--name",
            "procurement",
            "--version",
            "1.4.1",
            c,
        ]);
        assert!(text(&o).1.contains("chmod 600"), "{}", text(&o).1);
    }
}

#[test]
fn log_verify_names_a_broken_record_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let o = arbiter(&["log", "verify", log.to_str().expect("utf-8")], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("is not a decision log directory"),
        "{:?}",
        text(&o)
    );
    // A log made by the library, then one line deleted.
    let keys = dir.path().join("keys");
    let config = arbiter::config::LogConfig {
        dir: Some(log.clone()),
        checkpoint_key: Some(arbiter::evidence::log::default_checkpoint_key(&keys).expect("key")),
        ..Default::default()
    };
    let key = keys.join("checkpoint.pub");
    let key_arg = key.to_str().expect("utf-8");
    let opened = std::sync::Arc::new(
        arbiter::evidence::log::DecisionLog::open(&config, Path::new(""), None).expect("open"),
    );
    let engine = arbiter::engine::Engine::new(&Default::default()).expect("engine");
    let spec = arbiter::load::PolicySpec {
        name: "procurement".into(),
        source: arbiter::examples::source("procurement").expect("embedded"),
        settings: serde_json::json!({}),
        limits: Default::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let p = arbiter::load::load(&engine, None, &spec).expect("loads");
    let a = arbiter::Arbiter::with_chain(engine, vec![p]).with_log(opened.clone());
    let request: arbiter::Request = serde_json::from_value(serde_json::json!({
        "action": {"kind": "tool", "name": "db.query", "target": "orders"},
        "context": {"agent": {"id": "bot"}}
    }))
    .expect("request");
    for _ in 0..5 {
        a.decide(&request);
    }
    drop(a);
    opened.close();
    let log_arg = log.to_str().expect("utf-8");
    let o = arbiter(&["log", "verify", log_arg, "--key", key_arg], dir.path());
    assert!(o.status.success(), "{:?}", text(&o));
    let segment = arbiter::evidence::log::segments(&log)
        .expect("list")
        .remove(0);
    let kept: Vec<String> = std::fs::read_to_string(&segment)
        .expect("read")
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&segment, kept.concat()).expect("write");
    let o = arbiter(&["log", "verify", log_arg, "--key", key_arg], dir.path());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.starts_with("broken at record 3: missing: records 3..=3 are missing"),
        "{out}"
    );
    let o = arbiter(
        &["log", "query", log_arg, "--since", "not a time"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("neither an RFC 3339 time"),
        "{:?}",
        text(&o)
    );
    let o = arbiter(
        &["log", "query", log_arg, "--since", "1h", "--limit", "2"],
        dir.path(),
    );
    assert_eq!(text(&o).0.lines().count(), 2, "{:?}", text(&o));
}
