//! The decision log with real decisions: every record verifies, each kind
//! of tampering is named with its sequence number, rotation keeps the
//! chain, a torn tail is repaired, and a full disk fails decisions closed
//! and recovers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arbiter::config::{LogConfig, LogFailurePolicy};
use arbiter::evidence::audit::{self, Breakage, Filter, VerifyOptions};
use arbiter::evidence::log::{self, DecisionLog, LogError, segments};
use arbiter::evidence::record::Parsed;
use arbiter::signing::PublicKey;
use arbiter::{Outcome, Request};
use arbiter_tests::http::{get, post_json};
use arbiter_tests::{Server, arbiter, load_example, request, server_config, wait_for};
use serde_json::{Value, json};

/// The log of a test whose files are under `root`.
fn logs(root: &Path) -> PathBuf {
    root.join("log")
}

/// A log in `root/log`, with its checkpoint key made outside it, in
/// `root/keys`.
fn config(root: &Path) -> LogConfig {
    LogConfig {
        dir: Some(logs(root)),
        checkpoint_every: 10,
        checkpoint_key: Some(log::default_checkpoint_key(&root.join("keys")).expect("key")),
        ..LogConfig::default()
    }
}

/// A procurement request for each outcome, in turn.
fn requests(n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| match i % 3 {
            0 => request("tool", "db.query", json!({})),
            1 => request("tool", "payments.transfer", json!({"amount": 6000 + i})),
            _ => request("tool", "send_email", json!({"to": "eve@evil.example"})),
        })
        .map(|mut r| {
            if r.action.name == "db.query" {
                r.action.target = "orders".into();
            }
            r
        })
        .collect()
}

/// Makes `n` real procurement decisions into the log `log` configures,
/// one every `pace`, then closes it.
fn write_paced(log: LogConfig, n: usize, pace: Duration) -> Vec<arbiter::Decision> {
    let log = Arc::new(DecisionLog::open(&log, Path::new(""), None).expect("open"));
    let a = arbiter(vec![load_example("procurement")]).with_log(Arc::clone(&log));
    let decisions = requests(n)
        .iter()
        .map(|r| {
            let d = a.decide(r);
            std::thread::sleep(pace);
            d
        })
        .collect();
    drop(a);
    log.close();
    decisions
}

/// As [`write_paced`], as fast as the log takes them.
fn write_log(log: LogConfig, n: usize) -> Vec<arbiter::Decision> {
    write_paced(log, n, Duration::ZERO)
}

/// Verifies as an auditor does: the key from outside the log directory.
fn options(root: &Path) -> VerifyOptions {
    let public = log::public_key_path(&root.join("keys").join(log::CHECKPOINT_KEY_FILE));
    let text = std::fs::read_to_string(public).expect("public key");
    VerifyOptions {
        key: PublicKey::from_file(&text).expect("key"),
        checkpoints_file: Some(logs(root).join("checkpoints.jsonl")),
    }
}

fn verify(root: &Path) -> Result<audit::Verified, audit::Broken> {
    audit::verify(&logs(root), &options(root)).expect("readable")
}

fn only_segment(root: &Path) -> PathBuf {
    let s = segments(&logs(root)).expect("list");
    assert_eq!(s.len(), 1, "{s:?}");
    s[0].clone()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write");
}

/// The line index of record `seq`.
fn index_of(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| Parsed::from_line(l.as_bytes()).is_some_and(|p| p.seq == seq))
        .expect("record present")
}

#[test]
fn every_decision_is_one_verified_record_with_everything_an_auditor_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let decisions = write_log(config(dir.path()), 25);
    let v = verify(dir.path()).expect("verifies");
    // open + 25 decisions + checkpoints after every 10 records (at seq 11,
    // 22) and at close.
    assert_eq!(v.records, 1 + 25 + v.checkpoints, "{v:?}");
    assert_eq!(v.checkpoints, 3, "{v:?}");
    assert_eq!(v.unsigned_tail, 0);

    let mut seen = Vec::new();
    audit::query(&[logs(dir.path())], &Filter::default(), |p| {
        seen.push(p.clone());
        true
    })
    .expect("query");
    assert_eq!(seen.len(), 25);
    for (p, d) in seen.iter().zip(&decisions) {
        let data = p.data();
        assert_eq!(data["decision_id"], d.decision_id.as_str());
        assert_eq!(data["outcome"], d.outcome.as_str());
        assert_eq!(data["decided"], d.outcome.as_str());
        assert_eq!(data["mode"], "enforce");
        assert_eq!(data["rule"], d.rule.as_str());
        assert_eq!(data["context"]["agent"]["id"], "procurement-bot");
        let policy = &data["policies"][0];
        assert_eq!(policy["name"], "procurement");
        assert_eq!(policy["version"], d.policies[0].version.as_str());
        assert!(policy["fuel"].as_u64().is_some_and(|f| f > 0), "{policy}");
        assert!(p.ts().ends_with('Z') && p.ts().len() == 27, "{}", p.ts());
        assert!(
            data["params_sha256"]
                .as_str()
                .is_some_and(|h| h.starts_with("sha256:"))
        );
    }
    let outcomes: Vec<&str> = decisions.iter().map(|d| d.outcome.as_str()).collect();
    assert_eq!(&outcomes[..3], ["allow", "require-approval", "deny"]);

    let s = audit::stats(&[logs(dir.path())], &Filter::default()).expect("stats");
    assert_eq!(s.decisions, 25);
    assert_eq!(s.by_outcome["allow"], 9);
    assert_eq!(s.by_outcome["require-approval"], 8);
    assert_eq!(s.by_rule["email.external-recipient"], 8);
    assert_eq!(s.by_policy["procurement"]["deny"], 8);
    let denied = Filter {
        outcome: Some("deny".into()),
        agent: Some("procurement-bot".into()),
        ..Filter::default()
    };
    assert_eq!(
        audit::stats(&[logs(dir.path())], &denied)
            .expect("stats")
            .decisions,
        8
    );
    let nobody = Filter {
        agent: Some("someone-else".into()),
        ..Filter::default()
    };
    assert_eq!(
        audit::stats(&[logs(dir.path())], &nobody)
            .expect("stats")
            .decisions,
        0
    );
    let future = Filter {
        since: Some(std::time::SystemTime::now() + Duration::from_secs(60)),
        ..Filter::default()
    };
    assert_eq!(
        audit::stats(&[logs(dir.path())], &future)
            .expect("stats")
            .decisions,
        0
    );
}

#[test]
fn params_are_stored_as_configured() {
    for (params, redact, check) in [
        (
            arbiter::config::ParamsStorage::Sha256,
            vec![],
            (|d: &Value| assert!(d.get("params").is_none(), "{d}")) as fn(&Value),
        ),
        (
            arbiter::config::ParamsStorage::Redact,
            vec!["amount".to_owned()],
            |d: &Value| {
                if d["action"]["name"] == "payments.transfer" {
                    assert_eq!(d["params"]["amount"], "[REDACTED]", "{d}");
                }
            },
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogConfig {
            params,
            redact_fields: redact,
            ..config(dir.path())
        };
        write_log(log, 6);
        verify(dir.path()).expect("verifies");
        audit::query(&[logs(dir.path())], &Filter::default(), |p| {
            check(p.data());
            true
        })
        .expect("query");
    }
}

#[test]
fn each_kind_of_tampering_is_named_with_its_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(config(dir.path()), 30);
    let segment = only_segment(dir.path());
    let original = lines(&segment);
    let tampered = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut l = original.clone();
        edit(&mut l);
        write_lines(&segment, &l);
        let broken = verify(dir.path()).expect_err("tampering shows");
        write_lines(&segment, &original);
        broken
    };

    // One field of a middle record: the policy version.
    let b = tampered(&|l| {
        let i = index_of(l, 15);
        let mut v: Value = serde_json::from_str(&l[i]).expect("json");
        v["data"]["policies"][0]["version"] = json!("sha256:feedface");
        l[i] = v.to_string();
    });
    assert_eq!((b.kind, b.seq), (Breakage::Changed, 15), "{b:?}");
    assert!(b.detail.contains("does not match its hash"), "{b:?}");

    // The outcome, with the record's own hash recomputed to match.
    let b = tampered(&|l| {
        let i = index_of(l, 16);
        let mut v: Value = serde_json::from_str(&l[i]).expect("json");
        v["data"]["outcome"] = json!("allow");
        v.as_object_mut().expect("object").remove("hash");
        let hash = arbiter::evidence::record::sha256(&arbiter::evidence::record::canonical(&v));
        v["hash"] = json!(hash);
        l[i] = v.to_string();
    });
    assert_eq!((b.kind, b.seq), (Breakage::Changed, 16), "{b:?}");
    assert!(b.detail.contains("re-hashed"), "{b:?}");

    // A deleted line.
    let b = tampered(&|l| {
        let i = index_of(l, 20);
        l.remove(i);
    });
    assert_eq!((b.kind, b.seq), (Breakage::Missing, 20), "{b:?}");

    // Two lines swapped.
    let b = tampered(&|l| {
        let i = index_of(l, 7);
        l.swap(i, i + 1);
    });
    assert_eq!((b.kind, b.seq), (Breakage::Reordered, 7), "{b:?}");

    // The tail cut past a checkpoint: the log alone still chains, the
    // checkpoints file shows the cut.
    let last = Parsed::from_line(original.last().expect("lines").as_bytes()).expect("record");
    let b = tampered(&|l| l.truncate(l.len() - 12));
    assert_eq!(b.kind, Breakage::Truncated, "{b:?}");
    assert_eq!(b.seq, last.seq - 11, "{b:?}");
    assert!(
        b.detail
            .contains(&format!("covers records up to {}", last.seq)),
        "{b:?}"
    );

    // A forged checkpoint signature.
    let b = tampered(&|l| {
        let i = l
            .iter()
            .position(|x| x.contains("\"type\":\"checkpoint\""))
            .expect("a checkpoint");
        let mut v: Value = serde_json::from_str(&l[i]).expect("json");
        v["signature"] = json!("00".repeat(64));
        l[i] = v.to_string();
    });
    assert_eq!(b.kind, Breakage::Changed, "{b:?}");
    assert!(b.detail.contains("signature does not verify"), "{b:?}");

    // Garbage in place of a record.
    let b = tampered(&|l| l[3] = "{not json".into());
    assert_eq!((b.kind, b.seq), (Breakage::Changed, 4), "{b:?}");

    // Untouched, it verifies again.
    verify(dir.path()).expect("restored");

    // A copy in the checkpoints file that was edited is tampering too.
    let copies = logs(dir.path()).join("checkpoints.jsonl");
    let original_copies = lines(&copies);
    let mut edited = original_copies.clone();
    edited[0] = edited[0].replace("\"seq\":", "\"seq\":1");
    write_lines(&copies, &edited);
    let b = verify(dir.path()).expect_err("edited copy shows");
    assert_eq!(b.kind, Breakage::Changed, "{b:?}");
    assert!(
        b.detail
            .contains("checkpoints.jsonl line 1 is not a valid signed checkpoint"),
        "{b:?}"
    );
    write_lines(&copies, &original_copies);
    verify(dir.path()).expect("restored");
}

#[test]
fn segments_rotate_by_size_and_age_and_the_chain_runs_across_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogConfig {
        max_segment_bytes: 8192,
        ..config(dir.path())
    };
    // The log's thread starts segments as it gets to them: give it time.
    write_paced(log.clone(), 60, Duration::from_millis(2));
    let files = segments(&logs(dir.path())).expect("list");
    assert!(files.len() >= 4, "{files:?}");
    let v = verify(dir.path()).expect("verifies across segments");
    assert_eq!(v.segments, files.len());
    // Each segment but the newest ends sealed by a checkpoint.
    for f in &files[..files.len() - 1] {
        let last = lines(f).pop().expect("a line");
        assert!(last.contains("\"type\":\"checkpoint\""), "{}", f.display());
    }
    // Reopening continues the chain in the newest segment.
    let before = v.head_seq;
    write_log(log, 3);
    let v = verify(dir.path()).expect("verifies");
    assert!(v.head_seq > before + 3);

    // Age: a segment older than max_segment_age_s is left for a new one.
    let aged = tempfile::tempdir().expect("tempdir");
    let log = LogConfig {
        max_segment_age_s: 1,
        ..config(aged.path())
    };
    // Loaded before the log opens: on a busy machine compiling can take
    // longer than the segment's whole age.
    let procurement = load_example("procurement");
    let opened = Arc::new(DecisionLog::open(&log, Path::new(""), None).expect("open"));
    let a = arbiter(vec![procurement]).with_log(Arc::clone(&opened));
    a.decide(&requests(1)[0]);
    std::thread::sleep(Duration::from_millis(1100));
    a.decide(&requests(1)[0]);
    a.decide(&requests(1)[0]);
    // The write that finds the segment aged asks the log's thread for a new
    // one; closing before that thread ran would leave the rotation to the
    // next open, so give it the time a busy machine may need.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segments(&logs(aged.path())).expect("list").len() < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(a);
    opened.close();
    assert_eq!(segments(&logs(aged.path())).expect("list").len(), 2);
    verify(aged.path()).expect("verifies");
}

#[test]
fn a_torn_last_line_is_cut_at_start_with_a_record_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(config(dir.path()), 5);
    let segment = only_segment(dir.path());
    let torn = br#"{"data":{"action":{"kind":"tool","na"#;
    let mut bytes = std::fs::read(&segment).expect("read");
    let whole = bytes.len();
    bytes.extend_from_slice(torn);
    std::fs::write(&segment, &bytes).expect("write");
    // Before a restart, verify reports the incomplete line but no break.
    let v = verify(dir.path()).expect("still verifies");
    assert_eq!(v.torn_tail_bytes, torn.len());

    write_log(config(dir.path()), 2);
    let v = verify(dir.path()).expect("repaired");
    assert_eq!(v.torn_tail_bytes, 0);
    let crash = lines(&segment)
        .into_iter()
        .find(|l| l.contains("\"type\":\"crash\""))
        .expect("a crash record");
    let crash: Value = serde_json::from_str(&crash).expect("json");
    assert_eq!(crash["data"]["torn_bytes"], torn.len());
    assert_eq!(crash["data"]["offset"], whole);
    assert_eq!(
        crash["data"]["torn_sha256"],
        arbiter::evidence::record::sha256(torn)
    );
}

#[test]
fn one_process_holds_a_log_directory_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect("open");
    let second = DecisionLog::open(&config(dir.path()), Path::new(""), None);
    assert!(matches!(second, Err(LogError::Locked(_))), "{second:?}");
    first.close();
    drop(first);
    DecisionLog::open(&config(dir.path()), Path::new(""), None).expect("free again");
}

#[test]
fn damage_that_is_not_a_crash_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(config(dir.path()), 3);
    let segment = only_segment(dir.path());
    let mut l = lines(&segment);
    let last = l.len() - 1;
    l[last] = l[last]
        .replace("\"seq\":", "\"seq\": ")
        .replace("checkpoint", "decision");
    write_lines(&segment, &l);
    let e = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect_err("refused");
    assert!(e.to_string().contains("does not match its hash"), "{e}");
}

/// A small tmpfs: a disk that fills up. Unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test mounts a tmpfs, which needs root"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        let chunk = vec![b'x'; 4096];
        let mut f = std::fs::File::create(self.path().join("filler")).expect("filler");
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn metric(server: &Server, line: &str) -> bool {
    get(server.addr, "/metrics").body.lines().any(|l| l == line)
}

fn allowed_query() -> Value {
    json!({"action": {"kind": "tool", "name": "db.query", "target": "orders"},
           "context": {"agent": {"id": "procurement-bot"}, "environment": "prod"}})
}

fn log_server(disk: &SmallDisk, on_failure: LogFailurePolicy) -> Server {
    let mut c = server_config(&[("procurement", "procurement", json!({}))]);
    c.log = LogConfig {
        on_failure,
        checkpoint_every: LogConfig::default().checkpoint_every,
        ..config(disk.path())
    };
    Server::start(c, Default::default())
}

#[test]
fn a_full_disk_fails_decisions_closed_and_they_recover_when_it_frees() {
    let disk = SmallDisk::new();
    let server = log_server(&disk, LogFailurePolicy::Deny);
    let ok = post_json(server.addr, "/v1/decide", &allowed_query()).json();
    assert_eq!(ok["outcome"], "allow", "{ok}");

    disk.fill();
    // The last page of the segment may still take a record or two.
    let mut denied = Value::Null;
    wait_for("a write to fail", || {
        denied = post_json(server.addr, "/v1/decide", &allowed_query()).json();
        denied["outcome"] == "deny"
    });
    assert_eq!(denied["rule"], "failure.log", "{denied}");
    let reason = denied["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("decision log cannot be written") && reason.contains("No space left"),
        "{reason}"
    );
    wait_for("the writable gauge to drop", || {
        metric(&server, "arbiter_log_writable 0")
    });
    // While the disk stays full, nothing is allowed without its record.
    for _ in 0..20 {
        let d = post_json(server.addr, "/v1/decide", &allowed_query()).json();
        assert!(d["rule"] == "failure.log" || d["outcome"] == "allow", "{d}");
    }

    disk.free();
    wait_for("the log to recover", || {
        post_json(server.addr, "/v1/decide", &allowed_query()).json()["outcome"] == "allow"
            && metric(&server, "arbiter_log_writable 1")
    });
    let denied_count = unrecorded(&server, "deny");
    assert!(denied_count >= 1);
    server.stop().expect("stops");

    let log = disk.path().join("log");
    verify(disk.path()).expect("the log verifies after the gap");
    let gaps = gap_records(&log);
    assert!(!gaps.is_empty());
    for gap in &gaps {
        assert_eq!(gap["data"]["answered"], "deny");
        assert!(
            gap["data"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left")),
            "{gap}"
        );
    }
    // Every decision denied for want of a record is counted in a gap.
    let counted: u64 = gaps
        .iter()
        .filter_map(|g| g["data"]["count"].as_u64())
        .sum();
    assert_eq!(counted, denied_count);
    // And every decision that was allowed is in the log.
    let allowed = audit::stats(&[&log], &Filter::default())
        .expect("stats")
        .decisions;
    assert!(allowed >= 2, "{allowed}");
}

fn unrecorded(server: &Server, answered: &str) -> u64 {
    let prefix = format!("arbiter_log_unrecorded_decisions_total{{answered=\"{answered}\"}} ");
    get(server.addr, "/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn gap_records(log: &Path) -> Vec<Value> {
    segments(log)
        .expect("list")
        .iter()
        .flat_map(|s| lines(s))
        .filter(|l| l.contains("\"type\":\"gap\""))
        .map(|l| serde_json::from_str(&l).expect("json"))
        .collect()
}

#[test]
fn configured_to_serve_a_full_disk_loses_records_and_says_how_many() {
    let disk = SmallDisk::new();
    let server = log_server(&disk, LogFailurePolicy::Serve);
    disk.fill();
    wait_for("records to be lost", || {
        let d = post_json(server.addr, "/v1/decide", &allowed_query()).json();
        assert_eq!(d["outcome"], "allow", "{d}");
        unrecorded(&server, "served") > 0
    });
    disk.free();
    wait_for("the log to recover", || {
        post_json(server.addr, "/v1/decide", &allowed_query()).json()["outcome"] == "allow"
            && metric(&server, "arbiter_log_writable 1")
    });
    let lost = unrecorded(&server, "served");
    assert_eq!(unrecorded(&server, "deny"), 0);
    server.stop().expect("stops");
    let log = disk.path().join("log");
    verify(disk.path()).expect("verifies");
    let gaps = gap_records(&log);
    assert!(
        gaps.iter().all(|g| g["data"]["answered"] == "served"),
        "{gaps:?}"
    );
    let counted: u64 = gaps
        .iter()
        .filter_map(|g| g["data"]["count"].as_u64())
        .sum();
    assert_eq!(counted, lost);
}

#[test]
fn a_server_records_every_answered_decision_before_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = server_config(&[("procurement", "procurement", json!({}))]);
    c.log = config(dir.path());
    let server = Server::start(c, Default::default());
    let ids: Vec<String> = (0..20)
        .map(|_| {
            let d = post_json(server.addr, "/v1/decide", &allowed_query()).json();
            d["decision_id"].as_str().expect("id").to_owned()
        })
        .collect();
    // Before shutdown: every answered decision is already in the file.
    let log = logs(dir.path());
    let mut logged = Vec::new();
    audit::query(&[&log], &Filter::default(), |p| {
        logged.push(
            p.data()["decision_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        true
    })
    .expect("query");
    assert_eq!(logged, ids);
    server.stop().expect("stops");
    let v = verify(dir.path()).expect("verifies");
    assert_eq!(
        v.unsigned_tail, 0,
        "shutdown seals the log with a checkpoint"
    );
    let _ = Outcome::Allow;
}

#[test]
fn clients_that_hang_up_mid_decision_never_wedge_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = server_config(&[("procurement", "procurement", json!({}))]);
    c.log = config(dir.path());
    let server = Server::start(c, Default::default());
    let body = allowed_query().to_string();
    let request = format!(
        "POST /v1/decide HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let hang_ups: Vec<_> = (0..4)
        .map(|_| {
            let (addr, request) = (server.addr, request.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let mut s = arbiter_tests::http::connect(addr);
                    let _ = std::io::Write::write_all(&mut s, request.as_bytes());
                    // Gone before the answer.
                    drop(s);
                }
            })
        })
        .collect();
    for h in hang_ups {
        h.join().expect("client");
    }
    for _ in 0..20 {
        let d = post_json(server.addr, "/v1/decide", &allowed_query()).json();
        assert_eq!(d["outcome"], "allow", "{d}");
    }
    server.stop().expect("stops");
    verify(dir.path()).expect("verifies");
}

/// Re-hashes a record whose content was changed, as a forger would.
fn rehash(v: &mut Value) {
    let o = v.as_object_mut().expect("object");
    o.remove("hash");
    // A checkpoint's signature is not under its hash.
    let signature = o.remove("signature");
    let hash = arbiter::evidence::record::sha256(&arbiter::evidence::record::canonical(v));
    v["hash"] = json!(hash);
    if let Some(s) = signature {
        v["signature"] = s;
    }
}

/// Runs `arbiter log verify` with `args`; its exit status and output.
fn verify_cli(args: &[&std::ffi::OsStr], env: &[(&str, &Path)]) -> (bool, String) {
    let mut command = Command::new(arbiter_tests::binary::arbiter());
    command.args(["log", "verify"]).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("arbiter log verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn attacks_on_the_verifier_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(config(dir.path()), 30);
    let log_dir = logs(dir.path());
    let public = log::public_key_path(&dir.path().join("keys").join(log::CHECKPOINT_KEY_FILE));
    let (ok, text) = verify_cli(
        &[log_dir.as_os_str(), "--key".as_ref(), public.as_os_str()],
        &[],
    );
    assert!(ok, "{text}");

    // Cut the tail and delete the checkpoints file that would show it.
    let segment = only_segment(dir.path());
    let original = lines(&segment);
    let copies = log_dir.join("checkpoints.jsonl");
    let copies_text = std::fs::read(&copies).expect("copies");
    write_lines(&segment, &original[..original.len() - 12]);
    std::fs::remove_file(&copies).expect("rm");
    let (ok, text) = verify_cli(
        &[log_dir.as_os_str(), "--key".as_ref(), public.as_os_str()],
        &[],
    );
    arbiter_tests::refused(
        "a cut tail with its checkpoints file deleted",
        !ok && text.contains("checkpoints.jsonl"),
        &text,
    );
    let other = dir.path().join("elsewhere.jsonl");
    let (ok, text) = verify_cli(
        &[
            log_dir.as_os_str(),
            "--key".as_ref(),
            public.as_os_str(),
            "--checkpoints".as_ref(),
            other.as_os_str(),
        ],
        &[],
    );
    arbiter_tests::refused(
        "a checkpoints file given on the command line that is not there",
        !ok && text.contains("elsewhere.jsonl"),
        &text,
    );
    std::fs::write(&copies, &copies_text).expect("restore");
    write_lines(&segment, &original);

    // A forger's key planted in the log directory is never read: not by
    // default, and not when named.
    let forger = arbiter::signing::KeyPair::generate("forger").expect("key");
    let planted = log_dir.join("checkpoint.pub");
    std::fs::write(&planted, forger.public().file()).expect("plant");
    let empty = tempfile::tempdir().expect("empty state");
    let (ok, text) = verify_cli(
        &[log_dir.as_os_str()],
        &[("ARBITER_STATE_DIR", empty.path())],
    );
    arbiter_tests::refused(
        "a public key planted in the log directory, used by default",
        !ok && text.contains("cannot read the checkpoint key")
            && text.contains(&*empty.path().to_string_lossy()),
        &text,
    );
    let (ok, text) = verify_cli(
        &[log_dir.as_os_str(), "--key".as_ref(), planted.as_os_str()],
        &[],
    );
    arbiter_tests::refused(
        "a public key inside the log directory it would vouch for",
        !ok && text.contains("inside the log directory"),
        &text,
    );

    // A record whose seq is the largest there is: an error, no panic.
    let mut crafted = original.clone();
    let mut v: Value = serde_json::from_str(&crafted[0]).expect("json");
    v["seq"] = json!(u64::MAX);
    rehash(&mut v);
    crafted.push(v.to_string());
    crafted.push(v.to_string());
    write_lines(&segment, &crafted);
    let b = verify(dir.path()).expect_err("broken");
    arbiter_tests::refused(
        "records numbered at and past u64::MAX",
        b.kind == Breakage::Changed || b.kind == Breakage::Missing,
        format!("{b:?}"),
    );
    let (ok, text) = verify_cli(
        &[log_dir.as_os_str(), "--key".as_ref(), public.as_os_str()],
        &[],
    );
    assert!(!ok && text.contains("broken at record"), "{text}");
    write_lines(&segment, &original);
}

#[test]
fn attacks_on_the_writer_stop_its_start() {
    // Whoever can write the log cannot sign with a key kept in it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(logs(dir.path())).expect("log dir");
    let open_with_key = |key: PathBuf| {
        let config = LogConfig {
            checkpoint_key: Some(key),
            ..config(dir.path())
        };
        DecisionLog::open(&config, Path::new(""), None).expect_err("refused")
    };
    let e = open_with_key(log::default_checkpoint_key(&logs(dir.path())).expect("key"));
    arbiter_tests::refused(
        "a checkpoint key kept in the log directory",
        matches!(e, LogError::Key { .. }) && e.to_string().contains("inside the log directory"),
        &e,
    );

    // A key others can read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let keys = tempfile::tempdir().expect("keys");
        let key = log::default_checkpoint_key(keys.path()).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = open_with_key(key);
        arbiter_tests::refused(
            "a checkpoint key readable by its group",
            e.to_string()
                .contains("readable by others than its owner (mode 640)"),
            &e,
        );
    }

    // The tail cut past a checkpoint: the start refuses to chain on.
    write_log(config(dir.path()), 30);
    let segment = only_segment(dir.path());
    let original = lines(&segment);
    write_lines(&segment, &original[..original.len() - 12]);
    let e = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect_err("refused");
    arbiter_tests::refused(
        "a log whose tail was cut, restarted",
        matches!(e, LogError::Cut { .. }) && e.to_string().contains("were cut"),
        &e,
    );

    // The tail rewritten and re-chained from before the last checkpoint.
    let copies =
        std::fs::read_to_string(logs(dir.path()).join("checkpoints.jsonl")).expect("copies");
    let last_copy =
        Parsed::from_line(copies.lines().last().expect("a copy").as_bytes()).expect("copy");
    let mut rewritten = original.clone();
    let from = index_of(&rewritten, last_copy.seq - 1);
    let mut prev = String::new();
    for (n, line) in rewritten.iter_mut().enumerate().skip(from) {
        let mut v: Value = serde_json::from_str(line).expect("json");
        if n == from {
            v["data"]["outcome"] = json!("allow");
        } else {
            v["prev_hash"] = json!(prev);
        }
        rehash(&mut v);
        prev = v["hash"].as_str().expect("hash").to_owned();
        *line = v.to_string();
    }
    write_lines(&segment, &rewritten);
    let e = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect_err("refused");
    arbiter_tests::refused(
        "a tail rewritten and re-hashed across the last checkpoint, restarted",
        e.to_string().contains("differs from the signed checkpoint"),
        &e,
    );
    write_lines(&segment, &original);

    // The checkpoints file deleted: no way to tell a cut.
    let copies_path = logs(dir.path()).join("checkpoints.jsonl");
    std::fs::remove_file(&copies_path).expect("rm");
    let e = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect_err("refused");
    arbiter_tests::refused(
        "a log whose checkpoints file was deleted, restarted",
        e.to_string().contains("is missing"),
        &e,
    );
    std::fs::write(&copies_path, copies).expect("restore");

    // A last record numbered u64::MAX, so the next would overflow.
    let mut crafted = original.clone();
    let mut v: Value = serde_json::from_str(original.last().expect("last")).expect("json");
    v["seq"] = json!(u64::MAX);
    v["prev_hash"] = json!(
        Parsed::from_line(original.last().expect("last").as_bytes())
            .expect("p")
            .hash
    );
    rehash(&mut v);
    crafted.push(v.to_string());
    write_lines(&segment, &crafted);
    let e = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect_err("refused");
    arbiter_tests::refused(
        "a last record numbered u64::MAX",
        e.to_string().contains("beyond any a log reaches"),
        &e,
    );
    write_lines(&segment, &original);

    // Numbered u64::MAX in the middle, chained on by an ordinary last
    // record: the check of the tail refuses it without overflowing.
    let mut after = v.clone();
    after["seq"] = json!(
        Parsed::from_line(original.last().expect("last").as_bytes())
            .expect("p")
            .seq
            + 2
    );
    after["prev_hash"] = v["hash"].clone();
    rehash(&mut after);
    crafted.push(after.to_string());
    write_lines(&segment, &crafted);
    let e = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect_err("refused");
    arbiter_tests::refused(
        "a record numbered u64::MAX followed by another",
        matches!(e, LogError::Cut { .. }) && e.to_string().contains("does not chain on"),
        &e,
    );
    // The verifier names the gap up to it, without overflowing either.
    let b = verify(dir.path()).expect_err("broken");
    assert_eq!(b.kind, Breakage::Missing, "{b:?}");
    write_lines(&segment, &original);

    // Untouched, it opens, and says what its check found.
    let opened = DecisionLog::open(&config(dir.path()), Path::new(""), None).expect("opens");
    opened.close();
    let open = lines(&segment)
        .into_iter()
        .rev()
        .find(|l| l.contains("\"type\":\"open\""))
        .expect("an open record");
    let open: Value = serde_json::from_str(&open).expect("json");
    assert_eq!(
        open["data"]["checked"]["checkpoint_seq"], last_copy.seq,
        "{open}"
    );
    verify(dir.path()).expect("verifies");
}

#[test]
fn retention_lets_whole_sealed_segments_go_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogConfig {
        max_segment_bytes: 4096,
        retention: arbiter::config::RetentionConfig {
            max_total_bytes: 8192,
            max_age_s: 0,
        },
        ..config(dir.path())
    };
    let log_dir = logs(dir.path());
    let opened = Arc::new(DecisionLog::open(&log, Path::new(""), None).expect("open"));
    let a = arbiter(vec![load_example("procurement")]).with_log(Arc::clone(&opened));
    for r in requests(100) {
        a.decide(&r);
        // Paced, so the log's thread starts segments as they fill.
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_for("retention to remove the first segments", || {
        !segments(&log_dir).expect("list")[0]
            .to_string_lossy()
            .ends_with("00000000000000000001.jsonl")
    });
    drop(a);
    opened.close();
    drop(opened);
    let v = verify(dir.path()).expect("a log that starts after a retention record verifies");
    assert!(v.first_seq > 1, "{v:?}");
    let retention: Vec<Value> = segments(&log_dir)
        .expect("list")
        .iter()
        .flat_map(|s| lines(s))
        .filter(|l| l.contains("\"type\":\"retention\""))
        .map(|l| serde_json::from_str(&l).expect("json"))
        .collect();
    assert!(
        retention
            .iter()
            .any(|r| r["data"]["last_seq"] == v.first_seq - 1 && r["data"]["first_seq"].is_u64()),
        "{retention:?}"
    );
    // The log reopens after retention (its tail still checks against the
    // last checkpoint) and verifies again.
    write_log(log.clone(), 3);
    verify(dir.path()).expect("verifies after reopening");

    // Removing the next segment by hand, without a retention record, shows.
    let first = segments(&log_dir).expect("list")[0].clone();
    let kept = std::fs::read(&first).expect("read");
    std::fs::remove_file(&first).expect("rm");
    let b = verify(dir.path()).expect_err("a head cut by hand shows");
    arbiter_tests::refused(
        "the oldest segment removed without a retention record",
        b.kind == Breakage::Missing && b.detail.contains("no retention record"),
        format!("{b:?}"),
    );
    std::fs::write(&first, kept).expect("restore");
}

#[test]
fn segments_still_rotate_when_every_record_is_checkpointed() {
    // A checkpoint after each record left nothing to sign when a full
    // segment asked to be sealed, and the request was dropped: one segment
    // grew without bound, and retention could free nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogConfig {
        max_segment_bytes: 4096,
        checkpoint_every: 1,
        checkpoint_interval_ms: 20,
        ..config(dir.path())
    };
    write_paced(log, 40, Duration::from_millis(2));
    let all = segments(&logs(dir.path())).expect("list");
    assert!(all.len() >= 4, "{all:?}");
    for s in &all[..all.len() - 1] {
        let len = std::fs::metadata(s).expect("size").len();
        assert!(len < 3 * 4096, "{} is {len} bytes", s.display());
    }
    verify(dir.path()).expect("verifies");
}

#[test]
fn retention_by_age_lets_old_sealed_segments_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogConfig {
        max_segment_bytes: 4096,
        ..config(dir.path())
    };
    write_paced(log.clone(), 40, Duration::from_millis(2));
    let log_dir = logs(dir.path());
    let before = segments(&log_dir).expect("list");
    assert!(before.len() >= 4, "{before:?}");
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    for old in &before[..before.len() - 1] {
        let f = std::fs::File::options()
            .write(true)
            .open(old)
            .expect("open");
        f.set_modified(day_ago).expect("age it");
    }
    let aged = LogConfig {
        retention: arbiter::config::RetentionConfig {
            max_total_bytes: 0,
            max_age_s: 3600,
        },
        ..log
    };
    let opened = DecisionLog::open(&aged, Path::new(""), None).expect("open");
    // The newest segment and the one before it stay, whatever their age.
    wait_for("the old segments to go", || {
        segments(&log_dir).expect("list").len() == 2
    });
    opened.close();
    drop(opened);
    let v = verify(dir.path()).expect("verifies");
    assert!(v.first_seq > 1, "{v:?}");
}
