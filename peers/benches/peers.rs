//! The procurement policy decided five ways (six variants) in one process
//! and one run, in alternating rounds so that a shared machine's drift hits
//! them alike: native Rust, Arbiter (fresh instance, every limit on, through
//! `Arbiter::decide`) with spare instances made ahead (the default) and
//! without them, Cedar, and Rego on regorus (interpreter and RVM).
//! Each call starts from the same wire JSON.
//!
//! Before timing, every variant decides every procurement case of
//! `tests/cases.json`; a variant that answers any case wrongly is refused,
//! named with the cases it got wrong, and not timed.
//!
//! Run with `cargo bench -p arbiter-peers`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use arbiter_peers::{Decider, cases_path, check, procurement_cases, timed_request, variants};

const ROUNDS: usize = 20;
const PER_ROUND: usize = 1_000;
const WARMUP: usize = 2_000;

struct Timed {
    name: &'static str,
    decider: Box<dyn Decider>,
    samples: Vec<Duration>,
}

fn main() {
    let cases = procurement_cases(&cases_path()).expect("cases");
    let wire = timed_request();
    let mut timed = Vec::new();
    let mut refused = 0;
    for variant in variants() {
        if let Err(wrong) = check(&variant, &cases) {
            refused += 1;
            println!(
                "REFUSED to time `{}`: {} of {} procurement cases answered wrongly:",
                variant.name,
                wrong.len(),
                cases.len()
            );
            for line in wrong {
                println!("  {line}");
            }
            continue;
        }
        let mut decider = (variant.load)(&serde_json::json!({})).expect("loads");
        let first = decider.decide(&wire).expect("decides");
        assert_eq!(first.rule, "default.allow", "{}", variant.name);
        timed.push(Timed {
            name: variant.name,
            decider,
            samples: Vec::with_capacity(ROUNDS * PER_ROUND),
        });
    }
    for t in &mut timed {
        for _ in 0..WARMUP {
            black_box(t.decider.decide(black_box(&wire)).ok());
        }
    }
    for _ in 0..ROUNDS {
        for t in &mut timed {
            for _ in 0..PER_ROUND {
                let start = Instant::now();
                black_box(t.decider.decide(black_box(&wire)).ok());
                t.samples.push(start.elapsed());
            }
        }
    }

    println!(
        "procurement policy, send_email to two colleagues, from wire JSON; {} cases checked per variant; {} samples each, {ROUNDS} alternating rounds",
        cases.len(),
        ROUNDS * PER_ROUND
    );
    println!("{:<42} {:>10} {:>10}", "variant", "median", "p99");
    let mut medians = Vec::new();
    for t in &mut timed {
        t.samples.sort_unstable();
        let median = t.samples[t.samples.len() / 2];
        let p99 = t.samples[t.samples.len() * 99 / 100];
        println!("{:<42} {:>10.2?} {:>10.2?}", t.name, median, p99);
        medians.push((t.name, median));
    }
    let median = |prefix: &str| {
        medians
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, m)| m.as_secs_f64())
    };
    for (who, variant) in [
        ("Arbiter", "Arbiter (wasm"),
        ("no spares", "Arbiter, no spares"),
    ] {
        let Some(arbiter) = median(variant) else {
            continue;
        };
        for (label, prefix) in [
            ("Cedar", "Cedar"),
            ("Rego RVM", "Rego (regorus RVM)"),
            ("Rego interpreter", "Rego (regorus interpreter)"),
            ("native Rust", "native"),
        ] {
            if let Some(other) = median(prefix) {
                let label = format!("{who} / {label}");
                println!("ratio {label:<36} {:>6.2}", arbiter / other);
            }
        }
    }
    if refused > 0 {
        println!("{refused} variant(s) refused; their figures are not shown");
        std::process::exit(1);
    }
}
