//! Route: which policy chain applies to an action. Built once from the
//! configuration; matching is a pure function of the agent id, the action
//! kind and the action name. The first route that matches wins, so specific
//! routes go before general ones.

use std::time::Instant;

use serde::Deserialize;

use crate::decision::{Decision, Request};
use crate::glob::glob;

/// One route as configured: globs (`*` any run, `?` one character) and the
/// chain of policy names to run, in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Glob on `action.kind`. Default: `*`.
    #[serde(default = "any")]
    pub kind: String,
    /// Glob on `action.name`. Default: `*`.
    #[serde(default = "any")]
    pub name: String,
    /// Glob on `context.agent.id`. Default: `*`.
    #[serde(default = "any")]
    pub agent: String,
    /// Policy names, run in this order.
    pub chain: Vec<String>,
    /// Whether these actions only read: an agent whose circuit breaker is
    /// open in `read-only` mode may still take them. Default: false.
    #[serde(default)]
    pub read_only: bool,
}

fn any() -> String {
    "*".to_owned()
}

impl RouteSpec {
    /// A route that takes every action, for `chain`.
    pub fn all(chain: impl IntoIterator<Item = impl Into<String>>) -> Self {
        RouteSpec {
            kind: any(),
            name: any(),
            agent: any(),
            chain: chain.into_iter().map(Into::into).collect(),
            read_only: false,
        }
    }
}

/// The routes, in match order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<RouteSpec>,
}

impl RouteTable {
    /// A table that tries `routes` in order.
    pub fn new(routes: Vec<RouteSpec>) -> Self {
        RouteTable { routes }
    }

    /// The first route matching the action, if any.
    pub fn route(&self, agent: &str, kind: &str, name: &str) -> Option<&RouteSpec> {
        self.routes
            .iter()
            .find(|r| glob(&r.kind, kind) && glob(&r.name, name) && glob(&r.agent, agent))
    }

    /// Every route, in order.
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }
}

/// The route stage's deny when no route matches: fail closed, naming
/// what was asked.
pub fn unmatched(request: &Request, start: Instant) -> Decision {
    let a = &request.action;
    Decision::host_deny(
        "route.unmatched",
        format!(
            "No policy route matches agent `{}`, action kind `{}`, name `{}`; failing closed.",
            request.context.agent.id, a.kind, a.name
        ),
        start,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_pattern_is_fast_enough_to_finish() {
        let text = "a".repeat(10_000);
        assert!(!glob("*a*a*a*a*a*a*b", &text));
    }

    #[test]
    fn first_match_wins() {
        let r = |kind: &str, name: &str, agent: &str, chain: &[&str]| RouteSpec {
            kind: kind.into(),
            name: name.into(),
            agent: agent.into(),
            chain: chain.iter().map(|s| (*s).to_owned()).collect(),
            read_only: false,
        };
        let table = RouteTable::new(vec![
            r("*", "*", "support-*", &["support"]),
            r("shell", "*", "*", &["shell"]),
            r("*", "*", "*", &["default"]),
        ]);
        let chain = |agent, kind, name| table.route(agent, kind, name).map(|r| r.chain[0].as_str());
        assert_eq!(chain("support-bot", "shell", "x"), Some("support"));
        assert_eq!(chain("coder", "shell", "x"), Some("shell"));
        assert_eq!(chain("coder", "tool", "x"), Some("default"));
        assert_eq!(RouteTable::default().route("a", "b", "c"), None);
    }
}
