//! The instances one loaded policy holds between decisions: its spares
//! (fresh, never called; `spare.rs`), and under bounded reuse its idle
//! ones, so a decision can skip instantiation (most of its cost for an
//! interpreted language). Reuse is off unless a policy's `limits.reuse`
//! turns it on.
//!
//! The bounds: an instance decides at most `decisions` times; only one
//! whose every call succeeded goes back; it decides again only for the
//! agent it last decided for, unless `across_agents`; each policy keeps at
//! most `idle` of them, and the engine at most its `idle_instances` in all,
//! so kept instances never take the slots decisions in flight need.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use wasmtime::Store;
use wasmtime::component::Func;

use super::PolicyPre;
use super::sandbox::{Limits, Reuse, StoreState};
use super::spare::{Spare, Spares};
use crate::engine::{Engine, IdleSlot};

/// An instance with its store, ready to decide again.
pub(super) struct Kept {
    pub(super) store: Store<StoreState>,
    pub(super) evaluate: Func,
    /// Decisions it has made.
    pub(super) uses: u32,
    agent: String,
    _slot: IdleSlot,
}

/// The spare and idle instances of one loaded policy (one version, with
/// one set of settings: a policy may keep what it parsed from them).
pub struct InstancePool {
    reuse: Reuse,
    kept: Mutex<VecDeque<Kept>>,
    spares: Arc<Spares>,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("reuse", &self.reuse)
            .field("idle", &self.idle())
            .finish()
    }
}

impl InstancePool {
    /// An empty pool for `pre` under `limits`, keeping instances as
    /// `limits.reuse` says.
    pub fn new(engine: &Engine, pre: &PolicyPre, limits: Limits) -> Self {
        InstancePool {
            reuse: limits.reuse,
            kept: Mutex::new(VecDeque::new()),
            spares: Spares::new(engine, pre, limits),
        }
    }

    /// How many spares are ready now.
    pub fn spares(&self) -> usize {
        self.spares.ready()
    }

    /// A fresh instance made ahead, if one is ready.
    pub(super) fn spare(&self) -> Option<Spare> {
        self.spares.take()
    }

    /// How many instances are idle now.
    pub fn idle(&self) -> usize {
        self.kept.lock().map_or(0, |k| k.len())
    }

    /// Whether this pool keeps instances at all.
    pub(super) fn enabled(&self) -> bool {
        self.reuse.enabled()
    }

    /// An idle instance that may decide for `agent`, most recently used
    /// first.
    pub(super) fn take(&self, agent: &str) -> Option<Kept> {
        // Every decision asks; with reuse off it must not take the lock.
        if !self.reuse.enabled() {
            return None;
        }
        let mut kept = self.kept.lock().ok()?;
        let i = kept
            .iter()
            .rposition(|k| self.reuse.across_agents || k.agent == agent)?;
        kept.remove(i)
    }

    /// Keeps an instance that just decided successfully for `agent`, unless
    /// it has made its `decisions`, or there is no idle slot left: then it
    /// is dropped. The oldest idle instance makes way when this pool is
    /// full.
    pub(super) fn give_back(
        &self,
        engine: &Engine,
        store: Store<StoreState>,
        evaluate: Func,
        uses: u32,
        agent: &str,
    ) {
        if !self.reuse.enabled() || uses >= self.reuse.decisions {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.len() >= self.reuse.idle as usize {
            kept.pop_front();
        }
        let Some(slot) = IdleSlot::acquire(engine.idle_slots()) else {
            return;
        };
        kept.push_back(Kept {
            store,
            evaluate,
            uses,
            agent: agent.to_owned(),
            _slot: slot,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_is_off_by_default_and_needs_two_decisions() {
        assert!(!Reuse::default().enabled());
        let one = Reuse {
            decisions: 1,
            ..Reuse::default()
        };
        assert!(!one.enabled());
        let none_idle = Reuse {
            decisions: 10,
            idle: 0,
            ..Reuse::default()
        };
        assert!(!none_idle.enabled());
        assert_eq!(Reuse::default().idle, 4);
    }
}
