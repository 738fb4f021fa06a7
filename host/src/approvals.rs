//! Approvals: a require-approval that a person answers.
//!
//! When the binding outcome is require-approval, a pending [`Approval`] is
//! created, bound to a digest of the exact action and context asked about
//! and to the versions of the policies that asked, and stored durably
//! before the caller hears of it. A person approves or declines it with a
//! reason; the caller then asks again with `approval_id`: if the approval
//! was granted, is unexpired, unused, and the action's digest and the
//! asking policies' versions match, the answer is allow, once. Anything
//! else is a deny that says why. A pending approval past its time expires.
//!
//! Every change is stored ([`crate::state::ApprovalStore`], committed) and
//! written to the decision log before it is reported (a person's answer
//! as an `admin` record naming them, expiry and use as `approval`
//! records);
//! a change either cannot take is not made. Changes are serialized under
//! one lock here, and each is a compare-and-set on the approval's status in
//! the store ([`crate::state::ApprovalStore::transition`]), so two callers
//! racing with one granted approval cannot both use it, in this process or
//! in another holding the same store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

pub use crate::decision::{ApprovalRef, ApprovalStatus as Status};

use crate::decision::{Decision, Outcome, Request};
use crate::evidence::log::DecisionLog;
use crate::evidence::record::value_sha256;
pub use crate::state::{Answer, Approval};
use crate::state::{ApprovalStore, StoreError};
use crate::time::{Clock, ms_time};

/// Why an answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such approval.
    #[error("no approval `{0}`")]
    Unknown(String),
    /// It is not pending any more.
    #[error("approval `{id}` is {status}, not pending")]
    NotPending {
        /// The approval.
        id: String,
        /// Where it stands.
        status: &'static str,
    },
    /// A reason is required.
    #[error("a reason is required")]
    NoReason,
    /// The approver is the agent or the user the approval is for.
    #[error("`{approver}` is the {whose} of approval `{id}`, and may not answer it")]
    OwnRequest {
        /// The approval.
        id: String,
        /// Who tried.
        approver: String,
        /// `agent` or `user`.
        whose: &'static str,
    },
    /// Four eyes: this approver already approved; another must.
    #[error("`{by}` already approved `{id}`; it needs another approver")]
    SameApprover {
        /// The approval.
        id: String,
        /// Who tried twice.
        by: String,
    },
    /// Too many callers are already waiting on this agent's approvals,
    /// or on approvals at all.
    #[error(
        "{limit} callers are already waiting on approvals{}; poll without waiting, or later",
        agent.as_ref().map_or(String::new(), |a| format!(" of agent `{a}`"))
    )]
    TooManyWaiting {
        /// The agent, when it is its own bound that was reached.
        agent: Option<String>,
        /// The bound.
        limit: usize,
    },
    /// The store could not take it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The decision log could not take it.
    #[error("the change could not be recorded in the decision log, so it was not made: {0}")]
    Unrecorded(#[source] crate::evidence::log::Unrecorded),
}

/// The approvals of one server.
pub struct Approvals {
    inner: Mutex<BTreeMap<String, Approval>>,
    store: Option<Arc<dyn ApprovalStore>>,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    keep_ms: u64,
    /// How many distinct approvers each rule and risk needs.
    rules: Vec<crate::config::ApprovalRule>,
    log: Option<Arc<DecisionLog>>,
    /// Bumped on every change, for long-polling callers.
    changed: tokio::sync::watch::Sender<u64>,
    limits: Limits,
    /// Callers waiting now, by agent.
    waiting: Mutex<HashMap<String, usize>>,
    /// Other replicas write the store too: an approval is read again
    /// from it before it is used or answered.
    shared: bool,
}

/// How many approvals and waiters there may be at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open (pending or granted, unused) approvals in all.
    pub open: usize,
    /// Open approvals of one agent.
    pub open_per_agent: usize,
    /// Closed approvals kept.
    pub kept: usize,
    /// Callers waiting on one agent's approvals.
    pub waiting_per_agent: usize,
    /// Callers waiting on approvals, every agent together.
    pub waiting: usize,
}

impl Limits {
    /// The limits `[approvals]` sets.
    pub fn of(config: &crate::config::ApprovalsConfig) -> Self {
        Limits {
            open: config.max_open,
            open_per_agent: config.max_open_per_agent,
            kept: config.max_kept,
            waiting_per_agent: config.max_waiting_per_agent,
            waiting: config.max_waiting,
        }
    }
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("count", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Approvals {
    /// Approvals kept in `store` (read back now), expiring `ttl` after they
    /// are asked for and forgotten `keep` after they are answered.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    pub fn open(
        store: Option<Arc<dyn ApprovalStore>>,
        clock: Arc<dyn Clock>,
        ttl: Duration,
        keep: Duration,
    ) -> Result<Self, StoreError> {
        let all = match &store {
            Some(s) => s
                .approvals()?
                .into_iter()
                .map(|a| (a.id.clone(), a))
                .collect(),
            None => BTreeMap::new(),
        };
        Ok(Approvals {
            inner: Mutex::new(all),
            store,
            clock,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            keep_ms: u64::try_from(keep.as_millis()).unwrap_or(u64::MAX),
            rules: Vec::new(),
            log: None,
            changed: tokio::sync::watch::channel(0).0,
            limits: Limits::of(&crate::config::ApprovalsConfig::default()),
            waiting: Mutex::new(HashMap::new()),
            shared: false,
        })
    }

    /// Approvals in a store other replicas share: each is read again from
    /// the store before it is used or answered, so that what another
    /// replica did to it is seen even before its notification arrives.
    #[must_use]
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Reads approval `id` again from the store, for a change another
    /// replica made.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed here.
    pub fn refresh(&self, id: &str) -> Result<(), StoreError> {
        self.refresh_in(&mut self.lock(), id)?;
        self.bump();
        Ok(())
    }

    /// Reads every approval again from the store.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed here.
    pub fn reload(&self) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let fresh = store
            .approvals()?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        *self.lock() = fresh;
        self.bump();
        Ok(())
    }

    /// Reads `id` again into `all`, under the caller's lock, so no change
    /// made here interleaves with the reading.
    fn refresh_in(&self, all: &mut BTreeMap<String, Approval>, id: &str) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        match store.approval(id)? {
            Some(a) => {
                all.insert(id.to_owned(), a);
            }
            None => {
                all.remove(id);
            }
        }
        Ok(())
    }

    /// Bounds open approvals, kept ones and waiters as `limits` say.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Asks for two distinct approvers where `rules` say so.
    #[must_use]
    pub fn with_rules(mut self, rules: Vec<crate::config::ApprovalRule>) -> Self {
        self.rules = rules;
        self
    }

    /// Writes every answer, expiry and use to `log`.
    #[must_use]
    pub fn with_log(mut self, log: Arc<DecisionLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// The second pass of a decision: a require-approval asked with an
    /// approval id is answered from it; one asked without creates a
    /// pending approval. Other outcomes pass unchanged. A failure to
    /// store fails closed.
    pub fn apply(&self, request: &Request, mut decision: Decision) -> Decision {
        if decision.outcome != Outcome::RequireApproval {
            return decision;
        }
        let digest = digest(request);
        let asking = asking(&decision);
        let now = self.clock.now_ms();
        let mut all = self.lock();
        if let Some(id) = &request.approval_id {
            if self.shared
                && let Err(e) = self.refresh_in(&mut all, id)
            {
                let reason = format!(
                    "Arbiter could not read approval `{}` from the shared state: {e}; failing closed.",
                    truncate(id)
                );
                return decision.overruled("failure.approvals", reason);
            }
            return match self.redeem(&mut all, id, &digest, &asking, &decision, now) {
                Redeemed::Allowed(a) => {
                    let given = if a.approvers.is_empty() {
                        a.answer.iter().cloned().collect()
                    } else {
                        a.approvers.clone()
                    };
                    let said: Vec<String> = given
                        .iter()
                        .map(|x| format!("{} at {}: {}", x.by, ms_time(x.at_ms), x.reason))
                        .collect();
                    decision.outcome = Outcome::Allow;
                    decision.rule = "approval.granted".into();
                    decision.reason =
                        format!("Approved by {}; allowed this once.", said.join("; and by "));
                    decision.approval = Some(reference(&a));
                    decision
                }
                Redeemed::StillPending(a) => {
                    decision.approval = Some(a);
                    decision
                }
                Redeemed::Refused {
                    rule,
                    reason,
                    approval,
                } => {
                    let mut d = decision.overruled(rule, reason);
                    d.approval = approval;
                    d
                }
            };
        }
        if let Some(reason) = self.over_limit(&all, &request.context.agent.id) {
            return decision.overruled("approval.limit", reason);
        }
        let approval = Approval {
            id: uuid::Uuid::now_v7().to_string(),
            status: Status::Pending,
            digest,
            policies: asking,
            request: json!({
                "action": request.action,
                "context": request.context,
                "history": request.history,
            }),
            rule: decision.rule.clone(),
            reason: decision.reason.clone(),
            risk: decision.risk,
            decision_id: decision.decision_id.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(self.ttl_ms),
            answer: None,
            required: crate::config::ApprovalsConfig::required_by(
                &self.rules,
                &decision.rule,
                decision.risk,
            ),
            approvers: Vec::new(),
            used_by: None,
            verdicts: decision
                .policies
                .iter()
                .map(|p| crate::state::Verdict {
                    policy: p.name.clone(),
                    outcome: p.outcome.as_str().to_owned(),
                    rule: p.rule.clone(),
                    reason: p.reason.clone(),
                    risk: p.risk,
                })
                .collect(),
        };
        if let Err(e) = self.create(&approval) {
            let reason = format!(
                "Arbiter could not keep the approval this action needs: {e}; failing closed."
            );
            return decision.overruled("failure.approvals", reason);
        }
        decision.approval = Some(reference(&approval));
        all.insert(approval.id.clone(), approval);
        self.bump();
        decision
    }

    /// Why one more open approval for `agent` is refused, if it is.
    fn over_limit(&self, all: &BTreeMap<String, Approval>, agent: &str) -> Option<String> {
        let open: Vec<&Approval> = all
            .values()
            .filter(|a| matches!(a.status, Status::Pending | Status::Approved))
            .collect();
        if open.len() >= self.limits.open {
            return Some(format!(
                "{} approvals are already open, the most there may be; this action needs one, so it is denied.",
                open.len()
            ));
        }
        let mine = open.iter().filter(|a| agent_of(a) == agent).count();
        (mine >= self.limits.open_per_agent).then(|| {
            format!(
                "Agent `{}` already has {mine} approvals open, the most one agent may; this action needs one, so it is denied.",
                truncate(agent)
            )
        })
    }

    fn redeem(
        &self,
        all: &mut BTreeMap<String, Approval>,
        id: &str,
        digest: &str,
        asking: &BTreeMap<String, String>,
        decision: &Decision,
        now: u64,
    ) -> Redeemed {
        let Some(a) = all.get_mut(id) else {
            return Redeemed::Refused {
                rule: "approval.unknown",
                reason: format!("There is no approval `{}`; failing closed.", truncate(id)),
                approval: None,
            };
        };
        self.expire_if_due(a, now);
        let refuse = |rule, reason: String, a: &Approval| Redeemed::Refused {
            rule,
            reason,
            approval: Some(reference(a)),
        };
        if a.digest != digest {
            return refuse(
                "approval.action-changed",
                format!(
                    "Approval `{id}` was given for another action or context than this one; ask again."
                ),
                a,
            );
        }
        if &a.policies != asking {
            return refuse(
                "approval.policy-changed",
                format!(
                    "Approval `{id}` was asked for by other policy versions than those deciding now; ask again."
                ),
                a,
            );
        }
        match a.status {
            Status::Pending => Redeemed::StillPending(reference(a)),
            Status::Declined => {
                let why = a
                    .answer
                    .as_ref()
                    .map_or(String::new(), |x| format!(" by {}: {}", x.by, x.reason));
                refuse(
                    "approval.declined",
                    format!("Approval `{id}` was declined{why}."),
                    a,
                )
            }
            Status::Expired => refuse(
                "approval.expired",
                format!(
                    "Approval `{id}` expired at {}, {}.",
                    ms_time(a.expires_ms),
                    if a.answer.is_some() {
                        "granted but not used"
                    } else {
                        "unanswered"
                    }
                ),
                a,
            ),
            Status::Used => refuse(
                "approval.used",
                format!(
                    "Approval `{id}` was already used by decision {}; an approval allows once.",
                    a.used_by.as_deref().unwrap_or("?")
                ),
                a,
            ),
            Status::Approved => {
                let mut used = a.clone();
                used.status = Status::Used;
                used.used_by = Some(decision.decision_id.clone());
                match self.transition(Status::Approved, &used) {
                    Ok(true) => {}
                    // Another holder of the store used it first.
                    Ok(false) => {
                        return refuse(
                            "approval.used",
                            format!("Approval `{id}` was already used; an approval allows once."),
                            a,
                        );
                    }
                    Err(e) => {
                        return refuse(
                            "failure.approvals",
                            format!(
                                "Arbiter could not mark approval `{id}` used: {e}; failing closed."
                            ),
                            a,
                        );
                    }
                }
                self.event(&used, "used", None);
                *a = used;
                self.bump();
                Redeemed::Allowed(Box::new(a.clone()))
            }
        }
    }

    /// Approves (`granted`) or declines a pending approval, as `by`, an
    /// authenticated operator's name. Nobody answers for their own agent
    /// or user; an approval needing two approvers stays pending after the
    /// first, and the second must be someone else. A decline by anyone
    /// ends it.
    ///
    /// # Errors
    /// [`ApprovalError`]: unknown, not pending, no reason, the approver's
    /// own request, the same approver twice, or the store or the log
    /// cannot take it.
    pub fn answer(
        &self,
        id: &str,
        granted: bool,
        by: &str,
        reason: &str,
    ) -> Result<Approval, ApprovalError> {
        if reason.trim().is_empty() {
            return Err(ApprovalError::NoReason);
        }
        let now = self.clock.now_ms();
        let mut all = self.lock();
        if self.shared {
            self.refresh_in(&mut all, id)?;
        }
        let a = all
            .get_mut(id)
            .ok_or_else(|| ApprovalError::Unknown(id.to_owned()))?;
        self.expire_if_due(a, now);
        if a.status != Status::Pending {
            return Err(ApprovalError::NotPending {
                id: id.to_owned(),
                status: a.status.as_str(),
            });
        }
        let context = &a.request["context"];
        for (whose, id_of) in [
            ("agent", &context["agent"]["id"]),
            ("user", &context["user"]["id"]),
        ] {
            if id_of.as_str() == Some(by) {
                return Err(ApprovalError::OwnRequest {
                    id: id.to_owned(),
                    approver: by.to_owned(),
                    whose,
                });
            }
        }
        if granted && a.approvers.iter().any(|x| x.by == by) {
            return Err(ApprovalError::SameApprover {
                id: id.to_owned(),
                by: by.to_owned(),
            });
        }
        let answer = Answer {
            by: by.to_owned(),
            reason: reason.to_owned(),
            at_ms: now,
        };
        let recorded = answer.clone();
        let mut next = a.clone();
        let change = if granted {
            next.approvers.push(answer.clone());
            if next.approvers.len() >= usize::from(next.required.max(1)) {
                next.status = Status::Approved;
                next.answer = Some(answer);
                "approved"
            } else {
                "approved-partly"
            }
        } else {
            next.status = Status::Declined;
            next.answer = Some(answer);
            "declined"
        };
        // The log first: an answer an auditor cannot see is not given. A
        // person's answer is an admin action, with its actor.
        if let Some(log) = &self.log {
            let mut data = event_data(&next, change, Some(&recorded));
            data["actor"] = json!(by);
            data["from"] = json!(a.status.as_str());
            data["to"] = json!(next.status.as_str());
            log.record_event("admin", &data)
                .map_err(ApprovalError::Unrecorded)?;
        }
        if !self.transition(Status::Pending, &next)? {
            return Err(ApprovalError::NotPending {
                id: id.to_owned(),
                status: "changed elsewhere",
            });
        }
        *a = next.clone();
        self.bump();
        tracing::info!(
            approval = id,
            status = next.status.as_str(),
            by,
            "approval answered"
        );
        Ok(next)
    }

    /// One approval, expired first if its time is up.
    pub fn get(&self, id: &str) -> Option<Approval> {
        let now = self.clock.now_ms();
        let mut all = self.lock();
        let a = all.get_mut(id)?;
        self.expire_if_due(a, now);
        Some(a.clone())
    }

    /// Every approval, or those with `status`, oldest first.
    pub fn list(&self, status: Option<Status>) -> Vec<Approval> {
        self.expire_due();
        self.lock()
            .values()
            .filter(|a| status.is_none_or(|s| a.status == s))
            .cloned()
            .collect()
    }

    /// Expires every pending approval whose time is up, and forgets
    /// answered ones older than the retention; the server calls it every
    /// second.
    pub fn expire_due(&self) {
        let now = self.clock.now_ms();
        let mut all = self.lock();
        for a in all.values_mut() {
            self.expire_if_due(a, now);
        }
        let old: Vec<String> = all
            .values()
            .filter(|a| a.status != Status::Pending && a.status != Status::Approved)
            .filter(|a| {
                a.expires_ms
                    .max(a.answer.as_ref().map_or(0, |x| x.at_ms))
                    .saturating_add(self.keep_ms)
                    <= now
            })
            .map(|a| a.id.clone())
            .collect();
        // Past `kept`, the oldest closed ones go first (ids are v7 UUIDs:
        // in creation order).
        let closed: Vec<&String> = all
            .iter()
            .filter(|(_, a)| !matches!(a.status, Status::Pending | Status::Approved))
            .map(|(id, _)| id)
            .collect();
        let excess = closed.len().saturating_sub(self.limits.kept);
        let extra: Vec<String> = closed
            .into_iter()
            .take(excess)
            .filter(|id| !old.contains(id))
            .cloned()
            .collect();
        for id in old.into_iter().chain(extra) {
            if let Some(s) = &self.store
                && let Err(e) = s.remove(&id)
            {
                tracing::warn!(approval = %id, error = %e, "an old approval could not be removed");
                continue;
            }
            all.remove(&id);
        }
    }

    /// A receiver that changes whenever any approval does, for live views.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until approval `id` changes or `wait` passes, and returns it
    /// (`None`: no such approval).
    ///
    /// # Errors
    /// [`ApprovalError::TooManyWaiting`] when the approval's agent already
    /// has `max_waiting_per_agent` callers waiting.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<Option<Approval>, ApprovalError> {
        let Some(a) = self.get(id) else {
            return Ok(None);
        };
        let _place = self.waiting_place(agent_of(&a))?;
        Ok(self.wait_for_change(id, wait).await)
    }

    /// A place among the waiters on `agent`'s approvals, given back on drop.
    fn waiting_place(&self, agent: &str) -> Result<Waiting<'_>, ApprovalError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.values().sum::<usize>() >= self.limits.waiting {
            return Err(ApprovalError::TooManyWaiting {
                agent: None,
                limit: self.limits.waiting,
            });
        }
        let n = waiting.entry(agent.to_owned()).or_default();
        if *n >= self.limits.waiting_per_agent {
            return Err(ApprovalError::TooManyWaiting {
                agent: Some(truncate(agent)),
                limit: self.limits.waiting_per_agent,
            });
        }
        *n += 1;
        Ok(Waiting {
            approvals: self,
            agent: agent.to_owned(),
        })
    }

    async fn wait_for_change(&self, id: &str, wait: Duration) -> Option<Approval> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let a = self.get(id)?;
            if a.status != Status::Pending {
                return Some(a);
            }
            let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return self.get(id);
            }
        }
    }

    /// A pending approval unanswered, or a granted one unused, by its
    /// time expires.
    fn expire_if_due(&self, a: &mut Approval, now: u64) {
        if !matches!(a.status, Status::Pending | Status::Approved) || now < a.expires_ms {
            return;
        }
        let mut next = a.clone();
        next.status = Status::Expired;
        if let Err(e) = self.transition(a.status, &next) {
            // Still treated as expired in memory: an unanswered approval
            // never turns into an allow.
            tracing::error!(approval = %a.id, error = %e, "the expiry could not be stored");
        }
        self.event(&next, "expired", None);
        *a = next;
        self.bump();
    }

    fn create(&self, a: &Approval) -> Result<(), StoreError> {
        match &self.store {
            Some(s) => s.create(a),
            None => Ok(()),
        }
    }

    /// Moves `next` from status `from` in the store; `false` when the
    /// stored approval is no longer in `from`. In memory only: always.
    fn transition(&self, from: Status, next: &Approval) -> Result<bool, StoreError> {
        match &self.store {
            Some(s) => s.transition(from, next),
            None => Ok(true),
        }
    }

    /// Best effort, for changes made by the host itself (expiry, use),
    /// whose decisions have their own records.
    fn event(&self, a: &Approval, change: &str, answer: Option<&Answer>) {
        if let Some(log) = &self.log
            && let Err(e) = log.record_event("approval", &event_data(a, change, answer))
        {
            tracing::warn!(approval = %a.id, error = %e, "approval change not recorded in the decision log");
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Approval>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A caller's place among those waiting on one agent's approvals.
struct Waiting<'a> {
    approvals: &'a Approvals,
    agent: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .approvals
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = waiting.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.agent);
            }
        }
    }
}

/// The agent an approval was asked for.
fn agent_of(a: &Approval) -> &str {
    a.request["context"]["agent"]["id"]
        .as_str()
        .unwrap_or_default()
}

/// What an approval a request came back with does to it.
enum Redeemed {
    /// Granted: allow, once.
    Allowed(Box<Approval>),
    /// Not answered yet: require-approval again, with the same approval.
    StillPending(ApprovalRef),
    /// A deny, with its rule and reason.
    Refused {
        rule: &'static str,
        reason: String,
        approval: Option<ApprovalRef>,
    },
}

fn event_data(a: &Approval, change: &str, answer: Option<&Answer>) -> Value {
    json!({
        "approval": a.id,
        "approvals": a.approvers.len(),
        "by": answer.map(|x| x.by.as_str()),
        "change": change,
        "decision_id": a.used_by.as_deref().unwrap_or(&a.decision_id),
        "digest": a.digest,
        "reason": answer.map(|x| x.reason.as_str()),
        "required": a.required,
    })
}

/// The digest an approval is bound to: the canonical action (params
/// included) and context.
pub fn digest(request: &Request) -> String {
    value_sha256(&json!({"action": request.action, "context": request.context}))
}

/// The policies whose answer was require-approval, with their versions.
fn asking(decision: &Decision) -> BTreeMap<String, String> {
    decision
        .policies
        .iter()
        .filter(|p| p.outcome == Outcome::RequireApproval)
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect()
}

fn reference(a: &Approval) -> ApprovalRef {
    ApprovalRef {
        id: a.id.clone(),
        status: a.status,
        expires_at: ms_time(a.expires_ms),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::decision::{Action, Context, Mode, PolicyReport, Principal};

    struct Manual(AtomicU64);

    impl Clock for Manual {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn clock() -> Arc<Manual> {
        Arc::new(Manual(AtomicU64::new(1_000_000)))
    }

    fn request(amount: u64, approval_id: Option<&str>) -> Request {
        Request {
            trace: None,
            action: Action {
                kind: "tool".into(),
                name: "payments.transfer".into(),
                target: String::new(),
                params: json!({"amount": amount}),
            },
            context: Context {
                agent: Principal {
                    id: "bot".into(),
                    roles: Vec::new(),
                },
                ..Context::default()
            },
            history: Default::default(),
            approval_id: approval_id.map(str::to_owned),
        }
    }

    /// What the policies answered: require-approval from `version`.
    fn asked(version: &str) -> Decision {
        let mut d = Decision::host_deny("spend.approval", "Over $5000.".into(), Instant::now());
        d.outcome = Outcome::RequireApproval;
        d.decided = Outcome::RequireApproval;
        d.policies = vec![PolicyReport {
            name: "procurement".into(),
            version: version.into(),
            signer: None,
            signed_version: None,
            mode: Mode::Enforce,
            candidate: None,
            outcome: Outcome::RequireApproval,
            rule: "spend.approval".into(),
            reason: "Over $5000.".into(),
            risk: 60,
            params: None,
            fuel: 0,
            micros: 0,
            failure: None,
            labels: Vec::new(),
            questions: Vec::new(),
        }];
        d
    }

    fn approvals(clock: Arc<Manual>, store: Option<Arc<dyn ApprovalStore>>) -> Approvals {
        Approvals::open(
            store,
            clock,
            Duration::from_secs(60),
            Duration::from_secs(600),
        )
        .expect("open")
    }

    fn pending_id(a: &Approvals) -> String {
        let d = a.apply(&request(9000, None), asked("sha256:v1"));
        assert_eq!(d.outcome, Outcome::RequireApproval);
        let r = d.approval.expect("an approval");
        assert_eq!(r.status, Status::Pending);
        r.id
    }

    #[test]
    fn a_granted_approval_allows_exactly_once() {
        let a = approvals(clock(), None);
        let id = pending_id(&a);
        let again = a.apply(&request(9000, Some(&id)), asked("sha256:v1"));
        assert_eq!(again.outcome, Outcome::RequireApproval, "still pending");
        a.answer(&id, true, "alice", "PO checked")
            .expect("answered");
        let used = a.apply(&request(9000, Some(&id)), asked("sha256:v1"));
        assert_eq!(
            (used.outcome, used.rule.as_str()),
            (Outcome::Allow, "approval.granted")
        );
        assert!(used.reason.contains("alice"), "{}", used.reason);
        let replay = a.apply(&request(9000, Some(&id)), asked("sha256:v1"));
        assert_eq!(
            (replay.outcome, replay.rule.as_str()),
            (Outcome::Deny, "approval.used")
        );
    }

    #[test]
    fn an_approval_binds_the_action_and_the_asking_versions() {
        let a = approvals(clock(), None);
        let id = pending_id(&a);
        a.answer(&id, true, "alice", "ok").expect("answered");
        let other = a.apply(&request(90_000, Some(&id)), asked("sha256:v1"));
        assert_eq!(other.rule, "approval.action-changed");
        let newer = a.apply(&request(9000, Some(&id)), asked("sha256:v2"));
        assert_eq!(newer.rule, "approval.policy-changed");
        let made_up = a.apply(&request(9000, Some("nope")), asked("sha256:v1"));
        assert_eq!(
            (made_up.outcome, made_up.rule.as_str()),
            (Outcome::Deny, "approval.unknown")
        );
    }

    #[test]
    fn declined_expired_and_unreasoned_answers_never_allow() {
        let clock = clock();
        let a = approvals(Arc::clone(&clock), None);
        let declined = pending_id(&a);
        assert!(matches!(
            a.answer(&declined, false, "bob", " "),
            Err(ApprovalError::NoReason)
        ));
        a.answer(&declined, false, "bob", "no PO")
            .expect("declined");
        let d = a.apply(&request(9000, Some(&declined)), asked("sha256:v1"));
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::Deny, "approval.declined")
        );
        assert!(matches!(
            a.answer(&declined, true, "bob", "changed my mind"),
            Err(ApprovalError::NotPending { .. })
        ));

        let late = pending_id(&a);
        clock.0.fetch_add(61_000, Ordering::Relaxed);
        assert_eq!(a.get(&late).expect("kept").status, Status::Expired);
        let d = a.apply(&request(9000, Some(&late)), asked("sha256:v1"));
        assert_eq!(d.rule, "approval.expired");
        assert!(matches!(
            a.answer("nope", true, "x", "y"),
            Err(ApprovalError::Unknown(_))
        ));
    }

    #[test]
    fn a_use_another_holder_of_the_store_made_first_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::state::open(dir.path()).expect("state").approvals;
        let clock = clock();
        let first = approvals(Arc::clone(&clock), Some(Arc::clone(&store)));
        let id = pending_id(&first);
        first.answer(&id, true, "alice", "ok").expect("answered");
        // A second holder (a replica) reads the granted approval.
        let second = approvals(clock, Some(store));
        let used = first.apply(&request(9000, Some(&id)), asked("sha256:v1"));
        assert_eq!(used.outcome, Outcome::Allow);
        let again = second.apply(&request(9000, Some(&id)), asked("sha256:v1"));
        assert_eq!(
            (again.outcome, again.rule.as_str()),
            (Outcome::Deny, "approval.used")
        );
    }
}
