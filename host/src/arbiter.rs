//! [`Arbiter`]: the decision flow, route → evaluate each policy of the chain
//! → combine through the modes → evidence → shadow, written out in one
//! place ([`Arbiter::decide`]).
//!
//! An [`Arbiter`] holds an immutable [`PolicySet`] that can be swapped
//! whole ([`Arbiter::install`]). A decision takes one snapshot of it at
//! entry and keeps it to the end, so a decision in flight finishes on the
//! versions it started with and never mixes versions of one policy.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll, Wake};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::approvals::Approvals;
use crate::config::SafeMode;
use crate::config::{Config, RolloutConfig};
use crate::decision::{Decision, Outcome, PolicyReport, Request};
use crate::engine::{Engine, EngineError};
use crate::enrich::{Agents, Enriched, Gate};
use crate::evaluate::{self, FailureKind, Input, PolicyFailure};
use crate::evidence::log::{DecisionLog, Unrecorded};
use crate::evidence::metrics::Metrics;
use crate::load::{self, CompileCache, LoadError, LoadedPolicy, PolicySpec, Source};
use crate::mcp::pins::Pins;
use crate::mode::baseline::Baseline;
use crate::mode::{self, MONITOR_RULE, Mode, Rollout, load_rollout, rollout_specs_from_config};
use crate::route::{RouteSpec, RouteTable};
use crate::shadow::{self, Shadow};

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
    /// Loads every policy of `specs` through the load pipeline. A policy that
    /// fails is kept as a failure, and any decision routed to it is denied.
    pub fn load(
        engine: &Engine,
        cache: Option<&CompileCache>,
        specs: &[PolicySpec],
        routes: RouteTable,
    ) -> Self {
        let mut set = PolicySet {
            routes,
            ..PolicySet::default()
        };
        for spec in specs {
            match load::load(engine, cache, spec) {
                Ok(p) => {
                    tracing::info!(
                        policy = %p.name,
                        version = %p.version,
                        cache = ?p.cache,
                        "policy loaded"
                    );
                    set.policies.insert(spec.name.clone(), Arc::new(p));
                }
                Err(e) => {
                    tracing::error!(policy = %spec.name, step = %e.step, error = %e, "policy failed to load");
                    set.failures.insert(spec.name.clone(), e);
                }
            }
        }
        set
    }

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
}

/// Turns a configuration into load specs; `base` resolves relative files.
///
/// # Errors
/// A [`LoadError`] at the read step for an example policy that is not
/// embedded in this build.
pub fn specs_from_config(config: &Config, base: &Path) -> Result<Vec<PolicySpec>, LoadError> {
    let trust = Arc::new(config.trust.clone());
    config
        .policies
        .iter()
        .map(|p| {
            let source = source_of(&p.name, p.file.as_deref(), p.example.as_deref(), base)?
                // `Config::parse` refuses a policy with neither.
                .unwrap_or_else(|| Source::File(base.join(&p.name)));
            Ok(PolicySpec {
                name: p.name.clone(),
                source,
                settings: p.settings.clone(),
                limits: p.limits,
                smoke: p.smoke.clone(),
                trust: Arc::clone(&trust),
            })
        })
        .collect()
}

/// Where a configured component is: a file relative to `base`, or an
/// embedded example; `None` when neither is given.
pub(crate) fn source_of(
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
                    problem: load::LoadProblem::Read(format!(
                        "no example policy `{example}` in this build (examples: {})",
                        crate::examples::names().join(", ")
                    )),
                })
        }
        (None, None) => Ok(None),
    }
}

/// The decision point: an engine, a policy set, and a bound on how many
/// decisions run at once (one pooled instance each).
#[derive(Clone)]
pub struct Arbiter {
    engine: Engine,
    set: Arc<ArcSwap<PolicySet>>,
    /// One per pooled instance: a burst of decisions waits for a place
    /// instead of failing to instantiate.
    permits: Arc<Semaphore>,
    /// Where every decision is recorded before it is answered, if anywhere.
    log: Option<Arc<DecisionLog>>,
    metrics: Option<Arc<Metrics>>,
    /// Shared by every clone: the shadow queue and the baseline.
    rollout: Arc<RolloutState>,
    /// The host's state of each agent; without it, a request's `history`
    /// is taken as given (the CLI, the case runner).
    agents: Option<Arc<Agents>>,
    /// Where require-approval waits for a person; without it, the caller
    /// gets require-approval and nothing to ask again with.
    approvals: Option<Arc<Approvals>>,
    /// Pinned MCP tool definitions; a call to a changed tool is denied
    /// before any policy.
    pins: Option<Arc<Pins>>,
}

/// What modes and candidates keep beside the decisions.
struct RolloutState {
    config: RolloutConfig,
    /// Started by the first decision that has a candidate to compare.
    shadow: OnceLock<Option<Shadow>>,
    baseline: Baseline,
}

impl RolloutState {
    fn new(config: RolloutConfig) -> Self {
        RolloutState {
            baseline: Baseline::new(&config),
            config,
            shadow: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Arbiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arbiter")
            .field(
                "policies",
                &self
                    .set
                    .load()
                    .policies()
                    .map(|p| &p.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Arbiter {
    /// An arbiter deciding with `set` on `engine`.
    pub fn new(engine: Engine, set: PolicySet) -> Self {
        let permits = Arc::new(Semaphore::new(engine.max_instances() as usize));
        Arbiter {
            engine,
            set: Arc::new(ArcSwap::from_pointee(set)),
            permits,
            log: None,
            metrics: None,
            rollout: Arc::new(RolloutState::new(RolloutConfig::default())),
            agents: None,
            approvals: None,
            pins: None,
        }
    }

    /// This arbiter, denying calls of kind `mcp` to a tool whose pinned
    /// definition changed (see [`crate::mcp::pins`]).
    #[must_use]
    pub fn with_pins(mut self, pins: Arc<Pins>) -> Self {
        self.pins = Some(pins);
        self
    }

    /// The metrics registry, when counted.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// The pinned MCP tools, when kept.
    pub fn pins(&self) -> Option<&Arc<Pins>> {
        self.pins.as_ref()
    }

    /// This arbiter, keeping each require-approval as an approval in
    /// `approvals` and answering requests that come back with one.
    #[must_use]
    pub fn with_approvals(mut self, approvals: Arc<Approvals>) -> Self {
        self.approvals = Some(approvals);
        self
    }

    /// The approvals, when kept.
    pub fn approvals(&self) -> Option<&Arc<Approvals>> {
        self.approvals.as_ref()
    }

    /// This arbiter, filling each request's history from `agents` and
    /// applying its suspensions and circuit breakers before any policy.
    #[must_use]
    pub fn with_agents(mut self, agents: Arc<Agents>) -> Self {
        self.agents = Some(agents);
        self
    }

    /// This arbiter deciding on each request's own `history`, as the CLI
    /// and the case runner do.
    #[must_use]
    pub fn without_agents(&self) -> Self {
        Arbiter {
            agents: None,
            ..self.clone()
        }
    }

    /// The host's state of each agent, when it keeps one.
    pub fn agents(&self) -> Option<&Arc<Agents>> {
        self.agents.as_ref()
    }

    /// This arbiter with the shadow queue and baseline sized by `config`;
    /// before its first decision.
    #[must_use]
    pub fn with_rollout_config(mut self, config: RolloutConfig) -> Self {
        self.rollout = Arc::new(RolloutState::new(config));
        self
    }

    /// This arbiter, counting shadow evaluations and drops in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The shadow queue, started on first use; `None` if its threads could
    /// not start, which is logged once, and every job is then counted as
    /// dropped.
    pub fn shadow(&self) -> Option<&Shadow> {
        self.rollout
            .shadow
            .get_or_init(|| {
                Shadow::start(
                    &self.engine,
                    &self.permits,
                    &self.rollout.config,
                    self.log.clone(),
                    self.metrics.clone(),
                )
                .map_err(|e| tracing::error!(error = %e, "shadow evaluation could not start"))
                .ok()
            })
            .as_ref()
    }

    /// The shadow queue if it has started.
    pub fn shadow_if_started(&self) -> Option<&Shadow> {
        self.rollout.shadow.get().and_then(Option::as_ref)
    }

    /// The baseline that monitor mode builds.
    pub fn baseline(&self) -> &Baseline {
        &self.rollout.baseline
    }

    /// This arbiter, recording every decision in `log` before answering
    /// it; a decision that cannot be recorded is a deny
    /// (`failure.log`) unless the log is configured to serve anyway.
    #[must_use]
    pub fn with_log(mut self, log: Arc<DecisionLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// An arbiter that routes every action to `policies`, in order: for the
    /// CLI, the case runner and embedders with a single chain.
    pub fn with_chain(engine: Engine, policies: Vec<LoadedPolicy>) -> Self {
        let route = RouteSpec::all(policies.iter().map(|p| p.name.clone()));
        Arbiter::new(
            engine,
            PolicySet::from_loaded(policies, RouteTable::new(vec![route])),
        )
    }

    /// Builds the engine, opens the compile cache and loads every policy of
    /// `config`. Policies that fail to load are reported by
    /// [`PolicySet::failures`]; a caller that must not start without them
    /// (the server) checks it.
    ///
    /// # Errors
    /// An [`ArbiterError`] if the engine cannot be built or an example
    /// policy is missing from this build.
    pub fn from_config(config: &Config, base: &Path) -> Result<Self, ArbiterError> {
        let engine = Engine::new(&config.engine)?;
        let cache = open_cache(config);
        let specs = specs_from_config(config, base)?;
        let rollout_specs = rollout_specs_from_config(config, &specs, base)?;
        let mut set = PolicySet::load(
            &engine,
            cache.as_ref(),
            &specs,
            RouteTable::new(config.routes.clone()),
        );
        let mut rollouts = BTreeMap::new();
        for (name, spec) in &rollout_specs {
            match load_rollout(&engine, cache.as_ref(), spec) {
                Ok(r) => {
                    rollouts.insert(name.clone(), Arc::new(r));
                }
                // The policy cannot serve as configured: fail closed.
                Err(e) => {
                    tracing::error!(policy = %name, step = %e.step, error = %e, "candidate failed to load");
                    set.policies.remove(name);
                    set.failures.insert(name.clone(), e);
                }
            }
        }
        Ok(Arbiter::new(engine, set.with_rollouts(rollouts))
            .with_rollout_config(config.rollout.clone()))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The policy set decisions starting now use.
    pub fn policy_set(&self) -> Arc<PolicySet> {
        self.set.load_full()
    }

    /// Puts `set` in service for every decision that starts from now on
    /// (clones of this arbiter included); decisions in flight finish on
    /// the set they started with. Returns the set it replaces.
    pub fn install(&self, set: Arc<PolicySet>) -> Arc<PolicySet> {
        self.set.swap(set)
    }

    /// Decides `request`, blocking the calling thread while policies run.
    /// Never fails: every problem becomes a deny that says why.
    pub fn decide(&self, request: &Request) -> Decision {
        let enriched = self.enrich(request);
        let decided = block_on(self.decide_on(request, enriched.as_ref(), false));
        self.after(request, enriched.as_ref(), decided)
    }

    /// Decides on the calling task: policies run on this thread and yield
    /// to the executor at every epoch tick (1 ms), so a slow policy cannot
    /// hold a runtime thread past its tick. Never fails.
    pub async fn decide_async(&self, request: Request) -> Decision {
        let enriched = self.enrich(&request);
        let decided = self.decide_on(&request, enriched.as_ref(), true).await;
        self.after(&request, enriched.as_ref(), decided)
    }

    /// The first stage: what the host knows of the agent.
    fn enrich(&self, request: &Request) -> Option<Enriched> {
        self.agents.as_ref().map(|a| a.enrich(request))
    }

    /// The stages after the policies: a require-approval becomes an
    /// approval (or is answered by the one it came back with); the
    /// decision is answered only once the log holds it; the agent's
    /// counters take it; then shadow jobs are queued and a monitored
    /// action feeds the baseline, neither making the caller wait.
    fn after(&self, request: &Request, enriched: Option<&Enriched>, decided: Decided) -> Decision {
        let Decided {
            decision,
            shadows,
            monitored,
        } = decided;
        let history = enriched.map_or(&request.history, |e| &e.history);
        let decision = match &self.approvals {
            Some(a) => a.apply(request, decision),
            None => decision,
        };
        let decision = match &self.log {
            Some(log) => match log.record(request, history, &decision) {
                Ok(_) => decision,
                Err(e) => unrecorded(decision, &e),
            },
            None => decision,
        };
        if let (Some(agents), Some(e)) = (&self.agents, enriched) {
            agents.observe(request, e, decision.outcome);
        }
        if !shadows.is_empty() {
            match self.shadow() {
                Some(queue) => {
                    for mut job in shadows {
                        job.decision_id.clone_from(&decision.decision_id);
                        queue.submit(job);
                    }
                }
                None => {
                    for job in &shadows {
                        if let Some(m) = &self.metrics {
                            m.record_shadow_dropped(&job.primary.name);
                        }
                    }
                }
            }
        }
        if monitored {
            self.rollout.baseline.observe(request, SystemTime::now());
        }
        decision
    }

    /// The decision flow, in order: route, then each policy of the chain on
    /// a fresh instance (or not at all, in monitor mode; the canary's
    /// version, for its sessions), then combine through the modes.
    /// [`Arbiter::after`] follows.
    async fn decide_on(
        &self,
        request: &Request,
        enriched: Option<&Enriched>,
        yielding: bool,
    ) -> Decided {
        let start = Instant::now();
        let history = enriched.map_or(&request.history, |e| &e.history);
        if let Some(Gate::Suspended(s)) = enriched.map(|e| &e.gate) {
            return host_deny(
                "agent.suspended",
                format!(
                    "Agent `{}` is suspended: {} (by {} at {}); every action is denied until it is resumed.",
                    request.context.agent.id, s.reason, s.by, s.at
                ),
                start,
            )
            .into();
        }
        let action = &request.action;
        if action.kind == crate::mcp::KIND
            && let Some(why) = self
                .pins
                .as_ref()
                .and_then(|p| p.blocked(&action.target, &action.name))
        {
            return host_deny(crate::mcp::pins::CHANGED_RULE, why, start).into();
        }
        // One snapshot for the whole decision.
        let set = self.set.load_full();
        let Some(route) = set
            .routes
            .route(&request.context.agent.id, &action.kind, &action.name)
        else {
            return unrouted(request, start).into();
        };
        if let Some(Gate::Breaker(mode, b)) = enriched.map(|e| &e.gate)
            && (*mode == SafeMode::DenyAll || !route.read_only)
        {
            let allowed = match mode {
                SafeMode::DenyAll => "every action is denied",
                SafeMode::ReadOnly => "only read-only actions are allowed",
            };
            return host_deny(
                "agent.circuit-open",
                format!(
                    "Agent `{}` tripped its circuit breaker ({} denials); {allowed} until {}.",
                    request.context.agent.id,
                    b.denials,
                    crate::reload::timestamp(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(b.until_ms)
                    )
                ),
                start,
            )
            .into();
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return host_failure("the instance pool is closed").into();
        };
        let c = &request.context;
        // Sessionless callers are kept stable by their agent instead.
        let session_key = if c.session.is_empty() {
            &c.agent.id
        } else {
            &c.session
        };
        let mut input = Input::new(action, c, history);
        let mut reports = Vec::with_capacity(route.chain.len());
        let mut shadows = Vec::new();
        let mut monitored = false;
        for name in &route.chain {
            let rollout = set.rollouts.get(name);
            let mode = rollout.map_or(Mode::Enforce, |r| r.mode);
            let mut report = match set.policies.get(name) {
                Some(policy) if mode == Mode::Monitor => {
                    monitored = true;
                    mode::monitor_report(policy)
                }
                Some(primary) => {
                    let canary = rollout.and_then(|r| r.canary_for(name, session_key));
                    let policy = canary.map_or(primary, |(_, c)| &c.policy);
                    let (engine, limits, settings) =
                        (&self.engine, &policy.limits, &policy.settings);
                    let pool = Some(policy.instances());
                    let eval = if yielding {
                        evaluate::evaluate_async(
                            engine,
                            &policy.pre,
                            limits,
                            settings,
                            &mut input,
                            pool,
                        )
                        .await
                    } else {
                        evaluate::evaluate(engine, &policy.pre, limits, settings, &mut input, pool)
                    };
                    let mut report = report(policy, eval);
                    report.candidate = canary.map(|(_, c)| c.id.clone());
                    if let Some(r) = rollout.filter(|r| r.has_candidates()) {
                        let live = canary.map(|(i, _)| i);
                        shadows.push(shadow::Job::new(primary, r, live, &report, &input));
                    }
                    report
                }
                None => missing(name, set.failures.get(name)),
            };
            report.mode = mode;
            // A later policy sees what an earlier enforced modify produced:
            // the params the action will really run with.
            if let (Mode::Enforce, Outcome::Modify, Some(params)) =
                (mode, report.outcome, &report.params)
            {
                input.set_params(params);
            }
            reports.push(report);
        }
        if reports.is_empty() {
            // `Config` refuses empty chains; a set built by hand may not.
            return unrouted(request, start).into();
        }
        let folded = mode::fold(&reports);
        let (reason, rule, risk) = match folded.decided_by {
            Some(i) => {
                let by = &reports[i];
                (by.reason.clone(), by.rule.clone(), by.risk)
            }
            None => (
                "Every policy on this route is in monitor mode: the action is recorded and allowed, not judged.".to_owned(),
                MONITOR_RULE.to_owned(),
                0,
            ),
        };
        let decision = Decision {
            approval: None,
            decision_id: new_id(),
            outcome: folded.outcome,
            decided: folded.decided,
            mode: folded.mode,
            warnings: folded.warnings,
            reason,
            rule,
            risk,
            params: folded.params,
            micros: micros_since(start),
            policies: reports,
        };
        Decided {
            decision,
            shadows,
            monitored,
        }
    }
}

/// A decision and what is to follow it off the caller's path.
struct Decided {
    decision: Decision,
    shadows: Vec<shadow::Job>,
    /// A policy of the chain is in monitor mode: the action feeds the
    /// baseline.
    monitored: bool,
}

impl From<Decision> for Decided {
    fn from(decision: Decision) -> Self {
        Decided {
            decision,
            shadows: Vec::new(),
            monitored: false,
        }
    }
}

/// One policy's evaluation as a report, under enforce mode until the
/// caller says otherwise.
pub(crate) fn report(policy: &LoadedPolicy, eval: evaluate::Evaluation) -> PolicyReport {
    let mut report = match eval.result {
        Ok(v) => PolicyReport {
            name: policy.name.clone(),
            version: policy.version.clone(),
            signer: None,
            signed_version: None,
            mode: Mode::Enforce,
            candidate: None,
            outcome: v.outcome,
            rule: v.rule,
            reason: v.reason,
            risk: v.risk,
            params: v.params,
            fuel: 0,
            micros: 0,
            failure: None,
        },
        Err(f) => failed(&policy.name, &policy.version, &f),
    };
    if let Some(s) = &policy.signer {
        report.signer = Some(s.key_id.clone());
        report.signed_version = Some(s.version.clone());
    }
    report.fuel = eval.fuel;
    report.micros = eval.micros;
    report
}

/// Runs a future to completion on this thread. The sync path only ever
/// waits for a permit; parking until woken is all it needs.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The compile cache the configuration asks for, if it can be opened.
pub(crate) fn open_cache(config: &Config) -> Option<CompileCache> {
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

/// A policy failure as a deny report. The reason names the kind.
fn failed(name: &str, version: &str, f: &PolicyFailure) -> PolicyReport {
    PolicyReport {
        name: name.to_owned(),
        version: version.to_owned(),
        signer: None,
        signed_version: None,
        mode: Mode::Enforce,
        candidate: None,
        outcome: Outcome::Deny,
        rule: format!("failure.{}", f.kind),
        reason: format!(
            "Policy `{name}` failed ({}): {}; failing closed.",
            f.kind, f.detail
        ),
        risk: 100,
        params: None,
        fuel: 0,
        micros: 0,
        failure: Some(f.kind.to_string()),
    }
}

fn missing(name: &str, load_error: Option<&LoadError>) -> PolicyReport {
    let detail = match load_error {
        Some(e) => format!("it did not load ({e})"),
        None => "no policy of that name is loaded".to_owned(),
    };
    failed(name, "", &PolicyFailure::new(FailureKind::Missing, detail))
}

fn unrouted(request: &Request, start: Instant) -> Decision {
    let a = &request.action;
    host_deny(
        "route.unmatched",
        format!(
            "No policy route matches agent `{}`, action kind `{}`, name `{}`; failing closed.",
            request.context.agent.id, a.kind, a.name
        ),
        start,
    )
}

/// A decision the log could not take: deny, keeping what the policies said.
fn unrecorded(decision: Decision, e: &Unrecorded) -> Decision {
    Decision {
        outcome: Outcome::Deny,
        decided: Outcome::Deny,
        mode: Mode::Enforce,
        reason: format!("Arbiter could not record this decision: {e}; failing closed."),
        rule: "failure.log".into(),
        risk: 100,
        params: None,
        ..decision
    }
}

/// A deny by the host before any policy ran.
pub(crate) fn host_deny(rule: &str, reason: String, start: Instant) -> Decision {
    Decision {
        approval: None,
        decision_id: new_id(),
        outcome: Outcome::Deny,
        decided: Outcome::Deny,
        mode: Mode::Enforce,
        warnings: Vec::new(),
        reason,
        rule: rule.to_owned(),
        risk: 100,
        params: None,
        policies: Vec::new(),
        micros: micros_since(start),
    }
}

fn host_failure(detail: &str) -> Decision {
    host_deny(
        "failure.host",
        format!("Arbiter could not decide: {detail}; failing closed."),
        Instant::now(),
    )
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Why an [`Arbiter`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    /// The engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A policy source.
    #[error(transparent)]
    Load(#[from] LoadError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_waits_for_a_wake_from_another_thread() {
        let permits = Arc::new(Semaphore::new(1));
        let held = Arc::clone(&permits).try_acquire_owned().expect("free");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(held);
        });
        let permit = block_on(permits.acquire());
        assert!(permit.is_ok());
        releaser.join().expect("join");
    }
}
