//! The external authorizer: turns the original request of an HTTP gateway
//! into an action of kind `http`.
//!
//! Two protocols, one endpoint (`/v1/authz`, any method, any path below):
//! - **Envoy `ext_authz`** (HTTP service): Envoy sends the original method
//!   and headers, and the original path appended to the configured
//!   `path_prefix` (`/v1/authz`).
//! - **nginx `auth_request`**: nginx sends a subrequest; the original method
//!   and URI come in headers that nginx itself sets
//!   (`proxy_set_header X-Original-URI $request_uri;`), read only when
//!   `[authorizer]` names them.
//!
//! The action: kind `http`, name `METHOD /path` (so routes can glob on
//! either), target the host, params `{"method", "path", "query", "headers"}`
//! with the configured headers only. The path is normalized first
//! ([`normalize_path`]), so `/%61dmin`, `//admin` and `/a/../admin` are all
//! `/admin` to a policy; a path that two servers could read two ways is
//! refused instead. Agent, user, environment and session come from headers
//! only when `[authorizer]` names them.

use std::collections::BTreeMap;

use hyper::{HeaderMap, Method, Uri};
use serde_json::{Map, Value, json};

use crate::config::AuthorizerConfig;
use crate::decision::traceparent::{HEADER, TraceParent};
use crate::decision::{Action, Context, History, Principal, Request};

/// The path prefix of the authorizer endpoint.
pub const PREFIX: &str = "/v1/authz";

/// The rule of a deny for a path two servers could read two ways.
pub const AMBIGUOUS_RULE: &str = "http.path-ambiguous";
/// The rule of a deny for a path that is not a valid one.
pub const INVALID_RULE: &str = "http.path-invalid";

/// Why a path cannot be decided on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    /// An encoded `/`, an encoded or raw `\`, an encoded NUL or a `;`:
    /// servers disagree on what they mean.
    #[error("the path holds {0}, which servers read in different ways")]
    Ambiguous(&'static str),
    /// Not a path: no leading `/`, a broken `%` escape, a control or
    /// non-ASCII character.
    #[error("the path is not valid: {0}")]
    Invalid(&'static str),
}

impl PathProblem {
    /// The rule a deny for this problem carries.
    pub fn rule(&self) -> &'static str {
        match self {
            PathProblem::Ambiguous(_) => AMBIGUOUS_RULE,
            PathProblem::Invalid(_) => INVALID_RULE,
        }
    }
}

/// The original request, as an action, and what was wrong with its path.
#[derive(Debug)]
pub struct Original {
    /// The request to decide.
    pub request: Request,
    /// Set when the path cannot be decided on: the request must be denied.
    pub problem: Option<PathProblem>,
}

/// The value of header `name`, trimmed; `None` when absent, empty or not
/// text.
fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Builds the decision request for the original request behind `method`,
/// `uri` and `headers`.
pub fn request_from(
    config: &AuthorizerConfig,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Original {
    let header = |name: &str| header_value(headers, name);
    let trusted = |name: &Option<String>| name.as_deref().and_then(header);
    let method = trusted(&config.original_method_header).unwrap_or(method.as_str());
    let original = match trusted(&config.original_uri_header) {
        Some(u) => u.to_owned(),
        None => {
            let rest = uri.path().strip_prefix(PREFIX).unwrap_or("");
            let path = if rest.is_empty() { "/" } else { rest };
            match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            }
        }
    };
    let host = trusted(&config.host_header).or_else(|| header("host"));
    request_for(config, method, &original, host.unwrap_or(""), headers)
}

/// Builds the decision request for an original request given as its
/// method, its path with query (`original`), its host and its headers:
/// what Envoy's gRPC `Check` carries in its attributes.
pub fn request_for(
    config: &AuthorizerConfig,
    method: &str,
    original: &str,
    host: &str,
    headers: &HeaderMap,
) -> Original {
    let header = |name: &str| header_value(headers, name);
    let method = method.to_ascii_uppercase();
    // A fragment never reaches a server; a proxy that sends one is odd,
    // and the path before it is what counts.
    let original = original.split('#').next().unwrap_or_default();
    let (raw_path, query) = original.split_once('?').unwrap_or((original, ""));
    let (path, problem) = match normalize_path(raw_path) {
        Ok(p) => (p, None),
        // The raw path, shown (bounded) in the log beside the deny.
        Err(e) => (raw_path.chars().take(2048).collect(), Some(e)),
    };
    let host = host.to_owned();
    let forwarded: Map<String, Value> = config
        .forward_headers
        .iter()
        .filter_map(|name| {
            let name = name.to_ascii_lowercase();
            header(&name).map(|v| (name, Value::String(v.to_owned())))
        })
        .collect();
    let request = Request {
        approval_id: None,
        action: Action {
            kind: "http".into(),
            name: format!("{method} {path}"),
            target: host,
            params: json!({
                "method": method,
                "path": path,
                "query": parse_query(query),
                "headers": forwarded,
            }),
        },
        context: context_from(config, headers),
        history: History::default(),
        trace: header(HEADER).and_then(TraceParent::parse),
    };
    Original { request, problem }
}

/// Agent, user, environment and session from the headers `config` names;
/// empty where it names none.
pub fn context_from(config: &AuthorizerConfig, headers: &HeaderMap) -> Context {
    let trusted = |name: &Option<String>| name.as_deref().and_then(|n| header_value(headers, n));
    let principal = |id_header: &Option<String>, roles_header: &Option<String>| {
        trusted(id_header).map(|id| Principal {
            id: id.to_owned(),
            roles: trusted(roles_header)
                .map(|r| {
                    r.split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    };
    Context {
        agent: principal(&config.agent_header, &config.agent_roles_header).unwrap_or_default(),
        user: principal(&config.user_header, &config.user_roles_header),
        environment: trusted(&config.environment_header).unwrap_or("").to_owned(),
        session: trusted(&config.session_header).unwrap_or("").to_owned(),
        attributes: BTreeMap::new(),
    }
}

/// The path as a server that follows RFC 3986 reads it: escapes of
/// unreserved characters decoded, other escapes in upper case, repeated
/// slashes collapsed, `.` and `..` segments resolved (never above the
/// root). Normalizing a normalized path changes nothing.
///
/// # Errors
/// [`PathProblem::Ambiguous`] for what servers read differently (an
/// encoded `/` or NUL, a `\` raw or encoded, a `;`), and
/// [`PathProblem::Invalid`] for what is not a path.
pub fn normalize_path(raw: &str) -> Result<String, PathProblem> {
    if !raw.starts_with('/') {
        return Err(PathProblem::Invalid("it does not start with `/`"));
    }
    let b = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).and_then(|&h| hex(h)),
                    b.get(i + 2).and_then(|&l| hex(l)),
                ) else {
                    return Err(PathProblem::Invalid("a `%` not followed by two hex digits"));
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' => return Err(PathProblem::Ambiguous("an encoded `/` (%2F)")),
                    b'\\' => return Err(PathProblem::Ambiguous("an encoded `\\` (%5C)")),
                    0 => return Err(PathProblem::Ambiguous("an encoded NUL (%00)")),
                    _ if unreserved(byte) => decoded.push(char::from(byte)),
                    _ => {
                        decoded.push('%');
                        decoded.push(char::from(HEX[usize::from(hi)]));
                        decoded.push(char::from(HEX[usize::from(lo)]));
                    }
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathProblem::Ambiguous("a `\\`")),
            b';' => return Err(PathProblem::Ambiguous("a `;` (path parameters)")),
            c if !(0x21..0x7f).contains(&c) => {
                return Err(PathProblem::Invalid(
                    "a space, control or non-ASCII character",
                ));
            }
            c => decoded.push(char::from(c)),
        }
        i += 1;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    // A path that ends in a directory (`/`, `/.`, `/..`) keeps its
    // trailing slash, as RFC 3986's remove_dot_segments does.
    let mut trailing = false;
    for (n, segment) in segments.into_iter().enumerate() {
        match segment {
            "" | "." => trailing = n == last,
            ".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if trailing || out.is_empty() {
        path.push('/');
    }
    Ok(path)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// `a=1&b=x%20y&a=2` → `{"a": ["1", "2"], "b": "x y"}`.
fn parse_query(query: &str) -> Value {
    let mut out: Map<String, Value> = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), Value::String(decode(v)));
        match out.get_mut(&k) {
            Some(Value::Array(list)) => list.push(v),
            Some(existing) => *existing = Value::Array(vec![existing.take(), v]),
            None => {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

/// Percent-decoding, with `+` as a space; invalid escapes stay as they are.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    fn nginx() -> AuthorizerConfig {
        AuthorizerConfig {
            original_uri_header: Some("x-original-uri".into()),
            original_method_header: Some("x-original-method".into()),
            agent_header: Some("x-agent-id".into()),
            agent_roles_header: Some("x-agent-roles".into()),
            user_header: Some("x-user-id".into()),
            environment_header: Some("x-environment".into()),
            ..AuthorizerConfig::default()
        }
    }

    #[test]
    fn envoy_style_path_after_prefix() {
        let uri: Uri = "/v1/authz/payments/transfer?amount=10&tag=a&tag=b%20c"
            .parse()
            .expect("uri");
        let o = request_from(
            &nginx(),
            &Method::POST,
            &uri,
            &headers(&[
                ("host", "api.example"),
                ("x-agent-id", "bot"),
                ("x-agent-roles", "a, b"),
                ("user-agent", "t"),
                ("cookie", "secret"),
            ]),
        );
        assert_eq!(o.problem, None);
        let r = o.request;
        assert_eq!(r.action.kind, "http");
        assert_eq!(r.action.name, "POST /payments/transfer");
        assert_eq!(r.action.target, "api.example");
        assert_eq!(
            r.action.params,
            json!({"method": "POST", "path": "/payments/transfer",
                   "query": {"amount": "10", "tag": ["a", "b c"]},
                   "headers": {"user-agent": "t"}})
        );
        assert_eq!(
            r.context.agent,
            Principal {
                id: "bot".into(),
                roles: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(r.context.user, None);
    }

    #[test]
    fn original_headers_count_only_when_configured() {
        let uri: Uri = "/v1/authz/admin/users".parse().expect("uri");
        let sent = headers(&[
            ("x-original-uri", "/public?x=1"),
            ("x-original-method", "get"),
            ("x-forwarded-host", "public.example"),
            ("host", "api.example"),
            ("x-agent-id", "admin-bot"),
            ("x-user-id", "alice"),
            ("x-environment", "prod"),
        ]);
        // By default, nothing the client sent in a header is trusted.
        let r = request_from(&AuthorizerConfig::default(), &Method::DELETE, &uri, &sent).request;
        assert_eq!(r.action.name, "DELETE /admin/users");
        assert_eq!(r.action.target, "api.example");
        assert_eq!(r.context.agent.id, "");
        assert_eq!(r.context.user, None);
        assert_eq!(r.context.environment, "");
        // As configured for nginx, which sets them itself.
        let bare: Uri = "/v1/authz".parse().expect("uri");
        let r = request_from(&nginx(), &Method::GET, &bare, &sent).request;
        assert_eq!(r.action.name, "GET /public");
        assert_eq!(r.action.params["query"], json!({"x": "1"}));
        assert_eq!(r.context.user.map(|u| u.id), Some("alice".into()));
        assert_eq!(r.context.environment, "prod");
        let r = request_from(&nginx(), &Method::GET, &bare, &HeaderMap::new()).request;
        assert_eq!(r.action.name, "GET /");
    }

    #[test]
    fn paths_are_normalized_and_ambiguous_ones_refused() {
        for (raw, normal) in [
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("//admin", "/admin"),
            ("/a/../admin", "/admin"),
            ("/a/./b/../../admin/", "/admin/"),
            ("/../../admin", "/admin"),
            ("/%2e%2E/admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/x/..", "/"),
            ("/", "/"),
            ("/a%3fb%20c", "/a%3Fb%20c"),
            ("/a~b_c-d.e", "/a~b_c-d.e"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(normal), "{raw}");
            assert_eq!(normalize_path(normal).as_deref(), Ok(normal), "{normal}");
        }
        for raw in [
            "/a%2Fb",
            "/a%2fb",
            "/a\\b",
            "/a%5cb",
            "/a%00b",
            "/admin;x=1",
        ] {
            assert!(
                matches!(normalize_path(raw), Err(PathProblem::Ambiguous(_))),
                "{raw}"
            );
        }
        for raw in ["admin", "", "*", "/a%zz", "/a%4", "/a b", "/é"] {
            assert!(
                matches!(normalize_path(raw), Err(PathProblem::Invalid(_))),
                "{raw}"
            );
        }
        let uri: Uri = "/v1/authz/a%2Fb".parse().expect("uri");
        let o = request_from(&nginx(), &Method::GET, &uri, &HeaderMap::new());
        assert_eq!(o.problem.map(|p| p.rule()), Some(AMBIGUOUS_RULE));
        assert_eq!(o.request.action.name, "GET /a%2Fb");
    }

    #[test]
    fn a_trusted_header_must_be_one_the_proxy_sets() {
        use crate::config::Config;
        for (text, problem) in [
            ("agent_header = \"authorization\"", "carries something else"),
            (
                "agent_header = \"x-arbiter-token\"",
                "carries something else",
            ),
            ("agent_header = \"bad header\"", "not a header name"),
            (
                "agent_header = \"x-a\"\nuser_header = \"X-A\"",
                "named for two things",
            ),
        ] {
            let e = Config::parse(&format!("[authorizer]\n{text}\n"), "t")
                .expect_err(text)
                .to_string();
            assert!(e.contains(problem), "{text}: {e}");
        }
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(decode("a%2Fb+c%zz%"), "a/b c%zz%");
        assert_eq!(decode("%E2%9C%93"), "✓");
        // A multi-byte character after `%` must not split it.
        assert_eq!(decode("%é1"), "%é1");
    }
}
