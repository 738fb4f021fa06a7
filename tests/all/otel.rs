//! OpenTelemetry against a real OTLP/gRPC receiver (`tests/grpc/collector.py`,
//! OpenTelemetry's own protos with grpcio): a decision's span tree continues
//! the caller's `traceparent` on each door, the decision log's records
//! arrive as log records whose hashes are the ones `arbiter log query`
//! prints, and a collector that stalls costs counted drops, never a held
//! decision.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use arbiter::config::Config;
use arbiter::server::ServeOptions;
use arbiter_tests::http::{get, send};
use arbiter_tests::{Server, refused};
use serde_json::{Value, json};

use super::grpc::{check, config as authorizer, python, repo};

/// The receiver, stopped (stdin closed) on drop.
struct Collector {
    child: Child,
    port: u16,
    dump: tempfile::NamedTempFile,
}

impl Collector {
    fn start(stall_s: f64) -> Self {
        let dump = tempfile::NamedTempFile::new().expect("dump file");
        let mut child = Command::new(python())
            .arg(repo().join("tests/grpc/collector.py"))
            .arg(dump.path())
            .arg(stall_s.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the collector");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the collector's port");
        let port = first.trim().parse().expect("a port");
        Collector { child, port, dump }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every export received, as `(signal, request)`.
    fn received(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(self.dump.path())
            .expect("dump")
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("JSON");
                (
                    v["signal"].as_str().expect("signal").to_owned(),
                    v["request"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn traced(collector: &Collector) -> Config {
    let mut c = authorizer();
    c.telemetry.traces = true;
    c.telemetry.decision_logs = true;
    c.telemetry.endpoint = Some(collector.endpoint());
    c.telemetry.interval_ms = 100;
    c
}

/// An OTLP attribute's value, as text.
fn attr(attributes: &Value, key: &str) -> Option<String> {
    attributes
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["intValue"].as_str().map(str::to_owned))
                .unwrap_or_else(|| v.to_string())
        })
}

/// Protobuf JSON gives ids in base64; W3C in hex.
fn hex_of(b64: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::new();
    for c in b64.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = bits << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push_str(&format!("{:02x}", (bits >> n) & 0xff));
        }
    }
    out
}

fn spans(received: &[(String, Value)]) -> Vec<Value> {
    received
        .iter()
        .filter(|(s, _)| s == "traces")
        .flat_map(|(_, r)| r["resourceSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn log_records(received: &[(String, Value)]) -> Vec<Value> {
    received
        .iter()
        .filter(|(s, _)| s == "logs")
        .flat_map(|(_, r)| r["resourceLogs"].as_array().cloned().unwrap_or_default())
        .flat_map(|rl| rl["scopeLogs"].as_array().cloned().unwrap_or_default())
        .flat_map(|sl| sl["logRecords"].as_array().cloned().unwrap_or_default())
        .collect()
}

const STAGES: [&str; 8] = [
    "arbiter.admission",
    "arbiter.enrich",
    "arbiter.route",
    "arbiter.gate",
    "arbiter.evaluate",
    "arbiter.combine",
    "arbiter.approvals",
    "arbiter.evidence",
];

/// The span tree of decision `id`, checked: a root continuing `parent`
/// (trace and span id, hex), every stage under it in order, the policy
/// under `evaluate` with what it decided.
fn assert_tree(spans: &[Value], id: &str, parent: Option<(&str, &str)>, policy: &str) {
    let root = spans
        .iter()
        .find(|s| {
            s["name"] == "arbiter.decision"
                && attr(&s["attributes"], "arbiter.decision_id").as_deref() == Some(id)
        })
        .unwrap_or_else(|| panic!("no span for decision {id}"));
    let trace = hex_of(root["traceId"].as_str().expect("trace id"));
    let root_id = root["spanId"].as_str().expect("span id");
    match parent {
        Some((t, s)) => {
            assert_eq!(trace, t, "the caller's trace is continued");
            assert_eq!(hex_of(root["parentSpanId"].as_str().expect("a parent")), s);
        }
        None => assert!(
            root["parentSpanId"].as_str().unwrap_or_default().is_empty(),
            "a root of its own: {root}"
        ),
    }
    assert_eq!(root["kind"], "SPAN_KIND_SERVER");
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == root_id)
        .collect();
    let names: Vec<&str> = children.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, STAGES, "every stage, in order, for {id}");
    let start = |s: &Value| {
        s["startTimeUnixNano"]
            .as_str()
            .expect("start")
            .parse::<u128>()
            .expect("ns")
    };
    let end = |s: &Value| {
        s["endTimeUnixNano"]
            .as_str()
            .expect("end")
            .parse::<u128>()
            .expect("ns")
    };
    for c in &children {
        assert!(
            start(c) >= start(root) && end(c) <= end(root),
            "{c} inside {root}"
        );
    }
    let evaluate = children[4]["spanId"].as_str().expect("id");
    let policies: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == evaluate)
        .collect();
    assert_eq!(policies.len(), 1, "one policy span under evaluate");
    let p = &policies[0]["attributes"];
    assert_eq!(attr(p, "arbiter.policy.name").as_deref(), Some(policy));
    assert!(attr(p, "arbiter.policy.version").is_some_and(|v| v.starts_with("sha256:")));
    assert!(attr(p, "arbiter.policy.rule").is_some_and(|r| !r.is_empty()));
    assert!(attr(p, "arbiter.policy.outcome").is_some());
    assert!(
        attr(p, "arbiter.policy.fuel")
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|f| f > 0),
        "fuel: {p}"
    );
}

#[test]
fn each_door_continues_the_callers_trace_and_the_exported_records_are_the_chains() {
    let collector = Collector::start(0.0);
    let log = tempfile::tempdir().expect("log");
    let mut options = ServeOptions::default();
    options.overrides.log_dir = Some(log.path().to_owned());
    let server = Server::start(traced(&collector), options);
    let grpc = server.grpc_addr().expect("the gRPC authorizer listens");
    let (t1, s1) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let (t2, s2) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let (t3, s3) = ("11111111111111111111111111111111", "2222222222222222");
    let (t4, s4) = ("33333333333333333333333333333333", "4444444444444444");
    let tp = |t: &str, s: &str, f: &str| format!("00-{t}-{s}-{f}");

    // HTTP decide.
    let body =
        json!({"action": {"kind": "tool", "name": "allow"}, "context": {"agent": {"id": "buyer"}}});
    let decide = |traceparent: &str| {
        let r = send(
            server.addr,
            "POST",
            "/v1/decide",
            &[
                ("content-type", "application/json"),
                ("traceparent", traceparent),
            ],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["decision_id"].as_str().expect("id").to_owned()
    };
    let by_decide = decide(&tp(t1, s1, "01"));
    // The HTTP authorizer: the original request's own header.
    let r = send(
        server.addr,
        "GET",
        "/v1/authz/orders/allow",
        &[("x-agent-id", "buyer"), ("traceparent", &tp(t2, s2, "01"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let by_authz = r.header("x-arbiter-decision-id").expect("id").to_owned();
    // Envoy's gRPC Check: its span in the call's metadata wins over the
    // original request's header.
    let answers = check(
        grpc,
        &json!([{"http": {"method": "GET", "path": "/orders/allow", "host": "shop.example",
                           "headers": {"x-agent-id": "buyer", "traceparent": tp(t4, s4, "01")}},
                 "metadata": [["traceparent", tp(t3, s3, "01")]]}]),
    );
    let by_grpc = answers[0]["headers"]["x-arbiter-decision-id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A caller that does not sample its trace is not traced; its record
    // still goes.
    let unsampled = decide(&tp(t1, s1, "00"));
    // A forged header starts a trace of Arbiter's own.
    let forged = decide("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01");

    let metrics = get(server.addr, "/metrics").body;
    server.stop().expect("a clean stop exports what is queued");
    let received = collector.received();
    let spans = spans(&received);
    assert_tree(&spans, &by_decide, Some((t1, s1)), "misbehave");
    assert_tree(&spans, &by_authz, Some((t2, s2)), "misbehave");
    assert_tree(&spans, &by_grpc, Some((t3, s3)), "misbehave");
    assert_tree(&spans, &forged, None, "misbehave");
    assert!(
        !spans
            .iter()
            .any(|s| attr(&s["attributes"], "arbiter.decision_id").as_deref()
                == Some(unsampled.as_str())),
        "an unsampled parent's decision has no spans"
    );
    let forged_trace = spans
        .iter()
        .find(|s| attr(&s["attributes"], "arbiter.decision_id").as_deref() == Some(forged.as_str()))
        .and_then(|s| s["traceId"].as_str())
        .map(hex_of)
        .expect("the forged call's root");
    refused(
        "a forged traceparent (uppercase hex) joins no one's trace",
        forged_trace != t1,
        &forged_trace,
    );
    let service = received
        .iter()
        .find(|(s, _)| s == "traces")
        .map(|(_, r)| r["resourceSpans"][0]["resource"]["attributes"].clone())
        .expect("a resource");
    assert_eq!(attr(&service, "service.name").as_deref(), Some("arbiter"));
    assert!(
        metrics.contains("arbiter_otlp_dropped_total{signal=\"traces\",reason=\"queue-full\"} 0"),
        "{metrics}"
    );

    // The records: exactly what `arbiter log query` prints, line for line.
    let exported: BTreeMap<u64, (String, Value)> = log_records(&received)
        .into_iter()
        .map(|r| {
            let a = &r["attributes"];
            let seq = attr(a, "arbiter.record.seq")
                .expect("seq")
                .parse()
                .expect("n");
            let hash = attr(a, "arbiter.record.hash").expect("hash");
            let body: Value =
                serde_json::from_str(r["body"]["stringValue"].as_str().expect("body"))
                    .expect("the body is the record");
            assert_eq!(
                body["hash"],
                hash.as_str(),
                "the attribute is the body's hash"
            );
            (seq, (hash, body))
        })
        .collect();
    let queried = query(log.path());
    assert!(queried.len() >= 5, "{queried:?}");
    for record in &queried {
        let seq = record["seq"].as_u64().expect("seq");
        let (hash, body) = exported
            .get(&seq)
            .unwrap_or_else(|| panic!("record {seq} was not exported"));
        assert_eq!(record["hash"], hash.as_str(), "record {seq}");
        assert_eq!(body, record, "record {seq} exported as written");
    }
    let decisions = exported
        .values()
        .filter(|(_, body)| body["type"] == "decision")
        .count();
    assert_eq!(
        decisions,
        queried.len(),
        "nothing exported that the log lacks"
    );
    assert!(
        exported
            .values()
            .any(|(_, body)| body["type"] == "checkpoint"),
        "the chain's checkpoints go too"
    );
    // A decision's record names its span's trace.
    let record = log_records(&received)
        .into_iter()
        .find(|r| {
            attr(&r["attributes"], "arbiter.decision_id").as_deref() == Some(by_decide.as_str())
        })
        .expect("the decide's record");
    assert_eq!(hex_of(record["traceId"].as_str().expect("trace")), t1);
}

/// Every record of the log in `dir`, as `arbiter log query` prints them.
fn query(dir: &Path) -> Vec<Value> {
    let out = Command::new(arbiter_tests::binary::arbiter())
        .args(["log", "query"])
        .arg(dir)
        .output()
        .expect("arbiter log query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record"))
        .collect()
}

#[test]
fn a_collector_that_stalls_or_is_gone_never_holds_a_decision() {
    for (case, stalled) in [("stalls", true), ("is gone", false)] {
        let collector = Collector::start(if stalled { 2.0 } else { 0.0 });
        let mut config = traced(&collector);
        if !stalled {
            // A port nothing listens on.
            config.telemetry.endpoint =
                Some(format!("http://127.0.0.1:{}", arbiter_tests::free_port()));
        }
        config.telemetry.queue = 2;
        config.telemetry.batch = 1;
        config.telemetry.timeout_ms = 300;
        let server = Server::start(config, ServeOptions::default());
        let body = json!({"action": {"kind": "tool", "name": "allow"}, "context": {"agent": {"id": "buyer"}}});
        for _ in 0..40 {
            let r = send(
                server.addr,
                "POST",
                "/v1/decide",
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            );
            assert_eq!(r.status, 200, "{case}: {}", r.body);
            assert_eq!(r.json()["outcome"], "allow", "{case}");
        }
        // The decisions were answered; what could not go is counted as it
        // is given up.
        let dropped = |metrics: &str, signal: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("arbiter_otlp_dropped_total{{signal=\"{signal}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        let mut metrics = String::new();
        arbiter_tests::wait_for("drops counted", || {
            metrics = get(server.addr, "/metrics").body;
            dropped(&metrics, "traces") > 0 && dropped(&metrics, "logs") > 0
        });
        refused(
            &format!(
                "a collector that {case} cannot hold decisions: its spans are dropped and counted"
            ),
            true,
            &metrics,
        );
        server.stop().expect("stops within its grace period");
    }
}
