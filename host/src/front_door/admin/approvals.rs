//! Approvals: the list, one approval (long-polled), and the answers, given
//! as the authenticated approver.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{admin_body, percent_decode, query_error, required};
use crate::approvals::ApprovalError;
use crate::front_door::error::FrontDoorError;
use crate::front_door::http::{AppState, Body, Service, json_response};
use crate::glob::glob;
use crate::identity::Operator;

pub(crate) fn approvals_of(
    state: &AppState,
) -> Result<&Arc<crate::approvals::Approvals>, FrontDoorError> {
    state
        .arbiter()
        .ok_or(FrontDoorError::NotReady)?
        .approvals()
        .ok_or_else(|| FrontDoorError::Unavailable("this server keeps no approvals".into()))
}

pub(crate) fn approvals_list(
    state: &AppState,
    query: Option<&str>,
) -> Result<Response<Body>, FrontDoorError> {
    let mut status = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        status = Some(match pair {
            "status=pending" => crate::approvals::Status::Pending,
            "status=approved" => crate::approvals::Status::Approved,
            "status=declined" => crate::approvals::Status::Declined,
            "status=expired" => crate::approvals::Status::Expired,
            "status=used" => crate::approvals::Status::Used,
            other => {
                return Err(query_error(format!(
                    "unknown query `{}`; use status=pending|approved|declined|expired|used",
                    other.chars().take(100).collect::<String>()
                )));
            }
        });
    }
    let list = approvals_of(state)?.list(status);
    Ok(json_response(StatusCode::OK, &json!({ "approvals": list })))
}

/// One approval, after waiting up to `?wait=` for an answer.
pub(crate) async fn approval_wait(
    state: &AppState,
    service: &Service,
    req: &HttpRequest<Incoming>,
    id: &str,
) -> Result<crate::approvals::Approval, FrontDoorError> {
    let approvals = approvals_of(state)?;
    let max = Duration::from_secs(service.config.approvals.max_wait_s);
    let mut wait = None;
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("wait", v)) => {
                let d = humantime::parse_duration(v).map_err(|e| {
                    query_error(format!(
                        "`wait={}`: {e} (say 30s, 2m)",
                        v.chars().take(40).collect::<String>()
                    ))
                })?;
                if d > max {
                    return Err(query_error(format!(
                        "`wait` may be at most {}s",
                        max.as_secs()
                    )));
                }
                wait = Some(d);
            }
            _ => {
                return Err(query_error(format!(
                    "unknown query parameter `{}`; the one known is `wait`",
                    pair.chars().take(100).collect::<String>()
                )));
            }
        }
    }
    let id = percent_decode(id, false)?;
    let found = match wait {
        Some(d) => approvals
            .wait(&id, d)
            .await
            .map_err(|e| FrontDoorError::TooMany(e.to_string()))?,
        None => approvals.get(&id),
    };
    found.ok_or_else(|| {
        FrontDoorError::UnknownApproval(format!(
            "no approval `{}`",
            id.chars().take(80).collect::<String>()
        ))
    })
}

/// The body of an approval's answer. Who answers is the authenticated
/// operator, never a field: `by` is refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerBody {
    #[serde(default)]
    reason: Option<String>,
}

pub(crate) async fn approval_answer(
    state: &AppState,
    service: &Service,
    req: HttpRequest<Incoming>,
    id: String,
    granted: bool,
    op: &Operator,
) -> Result<Response<Body>, FrontDoorError> {
    let body: AnswerBody = required(
        admin_body(service, req).await?,
        r#"{"reason": "PO 1182 checked with finance"}"#,
    )?;
    let id = percent_decode(&id, false)?;
    let done = answer(state, id, granted, body.reason.unwrap_or_default(), op).await?;
    Ok(json_response(StatusCode::OK, &done))
}

/// Whether `op` may answer `approval` at all: an approver limited to some
/// policies or rules answers only those.
pub(crate) fn in_scope(op: &Operator, approval: &crate::approvals::Approval) -> bool {
    let matches = |globs: &[String], name: &str| globs.iter().any(|g| glob(g, name));
    approval.policies.keys().all(|p| matches(&op.policies, p)) && matches(&op.rules, &approval.rule)
}

/// Approves or declines approval `id` as `op`, with `reason`: the one path
/// of the API, the CLI and the console.
pub(crate) async fn answer(
    state: &AppState,
    id: String,
    granted: bool,
    reason: String,
    op: &Operator,
) -> Result<crate::approvals::Approval, FrontDoorError> {
    let approvals = Arc::clone(approvals_of(state)?);
    if let Some(a) = approvals.get(&id)
        && !in_scope(op, &a)
    {
        return Err(FrontDoorError::Denied(format!(
            "approver `{}` may not answer approvals of rule `{}` asked by {}",
            op.name,
            a.rule,
            a.policies.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let by = op.name.clone();
    tokio::task::spawn_blocking(move || approvals.answer(&id, granted, &by, &reason))
        .await
        .map_err(|e| FrontDoorError::Unavailable(format!("the task failed: {e}")))?
        .map_err(|e| match e {
            ApprovalError::Unknown(_) => FrontDoorError::UnknownApproval(e.to_string()),
            ApprovalError::NotPending { .. } | ApprovalError::SameApprover { .. } => {
                FrontDoorError::Conflict(e.to_string())
            }
            ApprovalError::OwnRequest { .. } => FrontDoorError::Denied(e.to_string()),
            ApprovalError::NoReason => query_error(e.to_string()),
            ApprovalError::TooManyWaiting { .. } => FrontDoorError::TooMany(e.to_string()),
            ApprovalError::Store(_) | ApprovalError::Unrecorded(_) => {
                FrontDoorError::Unavailable(e.to_string())
            }
        })
}
