//! Flow guard: stops the lethal combination. An agent that has read
//! private data and content from an untrusted source may be carrying out
//! instructions planted in that content; its session may then send nothing
//! outward (e-mail, a message, a pull request or issue in a public place,
//! an HTTP POST to a host outside the allow-list) without a person's
//! approval. An argument holding text copied from a `secret` result is
//! always denied. Reasons name the labels and the calls that brought them.
//!
//! On results it attaches labels itself: a result whose text holds one of
//! the configured markers (`CONFIDENTIAL`, `SECRET`) carries its label.
//! Labels from configuration (`[[flow.rules]]`: a tool that reads the web
//! is `untrusted`) need no policy.

use arbiter_sdk::{Action, Context, Decision, Label, Policy, export_policy, labels_in};
use serde::Deserialize;
use serde_json::Value;

/// Settings; a missing key takes the default below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Actions that send data outward, by name.
    pub outbound: Vec<String>,
    /// Hosts an HTTP POST may go to without counting as outward (a host
    /// or a parent domain).
    pub http_allowed_hosts: Vec<String>,
    /// Labels of content an attacker may have written.
    pub untrusted: Vec<String>,
    /// Labels of data that must not leave unapproved; `p:*` matches every
    /// label starting `p:`.
    pub sensitive: Vec<String>,
    /// Labels of data that never leaves.
    pub secret: Vec<String>,
    /// Text that, found in a result, labels it.
    pub markers: Vec<Marker>,
}

/// A marker and the label a result holding it carries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// The text, matched case-sensitively.
    pub text: String,
    /// The label.
    pub label: String,
}

impl Default for Settings {
    fn default() -> Self {
        let strings = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect();
        Settings {
            outbound: strings(&[
                "send_email",
                "send_message",
                "post_message",
                "create_pull_request",
                "create_issue",
                "add_issue_comment",
                "push_files",
            ]),
            http_allowed_hosts: Vec::new(),
            untrusted: strings(&["untrusted"]),
            sensitive: strings(&["private", "secret", "pii", "customer:*"]),
            secret: strings(&["secret"]),
            markers: vec![
                Marker {
                    text: "CONFIDENTIAL".into(),
                    label: "private".into(),
                },
                Marker {
                    text: "SECRET".into(),
                    label: "secret".into(),
                },
            ],
        }
    }
}

/// The policy.
pub struct FlowGuard;

impl Policy for FlowGuard {
    type Settings = Settings;

    fn evaluate(s: &Settings, action: &Action, context: &Context) -> Decision {
        if action.kind.ends_with(".result") {
            return label_result(s, action);
        }
        if !is_outbound(s, action) {
            return Decision::allow("flow.not-outbound", "This action sends nothing outward.");
        }
        let carried = labels_in(&action.params);
        if let Some((path, label)) = carried.iter().find_map(|(path, labels)| {
            labels
                .iter()
                .find(|l| matches(&s.secret, l))
                .map(|l| (path, l))
        }) {
            return Decision::deny(
                "flow.secret-outbound",
                format!(
                    "The argument at `{path}` holds text labelled `{label}`{}; secret data never leaves.",
                    origin_of(context, label)
                ),
                95,
            );
        }
        let untrusted: Vec<&Label> = held(context, &s.untrusted);
        let sensitive: Vec<&Label> = held(context, &s.sensitive);
        if !untrusted.is_empty() && !sensitive.is_empty() {
            let mut reason = format!(
                "This session holds {} and {}: content an attacker may have written and data that must not leak; sending outward needs approval.",
                describe(&untrusted),
                describe(&sensitive)
            );
            if let Some((path, labels)) = carried
                .iter()
                .find(|(_, ls)| ls.iter().any(|l| matches(&s.sensitive, l)))
            {
                reason.push_str(&format!(
                    " The argument at `{path}` holds text labelled `{}`.",
                    labels.join("`, `")
                ));
            }
            return Decision::require_approval("flow.lethal-combination", reason, 85);
        }
        Decision::allow(
            "flow.clear",
            "Nothing this session read makes this send risky.",
        )
    }
}

/// A result: the labels of the markers its text holds.
fn label_result(s: &Settings, action: &Action) -> Decision {
    let mut labels: Vec<String> = s
        .markers
        .iter()
        .filter(|m| holds(&action.params, &m.text))
        .map(|m| m.label.clone())
        .collect();
    labels.sort();
    labels.dedup();
    if labels.is_empty() {
        return Decision::allow("flow.result", "This result holds no marker.");
    }
    let reason = format!(
        "The result is labelled `{}` by its markers.",
        labels.join("`, `")
    );
    Decision::allow("flow.result-labelled", reason).with_labels(labels)
}

fn holds(value: &Value, text: &str) -> bool {
    match value {
        Value::String(v) => v.contains(text),
        Value::Array(items) => items.iter().any(|v| holds(v, text)),
        Value::Object(map) => map.values().any(|v| holds(v, text)),
        _ => false,
    }
}

fn is_outbound(s: &Settings, action: &Action) -> bool {
    if action.kind == "http" {
        let post = action.name.starts_with("POST ") || action.name == "http.post";
        let host = action.target.split(':').next().unwrap_or_default();
        let allowed = s
            .http_allowed_hosts
            .iter()
            .any(|h| host == h || host.ends_with(&format!(".{h}")));
        return post && !allowed;
    }
    s.outbound.iter().any(|o| *o == action.name)
}

/// Whether `label` is one of `patterns` (`p:*` matching by prefix).
fn matches(patterns: &[String], label: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => label.starts_with(prefix),
        None => p == label,
    })
}

fn held<'a>(context: &'a Context, patterns: &[String]) -> Vec<&'a Label> {
    context
        .labels
        .iter()
        .filter(|l| matches(patterns, &l.name))
        .collect()
}

/// "`private` (from `read_text_file` on `/srv/a.txt`, decision 0190…)".
fn describe(labels: &[&Label]) -> String {
    labels
        .iter()
        .map(|l| format!("`{}` ({})", l.name, origin(l)))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// "from `read_text_file` on `/srv/a.txt`, decision 0190…".
fn origin(l: &Label) -> String {
    let o = &l.origin;
    let on = if o.target.is_empty() {
        String::new()
    } else {
        format!(" on `{}`", o.target)
    };
    format!("from `{}`{on}, decision {}", o.name, o.decision_id)
}

/// " (from `read_text_file`, decision 0190…)" when the session holds it.
fn origin_of(context: &Context, label: &str) -> String {
    context
        .label(label)
        .map(|l| format!(" ({})", origin(l)))
        .unwrap_or_default()
}

export_policy!(FlowGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use arbiter_sdk::Origin;
    use serde_json::json;

    fn label(name: &str, tool: &str) -> Label {
        Label {
            name: name.into(),
            origin: Origin {
                decision_id: format!("d-{tool}"),
                kind: "mcp".into(),
                name: tool.into(),
                target: String::new(),
                at_ms: 1,
            },
        }
    }

    fn send(text: &str) -> Action {
        Action::new("mcp", "send_email").with_params(json!({"to": "x@evil.example", "body": text}))
    }

    fn context(labels: &[Label]) -> Context {
        Context {
            labels: labels.to_vec(),
            ..Context::default()
        }
    }

    #[test]
    fn results_are_labelled_by_their_markers() {
        let s = Settings::default();
        let r = Action::new("mcp.result", "read_text_file").with_params(
            json!({"content": [{"type": "text", "text": "CONFIDENTIAL: q3 numbers"}]}),
        );
        let d = FlowGuard::evaluate(&s, &r, &Context::default());
        assert_eq!(
            (d.rule.as_str(), d.labels),
            ("flow.result-labelled", vec!["private".to_owned()])
        );
    }

    #[test]
    fn the_lethal_combination_needs_approval_and_names_both_origins() {
        let s = Settings::default();
        let held = [
            label("untrusted", "fetch"),
            label("private", "read_text_file"),
        ];
        let d = FlowGuard::evaluate(&s, &send("hello"), &context(&held));
        assert_eq!(d.rule, "flow.lethal-combination");
        assert!(
            d.reason.contains("`fetch`") && d.reason.contains("`read_text_file`"),
            "{}",
            d.reason
        );
        // Either one alone is not the combination.
        let d = FlowGuard::evaluate(&s, &send("hello"), &context(&held[..1]));
        assert_eq!(d.rule, "flow.clear");
        let d = FlowGuard::evaluate(&s, &Action::new("mcp", "read_text_file"), &context(&held));
        assert_eq!(d.rule, "flow.not-outbound");
    }

    #[test]
    fn secret_text_in_an_argument_is_denied_whatever_the_session_holds() {
        let s = Settings::default();
        arbiter_sdk::flow::answer_natively(|v| {
            if v.contains("launch codes") {
                vec!["secret".into()]
            } else {
                vec![]
            }
        });
        let held = [label("secret", "read_text_file")];
        let d = FlowGuard::evaluate(&s, &send("fwd: the launch codes are 1234"), &context(&held));
        assert_eq!(d.rule, "flow.secret-outbound");
        assert!(
            d.reason.contains("/body") && d.reason.contains("read_text_file"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn an_http_post_is_outward_unless_its_host_is_allowed() {
        let s = Settings {
            http_allowed_hosts: vec!["corp.example".into()],
            ..Settings::default()
        };
        let post = |host: &str| Action::new("http", "POST /upload").with_target(host);
        assert!(is_outbound(&s, &post("paste.evil.example")));
        assert!(!is_outbound(&s, &post("api.corp.example:443")));
        assert!(!is_outbound(
            &s,
            &Action::new("http", "GET /").with_target("evil.example")
        ));
    }
}
