//! Decisions per second with OpenTelemetry tracing off and on, side by
//! side in one run: the embedded library deciding the procurement example
//! from two threads, one arbiter exporting every decision's span tree to a
//! real OTLP/gRPC receiver (`tests/grpc/collector.py`), one not, taken in
//! alternating rounds so both see the same machine. Prints the median of
//! each and the ratio.
//!
//! `cargo bench -p arbiter-tests --bench tracing`

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use arbiter::arbiter::Arbiter;
use arbiter::telemetry::{Telemetry, TelemetryConfig};
use arbiter_tests::{arbiter, load_example, request};

const ROUNDS: usize = 10;
const THREADS: usize = 2;
const PER_THREAD: usize = 1500;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_owned()
}

/// Decisions per second over one round.
fn round(a: &Arbiter) -> f64 {
    let mut r = request(
        "db",
        "db.query",
        serde_json::json!({"sql": "select * from orders"}),
    );
    r.action.target = "orders".into();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..PER_THREAD {
                    let d = a.decide(&r);
                    assert_eq!(d.outcome.as_str(), "allow", "{}", d.reason);
                }
            });
        }
    });
    (THREADS * PER_THREAD) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let peers = Command::new(repo().join("scripts/grpc-peers"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/grpc-peers");
    let python =
        PathBuf::from(String::from_utf8_lossy(&peers.stdout).trim()).join("venv/bin/python");
    let mut collector = Command::new(python)
        .arg(repo().join("tests/grpc/collector.py"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the collector");
    let mut port = String::new();
    BufReader::new(collector.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("port");

    let off = arbiter(vec![load_example("procurement")]);
    let config = TelemetryConfig {
        traces: true,
        endpoint: Some(format!("http://127.0.0.1:{}", port.trim())),
        ..TelemetryConfig::default()
    };
    let telemetry = Telemetry::start(&config).expect("telemetry").expect("on");
    let on = off.clone().with_telemetry(telemetry.clone());

    // Warm both: compiled instances pooled, the exporter connected.
    round(&off);
    round(&on);
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        offs.push(round(&off));
        ons.push(round(&on));
    }
    telemetry.shutdown(std::time::Duration::from_secs(30));
    let c = telemetry.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (off, on) = (median(offs), median(ons));
    println!(
        "decisions/s, {THREADS} threads, median of {ROUNDS} rounds of {}:",
        THREADS * PER_THREAD
    );
    println!("  tracing off: {off:>9.0}");
    println!(
        "  tracing on:  {on:>9.0}  ({:+.1}%)",
        (on / off - 1.0) * 100.0
    );
    println!(
        "  spans exported {}, dropped: queue full {}, export failed {}",
        load(&c.spans_exported),
        load(&c.spans_queue_full),
        load(&c.spans_failed)
    );
    drop(collector.stdin.take());
    let _ = collector.wait();
}
