//! Evaluate: runs one policy on one action in a fresh, bounded instance.
//!
//! Each call gets a new store (`sandbox.rs`) with fuel, an epoch deadline and
//! a memory cap, is instantiated from a [`PolicyPre`] prepared at load (the
//! pooling allocator makes that cheap), and is dropped afterwards, so no
//! state survives from one decision to the next. Whatever goes wrong in the
//! guest becomes a [`PolicyFailure`] value, never a host error: the caller
//! turns it into a deny.

mod deadline;
mod failure;
mod flow;
mod reuse;
mod sandbox;
mod spare;
mod stdio;
mod wasi;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, Func, Linker, TypedFunc};

use deadline::Meter;
pub use failure::{FailureKind, PolicyFailure};
pub use flow::MAX_QUESTIONS;
pub use reuse::InstancePool;
pub(crate) use sandbox::StoreState;
pub use sandbox::{Limits, MemoryCapExceeded, PolicyExited, Reuse};
pub use wasi::WasiGrants;
pub(crate) use wasi::refusal as import_refusal;

use crate::decision::{Context, History, Outcome};
use crate::engine::Engine;
use crate::flow::{LabelQuery, Query};

/// Host bindings generated from `wit/policy.wit`: the contract, 0.2.0.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
    });
}

/// Host bindings of the first contract, `wit/v0.1.0/policy.wit`, which
/// the host still serves: no labels, no `flow` import.
pub(crate) mod legacy {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "policy",
    });
}

use bindings::arbiter::policy::types as wit;
use legacy::arbiter::policy::types as wit1;

/// The contract's own types-only interface, which every guest imports.
pub(crate) const TYPES_INTERFACE: &str = "arbiter:policy/types";
/// The host's flow interface, which a 0.2.0 guest may import.
pub(crate) const FLOW_INTERFACE: &str = "arbiter:policy/flow";

/// The versions of the contract the host serves, newest first.
pub const CONTRACTS: [&str; 2] = ["0.2.0", "0.1.0"];

/// Limits on what a policy may return, so a hostile one cannot make the
/// host copy and log megabytes per decision.
const MAX_REASON_BYTES: usize = 4096;
const MAX_RULE_BYTES: usize = 256;
const MAX_PARAMS_BYTES: usize = 1 << 20;

/// A policy linked against the host and type-checked against the contract:
/// what is prepared once at load so each call only instantiates.
#[derive(Clone)]
pub struct PolicyPre {
    inner: Contract,
    /// `evaluate`, found once so an async call needs no lookup by name.
    evaluate: ComponentExportIndex,
}

/// The contract a component was built against, with its typed exports.
#[derive(Clone)]
enum Contract {
    V2(bindings::PolicyPre<StoreState>),
    V1(legacy::PolicyPre<StoreState>),
}

impl PolicyPre {
    /// Links `component` with the host's inert imports and the WASI
    /// capabilities `grants` allows, and checks that it exports the
    /// contract's functions with the contract's types.
    ///
    /// # Errors
    /// The linker's or type checker's message, naming what does not fit.
    pub(crate) fn new(
        engine: &Engine,
        component: &Component,
        grants: &WasiGrants,
    ) -> wasmtime::Result<Self> {
        let mut linker = Linker::<StoreState>::new(engine.wasmtime());
        stdio::add_to_linker(&mut linker)?;
        // The types interfaces have no functions; an empty instance
        // satisfies each.
        for version in CONTRACTS {
            linker.instance(&format!("{TYPES_INTERFACE}@{version}"))?;
        }
        flow::add_to_linker(&mut linker)?;
        wasi::add_to_linker(&mut linker, engine.wasmtime(), grants, component)?;
        let pre = linker.instantiate_pre(component)?;
        // The newest contract first; a component that fits neither is
        // refused with what the newest one found.
        let inner = match bindings::PolicyPre::new(pre.clone()) {
            Ok(v2) => Contract::V2(v2),
            Err(newest) => match legacy::PolicyPre::new(pre) {
                Ok(v1) => Contract::V1(v1),
                Err(_) => return Err(newest),
            },
        };
        let evaluate = component
            .get_export_index(None, "evaluate")
            .ok_or_else(|| wasmtime::format_err!("no export `evaluate`"))?;
        Ok(PolicyPre { inner, evaluate })
    }

    /// The version of the contract the component was built against.
    pub fn contract(&self) -> &'static str {
        match self.inner {
            Contract::V2(_) => CONTRACTS[0],
            Contract::V1(_) => CONTRACTS[1],
        }
    }

    fn instance_pre(&self) -> &wasmtime::component::InstancePre<StoreState> {
        match &self.inner {
            Contract::V2(p) => p.instance_pre(),
            Contract::V1(p) => p.instance_pre(),
        }
    }
}

/// What a policy decided, after the host checked it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// One sentence.
    pub reason: String,
    /// The deciding rule.
    pub rule: String,
    /// 0 to 100.
    pub risk: u8,
    /// With modify: the replacement params.
    pub params: Option<Value>,
    /// Labels it attached to a result.
    pub labels: Vec<String>,
}

/// The result of one call, with what it cost.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The verdict, or why there is none.
    pub result: Result<Verdict, PolicyFailure>,
    /// Fuel consumed.
    pub fuel: u64,
    /// Wall-clock microseconds, instantiation and any waiting included.
    pub micros: u64,
    /// What it asked `labels-of`, with the answers.
    pub questions: Vec<Query>,
}

/// The input of one decision in the contract's shapes, built once and
/// reused for each policy of the chain.
#[derive(Clone)]
pub struct Input {
    action: wit::Action,
    context: wit::Context,
    /// What `labels-of` answers from; `None` answers nothing.
    flow: Option<Arc<dyn LabelQuery>>,
}

impl Input {
    /// Converts the domain request to the contract's shapes.
    pub fn new(action: &crate::decision::Action, context: &Context, history: &History) -> Self {
        let principal = |p: &crate::decision::Principal| wit::Principal {
            id: p.id.clone(),
            roles: p.roles.clone(),
        };
        Input {
            action: wit::Action {
                kind: action.kind.clone(),
                name: action.name.clone(),
                target: action.target.clone(),
                params: action.params.to_string(),
            },
            context: wit::Context {
                agent: principal(&context.agent),
                user: context.user.as_ref().map(principal),
                environment: context.environment.clone(),
                session: context.session.clone(),
                attributes: context
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                history: wit::History {
                    calls_last_minute: history.calls_last_minute,
                    same_action_last_minute: history.same_action_last_minute,
                    denials_last_hour: history.denials_last_hour,
                    spend_today_cents: history.spend_today_cents,
                },
                labels: Vec::new(),
                settings: String::new(),
            },
            flow: None,
        }
    }

    /// This input with the session's `labels`, answering `labels-of`
    /// from `query`.
    #[must_use]
    pub fn with_flow(mut self, labels: &[crate::flow::Label], query: Arc<dyn LabelQuery>) -> Self {
        self.context.labels = labels
            .iter()
            .map(|l| wit::Label {
                name: l.name.clone(),
                origin: wit::Origin {
                    decision_id: l.origin.decision_id.clone(),
                    kind: l.origin.kind.clone(),
                    name: l.origin.name.clone(),
                    target: l.origin.target.clone(),
                    at_ms: l.origin.at_ms,
                },
            })
            .collect();
        self.flow = Some(query);
        self
    }

    /// The input in the first contract's shapes, for a 0.1.0 component:
    /// made per call, as only such a component needs it.
    fn legacy(&self) -> (wit1::Action, wit1::Context) {
        let (a, c) = (&self.action, &self.context);
        let principal = |p: &wit::Principal| wit1::Principal {
            id: p.id.clone(),
            roles: p.roles.clone(),
        };
        let h = &c.history;
        (
            wit1::Action {
                kind: a.kind.clone(),
                name: a.name.clone(),
                target: a.target.clone(),
                params: a.params.clone(),
            },
            wit1::Context {
                agent: principal(&c.agent),
                user: c.user.as_ref().map(principal),
                environment: c.environment.clone(),
                session: c.session.clone(),
                attributes: c.attributes.clone(),
                history: wit1::History {
                    calls_last_minute: h.calls_last_minute,
                    same_action_last_minute: h.same_action_last_minute,
                    denials_last_hour: h.denials_last_hour,
                    spend_today_cents: h.spend_today_cents,
                },
                settings: c.settings.clone(),
            },
        )
    }

    /// About how many bytes it holds: its strings, which is what a
    /// large request makes large.
    pub fn approx_bytes(&self) -> usize {
        let (a, c) = (&self.action, &self.context);
        let principal =
            |p: &wit::Principal| p.id.len() + p.roles.iter().map(String::len).sum::<usize>();
        a.kind.len()
            + a.name.len()
            + a.target.len()
            + a.params.len()
            + principal(&c.agent)
            + c.user.as_ref().map_or(0, principal)
            + c.environment.len()
            + c.session.len()
            + c.attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + c.settings.len()
            + c.labels
                .iter()
                .map(|l| l.name.len() + l.origin.name.len() + l.origin.target.len() + 48)
                .sum::<usize>()
    }

    /// Sets the settings of the policy about to run, reusing the buffer.
    fn set_settings(&mut self, settings: &str) {
        self.context.settings.clear();
        self.context.settings.push_str(settings);
    }

    /// Replaces the params, after a modify earlier in the chain.
    pub fn set_params(&mut self, params: &Value) {
        self.action.params = params.to_string();
    }

    /// The input in the wire format (`action` and `context`, with the
    /// history the host filled), for divergence samples.
    pub fn wire(&self) -> Value {
        let (a, c) = (&self.action, &self.context);
        let principal = |p: &wit::Principal| serde_json::json!({"id": p.id, "roles": p.roles});
        let attributes: serde_json::Map<String, Value> = c
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let h = &c.history;
        serde_json::json!({
            "action": {
                "kind": a.kind,
                "name": a.name,
                "target": a.target,
                "params": serde_json::from_str::<Value>(&a.params)
                    .unwrap_or_else(|_| Value::String(a.params.clone())),
            },
            "context": {
                "agent": principal(&c.agent),
                "user": c.user.as_ref().map(principal),
                "environment": c.environment,
                "session": c.session,
                "attributes": attributes,
            },
            "history": {
                "calls_last_minute": h.calls_last_minute,
                "same_action_last_minute": h.same_action_last_minute,
                "denials_last_hour": h.denials_last_hour,
                "spend_today_cents": h.spend_today_cents,
            },
        })
    }
}

/// Runs `evaluate` on an instance of `pre`, with `settings` and under
/// `limits`: a fresh instance, or one `pool` kept for this agent.
pub fn evaluate(
    engine: &Engine,
    pre: &PolicyPre,
    limits: &Limits,
    settings: &str,
    input: &mut Input,
    pool: Option<&InstancePool>,
) -> Evaluation {
    input.set_settings(settings);
    let start = Instant::now();
    let meter = Meter::new(limits.deadline(), engine.tick());
    let (mut store, func, uses) = match reused_or_fresh(engine, pre, limits, pool, input, &meter) {
        Ok(ready) => ready,
        Err((failure, fuel)) => return failed(failure, fuel, start),
    };
    store.data_mut().flow.arm(input.flow.clone());
    let result = match pre.inner {
        Contract::V2(_) => typed_evaluate(func)
            .call(&mut store, (&input.action, &input.context))
            .map(|(d,)| d),
        Contract::V1(_) => {
            let (action, context) = input.legacy();
            typed_evaluate_v1(func)
                .call(&mut store, (&action, &context))
                .map(|(d,)| upgrade(d))
        }
    }
    .map_err(|e| PolicyFailure::classify(&e, store.data(), &limits.describe()));
    finish_kept(
        engine, store, func, uses, result, limits, start, pool, input,
    )
}

/// [`evaluate`] for async callers: the instance runs on the calling task
/// and yields to the executor at every epoch tick, so a slow policy shares
/// the thread with other requests until its deadline interrupts it, instead
/// of holding it. Time spent waiting to be polled again is not charged to
/// the deadline.
pub async fn evaluate_async(
    engine: &Engine,
    pre: &PolicyPre,
    limits: &Limits,
    settings: &str,
    input: &mut Input,
    pool: Option<&InstancePool>,
) -> Evaluation {
    input.set_settings(settings);
    let start = Instant::now();
    let meter = Meter::new(limits.deadline(), engine.tick());
    let (mut store, func, uses) = match made_ahead(pool, &input.context.agent.id) {
        Some((mut store, func, uses)) => {
            if let Err(e) = arm(&mut store, limits, meter.clone(), true) {
                return failed(store_failure(&e), 0, start);
            }
            (store, func, uses)
        }
        None => {
            let mut store = match sandbox::new_store(engine, limits, meter.clone(), true) {
                Ok(store) => store,
                Err(e) => return failed(store_failure(&e), 0, start),
            };
            let instance =
                deadline::sliced(&meter, pre.instance_pre().instantiate_async(&mut store)).await;
            match instance {
                Ok(instance) => match instance.get_func(&mut store, pre.evaluate) {
                    Some(func) => (store, func, 0),
                    None => return failed(no_evaluate(), fuel_used(&store, limits), start),
                },
                Err(e) => {
                    let failure = instantiate_failure(&e, store.data(), limits);
                    return failed(failure, fuel_used(&store, limits), start);
                }
            }
        }
    };
    store.data_mut().flow.arm(input.flow.clone());
    let result = match pre.inner {
        Contract::V2(_) => deadline::sliced(
            &meter,
            typed_evaluate(func).call_async(&mut store, (&input.action, &input.context)),
        )
        .await
        .map(|(d,)| d),
        Contract::V1(_) => {
            let (action, context) = input.legacy();
            deadline::sliced(
                &meter,
                typed_evaluate_v1(func).call_async(&mut store, (&action, &context)),
            )
            .await
            .map(|(d,)| upgrade(d))
        }
    }
    .map_err(|e| PolicyFailure::classify(&e, store.data(), &limits.describe()));
    finish_kept(
        engine, store, func, uses, result, limits, start, pool, input,
    )
}

/// `evaluate` as a typed function.
fn typed_evaluate<'a>(
    func: Func,
) -> TypedFunc<(&'a wit::Action, &'a wit::Context), (wit::Decision,)> {
    // SAFETY: `PolicyPre::new` type-checked `evaluate` against the
    // contract's signature, which is exactly this one.
    unsafe { TypedFunc::new_unchecked(func) }
}

/// `evaluate` of a 0.1.0 component as a typed function.
fn typed_evaluate_v1<'a>(
    func: Func,
) -> TypedFunc<(&'a wit1::Action, &'a wit1::Context), (wit1::Decision,)> {
    // SAFETY: `PolicyPre::new` type-checked `evaluate` against the first
    // contract's signature, which is exactly this one.
    unsafe { TypedFunc::new_unchecked(func) }
}

/// A 0.1.0 decision in the current shape: it attaches no labels.
fn upgrade(d: wit1::Decision) -> wit::Decision {
    wit::Decision {
        outcome: match d.outcome {
            wit1::Outcome::Allow => wit::Outcome::Allow,
            wit1::Outcome::Deny => wit::Outcome::Deny,
            wit1::Outcome::RequireApproval => wit::Outcome::RequireApproval,
            wit1::Outcome::Modify => wit::Outcome::Modify,
        },
        reason: d.reason,
        rule: d.rule,
        risk: d.risk,
        params: d.params,
        labels: Vec::new(),
    }
}

/// An instance `pool` holds for this decision: one kept for `agent` under
/// reuse, else a spare made ahead; with the decisions it has made.
fn made_ahead(pool: Option<&InstancePool>, agent: &str) -> Option<(Store<StoreState>, Func, u32)> {
    let pool = pool?;
    if let Some(k) = pool.take(agent) {
        return Some((k.store, k.evaluate, k.uses));
    }
    pool.spare().map(|s| (s.store, s.evaluate, 0))
}

/// An instance made ahead, re-armed with `meter`, or a fresh one armed
/// with it; with the decisions the instance has made. A failure
/// comes with the fuel its start used.
fn reused_or_fresh(
    engine: &Engine,
    pre: &PolicyPre,
    limits: &Limits,
    pool: Option<&InstancePool>,
    input: &Input,
    meter: &Meter,
) -> Result<(Store<StoreState>, Func, u32), (PolicyFailure, u64)> {
    let start_failure = |e: wasmtime::Error| {
        (
            PolicyFailure::new(FailureKind::Instantiate, format!("{e:#}")),
            0,
        )
    };
    if let Some((mut store, func, uses)) = made_ahead(pool, &input.context.agent.id) {
        arm(&mut store, limits, meter.clone(), false).map_err(start_failure)?;
        return Ok((store, func, uses));
    }
    let mut store =
        sandbox::new_store(engine, limits, meter.clone(), false).map_err(start_failure)?;
    let instance = match pre.instance_pre().instantiate(&mut store) {
        Ok(instance) => instance,
        Err(e) => {
            let failure = instantiate_failure(&e, store.data(), limits);
            return Err((failure, fuel_used(&store, limits)));
        }
    };
    match instance.get_func(&mut store, pre.evaluate) {
        Some(func) => Ok((store, func, 0)),
        None => Err((no_evaluate(), fuel_used(&store, limits))),
    }
}

/// The fuel a store has used of its call's budget.
fn fuel_used(store: &Store<StoreState>, limits: &Limits) -> u64 {
    limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
}

fn no_evaluate() -> PolicyFailure {
    PolicyFailure::new(FailureKind::Instantiate, "no export `evaluate`")
}

/// Gives a kept instance's call its own fuel, deadline and stderr.
fn arm(
    store: &mut Store<StoreState>,
    limits: &Limits,
    meter: Meter,
    yielding: bool,
) -> wasmtime::Result<()> {
    store.set_fuel(limits.fuel)?;
    deadline::arm(store, meter, yielding);
    store.data_mut().stdio = stdio::Captured::default();
    Ok(())
}

fn failed(failure: PolicyFailure, fuel: u64, start: Instant) -> Evaluation {
    Evaluation {
        result: Err(failure),
        fuel,
        micros: micros_since(start),
        questions: Vec::new(),
    }
}

/// Measures the call, checks its output, and keeps the instance for
/// another decision when reuse allows and nothing went wrong.
#[allow(clippy::too_many_arguments)]
fn finish_kept(
    engine: &Engine,
    mut store: Store<StoreState>,
    func: Func,
    uses: u32,
    result: Result<wit::Decision, PolicyFailure>,
    limits: &Limits,
    start: Instant,
    pool: Option<&InstancePool>,
    input: &Input,
) -> Evaluation {
    let fuel = fuel_used(&store, limits);
    let result_kind = crate::flow::is_result(&input.action.kind);
    let result = result.and_then(|d| check_output(d, result_kind));
    let questions = std::mem::take(&mut store.data_mut().flow.questions);
    store.data_mut().flow.arm(None);
    match pool {
        Some(pool) if result.is_ok() && pool.enabled() => {
            pool.give_back(engine, store, func, uses + 1, &input.context.agent.id);
        }
        Some(_) => spare::retire(engine, store),
        None => drop(store),
    }
    Evaluation {
        result,
        fuel,
        micros: micros_since(start),
        questions,
    }
}

/// Calls `validate-settings` on a fresh instance: `Ok(Err(message))` when
/// the policy refuses its settings, `Err` when it failed to answer at all.
pub fn validate_settings(
    engine: &Engine,
    pre: &PolicyPre,
    limits: &Limits,
    settings: &str,
) -> Result<Result<(), String>, PolicyFailure> {
    let meter = Meter::new(limits.deadline(), engine.tick());
    let mut store = match sandbox::new_store(engine, limits, meter, false) {
        Ok(store) => store,
        Err(e) => return Err(store_failure(&e)),
    };
    let called = match &pre.inner {
        Contract::V2(p) => p
            .instantiate(&mut store)
            .map_err(|e| instantiate_failure(&e, store.data(), limits))
            .map(|policy| policy.call_validate_settings(&mut store, settings)),
        Contract::V1(p) => p
            .instantiate(&mut store)
            .map_err(|e| instantiate_failure(&e, store.data(), limits))
            .map(|policy| policy.call_validate_settings(&mut store, settings)),
    };
    called
        .and_then(|r| r.map_err(|e| PolicyFailure::classify(&e, store.data(), &limits.describe())))
}

fn store_failure(e: &wasmtime::Error) -> PolicyFailure {
    PolicyFailure::new(FailureKind::Instantiate, format!("{e:#}"))
}

/// Instantiation fails for the same guest reasons a call does (a start
/// function that traps, an initial memory over the cap), or because the
/// pool is exhausted.
fn instantiate_failure(e: &wasmtime::Error, state: &StoreState, limits: &Limits) -> PolicyFailure {
    if e.downcast_ref::<wasmtime::Trap>().is_some()
        || e.downcast_ref::<MemoryCapExceeded>().is_some()
    {
        return PolicyFailure::classify(e, state, &limits.describe());
    }
    PolicyFailure::new(FailureKind::Instantiate, format!("{e:#}"))
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Checks a decision against the contract: risk 0–100, params with modify,
/// params that are JSON, and sizes the host is willing to carry.
fn check_output(d: wit::Decision, result_kind: bool) -> Result<Verdict, PolicyFailure> {
    let invalid = |detail: String| Err(PolicyFailure::new(FailureKind::InvalidOutput, detail));
    if d.risk > 100 {
        return invalid(format!("risk {} is over 100", d.risk));
    }
    if d.rule.is_empty() {
        return invalid("the rule is empty".into());
    }
    if d.rule.len() > MAX_RULE_BYTES {
        return invalid(format!(
            "the rule is {} bytes; at most {MAX_RULE_BYTES}",
            d.rule.len()
        ));
    }
    if d.reason.len() > MAX_REASON_BYTES {
        return invalid(format!(
            "the reason is {} bytes; at most {MAX_REASON_BYTES}",
            d.reason.len()
        ));
    }
    let outcome = match d.outcome {
        wit::Outcome::Allow => Outcome::Allow,
        wit::Outcome::Deny => Outcome::Deny,
        wit::Outcome::RequireApproval => Outcome::RequireApproval,
        wit::Outcome::Modify => Outcome::Modify,
    };
    let params = match (outcome, d.params) {
        (Outcome::Modify, None) => return invalid("modify without params".into()),
        (Outcome::Modify, Some(p)) => {
            if p.len() > MAX_PARAMS_BYTES {
                return invalid(format!(
                    "params are {} bytes; at most {MAX_PARAMS_BYTES}",
                    p.len()
                ));
            }
            match serde_json::from_str::<Value>(&p) {
                Ok(v) => Some(v),
                Err(e) => return invalid(format!("modify params are not JSON: {e}")),
            }
        }
        // Params only mean something with modify.
        (_, _) => None,
    };
    if !d.labels.is_empty() && !result_kind {
        return invalid(format!(
            "labels {:?} on a decision that is not about a result (kind `*{}`)",
            d.labels.iter().take(4).collect::<Vec<_>>(),
            crate::flow::RESULT_SUFFIX
        ));
    }
    if d.labels.len() > crate::flow::MAX_LABELS_PER_DECISION {
        return invalid(format!(
            "{} labels; at most {}",
            d.labels.len(),
            crate::flow::MAX_LABELS_PER_DECISION
        ));
    }
    if let Some(problem) = d.labels.iter().find_map(|l| crate::flow::label_problem(l)) {
        return invalid(problem);
    }
    let mut labels = d.labels;
    labels.sort_unstable();
    labels.dedup();
    Ok(Verdict {
        outcome,
        reason: d.reason,
        rule: d.rule,
        risk: d.risk,
        params,
        labels,
    })
}

/// Runs a future to completion on this thread, for the synchronous
/// paths: they only ever wait for an instance permit, so parking until
/// woken is all they need.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_waits_for_a_wake_from_another_thread() {
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let held = Arc::clone(&permits).try_acquire_owned().expect("free");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(held);
        });
        let permit = block_on(permits.acquire());
        assert!(permit.is_ok());
        releaser.join().expect("join");
    }

    fn decision(outcome: wit::Outcome, risk: u8, params: Option<&str>) -> wit::Decision {
        wit::Decision {
            outcome,
            reason: "r".into(),
            rule: "x.y".into(),
            risk,
            params: params.map(str::to_owned),
            labels: Vec::new(),
        }
    }

    fn kind(d: wit::Decision) -> Option<FailureKind> {
        check_output(d, false).err().map(|f| f.kind)
    }

    #[test]
    fn output_checks() {
        use wit::Outcome::*;
        assert_eq!(kind(decision(Allow, 100, None)), None);
        assert_eq!(
            kind(decision(Allow, 101, None)),
            Some(FailureKind::InvalidOutput)
        );
        assert_eq!(
            kind(decision(Modify, 10, None)),
            Some(FailureKind::InvalidOutput)
        );
        assert_eq!(
            kind(decision(Modify, 10, Some("{nope"))),
            Some(FailureKind::InvalidOutput)
        );
        assert_eq!(kind(decision(Modify, 10, Some(r#"{"a":1}"#))), None);
        // Params without modify are ignored, not an error.
        assert_eq!(
            check_output(decision(Deny, 10, Some("x")), false)
                .ok()
                .and_then(|v| v.params),
            None
        );
        let mut long = decision(Deny, 1, None);
        long.reason = "x".repeat(MAX_REASON_BYTES + 1);
        assert_eq!(kind(long), Some(FailureKind::InvalidOutput));
    }

    #[test]
    fn labels_are_checked_and_only_ride_on_a_result() {
        let labelled = |labels: &[&str]| {
            let mut d = decision(wit::Outcome::Allow, 0, None);
            d.labels = labels.iter().map(|l| (*l).to_owned()).collect();
            d
        };
        let on_result = |d| check_output(d, true).map(|v| v.labels).map_err(|f| f.kind);
        assert_eq!(
            on_result(labelled(&["private", "pii", "private"])),
            Ok(vec!["pii".to_owned(), "private".to_owned()])
        );
        // On a call, on nothing that is a label, past the count: refused.
        assert_eq!(
            kind(labelled(&["private"])),
            Some(FailureKind::InvalidOutput)
        );
        assert_eq!(
            on_result(labelled(&["Private!"])),
            Err(FailureKind::InvalidOutput)
        );
        let many: Vec<String> = (0..17).map(|i| format!("l{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(on_result(labelled(&many)), Err(FailureKind::InvalidOutput));
    }
}
