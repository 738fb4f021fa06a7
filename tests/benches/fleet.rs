//! What sharing the state in PostgreSQL costs: decisions per second and
//! the median decision over HTTP, for one replica on the embedded store
//! (redb) and for one and three replicas on one PostgreSQL, measured in
//! the same run, round by round so machine noise falls on all alike.
//!
//! Two kinds of decision: a spending action (`amount`), which reads the
//! agent's spend of the day from the database and adds to it (two round
//! trips; with `exact_spend`, a row lock from one to the other), and an
//! action that spends nothing, which never waits for the database (the
//! suspensions and breakers it needs are in memory, kept by the feed).
//!
//! Then the fleet-wide windows' accuracy: while three clients decide one
//! agent through the three replicas, replica a's count of the agent's
//! calls in the last minute is sampled against the calls answered before
//! each sample; the gap is what the merge had not carried yet.
//!
//! `cargo bench -p arbiter-tests --bench fleet` (needs the `arbiter`
//! binary: `cargo build --release -p arbiter --bin arbiter`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbiter_tests::fleet::{POLICIES, Replica};
use arbiter_tests::http::Conn;
use arbiter_tests::postgres::Postgres;
use serde_json::{Value, json};

const ROUNDS: usize = 3;
const SECONDS_PER_RUN: f64 = 2.0;
const CLIENTS: usize = 8;

fn body(agent: usize, spending: bool) -> Value {
    let params = if spending {
        json!({"amount": 1})
    } else {
        json!({})
    };
    json!({
        "action": {"kind": "tool", "name": "shop.look", "params": params},
        "context": {"agent": {"id": format!("agent-{agent}")}},
    })
}

/// `CLIENTS` keep-alive clients spread over `replicas` for a while: the
/// decisions per second and every latency.
fn load(replicas: &[Replica], spending: bool) -> (f64, Vec<Duration>) {
    let until = Instant::now() + Duration::from_secs_f64(SECONDS_PER_RUN);
    let start = Instant::now();
    let times: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let addr = replicas[i % replicas.len()].addr;
                s.spawn(move || {
                    let mut conn = Conn::open(addr);
                    let mut times = Vec::new();
                    let b = body(i, spending);
                    while Instant::now() < until {
                        let t = Instant::now();
                        let r = conn.post_json("/v1/decide", &b);
                        times.push(t.elapsed());
                        assert_eq!(r.status, 200, "{}", r.body);
                        assert_eq!(r.json()["outcome"], "allow", "{}", r.body);
                    }
                    times
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let all: Vec<Duration> = times.into_iter().flatten().collect();
    (all.len() as f64 / elapsed, all)
}

/// One client per replica deciding one agent for `SECONDS_PER_RUN`, while
/// replica a's count is sampled: the calls per second, and each sample's
/// gap (calls answered before it that it did not count).
fn window_gaps(replicas: &[Replica]) -> (f64, Vec<u64>) {
    let answered = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let call = json!({
        "action": {"kind": "tool", "name": "shop.look", "params": {}},
        "context": {"agent": {"id": "merged"}},
    });
    let start = Instant::now();
    let (gaps, elapsed) = std::thread::scope(|s| {
        let clients: Vec<_> = replicas
            .iter()
            .map(|r| {
                let (answered, call) = (&answered, &call);
                s.spawn(move || {
                    let mut conn = Conn::open(r.addr);
                    let until = Instant::now() + Duration::from_secs_f64(SECONDS_PER_RUN);
                    while Instant::now() < until {
                        let reply = conn.post_json("/v1/decide", call);
                        assert_eq!(reply.json()["outcome"], "allow", "{}", reply.body);
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let sampler = s.spawn(|| {
            let mut gaps = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let before = answered.load(Ordering::SeqCst);
                let counted = replicas[0].calls_last_minute("merged");
                gaps.push(before.saturating_sub(counted));
                std::thread::sleep(Duration::from_millis(20));
            }
            gaps
        });
        for c in clients {
            c.join().expect("client");
        }
        let elapsed = start.elapsed().as_secs_f64();
        done.store(true, Ordering::SeqCst);
        (sampler.join().expect("sampler"), elapsed)
    });
    (answered.load(Ordering::SeqCst) as f64 / elapsed, gaps)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("dir");
    let policies = POLICIES.replace(
        "daily_budget_cents = 10000",
        "daily_budget_cents = 1000000000000",
    );
    let on_pg = Replica::on_postgres(&pg.url());
    let exact = format!("{on_pg}exact_spend = true\n");
    let start =
        |name: &str, state: &str| Replica::start(name, &dir.path().join(name), state, &policies);
    let setups: Vec<(&str, Vec<Replica>)> = vec![
        ("1 replica, redb", vec![start("redb", "")]),
        ("1 replica, PostgreSQL", vec![start("pg", &on_pg)]),
        (
            "3 replicas, PostgreSQL",
            vec![
                start("pg-a", &on_pg),
                start("pg-b", &on_pg),
                start("pg-c", &on_pg),
            ],
        ),
        ("1 replica, PostgreSQL, exact", vec![start("pg-x", &exact)]),
    ];
    // Warm each up: the first decisions compile nothing, but connect.
    for (_, replicas) in &setups {
        load(replicas, true);
    }
    let kinds = [("spends nothing", false), ("spends (amount)", true)];
    let mut results: Vec<Vec<(Vec<f64>, Vec<Duration>)>> =
        vec![vec![(Vec::new(), Vec::new()); kinds.len()]; setups.len()];
    for _ in 0..ROUNDS {
        for (s, (_, replicas)) in setups.iter().enumerate() {
            for (k, (_, spending)) in kinds.iter().enumerate() {
                let (rate, times) = load(replicas, *spending);
                results[s][k].0.push(rate);
                results[s][k].1.push(median(times));
            }
        }
    }
    println!(
        "{CLIENTS} keep-alive clients, {ROUNDS} rounds of {SECONDS_PER_RUN} s; medians of the rounds"
    );
    println!(
        "{:<30} {:<16} {:>12} {:>12} {:>14}",
        "setup", "decision", "decisions/s", "median", "added (median)"
    );
    let mut base = vec![Duration::ZERO; kinds.len()];
    for (s, (name, _)) in setups.iter().enumerate() {
        for (k, (kind, _)) in kinds.iter().enumerate() {
            let (mut rates, medians) = results[s][k].clone();
            rates.sort_by(f64::total_cmp);
            let rate = rates[rates.len() / 2];
            let m = median(medians);
            if s == 0 {
                base[k] = m;
            }
            let added = m.as_secs_f64() - base[k].as_secs_f64();
            println!(
                "{name:<30} {kind:<16} {rate:>12.0} {:>9.0} µs {:>11.0} µs",
                m.as_secs_f64() * 1e6,
                added * 1e6
            );
        }
    }
    let (_, three) = &setups[2];
    let (rate, mut gaps) = window_gaps(three);
    gaps.sort_unstable();
    let (mid, max) = (gaps[gaps.len() / 2], gaps[gaps.len() - 1]);
    // Two thirds of the calls are decided elsewhere.
    let ms = |calls: u64| calls as f64 / (rate * 2.0 / 3.0) * 1000.0;
    println!(
        "fleet-wide window, 3 replicas, window_merge_ms = 100, {rate:.0} calls/s of one agent: \
         replica a's count trails the calls answered by {mid} (median) and {max} (max of {} samples), \
         the other replicas' last {:.0} ms and {:.0} ms of calls",
        gaps.len(),
        ms(mid),
        ms(max)
    );
}
