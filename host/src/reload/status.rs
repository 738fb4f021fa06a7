//! Where everything stands: the configuration's last reload, and each
//! policy's serving version, kept versions, mode and candidates, for
//! `GET /v1/policies` and `arbiter` status output.

use std::sync::Arc;

use serde::Serialize;

use super::{Attempt, ModeSource, Registry};
use crate::decision::Mode;
use crate::load::{self, LoadedPolicy};
use crate::mode::Role;
use crate::time::timestamp;

/// The whole state, for `GET /v1/policies`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The configuration.
    pub config: ConfigStatus,
    /// Each configured policy.
    pub policies: Vec<PolicyStatus>,
}

/// The configuration's state.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    /// Its file, or `<embedded default>`.
    pub source: String,
    /// The last reload attempt.
    pub last_attempt: Attempt,
}

/// One policy's state.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    /// Its name.
    pub name: String,
    /// Where it is loaded from.
    pub source: String,
    /// The version serving.
    pub serving: Option<VersionStatus>,
    /// Every good version kept for rollback, most recently loaded first.
    pub versions: Vec<VersionStatus>,
    /// The last load attempt: when, and the step and error if it failed.
    pub last_attempt: Attempt,
    /// How much its answer binds.
    pub mode: Mode,
    /// Where that mode came from.
    pub mode_source: ModeSource,
    /// Its candidate versions.
    pub candidates: Vec<CandidateStatus>,
}

/// One candidate's state.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateStatus {
    /// Its id.
    pub id: String,
    /// Shadow or canary (with its percent).
    #[serde(flatten)]
    pub role: Role,
    /// Where it is loaded from.
    pub source: String,
    /// The version loaded, if it loaded.
    pub version: Option<VersionStatus>,
    /// Its settings.
    pub settings: serde_json::Value,
    /// Its last load attempt.
    pub last_attempt: Attempt,
}

/// One loaded version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    /// `sha256:` of the component.
    pub version: String,
    /// When it passed the load pipeline.
    pub loaded_at: String,
    /// Its size in bytes.
    pub size_bytes: usize,
    /// Who signed it, and as what version; `null` when unsigned.
    pub signer: Option<load::Signer>,
    /// Whether it is the serving one.
    pub serving: bool,
}

impl Registry {
    /// Where everything stands.
    pub fn status(&self) -> Status {
        let state = self.lock();
        let set = self.arbiter.policy_set();
        let policies = state
            .policies
            .iter()
            .map(|(name, r)| {
                let serving = set.policy(name);
                let version = |v: &Arc<LoadedPolicy>| VersionStatus {
                    version: v.version.clone(),
                    loaded_at: timestamp(v.loaded_at),
                    size_bytes: v.size_bytes,
                    signer: v.signer.clone(),
                    serving: serving.is_some_and(|s| Arc::ptr_eq(s, v)),
                };
                let loaded = set.rollout(name);
                let candidates = r
                    .rollout
                    .candidates
                    .iter()
                    .map(|c| {
                        let policy = loaded
                            .and_then(|l| l.candidates.iter().find(|x| x.id == c.id))
                            .map(|x| &x.policy);
                        CandidateStatus {
                            id: c.id.clone(),
                            role: c.role,
                            source: c.spec.source.to_string(),
                            version: policy.map(version),
                            settings: c.spec.settings.clone(),
                            last_attempt: r
                                .candidate_attempts
                                .get(&c.id)
                                .cloned()
                                .unwrap_or_default(),
                        }
                    })
                    .collect();
                PolicyStatus {
                    name: name.clone(),
                    source: r.spec.source.to_string(),
                    serving: serving.map(version),
                    versions: r.versions.iter().map(version).collect(),
                    last_attempt: r.attempt.clone(),
                    mode: set.mode(name),
                    mode_source: r.mode_source.clone(),
                    candidates,
                }
            })
            .collect();
        Status {
            config: ConfigStatus {
                source: self.config_path.as_ref().map_or_else(
                    || "<embedded default>".to_owned(),
                    |p| p.display().to_string(),
                ),
                last_attempt: state.config_attempt.clone(),
            },
            policies,
        }
    }
}
