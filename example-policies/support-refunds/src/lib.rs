//! The customer-support agent's policy: refunds within limits, e-mail only
//! to the customer of the case or to colleagues, no bulk export.

use arbiter_sdk::{
    Action, Context, Decision, Policy, Recipients, amount, export_policy, in_domains,
};
use serde::Deserialize;

/// Settings; a missing key takes the default below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Refunds up to this many dollars go through on their own.
    pub auto_refund_max: f64,
    /// Refunds up to this many dollars need approval; above, they are refused.
    pub approval_refund_max: f64,
    /// Orders older than this many days cannot be refunded.
    pub max_order_age_days: f64,
    /// Colleagues' domains, always fine to e-mail.
    pub internal_domains: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            auto_refund_max: 200.0,
            approval_refund_max: 1000.0,
            max_order_age_days: 30.0,
            internal_domains: vec!["corp.example".to_owned()],
        }
    }
}

/// The policy.
pub struct SupportRefunds;

impl Policy for SupportRefunds {
    type Settings = Settings;

    fn evaluate(s: &Settings, action: &Action, context: &Context) -> Decision {
        match action.name.as_str() {
            "crm.export" => Decision::deny(
                "crm.export-forbidden",
                "Exporting customer records is forbidden for the support agent.",
                90,
            ),
            "issue_refund" => refund(s, action),
            "send_email" => email(s, action, context),
            _ => allow(),
        }
    }
}

fn refund(s: &Settings, action: &Action) -> Decision {
    let Some(amount) = amount(action.param("amount")) else {
        return Decision::deny(
            "refund.invalid-amount",
            "The refund amount is missing, not a number, or not above zero.",
            50,
        );
    };
    if let Some(age) = action.param("order_age_days").and_then(|v| v.as_f64())
        && age > s.max_order_age_days
    {
        return Decision::deny(
            "refund.order-too-old",
            format!(
                "The order is {age} days old; refunds stop after {} days.",
                s.max_order_age_days
            ),
            60,
        );
    }
    if amount > s.approval_refund_max {
        return Decision::deny(
            "refund.over-limit",
            format!(
                "A refund of ${amount} is over the limit of ${}.",
                s.approval_refund_max
            ),
            90,
        );
    }
    if amount > s.auto_refund_max {
        return Decision::require_approval(
            "refund.needs-approval",
            format!(
                "A refund of ${amount} is over ${} and needs approval.",
                s.auto_refund_max
            ),
            50,
        );
    }
    allow()
}

fn email(s: &Settings, action: &Action, context: &Context) -> Decision {
    let customer = context.attribute("case_customer_email").unwrap_or("");
    let recipients = Recipients::of(&action.params, &["to", "cc"]);
    let fine = |a: &str| {
        in_domains(a, &s.internal_domains)
            || (arbiter_sdk::domain_of(a).is_some()
                && !customer.is_empty()
                && a.eq_ignore_ascii_case(customer))
    };
    if recipients.is_empty() || !recipients.all(fine) {
        return Decision::deny(
            "email.not-case-customer",
            "The support agent may e-mail only the customer of the case or colleagues.",
            80,
        );
    }
    allow()
}

fn allow() -> Decision {
    Decision::allow("default.allow", "No support rule forbids this action.")
}

export_policy!(SupportRefunds);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_customer() -> Context {
        Context {
            attributes: vec![("case_customer_email".into(), "dana@customer.example".into())],
            ..Context::default()
        }
    }

    fn rule(params: serde_json::Value, ctx: &Context) -> String {
        SupportRefunds::evaluate(
            &Settings::default(),
            &Action::new("tool", "send_email").with_params(params),
            ctx,
        )
        .rule
    }

    #[test]
    fn email_rules() {
        let ctx = with_customer();
        assert_eq!(
            rule(
                json!({"to": "DANA@customer.example", "cc": ["x@corp.example"]}),
                &ctx
            ),
            "default.allow"
        );
        assert_eq!(rule(json!({}), &ctx), "email.not-case-customer");
        assert_eq!(
            rule(json!({"to": "dana@customer.example, eve@evil.io"}), &ctx),
            "email.not-case-customer"
        );
        // Without a case customer, only colleagues.
        assert_eq!(
            rule(json!({"to": ""}), &Context::default()),
            "email.not-case-customer"
        );
        assert_eq!(
            rule(json!({"to": "a@corp.example"}), &Context::default()),
            "default.allow"
        );
    }

    #[test]
    fn refund_order() {
        let r = |p| {
            SupportRefunds::evaluate(
                &Settings::default(),
                &Action::new("tool", "issue_refund").with_params(p),
                &Context::default(),
            )
            .rule
        };
        // An old order is refused before the amount is weighed.
        assert_eq!(
            r(json!({"amount": 5000, "order_age_days": 99})),
            "refund.order-too-old"
        );
        assert_eq!(r(json!({"amount": "5"})), "refund.invalid-amount");
        assert_eq!(r(json!({"amount": 200})), "default.allow");
    }
}
