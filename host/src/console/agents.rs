//! Agents: each one's counters, breaker and suspension, a search, and the
//! kill switch (suspend and resume, each with a reason).

use askama::Template;
use hyper::StatusCode;

use super::form::Fields;
use super::view::{self, Frame};
use super::{Ctx, Reply, html};
use crate::config::Role;
use crate::enrich::AgentReport;

pub(crate) struct AgentView {
    report: AgentReport,
    link: String,
    spend: String,
    breaker_until: Option<String>,
    /// Its sessions holding labels: each label with where it came from.
    sessions: Vec<SessionView>,
}

/// One session's labels, as the page shows them.
pub(crate) struct SessionView {
    session: String,
    /// (label, "from `tool` on `target`", when)
    labels: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "console/agents.html")]
struct Page {
    frame: Frame,
    q: String,
    agents: Vec<AgentView>,
    can_operate: bool,
}

pub(super) fn page(ctx: &Ctx<'_>, query: &str) -> Reply {
    let q = view::query_pairs(query, &["q"])?
        .into_iter()
        .map(|(_, v)| v)
        .next_back()
        .unwrap_or_default();
    let reports = ctx
        .state
        .arbiter()
        .and_then(|a| a.agents().map(|x| x.report(None)))
        .unwrap_or_default();
    let flows = ctx.state.arbiter().and_then(|a| a.flows().cloned());
    let needle = q.to_lowercase();
    let agents = reports
        .into_iter()
        .filter(|r| needle.is_empty() || r.agent.to_lowercase().contains(&needle))
        .map(|report| AgentView {
            link: view::encode(&report.agent),
            spend: format!(
                "{}.{:02}",
                report.spend_today_cents / 100,
                report.spend_today_cents % 100
            ),
            breaker_until: report.breaker.as_ref().map(|b| view::when(b.until_ms)),
            sessions: flows
                .as_ref()
                .map(|f| f.sessions_of(&report.agent))
                .unwrap_or_default()
                .into_iter()
                .map(|(session, labels)| SessionView {
                    session: if session.is_empty() {
                        "(no session)".into()
                    } else {
                        session
                    },
                    labels: labels
                        .into_iter()
                        .map(|l| {
                            let o = l.origin;
                            let on = if o.target.is_empty() {
                                String::new()
                            } else {
                                format!(" on {}", o.target)
                            };
                            (
                                l.name,
                                format!("{} {}{on}", o.kind, o.name),
                                view::when(o.at_ms),
                            )
                        })
                        .collect(),
                })
                .collect(),
            report,
        })
        .collect();
    html(
        StatusCode::OK,
        &Page {
            frame: ctx.frame("Agents", "agents"),
            q,
            agents,
            can_operate: ctx.op.has(Role::Operator),
        },
    )
}

/// `POST /console/agents/{id}/suspend|resume`, with a reason.
pub(super) async fn change(ctx: &Ctx<'_>, id: String, suspend: bool, fields: Fields) -> Reply {
    fields.only(&["reason"])?;
    crate::front_door::auth::require(&ctx.op, Role::Operator)?;
    let reason = fields.required("reason", "a reason")?;
    crate::front_door::admin::agents::change(ctx.state, id.clone(), suspend, Some(reason), &ctx.op)
        .await?;
    let verb = if suspend { "suspended" } else { "resumed" };
    ctx.done(
        Ok(format!("You {verb} agent {id}.")),
        &format!("/console/agents?q={}", view::encode(&id)),
    )
}
