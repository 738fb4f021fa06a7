//! Policies from OCI registries at run time: what is pulled before a
//! load, and the poll that turns a tag moving to a new digest into a
//! reload through the one load pipeline.
//!
//! A pull only fills the store; the load pipeline decides. A digest the
//! pipeline refused is not tried again until the tag moves or the
//! configuration changes, and the version before it keeps serving. What
//! served is pinned in the store, so a restart with the registry down
//! serves it again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Registry, Reloaded};
use crate::config::Config;
use crate::load::{LoadError, LoadProblem, LoadStep, Source};
use crate::oci::{OciError, PinKind, RegistryClient};

/// A policy's move from one OCI digest to another, for the admin record.
pub(super) struct Moved {
    reference: String,
    from: Option<String>,
    to: Option<String>,
}

impl Moved {
    pub(super) fn new(from: &Source, to: &Source) -> Self {
        let digest = |s: &Source| match s {
            Source::Oci { digest, .. } => Some(digest.clone()),
            _ => None,
        };
        let reference = match to {
            Source::Oci { reference, .. } => reference.clone(),
            other => other.to_string(),
        };
        Moved {
            reference,
            from: digest(from),
            to: digest(to),
        }
    }

    /// Adds the reference and both digests to an admin record.
    pub(super) fn describe(&self, data: &mut serde_json::Value) {
        data["change"] = "policy-oci".into();
        data["reference"] = self.reference.clone().into();
        data["from_digest"] = self.from.clone().into();
        data["to_digest"] = self.to.clone().into();
    }
}

/// Runs `work` on a runtime of its own, on a thread of its own: the load
/// path is synchronous and may itself run inside the server's runtime.
fn blocking<T: Send, F: Future<Output = T>>(work: impl FnOnce() -> F + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(work()))
                    .map_err(|e| format!("cannot start a runtime for the pull: {e}"))
            })
            .join()
            .map_err(|_| "the pull thread panicked".to_owned())?
    })
}

/// Makes sure every OCI policy of `config` has something in the store to
/// load: the digest it last served if that is still stored whole,
/// otherwise a pull now (its digest pinned as the one to try first). No
/// registry is asked about a reference that has served, so a start with
/// the registry down serves what served before; the poll asks soon after.
///
/// # Errors
/// A [`LoadError`] at the read step for each policy that has nothing
/// stored and cannot be pulled.
pub fn ensure_pulled(config: &Config, base: &Path) -> Result<(), Vec<LoadError>> {
    let wanted: Vec<(&str, &str)> = config
        .policies
        .iter()
        .filter_map(|p| p.oci.as_deref().map(|r| (p.name.as_str(), r)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let oci = config.oci.resolved(base);
    let fail = |policy: &str, reference: &str, e: &OciError| LoadError {
        policy: policy.to_owned(),
        source_desc: format!("oci:{reference}"),
        step: LoadStep::Read,
        problem: LoadProblem::NotPulled(format!("nothing stored, and the pull failed: {e}")),
    };
    let store = oci.open_store(Path::new("")).map_err(|e| {
        wanted
            .iter()
            .map(|(p, r)| fail(p, r, &e))
            .collect::<Vec<_>>()
    })?;
    let mut errors = Vec::new();
    for (policy, reference) in wanted {
        let stored = store
            .pinned(reference)
            .ok()
            .flatten()
            .and_then(|d| store.get(&d, oci.max_component_bytes).ok().flatten());
        if stored.is_some() {
            continue;
        }
        let pulled = blocking(|| async {
            let client = RegistryClient::new(&oci, reference)?;
            let pinned = store.pinned(reference).ok().flatten();
            match pinned {
                // What served is gone from the store: that digest again,
                // not whatever the tag names now.
                Some(d) => client.pull_digest(&store, &d).await,
                None => client.pull(&store).await,
            }
        });
        let pulled = match pulled {
            Ok(p) => p,
            Err(e) => Err(OciError::Registry {
                reference: reference.to_owned(),
                problem: e,
            }),
        };
        match pulled.and_then(|p| {
            tracing::info!(policy, reference, digest = %p.digest, "policy pulled");
            store.pin(reference, &p.digest, PinKind::Pulled)
        }) {
            Ok(()) => {}
            Err(e) => errors.push(fail(policy, reference, &e)),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

impl Registry {
    /// Pins, for each OCI policy, the digest it serves now, so a restart
    /// loads it first.
    pub fn pin_served(&self) {
        let sources = self.oci_sources();
        if sources.is_empty() {
            // No store is made for a configuration without OCI policies.
            return;
        }
        let config = self.config();
        let store = match config.oci.open_store(&self.base) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the OCI store cannot be opened to pin what serves");
                return;
            }
        };
        for (name, reference, digest) in sources {
            if let Err(e) = store.pin(&reference, &digest, PinKind::Served) {
                tracing::warn!(policy = name, error = %e, "what serves could not be pinned");
            }
        }
    }

    /// Records a tag's new artifact that could not be pulled or was
    /// refused before the load pipeline, as the policy's last attempt.
    fn pull_failed(&self, name: &str, error: String) {
        if let Some(r) = self.lock().policies.get_mut(name) {
            r.attempt = super::Attempt::failed("pull", error);
        }
        if let Some(m) = &self.metrics {
            m.record_load_failure(name, "pull");
        }
    }

    /// Each OCI policy's name, reference and current digest.
    fn oci_sources(&self) -> Vec<(String, String, String)> {
        self.lock()
            .policies
            .iter()
            .filter_map(|(name, r)| match &r.spec.source {
                Source::Oci {
                    reference, digest, ..
                } => Some((name.clone(), reference.clone(), digest.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Every `oci.poll_s`, asks each OCI policy's registry where its tag points
/// and, when it moved, pulls the new artifact and reloads the policy from
/// it. Runs until `stop` completes.
pub async fn poll(registry: Arc<Registry>, stop: impl Future<Output = ()>) {
    // Digests the load pipeline refused, by policy: not pulled and loaded
    // again every poll, only when the tag moves on or the configuration
    // (its trust) changes.
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut config = registry.config();
    tokio::pin!(stop);
    loop {
        let now = registry.config();
        if !Arc::ptr_eq(&now, &config) {
            refused.clear();
            config = now;
        }
        poll_once(&registry, &config, &mut refused).await;
        let wait = Duration::from_secs(config.oci.poll_s);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut stop => return,
        }
    }
}

async fn poll_once(
    registry: &Arc<Registry>,
    config: &Config,
    refused: &mut BTreeMap<String, String>,
) {
    let sources = registry.oci_sources();
    if sources.is_empty() {
        return;
    }
    let oci = config.oci.resolved(&registry.base);
    let store = match oci.open_store(Path::new("")) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the OCI store cannot be opened; tags are not checked");
            return;
        }
    };
    for (name, reference, serving) in sources {
        let client = match RegistryClient::new(&oci, &reference) {
            Ok(c) if !c.is_pinned() => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(policy = name, error = %e, "cannot check the tag");
                continue;
            }
        };
        let digest = match client.resolve().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(policy = name, error = %e, "cannot check the tag; the serving version stays");
                continue;
            }
        };
        if digest == serving || refused.get(&name) == Some(&digest) {
            continue;
        }
        tracing::info!(policy = name, reference, from = %serving, to = %digest, "the tag moved; pulling");
        let pulled = match client.pull_digest(&store, &digest).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(policy = name, reference, to = %digest, error = %e, "the new artifact is refused; the serving version stays");
                registry.pull_failed(&name, e.to_string());
                if matches!(e, OciError::Artifact { .. }) {
                    refused.insert(name, digest);
                }
                continue;
            }
        };
        let source = Source::Oci {
            reference: reference.clone(),
            digest: digest.clone(),
            component: pulled.stored.component,
        };
        let r = Arc::clone(registry);
        let who = name.clone();
        let result =
            tokio::task::spawn_blocking(move || r.reload_policy_from(&who, "oci-poll", source))
                .await;
        match result {
            Ok(Reloaded::Swapped { .. } | Reloaded::Unchanged) => {
                if let Err(e) = store.pin(&reference, &digest, PinKind::Served) {
                    tracing::warn!(policy = name, error = %e, "what serves could not be pinned");
                }
                tracing::info!(policy = name, reference, from = %serving, to = %digest, "the policy serves the tag's new digest");
            }
            Ok(Reloaded::Failed(e)) => {
                tracing::error!(policy = name, reference, from = %serving, to = %digest, error = %e, "the tag's new digest is refused; the serving version stays");
                refused.insert(name, digest);
            }
            Ok(other) => {
                tracing::warn!(policy = name, reference, to = %digest, result = ?other, "the tag's new digest was not put in service");
            }
            Err(e) => tracing::error!(policy = name, error = %e, "the reload task failed"),
        }
    }
}
