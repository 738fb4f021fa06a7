//! MCP tool pins: the list, a remote gateway's listing to pin, and an
//! admin's acceptance of a changed tool.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::agents::AgentChangeBody;
use super::{admin_body, percent_decode, query_error};
use crate::enrich::pins::PinError;
use crate::front_door::error::FrontDoorError;
use crate::front_door::http::{AppState, Body, Service, check_json, json_response, read_body};
use crate::front_door::wire;
use crate::identity::Operator;

/// Every pin: `GET /v1/mcp/tools`.
pub(crate) fn list(state: &AppState) -> Result<Response<Body>, FrontDoorError> {
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    let pins = arbiter.pins().map(|p| p.list()).unwrap_or_default();
    Ok(json_response(StatusCode::OK, &json!({ "tools": pins })))
}

pub(crate) fn pins_of(state: &AppState) -> Result<Arc<crate::enrich::pins::Pins>, FrontDoorError> {
    state
        .arbiter()
        .ok_or(FrontDoorError::NotReady)?
        .pins()
        .cloned()
        .ok_or_else(|| FrontDoorError::Unavailable("this server keeps no MCP tool pins".into()))
}

/// The body of `POST /v1/mcp/tools/{server}/observe`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ObserveBody {
    tools: Vec<Value>,
}

/// A remote gateway's listing: pinned here, as a local gateway's would be.
/// Only the gateway of a server configured here may pin its tools: with
/// `[identity]`, a credential of the agent the server's entry names;
/// without, the shared decide token. An open decision plane pins nothing,
/// or anyone could pin a poisoned description first.
pub(crate) async fn observe_tools(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    server: String,
) -> Result<Response<Body>, FrontDoorError> {
    let who = service.credentials.caller(req.headers(), true).await?;
    let server = percent_decode(&server, false)?;
    let shown: String = server.chars().take(64).collect();
    let Some(entry) = service.config.mcp.server(&server) else {
        return Err(FrontDoorError::NotFound(format!(
            "no MCP server `{shown}` is configured here (`[[mcp.servers]]`), so none of its tools are pinned"
        )));
    };
    if service.credentials.decision_plane_open() {
        return Err(FrontDoorError::Denied(
            "pinning tools needs the gateway's own credential: configure `[identity]` or `auth.decide_token`".into(),
        ));
    }
    if let Some(who) = who {
        match entry.agent.as_deref() {
            Some(agent) if agent == who.agent.id => {}
            Some(agent) => {
                return Err(FrontDoorError::Denied(format!(
                    "the tools of `{shown}` are pinned only by the gateway of agent `{agent}`, not `{}`",
                    who.agent.id
                )));
            }
            None => {
                return Err(FrontDoorError::Denied(format!(
                    "with `[identity]`, the entry of `{shown}` must name the `agent` whose gateway pins its tools"
                )));
            }
        }
    }
    check_json(req.headers())?;
    let bytes = read_body(req, &service.config.server).await?;
    let body: ObserveBody = wire::parse(&bytes).map_err(FrontDoorError::BadRequest)?;
    let pins = pins_of(state)?;
    let seen = tokio::task::spawn_blocking(move || pins.observe(&server, &body.tools))
        .await
        .map_err(|e| FrontDoorError::Unavailable(format!("the task failed: {e}")))?
        .map_err(|e| match e {
            PinError::Full { .. } => FrontDoorError::Conflict(e.to_string()),
            e => FrontDoorError::Unavailable(e.to_string()),
        })?;
    let names: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    let shown: Vec<Value> = seen.into_iter().map(|(_, t)| t).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"tools": shown, "seen": names}),
    ))
}

pub(crate) async fn accept_tool(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    server: String,
    tool: String,
    op: &Operator,
) -> Result<Response<Body>, FrontDoorError> {
    let body: AgentChangeBody = admin_body(service, req).await?.unwrap_or_default();
    if body.reason.is_some() {
        return Err(query_error("an acceptance takes no body".into()));
    }
    let pins = pins_of(state)?;
    let (server, tool) = (
        percent_decode(&server, false)?,
        percent_decode(&tool, false)?,
    );
    let by = op.name.clone();
    let pin = tokio::task::spawn_blocking(move || pins.accept(&server, &tool, &by))
        .await
        .map_err(|e| FrontDoorError::Unavailable(format!("the task failed: {e}")))?
        .map_err(|e| match e {
            PinError::Unknown { .. } => FrontDoorError::UnknownTool(e.to_string()),
            PinError::Unchanged { .. } | PinError::Full { .. } => {
                FrontDoorError::Conflict(e.to_string())
            }
            PinError::Store(_) | PinError::Unrecorded(_) => {
                FrontDoorError::Unavailable(e.to_string())
            }
        })?;
    Ok(json_response(StatusCode::OK, &pin))
}
