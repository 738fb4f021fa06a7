//! The policy's own Rust, called natively: the floor under every engine.

use arbiter::front_door::wire;
use arbiter_sdk::Policy as _;
use procurement::{Procurement, Settings};
use serde_json::Value;

use crate::{Answer, Decider};

struct Native(Settings);

pub(crate) fn load(settings: &Value) -> Result<Box<dyn Decider>, String> {
    let settings = arbiter_sdk::parse_settings(&settings.to_string()).map_err(|e| e.to_string())?;
    Ok(Box::new(Native(settings)))
}

impl Decider for Native {
    fn decide(&mut self, wire: &str) -> Result<Answer, String> {
        let r = wire::parse_request(wire.as_bytes()).map_err(|e| e.to_string())?;
        let principal = |p: &arbiter::Principal| arbiter_sdk::Principal {
            id: p.id.clone(),
            roles: p.roles.clone(),
        };
        let action = arbiter_sdk::Action::new(&r.action.kind, &r.action.name)
            .with_target(&r.action.target)
            .with_params(r.action.params);
        let context = arbiter_sdk::Context {
            agent: principal(&r.context.agent),
            user: r.context.user.as_ref().map(principal),
            environment: r.context.environment,
            session: r.context.session,
            ..Default::default()
        };
        let d = Procurement::evaluate(&self.0, &action, &context);
        let outcome = match d.outcome {
            arbiter_sdk::Outcome::Allow => "allow",
            arbiter_sdk::Outcome::Deny => "deny",
            arbiter_sdk::Outcome::RequireApproval => "require-approval",
            arbiter_sdk::Outcome::Modify => "modify",
        };
        Ok(Answer {
            outcome: outcome.to_owned(),
            rule: d.rule,
            risk: d.risk,
        })
    }
}
