//! The procurement policy in Rust, Go, JavaScript and Python, measured in
//! one run: component size, compile time (a cold load, which compiles and
//! fills the on-disk cache), cached load time (a restart: deserialize,
//! link, validate settings), and the median decision with a fresh instance
//! and with bounded reuse (`limits.reuse`). Decisions alternate between the
//! builds round by round, so machine noise falls on all of them alike.
//!
//! `cargo bench -p arbiter-tests --bench languages` (builds the components
//! first, with `scripts/lang-policies`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use arbiter::evaluate::{self, Input, Limits, Reuse};
use arbiter::load::{self, CompileCache, LoadedPolicy, PolicySpec, Source};
use arbiter_tests::engine;
use arbiter_tests::languages::Lang;
use serde_json::json;

const ROUNDS: usize = 20;
const PER_ROUND: usize = 50;
const CACHED_LOADS: usize = 5;

fn spec(lang: Lang, limits: Limits) -> PolicySpec {
    PolicySpec {
        name: "procurement".into(),
        source: lang.source(),
        settings: json!({}),
        limits,
        smoke: Vec::new(),
        trust: Default::default(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

struct Build {
    lang: Lang,
    size: usize,
    compile: Duration,
    cached: Duration,
    fresh: LoadedPolicy,
    reused: LoadedPolicy,
    fresh_times: Vec<Duration>,
    reuse_times: Vec<Duration>,
}

fn decide(engine: &arbiter::engine::Engine, policy: &LoadedPolicy, input: &mut Input) -> Duration {
    let start = Instant::now();
    let e = evaluate::evaluate(
        engine,
        policy.pre(),
        &policy.limits,
        &policy.settings,
        input,
        Some(policy.instances()),
    );
    let took = start.elapsed();
    assert!(e.result.is_ok(), "{:?}", e.result);
    black_box(e);
    took
}

fn main() {
    let engine = engine();
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache = CompileCache::open(cache_dir.path().join("cache")).expect("cache");
    let reuse = |lang: Lang| Limits {
        reuse: Reuse {
            decisions: 1_000_000,
            across_agents: false,
            idle: 1,
        },
        ..lang.limits()
    };
    let mut builds: Vec<Build> = Lang::ALL
        .into_iter()
        .map(|lang| {
            let size = match lang.source() {
                Source::File(path)
                | Source::Oci {
                    component: path, ..
                } => std::fs::metadata(path).expect("built").len() as usize,
                Source::Bytes { bytes, .. } => bytes.len(),
            };
            let start = Instant::now();
            let fresh =
                load::load(&engine, Some(&cache), &spec(lang, lang.limits())).expect("load");
            let compile = start.elapsed();
            let cached = median(
                (0..CACHED_LOADS)
                    .map(|_| {
                        let start = Instant::now();
                        let p = load::load(&engine, Some(&cache), &spec(lang, lang.limits()))
                            .expect("cached load");
                        assert_eq!(p.cache, load::CacheStatus::Hit);
                        start.elapsed()
                    })
                    .collect(),
            );
            let reused = load::load(&engine, Some(&cache), &spec(lang, reuse(lang))).expect("load");
            Build {
                lang,
                size,
                compile,
                cached,
                fresh,
                reused,
                fresh_times: Vec::new(),
                reuse_times: Vec::new(),
            }
        })
        .collect();

    let request = arbiter_tests::request("tool", "payments.transfer", json!({"amount": 9000}));
    let mut input = Input::new(&request.action, &request.context, &request.history);
    for b in &builds {
        // Warm-up: the first instantiation faults the pool's pages in.
        for _ in 0..PER_ROUND {
            decide(&engine, &b.fresh, &mut input);
            decide(&engine, &b.reused, &mut input);
        }
    }
    for _ in 0..ROUNDS {
        for b in &mut builds {
            for _ in 0..PER_ROUND {
                b.fresh_times.push(decide(&engine, &b.fresh, &mut input));
            }
            for _ in 0..PER_ROUND {
                b.reuse_times.push(decide(&engine, &b.reused, &mut input));
            }
        }
    }

    println!(
        "procurement, payments.transfer of $9000 (require-approval); {} decisions per build and mode, {ROUNDS} alternating rounds",
        ROUNDS * PER_ROUND
    );
    println!(
        "{:<6} {:>12} {:>10} {:>12} {:>14} {:>14} {:>8}",
        "build", "size", "compile", "cached load", "fresh median", "reuse median", "ratio"
    );
    for b in builds {
        let fresh = median(b.fresh_times);
        let reuse = median(b.reuse_times);
        println!(
            "{:<6} {:>8.1} MiB {:>8.2} s {:>9.1} ms {:>14} {:>14} {:>7.1}x",
            b.lang.name(),
            b.size as f64 / (1 << 20) as f64,
            b.compile.as_secs_f64(),
            b.cached.as_secs_f64() * 1e3,
            micros(fresh),
            micros(reuse),
            fresh.as_secs_f64() / reuse.as_secs_f64().max(1e-9),
        );
    }
}
