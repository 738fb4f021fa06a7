//! Rate limits, loop detection, a circuit breaker and a daily budget, from
//! the counters the host keeps per agent (`context.history`).

use arbiter_sdk::{Action, Context, Decision, Policy, amount, export_policy};
use serde::Deserialize;

/// Settings; a missing key takes the default below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Denials in the last hour that open the circuit.
    pub max_denials_per_hour: u32,
    /// Calls per minute allowed.
    pub max_calls_per_minute: u32,
    /// Calls of the same action per minute before it counts as a loop.
    pub max_same_action_per_minute: u32,
    /// Spend per day, in cents, before a person must approve.
    pub daily_budget_cents: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_denials_per_hour: 5,
            max_calls_per_minute: 60,
            max_same_action_per_minute: 20,
            daily_budget_cents: 100_000,
        }
    }
}

/// The policy.
pub struct RateGuard;

impl Policy for RateGuard {
    type Settings = Settings;

    fn evaluate(s: &Settings, action: &Action, context: &Context) -> Decision {
        let h = &context.history;
        if h.denials_last_hour >= s.max_denials_per_hour {
            return Decision::deny(
                "circuit.open",
                format!(
                    "{} denials in the last hour: the agent's circuit is open.",
                    h.denials_last_hour
                ),
                90,
            );
        }
        if h.calls_last_minute >= s.max_calls_per_minute {
            return Decision::deny(
                "rate.calls",
                format!(
                    "{} calls in the last minute; the limit is {}.",
                    h.calls_last_minute, s.max_calls_per_minute
                ),
                60,
            );
        }
        if h.same_action_last_minute >= s.max_same_action_per_minute {
            return Decision::deny(
                "rate.loop",
                format!(
                    "The same action ran {} times in the last minute: a loop.",
                    h.same_action_last_minute
                ),
                70,
            );
        }
        if let Some(amount) = amount(action.param("amount"))
            && h.spend_today_cents as f64 + amount * 100.0 > s.daily_budget_cents as f64
        {
            return Decision::require_approval(
                "budget.exceeded",
                format!(
                    "This would take today's spend over the budget of {} cents.",
                    s.daily_budget_cents
                ),
                60,
            );
        }
        Decision::allow("rate.ok", "Within rate, loop and budget limits.")
    }
}

export_policy!(RateGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use arbiter_sdk::History;
    use serde_json::json;

    #[test]
    fn limits_are_inclusive_and_ordered() {
        let ctx = |h: History| Context {
            history: h,
            ..Context::default()
        };
        let act = Action::new("tool", "x").with_params(json!({"amount": 1000}));
        let rule = |h| RateGuard::evaluate(&Settings::default(), &act, &ctx(h)).rule;
        assert_eq!(
            rule(History {
                denials_last_hour: 5,
                calls_last_minute: 99,
                ..History::default()
            }),
            "circuit.open"
        );
        assert_eq!(
            rule(History {
                calls_last_minute: 59,
                ..History::default()
            }),
            "rate.ok"
        );
        assert_eq!(
            rule(History {
                spend_today_cents: 0,
                ..History::default()
            }),
            "rate.ok"
        );
        assert_eq!(
            rule(History {
                spend_today_cents: 1,
                ..History::default()
            }),
            "budget.exceeded"
        );
    }
}
