//! [`Arbiter`]: the decision flow. [`Arbiter::decide`] (and its async twin)
//! is the one place the order of the stages is written, each a call into
//! the module named after it:
//!
//! | # | stage | module | what it does |
//! |---|---|---|---|
//! | 1 | admission | [`crate::admission`] | a place among the decisions in flight, or a refusal |
//! | 2 | gate | [`crate::enrich`] | the agent's history; suspension, changed MCP tool, open breaker deny at once |
//! | 3 | route | [`crate::route`] | the chain for this agent and action, or a deny |
//! | 4 | evaluate | [`crate::evaluate`] | each policy of the chain on a sandboxed instance |
//! | 5 | mode | [`crate::mode`] | monitor skips, a canary answers for its sessions, soft-enforce reports |
//! | 6 | combine | [`crate::mode::fold`], [`crate::combine`] | deny > require-approval > modify > allow, through the modes |
//! | 7 | approvals | [`crate::approvals`] | require-approval becomes an approval, or is answered by one |
//! | 8 | evidence | [`crate::evidence`] | written to the log before it is answered; counted; traced |
//! | 9 | shadow | [`crate::shadow`], [`crate::mode::baseline`] | candidates compared and monitored actions counted, off the caller's path |
//!
//! After approvals, a fleet's shared spend takes an allowed amount
//! ([`Agents::commit_spend`]); after evidence, the agent's counters take
//! the outcome ([`Agents::observe`]).
//! Every door (HTTP decide, the external authorizer, MCP over stdio and
//! HTTP, the embedded library) calls [`Arbiter::decide`] or
//! [`Arbiter::decide_async`], so each gets the same admission bound, gates,
//! log and metrics.
//!
//! An [`Arbiter`] holds an immutable [`PolicySet`] that can be swapped
//! whole ([`Arbiter::install`]). A decision takes one snapshot of it at
//! entry and keeps it to the end, so a decision in flight finishes on the
//! versions it started with and never mixes versions of one policy.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::admission::{Admission, Saturated};
use crate::approvals::Approvals;
use crate::config::{Config, RolloutConfig};
use crate::decision::{Decision, FlowEvidence, Outcome, PolicyReport, Request};
use crate::engine::{Engine, EngineError};
use crate::enrich::flow::{Flows, Snapshot, UNAVAILABLE_RULE};
use crate::enrich::pins::Pins;
use crate::enrich::{self, Agents};
use crate::evaluate::{self, FailureKind, Input, PolicyFailure};
use crate::evidence::{self, log::DecisionLog, metrics::Metrics};
use crate::load::{LoadError, LoadedPolicy};
use crate::mode::baseline::Baseline;
use crate::mode::{self, MONITOR_RULE, Mode};
use crate::route::{self, RouteSpec, RouteTable};
use crate::set::{self, PolicySet, open_cache};
use crate::shadow::{self, Shadow};
use crate::telemetry::{Stage, Telemetry, Timeline};

/// The rule of a request refused for a name past its limit
/// ([`Request::too_long`]).
pub const TOO_LONG_RULE: &str = "input.too-long";

/// The decision point: an engine, a policy set, and a bound on how many
/// decisions run at once (one pooled instance each).
#[derive(Clone)]
pub struct Arbiter {
    engine: Engine,
    set: Arc<ArcSwap<PolicySet>>,
    /// The bound on decisions in flight, shared by every door and clone.
    admission: Arc<Admission>,
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
    /// Keys the canary buckets, so a caller cannot choose its bucket.
    canary_key: Arc<[u8; 32]>,
    /// Where traced decisions' spans go, when exported.
    telemetry: Option<Telemetry>,
    /// Each session's labels, when the host tracks flow.
    flows: Option<Arc<Flows>>,
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
            admission: Arc::new(Admission::new(usize::MAX)),
            permits,
            log: None,
            metrics: None,
            rollout: Arc::new(RolloutState::new(RolloutConfig::default())),
            agents: None,
            approvals: None,
            pins: None,
            canary_key: Arc::new(random_key()),
            telemetry: None,
            flows: None,
        }
    }

    /// This arbiter, keeping each session's labels in `flows`: policies
    /// see them, and results let through add theirs.
    #[must_use]
    pub fn with_flows(mut self, flows: Arc<Flows>) -> Self {
        self.flows = Some(flows);
        self
    }

    /// Each session's labels, when kept.
    pub fn flows(&self) -> Option<&Arc<Flows>> {
        self.flows.as_ref()
    }

    /// This arbiter, exporting a span tree for each sampled decision.
    #[must_use]
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// This arbiter, with canary buckets keyed by `key`: a server keeps it
    /// in its state directory, so sessions keep their bucket across
    /// restarts. Without it, a key random to this process.
    #[must_use]
    pub fn with_canary_key(mut self, key: [u8; 32]) -> Self {
        self.canary_key = Arc::new(key);
        self
    }

    /// This arbiter, denying calls of kind `mcp` to a tool whose pinned
    /// definition changed (see [`crate::enrich::pins`]).
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

    /// The decision log, when there is one.
    pub fn log(&self) -> Option<&Arc<DecisionLog>> {
        self.log.as_ref()
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

    /// Builds the engine, opens the compile cache and assembles the
    /// policies of `config` ([`crate::set::assemble`]), bounded by its
    /// `max_pending_decisions`. Policies that fail to load are reported by
    /// [`PolicySet::failures`]; a caller that must not start without them
    /// (the server) checks it.
    ///
    /// # Errors
    /// An [`ArbiterError`] if the engine cannot be built or an example
    /// policy is missing from this build.
    pub fn from_config(config: &Config, base: &Path) -> Result<Self, ArbiterError> {
        let engine = Engine::new(&config.engine)?;
        let cache = open_cache(config);
        let assembly = set::assemble(&engine, cache.as_ref(), config, base)?;
        Ok(Arbiter::new(engine, assembly.set).configured(config))
    }

    /// This arbiter with the bounds `config` sets: pending decisions and
    /// the shadow queue; before its first decision.
    #[must_use]
    pub fn configured(self, config: &Config) -> Self {
        self.admission
            .set_limit(config.server.max_pending_decisions);
        self.with_rollout_config(config.rollout.clone())
    }

    /// The bound on decisions in flight; a configuration reload changes
    /// its limit.
    pub fn admission(&self) -> &Admission {
        &self.admission
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
    /// Never fails: every problem, a saturated arbiter included
    /// (`admission.saturated`), becomes a deny that says why.
    pub fn decide(&self, request: &Request) -> Decision {
        let start = Instant::now();
        evaluate::block_on(self.flow(request, false, start, None))
            .unwrap_or_else(|s| s.decision(start))
    }

    /// Decides on the calling task: policies run on this thread and yield
    /// to the executor at every epoch tick (1 ms), so a slow policy cannot
    /// hold a runtime thread past its tick. Never fails, as
    /// [`Arbiter::decide`].
    pub async fn decide_async(&self, request: Request) -> Decision {
        let start = Instant::now();
        self.flow(&request, true, start, None)
            .await
            .unwrap_or_else(|s| s.decision(start))
    }

    /// As [`Arbiter::decide_async`], but a saturated arbiter is an error,
    /// for doors that answer it otherwise (HTTP: 503 with `Retry-After`).
    ///
    /// # Errors
    /// [`Saturated`] when the admission bound is reached; nothing ran and
    /// nothing was recorded.
    pub async fn try_decide_async(&self, request: Request) -> Result<Decision, Saturated> {
        self.flow(&request, true, Instant::now(), None).await
    }

    /// Denies `request` with `rule` and `reason` without running a policy,
    /// for a door that found the request itself unusable (an ambiguous
    /// path); the deny is admitted, counted and recorded like any other.
    ///
    /// # Errors
    /// [`Saturated`], as [`Arbiter::try_decide_async`].
    pub async fn try_refuse_async(
        &self,
        request: Request,
        rule: &str,
        reason: String,
    ) -> Result<Decision, Saturated> {
        let start = Instant::now();
        let refusal = Decision::host_deny(rule, reason, start);
        self.flow(&request, true, start, Some(refusal)).await
    }

    /// The stages of one decision, in order. `yielding` runs policies as
    /// async calls that yield at each epoch tick; a door's `refusal` takes
    /// the place of the gate's.
    async fn flow(
        &self,
        request: &Request,
        yielding: bool,
        start: Instant,
        refusal: Option<Decision>,
    ) -> Result<Decision, Saturated> {
        let mut timeline = match &self.telemetry {
            Some(t) => t.timeline(request.trace),
            None => Timeline::off(),
        };
        // 1. admission
        let _admitted = self.admission.admit()?;
        timeline.mark(Stage::Admission);
        // 2. gate: what the host knows of the agent, and what stops it.
        // Names past their limit are refused before the host keeps any of
        // them, whichever door they came through.
        let mut refusal = refusal.or_else(|| {
            request.too_long().map(|(field, max)| {
                Decision::host_deny(
                    TOO_LONG_RULE,
                    format!("`{field}` is longer than {max} bytes; failing closed."),
                    start,
                )
            })
        });
        let mut enriched = match (&self.agents, &refusal) {
            (Some(a), None) => Some(a.enrich(request)),
            _ => None,
        };
        // The session's flow, as this decision sees it throughout.
        let snapshot = match (&self.flows, &refusal) {
            (Some(f), None) => match f.snapshot(request) {
                Ok(s) => Some(s),
                Err(e) => {
                    refusal = Some(Decision::host_deny(
                        UNAVAILABLE_RULE,
                        format!("The session's labels cannot be read ({e}); failing closed."),
                        start,
                    ));
                    None
                }
            },
            _ => None,
        };
        let spending = enriched.as_mut().and_then(enrich::Enriched::take_spending);
        let history = enriched.as_ref().map_or(&request.history, |e| &e.history);
        timeline.mark(Stage::Enrich);
        // One snapshot of the policy set for the whole decision.
        let set = self.set.load_full();
        let (agent, action) = (&request.context.agent.id, &request.action);
        let route = set.routes().route(agent, &action.kind, &action.name);
        let read_only = route.map(|r| r.read_only);
        timeline.mark(Stage::Route);
        let gated = refusal.or_else(|| {
            enrich::gate(
                request,
                enriched.as_ref(),
                self.pins.as_deref(),
                read_only,
                start,
            )
        });
        timeline.mark(Stage::Gate);
        let decided = match (gated, route) {
            (Some(denied), _) => Decided::from(denied),
            // 3. route
            (None, None) => Decided::from(route::unmatched(request, start)),
            // 4. to 6.: evaluate each policy through its mode, combine.
            (None, Some(route)) => {
                let chain = Chain {
                    set: &set,
                    names: &route.chain,
                };
                let run = Run {
                    history,
                    flow: snapshot.as_ref(),
                    yielding,
                    start,
                };
                self.evaluate_chain(chain, request, run, &mut timeline)
                    .await
            }
        };
        let Decided {
            decision,
            shadows,
            monitored,
        } = decided;
        // 7. approvals
        let decision = match &self.approvals {
            Some(a) => a.apply(request, decision),
            None => decision,
        };
        // A fleet's spend takes an allowed amount before it is answered.
        let decision = match &self.agents {
            Some(a) => a.commit_spend(request, spending, decision),
            None => decision,
        };
        // A result let through takes its labels into the session before
        // it is answered.
        let decision = match (&self.flows, &snapshot) {
            (Some(f), Some(s)) => attach_flow(f, s, request, decision),
            _ => decision,
        };
        timeline.mark(Stage::Approvals);
        // 8. evidence: answered only once the log holds it.
        let decision = evidence::record(
            self.log.as_deref(),
            self.metrics.as_deref(),
            request,
            history,
            decision,
        );
        timeline.mark(Stage::Evidence);
        if let Some(t) = &self.telemetry {
            t.decided(timeline, request, &decision);
        }
        if let Some(f) = &self.flows {
            f.remember_call(request, &decision);
        }
        if let (Some(agents), Some(e)) = (&self.agents, &enriched) {
            agents.observe(request, e, decision.outcome);
        }
        // 9. shadow: candidates and the baseline, off the caller's path.
        self.submit_shadows(shadows, &decision.decision_id);
        if monitored {
            self.rollout.baseline.observe(request, SystemTime::now());
        }
        Ok(decision)
    }

    /// Stages 4 to 6: each policy of `chain` on a fresh instance (or not
    /// at all, in monitor mode; the canary's version, for its sessions),
    /// then the reports folded through the modes.
    async fn evaluate_chain(
        &self,
        Chain { set, names: chain }: Chain<'_>,
        request: &Request,
        Run {
            history,
            flow,
            yielding,
            start,
        }: Run<'_>,
        timeline: &mut Timeline,
    ) -> Decided {
        let Ok(_permit) = self.permits.acquire().await else {
            return host_failure("the instance pool is closed").into();
        };
        // Waiting is bounded by admission and reported here; it is never
        // charged to a policy's deadline.
        if let Some(m) = &self.metrics {
            m.record_queue(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        let c = &request.context;
        // A session is kept stable by agent and session; sessionless
        // callers by their agent alone.
        let session_key = std::cell::OnceCell::new();
        let mut input = Input::new(&request.action, c, history);
        if let Some(s) = flow {
            input = input.with_flow(s.flow.labels(), Arc::clone(&s.query));
        }
        let mut reports = Vec::with_capacity(chain.len());
        let mut shadows = Vec::new();
        let mut monitored = false;
        for name in chain {
            let started = timeline.now();
            let rollout = set.rollout(name);
            let mode = rollout.map_or(Mode::Enforce, |r| r.mode);
            let mut report = match set.policy(name) {
                Some(policy) if mode == Mode::Monitor => {
                    monitored = true;
                    mode::monitor_report(policy)
                }
                Some(primary) => {
                    let canary = rollout.and_then(|r| {
                        // Made only for a policy with a canary.
                        let key = || format!("{}\0{}", c.agent.id, c.session);
                        r.canary_for(
                            name,
                            || session_key.get_or_init(key).as_str(),
                            &self.canary_key,
                        )
                    });
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
                    let mut report = policy.report(eval);
                    if let Some(f) = &self.flows
                        && let Some(l) = report.labels.iter().find(|l| !f.allows(l))
                    {
                        report = PolicyFailure::new(
                            FailureKind::InvalidOutput,
                            format!("label `{l}` is not in [flow] labels"),
                        )
                        .report(&policy.name, &policy.version);
                    }
                    report.candidate = canary.map(|(_, c)| c.id.clone());
                    if let Some(r) = rollout.filter(|r| r.has_candidates()) {
                        let live = canary.map(|(i, _)| i);
                        shadows.push(shadow::Job::new(primary, r, live, &report, &input));
                    }
                    report
                }
                None => set.missing(name),
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
            timeline.policy(started);
        }
        timeline.mark(Stage::Evaluate);
        if reports.is_empty() {
            // `Config` refuses empty chains; a set built by hand may not.
            return route::unmatched(request, start).into();
        }
        let decision = combined(reports, start);
        timeline.mark(Stage::Combine);
        Decided {
            decision,
            shadows,
            monitored,
        }
    }

    /// Queues the shadow jobs of decision `decision_id`; without a queue
    /// each is counted as dropped.
    fn submit_shadows(&self, shadows: Vec<shadow::Job>, decision_id: &str) {
        if shadows.is_empty() {
            return;
        }
        match self.shadow() {
            Some(queue) => {
                for mut job in shadows {
                    decision_id.clone_into(&mut job.decision_id);
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
}

/// Stage 6: a chain's reports folded through the modes into the decision.
fn combined(reports: Vec<PolicyReport>, start: Instant) -> Decision {
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
    Decision {
        approval: None,
        decision_id: crate::decision::new_decision_id(),
        outcome: folded.outcome,
        decided: folded.decided,
        mode: folded.mode,
        warnings: folded.warnings,
        reason,
        rule,
        risk,
        params: folded.params,
        micros: crate::decision::micros_since(start),
        policies: reports,
        flow: None,
    }
}

/// What a chain runs with besides the request.
struct Run<'a> {
    history: &'a crate::decision::History,
    flow: Option<&'a Snapshot>,
    yielding: bool,
    start: Instant,
}

/// Attaches the labels of a result let through to its session, and says
/// in `decision` what the session held and what it attached; a result
/// whose labels cannot be kept is withheld.
fn attach_flow(
    flows: &Flows,
    snapshot: &Snapshot,
    request: &Request,
    decision: Decision,
) -> Decision {
    let labels = flows.labels_for(request, &decision);
    let mut attached = Vec::new();
    let mut decision = decision;
    if !labels.is_empty() {
        let result = decision.params.as_ref().unwrap_or(&request.action.params);
        match flows.attach(request, &decision.decision_id, &labels, result) {
            Ok(()) => attached = labels,
            Err((rule, reason)) => decision = decision.overruled(rule, reason),
        }
    }
    let held = snapshot.flow.labels().to_vec();
    if !held.is_empty() || !attached.is_empty() {
        decision.flow = Some(FlowEvidence { held, attached });
    }
    decision
}

/// The chain a route chose, in the set it is taken from.
struct Chain<'a> {
    set: &'a PolicySet,
    names: &'a [String],
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

fn host_failure(detail: &str) -> Decision {
    Decision::host_deny(
        "failure.host",
        format!("Arbiter could not decide: {detail}; failing closed."),
        Instant::now(),
    )
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

/// 32 bytes from the OS's randomness; all zeros only if it has none,
/// which `getrandom` reports on no supported platform.
fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut key) {
        tracing::error!(error = %e, "no OS randomness for the canary key");
    }
    key
}
