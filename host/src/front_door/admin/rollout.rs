//! Admin: modes, promotion of candidates, divergence reports and the
//! monitor baseline.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::agents::agent_query;
use super::{admin_body, required};
use crate::decision::Mode;
use crate::front_door::error::FrontDoorError;
use crate::front_door::http::{AppState, Body, Service, json_response};
use crate::identity::Operator;
use crate::reload::RolloutError;

/// The body of `PUT /v1/policies/{name}/mode`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModeBody {
    mode: Mode,
}

pub(crate) async fn set_mode(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    name: String,
    op: &Operator,
) -> Result<Response<Body>, FrontDoorError> {
    let body: ModeBody = required(admin_body(service, req).await?, r#"{"mode": "monitor"}"#)?;
    let done = mode_to(state, &name, body.mode, op)?;
    Ok(json_response(StatusCode::OK, &done))
}

/// Sets policy `name`'s mode as `op`: the one path of the API, the CLI and
/// the console.
pub(crate) fn mode_to(
    state: &AppState,
    name: &str,
    mode: Mode,
    op: &Operator,
) -> Result<crate::reload::ModeChanged, FrontDoorError> {
    let registry = state.registry().ok_or(FrontDoorError::NotReady)?;
    registry
        .set_mode(name, mode, &op.name)
        .map_err(rollout_error)
}

/// The body of `POST /v1/policies/{name}/promote`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteBody {
    candidate: String,
}

pub(crate) async fn promote(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    name: String,
    op: &Operator,
) -> Result<Response<Body>, FrontDoorError> {
    let body: PromoteBody = required(admin_body(service, req).await?, r#"{"candidate": "v2"}"#)?;
    let done = promote_candidate(state, name, body.candidate, op).await?;
    Ok(json_response(StatusCode::OK, &done))
}

/// Promotes candidate `candidate` of policy `name` as `op`: the one path of
/// the API, the CLI and the console.
pub(crate) async fn promote_candidate(
    state: &AppState,
    name: String,
    candidate: String,
    op: &Operator,
) -> Result<crate::reload::Promoted, FrontDoorError> {
    let registry = Arc::clone(state.registry().ok_or(FrontDoorError::NotReady)?);
    let actor = op.name.clone();
    // A promotion compiles: off the reactor.
    tokio::task::spawn_blocking(move || registry.promote(&name, &candidate, &actor))
        .await
        .map_err(|e| FrontDoorError::Unavailable(format!("the promotion task failed: {e}")))?
        .map_err(rollout_error)
}

pub(crate) fn rollout_error(e: RolloutError) -> FrontDoorError {
    match e {
        RolloutError::UnknownPolicy(_) | RolloutError::UnknownCandidate { .. } => {
            FrontDoorError::UnknownPolicy(e.to_string())
        }
        RolloutError::Unrecorded(_) => FrontDoorError::Unavailable(e.to_string()),
        RolloutError::Load(_) | RolloutError::Superseded(_) => {
            FrontDoorError::Conflict(e.to_string())
        }
    }
}

pub(crate) fn divergence(
    state: &AppState,
    service: &Service,
    name: &str,
) -> Result<Response<Body>, FrontDoorError> {
    if !service.config.policies.iter().any(|p| p.name == name) {
        return Err(FrontDoorError::UnknownPolicy(format!(
            "no policy `{}` is configured",
            name.chars().take(200).collect::<String>()
        )));
    }
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    let shadow = arbiter.shadow_if_started();
    let body = json!({
        "policy": name,
        "mode": arbiter.policy_set().mode(name),
        "queue": shadow.map(crate::shadow::Shadow::queue),
        "pairs": shadow.map(|s| s.divergences().report(name)).unwrap_or_default(),
    });
    Ok(json_response(StatusCode::OK, &body))
}

pub(crate) fn baseline(
    state: &AppState,
    query: Option<&str>,
) -> Result<Response<Body>, FrontDoorError> {
    let agent = agent_query(query)?;
    let arbiter = state.arbiter().ok_or(FrontDoorError::NotReady)?;
    Ok(json_response(
        StatusCode::OK,
        &arbiter.baseline().report(agent.as_deref()),
    ))
}
