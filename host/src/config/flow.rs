//! `[flow]`: session flow labels ([`crate::flow`], kept by
//! [`crate::enrich::flow`]).

use serde::Deserialize;

use crate::flow::{MAX_SESSION_LABELS, fingerprint::WINDOW, label_problem};

/// `[flow]`: which labels results may carry, which results carry them by
/// configuration, and how much of it each session keeps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// Whether the host keeps labels at all. Default: false.
    pub enabled: bool,
    /// What labels follow: each `session` of an agent on its own, or the
    /// `agent` across its sessions (an agent using several MCP servers has
    /// a session with each). Default: `session`.
    pub scope: FlowScope,
    /// The vocabulary: label patterns (`*` any run of characters) a label
    /// must match, from a policy or a rule. Default: `private`, `secret`,
    /// `pii`, `untrusted`, `customer:*`.
    pub labels: Vec<String>,
    /// How long a label stays with a session after the result that
    /// brought it, in seconds. Default: 3600.
    pub ttl_s: u64,
    /// Sessions kept at most; a labelled result for a new session past it
    /// is withheld. Default: 10000.
    pub max_sessions: usize,
    /// Labels one session may hold; a result that would add more is
    /// withheld. At most 64. Default: 32.
    pub max_labels: usize,
    /// Fingerprints one session keeps; past it, any long enough value is
    /// taken to carry the labels that did not fit. Default: 16384.
    pub max_prints: usize,
    /// The length (in bytes of text lowercased and without whitespace)
    /// from which a copy is always found. At least 12. Default: 32.
    pub min_match: usize,
    /// Values longer than this (bytes) are not fingerprinted when asked
    /// about: they are answered with every label held. Default: 1048576.
    pub max_value_bytes: usize,
    /// Decisions on calls kept for `POST /v1/results` at most; past it
    /// the oldest is dropped, and its result refused. Default: 100000.
    pub max_pending_results: usize,
    /// How long after its call a result may be posted, in seconds.
    /// Default: 600.
    pub result_ttl_s: u64,
    /// The file holding the 32-byte key fingerprints are made with
    /// (created if missing), relative to the configuration file; replicas
    /// sharing a state database must share it. Default: `flow.key` in the
    /// state directory.
    pub key_file: Option<std::path::PathBuf>,
    /// Labels results get by configuration, `[[flow.rules]]`.
    pub rules: Vec<FlowRule>,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            enabled: false,
            scope: FlowScope::Session,
            labels: ["private", "secret", "pii", "untrusted", "customer:*"]
                .map(String::from)
                .to_vec(),
            ttl_s: 3600,
            max_sessions: 10_000,
            max_labels: 32,
            max_prints: 16_384,
            min_match: 32,
            max_value_bytes: 1 << 20,
            max_pending_results: 100_000,
            result_ttl_s: 600,
            key_file: None,
            rules: Vec::new(),
        }
    }
}

/// What a session's labels follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowScope {
    /// An agent's session (an agent without one: the agent).
    Session,
    /// An agent, across its sessions.
    Agent,
}

/// `[[flow.rules]]`: the results of the calls it matches carry `labels`.
/// Each key is a pattern (`*` any run of characters); a missing key
/// matches anything, and at least one must be given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRule {
    /// The MCP server, as `[[mcp.servers]]` names it.
    #[serde(default)]
    pub server: Option<String>,
    /// The call's kind: "mcp", "tool", "http".
    #[serde(default)]
    pub kind: Option<String>,
    /// The call's name: the tool.
    #[serde(default)]
    pub name: Option<String>,
    /// The call's target.
    #[serde(default)]
    pub target: Option<String>,
    /// The labels its results carry.
    pub labels: Vec<String>,
}

impl FlowRule {
    /// Whether it matches a call of `kind`, `name` and `target` through
    /// MCP server `server` (none when not through the gateway).
    pub fn matches(&self, server: Option<&str>, kind: &str, name: &str, target: &str) -> bool {
        let m = |pattern: &Option<String>, text: Option<&str>| match (pattern, text) {
            (None, _) => true,
            (Some(p), Some(t)) => crate::glob::glob(p, t),
            (Some(_), None) => false,
        };
        m(&self.server, server)
            && m(&self.kind, Some(kind))
            && m(&self.name, Some(name))
            && m(&self.target, Some(target))
    }
}

impl FlowConfig {
    /// Whether `label` is in the vocabulary.
    pub fn allows(&self, label: &str) -> bool {
        self.labels.iter().any(|p| crate::glob::glob(p, label))
    }

    pub(super) fn check(&self) -> Result<(), String> {
        for (key, value, min, max) in [
            ("flow.ttl_s", self.ttl_s, 1, 30 * 24 * 3600),
            ("flow.max_sessions", self.max_sessions as u64, 1, 10_000_000),
            (
                "flow.max_labels",
                self.max_labels as u64,
                1,
                MAX_SESSION_LABELS as u64,
            ),
            ("flow.max_prints", self.max_prints as u64, 1, 10_000_000),
            ("flow.min_match", self.min_match as u64, WINDOW as u64, 4096),
            (
                "flow.max_value_bytes",
                self.max_value_bytes as u64,
                1,
                64 << 20,
            ),
            (
                "flow.max_pending_results",
                self.max_pending_results as u64,
                1,
                10_000_000,
            ),
            ("flow.result_ttl_s", self.result_ttl_s, 1, 7 * 24 * 3600),
        ] {
            if !(min..=max).contains(&value) {
                return Err(format!("`{key}` is {value}; it must be {min} to {max}"));
            }
        }
        if self.labels.is_empty() {
            return Err("`flow.labels` is empty: no label could ever be attached".into());
        }
        for p in &self.labels {
            // A pattern is a label with `*` and `?` allowed.
            if let Some(problem) = label_problem(&p.replace(['*', '?'], "x")) {
                return Err(format!("`flow.labels`: {problem}"));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.server.is_none() && r.kind.is_none() && r.name.is_none() && r.target.is_none() {
                return Err(format!(
                    "`flow.rules[{i}]` matches every result: give a server, kind, name or target"
                ));
            }
            if r.labels.is_empty() {
                return Err(format!("`flow.rules[{i}]` has no labels"));
            }
            for l in &r.labels {
                if let Some(problem) = label_problem(l) {
                    return Err(format!("`flow.rules[{i}]`: {problem}"));
                }
                if !self.allows(l) {
                    return Err(format!(
                        "`flow.rules[{i}]`: label `{l}` is not in `flow.labels`"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(), String> {
        let c: FlowConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()
    }

    #[test]
    fn checks_name_the_key_at_fault() {
        assert_eq!(parse("enabled = true"), Ok(()));
        let e = parse("min_match = 4").expect_err("refused");
        assert!(e.contains("flow.min_match"), "{e}");
        let e = parse("max_labels = 65").expect_err("refused");
        assert!(e.contains("flow.max_labels"), "{e}");
        let e = parse("[[rules]]\nname = \"fetch\"\nlabels = [\"tainted\"]").expect_err("refused");
        assert!(e.contains("not in `flow.labels`"), "{e}");
        let e = parse("[[rules]]\nlabels = [\"private\"]").expect_err("refused");
        assert!(e.contains("matches every result"), "{e}");
        let e = parse("labels = [\"Bad Label\"]").expect_err("refused");
        assert!(e.contains("flow.labels"), "{e}");
    }

    #[test]
    fn rules_match_by_pattern_and_the_vocabulary_takes_wildcards() {
        let c: FlowConfig = toml::from_str(
            "[[rules]]\nserver = \"web\"\nname = \"fetch*\"\nlabels = [\"untrusted\"]",
        )
        .expect("parse");
        let r = &c.rules[0];
        assert!(r.matches(Some("web"), "mcp", "fetch_url", ""));
        assert!(!r.matches(None, "mcp", "fetch_url", ""));
        assert!(!r.matches(Some("web"), "mcp", "read", ""));
        assert!(c.allows("customer:42") && !c.allows("customer"));
    }
}
