//! Rollback: an earlier good version of a policy serves again at once.
//! The registry keeps the last `keep_versions` versions that passed the
//! load pipeline, newest first.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;

use super::Registry;
use crate::load::LoadedPolicy;
use crate::time::timestamp;

/// Why a rollback did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// No such policy.
    #[error("no policy `{0}` is configured")]
    UnknownPolicy(String),
    /// The serving version is the oldest kept.
    #[error("policy `{0}` has no earlier version in memory")]
    NoEarlierVersion(String),
    /// The version asked for is not kept.
    #[error("policy `{policy}` has no version `{asked}` in memory; kept: {}", .kept.join(", "))]
    VersionNotKept {
        /// The policy.
        policy: String,
        /// The version asked for.
        asked: String,
        /// The versions kept.
        kept: Vec<String>,
    },
    /// The version asked for serves already.
    #[error("policy `{policy}` is already serving {version}")]
    AlreadyServing {
        /// The policy.
        policy: String,
        /// Its version.
        version: String,
    },
    /// The version would not pass the verify stage under the trust in
    /// force now (a revoked key, a floor raised, a signature required).
    #[error("policy `{policy}` version {version} may not serve again: {problem}")]
    Refused {
        /// The policy.
        policy: String,
        /// The version asked for.
        version: String,
        /// What the verify stage says of it now.
        problem: crate::load::LoadProblem,
    },
    /// The decision log could not take the admin record.
    #[error("the change could not be recorded in the decision log, so it was not made: {0}")]
    Unrecorded(#[source] crate::evidence::log::Unrecorded),
}

/// A rollback that happened.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    /// The policy.
    pub policy: String,
    /// The version that served before.
    pub from: String,
    /// The version serving now.
    pub to: String,
    /// When the version now serving was loaded.
    pub loaded_at: String,
}

impl Registry {
    /// Serves an earlier good version of `name` at once, as `actor`: `to`
    /// names it by its version (`sha256:...`, or a unique prefix of the
    /// hex); without it, the version loaded before the serving one. The
    /// version passes the verify stage again, against the trust in force
    /// now, and the change is recorded before it serves.
    ///
    /// # Errors
    /// [`RollbackError`] when there is no such policy or version, when the
    /// version may not serve under today's trust, or when the log cannot
    /// take the record.
    pub fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
        actor: &str,
    ) -> Result<RolledBack, RollbackError> {
        let state = self.lock();
        let record = state
            .policies
            .get(name)
            .ok_or_else(|| RollbackError::UnknownPolicy(name.to_owned()))?;
        let serving = self.serving(name);
        let position = serving
            .as_ref()
            .and_then(|s| record.versions.iter().position(|v| Arc::ptr_eq(v, s)));
        let target = match to {
            None => position
                .and_then(|i| record.versions.get(i + 1))
                .ok_or_else(|| RollbackError::NoEarlierVersion(name.to_owned()))?,
            Some(asked) => find_version(&record.versions, asked).ok_or_else(|| {
                RollbackError::VersionNotKept {
                    policy: name.to_owned(),
                    asked: asked.to_owned(),
                    kept: record.versions.iter().map(|v| v.version.clone()).collect(),
                }
            })?,
        };
        if serving.as_ref().is_some_and(|s| Arc::ptr_eq(s, target)) {
            return Err(RollbackError::AlreadyServing {
                policy: name.to_owned(),
                version: target.version.clone(),
            });
        }
        crate::load::recheck(
            &record.spec.trust,
            name,
            &target.version,
            target.signer.as_ref(),
        )
        .map_err(|problem| RollbackError::Refused {
            policy: name.to_owned(),
            version: target.version.clone(),
            problem,
        })?;
        self.admin_record(serde_json::json!({
            "actor": actor,
            "change": "rollback",
            "from": serving.as_ref().map(|s| s.version.clone()),
            "policy": name,
            "to": target.version,
        }))
        .map_err(RollbackError::Unrecorded)?;
        let from = self.swap_in(Arc::clone(target));
        if let Some(m) = &self.metrics {
            m.record_rollback(name);
        }
        tracing::warn!(policy = name, %from, to = %target.version, "rolled back");
        Ok(RolledBack {
            policy: name.to_owned(),
            from,
            to: target.version.clone(),
            loaded_at: timestamp(target.loaded_at),
        })
    }
}

/// A kept version by its full version or a unique prefix of its hex.
pub(super) fn find_version<'a>(
    versions: &'a VecDeque<Arc<LoadedPolicy>>,
    asked: &str,
) -> Option<&'a Arc<LoadedPolicy>> {
    fn hex(v: &str) -> &str {
        v.strip_prefix("sha256:").unwrap_or(v)
    }
    let asked = hex(asked);
    if asked.is_empty() {
        return None;
    }
    let mut matches = versions
        .iter()
        .filter(|v| hex(&v.version).starts_with(asked));
    let first = matches.next()?;
    // Ambiguous prefixes match nothing, unless they name one version.
    matches.all(|v| v.version == first.version).then_some(first)
}
