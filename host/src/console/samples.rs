//! The overview's memory: a snapshot of the service's own metrics each
//! minute, an hour of them, so the overview can draw what happened per
//! minute and over the last hour from counters that only grow.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::evidence::metrics::{Metrics, Snapshot};
use crate::time::{Clock, SystemClock};

/// How often a snapshot is taken.
pub const EVERY: Duration = Duration::from_secs(60);
/// Snapshots kept: an hour's, and the one before it.
const KEPT: usize = 61;

/// Snapshots of the metrics, oldest first.
#[derive(Debug, Default)]
pub struct Samples {
    taken: Mutex<VecDeque<(u64, Snapshot)>>,
}

impl Samples {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `snapshot`, taken at `at_ms`.
    pub fn add(&self, at_ms: u64, snapshot: Snapshot) {
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        if taken.len() == KEPT {
            taken.pop_front();
        }
        taken.push_back((at_ms, snapshot));
    }

    /// Every snapshot kept, oldest first.
    pub fn all(&self) -> Vec<(u64, Snapshot)> {
        self.taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// Takes a snapshot of `metrics` into `samples` now and every [`EVERY`]
/// until `stop` resolves.
pub async fn run(metrics: Arc<Metrics>, samples: Arc<Samples>, stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticks.tick() => samples.add(SystemClock.now_ms(), metrics.snapshot()),
            () = &mut stop => return,
        }
    }
}
