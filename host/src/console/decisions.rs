//! Decisions: the log searched by agent, policy, outcome, rule and time,
//! one record in full, and the log's verification, run on demand.

use std::time::SystemTime;

use askama::Template;
use hyper::StatusCode;
use serde_json::Value;

use super::form::Fields;
use super::view::{self, Frame};
use super::{Ctx, Refusal, Reply, html};
use crate::evidence::audit::{self, Filter};
use crate::front_door::error::FrontDoorError;

/// Records a search shows: the newest that match.
const SHOWN: usize = 100;

/// The last verification's result, kept for the page.
#[derive(Debug, Clone)]
pub(crate) struct Verification {
    at: String,
    by: String,
    ok: bool,
    /// Records, checkpoints and head, or where it broke.
    summary: String,
    /// Where it broke: the first sequence number and the kind of break.
    broken_seq: Option<u64>,
}

pub(crate) struct Row {
    id: String,
    link: String,
    ts: String,
    agent: String,
    action: String,
    outcome: String,
    rule: String,
    policies: String,
}

#[derive(Template)]
#[template(path = "console/decisions.html")]
struct Page {
    frame: Frame,
    agent: String,
    policy: String,
    outcome: String,
    rule: String,
    since: String,
    until: String,
    rows: Vec<Row>,
    more: bool,
    dir: String,
    verified: Option<Verification>,
}

#[derive(Template)]
#[template(path = "console/record.html")]
struct RecordPage {
    frame: Frame,
    text: String,
}

/// A time as typed: RFC 3339, or `YYYY-MM-DDTHH:MM` in UTC as a browser's
/// date-time field gives it.
fn time(field: &str, v: &str) -> Result<Option<SystemTime>, Refusal> {
    if v.is_empty() {
        return Ok(None);
    }
    let full = if v.len() == 16 {
        format!("{v}:00Z")
    } else {
        v.to_owned()
    };
    humantime::parse_rfc3339(&full).map(Some).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("`{field}`: {e} (give 2026-12-05T10:30 in UTC, or RFC 3339)"),
        )
    })
}

/// The server's decision log, or why there is none.
fn log_of<'a>(ctx: &Ctx<'a>) -> Result<&'a crate::evidence::log::DecisionLog, Refusal> {
    let arbiter = ctx.state.arbiter().ok_or(FrontDoorError::NotReady)?;
    arbiter.log().map(|l| &**l).ok_or_else(|| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the decision log is off (`log.enabled = false`)",
        )
    })
}

fn log_dir(ctx: &Ctx<'_>) -> Result<std::path::PathBuf, Refusal> {
    Ok(log_of(ctx)?.dir().to_owned())
}

pub(super) async fn page(ctx: &Ctx<'_>, query: &str) -> Reply {
    let mut q = std::collections::BTreeMap::new();
    for (k, v) in view::query_pairs(
        query,
        &["agent", "policy", "outcome", "rule", "since", "until"],
    )? {
        q.insert(k, v.trim().to_owned());
    }
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    let some = |k: &str| Some(field(k)).filter(|v| !v.is_empty());
    let filter = Filter {
        agent: some("agent"),
        policy: some("policy"),
        outcome: some("outcome"),
        rule: some("rule"),
        since: time("since", &field("since"))?,
        until: time("until", &field("until"))?,
    };
    let dir = log_dir(ctx)?;
    let scan = dir.clone();
    // A search reads the log from the start: off the reactor.
    let (rows, more) = off_reactor(move || {
        let mut kept = std::collections::VecDeque::with_capacity(SHOWN + 1);
        let mut more = false;
        audit::query(&[&scan], &filter, |p| {
            kept.push_back(row(p.data(), p.ts()));
            if kept.len() > SHOWN {
                kept.pop_front();
                more = true;
            }
            true
        })
        .map(|()| (kept.into_iter().rev().collect::<Vec<_>>(), more))
    })
    .await?;
    let verified = ctx
        .console
        .verified
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    html(
        StatusCode::OK,
        &Page {
            frame: ctx.frame("Decisions", "decisions"),
            agent: field("agent"),
            policy: field("policy"),
            outcome: field("outcome"),
            rule: field("rule"),
            since: field("since"),
            until: field("until"),
            rows,
            more,
            dir: dir.display().to_string(),
            verified,
        },
    )
}

/// Runs a scan of the log on a blocking thread.
async fn off_reactor<T: Send + 'static>(
    scan: impl FnOnce() -> Result<T, audit::AuditError> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(scan)
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the search failed: {e}"),
            )
        })?
        .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

fn row(d: &Value, ts: &str) -> Row {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let id = s(&d["decision_id"]);
    Row {
        link: view::encode(&id),
        id,
        ts: ts.chars().take(19).collect::<String>().replace('T', " ") + "Z",
        agent: s(&d["context"]["agent"]["id"]),
        action: format!("{} {}", s(&d["action"]["kind"]), s(&d["action"]["name"])),
        outcome: s(&d["outcome"]),
        rule: s(&d["rule"]),
        policies: d["policies"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| s(&p["name"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
    }
}

/// `GET /console/decisions/{id}`: the record of one decision, whole.
pub(super) async fn record(ctx: &Ctx<'_>, id: &str) -> Reply {
    let dir = log_dir(ctx)?;
    let wanted = id.to_owned();
    let found = off_reactor(move || {
        let mut found = None;
        audit::query(&[&dir], &Filter::default(), |p| {
            if p.data()["decision_id"].as_str() == Some(wanted.as_str()) {
                let mut whole = p.value.clone();
                whole["hash"] = p.hash.clone().into();
                found = Some(whole);
                return false;
            }
            true
        })
        .map(|()| found)
    })
    .await?;
    let record = found.ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no decision `{}` in the log",
                id.chars().take(80).collect::<String>()
            ),
        )
    })?;
    html(
        StatusCode::OK,
        &RecordPage {
            frame: ctx.frame(&format!("Decision {id}"), "decisions"),
            text: view::pretty(&record),
        },
    )
}

/// `POST /console/decisions/verify`: verifies the whole log now, as
/// `arbiter log verify` would, and keeps the result for the page.
pub(super) async fn verify(ctx: &Ctx<'_>, fields: Fields) -> Reply {
    fields.only(&[])?;
    let log = log_of(ctx)?;
    let (dir, options) = (log.dir().to_owned(), log.verify_options());
    let result = tokio::task::spawn_blocking(move || audit::verify(&dir, &options))
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("verification failed: {e}"),
            )
        })?
        .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let at = view::when(ctx.console.now_ms());
    let v = match result {
        Ok(ok) => Verification {
            at,
            by: ctx.op.name.clone(),
            ok: true,
            summary: format!(
                "{} records and {} checkpoints in {} segments verify; head is record {} ({}){}.",
                ok.records,
                ok.checkpoints,
                ok.segments,
                ok.head_seq,
                ok.head_hash,
                if ok.unsigned_tail > 0 {
                    format!(
                        "; the last {} are not under a checkpoint yet",
                        ok.unsigned_tail
                    )
                } else {
                    String::new()
                }
            ),
            broken_seq: None,
        },
        Err(broken) => Verification {
            at,
            by: ctx.op.name.clone(),
            ok: false,
            summary: format!(
                "Broken at record {} ({}): {}",
                broken.seq, broken.kind, broken.detail
            ),
            broken_seq: Some(broken.seq),
        },
    };
    tracing::info!(operator = %ctx.op.name, ok = v.ok, "decision log verified from the console");
    let ok = v.ok;
    *ctx.console
        .verified
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
    ctx.done(
        Ok(if ok {
            "The log verifies.".into()
        } else {
            "The log does not verify: see where it broke below.".into()
        }),
        "/console/decisions#verify",
    )
}
