//! The policy set: what serves, read-only once built and swapped whole,
//! and the one assembler that builds it from a configuration ([`assemble`]),
//! used at start (the server, the MCP gateways), by tests and by
//! embedders. A configuration reload reads its specs through the same
//! [`specs_from_config`] and [`rollout_specs_from_config`] and runs each
//! policy that changed through the same [`assemble_one`], which takes what
//! is loaded from an unchanged spec instead of loading it again; the swap
//! that keeps run-time changes is [`crate::reload`]'s.
//!
//! Assembly runs every policy, and every candidate of its rollout, through
//! the load pipeline ([`crate::load`]); a policy that fails is kept as a
//! failure, so a decision routed to it is denied naming why.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{CandidateRole, Config};
use crate::decision::PolicyReport;
use crate::engine::Engine;
use crate::evaluate::{FailureKind, PolicyFailure};
use crate::load::{self, CompileCache, LoadError, LoadedPolicy, PolicySpec, Source};
use crate::mode::{Candidate, CandidateSpec, Mode, Role, Rollout, RolloutSpec, load_candidate};
use crate::route::RouteTable;

/// Everything loaded from one configuration: the policies that loaded, the
/// load errors of those that did not, and the routes. Read-only once built.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: BTreeMap<String, Arc<LoadedPolicy>>,
    failures: BTreeMap<String, LoadError>,
    routes: RouteTable,
    /// Modes and candidates; a policy without one enforces alone.
    rollouts: BTreeMap<String, Arc<Rollout>>,
}

impl PolicySet {
    /// The set with exactly these loaded policies and routes.
    pub fn from_loaded(policies: Vec<LoadedPolicy>, routes: RouteTable) -> Self {
        Self::new(
            policies
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
            routes,
        )
    }

    /// The set with these policies, by name, and routes.
    pub fn new(policies: BTreeMap<String, Arc<LoadedPolicy>>, routes: RouteTable) -> Self {
        PolicySet {
            policies,
            failures: BTreeMap::new(),
            routes,
            rollouts: BTreeMap::new(),
        }
    }

    /// This set with `policy` in place of the version of the same name:
    /// the other policies and the routes are shared, not reloaded.
    pub fn with_policy(&self, policy: Arc<LoadedPolicy>) -> Self {
        let mut policies = self.policies.clone();
        policies.insert(policy.name.clone(), policy);
        PolicySet {
            policies,
            failures: self.failures.clone(),
            routes: self.routes.clone(),
            rollouts: self.rollouts.clone(),
        }
    }

    /// This set with `rollouts` (modes and candidates, by policy name) in
    /// place of its own.
    #[must_use]
    pub fn with_rollouts(mut self, rollouts: BTreeMap<String, Arc<Rollout>>) -> Self {
        self.rollouts = rollouts;
        self
    }

    /// This set with policy `name`'s mode and candidates replaced.
    pub fn with_rollout(&self, name: &str, rollout: Arc<Rollout>) -> Self {
        let mut rollouts = self.rollouts.clone();
        rollouts.insert(name.to_owned(), rollout);
        PolicySet {
            policies: self.policies.clone(),
            failures: self.failures.clone(),
            routes: self.routes.clone(),
            rollouts,
        }
    }

    /// Policy `name`'s mode and candidates.
    pub fn rollout(&self, name: &str) -> Option<&Arc<Rollout>> {
        self.rollouts.get(name)
    }

    /// Policy `name`'s mode: enforce unless set otherwise.
    pub fn mode(&self, name: &str) -> Mode {
        self.rollouts.get(name).map_or(Mode::Enforce, |r| r.mode)
    }

    /// A loaded policy by name.
    pub fn policy(&self, name: &str) -> Option<&Arc<LoadedPolicy>> {
        self.policies.get(name)
    }

    /// Every loaded policy.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<LoadedPolicy>> {
        self.policies.values()
    }

    /// The load errors, by policy name.
    pub fn failures(&self) -> &BTreeMap<String, LoadError> {
        &self.failures
    }

    /// The routes.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The deny report for chain entry `name` when no such policy serves:
    /// it failed to load (saying why), or it was never loaded.
    pub fn missing(&self, name: &str) -> PolicyReport {
        let detail = match self.failures.get(name) {
            Some(e) => format!("it did not load ({e})"),
            None => "no policy of that name is loaded".to_owned(),
        };
        PolicyFailure::new(FailureKind::Missing, detail).report(name, "")
    }
}

/// A configuration assembled: the set, and what each policy was loaded
/// from, in configuration order, for a registry that reloads them.
#[derive(Debug)]
pub struct Assembly {
    /// The policies that loaded, the failures of those that did not, the
    /// routes and the rollouts.
    pub set: PolicySet,
    /// Each configured policy's spec and rollout spec.
    pub specs: Vec<(PolicySpec, RolloutSpec)>,
}

/// Loads every policy of `config`, with its candidates, through the load
/// pipeline. A policy that fails, or one of whose candidates fails, is a
/// failure of the set: it does not serve, and decisions routed to it are
/// denied. A caller that must not start without it (the server) checks
/// [`PolicySet::failures`].
///
/// # Errors
/// A [`LoadError`] at the read step when an example policy the
/// configuration names is not embedded in this build.
pub fn assemble(
    engine: &Engine,
    cache: Option<&CompileCache>,
    config: &Config,
    base: &Path,
) -> Result<Assembly, LoadError> {
    let specs = specs_from_config(config, base)?;
    let mut rollout_specs = rollout_specs_from_config(config, &specs, base)?;
    let mut set = PolicySet::new(BTreeMap::new(), RouteTable::new(config.routes.clone()));
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let rollout_spec = rollout_specs.remove(&spec.name).unwrap_or_default();
        match assemble_one(engine, cache, &spec, &rollout_spec, &Loaded::default()) {
            Ok((Some(p), rollout)) => {
                tracing::info!(policy = %p.name, version = %p.version, cache = ?p.cache, mode = %rollout.mode, "policy loaded");
                set.policies.insert(spec.name.clone(), p);
                set.rollouts.insert(spec.name.clone(), Arc::new(rollout));
            }
            // Nothing was loaded to reuse, so a policy always comes back.
            Ok((None, _)) => {}
            Err(e) => {
                tracing::error!(policy = %spec.name, step = %e.step, error = %e, "policy failed to load");
                set.failures.insert(spec.name.clone(), e);
            }
        }
        out.push((spec, rollout_spec));
    }
    Ok(Assembly { set, specs: out })
}

/// What is loaded already and may serve again as it is: on a reload, the
/// serving version's spec, and the candidates with the specs they were
/// loaded from. Empty at start.
#[derive(Debug, Default, Clone, Copy)]
pub struct Loaded<'a> {
    /// The spec the serving version was loaded from.
    pub spec: Option<&'a PolicySpec>,
    /// The candidates' specs as they were loaded.
    pub candidate_specs: &'a [CandidateSpec],
    /// The loaded candidates.
    pub candidates: &'a [Candidate],
}

/// One configured policy through the load pipeline: its version to serve
/// (`None` when `loaded` serves it from this very spec, which then keeps
/// serving) and its rollout, each candidate taken from `loaded` when it was
/// loaded from the same spec, else loaded.
///
/// # Errors
/// The first [`LoadError`], of the policy or a candidate.
pub fn assemble_one(
    engine: &Engine,
    cache: Option<&CompileCache>,
    spec: &PolicySpec,
    rollout: &RolloutSpec,
    loaded: &Loaded<'_>,
) -> Result<(Option<Arc<LoadedPolicy>>, Rollout), LoadError> {
    let primary = if loaded.spec == Some(spec) {
        None
    } else {
        Some(Arc::new(load::load(engine, cache, spec)?))
    };
    let mut candidates = Vec::with_capacity(rollout.candidates.len());
    for c in &rollout.candidates {
        let same = loaded
            .candidate_specs
            .iter()
            .any(|x| x.id == c.id && x.spec == c.spec)
            .then(|| loaded.candidates.iter().find(|x| x.id == c.id))
            .flatten();
        candidates.push(match same {
            Some(x) => Candidate {
                role: c.role,
                ..x.clone()
            },
            None => load_candidate(engine, cache, c)?,
        });
    }
    Ok((
        primary,
        Rollout {
            mode: rollout.mode,
            candidates,
        },
    ))
}

/// Turns a configuration into load specs; `base` resolves relative files.
///
/// # Errors
/// A [`LoadError`] at the read step for an example policy that is not
/// embedded in this build.
pub fn specs_from_config(config: &Config, base: &Path) -> Result<Vec<PolicySpec>, LoadError> {
    let shared = Arc::new(config.trust.clone());
    config
        .policies
        .iter()
        .map(|p| {
            let trust = match &p.min_signed_version {
                None => Arc::clone(&shared),
                Some(floor) => Arc::new(crate::config::TrustConfig {
                    min_signed_version: Some(floor.clone()),
                    ..config.trust.clone()
                }),
            };
            let source = match &p.oci {
                Some(reference) => oci_source(config, base, &p.name, reference)?,
                None => source_of(&p.name, p.file.as_deref(), p.example.as_deref(), base)?
                    // `Config::parse` refuses a policy with neither.
                    .unwrap_or_else(|| Source::File(base.join(&p.name))),
            };
            Ok(PolicySpec {
                name: p.name.clone(),
                source,
                settings: p.settings.clone(),
                limits: p.limits,
                smoke: p.smoke.clone(),
                trust,
            })
        })
        .collect()
}

/// Refuses a configuration naming an example policy this build does not
/// embed, before anything is bound or pulled.
///
/// # Errors
/// A [`LoadError`] at the read step for the first such policy.
pub fn check_examples(config: &Config) -> Result<(), LoadError> {
    for p in &config.policies {
        if p.example.is_some() {
            source_of(&p.name, None, p.example.as_deref(), Path::new(""))?;
        }
    }
    Ok(())
}

/// The stored artifact policy `policy`'s `reference` loads: the digest it
/// last served, else the one pulled for its first load.
///
/// # Errors
/// A [`LoadError`] at the read step when the store has nothing for it.
pub fn oci_source(
    config: &Config,
    base: &Path,
    policy: &str,
    reference: &str,
) -> Result<Source, LoadError> {
    let fail = |problem: String| LoadError {
        policy: policy.to_owned(),
        source_desc: format!("oci:{reference}"),
        step: load::LoadStep::Read,
        problem: load::LoadProblem::NotPulled(problem),
    };
    let store = config
        .oci
        .open_store(base)
        .map_err(|e| fail(e.to_string()))?;
    let digest = store
        .pinned(reference)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("it has not been pulled, and the store has nothing for it".into()))?;
    let stored = store
        .get(&digest, config.oci.max_component_bytes)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail(format!("{digest} is missing or damaged in the store")))?;
    Ok(Source::Oci {
        reference: reference.to_owned(),
        digest,
        component: stored.component,
    })
}

/// Where a configured component is: a file relative to `base`, or an
/// embedded example; `None` when neither is given.
fn source_of(
    policy: &str,
    file: Option<&Path>,
    example: Option<&str>,
    base: &Path,
) -> Result<Option<Source>, LoadError> {
    match (file, example) {
        (Some(file), _) => Ok(Some(Source::File(base.join(file)))),
        (None, Some(example)) => {
            crate::examples::source(example)
                .map(Some)
                .ok_or_else(|| LoadError {
                    policy: policy.to_owned(),
                    source_desc: format!("embedded:{example}"),
                    step: load::LoadStep::Read,
                    problem: load::LoadProblem::NoExample {
                        name: example.to_owned(),
                        known: crate::examples::names()
                            .iter()
                            .map(|n| (*n).to_owned())
                            .collect(),
                    },
                })
        }
        (None, None) => Ok(None),
    }
}

/// The rollout specs of `config`, by policy name, with candidates taking
/// what they do not set from their policy's `spec`.
///
/// # Errors
/// A [`LoadError`] at the read step for a missing example policy.
pub fn rollout_specs_from_config(
    config: &Config,
    specs: &[PolicySpec],
    base: &Path,
) -> Result<BTreeMap<String, RolloutSpec>, LoadError> {
    let mut out = BTreeMap::new();
    for (p, spec) in config.policies.iter().zip(specs) {
        let mut candidates = Vec::with_capacity(p.candidates.len());
        for c in &p.candidates {
            let source = source_of(&p.name, c.file.as_deref(), c.example.as_deref(), base)?
                .unwrap_or_else(|| spec.source.clone());
            candidates.push(CandidateSpec {
                id: c.id.clone(),
                role: match c.role {
                    CandidateRole::Shadow => Role::Shadow,
                    // `Config::parse` refuses a canary without a percent.
                    CandidateRole::Canary => Role::Canary {
                        percent: c.percent.unwrap_or(0.0),
                    },
                },
                spec: PolicySpec {
                    name: p.name.clone(),
                    source,
                    settings: c.settings.clone().unwrap_or_else(|| spec.settings.clone()),
                    limits: c.limits.unwrap_or(spec.limits),
                    // A canary answers for real: it passes the policy's
                    // smoke samples first. A shadow never binds.
                    smoke: match c.role {
                        CandidateRole::Canary => spec.smoke.clone(),
                        CandidateRole::Shadow => Vec::new(),
                    },
                    trust: Arc::clone(&spec.trust),
                },
            });
        }
        out.insert(
            p.name.clone(),
            RolloutSpec {
                mode: p.mode,
                candidates,
            },
        );
    }
    Ok(out)
}

/// The compile cache the configuration asks for, if it can be opened.
pub fn open_cache(config: &Config) -> Option<CompileCache> {
    if !config.cache.enabled {
        return None;
    }
    let dir = config
        .cache
        .dir
        .clone()
        .or_else(CompileCache::default_dir)?;
    match CompileCache::open(&dir) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "compile cache unavailable; compiling every start");
            None
        }
    }
}
