//! A policy that gives one outcome to every action, chosen by the package
//! that builds it: `verdict-allow` allows, `verdict-deny` denies. The two
//! are distinct components with different outcomes, which is what the
//! reload tests swap between.
//!
//! `validate-settings` refuses `{"refuse": "<outcome>"}` naming its own
//! outcome, so a test can give one build settings the other refuses.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "policy",
});

use arbiter::policy::types::Outcome;

const PACKAGE: &str = env!("CARGO_PKG_NAME");

fn outcome() -> (Outcome, &'static str) {
    match PACKAGE {
        "verdict-deny" => (Outcome::Deny, "deny"),
        _ => (Outcome::Allow, "allow"),
    }
}

struct Verdict;

impl Guest for Verdict {
    fn validate_settings(settings: String) -> Result<(), String> {
        let (_, name) = outcome();
        if settings.contains(&format!("\"refuse\":\"{name}\"")) {
            return Err(format!("settings.refuse: {PACKAGE} refuses these settings"));
        }
        Ok(())
    }

    fn evaluate(_action: Action, _context: Context) -> Decision {
        let (outcome, name) = outcome();
        Decision {
            outcome,
            reason: format!("{PACKAGE} always answers {name}"),
            rule: format!("verdict.{name}"),
            risk: 0,
            params: None,
        }
    }
}

export!(Verdict);
