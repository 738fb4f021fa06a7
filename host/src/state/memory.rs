//! State kept in memory only: nothing survives the process. For embedders
//! and tests that want the state traits without a directory, and the
//! smallest example of a second backend: it implements the four traits
//! and needs no edit anywhere else.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use super::{
    AgentStore, Approval, ApprovalStore, Breaker, DaySpend, FlowStore, Pin, PinStore, State,
    StateChange, StoreError, StoredFlow, Suspension,
};
use crate::decision::ApprovalStatus;

#[derive(Debug, Default)]
struct Tables {
    suspensions: BTreeMap<String, Suspension>,
    breakers: BTreeMap<String, Breaker>,
    spend: BTreeMap<String, DaySpend>,
    approvals: BTreeMap<String, Approval>,
    pins: BTreeMap<(String, String), Pin>,
    flows: BTreeMap<String, StoredFlow>,
}

/// The state in one mutex.
#[derive(Debug)]
pub struct MemoryState {
    tables: Mutex<Tables>,
    changes: broadcast::Sender<StateChange>,
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            tables: Mutex::default(),
            changes: broadcast::channel(1024).0,
        }
    }
}

impl MemoryState {
    /// Empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// This store behind every state trait.
    pub fn into_state(self) -> State {
        let changes = self.changes.clone();
        State::of(self, changes)
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn announce(&self, change: StateChange) {
        let _ = self.changes.send(change);
    }
}

impl AgentStore for MemoryState {
    fn suspensions(&self) -> Result<Vec<(String, Suspension)>, StoreError> {
        Ok(self.tables().suspensions.clone().into_iter().collect())
    }

    fn suspend(&self, agent: &str, suspension: &Suspension) -> Result<(), StoreError> {
        self.tables()
            .suspensions
            .insert(agent.to_owned(), suspension.clone());
        self.announce(StateChange::Suspended(agent.to_owned()));
        Ok(())
    }

    fn resume(&self, agent: &str) -> Result<(), StoreError> {
        self.tables().suspensions.remove(agent);
        self.announce(StateChange::Resumed(agent.to_owned()));
        Ok(())
    }

    fn breakers(&self) -> Result<Vec<(String, Breaker)>, StoreError> {
        Ok(self.tables().breakers.clone().into_iter().collect())
    }

    fn open_breaker(&self, agent: &str, breaker: &Breaker) -> Result<(), StoreError> {
        self.tables()
            .breakers
            .insert(agent.to_owned(), breaker.clone());
        self.announce(StateChange::BreakerOpened(agent.to_owned()));
        Ok(())
    }

    fn close_breaker(&self, agent: &str) -> Result<(), StoreError> {
        self.tables().breakers.remove(agent);
        self.announce(StateChange::BreakerClosed(agent.to_owned()));
        Ok(())
    }

    fn spend(&self) -> Result<Vec<(String, DaySpend)>, StoreError> {
        Ok(self.tables().spend.clone().into_iter().collect())
    }

    fn save_spend(&self, spend: &[(String, DaySpend)]) -> Result<(), StoreError> {
        self.tables().spend.extend(spend.iter().cloned());
        Ok(())
    }
}

impl ApprovalStore for MemoryState {
    fn approvals(&self) -> Result<Vec<Approval>, StoreError> {
        Ok(self.tables().approvals.values().cloned().collect())
    }

    fn create(&self, approval: &Approval) -> Result<(), StoreError> {
        self.tables()
            .approvals
            .insert(approval.id.clone(), approval.clone());
        self.announce(StateChange::Approval(approval.id.clone()));
        Ok(())
    }

    fn transition(&self, from: ApprovalStatus, next: &Approval) -> Result<bool, StoreError> {
        let changed = {
            let mut tables = self.tables();
            match tables.approvals.get_mut(&next.id) {
                Some(a) if a.status == from => {
                    *a = next.clone();
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.announce(StateChange::Approval(next.id.clone()));
        }
        Ok(changed)
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.tables().approvals.remove(id);
        self.announce(StateChange::Approval(id.to_owned()));
        Ok(())
    }
}

impl PinStore for MemoryState {
    fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        Ok(self.tables().pins.values().cloned().collect())
    }

    fn save_pins(&self, pins: &[Pin]) -> Result<(), StoreError> {
        self.tables().pins.extend(
            pins.iter()
                .map(|p| ((p.server.clone(), p.tool.clone()), p.clone())),
        );
        self.announce(StateChange::Pins);
        Ok(())
    }
}

impl FlowStore for MemoryState {
    fn flows(&self) -> Result<Vec<(String, StoredFlow)>, StoreError> {
        Ok(self
            .tables()
            .flows
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flow(&self, key: &str) -> Result<Option<StoredFlow>, StoreError> {
        Ok(self.tables().flows.get(key).cloned())
    }

    fn add_flow(&self, key: &str, added: &StoredFlow) -> Result<(), StoreError> {
        let mut t = self.tables();
        let stored = t.flows.remove(key);
        t.flows
            .insert(key.to_owned(), super::merged_flow(stored, added));
        Ok(())
    }

    fn forget_flow(&self, key: &str, names: &[String]) -> Result<(), StoreError> {
        let mut t = self.tables();
        if let Some(stored) = t.flows.remove(key)
            && let Some(kept) = super::forgotten_flow(stored, names)
        {
            t.flows.insert(key.to_owned(), kept);
        }
        Ok(())
    }
}
