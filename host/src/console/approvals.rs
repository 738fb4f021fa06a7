//! The approvals inbox: pending first, each with everything a person needs
//! to decide (the action and its params, who asks for whom, what each
//! policy said, the agent's recent history and its baseline for this
//! action, the time left), and the answered ones with who, when and why.
//! The list is also served alone (`?fragment=list`) for the live update.

use askama::Template;
use hyper::StatusCode;
use serde_json::Value;

use super::form::Fields;
use super::view::{self, Frame};
use super::{Ctx, Refusal, Reply, html};
use crate::approvals::{Answer, Approval, Status};
use crate::config::Role;
use crate::front_door::admin::approvals::{answer as answer_approval, approvals_of, in_scope};
use crate::state::Verdict;

/// Answered approvals shown, newest first.
const ANSWERED_SHOWN: usize = 50;

pub(crate) struct AnswerView {
    by: String,
    at: String,
    reason: String,
}

impl From<&Answer> for AnswerView {
    fn from(a: &Answer) -> Self {
        AnswerView {
            by: a.by.clone(),
            at: view::when(a.at_ms),
            reason: a.reason.clone(),
        }
    }
}

pub(crate) struct ApprovalView {
    id: String,
    link: String,
    status: &'static str,
    agent: String,
    user: String,
    environment: String,
    session: String,
    action: String,
    target: String,
    params: String,
    params_full: Option<String>,
    verdicts: Vec<Verdict>,
    rule: String,
    reason: String,
    risk: u8,
    asked: String,
    expires_ms: u64,
    time_left: String,
    required: u8,
    approvers: Vec<AnswerView>,
    answer: Option<AnswerView>,
    used_by: Option<String>,
    /// Label and value: the agent's counters, as asked and now.
    history: Vec<(String, String)>,
    baseline: Option<String>,
    /// Why this operator has no buttons on it, if it has none.
    cannot: Option<String>,
}

pub(crate) struct List {
    pending: Vec<ApprovalView>,
    answered: Vec<ApprovalView>,
}

#[derive(Template)]
#[template(path = "console/approvals.html")]
struct Page {
    frame: Frame,
    list: List,
}

#[derive(Template)]
#[template(path = "console/approvals_list.html")]
struct Fragment {
    frame: Frame,
    list: List,
}

pub(super) fn page(ctx: &Ctx<'_>, query: &str) -> Reply {
    let fragment = match view::query_pairs(query, &["fragment"])?.as_slice() {
        [] => false,
        [(_, v)] if v == "list" => true,
        _ => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "the one fragment is `list`",
            ));
        }
    };
    let list = list(ctx)?;
    let frame = ctx.frame("Approvals", "approvals");
    if fragment {
        html(StatusCode::OK, &Fragment { frame, list })
    } else {
        html(StatusCode::OK, &Page { frame, list })
    }
}

fn list(ctx: &Ctx<'_>) -> Result<List, Refusal> {
    let approvals = approvals_of(ctx.state)?;
    let now = ctx.console.now_ms();
    let mut all = approvals.list(None);
    let mut pending: Vec<ApprovalView> = all
        .iter()
        .filter(|a| a.status == Status::Pending)
        .map(|a| show(ctx, a, now))
        .collect();
    // The one running out first on top.
    pending.sort_by_key(|a| a.expires_ms);
    all.retain(|a| a.status != Status::Pending);
    all.sort_by_key(|a| std::cmp::Reverse(a.answer.as_ref().map_or(a.created_ms, |x| x.at_ms)));
    let answered = all
        .iter()
        .take(ANSWERED_SHOWN)
        .map(|a| show(ctx, a, now))
        .collect();
    Ok(List { pending, answered })
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn show(ctx: &Ctx<'_>, a: &Approval, now: u64) -> ApprovalView {
    let r = &a.request;
    let (action, context) = (&r["action"], &r["context"]);
    let agent = text(&context["agent"]["id"]);
    let user = text(&context["user"]["id"]);
    let params = &action["params"];
    let (folded, cut) = view::folded_json(params);
    let op = &ctx.op;
    let cannot = if !op.has(Role::Approver) {
        Some("Only an approver answers approvals.".to_owned())
    } else if op.name == agent || (!user.is_empty() && op.name == user) {
        Some(format!(
            "{} may not answer a request made for themselves.",
            op.name
        ))
    } else if !in_scope(op, a) {
        Some(format!(
            "{} may not answer approvals of rule `{}`.",
            op.name, a.rule
        ))
    } else if a.approvers.iter().any(|x| x.by == op.name) {
        Some(format!(
            "{} approved already; it needs another approver.",
            op.name
        ))
    } else {
        None
    };
    let kind = text(&action["kind"]);
    let name = text(&action["name"]);
    ApprovalView {
        id: a.id.clone(),
        link: view::encode(&a.id),
        status: status_name(a.status),
        environment: text(&context["environment"]),
        session: text(&context["session"]),
        action: format!("{kind} {name}"),
        target: text(&action["target"]),
        params: folded,
        params_full: cut.then(|| view::pretty(params)),
        verdicts: a.verdicts.clone(),
        rule: a.rule.clone(),
        reason: a.reason.clone(),
        risk: a.risk,
        asked: view::when(a.created_ms),
        expires_ms: a.expires_ms,
        time_left: if a.expires_ms > now {
            view::span(a.expires_ms - now)
        } else {
            "expired".into()
        },
        required: a.required,
        approvers: a.approvers.iter().map(AnswerView::from).collect(),
        answer: a.answer.as_ref().map(AnswerView::from),
        used_by: a.used_by.clone(),
        history: history(ctx, &agent, &r["history"]),
        baseline: baseline(ctx, &agent, &kind, &name),
        cannot,
        agent,
        user,
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Approved => "approved",
        Status::Declined => "declined",
        Status::Expired => "expired",
        Status::Used => "used",
    }
}

/// The agent's counters when it asked, and now.
fn history(ctx: &Ctx<'_>, agent: &str, asked: &Value) -> Vec<(String, String)> {
    let now = ctx
        .state
        .arbiter()
        .and_then(|a| a.agents().map(|x| x.report(Some(agent))))
        .and_then(|r| r.into_iter().next());
    let at_ask = |k: &str| asked[k].as_u64().map_or("-".into(), |n| n.to_string());
    let mut out = vec![
        (
            "calls in the last minute".to_owned(),
            format!(
                "{} when asked, {} now",
                at_ask("calls_last_minute"),
                now.as_ref().map_or(0, |r| r.calls_last_minute)
            ),
        ),
        (
            "denials in the last hour".to_owned(),
            format!(
                "{} when asked, {} now",
                at_ask("denials_last_hour"),
                now.as_ref().map_or(0, |r| r.denials_last_hour)
            ),
        ),
        (
            "spend today".to_owned(),
            format!(
                "{} when asked, {} now",
                asked["spend_today_cents"]
                    .as_u64()
                    .map_or("-".into(), money),
                money(now.as_ref().map_or(0, |r| r.spend_today_cents))
            ),
        ),
    ];
    if let Some(r) = &now {
        if let Some(s) = &r.suspended {
            out.push(("suspended".into(), format!("by {}: {}", s.by, s.reason)));
        }
        if r.breaker.is_some() {
            out.push(("circuit breaker".into(), "open".into()));
        }
    }
    out
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// What monitor mode saw this agent do with this action, in a sentence.
fn baseline(ctx: &Ctx<'_>, agent: &str, kind: &str, name: &str) -> Option<String> {
    let report = ctx.state.arbiter()?.baseline().report(Some(agent));
    let seen = report
        .actions
        .into_iter()
        .find(|a| a.kind == kind && a.name == name)?;
    let mut out = format!(
        "{} times between {} and {}",
        seen.count, seen.first_seen, seen.last_seen
    );
    for (key, k) in &seen.params {
        if let Some(n) = &k.number {
            out.push_str(&format!("; `{key}` from {} to {}", n.min, n.max));
        }
    }
    Some(out)
}

/// `POST /console/approvals/{id}/approve|decline`, with a reason.
pub(super) async fn answer(ctx: &Ctx<'_>, id: String, granted: bool, fields: Fields) -> Reply {
    fields.only(&["reason"])?;
    crate::front_door::auth::require(&ctx.op, Role::Approver)?;
    let reason = fields.required("reason", "a reason")?;
    let done = answer_approval(ctx.state, id, granted, reason, &ctx.op).await?;
    let verb = if granted { "approved" } else { "declined" };
    let still = if done.status == Status::Pending {
        format!(
            " It needs {} approvers; it has {}.",
            done.required,
            done.approvers.len()
        )
    } else {
        String::new()
    };
    ctx.done(
        Ok(format!("You {verb} approval {}.{still}", done.id)),
        "/console/approvals",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn money_shows_cents() {
        assert_eq!(super::money(4_800_000), "48000.00");
        assert_eq!(super::money(5), "0.05");
    }
}
