//! A policy that sleeps, so its component imports `wasi:clocks`, which the
//! host must refuse at load: a policy cannot wait on the host's time.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "policy",
});

use arbiter::policy::types::Outcome;

struct ClockImport;

impl Guest for ClockImport {
    fn validate_settings(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_action: Action, _context: Context) -> Decision {
        std::thread::sleep(std::time::Duration::from_secs(10));
        Decision {
            outcome: Outcome::Allow,
            reason: "slept".into(),
            rule: "clock.sleep".into(),
            risk: 0,
            params: None,
        }
    }
}

export!(ClockImport);
