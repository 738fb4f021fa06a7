//! Fleet: a replica among several that share one store follows the
//! changes the others make.
//!
//! The store announces them ([`State::subscribe`]); [`follow`] reads what
//! changed again into this replica's agents, approvals and pins. A change
//! that cannot be read, a receiver that fell behind, or a feed joined
//! again makes it read everything, and until it has, the [`Feed`] says
//! the replica is behind, so its decisions fail closed
//! ([`crate::enrich::Agents::unavailable`]). Alongside, [`merge`] trades
//! the agents' sliding windows' counts with the others every
//! `state.window_merge_ms`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::approvals::Approvals;
use crate::enrich::Agents;
use crate::enrich::pins::Pins;
use crate::evidence::metrics::Metrics;
use crate::state::{Feed, State, StateChange, StoreError};
use crate::time::{Clock as _, SystemClock};

/// How long to wait before reading everything again after a failure.
const RETRY: Duration = Duration::from_millis(200);

/// What a replica keeps in memory of the shared state.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Suspensions and breakers.
    pub agents: Arc<Agents>,
    /// Approvals.
    pub approvals: Arc<Approvals>,
    /// MCP tool pins.
    pub pins: Arc<Pins>,
    /// Where the feed's health is counted.
    pub metrics: Option<Arc<Metrics>>,
}

/// Follows `state`'s changes into `replica` until `stop` resolves.
pub async fn follow(state: State, replica: Replica, stop: impl Future<Output = ()>) {
    let mut changes = state.subscribe();
    let feed = Arc::clone(state.feed());
    // Whatever was announced before subscribing is read now.
    let mut behind = true;
    tokio::pin!(stop);
    loop {
        let mut batch = Batch::default();
        if behind {
            batch.resync = true;
        } else {
            tokio::select! {
                heard = changes.recv() => match heard {
                    Ok(c) => batch.add(c),
                    Err(RecvError::Lagged(_)) => batch.resync = true,
                    Err(RecvError::Closed) => return,
                },
                () = &mut stop => return,
                // The feed's health is reported even when nothing changes.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        // Everything already waiting is applied in one go.
        loop {
            match changes.try_recv() {
                Ok(c) => batch.add(c),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => batch.resync = true,
                Err(_) => break,
            }
        }
        let (r, f) = (replica.clone(), Arc::clone(&feed));
        let applied = tokio::task::spawn_blocking(move || batch.apply(&r, &f))
            .await
            .unwrap_or_else(|e| Err(format!("the follower's task failed: {e}")));
        behind = match applied {
            Ok(()) => false,
            Err(e) => {
                feed.missed(SystemClock.now_ms());
                // Once per outage, not at every retry.
                if !behind {
                    tracing::error!(error = %e, "a change to the shared state could not be read; reading everything again");
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = &mut stop => return,
                }
                true
            }
        };
        if let Some(m) = &replica.metrics {
            m.set_state_feed(feed.lost_since().is_none(), feed.reconnects());
        }
    }
}

/// Changes heard together.
#[derive(Debug, Default)]
struct Batch {
    resync: bool,
    agents: bool,
    approvals: BTreeSet<String>,
    pins: bool,
}

impl Batch {
    fn add(&mut self, change: StateChange) {
        match change {
            StateChange::Suspended(_)
            | StateChange::Resumed(_)
            | StateChange::BreakerOpened(_)
            | StateChange::BreakerClosed(_) => self.agents = true,
            StateChange::Approval(id) => {
                self.approvals.insert(id);
            }
            StateChange::Pins => self.pins = true,
            StateChange::Resync => self.resync = true,
        }
    }

    /// Reads what changed again; with a resync, everything, and then the
    /// feed is in step if it was not lost meanwhile.
    fn apply(self, r: &Replica, feed: &Feed) -> Result<(), String> {
        let failed = |what: &'static str| move |e: StoreError| format!("{what}: {e}");
        if self.resync {
            let epoch = feed.epoch();
            r.agents.reload().map_err(failed("agents"))?;
            r.approvals.reload().map_err(failed("approvals"))?;
            r.pins.reload().map_err(failed("pins"))?;
            feed.caught_up(epoch);
            return Ok(());
        }
        if self.agents {
            r.agents.reload().map_err(failed("agents"))?;
        }
        for id in &self.approvals {
            r.approvals.refresh(id).map_err(failed("an approval"))?;
        }
        if self.pins {
            r.pins.reload().map_err(failed("pins"))?;
        }
        Ok(())
    }
}

/// Exchanges `agents`' window counts with the other replicas every
/// `every` until `stop` resolves, and once more then, so what this replica
/// counted last still reaches them.
pub async fn merge(agents: Arc<Agents>, every: Duration, stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(every);
    // A late tick is not made up for with a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            () = &mut stop => true,
        };
        let a = Arc::clone(&agents);
        let exchanged = tokio::task::spawn_blocking(move || a.exchange())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match exchanged {
            Ok(_) if failing => {
                tracing::info!("the sliding windows are merged with the fleet again");
                failing = false;
            }
            Ok(_) => {}
            // Once per outage, not at every tick.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "the sliding windows could not be merged with the fleet; their counts are kept and sent later");
                failing = true;
            }
            Err(_) => {}
        }
        if last {
            return;
        }
    }
}
