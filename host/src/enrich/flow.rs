//! Flow: what the host keeps of each session's labelled results
//! ([`crate::flow`]), bounded in sessions, labels, prints and time.
//!
//! A decision starts from a snapshot of its session's flow (labels
//! introduced longer than `[flow] ttl_s` ago forgotten first), which its
//! policies see in `context.labels` and ask through `labels-of`. A result
//! let through attaches its labels (its policies' and the configured
//! rules'), and the fingerprints of its text, to the session, in the store
//! before the result is answered. A session or label that would pass its
//! bound is refused, and the result withheld, rather than evicting what
//! another result brought.
//!
//! Allowed calls are also remembered, bounded, for `POST /v1/results`: a
//! caller that runs a tool itself posts its result with the call's
//! decision id, once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;

use crate::config::{FlowConfig, FlowScope};
use crate::decision::{Context, Decision, Outcome, Request};
use crate::flow::{Fingerprinter, LabelQuery, Live, Origin, SessionFlow, StoredFlow, is_result};
use crate::state::{FlowStore, StoreError};
use crate::time::Clock;

/// The rule of a result withheld because its labels cannot be kept.
pub const FULL_RULE: &str = "flow.full";
/// The rule of a decision the session's flow could not be read or kept for.
pub const UNAVAILABLE_RULE: &str = "flow.unavailable";

/// Each session's flow, and the calls awaiting a result.
pub struct Flows {
    config: FlowConfig,
    fingerprinter: Fingerprinter,
    store: Option<Arc<dyn FlowStore>>,
    /// Other replicas write the store too: each decision reads its
    /// session from it.
    shared: bool,
    clock: Arc<dyn Clock>,
    sessions: Mutex<HashMap<String, Arc<SessionFlow>>>,
    calls: Mutex<Calls>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("sessions", &self.lock_sessions().len())
            .finish_non_exhaustive()
    }
}

/// Allowed calls by decision id, oldest first, for their results.
#[derive(Default)]
struct Calls {
    by_id: HashMap<String, Call>,
    order: VecDeque<(u64, String)>,
}

/// A call whose result may be posted.
#[derive(Debug, Clone)]
pub struct Call {
    /// The call's action, as it ran (after any modify).
    pub action: crate::decision::Action,
    /// Its context.
    pub context: Context,
    /// When it was decided, ms since the epoch.
    pub at_ms: u64,
}

/// Why a posted result is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultRefused {
    /// No allowed call has that id (never, denied, or forgotten: its
    /// result came too late or was crowded out).
    #[error("no allowed call awaits a result under decision id `{0}`")]
    Unknown(String),
    /// Its result was posted already.
    #[error("the result of decision `{0}` was posted already")]
    Reused(String),
    /// The poster is not the agent that made the call.
    #[error("decision `{0}` is another agent's call")]
    OtherAgent(String),
}

/// A session's flow as one decision sees it.
#[derive(Clone)]
pub struct Snapshot {
    /// The session's flow when the decision started.
    pub flow: Arc<SessionFlow>,
    /// What `labels-of` answers from.
    pub query: Arc<dyn LabelQuery>,
}

/// A session's key: agent and session (sessionless callers, and every
/// session under scope `agent`, by agent).
pub fn session_key(scope: FlowScope, context: &Context) -> String {
    match scope {
        FlowScope::Session => format!("{}\0{}", context.agent.id, context.session),
        FlowScope::Agent => format!("{}\0", context.agent.id),
    }
}

impl Flows {
    /// The flows `config` bounds, fingerprinted under `key`, kept in
    /// `store` (read back now, unless `shared` with other replicas, whose
    /// sessions are read as each decision needs them).
    ///
    /// # Errors
    /// A [`StoreError`] when the stored flows cannot be read.
    pub fn open(
        config: FlowConfig,
        key: &[u8; 32],
        store: Option<Arc<dyn FlowStore>>,
        shared: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let mut sessions = HashMap::new();
        if let (Some(s), false) = (&store, shared) {
            for (key, stored) in s.flows()? {
                sessions.insert(key, Arc::new(SessionFlow::from_stored(stored)));
            }
        }
        Ok(Flows {
            fingerprinter: Fingerprinter::new(key, config.min_match),
            config,
            store,
            shared,
            clock,
            sessions: Mutex::new(sessions),
            calls: Mutex::default(),
        })
    }

    /// The configuration it keeps flows by.
    pub fn config(&self) -> &FlowConfig {
        &self.config
    }

    /// The flow of `request`'s session, its expired labels forgotten.
    ///
    /// # Errors
    /// A [`StoreError`] when a shared store cannot be read, or the
    /// forgetting cannot be kept.
    pub fn snapshot(&self, request: &Request) -> Result<Snapshot, StoreError> {
        let key = session_key(self.config.scope, &request.context);
        let flow = match (&self.store, self.shared) {
            (Some(store), true) => {
                let stored = crate::state::blocking(|| store.flow(&key))?;
                stored.map(|s| Arc::new(SessionFlow::from_stored(s)))
            }
            _ => self.lock_sessions().get(&key).cloned(),
        };
        let mut flow = flow.unwrap_or_default();
        let cutoff = self.cutoff();
        let expired = flow.expired(cutoff);
        if !expired.is_empty() {
            if let Some(store) = &self.store {
                crate::state::blocking(|| store.forget_flow(&key, &expired))?;
            }
            Arc::make_mut(&mut flow).forget(&expired);
            let mut sessions = self.lock_sessions();
            if flow.is_empty() {
                sessions.remove(&key);
            } else if !self.shared {
                sessions.insert(key, Arc::clone(&flow));
            }
        }
        let query = Arc::new(Live {
            flow: Arc::clone(&flow),
            fingerprinter: self.fingerprinter.clone(),
            max_value_bytes: self.config.max_value_bytes,
        });
        Ok(Snapshot { flow, query })
    }

    /// Whether `label` is in the vocabulary.
    pub fn allows(&self, label: &str) -> bool {
        self.config.allows(label)
    }

    /// The labels a result decided by `decision` carries: its policies'
    /// and those of the rules matching the call. Empty for anything but a
    /// result let through.
    pub fn labels_for(&self, request: &Request, decision: &Decision) -> Vec<String> {
        let a = &request.action;
        if !is_result(&a.kind) || !matches!(decision.outcome, Outcome::Allow | Outcome::Modify) {
            return Vec::new();
        }
        let kind = call_kind(&a.kind);
        let server = request
            .context
            .attributes
            .get("mcp.server")
            .map(String::as_str);
        let mut labels: Vec<String> = decision
            .policies
            .iter()
            .flat_map(|p| p.labels.iter().cloned())
            .chain(
                self.config
                    .rules
                    .iter()
                    .filter(|r| r.matches(server, kind, &a.name, &a.target))
                    .flat_map(|r| r.labels.iter().cloned()),
            )
            .collect();
        labels.sort_unstable();
        labels.dedup();
        labels
    }

    /// Attaches `labels` to the session of `request`, a result decided
    /// `decision_id` whose text (as let through) is `result`: in the store
    /// first, then here.
    ///
    /// # Errors
    /// A deny to answer instead: the session or its labels are full
    /// ([`FULL_RULE`]), or the store refused ([`UNAVAILABLE_RULE`]).
    pub fn attach(
        &self,
        request: &Request,
        decision_id: &str,
        labels: &[String],
        result: &Value,
    ) -> Result<(), (&'static str, String)> {
        let key = session_key(self.config.scope, &request.context);
        let a = &request.action;
        let origin = Origin {
            decision_id: decision_id.to_owned(),
            kind: call_kind(&a.kind).to_owned(),
            name: a.name.clone(),
            target: a.target.clone(),
            at_ms: self.clock.now_ms(),
        };
        let prints = crate::flow::prints_of(&self.fingerprinter, result);
        let c = &self.config;
        // The addition on its own, for the store to merge: bounded by the
        // session's room, checked against what this replica holds.
        let current = self.lock_sessions().get(&key).cloned();
        let room = c
            .max_prints
            .saturating_sub(current.as_ref().map_or(0, |f| f.print_count()));
        let mut added = SessionFlow::default();
        added
            .attach(labels, &origin, &prints, c.max_labels, room)
            .map_err(full)?;
        // The bounds, checked against what this replica holds: the lock is
        // not held across the store's write, so decisions never wait on it.
        if let Some(cur) = &current {
            let held = cur.labels();
            let new = labels
                .iter()
                .filter(|n| !held.iter().any(|l| &l.name == *n))
                .count();
            if held.len() + new > c.max_labels.min(crate::flow::MAX_SESSION_LABELS) {
                return Err(full(crate::flow::Full::Labels(held.len())));
            }
        }
        if current.is_none() && !self.shared {
            let mut sessions = self.lock_sessions();
            if sessions.len() >= c.max_sessions {
                // Expired sessions make room before a result is refused.
                let cutoff = self.cutoff();
                sessions.retain(|_, f| f.labels().iter().any(|l| l.origin.at_ms >= cutoff));
                if sessions.len() >= c.max_sessions {
                    return Err((
                        FULL_RULE,
                        format!(
                            "Arbiter keeps the labels of {} sessions, as many as [flow] max_sessions allows; the result is withheld rather than let through untracked.",
                            sessions.len()
                        ),
                    ));
                }
            }
        }
        if let Some(store) = &self.store {
            let stored: StoredFlow = added.to_stored();
            crate::state::blocking(|| store.add_flow(&key, &stored)).map_err(|e| {
                (
                    UNAVAILABLE_RULE,
                    format!(
                        "The session's labels cannot be kept ({e}); the result is withheld rather than let through untracked."
                    ),
                )
            })?;
        }
        if !self.shared {
            // Merged into what the session holds now: another result of
            // the session may have been attached meanwhile.
            let mut sessions = self.lock_sessions();
            let held = sessions.entry(key).or_default();
            Arc::make_mut(held).merge(&added);
        }
        Ok(())
    }

    /// Remembers an allowed call, so its result can be posted.
    pub fn remember_call(&self, request: &Request, decision: &Decision) {
        if is_result(&request.action.kind)
            || !matches!(decision.outcome, Outcome::Allow | Outcome::Modify)
        {
            return;
        }
        // The params are the result's business, not the call's: not kept.
        let a = &request.action;
        let action = crate::decision::Action {
            kind: a.kind.clone(),
            name: a.name.clone(),
            target: a.target.clone(),
            params: Value::Null,
        };
        let now = self.clock.now_ms();
        let mut calls = self.lock_calls();
        let ttl = self.config.result_ttl_s.saturating_mul(1000);
        while let Some((at, id)) = calls.order.front().cloned() {
            if calls.order.len() < self.config.max_pending_results && at + ttl >= now {
                break;
            }
            calls.order.pop_front();
            calls.by_id.remove(&id);
        }
        calls.order.push_back((now, decision.decision_id.clone()));
        calls.by_id.insert(
            decision.decision_id.clone(),
            Call {
                action,
                context: request.context.clone(),
                at_ms: now,
            },
        );
    }

    /// Takes the call of `decision_id` for its result, posted by `agent`
    /// (when the door knows who posts): once only.
    ///
    /// # Errors
    /// A [`ResultRefused`] saying why not.
    pub fn take_call(&self, decision_id: &str, agent: Option<&str>) -> Result<Call, ResultRefused> {
        let now = self.clock.now_ms();
        let ttl = self.config.result_ttl_s.saturating_mul(1000);
        let mut calls = self.lock_calls();
        let Some(call) = calls.by_id.get(decision_id) else {
            return Err(ResultRefused::Unknown(decision_id.to_owned()));
        };
        if call.action.kind.is_empty() {
            return Err(ResultRefused::Reused(decision_id.to_owned()));
        }
        if call.at_ms + ttl < now {
            return Err(ResultRefused::Unknown(decision_id.to_owned()));
        }
        if agent.is_some_and(|a| a != call.context.agent.id) {
            return Err(ResultRefused::OtherAgent(decision_id.to_owned()));
        }
        // Kept as a tombstone until it ages out, so a second post is told
        // it is a reuse.
        let taken = call.clone();
        if let Some(c) = calls.by_id.get_mut(decision_id) {
            c.action.kind.clear();
        }
        Ok(taken)
    }

    /// The labels each session of `agent` holds, by session id.
    pub fn sessions_of(&self, agent: &str) -> Vec<(String, Vec<crate::flow::Label>)> {
        let prefix = format!("{agent}\0");
        let cutoff = self.cutoff();
        let mut out: Vec<(String, Vec<crate::flow::Label>)> = self
            .lock_sessions()
            .iter()
            .filter_map(|(k, f)| {
                let session = k.strip_prefix(&prefix)?;
                let live: Vec<_> = f
                    .labels()
                    .iter()
                    .filter(|l| l.origin.at_ms >= cutoff)
                    .cloned()
                    .collect();
                (!live.is_empty()).then(|| (session.to_owned(), live))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn cutoff(&self) -> u64 {
        self.clock
            .now_ms()
            .saturating_sub(self.config.ttl_s.saturating_mul(1000))
    }

    fn lock_sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<SessionFlow>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_calls(&self) -> MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A result's kind without `.result`: the call's.
fn call_kind(kind: &str) -> &str {
    kind.strip_suffix(crate::flow::RESULT_SUFFIX)
        .unwrap_or(kind)
}

fn full(e: crate::flow::Full) -> (&'static str, String) {
    (
        FULL_RULE,
        format!("{e}; the result is withheld rather than let through untracked."),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use serde_json::json;

    use super::*;
    use crate::decision::{Action, Principal};

    struct Clock(AtomicU64);
    impl crate::time::Clock for Clock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn result(session: &str) -> Request {
        Request {
            action: Action {
                kind: "tool.result".into(),
                name: "crm.read".into(),
                target: String::new(),
                params: json!({"text": "the quarterly numbers nobody outside may see yet"}),
            },
            context: Context {
                agent: Principal {
                    id: "a".into(),
                    roles: vec![],
                },
                session: session.into(),
                ..Context::default()
            },
            history: Default::default(),
            approval_id: None,
            trace: None,
        }
    }

    #[test]
    fn full_sessions_and_labels_withhold_the_result_until_labels_expire() {
        let clock = Arc::new(Clock(AtomicU64::new(1_000_000)));
        let config = FlowConfig {
            enabled: true,
            max_sessions: 1,
            max_labels: 1,
            ttl_s: 10,
            ..FlowConfig::default()
        };
        let store = crate::state::memory::MemoryState::new().into_state();
        let flows = Flows::open(
            config,
            &[1; 32],
            Some(Arc::clone(&store.flows)),
            false,
            clock.clone(),
        )
        .expect("open");
        let r = result("s1");
        let text = r.action.params.clone();
        flows
            .attach(&r, "d1", &["private".into()], &text)
            .expect("room");
        let (rule, _) = flows
            .attach(&r, "d2", &["secret".into()], &text)
            .expect_err("a second label is past max_labels");
        assert_eq!(rule, FULL_RULE);
        let (rule, _) = flows
            .attach(&result("s2"), "d3", &["private".into()], &text)
            .expect_err("a second session is past max_sessions");
        assert_eq!(rule, FULL_RULE);
        // The store holds what was attached, for the next start.
        assert_eq!(store.flows.flows().expect("read").len(), 1);
        let seen = flows.snapshot(&r).expect("snapshot");
        assert_eq!(seen.flow.all_names(), ["private"]);
        assert_eq!(
            seen.query
                .labels_of("FWD: The quarterly numbers nobody OUTSIDE may see"),
            ["private"]
        );
        // Past the ttl the label is forgotten, here and in the store, and
        // the room is there again.
        clock.0.fetch_add(11_000, Ordering::Relaxed);
        assert!(flows.snapshot(&r).expect("snapshot").flow.is_empty());
        assert!(store.flows.flows().expect("read").is_empty());
        flows
            .attach(&result("s2"), "d4", &["private".into()], &text)
            .expect("room again");
    }

    #[test]
    fn a_posted_result_is_taken_once_and_only_by_its_agent() {
        let clock = Arc::new(Clock(AtomicU64::new(5_000)));
        let flows = Flows::open(FlowConfig::default(), &[1; 32], None, false, clock).expect("open");
        let mut call = result("s");
        call.action.kind = "tool".into();
        let decision = Decision::host_deny("x", String::new(), std::time::Instant::now());
        flows.remember_call(&call, &decision);
        assert!(matches!(
            flows.take_call(&decision.decision_id, None),
            Err(ResultRefused::Unknown(_))
        ));
        let allowed = Decision {
            outcome: Outcome::Allow,
            ..decision
        };
        flows.remember_call(&call, &allowed);
        let id = &allowed.decision_id;
        assert!(matches!(
            flows.take_call(id, Some("b")),
            Err(ResultRefused::OtherAgent(_))
        ));
        let taken = flows.take_call(id, Some("a")).expect("taken");
        assert_eq!(
            taken.action.params,
            Value::Null,
            "the call's params are not kept"
        );
        assert!(matches!(
            flows.take_call(id, Some("a")),
            Err(ResultRefused::Reused(_))
        ));
    }
}
