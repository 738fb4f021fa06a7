//! The admin plane: its own listener (a Unix socket, mode 0600, by
//! default), its own credentials (named operators with roles), and every
//! endpoint that reads or changes what Arbiter does. The decision plane
//! ([`super::http`]) serves none of these paths. Handlers are one file per
//! subject; each change is made as the authenticated operator, whose name
//! is the actor recorded, never a field of the body.
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET | `/v1/whoami` | any | the operator the credential names, and its roles |
//! | GET | `/v1/policies` | any | each policy: version, routes, limits, load state, last error, versions kept |
//! | POST | `/v1/policies/{name}/rollback` | operator | serve an earlier version at once (body: optional `{"version": ...}`) |
//! | PUT | `/v1/policies/{name}/mode` | operator | `{"mode": "monitor" \| "soft-enforce" \| "enforce"}` |
//! | POST | `/v1/policies/{name}/promote` | operator | `{"candidate": ID}` becomes the serving version |
//! | POST | `/v1/reload` | operator | reload the configuration and every policy file (as SIGHUP) |
//! | GET | `/v1/ab/{name}` | any | divergence between the serving version and each candidate |
//! | GET | `/v1/baseline` | any | what monitor mode observed (`?agent=ID` for one) |
//! | GET | `/v1/agents` | any | each agent's counters, suspension and breaker (`?agent=ID`) |
//! | POST | `/v1/agents/{id}/suspend` | operator | `{"reason": ...}`: deny every action of the agent |
//! | POST | `/v1/agents/{id}/resume` | operator | lift the suspension |
//! | GET | `/v1/approvals` | any | every approval, or `?status=pending` |
//! | GET | `/v1/approvals/{id}` | any | one approval; `?wait=30s` waits for an answer |
//! | POST | `/v1/approvals/{id}/approve`, `/decline` | approver | `{"reason": ...}` |
//! | GET | `/v1/mcp/tools` | any | every pinned MCP tool definition, and the changes waiting |
//! | POST | `/v1/mcp/tools/{server}/{tool}/accept` | operator | accept a changed tool's new definition |
//! | GET | `/healthz`, `/readyz`, `/metrics` | none | as on the decision plane |

pub mod agents;
pub mod approvals;
pub mod mcp;
pub mod policies;
pub mod rollout;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use serde_json::json;

use super::auth::require;
use super::error::FrontDoorError;
use super::http::{AppState, Body, Service, check_json, health, json_response, read_body, respond};
use super::wire;
use crate::config::Role;
use crate::identity::Operator;

/// The path prefixes only the admin plane serves.
const ADMIN_PREFIXES: &[&str] = &[
    "/v1/whoami",
    "/console",
    "/v1/policies",
    "/v1/reload",
    "/v1/ab/",
    "/v1/baseline",
    "/v1/agents",
    "/v1/approvals",
    "/v1/mcp/tools",
];

/// Whether `path` is one of the admin plane's.
pub fn is_admin_path(path: &str) -> bool {
    ADMIN_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Handles one request on the admin listener. Never fails: every problem
/// is a response.
pub async fn serve(
    state: Arc<AppState>,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let service = state.service.load_full();
    let (endpoint, result) = match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" => health(&state, req.method(), &path),
        _ => match service.credentials.operator(req.headers()).await {
            Ok(op) => route(&state, &service, req, &path, &op).await,
            Err(e) => ("admin", Err(e)),
        },
    };
    Ok(respond(&state, endpoint, result))
}

async fn route(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    path: &str,
    op: &Operator,
) -> (&'static str, Result<Response<Body>, FrontDoorError>) {
    let method = req.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    let get_only = |endpoint| {
        (
            endpoint,
            Err(FrontDoorError::MethodNotAllowed { allow: "GET" }),
        )
    };
    let post_only = |endpoint| {
        (
            endpoint,
            Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
        )
    };
    let not_found = |p: &str| {
        (
            "other",
            Err(FrontDoorError::NotFound(p.chars().take(200).collect())),
        )
    };
    // Reads are open to every role; each change names the role it needs.
    let as_role = |role| require(op, role);
    match path {
        "/v1/whoami" if read => ("whoami", Ok(json_response(StatusCode::OK, op))),
        "/v1/whoami" => get_only("whoami"),
        "/v1/policies" if read => ("policies", Ok(policies::policies(state, service))),
        "/v1/policies" => get_only("policies"),
        "/v1/reload" if method == Method::POST => (
            "reload",
            match as_role(Role::Operator) {
                Ok(()) => reload(state, req, op).await,
                Err(e) => Err(e),
            },
        ),
        "/v1/reload" => post_only("reload"),
        p if p.starts_with("/v1/policies/") => {
            let rest = &p["/v1/policies/".len()..];
            let Some((name, verb)) = rest.rsplit_once('/') else {
                return not_found(p);
            };
            let name = name.to_owned();
            let endpoint = match verb {
                "rollback" => "rollback",
                "mode" => "mode",
                "promote" => "promote",
                _ => return not_found(p),
            };
            let allowed = if verb == "mode" {
                Method::PUT
            } else {
                Method::POST
            };
            if method != allowed {
                let allow = if verb == "mode" { "PUT" } else { "POST" };
                return (endpoint, Err(FrontDoorError::MethodNotAllowed { allow }));
            }
            if let Err(e) = as_role(Role::Operator) {
                return (endpoint, Err(e));
            }
            let result = match verb {
                "rollback" => policies::rollback(state, service, req, name, op).await,
                "mode" => rollout::set_mode(state, service, req, name, op).await,
                _ => rollout::promote(state, service, req, name, op).await,
            };
            (endpoint, result)
        }
        p if p.starts_with("/v1/ab/") && read => (
            "ab",
            rollout::divergence(state, service, &p["/v1/ab/".len()..]),
        ),
        p if p.starts_with("/v1/ab/") => get_only("ab"),
        "/v1/baseline" if read => ("baseline", rollout::baseline(state, req.uri().query())),
        "/v1/baseline" => get_only("baseline"),
        "/v1/agents" if read => ("agents", agents::agents(state, req.uri().query())),
        "/v1/agents" => get_only("agents"),
        p if p.starts_with("/v1/agents/") => {
            let rest = &p["/v1/agents/".len()..];
            match rest.rsplit_once('/') {
                Some((id, change @ ("suspend" | "resume"))) if method == Method::POST => {
                    let (id, suspend) = (id.to_owned(), change == "suspend");
                    let result = match as_role(Role::Operator) {
                        Ok(()) => agents::agent_change(state, service, req, id, suspend, op).await,
                        Err(e) => Err(e),
                    };
                    ("agents", result)
                }
                Some((_, "suspend" | "resume")) => post_only("agents"),
                _ => not_found(p),
            }
        }
        "/v1/approvals" if read => (
            "approvals",
            approvals::approvals_list(state, req.uri().query()),
        ),
        "/v1/approvals" => get_only("approvals"),
        p if p.starts_with("/v1/approvals/") => {
            let rest = &p["/v1/approvals/".len()..];
            match rest.split_once('/') {
                Some((id, verb @ ("approve" | "decline"))) if method == Method::POST => {
                    let (id, granted) = (id.to_owned(), verb == "approve");
                    let result = match as_role(Role::Approver) {
                        Ok(()) => {
                            approvals::approval_answer(state, service, req, id, granted, op).await
                        }
                        Err(e) => Err(e),
                    };
                    ("approvals", result)
                }
                Some((_, "approve" | "decline")) => post_only("approvals"),
                None if read => {
                    let id = rest.to_owned();
                    let result = approvals::approval_wait(state, service, &req, &id)
                        .await
                        .map(|a| json_response(StatusCode::OK, &a));
                    ("approvals", result)
                }
                None => get_only("approvals"),
                _ => not_found(p),
            }
        }
        "/v1/mcp/tools" if read => ("mcp-tools", mcp::list(state)),
        "/v1/mcp/tools" => get_only("mcp-tools"),
        p if p.starts_with("/v1/mcp/tools/") => {
            let parts: Vec<&str> = p["/v1/mcp/tools/".len()..].split('/').collect();
            match parts.as_slice() {
                [server, tool, "accept"] if method == Method::POST => {
                    let (server, tool) = ((*server).to_owned(), (*tool).to_owned());
                    let result = match as_role(Role::Operator) {
                        Ok(()) => mcp::accept_tool(state, service, req, server, tool, op).await,
                        Err(e) => Err(e),
                    };
                    ("mcp-tools", result)
                }
                [_, _, "accept"] => post_only("mcp-tools"),
                _ => not_found(p),
            }
        }
        other => not_found(other),
    }
}

/// `POST /v1/reload`: the configuration and every policy file, reloaded
/// by the worker as SIGHUP would, recorded as this operator's.
async fn reload(
    state: &AppState,
    req: HttpRequest<Incoming>,
    op: &Operator,
) -> Result<Response<Body>, FrontDoorError> {
    // No body is taken; one sent is refused rather than ignored.
    let service = state.service.load_full();
    if admin_body::<serde_json::Value>(&service, req)
        .await?
        .is_some()
    {
        return Err(query_error("a reload takes no body".into()));
    }
    if !state.reloader.reload(&op.name) {
        return Err(FrontDoorError::NotReady);
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"reload": "requested", "by": op.name}),
    ))
}

/// Reads an admin body: `None` when empty. The caller has already
/// authenticated the operator.
pub(crate) async fn admin_body<T: serde::de::DeserializeOwned>(
    service: &Service,
    req: HttpRequest<Incoming>,
) -> Result<Option<T>, FrontDoorError> {
    let has_type = req.headers().contains_key(CONTENT_TYPE);
    if has_type {
        check_json(req.headers())?;
    }
    let bytes = read_body(req, &service.config.server).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(None)
    } else if has_type {
        wire::parse(&bytes)
            .map(Some)
            .map_err(FrontDoorError::BadRequest)
    } else {
        Err(FrontDoorError::UnsupportedMediaType(String::new()))
    }
}

/// A body an endpoint cannot do without.
pub(crate) fn required<T>(body: Option<T>, example: &'static str) -> Result<T, FrontDoorError> {
    body.ok_or_else(|| {
        FrontDoorError::BadRequest(wire::WireError {
            path: String::new(),
            message: format!("a body is required: {example}"),
            line: 1,
            column: 1,
        })
    })
}

/// A bad query, as a 400 naming what is wrong.
pub(crate) fn query_error(message: String) -> FrontDoorError {
    FrontDoorError::BadRequest(wire::WireError {
        path: String::new(),
        message,
        line: 1,
        column: 1,
    })
}

/// Decodes `%XX` escapes, and `+` as a space in a query value.
pub(crate) fn percent_decode(v: &str, plus_is_space: bool) -> Result<String, FrontDoorError> {
    let bad = || {
        FrontDoorError::BadRequest(wire::WireError {
            path: "agent".into(),
            message: "the query value is not valid percent-encoded UTF-8".into(),
            line: 1,
            column: 1,
        })
    };
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}
