//! The procurement agent's policy: which tools and tables it may use, whom
//! it may e-mail, and how much it may pay without a person's approval.

use arbiter_sdk::{
    Action, Context, Decision, Policy, Recipients, amount, contains_ignore_case, export_policy,
    in_domains,
};
use serde::Deserialize;

/// Settings; a missing key takes the default below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Tool names the agent may call at all.
    pub tools: Vec<String>,
    /// Tables `db.query` may touch.
    pub tables: Vec<String>,
    /// Domains `send_email` may write to.
    pub email_domains: Vec<String>,
    /// Transfers above this many dollars need approval.
    pub approval_over: f64,
    /// Transfers above this many dollars are refused.
    pub deny_over: f64,
}

impl Default for Settings {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Settings {
            tools: strings(&[
                "db.query",
                "send_email",
                "payments.transfer",
                "workflow.trigger",
            ]),
            tables: strings(&["orders", "suppliers", "invoices", "purchase_orders"]),
            email_domains: strings(&["corp.example"]),
            approval_over: 5000.0,
            deny_over: 50000.0,
        }
    }
}

/// The policy.
pub struct Procurement;

impl Policy for Procurement {
    type Settings = Settings;

    fn evaluate(s: &Settings, action: &Action, context: &Context) -> Decision {
        let name = action.name.as_str();
        if !s.tools.iter().any(|t| t == name) {
            return Decision::deny(
                "tool.not-allowed",
                format!("Tool `{name}` is not one this agent may use."),
                70,
            );
        }
        if context.environment == "prod" && context.anyone_has_role("intern") {
            return Decision::deny(
                "env.prod-intern",
                "Interns may not act in production, directly or through an agent.",
                80,
            );
        }
        match name {
            "db.query" => query(s, action),
            "send_email" => email(s, action),
            "payments.transfer" => transfer(s, action),
            _ => allow(),
        }
    }
}

fn query(s: &Settings, action: &Action) -> Decision {
    let target = action.target.as_str();
    let table = match target.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("public.") => &target[7..],
        _ => target,
    };
    if !contains_ignore_case(&s.tables, table) {
        return Decision::deny(
            "db.table-not-allowed",
            format!("Table `{table}` is not one this agent may query."),
            70,
        );
    }
    allow()
}

fn email(s: &Settings, action: &Action) -> Decision {
    if Recipients::of(&action.params, &["to"]).is_empty() {
        return Decision::deny("email.no-recipient", "The e-mail has no recipient.", 40);
    }
    let recipients = Recipients::of(&action.params, &["to", "cc"]);
    if !recipients.all(|a| in_domains(a, &s.email_domains)) {
        return Decision::deny(
            "email.external-recipient",
            format!(
                "A recipient is not a well-formed address in the allowed domains ({}).",
                s.email_domains.join(", ")
            ),
            80,
        );
    }
    allow()
}

fn transfer(s: &Settings, action: &Action) -> Decision {
    let Some(amount) = amount(action.param("amount")) else {
        return Decision::deny(
            "spend.invalid-amount",
            "The transfer amount is missing, not a number, or not above zero.",
            50,
        );
    };
    if amount > s.deny_over {
        return Decision::deny(
            "spend.over-limit",
            format!(
                "The transfer of ${amount} is over the hard limit of ${}.",
                s.deny_over
            ),
            90,
        );
    }
    if amount > s.approval_over {
        return Decision::require_approval(
            "spend.needs-approval",
            format!(
                "The transfer of ${amount} is over ${} and needs approval.",
                s.approval_over
            ),
            60,
        );
    }
    allow()
}

fn allow() -> Decision {
    Decision::allow("default.allow", "No procurement rule forbids this action.")
}

export_policy!(Procurement);

#[cfg(test)]
mod tests {
    use super::*;
    use arbiter_sdk::{Outcome, Principal};
    use serde_json::json;

    fn decide(action: Action, context: &Context) -> Decision {
        Procurement::evaluate(&Settings::default(), &action, context)
    }

    fn prod() -> Context {
        Context {
            agent: Principal {
                id: "procurement-bot".into(),
                roles: vec!["procurement".into()],
            },
            environment: "prod".into(),
            ..Context::default()
        }
    }

    #[test]
    fn table_prefix_and_case() {
        let q = |t: &str| decide(Action::new("db", "db.query").with_target(t), &prod()).rule;
        assert_eq!(q("PUBLIC.Orders"), "default.allow");
        assert_eq!(q("public.salaries"), "db.table-not-allowed");
        assert_eq!(q("public"), "db.table-not-allowed");
    }

    #[test]
    fn amount_thresholds() {
        let pay = |a| {
            decide(
                Action::new("tool", "payments.transfer").with_params(json!({"amount": a})),
                &prod(),
            )
        };
        assert_eq!(pay(json!(5000)).outcome, Outcome::Allow);
        assert_eq!(pay(json!(5000.01)).outcome, Outcome::RequireApproval);
        assert_eq!(pay(json!(50000.5)).rule, "spend.over-limit");
        assert_eq!(pay(json!(0)).rule, "spend.invalid-amount");
    }

    #[test]
    fn cc_alone_is_no_recipient_and_not_strings_are_external() {
        let mail = |p| decide(Action::new("tool", "send_email").with_params(p), &prod()).rule;
        assert_eq!(mail(json!({"cc": "a@corp.example"})), "email.no-recipient");
        assert_eq!(mail(json!({"to": 42})), "email.external-recipient");
        assert_eq!(
            mail(json!({"to": ["a@corp.example", {"x": 1}]})),
            "email.external-recipient"
        );
        assert_eq!(mail(json!("not an object")), "email.no-recipient");
    }
}
