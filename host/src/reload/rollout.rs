//! Rollout at run time: a policy's mode switched, a candidate promoted to
//! serve, a candidate's file reloaded. Each change is written to the
//! decision log (`admin` records) before it is made, and swaps a new
//! policy set in whole; the rollout arithmetic itself is
//! [`crate::mode::Rollout`]'s.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::{Attempt, ModeSource, Registry, Reloaded, remember};
use crate::decision::Mode;
use crate::load::{self, LoadError, PolicySpec};
use crate::mode::Rollout;
use crate::time::timestamp;

/// A mode change that happened.
#[derive(Debug, Clone, Serialize)]
pub struct ModeChanged {
    /// The policy.
    pub policy: String,
    /// The mode before.
    pub from: Mode,
    /// The mode now, from the next decision on.
    pub to: Mode,
}

/// A promotion that happened.
#[derive(Debug, Clone, Serialize)]
pub struct Promoted {
    /// The policy.
    pub policy: String,
    /// The candidate now serving.
    pub candidate: String,
    /// The version that served before.
    pub from: String,
    /// The version serving now.
    pub to: String,
}

/// Why a mode change or promotion did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No such policy.
    #[error("no policy `{0}` is configured")]
    UnknownPolicy(String),
    /// No such candidate.
    #[error("policy `{policy}` has no candidate `{candidate}`; candidates: {}", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownCandidate {
        /// The policy.
        policy: String,
        /// The id asked for.
        candidate: String,
        /// The ids it has.
        known: Vec<String>,
    },
    /// The candidate failed the load pipeline; the serving version stays.
    #[error("promotion refused; the serving version stays: {0}")]
    Load(#[from] LoadError),
    /// The policy changed while the candidate loaded.
    #[error("policy `{0}` changed while the candidate was loading; try again")]
    Superseded(String),
    /// The change could not be recorded in the decision log, so it was not
    /// made.
    #[error("the change could not be recorded in the decision log, so it was not made: {0}")]
    Unrecorded(#[source] crate::evidence::log::Unrecorded),
}

impl Registry {
    /// Puts policy `name` in `mode` from the next decision on, recording
    /// the change in the decision log first.
    ///
    /// # Errors
    /// [`RolloutError::UnknownPolicy`], or [`RolloutError::Unrecorded`]
    /// when the log cannot take the record.
    pub fn set_mode(
        &self,
        name: &str,
        mode: Mode,
        actor: &str,
    ) -> Result<ModeChanged, RolloutError> {
        let mut state = self.lock();
        let record = state
            .policies
            .get_mut(name)
            .ok_or_else(|| RolloutError::UnknownPolicy(name.to_owned()))?;
        let set = self.arbiter.policy_set();
        let from = set.mode(name);
        self.admin_record(serde_json::json!({
            "actor": actor,
            "change": "mode",
            "from": from,
            "policy": name,
            "to": mode,
        }))
        .map_err(RolloutError::Unrecorded)?;
        let rollout = set
            .rollout(name)
            .map_or_else(|| Rollout::default().with_mode(mode), |r| r.with_mode(mode));
        self.arbiter
            .install(Arc::new(set.with_rollout(name, Arc::new(rollout))));
        record.rollout.mode = mode;
        record.mode_source = ModeSource::Runtime {
            at: timestamp(SystemTime::now()),
        };
        tracing::warn!(policy = name, %from, to = %mode, "mode changed");
        Ok(ModeChanged {
            policy: name.to_owned(),
            from,
            to: mode,
        })
    }

    /// Makes candidate `id` of policy `name` its serving version: the
    /// candidate's component and settings go through the whole load
    /// pipeline again, the policy's smoke samples included, and are
    /// swapped in with the candidate gone from the candidates. The version
    /// it replaces stays kept for rollback.
    ///
    /// # Errors
    /// [`RolloutError`], saying why; the serving version then stays.
    pub fn promote(&self, name: &str, id: &str, actor: &str) -> Result<Promoted, RolloutError> {
        let (spec, candidate) = {
            let state = self.lock();
            let record = state
                .policies
                .get(name)
                .ok_or_else(|| RolloutError::UnknownPolicy(name.to_owned()))?;
            let candidate = record
                .rollout
                .candidates
                .iter()
                .find(|c| c.id == id)
                .cloned()
                .ok_or_else(|| RolloutError::UnknownCandidate {
                    policy: name.to_owned(),
                    candidate: id.to_owned(),
                    known: record
                        .rollout
                        .candidates
                        .iter()
                        .map(|c| c.id.clone())
                        .collect(),
                })?;
            (record.spec.clone(), candidate)
        };
        let promoted_spec = PolicySpec {
            smoke: spec.smoke.clone(),
            ..candidate.spec.clone()
        };
        // The slow part, off the lock, as any load.
        let loaded = load::load(self.arbiter.engine(), self.cache.as_ref(), &promoted_spec)
            .inspect_err(|e| {
                if let Some(m) = &self.metrics {
                    m.record_load_failure(name, e.step.as_str());
                }
            })?;
        let loaded = Arc::new(loaded);
        let mut guard = self.lock();
        let state = &mut *guard;
        let keep = state.config.reload.keep_versions;
        let record = state
            .policies
            .get_mut(name)
            .ok_or_else(|| RolloutError::UnknownPolicy(name.to_owned()))?;
        if record.spec != spec || !record.rollout.candidates.contains(&candidate) {
            return Err(RolloutError::Superseded(name.to_owned()));
        }
        let set = self.arbiter.policy_set();
        let from = set
            .policy(name)
            .map(|p| p.version.clone())
            .unwrap_or_default();
        self.admin_record(serde_json::json!({
            "actor": actor,
            "candidate": id,
            "change": "promote",
            "from": from,
            "policy": name,
            "to": loaded.version,
        }))
        .map_err(RolloutError::Unrecorded)?;
        let rollout = set
            .rollout(name)
            .map(|r| r.without_candidate(id))
            .unwrap_or_default();
        let next = set
            .with_policy(Arc::clone(&loaded))
            .with_rollout(name, Arc::new(rollout));
        self.arbiter.install(Arc::new(next));
        remember(record, Arc::clone(&loaded), keep);
        record.spec = promoted_spec;
        record.rollout.candidates.retain(|c| c.id != id);
        record.candidate_attempts.remove(id);
        record.attempt = Attempt::ok();
        state.targets_generation += 1;
        self.count_reload(name, "promoted");
        tracing::warn!(policy = name, candidate = id, %from, to = %loaded.version, "candidate promoted");
        Ok(Promoted {
            policy: name.to_owned(),
            candidate: id.to_owned(),
            from,
            to: loaded.version.clone(),
        })
    }

    /// Loads candidate `id` of policy `name` again from its file and swaps
    /// it in if it passes; otherwise the loaded candidate stays.
    pub fn reload_candidate(&self, name: &str, id: &str, actor: &str) -> Reloaded {
        let (spec, serving) = {
            let state = self.lock();
            let Some(c) = state
                .policies
                .get(name)
                .and_then(|r| r.rollout.candidates.iter().find(|c| c.id == id))
            else {
                return Reloaded::Unknown;
            };
            let serving = self.arbiter.policy_set().rollout(name).and_then(|r| {
                r.candidates
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| Arc::clone(&c.policy))
            });
            (c.clone(), serving)
        };
        let result = load::load_if_changed(
            self.arbiter.engine(),
            self.cache.as_ref(),
            &spec.spec,
            serving.as_deref(),
        );
        let mut guard = self.lock();
        let Some(record) = guard.policies.get_mut(name) else {
            return Reloaded::Unknown;
        };
        if !record.rollout.candidates.contains(&spec) {
            return Reloaded::Superseded;
        }
        match result {
            Ok(None) => {
                record
                    .candidate_attempts
                    .insert(id.to_owned(), Attempt::ok());
                Reloaded::Unchanged
            }
            Ok(Some(loaded)) => {
                let set = self.arbiter.policy_set();
                let Some(current) = set.rollout(name) else {
                    return Reloaded::Unknown;
                };
                if let Err(e) = self.admin_record(serde_json::json!({
                    "actor": actor,
                    "candidate": id,
                    "change": "candidate-file",
                    "from": serving.as_ref().map(|s| s.version.clone()),
                    "policy": name,
                    "to": loaded.version,
                })) {
                    record
                        .candidate_attempts
                        .insert(id.to_owned(), Attempt::failed("record", e.to_string()));
                    return Reloaded::Unrecorded(e);
                }
                let loaded = Arc::new(loaded);
                let rollout = current.with_candidate_policy(id, &loaded);
                self.arbiter
                    .install(Arc::new(set.with_rollout(name, Arc::new(rollout))));
                record
                    .candidate_attempts
                    .insert(id.to_owned(), Attempt::ok());
                let from = serving.map(|s| s.version.clone()).unwrap_or_default();
                tracing::info!(policy = name, candidate = id, %from, to = %loaded.version, "candidate reloaded");
                Reloaded::Swapped {
                    from,
                    to: loaded.version.clone(),
                }
            }
            Err(e) => {
                tracing::error!(policy = name, candidate = id, step = %e.step, error = %e, "candidate reload failed; the loaded candidate stays");
                record.candidate_attempts.insert(
                    id.to_owned(),
                    Attempt::failed(e.step.as_str(), e.to_string()),
                );
                if let Some(m) = &self.metrics {
                    m.record_load_failure(name, e.step.as_str());
                }
                Reloaded::Failed(e)
            }
        }
    }
}
