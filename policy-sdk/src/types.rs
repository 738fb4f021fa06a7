//! The policy-facing shapes of the WIT contract, as plain Rust.

use serde_json::{Map, Value};

/// What an agent asks to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Action {
    /// Interception point: "tool", "mcp", "http", "db", "shell", "fs", ...
    pub kind: String,
    /// Tool, endpoint or command: "send_email", "payments.transfer".
    pub name: String,
    /// What is touched: URL, table, path, host; "" when none.
    pub target: String,
    /// The arguments. The host always sends a JSON document; anything that
    /// does not parse arrives as `Null`.
    pub params: Value,
}

impl Action {
    /// An action with no target and no params, handy in tests.
    pub fn new(kind: &str, name: &str) -> Self {
        Action {
            kind: kind.to_owned(),
            name: name.to_owned(),
            target: String::new(),
            params: Value::Object(Map::new()),
        }
    }

    /// Sets the target.
    pub fn with_target(mut self, target: &str) -> Self {
        self.target = target.to_owned();
        self
    }

    /// Sets the params.
    pub fn with_params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// One top-level param. Params that are not a JSON object count as `{}`,
    /// so this is `None` for them.
    pub fn param(&self, key: &str) -> Option<&Value> {
        self.params.as_object()?.get(key)
    }
}

/// Who acts: an agent, or the user it acts for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principal {
    /// Stable identifier.
    pub id: String,
    /// Roles, as the caller's identity system names them.
    pub roles: Vec<String>,
}

impl Principal {
    /// Whether `role` is one of this principal's roles.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Counters the host keeps per agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Calls by this agent in the last 60 seconds.
    pub calls_last_minute: u32,
    /// Calls of this same action by this agent in the last 60 seconds.
    pub same_action_last_minute: u32,
    /// Denials of this agent in the last hour.
    pub denials_last_hour: u32,
    /// Spend allowed today, in cents.
    pub spend_today_cents: u64,
}

/// The action whose result brought a label into the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The decision on that result.
    pub decision_id: String,
    /// The call's kind ("mcp", "tool"), name and target.
    pub kind: String,
    /// The call's name: the tool, endpoint or command.
    pub name: String,
    /// What the call touched.
    pub target: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A label the session holds, with the result that first brought it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Label {
    /// "private", "untrusted", "customer:42": from the host's vocabulary.
    pub name: String,
    /// Where the labelled data came from.
    pub origin: Origin,
}

/// Everything a policy may know besides the action.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// The agent that asks.
    pub agent: Principal,
    /// On whose behalf it acts, when known.
    pub user: Option<Principal>,
    /// "dev", "staging", "prod", ...
    pub environment: String,
    /// The agent's session id.
    pub session: String,
    /// Free-form facts, in the order the caller gave them.
    pub attributes: Vec<(String, String)>,
    /// Counters filled by the host.
    pub history: History,
    /// The labels of the results this session has seen, filled by the
    /// host (always empty on a 0.1.0 host build).
    pub labels: Vec<Label>,
}

impl Context {
    /// The value of one attribute, if the caller set it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the agent, or the user it acts for, has `role`.
    pub fn anyone_has_role(&self, role: &str) -> bool {
        self.agent.has_role(role) || self.user.as_ref().is_some_and(|u| u.has_role(role))
    }

    /// The session's label `name`, if it holds it.
    pub fn label(&self, name: &str) -> Option<&Label> {
        self.labels.iter().find(|l| l.name == name)
    }
}

/// What a policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The action may run.
    Allow,
    /// The action must not run.
    Deny,
    /// The action may run once a person approves it.
    RequireApproval,
    /// The action may run with the replacement params.
    Modify,
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What to do.
    pub outcome: Outcome,
    /// One sentence an auditor can read. Never put a redacted value here.
    pub reason: String,
    /// Stable id of the rule that decided, e.g. "email.external-recipient".
    pub rule: String,
    /// 0 (none) to 100 (critical). The host refuses anything above 100.
    pub risk: u8,
    /// With [`Outcome::Modify`]: the replacement params.
    pub params: Option<Value>,
    /// Labels to attach to a result (an action of kind `*.result`):
    /// the session holds them once the result is let through.
    pub labels: Vec<String>,
}

impl Decision {
    /// Allows the action, with risk 0.
    pub fn allow(rule: &str, reason: impl Into<String>) -> Self {
        Self::new(Outcome::Allow, rule, reason, 0, None)
    }

    /// Allows the action with a non-zero risk, for the record.
    pub fn allow_with_risk(rule: &str, reason: impl Into<String>, risk: u8) -> Self {
        Self::new(Outcome::Allow, rule, reason, risk, None)
    }

    /// Denies the action.
    pub fn deny(rule: &str, reason: impl Into<String>, risk: u8) -> Self {
        Self::new(Outcome::Deny, rule, reason, risk, None)
    }

    /// Asks for a person's approval before the action runs.
    pub fn require_approval(rule: &str, reason: impl Into<String>, risk: u8) -> Self {
        Self::new(Outcome::RequireApproval, rule, reason, risk, None)
    }

    /// Lets the action run with `params` in place of the original ones.
    pub fn modify(rule: &str, reason: impl Into<String>, risk: u8, params: Value) -> Self {
        Self::new(Outcome::Modify, rule, reason, risk, Some(params))
    }

    fn new(
        outcome: Outcome,
        rule: &str,
        reason: impl Into<String>,
        risk: u8,
        params: Option<Value>,
    ) -> Self {
        Decision {
            outcome,
            reason: reason.into(),
            rule: rule.to_owned(),
            risk,
            params,
            labels: Vec::new(),
        }
    }

    /// This decision, attaching `labels` to the result it is about.
    #[must_use]
    pub fn with_labels<S: Into<String>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.labels.extend(labels.into_iter().map(Into::into));
        self
    }
}
