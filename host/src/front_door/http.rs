//! The decision plane: one hyper service that checks, parses and
//! dispatches every request an agent or its gateway sends, each decision
//! through [`Arbiter::try_decide_async`]. It serves no admin path: those
//! are on the admin plane's own listener ([`super::admin`]). Endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/decide` | the wire format of `shared/DESIGN.md` in, the decision out |
//! | any | `/v1/authz`, `/v1/authz/...` | external authorizer (Envoy `ext_authz`, nginx `auth_request`): 200 or 403 |
//! | GET | `/v1/approvals/{id}` | the caller's own approval; `?wait=30s` waits for an answer |
//! | POST | `/v1/mcp/tools/{server}/observe` | `{"tools": [...]}` from a remote gateway's listing, for a server configured here, with the gateway's own credential: pins them, answers the definitions to show |
//! | POST, GET, DELETE | `/mcp/{server}` | the MCP gateway: Streamable HTTP proxied to the server's `upstream` ([`crate::mcp::http`]) |
//! | GET | `/healthz` | alive |
//! | GET | `/readyz` | 200 once every configured policy has loaded and the shared state is followed, else 503 |
//! | GET | `/metrics` | Prometheus text format |
//!
//! With `[identity]`, every request presents its agent's credential and
//! decides as that agent ([`super::auth`]). Bad input is refused with a
//! JSON body naming the problem ([`FrontDoorError`]); nothing a client
//! sends can panic the handler.

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

use super::auth::{self, Credentials};
use super::error::FrontDoorError;
use super::{admin, ext_authz, wire};
use crate::arbiter::Arbiter;
use crate::config::{Config, McpServerConfig};
use crate::decision::traceparent::{self, TraceParent};
use crate::decision::{Context, Decision, History, Outcome, Request};
use crate::enrich::flow::ResultRefused;
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
    pub(crate) credentials: Credentials,
    /// The MCP servers proxied on `/mcp/{name}`: those with an upstream.
    pub(crate) mcp: BTreeMap<String, Arc<McpServerConfig>>,
}

impl Service {
    /// The front door's view of `config`; `base` resolves its files.
    pub fn new(config: Arc<Config>, base: &std::path::Path) -> Self {
        let mcp = config
            .mcp
            .servers
            .iter()
            .filter(|s| s.upstream.is_some())
            .map(|s| (s.name.clone(), Arc::new(s.clone())))
            .collect();
        Service {
            credentials: Credentials::from_config(&config, base),
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
    /// Where the configuration's relative files are.
    pub(crate) base: std::path::PathBuf,
    /// Asks the reload worker for a reload (`POST /v1/reload`).
    pub(crate) reloader: crate::reload::watch::ReloadHandle,
}

impl AppState {
    /// State for a server running `config`, whose relative files are
    /// under `base`.
    pub fn new(
        config: Arc<Config>,
        base: std::path::PathBuf,
        metrics: Arc<Metrics>,
        options: HttpOptions,
    ) -> Self {
        AppState {
            load: OnceLock::new(),
            service: Arc::new(ArcSwap::from_pointee(Service::new(config, &base))),
            metrics,
            options,
            mcp: crate::mcp::http::Proxies::default(),
            base,
            reloader: crate::reload::watch::ReloadHandle::default(),
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
    let who = service.credentials.caller(req.headers(), false).await?;
    let server = service.mcp.get(name).ok_or_else(|| {
        FrontDoorError::NotFound(format!(
            "/mcp/{}",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    let sent = ext_authz::context_from(&service.config.authorizer, req.headers());
    let mut caller = crate::mcp::Caller {
        agent: Some(sent.agent.id).filter(|a| !a.is_empty()),
        roles: sent.agent.roles,
        user: sent.user.map(|u| u.id),
        environment: Some(sent.environment).filter(|e| !e.is_empty()),
        verified: false,
    };
    if let Some(who) = who {
        // The credential's agent, never a header's or the server entry's.
        let mut context = Context::default();
        context.agent.id = caller
            .agent
            .take()
            .or_else(|| server.agent.clone())
            .unwrap_or_default();
        context.user = caller.user.take().map(|id| crate::decision::Principal {
            id,
            roles: Vec::new(),
        });
        auth::bind(&mut context, &who)?;
        caller.agent = Some(context.agent.id);
        caller.roles = context.agent.roles;
        caller.user = context.user.map(|u| u.id);
        caller.verified = true;
    }
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
    Ok(respond(&state, endpoint, result))
}

/// The response to a request, counted under `endpoint`.
pub(crate) fn respond(
    state: &AppState,
    endpoint: &'static str,
    result: Result<Response<Body>, FrontDoorError>,
) -> Response<Body> {
    let response = result.unwrap_or_else(error_response);
    state
        .metrics
        .record_response(endpoint, response.status().as_u16());
    response
}

async fn route(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    path: &str,
) -> (&'static str, Result<Response<Body>, FrontDoorError>) {
    let method = req.method().clone();
    match path {
        "/v1/decide" if method == Method::POST => ("decide", decide(state, service, req).await),
        "/v1/decide" => (
            "decide",
            Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
        ),
        "/v1/results" if method == Method::POST => ("results", result(state, service, req).await),
        "/v1/results" => (
            "results",
            Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
        ),
        p if p == ext_authz::PREFIX || p.starts_with("/v1/authz/") => {
            ("authz", authz(state, service, req).await)
        }
        p if p.starts_with("/v1/approvals/") && !p["/v1/approvals/".len()..].contains('/') => {
            let id = p["/v1/approvals/".len()..].to_owned();
            if method == Method::GET || method == Method::HEAD {
                ("approvals", own_approval(state, service, req, id).await)
            } else {
                (
                    "approvals",
                    Err(FrontDoorError::MethodNotAllowed { allow: "GET" }),
                )
            }
        }
        p if p.starts_with("/v1/mcp/tools/") && p.ends_with("/observe") => {
            let server = &p["/v1/mcp/tools/".len()..p.len() - "/observe".len()];
            if server.contains('/') {
                ("other", Err(not_here(p)))
            } else if method == Method::POST {
                let server = server.to_owned();
                (
                    "mcp-tools",
                    admin::mcp::observe_tools(state, service, req, server).await,
                )
            } else {
                (
                    "mcp-tools",
                    Err(FrontDoorError::MethodNotAllowed { allow: "POST" }),
                )
            }
        }
        "/healthz" | "/readyz" | "/metrics" => health(state, &method, path),
        other => ("other", Err(not_here(other))),
    }
}

/// A path this plane does not serve; an admin path says where it is.
pub(crate) fn not_here(path: &str) -> FrontDoorError {
    let shown: String = path.chars().take(200).collect();
    if admin::is_admin_path(path) {
        FrontDoorError::NotFound(format!(
            "{shown} (admin endpoints are served only on the admin listener)"
        ))
    } else {
        FrontDoorError::NotFound(shown)
    }
}

/// `/healthz`, `/readyz` and `/metrics`, on either plane.
pub(crate) fn health(
    state: &AppState,
    method: &Method,
    path: &str,
) -> (&'static str, Result<Response<Body>, FrontDoorError>) {
    let endpoint = match path {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        _ => "metrics",
    };
    if method != Method::GET && method != Method::HEAD {
        return (
            endpoint,
            Err(FrontDoorError::MethodNotAllowed { allow: "GET" }),
        );
    }
    let response = match endpoint {
        "healthz" => json_response(StatusCode::OK, &json!({"status": "alive"})),
        "readyz" => readyz(state),
        _ => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
    };
    (endpoint, Ok(response))
}

/// One approval, for the agent that asked for it: with `[identity]`, an
/// approval of another agent is unknown to the caller.
async fn own_approval(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    id: String,
) -> Result<Response<Body>, FrontDoorError> {
    let who = service.credentials.caller(req.headers(), true).await?;
    let approval = admin::approvals::approval_wait(state, service, &req, &id).await?;
    if let Some(who) = who
        && approval.request["context"]["agent"]["id"].as_str() != Some(who.agent.id.as_str())
    {
        return Err(FrontDoorError::UnknownApproval(format!(
            "no approval `{}` of agent `{}`",
            id.chars().take(80).collect::<String>(),
            who.agent.id
        )));
    }
    Ok(json_response(StatusCode::OK, &approval))
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
    let (who, trace, mut body) = json_request::<DecideBody>(service, req).await?;
    if body.history.is_some() && !state.options.accept_caller_history {
        return Err(FrontDoorError::Forbidden("history"));
    }
    if let Some(who) = &who {
        auth::bind(&mut body.context, who)?;
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
        trace,
    };
    if let Some((field, max)) = request.too_long() {
        return Err(FrontDoorError::TooLong(field, max));
    }
    let decision = run(state, request, caller_history).await?;
    Ok(decision_answer(&decision))
}

/// The body of `POST /v1/results`: an allowed call's decision id and the
/// result the caller's tool gave.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultBody {
    decision_id: String,
    result: serde_json::Value,
}

/// `POST /v1/results`: a result of a call the caller ran itself, decided
/// as an action of kind `<call kind>.result` in the call's context, once
/// per call, by the agent that made it. Its labels join the session when
/// it is let through; withheld, the caller must not show it to the agent.
async fn result(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, FrontDoorError> {
    let (who, trace, body) = json_request::<ResultBody>(service, req).await?;
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    let Some(flows) = arbiter.flows() else {
        return Err(FrontDoorError::NotFound(
            "/v1/results (session flow is off: set [flow] enabled = true)".into(),
        ));
    };
    let id: String = body.decision_id.chars().take(64).collect();
    let call = flows
        .take_call(&id, who.as_ref().map(|w| w.agent.id.as_str()))
        .map_err(|e| match e {
            ResultRefused::Unknown(_) => FrontDoorError::UnknownCall(e.to_string()),
            ResultRefused::Reused(_) => FrontDoorError::Conflict(e.to_string()),
            ResultRefused::OtherAgent(_) => FrontDoorError::Denied(e.to_string()),
        })?;
    let request = Request {
        action: crate::decision::Action {
            kind: format!("{}{}", call.action.kind, crate::flow::RESULT_SUFFIX),
            name: call.action.name,
            target: call.action.target,
            params: body.result,
        },
        context: call.context,
        history: History::default(),
        approval_id: None,
        trace,
    };
    let decision = run(state, request, false).await?;
    Ok(decision_answer(&decision))
}

async fn authz(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, FrontDoorError> {
    // `Authorization` belongs to the original request here: with
    // `[identity]`, the agent's credential is in Arbiter's own header.
    let who = service.credentials.caller(req.headers(), false).await?;
    let original = ext_authz::request_from(
        &service.config.authorizer,
        req.method(),
        req.uri(),
        req.headers(),
    );
    let decision = decide_original(state, original, who.as_ref()).await?;
    let (allowed, body) = authorizer_answer(&decision);
    let status = if allowed {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    let mut r = json_response(status, &body);
    set_decision_id(&mut r, &decision);
    Ok(r)
}

/// Decides an authorizer's original request, as `who` when the caller's
/// credential names an agent; a path that cannot be decided on is denied
/// before any policy runs.
pub(crate) async fn decide_original(
    state: &AppState,
    original: ext_authz::Original,
    who: Option<&crate::identity::AgentIdentity>,
) -> Result<Decision, FrontDoorError> {
    let ext_authz::Original {
        mut request,
        problem,
    } = original;
    if let Some(who) = who {
        auth::bind(&mut request.context, who)?;
    }
    match problem {
        None => run(state, request, false).await,
        Some(p) => {
            let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
            let reason = format!("Denied before any policy ran: {p}.");
            arbiter
                .try_refuse_async(request, p.rule(), reason)
                .await
                .map_err(|s| FrontDoorError::Saturated(s.limit))
        }
    }
}

/// What an authorizer answers for `decision`: whether the request may go
/// on, and the body saying why. Only allow lets it: an authorizer cannot
/// wait for an approval or rewrite the request, so those fail closed.
pub(crate) fn authorizer_answer(decision: &Decision) -> (bool, serde_json::Value) {
    let reason = match decision.outcome {
        Outcome::Allow | Outcome::Deny => decision.reason.clone(),
        Outcome::RequireApproval => format!(
            "Approval required, which an authorizer cannot wait for: {}",
            decision.reason
        ),
        Outcome::Modify => format!(
            "A policy requires the request to be modified, which an authorizer cannot do: {}",
            decision.reason
        ),
    };
    let allowed = decision.outcome == Outcome::Allow;
    let body = json!({
        "decision_id": decision.decision_id,
        "outcome": decision.outcome,
        "allowed": allowed,
        "reason": reason,
        "rule": decision.rule,
        "risk": decision.risk,
    });
    (allowed, body)
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

fn readyz(state: &AppState) -> Response<Body> {
    match state.load.get() {
        Some(LoadState::Ready(r)) => match r.arbiter().agents().and_then(|a| a.unavailable()) {
            // Decisions would all be denied: send traffic elsewhere.
            Some(why) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "reason": why}),
            ),
            None => json_response(
                StatusCode::OK,
                &json!({"ready": true, "policies": r.arbiter().policy_set().policies().count()}),
            ),
        },
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

pub(crate) fn error_response(e: FrontDoorError) -> Response<Body> {
    let mut r = json_response(e.status(), &e.body());
    for (k, v) in e.headers() {
        r.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    r
}

/// A caller's JSON request on the decision plane: who presents it (with
/// `[identity]`), its trace, and its body, read within the limits.
async fn json_request<T: serde::de::DeserializeOwned>(
    service: &Service,
    req: HttpRequest<Incoming>,
) -> Result<
    (
        Option<crate::identity::AgentIdentity>,
        Option<TraceParent>,
        T,
    ),
    FrontDoorError,
> {
    let who = service.credentials.caller(req.headers(), true).await?;
    check_json(req.headers())?;
    let trace = traceparent(req.headers());
    let bytes = read_body(req, &service.config.server).await?;
    let body = wire::parse(&bytes).map_err(FrontDoorError::BadRequest)?;
    Ok((who, trace, body))
}

/// A decision as a 200 answer, its id also in the header.
fn decision_answer(decision: &Decision) -> Response<Body> {
    let mut r = json_response(StatusCode::OK, decision);
    set_decision_id(&mut r, decision);
    r
}

fn set_decision_id(r: &mut Response<Body>, d: &Decision) {
    if let Ok(v) = HeaderValue::from_str(&d.decision_id) {
        r.headers_mut().insert(DECISION_ID_HEADER, v);
    }
}

/// The caller's trace, when its `traceparent` header is one.
fn traceparent(headers: &hyper::HeaderMap) -> Option<TraceParent> {
    headers
        .get(traceparent::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
}
