//! The HTTP front door: one hyper service that checks, parses and dispatches
//! every request. It answers decide, authz and health itself, each decision
//! through [`Arbiter::try_decide_async`]; the admin handlers are in
//! [`super::admin`], one file per subject. Endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/decide` | the wire format of `shared/DESIGN.md` in, the decision out |
//! | any | `/v1/authz`, `/v1/authz/...` | external authorizer (Envoy `ext_authz`, nginx `auth_request`): 200 or 403 |
//! | GET | `/v1/policies` | each policy: version, routes, limits, load state, last error, versions kept |
//! | POST | `/v1/policies/{name}/rollback` | admin: serve an earlier version at once (body: optional `{"version": ...}`) |
//! | PUT | `/v1/policies/{name}/mode` | admin: `{"mode": "monitor" \| "soft-enforce" \| "enforce"}`, from the next decision |
//! | POST | `/v1/policies/{name}/promote` | admin: `{"candidate": ID}` becomes the serving version, through the load pipeline |
//! | GET | `/v1/ab/{name}` | divergence between the policy's serving version and each candidate |
//! | GET | `/v1/baseline` | what monitor mode observed, per agent and action (`?agent=ID` for one) |
//! | GET | `/v1/agents` | each agent's counters, suspension and breaker (`?agent=ID` for one) |
//! | POST | `/v1/agents/{id}/suspend` | admin: `{"reason": ..., "by": ...}`: deny every action of the agent until resumed |
//! | POST | `/v1/agents/{id}/resume` | admin: `{"by": ...}` (optional): lift the suspension |
//! | GET | `/v1/approvals` | admin: every approval, or `?status=pending` |
//! | GET | `/v1/approvals/{id}` | one approval; `?wait=30s` waits for an answer |
//! | POST | `/v1/approvals/{id}/approve`, `/decline` | admin: `{"reason": ..., "by": ...}` |
//! | GET | `/v1/mcp/tools` | every pinned MCP tool definition, and the changes waiting |
//! | POST | `/v1/mcp/tools/{server}/observe` | `{"tools": [...]}` from a remote gateway's listing: pins them, answers the definitions to show |
//! | POST | `/v1/mcp/tools/{server}/{tool}/accept` | admin: `{"by": ...}` (optional): accept a changed tool's new definition |
//! | POST, GET, DELETE | `/mcp/{server}` | the MCP gateway: Streamable HTTP proxied to the server's `upstream` ([`crate::mcp::http`]) |
//! | GET | `/healthz` | alive |
//! | GET | `/readyz` | 200 once every configured policy has loaded, else 503 |
//! | GET | `/metrics` | Prometheus text format |
//!
//! Bad input is refused with a JSON body naming the problem
//! ([`FrontDoorError`]); nothing a client sends can panic the handler.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::auth::Tokens;
use super::error::FrontDoorError;
use super::{admin, ext_authz, wire};
use crate::arbiter::Arbiter;
use crate::config::{Config, McpServerConfig};
use crate::decision::{Context, Decision, History, Outcome, Request};
use crate::evidence::metrics::Metrics;
use crate::reload::Registry;

/// The header carrying the decision id on every decision response.
pub const DECISION_ID_HEADER: &str = "x-arbiter-decision-id";

/// Options for embedders and tests that the `arbiter` binary never sets.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpOptions {
    /// Accept `history` from the caller instead of refusing it. Only for
    /// tests that replay history-dependent cases; a production caller must
    /// never be able to set its own counters.
    pub accept_caller_history: bool,
}

/// Where loading stands.
pub enum LoadState {
    /// Every policy loaded; the registry serves them and takes reloads.
    Ready(Arc<Registry>),
    /// Loading failed; the server will stop.
    Failed(String),
}

/// What the front door takes from the configuration: swapped whole when
/// the configuration reloads, read once per request.
pub struct Service {
    pub(crate) config: Arc<Config>,
    pub(crate) tokens: Tokens,
    /// The MCP servers proxied on `/mcp/{name}`: those with an upstream.
    pub(crate) mcp: BTreeMap<String, Arc<McpServerConfig>>,
}

impl Service {
    /// The front door's view of `config`.
    pub fn new(config: Arc<Config>) -> Self {
        let mcp = config
            .mcp
            .servers
            .iter()
            .filter(|s| s.upstream.is_some())
            .map(|s| (s.name.clone(), Arc::new(s.clone())))
            .collect();
        Service {
            tokens: Tokens::from_config(&config.auth),
            config,
            mcp,
        }
    }
}

/// What every request may need: shared, read-mostly.
pub struct AppState {
    /// Set once the first load finishes.
    pub(crate) load: OnceLock<LoadState>,
    pub(crate) service: Arc<ArcSwap<Service>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) options: HttpOptions,
    /// The MCP gateway's sessions and upstream connections.
    pub(crate) mcp: crate::mcp::http::Proxies,
}

impl AppState {
    /// State for a server running `config`.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>, options: HttpOptions) -> Self {
        AppState {
            load: OnceLock::new(),
            service: Arc::new(ArcSwap::from_pointee(Service::new(config))),
            metrics,
            options,
            mcp: crate::mcp::http::Proxies::default(),
        }
    }

    pub(crate) fn registry(&self) -> Option<&Arc<Registry>> {
        match self.load.get() {
            Some(LoadState::Ready(r)) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn arbiter(&self) -> Option<&Arbiter> {
        self.registry().map(|r| r.arbiter())
    }
}

pub(crate) type Body = Full<Bytes>;

/// Handles one request, the MCP gateway's streams included. Never fails:
/// every problem is a response.
pub async fn serve(
    state: Arc<AppState>,
    req: HttpRequest<Incoming>,
) -> Result<Response<crate::mcp::http::Body>, Infallible> {
    let Some(rest) = req.uri().path().strip_prefix("/mcp/") else {
        let r = handle(state, req).await?;
        return Ok(r.map(|b| b.map_err(|never| match never {}).boxed()));
    };
    let name = rest.split('/').next().unwrap_or_default().to_owned();
    let service = state.service.load_full();
    let response = match mcp(&state, &service, req, &name).await {
        Ok(r) => r,
        Err(e) => error_response(e).map(|b| b.map_err(|never| match never {}).boxed()),
    };
    state
        .metrics
        .record_response("mcp", response.status().as_u16());
    Ok(response)
}

async fn mcp(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    name: &str,
) -> Result<Response<crate::mcp::http::Body>, FrontDoorError> {
    // `Authorization` belongs to the upstream server: only Arbiter's own
    // header carries Arbiter's token here.
    service.tokens.check_decide(req.headers(), false)?;
    let server = service.mcp.get(name).ok_or_else(|| {
        FrontDoorError::NotFound(format!(
            "/mcp/{}",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    let a = &service.config.authorizer;
    let text = |h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let caller = crate::mcp::Caller {
        agent: text(&a.agent_header),
        roles: text(&a.agent_roles_header)
            .map(|r| {
                r.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        user: text(&a.user_header),
        environment: text(&a.environment_header),
    };
    let gateway = crate::mcp::Gateway::new(arbiter.clone(), Arc::clone(server));
    Ok(state.mcp.handle(gateway, caller, req).await)
}

/// Handles one request. Never fails: every problem is a response.
pub async fn handle(
    state: Arc<AppState>,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    // One view of the configuration for the whole request.
    let service = state.service.load_full();
    let (endpoint, result) = route(&state, &service, req, &path).await;
    let response = result.unwrap_or_else(error_response);
    state
        .metrics
        .record_response(endpoint, response.status().as_u16());
    Ok(response)
}

async fn route(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    path: &str,
) -> (&'static str, Result<Response<Body>, FrontDoorError>) {
    let method = req.method().clone();
    let get_only = |endpoint, f: fn(&AppState, &Service) -> Response<Body>| {
        if method == Method::GET || method == Method::HEAD {
            (endpoint, Ok(f(state, service)))
        } else {
            (
                endpoint,
                Err(FrontDoorError::MethodNotAllowed { allow: "GET" }),
            )
        }
    };
    match path {
        "/v1/decide" if method == Method::POST => ("decide", decide(state, service, req).await),
        "/v1/decide" => (
            "decide",
            Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
        ),
        p if p == ext_authz::PREFIX || p.starts_with("/v1/authz/") => {
            ("authz", authz(state, service, req).await)
        }
        "/v1/policies" => (
            "policies",
            read(service, &req, || {
                Ok(admin::policies::policies(state, service))
            }),
        ),
        p if p.starts_with("/v1/policies/") => {
            let rest = &p["/v1/policies/".len()..];
            match rest.rsplit_once('/') {
                Some((name, "rollback")) if method == Method::POST => (
                    "rollback",
                    admin::policies::rollback(state, service, req, name.to_owned()).await,
                ),
                Some((_, "rollback")) => (
                    "rollback",
                    Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
                ),
                Some((name, "mode")) if method == Method::PUT => (
                    "mode",
                    admin::rollout::set_mode(state, service, req, name.to_owned()).await,
                ),
                Some((_, "mode")) => (
                    "mode",
                    Err(FrontDoorError::MethodNotAllowed { allow: "PUT" }),
                ),
                Some((name, "promote")) if method == Method::POST => (
                    "promote",
                    admin::rollout::promote(state, service, req, name.to_owned()).await,
                ),
                Some((_, "promote")) => (
                    "promote",
                    Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
                ),
                _ => (
                    "other",
                    Err(FrontDoorError::NotFound(p.chars().take(200).collect())),
                ),
            }
        }
        p if p.starts_with("/v1/ab/") => (
            "ab",
            read(service, &req, || {
                admin::rollout::divergence(state, service, &p["/v1/ab/".len()..])
            }),
        ),
        "/v1/baseline" => (
            "baseline",
            read(service, &req, || {
                admin::rollout::baseline(state, req.uri().query())
            }),
        ),
        "/v1/approvals" => match service.tokens.check_admin(req.headers()) {
            Ok(()) => (
                "approvals",
                read(service, &req, || {
                    admin::approvals::approvals_list(state, req.uri().query())
                }),
            ),
            Err(e) => ("approvals", Err(e)),
        },
        p if p.starts_with("/v1/approvals/") => {
            let rest = &p["/v1/approvals/".len()..];
            match rest.split_once('/') {
                Some((id, verb @ ("approve" | "decline"))) if method == Method::POST => {
                    let (id, granted) = (id.to_owned(), verb == "approve");
                    (
                        "approvals",
                        admin::approvals::approval_answer(state, service, req, id, granted).await,
                    )
                }
                Some((_, "approve" | "decline")) => (
                    "approvals",
                    Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
                ),
                None if method == Method::GET || method == Method::HEAD => (
                    "approvals",
                    admin::approvals::approval_get(state, service, req, rest.to_owned()).await,
                ),
                None => (
                    "approvals",
                    Err(FrontDoorError::MethodNotAllowed { allow: "GET" }),
                ),
                _ => (
                    "other",
                    Err(FrontDoorError::NotFound(p.chars().take(200).collect())),
                ),
            }
        }
        "/v1/agents" => (
            "agents",
            read(service, &req, || {
                admin::agents::agents(state, req.uri().query())
            }),
        ),
        p if p.starts_with("/v1/agents/") => {
            let rest = &p["/v1/agents/".len()..];
            match rest.rsplit_once('/') {
                Some((id, change @ ("suspend" | "resume"))) if method == Method::POST => {
                    let id = id.to_owned();
                    let suspend = change == "suspend";
                    (
                        "agents",
                        admin::agents::agent_change(state, service, req, id, suspend).await,
                    )
                }
                Some((_, "suspend" | "resume")) => (
                    "agents",
                    Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
                ),
                _ => (
                    "other",
                    Err(FrontDoorError::NotFound(p.chars().take(200).collect())),
                ),
            }
        }
        "/v1/mcp/tools" => ("mcp-tools", read(service, &req, || admin::mcp::list(state))),
        p if p.starts_with("/v1/mcp/tools/") => {
            let rest = &p["/v1/mcp/tools/".len()..];
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [server, tool, "accept"] if method == Method::POST => {
                    let (server, tool) = ((*server).to_owned(), (*tool).to_owned());
                    (
                        "mcp-tools",
                        admin::mcp::accept_tool(state, service, req, server, tool).await,
                    )
                }
                [_, _, "accept"] => (
                    "mcp-tools",
                    Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
                ),
                [server, "observe"] if method == Method::POST => {
                    let server = (*server).to_owned();
                    (
                        "mcp-tools",
                        admin::mcp::observe_tools(state, service, req, server).await,
                    )
                }
                [_, "observe"] => (
                    "mcp-tools",
                    Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
                ),
                _ => (
                    "other",
                    Err(FrontDoorError::NotFound(p.chars().take(200).collect())),
                ),
            }
        }
        "/healthz" => get_only("healthz", |_, _| {
            json_response(StatusCode::OK, &json!({"status": "alive"}))
        }),
        "/readyz" => get_only("readyz", readyz),
        "/metrics" => get_only("metrics", |s, _| {
            let mut r = Response::new(Full::new(Bytes::from(s.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }),
        other => (
            "other",
            Err(FrontDoorError::NotFound(other.chars().take(200).collect())),
        ),
    }
}

/// A read of state: behind the decide token, GET or HEAD only.
fn read(
    service: &Service,
    req: &HttpRequest<Incoming>,
    answer: impl FnOnce() -> Result<Response<Body>, FrontDoorError>,
) -> Result<Response<Body>, FrontDoorError> {
    service.tokens.check_decide(req.headers(), true)?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(FrontDoorError::MethodNotAllowed { allow: "GET" });
    }
    answer()
}

/// The body of `POST /v1/decide`: the wire request, with `history`
/// accepted only to refuse it clearly (or, in tests, to use it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    action: crate::decision::Action,
    context: Context,
    #[serde(default)]
    history: Option<History>,
    #[serde(default)]
    approval_id: Option<String>,
}

async fn decide(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, FrontDoorError> {
    service.tokens.check_decide(req.headers(), true)?;
    check_json(req.headers())?;
    let bytes = read_body(req, &service.config.server).await?;
    let body: DecideBody = wire::parse(&bytes).map_err(FrontDoorError::BadRequest)?;
    if body.history.is_some() && !state.options.accept_caller_history {
        return Err(FrontDoorError::Forbidden("history"));
    }
    if body.context.agent.id.is_empty() {
        return Err(FrontDoorError::Required("context.agent.id"));
    }
    let caller_history = body.history.is_some();
    let request = Request {
        action: body.action,
        context: body.context,
        history: body.history.unwrap_or_default(),
        approval_id: body.approval_id,
    };
    let decision = run(state, request, caller_history).await?;
    let mut r = json_response(StatusCode::OK, &decision);
    set_decision_id(&mut r, &decision);
    Ok(r)
}

async fn authz(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, FrontDoorError> {
    // `Authorization` belongs to the original request here.
    service.tokens.check_decide(req.headers(), false)?;
    let request = ext_authz::request_from(
        &service.config.authorizer,
        req.method(),
        req.uri(),
        req.headers(),
    );
    let decision = run(state, request, false).await?;
    let (status, reason) = match decision.outcome {
        Outcome::Allow => (StatusCode::OK, decision.reason.clone()),
        Outcome::Deny => (StatusCode::FORBIDDEN, decision.reason.clone()),
        Outcome::RequireApproval => (
            StatusCode::FORBIDDEN,
            format!(
                "Approval required, which an authorizer cannot wait for: {}",
                decision.reason
            ),
        ),
        // A gateway's authorizer cannot rewrite the request: fail closed.
        Outcome::Modify => (
            StatusCode::FORBIDDEN,
            format!(
                "A policy requires the request to be modified, which an authorizer cannot do: {}",
                decision.reason
            ),
        ),
    };
    let body = json!({
        "decision_id": decision.decision_id,
        "outcome": decision.outcome,
        "allowed": status == StatusCode::OK,
        "reason": reason,
        "rule": decision.rule,
        "risk": decision.risk,
    });
    let mut r = json_response(status, &body);
    set_decision_id(&mut r, &decision);
    Ok(r)
}

/// Decides through the arbiter's one flow; a saturated arbiter is a 503.
/// With `caller_history` (tests only), on the history the caller gave.
async fn run(
    state: &AppState,
    request: Request,
    caller_history: bool,
) -> Result<Decision, FrontDoorError> {
    let Some(arbiter) = state.arbiter() else {
        return Err(FrontDoorError::NotReady);
    };
    let decided = if caller_history {
        arbiter.without_agents().try_decide_async(request).await
    } else {
        arbiter.try_decide_async(request).await
    };
    decided.map_err(|s| FrontDoorError::Saturated(s.limit))
}

fn readyz(state: &AppState, _: &Service) -> Response<Body> {
    match state.load.get() {
        Some(LoadState::Ready(r)) => json_response(
            StatusCode::OK,
            &json!({"ready": true, "policies": r.arbiter().policy_set().policies().count()}),
        ),
        Some(LoadState::Failed(e)) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "reason": format!("policies failed to load: {e}")}),
        ),
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "reason": "policies are still loading"}),
        ),
    }
}

pub(crate) fn check_json(headers: &hyper::HeaderMap) -> Result<(), FrontDoorError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(FrontDoorError::UnsupportedMediaType(
            ct.chars().take(100).collect(),
        ))
    }
}

/// Reads the body within the size and time limits.
pub(crate) async fn read_body(
    req: HttpRequest<Incoming>,
    server: &crate::config::ServerConfig,
) -> Result<Bytes, FrontDoorError> {
    let limit = server.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refuse a declared oversize body before reading a byte of it.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(FrontDoorError::PayloadTooLarge { limit });
    }
    let timeout: Duration = server.body_timeout();
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(FrontDoorError::Timeout(server.body_timeout_ms)),
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(FrontDoorError::PayloadTooLarge { limit })
        }
        Ok(Err(e)) => Err(FrontDoorError::Body(e.to_string())),
    }
}

pub(crate) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    // Serializing our own types cannot fail; if it ever did, say so.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!(r#"{{"error":{{"code":"internal","message":"cannot encode the response: {e}"}}}}"#)
            .into_bytes()
    });
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: FrontDoorError) -> Response<Body> {
    let mut r = json_response(e.status(), &e.body());
    for (k, v) in e.headers() {
        r.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    r
}

fn set_decision_id(r: &mut Response<Body>, d: &Decision) {
    if let Ok(v) = HeaderValue::from_str(&d.decision_id) {
        r.headers_mut().insert(DECISION_ID_HEADER, v);
    }
}
