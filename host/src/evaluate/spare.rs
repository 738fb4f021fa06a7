//! Spare instances: fresh instances made ahead of the decisions that will
//! use them, on the engine's background thread, so a decision's own path
//! holds only its call. Each spare is instantiated once, never called
//! before the decision that takes it, and torn down after that one
//! decision: a decision still runs alone in a fresh instance, and what a
//! spare costs in CPU is the same instantiation, done earlier.
//!
//! The bounds: each policy keeps at most [`PER_POLICY`] spares, the engine
//! at most its `spare_instances` in all (their pool slots are counted
//! apart from the decisions in flight); a policy whose spare fails to
//! start gets no more, and its decisions instantiate on their own path,
//! where the failure is reported as usual.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::Store;
use wasmtime::component::Func;

use super::PolicyPre;
use super::deadline::Meter;
use super::sandbox::{self, Limits, StoreState};
use crate::engine::{Engine, IdleSlot};

/// How many spares one policy keeps ready: enough for the decisions two
/// threads make at once.
pub(super) const PER_POLICY: usize = 2;

/// A fresh instance, never called, with its store.
pub(super) struct Spare {
    pub(super) store: Store<StoreState>,
    pub(super) evaluate: Func,
    _slot: IdleSlot,
}

/// The spares of one loaded policy and what making more takes.
pub(crate) struct Spares {
    engine: Engine,
    pre: PolicyPre,
    limits: Limits,
    ready: Mutex<Vec<Spare>>,
    /// A refill is queued or running.
    refilling: AtomicBool,
    /// A spare failed to start; make no more.
    broken: AtomicBool,
}

impl Spares {
    /// No spares yet for `pre` under `limits`; the first decision asks for
    /// them.
    pub(crate) fn new(engine: &Engine, pre: &PolicyPre, limits: Limits) -> Arc<Self> {
        Arc::new(Spares {
            engine: engine.clone(),
            pre: pre.clone(),
            limits,
            ready: Mutex::new(Vec::with_capacity(PER_POLICY)),
            refilling: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        })
    }

    /// How many are ready now.
    pub(super) fn ready(&self) -> usize {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// A spare, if one is ready; either way, more are asked for.
    pub(super) fn take(self: &Arc<Self>) -> Option<Spare> {
        let spare = self
            .ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        self.ask_for_more();
        spare
    }

    fn ask_for_more(self: &Arc<Self>) {
        if !self.engine.spares_enabled()
            || self.broken.load(Ordering::Relaxed)
            || self.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = Arc::clone(self);
        if self.engine.offload(Box::new(move || me.refill())).is_err() {
            self.refilling.store(false, Ordering::Release);
        }
    }

    /// Makes spares up to [`PER_POLICY`], on the background thread.
    fn refill(&self) {
        loop {
            if self.ready() >= PER_POLICY {
                break;
            }
            let Some(slot) = IdleSlot::acquire(self.engine.spare_slots()) else {
                break;
            };
            match self.start() {
                Some((store, evaluate)) => self
                    .ready
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Spare {
                        store,
                        evaluate,
                        _slot: slot,
                    }),
                None => {
                    self.broken.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// A fresh instance under the policy's limits, or `None` when it does
    /// not start.
    fn start(&self) -> Option<(Store<StoreState>, Func)> {
        let meter = Meter::new(self.limits.deadline(), self.engine.tick());
        let mut store = sandbox::new_store(&self.engine, &self.limits, meter, false).ok()?;
        let instance = self.pre.instance_pre().instantiate(&mut store).ok()?;
        let evaluate = instance.get_func(&mut store, self.pre.evaluate)?;
        Some((store, evaluate))
    }
}

/// Tears a used store down on the background thread when the engine makes
/// spares, or here (also when the thread's queue is full).
///
/// The two go together: tearing down and instantiating both change the
/// process's page tables, and whichever thread does one while another
/// does the other slows down (shared locks, TLB shootdowns). With spares,
/// the decision's own path does neither; without them, it does both.
pub(super) fn retire(engine: &Engine, store: Store<StoreState>) {
    if !engine.spares_enabled() {
        return drop(store);
    }
    if let Err(job) = engine.offload(Box::new(move || drop(store))) {
        job();
    }
}
