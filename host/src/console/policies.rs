//! Policies: the serving version and its signer, the mode with a switch
//! that first says what will change, the versions kept with rollback, the
//! last load attempt, and each candidate with its A/B report drawn as a
//! confusion matrix, its diverging samples, and promote.

use std::str::FromStr;

use askama::Template;
use hyper::StatusCode;

use super::form::Fields;
use super::view::{self, Frame};
use super::{Ctx, Refusal, Reply, html};
use crate::config::Role;
use crate::decision::Mode;
use crate::front_door::admin::{policies::roll_back, rollout};
use crate::mode::Role as CandidateRole;
use crate::reload::{Attempt, PolicyStatus};

/// Diverging samples shown per candidate.
const SAMPLES_SHOWN: usize = 5;

pub(crate) struct VersionView {
    version: String,
    /// What a rollback to it posts: its digest, or nothing for the one
    /// loaded just before the serving one (a promoted candidate can share
    /// its bytes, and so its digest, with the version it replaced).
    rollback_to: Option<String>,
    short: String,
    loaded_at: String,
    signer: String,
    serving: bool,
}

pub(crate) struct SampleView {
    decision_id: String,
    at: String,
    serving: String,
    candidate: String,
    input: String,
}

pub(crate) struct CandidateView {
    id: String,
    role: String,
    version: String,
    error: Option<String>,
    compared: u64,
    agreement: String,
    /// Outcome labels, rows (serving) and columns (candidate) alike.
    outcomes: Vec<String>,
    /// Counts, row by row.
    matrix: Vec<Vec<u64>>,
    samples: Vec<SampleView>,
}

pub(crate) struct PolicyView {
    name: String,
    link: String,
    state: &'static str,
    serving: Option<VersionView>,
    mode: &'static str,
    mode_source: String,
    others: Vec<&'static str>,
    versions: Vec<VersionView>,
    last_attempt: String,
    last_error: Option<String>,
    candidates: Vec<CandidateView>,
}

#[derive(Template)]
#[template(path = "console/policies.html")]
struct Page {
    frame: Frame,
    policies: Vec<PolicyView>,
    can_operate: bool,
}

#[derive(Template)]
#[template(path = "console/confirm_mode.html")]
struct Confirm {
    frame: Frame,
    name: String,
    link: String,
    from: &'static str,
    to: &'static str,
    effect: &'static str,
}

const MODES: [Mode; 3] = [Mode::Monitor, Mode::SoftEnforce, Mode::Enforce];

fn version_view(v: &crate::reload::VersionStatus) -> VersionView {
    VersionView {
        short: view::short(&v.version),
        version: v.version.clone(),
        rollback_to: Some(v.version.clone()),
        loaded_at: v.loaded_at.clone(),
        signer: v.signer.as_ref().map_or_else(
            || "unsigned".to_owned(),
            |s| {
                format!(
                    "{} (version {}, signed {})",
                    s.key_id, s.version, s.signed_at
                )
            },
        ),
        serving: v.serving,
    }
}

fn attempt(a: &Attempt) -> (String, Option<String>) {
    let at = a.at.clone().unwrap_or_else(|| "never".into());
    let error = a.error.as_ref().map(|e| match &a.step {
        Some(step) => format!("{step}: {e}"),
        None => e.clone(),
    });
    (at, error)
}

fn policy_view(ctx: &Ctx<'_>, p: &PolicyStatus) -> PolicyView {
    let (last_attempt, last_error) = attempt(&p.last_attempt);
    let report = ctx
        .state
        .arbiter()
        .and_then(|a| {
            a.shadow_if_started()
                .map(|s| s.divergences().report(&p.name))
        })
        .unwrap_or_default();
    let candidates = p
        .candidates
        .iter()
        .map(|c| {
            let pair = report.iter().find(|r| r.candidate == c.id);
            let mut outcomes: Vec<String> = pair
                .map(|r| {
                    r.confusion
                        .iter()
                        .flat_map(|(row, cols)| {
                            std::iter::once(row.clone()).chain(cols.keys().cloned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            outcomes.sort();
            outcomes.dedup();
            let matrix = outcomes
                .iter()
                .map(|row| {
                    outcomes
                        .iter()
                        .map(|col| {
                            pair.and_then(|r| r.confusion.get(row))
                                .and_then(|cols| cols.get(col))
                                .copied()
                                .unwrap_or(0)
                        })
                        .collect()
                })
                .collect();
            let (_, error) = attempt(&c.last_attempt);
            CandidateView {
                id: c.id.clone(),
                role: match c.role {
                    CandidateRole::Shadow => "shadow".into(),
                    CandidateRole::Canary { percent } => format!("canary, {percent}% of sessions"),
                },
                version: c
                    .version
                    .as_ref()
                    .map_or_else(|| "not loaded".into(), |v| view::short(&v.version)),
                error,
                compared: pair.map_or(0, |r| r.compared),
                agreement: pair.map_or_else(
                    || "-".into(),
                    |r| format!("{:.1}%", r.agreement_rate * 100.0),
                ),
                outcomes,
                matrix,
                samples: pair
                    .map(|r| {
                        r.samples
                            .iter()
                            .take(SAMPLES_SHOWN)
                            .map(|s| SampleView {
                                decision_id: s.decision_id.clone(),
                                at: s.at.clone(),
                                serving: format!("{} ({})", s.primary.outcome, s.primary.rule),
                                candidate: format!(
                                    "{} ({})",
                                    s.candidate.outcome, s.candidate.rule
                                ),
                                input: view::folded_json(&s.input).0,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    PolicyView {
        link: view::encode(&p.name),
        name: p.name.clone(),
        state: if p.serving.is_some() {
            "serving"
        } else {
            "failed"
        },
        serving: p.serving.as_ref().map(version_view),
        mode: p.mode.as_str(),
        mode_source: match &p.mode_source {
            crate::reload::ModeSource::Config => "from the configuration".into(),
            crate::reload::ModeSource::Runtime { at } => format!("set at run time, {at}"),
        },
        others: MODES
            .iter()
            .filter(|m| **m != p.mode)
            .map(|m| m.as_str())
            .collect(),
        versions: {
            let mut all: Vec<VersionView> = p.versions.iter().map(version_view).collect();
            if let Some(i) = all.iter().position(|v| v.serving)
                && let Some(before) = all.get_mut(i + 1)
            {
                before.rollback_to = None;
            }
            all
        },
        last_attempt,
        last_error,
        candidates,
    }
}

pub(super) fn page(ctx: &Ctx<'_>) -> Reply {
    let registry = ctx
        .state
        .registry()
        .ok_or(crate::front_door::error::FrontDoorError::NotReady)?;
    let policies = registry
        .status()
        .policies
        .iter()
        .map(|p| policy_view(ctx, p))
        .collect();
    html(
        StatusCode::OK,
        &Page {
            frame: ctx.frame("Policies", "policies"),
            policies,
            can_operate: ctx.op.has(Role::Operator),
        },
    )
}

fn mode_named(s: &str) -> Result<Mode, Refusal> {
    Mode::from_str(s).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// What switching to `to` does, in a sentence.
fn effect(to: Mode) -> &'static str {
    match to {
        Mode::Monitor => {
            "The policy stops running. Every action it would judge is recorded and allowed, and its baseline is learned."
        }
        Mode::SoftEnforce => {
            "The policy runs and its answers are recorded and reported as warnings, but an action it would deny is allowed."
        }
        Mode::Enforce => {
            "The policy's answers bind: what it denies is denied, what it sends for approval waits for a person."
        }
    }
}

/// `GET /console/policies/{name}/mode?to=MODE`: what the switch will do,
/// and the form that does it.
pub(super) fn confirm_mode(ctx: &Ctx<'_>, name: &str, query: &str) -> Reply {
    let to = view::query_pairs(query, &["to"])?
        .pop()
        .map(|(_, v)| v)
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "say which mode: `?to=monitor`"))?;
    let to = mode_named(&to)?;
    let registry = ctx
        .state
        .registry()
        .ok_or(crate::front_door::error::FrontDoorError::NotReady)?;
    let status = registry.status();
    let p = status
        .policies
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no policy `{}`", name.chars().take(100).collect::<String>()),
            )
        })?;
    html(
        StatusCode::OK,
        &Confirm {
            frame: ctx.frame(&format!("Switch {name} to {to}?"), "policies"),
            name: name.to_owned(),
            link: view::encode(name),
            from: p.mode.as_str(),
            to: to.as_str(),
            effect: effect(to),
        },
    )
}

/// `POST /console/policies/{name}/mode|rollback|promote`.
pub(super) async fn change(ctx: &Ctx<'_>, name: String, verb: &str, fields: Fields) -> Reply {
    crate::front_door::auth::require(&ctx.op, Role::Operator)?;
    let message = match verb {
        "mode" => {
            fields.only(&["mode"])?;
            let to = mode_named(&fields.required("mode", "the mode")?)?;
            let done = rollout::mode_to(ctx.state, &name, to, &ctx.op)?;
            format!(
                "{} is now in {} mode (was {}).",
                done.policy, done.to, done.from
            )
        }
        "rollback" => {
            fields.only(&["version"])?;
            let version = fields.get("version");
            let done = roll_back(ctx.state, &name, version.as_deref(), &ctx.op)?;
            format!(
                "{} serves {} again (was {}).",
                done.policy,
                view::short(&done.to),
                view::short(&done.from)
            )
        }
        _ => {
            fields.only(&["candidate"])?;
            let candidate = fields.required("candidate", "the candidate")?;
            let done = rollout::promote_candidate(ctx.state, name, candidate, &ctx.op).await?;
            format!(
                "Candidate {} of {} now serves ({}).",
                done.candidate,
                done.policy,
                view::short(&done.to)
            )
        }
    };
    ctx.done(Ok(message), "/console/policies")
}
