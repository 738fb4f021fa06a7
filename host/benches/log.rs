//! What the decision log costs: decisions per second through
//! `Arbiter::decide_async` with the log off and on, in alternating rounds
//! of one run, as the server runs them (a two-thread runtime, many
//! decisions in flight); then how fast `arbiter log verify` reads the log
//! that was written.
//!
//! Run with `cargo bench -p arbiter --bench log`. Prints the median
//! decisions/s of each variant, their ratio, and verify's records/s.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbiter::Arbiter;
use arbiter::config::LogConfig;
use arbiter::decision::Request;
use arbiter::engine::{Engine, EngineConfig};
use arbiter::evidence::audit::{self, VerifyOptions};
use arbiter::evidence::log::DecisionLog;
use arbiter::signing::PublicKey;

mod common;

// The allocator `arbiter serve` runs with: the log moves each record from
// the deciding thread to the writer's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_millis(1500);
/// Decisions in flight at once, as concurrent requests would be.
const IN_FLIGHT: usize = 64;

fn main() {
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let policy = common::procurement(&engine);
    let request = common::email_request();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("keys");
    let config = LogConfig {
        dir: Some(dir.path().to_owned()),
        checkpoint_key: Some(
            arbiter::evidence::log::default_checkpoint_key(keys.path()).expect("key"),
        ),
        ..LogConfig::default()
    };
    let metrics = Arc::new(arbiter::evidence::metrics::Metrics::new());
    let log = Arc::new(
        DecisionLog::open(&config, Path::new(""), Some(Arc::clone(&metrics))).expect("open log"),
    );
    let off = Arbiter::with_chain(engine.clone(), vec![policy]);
    let on = off.clone().with_log(Arc::clone(&log));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    assert_eq!(
        runtime.block_on(on.decide_async(request.clone())).rule,
        "default.allow"
    );

    let mut rates: [(&str, Arbiter, Vec<f64>); 2] =
        [("log off", off, Vec::new()), ("log on", on, Vec::new())];
    // A warm-up round each, not counted.
    for (_, arbiter, _) in &rates {
        runtime.block_on(throughput(arbiter, &request, Duration::from_millis(500)));
    }
    for _ in 0..ROUNDS {
        for (_, arbiter, samples) in &mut rates {
            samples.push(runtime.block_on(throughput(arbiter, &request, ROUND)));
        }
    }
    log.close();
    println!(
        "decision log: {ROUNDS} alternating rounds of {} ms, {IN_FLIGHT} decisions in flight, 2 runtime threads",
        ROUND.as_millis()
    );
    let mut medians = Vec::new();
    for (name, _, samples) in &mut rates {
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        println!(
            "  {name:<8} median {median:>9.0} decisions/s  (min {:.0}, max {:.0})",
            samples[0],
            samples[samples.len() - 1]
        );
        medians.push(median);
    }
    let ratio = medians[1] / medians[0];
    let (records, writes) = metrics.log_records_and_writes();
    println!(
        "  {records} records in {writes} writes: {:.1} decisions per write",
        records as f64 / writes.max(1) as f64
    );
    println!(
        "  ratio on/off {ratio:.3}: the log costs {:.1}% of throughput",
        (1.0 - ratio) * 100.0
    );

    let key = PublicKey::from_file(
        &std::fs::read_to_string(keys.path().join("checkpoint.pub")).expect("public key"),
    )
    .expect("key");
    let options = VerifyOptions {
        key,
        checkpoints_file: Some(dir.path().join("checkpoints.jsonl")),
    };
    let mut times = Vec::new();
    let mut records = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let v = audit::verify(dir.path(), &options)
            .expect("readable")
            .expect("verifies");
        times.push(start.elapsed());
        records = v.records;
    }
    times.sort();
    let bytes: u64 = arbiter::evidence::log::segments(dir.path())
        .expect("segments")
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "verify: {records} records ({:.1} MiB) in {:.0} ms (median of 3): {:.0} records/s",
        bytes as f64 / (1 << 20) as f64,
        times[1].as_secs_f64() * 1e3,
        records as f64 / times[1].as_secs_f64()
    );
}

/// Decisions per second with `IN_FLIGHT` tasks deciding for `length`.
async fn throughput(arbiter: &Arbiter, request: &Request, length: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (arbiter, request) = (arbiter.clone(), request.clone());
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(arbiter.decide_async(request.clone()).await);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let counted = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    counted as f64 / elapsed.as_secs_f64()
}
