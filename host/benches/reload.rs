//! Hot-reload latency: the time from a policy file's atomic rename to the
//! first decision made by the new version, for each example policy, with
//! compilation included (no compile cache; each round's file carries a
//! fresh custom section, so it is a new version that must be compiled).
//!
//! Beside it, in the same run, the load pipeline alone on the same bytes,
//! so what the watcher and debounce add is visible.
//!
//! Run with `cargo bench -p arbiter --bench reload`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter::config::Config;
use arbiter::decision::{Action, Context, Principal, Request};
use arbiter::engine::Engine;
use arbiter::load::{self, PolicySpec, Source};
use arbiter::reload::Registry;
use arbiter::reload::watch::Watcher;
use serde_json::json;

const ROUNDS: usize = 15;
const DEBOUNCE_MS: u64 = 50;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "rename -> first decision by the new version, compile included ({ROUNDS} rounds each, debounce {DEBOUNCE_MS} ms)\n"
    );
    println!(
        "{:<16} {:>9} {:>14} {:>12} {:>12} {:>14}",
        "policy", "size", "median", "min", "max", "pipeline only"
    );
    for name in arbiter::examples::names() {
        let original = arbiter::examples::bytes(name).expect("embedded");
        let (swap, pipeline) = measure(dir.path(), name, original);
        println!(
            "{name:<16} {:>7} KiB {:>11.1} ms {:>9.1} ms {:>9.1} ms {:>11.1} ms",
            original.len() / 1024,
            ms(median(&swap)),
            ms(swap[0]),
            ms(swap[swap.len() - 1]),
            ms(median(&pipeline)),
        );
    }
    println!("\ntarget: median under 250 ms");
}

/// Swaps `name` ROUNDS times; returns the sorted rename-to-decision times
/// and the sorted load-pipeline times.
fn measure(dir: &Path, name: &str, original: &[u8]) -> (Vec<Duration>, Vec<Duration>) {
    let file = dir.join(format!("{name}.wasm"));
    std::fs::write(&file, original).expect("write");
    let config_path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[cache]\nenabled = false\n[reload]\ndebounce_ms = {DEBOUNCE_MS}\n\
         [[policies]]\nname = \"{name}\"\nfile = \"{name}.wasm\"\n\
         [[routes]]\nchain = [\"{name}\"]\n"
    );
    std::fs::write(&config_path, text).expect("write");
    let (config, base) = Config::from_file(&config_path).expect("config");
    let engine = Engine::new(&config.engine).expect("engine");
    let registry = Arc::new(
        Registry::load(engine.clone(), None, config, Some(config_path), base).expect("load"),
    );
    let watcher = Watcher::start(Arc::clone(&registry)).expect("watch");
    let request = request();

    let mut swaps = Vec::with_capacity(ROUNDS);
    let mut pipeline = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let bytes = with_custom_section(original, round);
        let version = load::version_of(&bytes);

        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, &bytes).expect("write");
        let renamed = Instant::now();
        std::fs::rename(&tmp, &file).expect("rename");
        loop {
            let d = registry.arbiter().decide(&request);
            if d.policies.first().is_some_and(|p| p.version == version) {
                break;
            }
            assert!(renamed.elapsed() < Duration::from_secs(30), "no swap");
            std::thread::sleep(Duration::from_micros(200));
        }
        swaps.push(renamed.elapsed());

        // The pipeline alone on the same bytes, uncached.
        let spec = PolicySpec {
            name: name.to_owned(),
            source: Source::Bytes {
                label: name.to_owned(),
                bytes: Arc::from(bytes.as_slice()),
            },
            settings: json!({}),
            limits: Default::default(),
            smoke: Vec::new(),
            trust: Default::default(),
        };
        let start = Instant::now();
        load::load(&engine, None, &spec).expect("load");
        pipeline.push(start.elapsed());
    }
    drop(watcher);
    swaps.sort();
    pipeline.sort();
    (swaps, pipeline)
}

/// `bytes` with a custom section naming the round appended: a component
/// that behaves the same but is a new version, with a new digest.
fn with_custom_section(bytes: &[u8], round: usize) -> Vec<u8> {
    let name = b"arbiter-bench";
    let payload = format!("round {round} {:?}", Instant::now());
    let mut body = leb128(name.len());
    body.extend_from_slice(name);
    body.extend_from_slice(payload.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.extend(leb128(body.len()));
    out.extend(body);
    out
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn request() -> Request {
    Request {
        trace: None,
        approval_id: None,
        action: Action {
            kind: "tool".into(),
            name: "search".into(),
            target: String::new(),
            params: json!({}),
        },
        context: Context {
            agent: Principal {
                id: "bench".into(),
                roles: Vec::new(),
            },
            ..Context::default()
        },
        history: Default::default(),
    }
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
