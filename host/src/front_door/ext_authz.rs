//! The external authorizer: turns the original request of an HTTP gateway
//! into an action of kind `http`.
//!
//! Two protocols, one endpoint (`/v1/authz`, any method, any path below):
//! - **Envoy `ext_authz`** (HTTP service): Envoy sends the original method
//!   and headers, and the original path appended to the configured
//!   `path_prefix` (`/v1/authz`).
//! - **nginx `auth_request`**: nginx sends a subrequest; the original method
//!   and URI come in `X-Original-Method` and `X-Original-URI`
//!   (`proxy_set_header X-Original-URI $request_uri;`).
//!
//! The action: kind `http`, name `METHOD /path` (so routes can glob on
//! either), target the host, params `{"method", "path", "query", "headers"}`
//! with the configured headers only. Agent, user, environment and session
//! come from the configured headers.

use std::collections::BTreeMap;

use hyper::{HeaderMap, Method, Uri};
use serde_json::{Map, Value, json};

use crate::config::AuthorizerConfig;
use crate::decision::{Action, Context, History, Principal, Request};

/// The path prefix of the authorizer endpoint.
pub const PREFIX: &str = "/v1/authz";

/// Builds the decision request for the original request behind `method`,
/// `uri` and `headers`.
pub fn request_from(
    config: &AuthorizerConfig,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Request {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let method = header("x-original-method")
        .unwrap_or(method.as_str())
        .to_ascii_uppercase();
    let original = match header("x-original-uri") {
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
    let (path, query) = match original.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (original, String::new()),
    };
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .unwrap_or("")
        .to_owned();
    let forwarded: Map<String, Value> = config
        .forward_headers
        .iter()
        .filter_map(|name| {
            let name = name.to_ascii_lowercase();
            header(&name).map(|v| (name, Value::String(v.to_owned())))
        })
        .collect();
    let principal = |id_header: &str, roles_header: &str| {
        header(id_header).map(|id| Principal {
            id: id.to_owned(),
            roles: header(roles_header)
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
    Request {
        approval_id: None,
        action: Action {
            kind: "http".into(),
            name: format!("{method} {path}"),
            target: host,
            params: json!({
                "method": method,
                "path": path,
                "query": parse_query(&query),
                "headers": forwarded,
            }),
        },
        context: Context {
            agent: principal(&config.agent_header, &config.agent_roles_header).unwrap_or_default(),
            user: principal(&config.user_header, &config.user_roles_header),
            environment: header(&config.environment_header).unwrap_or("").to_owned(),
            session: header(&config.session_header).unwrap_or("").to_owned(),
            attributes: BTreeMap::new(),
        },
        history: History::default(),
    }
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

    #[test]
    fn envoy_style_path_after_prefix() {
        let uri: Uri = "/v1/authz/payments/transfer?amount=10&tag=a&tag=b%20c"
            .parse()
            .expect("uri");
        let r = request_from(
            &AuthorizerConfig::default(),
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
    fn nginx_style_original_headers_win() {
        let uri: Uri = "/v1/authz".parse().expect("uri");
        let r = request_from(
            &AuthorizerConfig::default(),
            &Method::GET,
            &uri,
            &headers(&[
                ("x-original-uri", "/admin/users?x=1"),
                ("x-original-method", "delete"),
                ("x-user-id", "alice"),
                ("x-environment", "prod"),
            ]),
        );
        assert_eq!(r.action.name, "DELETE /admin/users");
        assert_eq!(r.action.params["query"], json!({"x": "1"}));
        assert_eq!(r.context.user.map(|u| u.id), Some("alice".into()));
        assert_eq!(r.context.environment, "prod");
        let bare = request_from(
            &AuthorizerConfig::default(),
            &Method::GET,
            &uri,
            &HeaderMap::new(),
        );
        assert_eq!(bare.action.name, "GET /");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(decode("a%2Fb+c%zz%"), "a/b c%zz%");
        assert_eq!(decode("%E2%9C%93"), "✓");
        // A multi-byte character after `%` must not split it.
        assert_eq!(decode("%é1"), "%é1");
    }
}
