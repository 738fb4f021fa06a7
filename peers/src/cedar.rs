//! The procurement policy in Cedar.
//!
//! Cedar has no first-match order, no string functions (no lower-casing, no
//! splitting) and no quantifier over a set's members, so two things live
//! outside the policy text, as in any Cedar integration that builds its
//! request from application data:
//! - the request builder (timed with Cedar, from the wire JSON) lower-cases
//!   the target and turns each recipient into its lower-cased domain, or
//!   `""` when the address is malformed or not a string, so the policy can
//!   say "every domain is allowed" as set containment; amounts become
//!   Cedar decimals (four fraction digits);
//! - the rule order: each rule is a `forbid` annotated with its place, its
//!   outcome, rule id and risk, and of the forbids that matched the first
//!   place wins. `require-approval` is such a forbid too.
//!
//! The settings are the policy's: they are written into the policy text
//! when it is loaded.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression,
};
use serde_json::Value;

use crate::{Answer, Decider, Settings};

struct Cedar {
    policies: PolicySet,
    authorizer: Authorizer,
    entities: Entities,
    /// Each policy's place, outcome, rule and risk, from its annotations.
    rules: HashMap<PolicyId, (u32, Answer)>,
    agent: EntityTypeName,
    action: EntityTypeName,
    target: EntityTypeName,
}

pub(crate) fn load(settings: &Value) -> Result<Box<dyn Decider>, String> {
    let s = Settings::of(settings)?;
    let text = policy_text(&s);
    let policies = PolicySet::from_str(&text).map_err(|e| format!("{e:?}"))?;
    let mut rules = HashMap::new();
    for p in policies.policies() {
        let get = |key: &str| {
            p.annotation(key)
                .map(str::to_owned)
                .ok_or_else(|| format!("policy {} has no @{key}", p.id()))
        };
        let place = get("order")?.parse().map_err(|e| format!("@order: {e}"))?;
        let answer = Answer {
            outcome: get("outcome")?,
            rule: get("rule")?,
            risk: get("risk")?.parse().map_err(|e| format!("@risk: {e}"))?,
        };
        rules.insert(p.id().clone(), (place, answer));
    }
    let name = |n: &str| EntityTypeName::from_str(n).map_err(|e| e.to_string());
    Ok(Box::new(Cedar {
        policies,
        authorizer: Authorizer::new(),
        entities: Entities::empty(),
        rules,
        agent: name("Agent")?,
        action: name("Action")?,
        target: name("Target")?,
    }))
}

/// A Cedar string literal.
fn lit(s: &str) -> String {
    format!("{s:?}")
}

fn set(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// `x` as a Cedar decimal's text: four fraction digits, within its range.
fn decimal_text(x: f64) -> String {
    format!("{:.4}", x.clamp(-9e14, 9e14))
}

fn decimal(x: f64) -> String {
    format!("decimal(\"{}\")", decimal_text(x))
}

/// The rules of POLICIES.md in Cedar, with `s` written in.
fn policy_text(s: &Settings) -> String {
    let tools = set(s.tools.iter().map(|t| format!("Action::{}", lit(t))));
    let tables = set(s.tables.iter().flat_map(|t| {
        let t = t.to_lowercase();
        [lit(&t), lit(&format!("public.{t}"))]
    }));
    let domains = set(s.email_domains.iter().map(|d| lit(&d.to_ascii_lowercase())));
    let (approval, hard) = (decimal(s.approval_over), decimal(s.deny_over));
    format!(
        r#"
@order("1") @outcome("deny") @rule("tool.not-allowed") @risk("70")
forbid (principal, action, resource) unless {{ action in {tools} }};

@order("2") @outcome("deny") @rule("env.prod-intern") @risk("80")
forbid (principal, action, resource)
when {{ context.environment == "prod" && context.roles.contains("intern") }};

@order("3") @outcome("deny") @rule("db.table-not-allowed") @risk("70")
forbid (principal, action == Action::"db.query", resource)
unless {{ {tables}.contains(context.target) }};

@order("4") @outcome("deny") @rule("email.no-recipient") @risk("40")
forbid (principal, action == Action::"send_email", resource)
when {{ context.to.isEmpty() }};

@order("5") @outcome("deny") @rule("email.external-recipient") @risk("80")
forbid (principal, action == Action::"send_email", resource)
unless {{ {domains}.containsAll(context.to) && {domains}.containsAll(context.cc) }};

@order("6") @outcome("deny") @rule("spend.invalid-amount") @risk("50")
forbid (principal, action == Action::"payments.transfer", resource)
unless {{ context has amount && context.amount.greaterThan(decimal("0.0")) }};

@order("7") @outcome("deny") @rule("spend.over-limit") @risk("90")
forbid (principal, action == Action::"payments.transfer", resource)
when {{ context has amount && context.amount.greaterThan({hard}) }};

@order("8") @outcome("require-approval") @rule("spend.needs-approval") @risk("60")
forbid (principal, action == Action::"payments.transfer", resource)
when {{ context has amount && context.amount.greaterThan({approval}) }};

@order("9") @outcome("allow") @rule("default.allow") @risk("0")
permit (principal, action, resource);
"#
    )
}

/// A recipient field as Cedar sees it: the lower-cased domain of each
/// well-formed address, `""` for anything else; empty strings ignored.
fn domains(params: &Value, key: &str) -> RestrictedExpression {
    let domain = |v: &Value| {
        let s = match v {
            Value::String(s) => arbiter_sdk::domain_of(s).unwrap_or_default(),
            _ => String::new(),
        };
        RestrictedExpression::new_string(s)
    };
    let items: Vec<RestrictedExpression> = match params.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .filter(|v| v.as_str() != Some(""))
            .map(domain)
            .collect(),
        Some(v) => vec![domain(v)],
    };
    RestrictedExpression::new_set(items)
}

impl Cedar {
    /// The Cedar request for one wire request.
    fn request(&self, wire: &str) -> Result<Request, String> {
        let w: Value = serde_json::from_str(wire).map_err(|e| e.to_string())?;
        let (action, context) = (&w["action"], &w["context"]);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let uid = |ty: &EntityTypeName, id: String| {
            EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
        };
        // Params that are not an object have no fields, as `{}`.
        let params = &action["params"];
        let roles = ["agent", "user"]
            .into_iter()
            .filter_map(|who| context[who]["roles"].as_array())
            .flatten()
            .map(|r| RestrictedExpression::new_string(text(r)));
        let mut pairs = vec![
            (
                "environment".to_owned(),
                RestrictedExpression::new_string(text(&context["environment"])),
            ),
            ("roles".to_owned(), RestrictedExpression::new_set(roles)),
            (
                "target".to_owned(),
                RestrictedExpression::new_string(text(&action["target"]).to_lowercase()),
            ),
            ("to".to_owned(), domains(params, "to")),
            ("cc".to_owned(), domains(params, "cc")),
        ];
        if let Some(a) = params.get("amount").and_then(Value::as_f64) {
            pairs.push((
                "amount".to_owned(),
                RestrictedExpression::new_decimal(decimal_text(a)),
            ));
        }
        let context = Context::from_pairs(pairs).map_err(|e| e.to_string())?;
        Request::new(
            uid(&self.agent, text(&w["context"]["agent"]["id"])),
            uid(&self.action, text(&action["name"])),
            uid(&self.target, text(&action["target"])),
            context,
            None,
        )
        .map_err(|e| e.to_string())
    }
}

impl Decider for Cedar {
    fn decide(&mut self, wire: &str) -> Result<Answer, String> {
        let request = self.request(wire)?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &self.entities);
        if let Some(e) = response.diagnostics().errors().next() {
            return Err(format!("cedar: {e}"));
        }
        let first = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.rules.get(id))
            .min_by_key(|(place, _)| *place)
            .map(|(_, answer)| answer.clone());
        match (response.decision(), first) {
            (Decision::Allow | Decision::Deny, Some(answer)) => Ok(answer),
            (_, None) => Err("cedar: no policy determined the decision".into()),
        }
    }
}
