//! A policy that misbehaves in the way `action.name` asks, so one component
//! exercises every failure the host must survive:
//!
//! | name | what it does |
//! |---|---|
//! | `loop` | loops forever without allocating (fuel) |
//! | `spin` | busy-waits, as long as it is let (deadline) |
//! | `grow` | allocates until memory runs out (memory cap) |
//! | `recurse` | recurses without bound (stack overflow) |
//! | `panic` | panics with a message |
//! | `exit` | calls `std::process::exit` |
//! | `abort` | executes `unreachable` |
//! | `risk` | returns risk 150 |
//! | `modify-no-params` | returns modify without params |
//! | `bad-json` | returns modify with params that are not JSON |
//! | `huge-reason` | returns a 1 MiB reason |
//! | anything else | allows, with rule `misbehave.none` |
//!
//! For kind `http` (the external authorizer's actions, named `METHOD
//! /path`), the path's last segment picks a plain outcome instead: `allow`,
//! `deny`, `approve` (require-approval) or `modify`, and `spin` as above.
//!
//! `validate-settings` panics when the settings contain `"panic"`, loops
//! when they contain `"loop"`, and refuses them when they contain `"no"`.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "policy",
});

use arbiter::policy::types::Outcome;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};

/// Calls this instance has served: 1 on every call of a fresh instance.
static CALLS: AtomicU8 = AtomicU8::new(0);

struct Misbehave;

fn decision(outcome: Outcome, risk: u8, params: Option<String>) -> Decision {
    Decision {
        outcome,
        reason: "misbehaving on purpose".into(),
        rule: "misbehave.output".into(),
        risk,
        params,
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(pad: [u64; 16]) -> u64 {
    // Not a tail call, and the padding makes each frame large.
    recurse(black_box(pad)) + black_box(pad[0])
}

impl Guest for Misbehave {
    fn validate_settings(settings: String) -> Result<(), String> {
        if settings.contains("\"panic\"") {
            panic!("settings made me panic");
        }
        if settings.contains("\"loop\"") {
            let mut i = 0u64;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        if settings.contains("\"no\"") {
            return Err("settings key `no`: refused on purpose".into());
        }
        Ok(())
    }

    fn evaluate(action: Action, _context: Context) -> Decision {
        if action.kind == "http" {
            let last = action.name.rsplit('/').next().unwrap_or("");
            let outcome = match last {
                "allow" => Outcome::Allow,
                "approve" => Outcome::RequireApproval,
                "modify" => Outcome::Modify,
                "spin" => {
                    return Self::evaluate(
                        Action {
                            name: "spin".into(),
                            ..action
                        },
                        _context,
                    );
                }
                _ => Outcome::Deny,
            };
            let params = (outcome == Outcome::Modify).then(|| "{}".to_owned());
            return Decision {
                outcome,
                reason: format!("the path ends in `{last}`"),
                rule: format!("misbehave.http-{last}"),
                risk: 10,
                params,
            };
        }
        match action.name.as_str() {
            "loop" => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "spin" => {
                let mut x = 0u64;
                for i in 0..u64::MAX {
                    x = black_box(x ^ i.rotate_left(7));
                }
                decision(Outcome::Allow, black_box(x) as u8 % 2, None)
            }
            // Says how many calls this instance has served, as its risk.
            "count" => Decision {
                outcome: Outcome::Allow,
                reason: "counted".into(),
                rule: "misbehave.counted".into(),
                risk: CALLS.fetch_add(1, Ordering::Relaxed).saturating_add(1),
                params: None,
            },
            // Legitimate but slow: as many rounds as the target says.
            "work" => {
                let rounds: u64 = action.target.parse().unwrap_or(0);
                let mut x = 0u64;
                for i in 0..rounds {
                    x = black_box(x ^ i.rotate_left(7));
                }
                Decision {
                    outcome: Outcome::Allow,
                    reason: format!("worked {rounds} rounds"),
                    rule: "misbehave.worked".into(),
                    risk: black_box(x) as u8 % 2,
                    params: None,
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recurse" => decision(Outcome::Allow, recurse([7; 16]) as u8, None),
            "panic" => panic!("policy bug: index {} out of range", black_box(7)),
            "exit" => std::process::exit(3),
            "abort" => std::process::abort(),
            "risk" => decision(Outcome::Deny, 150, None),
            "modify-no-params" => decision(Outcome::Modify, 10, None),
            "bad-json" => decision(Outcome::Modify, 10, Some("{not json".into())),
            "huge-reason" => Decision {
                reason: "x".repeat(1 << 20),
                ..decision(Outcome::Allow, 0, None)
            },
            _ => Decision {
                outcome: Outcome::Allow,
                reason: "behaving".into(),
                rule: "misbehave.none".into(),
                risk: 0,
                params: None,
            },
        }
    }
}

export!(Misbehave);
