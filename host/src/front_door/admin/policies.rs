//! Admin: the policies that serve, and rolling one back to an earlier
//! version.

use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin_body;
use crate::front_door::error::FrontDoorError;
use crate::front_door::http::{AppState, Body, LoadState, Service, json_response};
use crate::identity::Operator;
use crate::reload::RollbackError;

/// The body of a rollback: which version, or the one before the serving.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    #[serde(default)]
    version: Option<String>,
}

pub(crate) async fn rollback(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    name: String,
    op: &Operator,
) -> Result<Response<Body>, FrontDoorError> {
    let body: RollbackBody = admin_body(service, req).await?.unwrap_or_default();
    let done = roll_back(state, &name, body.version.as_deref(), op)?;
    Ok(json_response(StatusCode::OK, &done))
}

/// Serves `version` of policy `name` again (the one before the serving, if
/// `None`) as `op`: the one path of the API, the CLI and the console.
pub(crate) fn roll_back(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    op: &Operator,
) -> Result<crate::reload::RolledBack, FrontDoorError> {
    let registry = state.registry().ok_or(FrontDoorError::NotReady)?;
    registry
        .rollback(name, version, &op.name)
        .map_err(|e| match e {
            RollbackError::UnknownPolicy(_) => FrontDoorError::UnknownPolicy(e.to_string()),
            RollbackError::Unrecorded(_) => FrontDoorError::Unavailable(e.to_string()),
            _ => FrontDoorError::Conflict(e.to_string()),
        })
}

pub(crate) fn policies(state: &AppState, service: &Service) -> Response<Body> {
    let config = &service.config;
    let status = state.registry().map(|r| r.status());
    let list: Vec<Value> = config
        .policies
        .iter()
        .map(|p| {
            let on_routes: Vec<Value> = config
                .routes
                .iter()
                .filter(|r| r.chain.contains(&p.name))
                .map(
                    |r| json!({"kind": r.kind, "name": r.name, "agent": r.agent, "chain": r.chain}),
                )
                .collect();
            let (l, wasi, reuse) = (&p.limits, &p.limits.wasi, &p.limits.reuse);
            let limits = json!({
                "fuel": l.fuel,
                "deadline_ms": l.deadline_ms,
                "max_memory_bytes": l.max_memory_bytes,
                "max_table_elements": l.max_table_elements,
                "wasi": {"clocks": wasi.clocks, "random": wasi.random},
                "reuse": {
                    "decisions": reuse.decisions,
                    "across_agents": reuse.across_agents,
                    "idle": reuse.idle,
                },
            });
            let mut entry = json!({"name": p.name, "routes": on_routes, "limits": limits});
            let found = status
                .as_ref()
                .and_then(|s| s.policies.iter().find(|s| s.name == p.name));
            match found {
                Some(s) => {
                    let serving = s.serving.as_ref();
                    entry["state"] = json!(if serving.is_some() {
                        "serving"
                    } else {
                        "failed"
                    });
                    entry["version"] = json!(serving.map(|v| &v.version));
                    entry["loaded_at"] = json!(serving.map(|v| &v.loaded_at));
                    entry["size_bytes"] = json!(serving.map(|v| v.size_bytes));
                    entry["signer"] = json!(serving.and_then(|v| v.signer.as_ref()));
                    entry["source"] = json!(s.source);
                    entry["versions"] = json!(s.versions);
                    entry["last_attempt"] = json!(s.last_attempt);
                    entry["mode"] = json!(s.mode);
                    entry["mode_source"] = json!(s.mode_source);
                    entry["candidates"] = json!(s.candidates);
                    entry["last_error"] = match &s.last_attempt.error {
                        Some(message) => json!({
                            "step": s.last_attempt.step,
                            "message": message,
                            "at": s.last_attempt.at,
                        }),
                        None => Value::Null,
                    };
                }
                None => {
                    entry["state"] = json!(match state.load.get() {
                        Some(LoadState::Failed(_)) => "failed",
                        _ => "loading",
                    });
                    entry["last_error"] = Value::Null;
                }
            }
            entry
        })
        .collect();
    let mut body = json!({ "policies": list });
    if let Some(s) = status {
        body["config"] = json!(s.config);
    }
    json_response(StatusCode::OK, &body)
}
