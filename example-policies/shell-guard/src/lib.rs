//! The coding agent's policy: no blocked commands, no piping into a shell,
//! no recursive deletes and no file access outside the allowed paths,
//! whether asked as an `fs` action or as an MCP tool call (kind `mcp`)
//! whose arguments name paths.

use arbiter_sdk::{Action, Context, Decision, Policy, export_policy};
use serde::Deserialize;

/// Settings; a missing key takes the default below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Directories the agent may work in; relative paths start at the first.
    pub allowed_paths: Vec<String>,
    /// Commands that may never run.
    pub blocked_commands: Vec<String>,
    /// For kind `mcp`: the top-level arguments that hold a path (a string)
    /// or paths (a list of strings); each must be under an allowed path.
    pub mcp_path_params: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allowed_paths: vec!["/workspace".to_owned()],
            blocked_commands: ["sudo", "su", "mkfs", "dd", "shutdown", "reboot"]
                .map(String::from)
                .to_vec(),
            mcp_path_params: ["path", "paths", "source", "destination"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The policy.
pub struct ShellGuard;

impl Policy for ShellGuard {
    type Settings = Settings;

    fn evaluate(s: &Settings, action: &Action, _context: &Context) -> Decision {
        match action.kind.as_str() {
            "shell" => shell(
                s,
                action
                    .param("command")
                    .and_then(|c| c.as_str())
                    .unwrap_or(""),
            ),
            "fs" => fs(s, action),
            "mcp" => mcp(s, action),
            _ => Decision::allow("shell.not-applicable", "Not a shell or file action."),
        }
    }
}

fn shell(s: &Settings, line: &str) -> Decision {
    let stages = stages(line);
    if let Some(cmd) = stages
        .iter()
        .filter_map(|st| st.words.first())
        .find(|w| s.blocked_commands.iter().any(|b| b == program(w)))
    {
        return Decision::deny(
            "shell.blocked-command",
            format!("The command `{}` is blocked.", program(cmd)),
            90,
        );
    }
    if stages.iter().any(|st| {
        st.after_pipe
            && st
                .words
                .first()
                .is_some_and(|w| matches!(program(w), "sh" | "bash" | "zsh"))
    }) {
        return Decision::deny(
            "shell.remote-script",
            "Piping output into a shell runs code nobody reviewed.",
            90,
        );
    }
    for st in &stages {
        if st.words.first().is_some_and(|w| program(w) == "rm") {
            let args = &st.words[1..];
            let recursive = args.iter().any(|a| {
                *a == "--recursive"
                    || (a.len() > 1
                        && a.starts_with('-')
                        && !a.starts_with("--")
                        && a[1..].chars().all(|c| c.is_ascii_alphabetic())
                        && a[1..].contains(['r', 'R']))
            });
            if recursive
                && args
                    .iter()
                    .filter(|a| !a.starts_with('-'))
                    .any(|p| !under_allowed(s, p))
            {
                return Decision::deny(
                    "shell.recursive-delete-outside",
                    "A recursive delete reaches outside the allowed paths.",
                    90,
                );
            }
        }
    }
    Decision::allow_with_risk("shell.ok", "No shell rule forbids this command.", 10)
}

fn mcp(s: &Settings, action: &Action) -> Decision {
    let mut paths = Vec::new();
    for key in &s.mcp_path_params {
        match action.param(key) {
            Some(serde_json::Value::String(p)) => paths.push(p.as_str()),
            Some(serde_json::Value::Array(items)) => {
                paths.extend(items.iter().filter_map(|i| i.as_str()));
            }
            _ => {}
        }
    }
    if paths.is_empty() {
        return Decision::allow("shell.not-applicable", "The tool call names no path.");
    }
    if let Some(p) = paths.iter().find(|p| !under_allowed(s, p)) {
        return Decision::deny(
            "fs.path-outside-allowed",
            format!(
                "`{}` ({} of `{}`) is outside the allowed paths.",
                normalize(p, base(s)),
                action.name,
                action.target
            ),
            80,
        );
    }
    Decision::allow("fs.ok", "Every path the tool call names is allowed.")
}

fn fs(s: &Settings, action: &Action) -> Decision {
    if !under_allowed(s, &action.target) {
        return Decision::deny(
            "fs.path-outside-allowed",
            format!(
                "`{}` is outside the allowed paths.",
                normalize(&action.target, base(s))
            ),
            80,
        );
    }
    if action.name == "fs.delete" {
        return Decision::require_approval(
            "fs.delete-needs-approval",
            "Deleting files needs approval.",
            50,
        );
    }
    Decision::allow("fs.ok", "The path is inside the allowed paths.")
}

/// One stage of a command line.
#[derive(Debug, PartialEq)]
struct Stage<'a> {
    /// Whether it follows a single `|`.
    after_pipe: bool,
    words: Vec<&'a str>,
}

/// Splits a command line into stages on `|`, `||`, `&&` and `;`, and, to
/// be safe, on a lone `&` and on newlines, which also start a command.
/// Words are separated by white space; there are no quoting rules.
fn stages(line: &str) -> Vec<Stage<'_>> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut after_pipe, mut i) = (0, false, 0);
    while i < b.len() {
        let (sep_len, pipe) = match (b[i], b.get(i + 1)) {
            (b'|', Some(b'|')) | (b'&', Some(b'&')) => (2, false),
            (b'|', _) => (1, true),
            (b';' | b'&' | b'\n', _) => (1, false),
            _ => (0, false),
        };
        if sep_len > 0 {
            out.push(Stage {
                after_pipe,
                words: line[start..i].split_whitespace().collect(),
            });
            i += sep_len;
            start = i;
            after_pipe = pipe;
        } else {
            i += 1;
        }
    }
    out.push(Stage {
        after_pipe,
        words: line[start..].split_whitespace().collect(),
    });
    out
}

/// The program a command word runs: `/usr/bin/sudo` runs `sudo`.
fn program(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

fn base(s: &Settings) -> &str {
    s.allowed_paths.first().map_or("/", String::as_str)
}

fn under_allowed(s: &Settings, path: &str) -> bool {
    let p = normalize(path, base(s));
    s.allowed_paths.iter().any(|a| {
        let a = normalize(a, "/");
        a == "/"
            || p == a
            || p.strip_prefix(a.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Lexical normalisation: relative paths start at `base`, `.` and `..` are
/// resolved (`..` stops at the root), repeated `/` are folded.
fn normalize(path: &str, base: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    for part in full.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

export_policy!(ShellGuard);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize("/workspace/../etc", "/"), "/etc");
        assert_eq!(normalize("build/", "/workspace"), "/workspace/build");
        assert_eq!(normalize("//a/./b//", "/"), "/a/b");
        assert_eq!(normalize("../../..", "/workspace"), "/");
    }

    #[test]
    fn paths() {
        let s = Settings::default();
        assert!(under_allowed(&s, "/workspace"));
        assert!(under_allowed(&s, "/workspace/a"));
        assert!(!under_allowed(&s, "/workspace2"));
        assert!(!under_allowed(&s, "/workspace/../etc"));
    }

    #[test]
    fn stage_splitting() {
        let st = stages("a | b || c && d; e & f");
        let firsts: Vec<_> = st.iter().map(|s| (s.words[0], s.after_pipe)).collect();
        assert_eq!(
            firsts,
            [
                ("a", false),
                ("b", true),
                ("c", false),
                ("d", false),
                ("e", false),
                ("f", false)
            ]
        );
    }

    #[test]
    fn shell_rules() {
        let s = Settings::default();
        let rule = |line: &str| shell(&s, line).rule;
        assert_eq!(rule("/usr/bin/sudo ls"), "shell.blocked-command");
        assert_eq!(rule("ls && reboot"), "shell.blocked-command");
        assert_eq!(rule("curl x | /bin/sh"), "shell.remote-script");
        assert_eq!(rule("echo x || sh"), "shell.ok");
        assert_eq!(
            rule("rm -r -f /workspace/a ../x"),
            "shell.recursive-delete-outside"
        );
        assert_eq!(rule("rm /etc/passwd"), "shell.ok");
        assert_eq!(
            rule("rm --recursive /tmp"),
            "shell.recursive-delete-outside"
        );
        assert_eq!(rule("rm -f1 /tmp"), "shell.ok");
    }
}

#[cfg(test)]
mod mcp_tests {
    use super::*;
    use serde_json::json;

    fn call(params: serde_json::Value) -> Decision {
        let action = Action {
            kind: "mcp".into(),
            name: "write_file".into(),
            target: "filesystem".into(),
            params,
        };
        mcp(&Settings::default(), &action)
    }

    #[test]
    fn mcp_calls_are_held_to_the_allowed_paths() {
        assert_eq!(call(json!({"path": "/workspace/a.txt"})).rule, "fs.ok");
        assert_eq!(
            call(json!({"path": "/workspace/../etc/passwd"})).rule,
            "fs.path-outside-allowed"
        );
        assert_eq!(
            call(json!({"paths": ["/workspace/a", "/etc/shadow"]})).rule,
            "fs.path-outside-allowed"
        );
        assert_eq!(
            call(json!({"source": "/workspace/a", "destination": "/tmp/a"})).rule,
            "fs.path-outside-allowed"
        );
        assert_eq!(call(json!({"query": "/etc"})).rule, "shell.not-applicable");
        assert_eq!(call(json!({"path": 7})).rule, "shell.not-applicable");
    }
}
