//! The shared domain types of a decision: what is asked ([`Request`]) and
//! what is answered ([`Decision`]), in the wire shape of `shared/DESIGN.md`
//! (snake_case, `params` as a JSON value).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod traceparent;

/// What an agent asks to do, as seen at an interception point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Interception point: "tool", "mcp", "http", "db", "shell", "fs", ...
    pub kind: String,
    /// Tool, endpoint or command: "send_email", "payments.transfer".
    pub name: String,
    /// What is touched: URL, table, path, recipient, host; "" when none.
    #[serde(default)]
    pub target: String,
    /// Arguments; `{}` when none.
    #[serde(default = "empty_object")]
    pub params: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// An agent, or the user it acts for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// Stable identifier.
    #[serde(default)]
    pub id: String,
    /// Roles, as the caller's identity system names them.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Everything about the action that is not the action: who, where, why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The agent that asks.
    #[serde(default)]
    pub agent: Principal,
    /// On whose behalf it acts, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Principal>,
    /// "dev", "staging", "prod", ...
    #[serde(default)]
    pub environment: String,
    /// The agent's session id.
    #[serde(default)]
    pub session: String,
    /// Free-form facts: data classification, ticket severity, region, ...
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Counters the host keeps per agent; a caller over the network cannot set
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// One question to Arbiter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// What is asked.
    pub action: Action,
    /// Who asks, and where.
    #[serde(default)]
    pub context: Context,
    /// The agent's counters. Only trusted callers (the CLI, test cases, the
    /// host's own state) fill it.
    #[serde(default)]
    pub history: History,
    /// The approval this request asks again with, after a require-approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The caller's trace, from its door's `traceparent`; a decision's
    /// spans continue it. Never read from a request's body.
    #[serde(skip)]
    pub trace: Option<traceparent::TraceParent>,
}

/// The longest names a request may carry, in bytes: beyond them a name is
/// an attack on the host's memory (every agent, action and session is a
/// key it keeps), not a name.
pub const MAX_NAME_BYTES: usize = 256;
/// The longest `action.target`, in bytes (a URL or a path).
pub const MAX_TARGET_BYTES: usize = 4096;

impl Request {
    /// The first field longer than the host accepts, with its limit.
    pub fn too_long(&self) -> Option<(&'static str, usize)> {
        let c = &self.context;
        [
            ("context.agent.id", c.agent.id.len(), MAX_NAME_BYTES),
            ("action.kind", self.action.kind.len(), MAX_NAME_BYTES),
            ("action.name", self.action.name.len(), MAX_NAME_BYTES),
            ("action.target", self.action.target.len(), MAX_TARGET_BYTES),
            (
                "context.user.id",
                c.user.as_ref().map_or(0, |u| u.id.len()),
                MAX_NAME_BYTES,
            ),
            ("context.environment", c.environment.len(), MAX_NAME_BYTES),
            ("context.session", c.session.len(), MAX_NAME_BYTES),
        ]
        .into_iter()
        .find(|(_, len, max)| len > max)
        .map(|(field, _, max)| (field, max))
    }
}

/// What a policy, or the whole chain, decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The action may run.
    Allow,
    /// The action must not run.
    Deny,
    /// The action may run once a person approves it.
    RequireApproval,
    /// The action may run with replacement params.
    Modify,
}

impl Outcome {
    /// Precedence when combining a chain: deny > require-approval > modify
    /// > allow.
    pub fn precedence(self) -> u8 {
        match self {
            Outcome::Allow => 0,
            Outcome::Modify => 1,
            Outcome::RequireApproval => 2,
            Outcome::Deny => 3,
        }
    }

    /// The wire name: "allow", "deny", "require-approval", "modify".
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::RequireApproval => "require-approval",
            Outcome::Modify => "modify",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The action whose result brought a label into a session
/// (see [`crate::flow`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The decision on the result.
    pub decision_id: String,
    /// The call's kind ("mcp", "tool"), without `.result`.
    pub kind: String,
    /// The call's name.
    pub name: String,
    /// The call's target.
    pub target: String,
}

/// A label a session holds, with the result that first brought it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The label.
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
}

/// One label-of question a policy asked, and the answer: kept in the
/// decision record (the value only as its hash) so a replay gets the same
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// `sha256:` of the value asked about.
    pub value_sha256: String,
    /// The labels answered.
    pub labels: Vec<String>,
}

/// What one policy of the chain answered, and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// The policy's configured name.
    pub name: String,
    /// `sha256:` of the component bytes; empty when none was loaded.
    pub version: String,
    /// The id of the key that signed it; `null` when unsigned.
    #[serde(default)]
    pub signer: Option<String>,
    /// The version its signer gave it; `null` when unsigned.
    #[serde(default)]
    pub signed_version: Option<String>,
    /// The mode it ran under; in monitor mode it did not run.
    #[serde(default)]
    pub mode: Mode,
    /// The canary candidate that answered instead of the serving version,
    /// by id; absent when the serving version answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// What it decided (deny when it failed).
    pub outcome: Outcome,
    /// The rule that decided, or `failure.<kind>` when it failed.
    pub rule: String,
    /// One sentence an auditor can read.
    pub reason: String,
    /// 0 to 100.
    pub risk: u8,
    /// The params it produced, with modify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Fuel the call consumed.
    pub fuel: u64,
    /// Wall-clock time of instantiation and call, in microseconds.
    pub micros: u64,
    /// Why it failed, when it did; the outcome is then deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The labels it attached to a result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What it asked `labels-of`, with the answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<Query>,
}

/// Arbiter's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Unique, time-ordered id (UUIDv7).
    pub decision_id: String,
    /// What the caller must do.
    pub outcome: Outcome,
    /// What the policies decided: differs from `outcome` only when the
    /// deciding policy is in monitor or soft-enforce mode.
    pub decided: Outcome,
    /// The mode of the policy that decided `decided` (monitor when none ran).
    pub mode: Mode,
    /// Why the caller is not held to what a policy decided, one sentence
    /// for each soft-enforced policy that would not have allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The reason of the policy that decided `decided`.
    pub reason: String,
    /// The rule of the policy that decided `decided`.
    pub rule: String,
    /// The risk of the policy that decided `decided`, 0 to 100.
    pub risk: u8,
    /// With modify (and require-approval after a modify): the params the
    /// action must run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// With require-approval, and when asked again with one: the approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// Every policy that ran, in chain order.
    pub policies: Vec<PolicyReport>,
    /// Wall-clock time of the whole decision, in microseconds.
    pub micros: u64,
    /// The session's labels this decision saw and the ones it attached,
    /// when the host tracks flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowEvidence>,
}

/// What a decision knew of its session's labels, and what it added
/// (fields in byte order: the decision record is canonical JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEvidence {
    /// The labels this decision attached to its result, once let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached: Vec<String>,
    /// The labels the session held when the decision started.
    pub held: Vec<Label>,
}
/// How much a policy's answer binds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The policy does not run; the action is recorded and allowed.
    Monitor,
    /// The policy runs; its answer is reported, not enforced.
    SoftEnforce,
    /// The policy's answer binds.
    #[default]
    Enforce,
}

impl Mode {
    /// The wire name: "monitor", "soft-enforce", "enforce".
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::SoftEnforce => "soft-enforce",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "monitor" => Ok(Mode::Monitor),
            "soft-enforce" => Ok(Mode::SoftEnforce),
            "enforce" => Ok(Mode::Enforce),
            other => Err(UnknownMode(other.chars().take(40).collect())),
        }
    }
}

/// A mode name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}`: expected monitor, soft-enforce or enforce")]
pub struct UnknownMode(pub String);

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalStatus {
    /// Waiting for a person.
    Pending,
    /// Granted; not used yet.
    Approved,
    /// Refused by a person.
    Declined,
    /// Nobody answered in time.
    Expired,
    /// Granted and used by a decision.
    Used,
}

impl ApprovalStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Declined => "declined",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Used => "used",
        }
    }
}

/// What a decision says of its approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRef {
    /// The approval's id: ask again with it as `approval_id`.
    pub id: String,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// When it expires if nobody answers (RFC 3339).
    pub expires_at: String,
}

impl Decision {
    /// This decision overruled by the host after the policies: a deny
    /// with `rule` and `reason`, keeping its id, policies and risk (at
    /// least 50).
    #[must_use]
    pub fn overruled(self, rule: &str, reason: String) -> Decision {
        Decision {
            outcome: Outcome::Deny,
            rule: rule.to_owned(),
            reason,
            risk: self.risk.max(50),
            params: None,
            ..self
        }
    }

    /// A deny by the host itself, before or instead of any policy: a
    /// gate, a route that matches nothing, a failure of the host.
    pub fn host_deny(rule: &str, reason: String, start: Instant) -> Decision {
        Decision {
            approval: None,
            decision_id: new_decision_id(),
            outcome: Outcome::Deny,
            decided: Outcome::Deny,
            mode: Mode::Enforce,
            warnings: Vec::new(),
            reason,
            rule: rule.to_owned(),
            risk: 100,
            params: None,
            policies: Vec::new(),
            micros: micros_since(start),
            flow: None,
        }
    }
}

/// A fresh decision id: a UUIDv7, so ids sort by time.
pub fn new_decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Microseconds since `start`, saturating.
pub fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}
