//! Reload: policies and configuration change while decisions run.
//!
//! A [`Registry`] owns what is in service: the configuration and, for each
//! policy, its spec, the good versions kept for rollback and the outcome of
//! its last load attempt. Every change runs the one load pipeline
//! ([`crate::load`]) off the lock, then the last stage, the swap: under the
//! lock, a new [`PolicySet`] is built from the serving one and installed
//! whole in the [`Arbiter`]. A failure at any stage before the swap leaves
//! the serving version as it was; it is logged, counted by policy and stage
//! and kept for `GET /v1/policies`.
//!
//! [`watch`] turns file changes (and SIGHUP) into calls here, on one
//! thread, so loads never race each other; a rollback takes the lock
//! directly and applies at once.

pub mod oci;
mod rollback;
mod rollout;
mod status;
pub mod watch;

pub use rollback::{RollbackError, RolledBack};
pub use rollout::{ModeChanged, Promoted, RolloutError};
pub use status::{CandidateStatus, ConfigStatus, PolicyStatus, Status, VersionStatus};

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use crate::arbiter::Arbiter;
use crate::config::{Config, ConfigError, Overrides};
use crate::engine::Engine;
use crate::evidence::log::DecisionLog;
use crate::evidence::metrics::Metrics;
use crate::load::{self, CompileCache, LoadError, LoadedPolicy, PolicySpec, Source};
use crate::mode::RolloutSpec;
use crate::route::RouteTable;
use crate::set::{self, PolicySet, rollout_specs_from_config, specs_from_config};
use crate::signing::signature_path;
use crate::time::timestamp;

/// Called with the new configuration once it is in service, so the front
/// door can take its tokens and limits.
pub type ConfigHook = Box<dyn Fn(&Arc<Config>) + Send + Sync>;

/// What is in service, how it got there, and how to change it.
pub struct Registry {
    arbiter: Arbiter,
    cache: Option<CompileCache>,
    base: PathBuf,
    config_path: Option<PathBuf>,
    metrics: Option<Arc<Metrics>>,
    log: Option<Arc<DecisionLog>>,
    on_config: Option<ConfigHook>,
    overrides: Overrides,
    state: Mutex<State>,
}

struct State {
    config: Arc<Config>,
    /// The text of the configuration file last tried, so that repeated
    /// events for one change reload it once.
    config_text: Option<String>,
    /// `sha256:` of the configuration text in service (none: embedded).
    config_version: Option<String>,
    config_attempt: Attempt,
    policies: BTreeMap<String, Record>,
    /// Bumped whenever the files to watch change without a configuration
    /// reload (a promotion), so the watcher looks again.
    targets_generation: u64,
}

struct Record {
    /// What serves: the configured spec, or a promoted candidate's.
    spec: PolicySpec,
    /// The mode and candidates in force.
    rollout: RolloutSpec,
    /// What the configuration says, to tell a changed entry from one
    /// changed at run time.
    configured: (PolicySpec, RolloutSpec),
    /// Where the mode in force came from.
    mode_source: ModeSource,
    /// Good versions, most recently loaded first; the serving one is among
    /// them (first, unless rolled back).
    versions: VecDeque<Arc<LoadedPolicy>>,
    attempt: Attempt,
    /// The last load attempt of each candidate, by id.
    candidate_attempts: BTreeMap<String, Attempt>,
}

/// Where a policy's mode in force came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "source")]
pub enum ModeSource {
    /// The configuration file.
    Config,
    /// `PUT /v1/policies/{name}/mode`, until the configuration changes
    /// this policy or the server restarts.
    Runtime {
        /// When (RFC 3339).
        at: String,
    },
}

/// When something was last tried, and what went wrong if it failed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attempt {
    /// When (RFC 3339, UTC).
    pub at: Option<String>,
    /// The step that failed.
    pub step: Option<String>,
    /// Why.
    pub error: Option<String>,
}

impl Attempt {
    fn ok() -> Self {
        Attempt {
            at: Some(timestamp(SystemTime::now())),
            step: None,
            error: None,
        }
    }

    fn failed(step: &str, error: String) -> Self {
        Attempt {
            at: Some(timestamp(SystemTime::now())),
            step: Some(step.to_owned()),
            error: Some(error),
        }
    }
}

/// What a policy reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The new version serves.
    Swapped {
        /// The version it replaced.
        from: String,
        /// The version now serving.
        to: String,
    },
    /// The file holds the serving version with the same settings.
    Unchanged,
    /// A step failed; the previous version keeps serving.
    Failed(LoadError),
    /// No policy of that name is configured (any more).
    Unknown,
    /// A configuration reload replaced the policy's spec, and loaded it,
    /// while this load ran; this result is dropped.
    Superseded,
    /// The decision log could not take the admin record; the previous
    /// version keeps serving.
    Unrecorded(crate::evidence::log::Unrecorded),
}

/// What a configuration reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// Policies new in this configuration.
    pub added: Vec<String>,
    /// Policies it no longer has.
    pub removed: Vec<String>,
    /// Policies loaded again because their file, settings, limits or
    /// smoke samples changed.
    pub reloaded: Vec<String>,
}

/// Why a configuration was refused; the old one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ConfigRefused {
    /// The server runs the embedded configuration: there is no file.
    #[error("the server runs the embedded default configuration; there is no file to reload")]
    NoFile,
    /// The file does not read, parse or hold together.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// It changes what only a restart can change.
    #[error("it changes {}, which only a restart can apply", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    /// A policy it names did not load.
    #[error(transparent)]
    Policy(#[from] LoadError),
    /// The decision log could not take the admin record, so it was not
    /// put in service.
    #[error("the change could not be recorded in the decision log, so it was not made: {0}")]
    Unrecorded(#[source] crate::evidence::log::Unrecorded),
}

impl ConfigRefused {
    /// The stage that refused it, for the status and logs.
    pub fn stage(&self) -> &'static str {
        match self {
            ConfigRefused::NoFile => "read",
            ConfigRefused::Invalid(ConfigError::Read { .. }) => "read",
            ConfigRefused::Invalid(_) => "parse",
            ConfigRefused::NeedsRestart(_) => "restart-only",
            ConfigRefused::Policy(e) => e.step.as_str(),
            ConfigRefused::Unrecorded(_) => "record",
        }
    }
}

/// A file the registry wants watched, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The configuration file.
    Config,
    /// The component of the named policy.
    Policy(String),
    /// The component of a policy's candidate: policy, candidate id.
    Candidate(String, String),
}

impl Registry {
    /// The first load: every policy of `config` through the load pipeline.
    /// Unlike a reload, nothing serves yet, so any failure is returned and
    /// nothing starts.
    ///
    /// # Errors
    /// Every policy's [`LoadError`].
    pub fn load(
        engine: Engine,
        cache: Option<CompileCache>,
        config: Config,
        config_path: Option<PathBuf>,
        base: PathBuf,
    ) -> Result<Self, Vec<LoadError>> {
        oci::ensure_pulled(&config, &base)?;
        let assembly =
            set::assemble(&engine, cache.as_ref(), &config, &base).map_err(|e| vec![e])?;
        if !assembly.set.failures().is_empty() {
            return Err(assembly.set.failures().values().cloned().collect());
        }
        let mut records = BTreeMap::new();
        for (spec, rollout_spec) in assembly.specs {
            if let Some(p) = assembly.set.policy(&spec.name) {
                let p = Arc::clone(p);
                records.insert(spec.name.clone(), Record::new(spec, rollout_spec, p));
            }
        }
        let set = assembly.set;
        let registry = Registry {
            config_path: config_path.clone(),
            arbiter: Arbiter::new(engine, set).configured(&config),
            cache,
            base,
            metrics: None,
            log: None,
            on_config: None,
            overrides: Overrides::default(),
            state: Mutex::new(State {
                config_version: config_path
                    .as_ref()
                    .and_then(|p| std::fs::read(p).ok())
                    .map(|t| load::version_of(&t)),
                config_text: config_path
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok()),
                config: Arc::new(config),
                config_attempt: Attempt::ok(),
                policies: records,
                targets_generation: 0,
            }),
        };
        registry.pin_served();
        Ok(registry)
    }

    /// Records every decision in `log` (see [`Arbiter::with_log`]), and
    /// every change of mode or promotion.
    #[must_use]
    pub fn with_log(mut self, log: Arc<DecisionLog>) -> Self {
        self.arbiter = self.arbiter.with_log(Arc::clone(&log));
        self.log = Some(log);
        self
    }

    /// The arbiter that serves, as `wire` makes it: the state the server
    /// keeps (agents, approvals, pins) goes on the arbiter itself, so every
    /// set this registry installs decides with it.
    #[must_use]
    pub fn with_arbiter(mut self, wire: impl FnOnce(Arbiter) -> Arbiter) -> Self {
        self.arbiter = wire(self.arbiter);
        self
    }

    /// Counts reloads, failures, rollbacks and shadow evaluations in
    /// `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.arbiter = self.arbiter.with_metrics(Arc::clone(&metrics));
        self.metrics = Some(metrics);
        self
    }

    /// Applies `overrides` to every configuration reloaded from the file.
    pub fn with_overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// Calls `hook` with each new configuration once it is in service.
    pub fn on_config(mut self, hook: ConfigHook) -> Self {
        self.on_config = Some(hook);
        self
    }

    /// The arbiter deciding with what this registry serves.
    pub fn arbiter(&self) -> &Arbiter {
        &self.arbiter
    }

    /// The configuration in service.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.lock().config)
    }

    /// The files to watch, as absolute paths: the configuration file, if
    /// there is one, and each policy's component file and signature file
    /// (a re-signed component must be verified again).
    pub fn targets(&self) -> Vec<(PathBuf, Target)> {
        let state = self.lock();
        let mut targets: Vec<(PathBuf, Target)> = self
            .config_path
            .iter()
            .map(|p| (absolute(p), Target::Config))
            .collect();
        for (name, r) in &state.policies {
            let candidates = r.rollout.candidates.iter().map(|c| {
                (
                    &c.spec.source,
                    Target::Candidate(name.clone(), c.id.clone()),
                )
            });
            for (source, target) in
                std::iter::once((&r.spec.source, Target::Policy(name.clone()))).chain(candidates)
            {
                if let Source::File(p) = source {
                    targets.push((absolute(p), target.clone()));
                    targets.push((absolute(&signature_path(p)), target));
                }
            }
        }
        targets
    }

    /// Changes whenever [`Registry::targets`] may have changed other than
    /// by a configuration reload.
    pub fn targets_generation(&self) -> u64 {
        self.lock().targets_generation
    }

    /// Loads policy `name` again from its file through the whole pipeline
    /// and swaps it in if it passes, with an `admin` record naming `actor`
    /// (`file-watch`, `sighup` or an operator) written first; if any step
    /// fails, or the log cannot take the record, the previous version
    /// keeps serving and the failure is recorded.
    pub fn reload_policy(&self, name: &str, actor: &str) -> Reloaded {
        self.reload_from(name, actor, None)
    }

    /// Loads policy `name` from `source` (an OCI tag's new digest, pulled
    /// into the store) through the whole pipeline and, if it passes,
    /// swaps it in and makes `source` the policy's source from then on,
    /// with an `admin` record naming both digests. If any step fails, the
    /// previous version keeps serving from its own source.
    pub fn reload_policy_from(&self, name: &str, actor: &str, source: Source) -> Reloaded {
        self.reload_from(name, actor, Some(source))
    }

    fn reload_from(&self, name: &str, actor: &str, source: Option<Source>) -> Reloaded {
        let (spec, serving) = {
            let state = self.lock();
            let Some(record) = state.policies.get(name) else {
                return Reloaded::Unknown;
            };
            (record.spec.clone(), self.serving(name))
        };
        let mut next = spec.clone();
        if let Some(source) = source {
            next.source = source;
        }
        // The slow part, off the lock: decisions and rollbacks go on.
        let result = load::load_if_changed(
            self.arbiter.engine(),
            self.cache.as_ref(),
            &next,
            serving.as_deref(),
        );
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(record) = state.policies.get_mut(name) else {
            return Reloaded::Unknown;
        };
        if record.spec != spec {
            return Reloaded::Superseded;
        }
        let moved =
            (next.source != spec.source).then(|| oci::Moved::new(&spec.source, &next.source));
        match result {
            Ok(None) => {
                record.attempt = Attempt::ok();
                if moved.is_some() {
                    // A new artifact holding the serving component: the
                    // new source is taken, nothing else changes.
                    record.spec.source = next.source.clone();
                    record.configured.0.source = next.source;
                }
                self.count_reload(name, "unchanged");
                Reloaded::Unchanged
            }
            Ok(Some(loaded)) => {
                let before = serving.map(|s| s.version.clone()).unwrap_or_default();
                let mut data = serde_json::json!({
                    "actor": actor,
                    "change": "policy-file",
                    "from": before,
                    "policy": name,
                    "to": loaded.version,
                });
                if let Some(m) = &moved {
                    m.describe(&mut data);
                }
                if let Err(e) = self.admin_record(data) {
                    tracing::error!(policy = name, error = %e, "the new version is not recorded, so it does not serve");
                    record.attempt = Attempt::failed("record", e.to_string());
                    return Reloaded::Unrecorded(e);
                }
                let loaded = Arc::new(loaded);
                let from = self.swap_in(Arc::clone(&loaded));
                if moved.is_some() {
                    record.spec.source = next.source.clone();
                    record.configured.0.source = next.source;
                }
                remember(record, loaded, state.config.reload.keep_versions);
                record.attempt = Attempt::ok();
                self.count_reload(name, "swapped");
                let to = record.versions[0].version.clone();
                tracing::info!(policy = name, %from, %to, "policy reloaded");
                Reloaded::Swapped { from, to }
            }
            Err(e) => {
                tracing::error!(
                    policy = name,
                    step = %e.step,
                    error = %e,
                    "reload failed; the previous version keeps serving"
                );
                record.attempt = Attempt::failed(e.step.as_str(), e.to_string());
                if let Some(m) = &self.metrics {
                    m.record_load_failure(name, e.step.as_str());
                }
                Reloaded::Failed(e)
            }
        }
    }

    /// Reads the configuration file again and, if it is valid and every
    /// policy it names loads, puts it in service whole: routes, settings,
    /// limits, tokens. Otherwise nothing changes and the refusal is
    /// recorded.
    ///
    /// The change is recorded (`admin`, with `actor`) before it serves.
    ///
    /// # Errors
    /// [`ConfigRefused`], saying why.
    pub fn reload_config(&self, actor: &str) -> Result<ConfigChange, ConfigRefused> {
        let path = self.config_path.as_ref().ok_or(ConfigRefused::NoFile)?;
        let text = std::fs::read_to_string(path);
        if let Ok(text) = &text {
            let mut state = self.lock();
            if state.config_text.as_ref() == Some(text) {
                // One change can bring several events; it was tried. A
                // person who asked for the reload still leaves a record.
                if actor != watch::FILE_WATCH {
                    let version = state.config_version.clone();
                    self.admin_record(serde_json::json!({
                        "actor": actor,
                        "change": "config",
                        "from": version,
                        "to": version,
                    }))
                    .map_err(ConfigRefused::Unrecorded)?;
                }
                return Ok(ConfigChange::default());
            }
            state.config_text = Some(text.clone());
        }
        let result = text
            .map_err(|source| {
                ConfigRefused::Invalid(ConfigError::Read {
                    path: path.clone(),
                    source,
                })
            })
            .and_then(|text| self.try_reload_config(path, &text, actor));
        let (attempt, label) = match &result {
            Ok(change) => {
                tracing::info!(
                    added = ?change.added,
                    removed = ?change.removed,
                    reloaded = ?change.reloaded,
                    "configuration reloaded"
                );
                self.pin_served();
                (Attempt::ok(), "applied")
            }
            Err(e) => {
                tracing::error!(stage = e.stage(), error = %e, "configuration refused; the previous one keeps serving");
                if let (ConfigRefused::Policy(p), Some(m)) = (e, &self.metrics) {
                    m.record_load_failure(&p.policy, p.step.as_str());
                }
                (Attempt::failed(e.stage(), e.to_string()), "refused")
            }
        };
        self.lock().config_attempt = attempt;
        if let Some(m) = &self.metrics {
            m.record_config_reload(label);
        }
        result
    }

    fn try_reload_config(
        &self,
        path: &Path,
        text: &str,
        actor: &str,
    ) -> Result<ConfigChange, ConfigRefused> {
        let mut config = Config::parse(text, &path.display().to_string())?;
        self.overrides.apply(&mut config);
        let (old, serving_now) = {
            let state = self.lock();
            let now: BTreeMap<String, Serving> = state
                .policies
                .iter()
                .map(|(n, r)| {
                    let serving = Serving {
                        configured: r.configured.clone(),
                        spec: r.spec.clone(),
                        rollout: r.rollout.clone(),
                    };
                    (n.clone(), serving)
                })
                .collect();
            (Arc::clone(&state.config), now)
        };
        let restart = old.restart_only_changes(&config);
        if !restart.is_empty() {
            return Err(ConfigRefused::NeedsRestart(restart));
        }
        // A policy new to OCI is pulled before its spec can name it.
        oci::ensure_pulled(&config, &self.base).map_err(|mut e| e.swap_remove(0))?;
        let specs = specs_from_config(&config, &self.base)?;
        let rollout_specs = rollout_specs_from_config(&config, &specs, &self.base)?;
        // Load what is new or changed, off the lock; any failure refuses
        // the whole configuration. An entry the configuration leaves as it
        // was keeps what was changed at run time (mode, promotion).
        let current = self.arbiter.policy_set();
        let mut plans = BTreeMap::new();
        let mut change = ConfigChange::default();
        for spec in &specs {
            let rollout_spec = rollout_specs.get(&spec.name).cloned().unwrap_or_default();
            let known = serving_now.get(&spec.name);
            if known.is_some_and(|k| k.configured == (spec.clone(), rollout_spec.clone())) {
                continue;
            }
            let loaded = set::Loaded {
                spec: known.map(|k| &k.spec),
                candidate_specs: known.map_or(&[], |k| &k.rollout.candidates),
                candidates: current.rollout(&spec.name).map_or(&[], |r| &r.candidates),
            };
            let (primary, rollout) = set::assemble_one(
                self.arbiter.engine(),
                self.cache.as_ref(),
                spec,
                &rollout_spec,
                &loaded,
            )?;
            if known.is_some() {
                change.reloaded.push(spec.name.clone());
            } else {
                change.added.push(spec.name.clone());
            }
            plans.insert(spec.name.clone(), (primary, rollout, rollout_spec));
        }
        change.removed = serving_now
            .keys()
            .filter(|n| !specs.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();

        // The swap, recorded first.
        let config = Arc::new(config);
        let mut state = self.lock();
        let to = load::version_of(text.as_bytes());
        self.admin_record(serde_json::json!({
            "actor": actor,
            "added": change.added,
            "change": "config",
            "from": state.config_version,
            "reloaded": change.reloaded,
            "removed": change.removed,
            "to": to,
        }))
        .map_err(ConfigRefused::Unrecorded)?;
        state.config_version = Some(to);
        let current = self.arbiter.policy_set();
        let mut serving = BTreeMap::new();
        let mut rollouts = BTreeMap::new();
        let mut records = BTreeMap::new();
        for spec in specs {
            let name = spec.name.clone();
            let (policy, rollout, record) = match (
                plans.remove(&name),
                state.policies.remove(&name),
            ) {
                // Unchanged: keep what serves, rolled back, promoted or
                // switched to another mode as it may be.
                (None, Some(r)) => match (current.policy(&name), current.rollout(&name)) {
                    (Some(p), Some(ro)) => (Arc::clone(p), Arc::clone(ro), r),
                    _ => return Err(ConfigRefused::Policy(vanished(&spec))),
                },
                (Some((primary, rollout, rollout_spec)), Some(mut r)) => {
                    if matches!(r.mode_source, ModeSource::Runtime { .. })
                        && r.rollout.mode != rollout_spec.mode
                    {
                        tracing::warn!(policy = %name, mode = %rollout_spec.mode, "the configuration changes this policy; the mode set at run time gives way to the configured one");
                    }
                    let policy = match primary {
                        Some(p) => {
                            remember(&mut r, Arc::clone(&p), config.reload.keep_versions);
                            r.attempt = Attempt::ok();
                            p
                        }
                        None => match current.policy(&name) {
                            Some(p) => Arc::clone(p),
                            None => return Err(ConfigRefused::Policy(vanished(&spec))),
                        },
                    };
                    r.spec = spec.clone();
                    r.configured = (spec, rollout_spec.clone());
                    r.rollout = rollout_spec;
                    r.mode_source = ModeSource::Config;
                    r.candidate_attempts = candidate_attempts_ok(&r.rollout);
                    (policy, Arc::new(rollout), r)
                }
                (Some((Some(p), rollout, rollout_spec)), None) => {
                    let r = Record::new(spec, rollout_spec, Arc::clone(&p));
                    (p, Arc::new(rollout), r)
                }
                (_, None) => return Err(ConfigRefused::Policy(vanished(&spec))),
            };
            serving.insert(name.clone(), policy);
            rollouts.insert(name.clone(), rollout);
            records.insert(name, record);
        }
        let set =
            PolicySet::new(serving, RouteTable::new(config.routes.clone())).with_rollouts(rollouts);
        self.arbiter.install(Arc::new(set));
        self.arbiter
            .admission()
            .set_limit(config.server.max_pending_decisions);
        state.policies = records;
        state.config = Arc::clone(&config);
        if let Some(hook) = &self.on_config {
            hook(&config);
        }
        Ok(change)
    }

    /// Whether policy `name`'s file no longer holds the serving version
    /// (changed, or unreadable). Records nothing.
    pub fn file_differs(&self, name: &str) -> bool {
        let source = match self.lock().policies.get(name) {
            Some(r) => r.spec.source.clone(),
            None => return false,
        };
        let Source::File(path) = source else {
            return false;
        };
        let serving = self.serving(name);
        match std::fs::read(&path) {
            Ok(bytes) => serving.is_none_or(|s| s.version != load::version_of(&bytes)),
            Err(_) => true,
        }
    }

    /// Reloads the configuration (if it came from a file), then every
    /// policy file: what SIGHUP (or `POST /v1/reload`) asks for, as `actor`.
    pub fn reload_all(&self, actor: &str) {
        if self.config_path.is_some() {
            let _ = self.reload_config(actor);
        }
        let targets: Vec<(String, Vec<String>)> = self
            .lock()
            .policies
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    r.rollout.candidates.iter().map(|c| c.id.clone()).collect(),
                )
            })
            .collect();
        for (name, candidates) in targets {
            self.reload_policy(&name, actor);
            for id in candidates {
                self.reload_candidate(&name, &id, actor);
            }
        }
    }

    fn serving(&self, name: &str) -> Option<Arc<LoadedPolicy>> {
        self.arbiter.policy_set().policy(name).cloned()
    }

    /// The swap: the serving set with `policy` in place of its namesake.
    /// Callers hold the state lock, so swaps never interleave. Returns the
    /// version replaced.
    fn swap_in(&self, policy: Arc<LoadedPolicy>) -> String {
        let set = self.arbiter.policy_set().with_policy(policy.clone());
        let old = self.arbiter.install(Arc::new(set));
        old.policy(&policy.name)
            .map(|p| p.version.clone())
            .unwrap_or_default()
    }

    /// Writes an `admin` record of a change about to be made; a change the
    /// log cannot take is not made. Without a log, there is nothing to
    /// write.
    pub(crate) fn admin_record(
        &self,
        data: serde_json::Value,
    ) -> Result<(), crate::evidence::log::Unrecorded> {
        match &self.log {
            Some(log) => log.record_event("admin", &data).map(|_| ()),
            None => Ok(()),
        }
    }

    fn count_reload(&self, name: &str, result: &'static str) {
        if let Some(m) = &self.metrics {
            m.record_reload(name, result);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A policy's entry as it stands, for a configuration reload to compare.
struct Serving {
    configured: (PolicySpec, RolloutSpec),
    spec: PolicySpec,
    rollout: RolloutSpec,
}

impl Record {
    fn new(spec: PolicySpec, rollout: RolloutSpec, loaded: Arc<LoadedPolicy>) -> Self {
        Record {
            configured: (spec.clone(), rollout.clone()),
            candidate_attempts: candidate_attempts_ok(&rollout),
            spec,
            rollout,
            mode_source: ModeSource::Config,
            versions: VecDeque::from([loaded]),
            attempt: Attempt::ok(),
        }
    }
}

fn candidate_attempts_ok(rollout: &RolloutSpec) -> BTreeMap<String, Attempt> {
    rollout
        .candidates
        .iter()
        .map(|c| (c.id.clone(), Attempt::ok()))
        .collect()
}

/// Puts `loaded` first among the kept versions, dropping an older copy of
/// the same version and settings and the oldest beyond `keep`.
fn remember(record: &mut Record, loaded: Arc<LoadedPolicy>, keep: usize) {
    record.versions.retain(|v| !v.same_as(&loaded));
    record.versions.push_front(loaded);
    record.versions.truncate(keep.max(1));
}

fn vanished(spec: &PolicySpec) -> LoadError {
    LoadError {
        policy: spec.name.clone(),
        source_desc: spec.source.to_string(),
        step: load::LoadStep::Read,
        problem: load::LoadProblem::Vanished,
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(all(test, feature = "example-policies"))]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use rollback::find_version;

    fn loaded(engine: &Engine, example: &str, settings: serde_json::Value) -> Arc<LoadedPolicy> {
        let spec = PolicySpec {
            name: "p".into(),
            source: crate::examples::source(example).expect("embedded"),
            settings,
            limits: Default::default(),
            smoke: Vec::new(),
            trust: Default::default(),
        };
        Arc::new(load::load(engine, None, &spec).expect("loads"))
    }

    #[test]
    fn kept_versions_are_newest_first_deduplicated_and_bounded() {
        let engine = Engine::new(&EngineConfig::default()).expect("engine");
        let a = loaded(&engine, "procurement", serde_json::json!({}));
        let b = loaded(&engine, "shell-guard", serde_json::json!({}));
        let a2 = loaded(&engine, "procurement", serde_json::json!({}));
        let spec = PolicySpec {
            name: "p".into(),
            source: crate::examples::source("procurement").expect("embedded"),
            settings: serde_json::json!({}),
            limits: Default::default(),
            smoke: Vec::new(),
            trust: Default::default(),
        };
        let mut record = Record::new(spec, RolloutSpec::default(), Arc::clone(&a));
        remember(&mut record, Arc::clone(&b), 5);
        // The same version and settings again moves to the front, once.
        remember(&mut record, Arc::clone(&a2), 5);
        let kept: Vec<&str> = record.versions.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(kept, [a.version.as_str(), b.version.as_str()]);
        remember(&mut record, Arc::clone(&b), 1);
        assert_eq!(record.versions.len(), 1);

        let both = VecDeque::from([Arc::clone(&a), Arc::clone(&b)]);
        let hex = &b.version["sha256:".len()..];
        assert!(find_version(&both, &b.version).is_some_and(|v| Arc::ptr_eq(v, &b)));
        assert!(find_version(&both, &hex[..10]).is_some_and(|v| Arc::ptr_eq(v, &b)));
        assert!(find_version(&both, "sha256:").is_none());
        assert!(find_version(&both, "zz").is_none());
        // A prefix both share is ambiguous.
        let common = a.version["sha256:".len()..]
            .chars()
            .zip(hex.chars())
            .take_while(|(x, y)| x == y)
            .count();
        if common > 0 {
            assert!(find_version(&both, &hex[..common]).is_none());
        }
    }
}
