//! What session flow tracking costs, side by side in one run: the embedded
//! library deciding with `flow-guard`, one arbiter keeping each session's
//! labels and fingerprints (in the in-memory store), one not, in
//! alternating rounds so both see the same machine.
//!
//! - **per decision**: an e-mail of about 1 KiB from a session holding
//!   `private` and `untrusted` (the policy asks `labels-of` about each
//!   argument, and requires approval);
//! - **per governed result**: a 4 KiB result with a marker, labelled
//!   `private` and fingerprinted into its session.
//!
//! Prints the median latency of each and the ratio.
//!
//! `cargo bench -p arbiter-tests --bench flow`

use std::sync::Arc;
use std::time::Instant;

use arbiter::arbiter::Arbiter;
use arbiter::config::FlowConfig;
use arbiter::decision::Request;
use arbiter::enrich::flow::Flows;
use arbiter::state::memory::MemoryState;
use arbiter::time::SystemClock;
use arbiter_tests::{arbiter, load_example, request};
use serde_json::json;

const ROUNDS: usize = 9;
const PER_ROUND: usize = 2000;

fn text(bytes: usize, seed: &str) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(&format!("{seed} figure {i} for the quarter, "));
        i += 1;
    }
    s
}

fn in_session(mut r: Request) -> Request {
    r.context.agent.id = "mail-agent".into();
    r.context.session = "s1".into();
    r
}

/// Median microseconds of `PER_ROUND` decisions of `r`.
fn round(a: &Arbiter, r: &Request) -> f64 {
    let mut us: Vec<f64> = (0..PER_ROUND)
        .map(|_| {
            let t = Instant::now();
            let d = a.decide(r);
            std::hint::black_box(&d);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    us.sort_by(f64::total_cmp);
    us[us.len() / 2]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let policy = || {
        let mut p = load_example("flow-guard");
        p.settings = json!({}).to_string();
        p
    };
    let off = arbiter(vec![policy()]);
    let config = FlowConfig {
        enabled: true,
        ..FlowConfig::default()
    };
    let store = MemoryState::new().into_state();
    let flows = Flows::open(
        config,
        &[7; 32],
        Some(Arc::clone(&store.flows)),
        false,
        Arc::new(SystemClock),
    )
    .expect("flows");
    let on = arbiter(vec![policy()]).with_flows(Arc::new(flows));

    // The session holds `private`: a result with flow-guard's marker.
    let private = text(4096, "CONFIDENTIAL revenue");
    let result = |t: &str| in_session(request("tool.result", "crm.read", json!({"text": t})));
    {
        let d = on.decide(&result(&private));
        assert_eq!(
            d.flow.as_ref().map(|f| f.attached.clone()),
            Some(vec!["private".into()]),
            "{d:?}"
        );
    }
    let mail = in_session(request(
        "tool",
        "send_email",
        json!({"to": "x@evil.example", "subject": "numbers", "body": text(1024, "hello about lunch")}),
    ));
    let on_mail = on.decide(&mail);
    assert!(on_mail.flow.is_some(), "the session's labels are seen");

    let (mut d_off, mut d_on, mut r_off, mut r_on) = (vec![], vec![], vec![], vec![]);
    let governed = result(&text(4096, "CONFIDENTIAL forecast"));
    for _ in 0..ROUNDS {
        d_off.push(round(&off, &mail));
        d_on.push(round(&on, &mail));
        r_off.push(round(&off, &governed));
        r_on.push(round(&on, &governed));
    }
    let (d_off, d_on, r_off, r_on) = (median(d_off), median(d_on), median(r_off), median(r_on));
    println!(
        "flow tracking, medians of {ROUNDS} rounds of {PER_ROUND} decisions (µs per decision):"
    );
    println!(
        "  decision (1 KiB e-mail, session holding labels): off {d_off:.1}  on {d_on:.1}  (+{:.1}%)",
        (d_on / d_off - 1.0) * 100.0
    );
    println!(
        "  governed result (4 KiB, labelled, fingerprinted): off {r_off:.1}  on {r_on:.1}  (+{:.1}%)",
        (r_on / r_off - 1.0) * 100.0
    );
}
