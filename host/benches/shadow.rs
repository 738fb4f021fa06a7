//! What a shadow candidate costs the caller: the latency of
//! `Arbiter::decide` with the procurement policy alone and with a shadow
//! candidate beside it (the same component with another approval
//! threshold), in alternating rounds of one run. The shadow evaluation
//! runs on its worker thread; the caller only queues it.
//!
//! Run with `cargo bench -p arbiter --bench shadow`. Prints each variant's
//! median and p99 caller latency, the ratio of the medians, and how many
//! shadow comparisons ran and were dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter::engine::{Engine, EngineConfig};
use arbiter::mode::{Candidate, Mode, Role, Rollout};
use arbiter::route::{RouteSpec, RouteTable};
use arbiter::{Arbiter, PolicySet};

mod common;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 9;
const ROUND: Duration = Duration::from_millis(1000);

fn main() {
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let request = common::email_request();
    let routes = || RouteTable::new(vec![RouteSpec::all(["procurement"])]);
    let off = Arbiter::new(
        engine.clone(),
        PolicySet::from_loaded(vec![common::procurement(&engine)], routes()),
    );
    let candidate = common::procurement_with(&engine, serde_json::json!({"approval_over": 4000}));
    let rollout = Rollout {
        mode: Mode::Enforce,
        candidates: vec![Candidate {
            id: "threshold-4000".into(),
            role: Role::Shadow,
            policy: Arc::new(candidate),
        }],
    };
    let on = Arbiter::new(
        engine.clone(),
        PolicySet::from_loaded(vec![common::procurement(&engine)], routes()).with_rollouts(
            BTreeMap::from([("procurement".to_owned(), Arc::new(rollout))]),
        ),
    );
    assert_eq!(on.decide(&request).rule, "default.allow");

    let mut variants: [(&str, &Arbiter, Vec<u64>); 2] = [
        ("shadow off", &off, Vec::new()),
        ("shadow on", &on, Vec::new()),
    ];
    for (_, arbiter, _) in &variants {
        latencies(arbiter, &request, Duration::from_millis(300));
    }
    for _ in 0..ROUNDS {
        for (_, arbiter, samples) in &mut variants {
            samples.extend(latencies(arbiter, &request, ROUND));
        }
    }
    println!(
        "shadow candidate: {ROUNDS} alternating rounds of {} ms, one caller deciding in a loop",
        ROUND.as_millis()
    );
    let mut medians = Vec::new();
    for (name, _, samples) in &mut variants {
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        println!(
            "  {name:<10}  median {:>6.1} µs  p99 {:>6.1} µs  ({} decisions)",
            median as f64 / 1000.0,
            p99 as f64 / 1000.0,
            samples.len()
        );
        medians.push(median as f64);
    }
    println!(
        "  ratio on/off of the medians: {:.3} (target: under 1.10)",
        medians[1] / medians[0]
    );
    let shadow = on.shadow_if_started().expect("started");
    shadow.close();
    let report = shadow.divergences().report("procurement");
    let queue = shadow.queue();
    println!(
        "  shadow comparisons: {} run, {} dropped (queue of {})",
        report.first().map_or(0, |p| p.compared),
        queue.dropped.values().sum::<u64>(),
        queue.capacity
    );
}

/// Caller-side latency of each decision for `length`, in nanoseconds.
fn latencies(arbiter: &Arbiter, request: &arbiter::Request, length: Duration) -> Vec<u64> {
    let mut out = Vec::with_capacity(100_000);
    let end = Instant::now() + length;
    while Instant::now() < end {
        let start = Instant::now();
        let d = arbiter.decide(request);
        out.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        std::hint::black_box(d);
    }
    out
}
