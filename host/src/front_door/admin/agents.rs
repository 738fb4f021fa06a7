//! Admin: the host's view of each agent, and the kill switch.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{admin_body, percent_decode, required};
use crate::enrich::AgentError;
use crate::front_door::error::FrontDoorError;
use crate::front_door::http::{AppState, Body, Service, json_response};
use crate::front_door::wire;
use crate::identity::Operator;

/// The one query parameter the state reads take: `agent`.
pub(crate) fn agent_query(query: Option<&str>) -> Result<Option<String>, FrontDoorError> {
    let mut agent = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("agent", v)) => agent = Some(percent_decode(v, true)?),
            _ => {
                return Err(FrontDoorError::BadRequest(wire::WireError {
                    path: String::new(),
                    message: format!(
                        "unknown query parameter `{}`; the one known is `agent`",
                        pair.chars().take(100).collect::<String>()
                    ),
                    line: 1,
                    column: 1,
                }));
            }
        }
    }
    Ok(agent)
}

pub(crate) fn agents(
    state: &AppState,
    query: Option<&str>,
) -> Result<Response<Body>, FrontDoorError> {
    let agent = agent_query(query)?;
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    let list = arbiter
        .agents()
        .map(|a| a.report(agent.as_deref()))
        .unwrap_or_default();
    let mut list = serde_json::to_value(list).unwrap_or_default();
    // Each agent's sessions that hold labels, with where each came from.
    if let (Some(flows), Some(items)) = (arbiter.flows(), list.as_array_mut()) {
        for item in items {
            let id = item["agent"].as_str().unwrap_or_default().to_owned();
            let sessions: Vec<_> = flows
                .sessions_of(&id)
                .into_iter()
                .map(|(session, labels)| json!({"session": session, "labels": labels}))
                .collect();
            item["flow"] = json!(sessions);
        }
    }
    Ok(json_response(StatusCode::OK, &json!({ "agents": list })))
}

/// The body of a suspension or resumption. Who made it is the
/// authenticated operator, never a field: `by` is refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentChangeBody {
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

pub(crate) async fn agent_change(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    id: String,
    suspend: bool,
    op: &Operator,
) -> Result<Response<Body>, FrontDoorError> {
    let body: AgentChangeBody = admin_body(service, req).await?.unwrap_or_default();
    let id = percent_decode(&id, false)?;
    let reason = match body.reason {
        None if suspend => Some(required(None, r#"{"reason": "leaking data"}"#)?),
        r => r,
    };
    let done = change(state, id, suspend, reason, op).await?;
    Ok(json_response(StatusCode::OK, &done))
}

/// Suspends or resumes agent `id` as `op`, with `reason` (required to
/// suspend): the one path of the API, the CLI and the console.
pub(crate) async fn change(
    state: &AppState,
    id: String,
    suspend: bool,
    reason: Option<String>,
    op: &Operator,
) -> Result<serde_json::Value, FrontDoorError> {
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    let agents =
        Arc::clone(arbiter.agents().ok_or_else(|| {
            FrontDoorError::Unavailable("this server keeps no agent state".into())
        })?);
    let by = op.name.clone();
    let result = if suspend {
        let reason = reason.unwrap_or_default();
        tokio::task::spawn_blocking(move || agents.suspend(&id, &reason, &by)).await
    } else {
        tokio::task::spawn_blocking(move || agents.resume(&id, reason.as_deref(), &by)).await
    };
    let done = result
        .map_err(|e| FrontDoorError::Unavailable(format!("the task failed: {e}")))?
        .map_err(|e| match e {
            AgentError::NotSuspended(_) => FrontDoorError::Conflict(e.to_string()),
            AgentError::Empty(_) => FrontDoorError::BadRequest(wire::WireError {
                path: "reason".into(),
                message: e.to_string(),
                line: 1,
                column: 1,
            }),
            AgentError::Store(_) | AgentError::Unrecorded(_) => {
                FrontDoorError::Unavailable(e.to_string())
            }
        })?;
    Ok(json!({"suspended": suspend, "suspension": done}))
}
