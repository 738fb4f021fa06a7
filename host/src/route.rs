//! Route: which policy chain applies to an action. Built once from the
//! configuration; matching is a pure function of the agent id, the action
//! kind and the action name. The first route that matches wins, so specific
//! routes go before general ones.

use serde::Deserialize;

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

/// Matches `text` against `pattern`, where `*` is any run of characters
/// (including none) and `?` exactly one. At worst O(pattern × text), with
/// no recursion, so a hostile action name cannot make matching explode.
pub fn glob(pattern: &str, text: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    // Byte-wise is exact when both are ASCII, and allocates nothing;
    // otherwise `?` must match a whole character.
    if pattern.is_ascii() && text.is_ascii() {
        glob_slices(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        glob_slices(&p, &t, '*', '?')
    }
}

fn glob_slices<T: Copy + PartialEq>(p: &[T], t: &[T], star_sym: T, any: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in the text it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == any || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star_sym {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == star_sym)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("payments.*", "payments.transfer", true),
            ("payments.*", "payments", false),
            ("*.transfer", "payments.transfer", true),
            ("send_?mail", "send_email", true),
            ("send_?mail", "send_mail", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("db", "db", true),
            ("db", "dbx", false),
            ("", "", true),
            ("", "x", false),
            ("**", "x", true),
            ("caf?", "café", true),
            ("*é", "café", true),
            ("?", "é", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

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
