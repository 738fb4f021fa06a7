//! Per-decision cost of the procurement policy: the same Rust logic called
//! natively, and as a wasm component on a fresh, isolated instance with
//! every limit armed (fuel, epoch deadline, memory cap), measured side by
//! side in one run.
//!
//! Run with `cargo bench -p arbiter --bench decide`. Prints the median and
//! p99 of each, and their ratios. Rounds alternate between the variants so
//! that drift on a shared machine hits them alike.

use std::hint::black_box;
use std::time::{Duration, Instant};

use arbiter::Arbiter;
use arbiter::engine::{Engine, EngineConfig};
use arbiter::evaluate::{self, Input};
use arbiter::load;
use arbiter_sdk::Policy as _;

mod common;

const ROUNDS: usize = 20;
const PER_ROUND: usize = 2_000;
const WARMUP: usize = 2_000;

fn main() {
    let params = common::email_params();
    let settings_json = "{}";

    // Native: the policy crate itself, as its unit tests call it.
    let native_settings = procurement::Settings::default();
    let native_action = arbiter_sdk::Action::new("tool", "send_email").with_params(params.clone());
    let native_context = arbiter_sdk::Context {
        agent: arbiter_sdk::Principal {
            id: "procurement-bot".into(),
            roles: vec!["procurement".into()],
        },
        environment: "prod".into(),
        session: "s-1".into(),
        ..Default::default()
    };
    // Native with the same parsing the guest does per call (settings and
    // params arrive as JSON text), for a like-for-like view of the logic.
    let params_text = params.to_string();

    // Wasm: the embedded procurement component, fresh instance per call.
    let engine = Engine::new(&EngineConfig::default()).expect("engine");
    let policy = common::procurement(&engine);
    let request = common::email_request();
    let arbiter = Arbiter::with_chain(engine.clone(), vec![policy.clone()]);

    // The server's path runs on a tokio runtime; time it on one too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Every variant must decide the same thing before it is timed.
    let expect = "default.allow";
    assert_eq!(
        procurement::Procurement::evaluate(&native_settings, &native_action, &native_context).rule,
        expect
    );
    assert_eq!(arbiter.decide(&request).rule, expect);

    type Variant<'a> = (&'static str, Box<dyn FnMut() + 'a>, Vec<Duration>);
    let mut variants: Vec<Variant> = vec![
        (
            "native: policy logic",
            Box::new(|| {
                black_box(procurement::Procurement::evaluate(
                    black_box(&native_settings),
                    black_box(&native_action),
                    black_box(&native_context),
                ));
            }),
            Vec::new(),
        ),
        (
            "native: parse settings+params, logic",
            Box::new(|| {
                let s: procurement::Settings =
                    arbiter_sdk::parse_settings(black_box(settings_json)).expect("settings");
                let a = arbiter_sdk::Action::new("tool", "send_email")
                    .with_params(serde_json::from_str(black_box(&params_text)).expect("params"));
                black_box(procurement::Procurement::evaluate(&s, &a, &native_context));
            }),
            Vec::new(),
        ),
        (
            "wasm: evaluate (fresh instance, limits on)",
            Box::new(|| {
                let mut input = Input::new(&request.action, &request.context, &request.history);
                let e = evaluate::evaluate(
                    &engine,
                    policy_pre(&policy),
                    &policy.limits,
                    &policy.settings,
                    &mut input,
                    None,
                );
                black_box(e);
            }),
            Vec::new(),
        ),
        (
            "wasm: evaluate_async (as the server runs it)",
            Box::new(|| {
                let mut input = Input::new(&request.action, &request.context, &request.history);
                let e = runtime.block_on(evaluate::evaluate_async(
                    &engine,
                    policy_pre(&policy),
                    &policy.limits,
                    &policy.settings,
                    &mut input,
                    None,
                ));
                black_box(e);
            }),
            Vec::new(),
        ),
        (
            "wasm: Arbiter::decide (route, evaluate, combine)",
            Box::new(|| {
                black_box(arbiter.decide(black_box(&request)));
            }),
            Vec::new(),
        ),
    ];

    for (_, f, _) in &mut variants {
        for _ in 0..WARMUP {
            f();
        }
    }
    for _ in 0..ROUNDS {
        for (_, f, samples) in &mut variants {
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                f();
                samples.push(t.elapsed());
            }
        }
    }

    println!(
        "procurement policy, send_email to two colleagues; {} samples each, {ROUNDS} alternating rounds",
        ROUNDS * PER_ROUND
    );
    println!("pooling allocator: {}", engine.pooling());
    println!("{:<50} {:>10} {:>10}", "variant", "median", "p99");
    let mut medians = Vec::new();
    for (name, _, samples) in &mut variants {
        samples.sort_unstable();
        let median = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        println!("{name:<50} {:>10} {:>10}", fmt(median), fmt(p99));
        medians.push(median);
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    println!(
        "ratio wasm evaluate / native logic:          {:>8.1}x",
        ratio(medians[2], medians[0])
    );
    println!(
        "ratio wasm evaluate / native parse+logic:    {:>8.1}x",
        ratio(medians[2], medians[1])
    );
    println!(
        "ratio Arbiter::decide / native logic:        {:>8.1}x",
        ratio(medians[4], medians[0])
    );
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns >= 10_000 {
        format!("{:.1} µs", ns as f64 / 1000.0)
    } else {
        format!("{ns} ns")
    }
}

fn policy_pre(p: &load::LoadedPolicy) -> &evaluate::PolicyPre {
    p.pre()
}
