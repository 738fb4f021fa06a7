//! Merging: an agent's sliding windows across the replicas of a fleet.
//!
//! Each replica counts what it decides in its own windows, exactly to the
//! millisecond, and also per second in a list of counts not yet sent.
//! Every `state.window_merge_ms` it sends them to the shared store under
//! an id of this process ([`SharedWindows::exchange`]) and takes back what
//! every other process counted in each window. A policy then sees this
//! replica's counts plus the others' as of the last exchange.
//!
//! The bound, for a window of length `L` read at `now`: every event the
//! other replicas decided before the last exchange (less the time it took)
//! is counted; those of the last `window_merge_ms` and the exchange's round
//! trip may be missing; and an event of theirs leaves the window up to
//! `window_merge_ms` + 999 ms late (the store keeps seconds, and a second
//! counts while any part of it is inside). The count is never lower than
//! this replica's own, and a count that could not be exchanged is kept and
//! sent at the next exchange, so nothing is lost while the store is away.

use std::collections::HashMap;
use std::sync::PoisonError;

use super::{Agents, HOUR_MS, MINUTE_MS};
use crate::state::{BucketCount, StoreError};

/// Which window of [`Remote`] each exchange span feeds.
pub(super) const MINUTE: usize = 0;
/// The breaker's window.
pub(super) const BREAKER: usize = 1;
/// Denials as `context.history` counts them.
pub(super) const DENIALS: usize = 2;

/// Counts per second not yet sent, oldest first.
#[derive(Debug, Default, Clone)]
pub(super) struct Buckets(Vec<(u64, u64)>);

impl Buckets {
    /// Counts one event at `now_ms`.
    pub(super) fn add(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        match self.0.last_mut() {
            Some((s, n)) if *s == second => *n = n.saturating_add(1),
            // A clock stepped back still lands in order.
            Some((s, _)) if *s > second => self.merge(vec![(second, 1)]),
            _ => self.0.push((second, 1)),
        }
    }

    /// Puts back counts that could not be sent.
    fn merge(&mut self, older: Vec<(u64, u64)>) {
        let mut all: std::collections::BTreeMap<u64, u64> = older.into_iter().collect();
        for (s, n) in self.0.drain(..) {
            let e = all.entry(s).or_default();
            *e = e.saturating_add(n);
        }
        self.0 = all.into_iter().collect();
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one agent did here since the last exchange.
#[derive(Debug, Default)]
pub(super) struct Unsent {
    pub(super) calls: Buckets,
    pub(super) denials: Buckets,
    pub(super) actions: HashMap<String, Buckets>,
}

impl Unsent {
    /// Counts one call of the action `key` at `now_ms`, and a denial.
    pub(super) fn add(&mut self, key: &str, denied: bool, now_ms: u64) {
        self.calls.add(now_ms);
        if denied {
            self.denials.add(now_ms);
        }
        match self.actions.get_mut(key) {
            Some(b) => b.add(now_ms),
            None => self.actions.entry(key.to_owned()).or_default().add(now_ms),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.denials.is_empty() && self.actions.is_empty()
    }
}

/// What the other replicas counted for one agent, per window: the last
/// minute, the breaker's window, and the denials' span.
#[derive(Debug, Default, Clone)]
pub(super) struct Remote {
    pub(super) calls: [u32; 3],
    pub(super) denials: [u32; 3],
    pub(super) actions: HashMap<String, [u32; 3]>,
}

/// One agent's counts on the other replicas, none when they have none.
#[derive(Debug, Clone, Copy)]
pub(super) struct Elsewhere<'a>(pub(super) Option<&'a Remote>);

impl<'a> Elsewhere<'a> {
    /// Calls in the last minute.
    pub(super) fn calls(self) -> u32 {
        self.0.map_or(0, |r| r.calls[MINUTE])
    }

    /// Calls of the action `key` in the last minute.
    pub(super) fn action(self, key: &str) -> u32 {
        self.0
            .and_then(|r| r.actions.get(key))
            .map_or(0, |c| c[MINUTE])
    }

    /// Calls per action in the last minute.
    pub(super) fn actions(self) -> impl Iterator<Item = (&'a str, u32)> {
        self.0
            .into_iter()
            .flat_map(|r| r.actions.iter().map(|(k, c)| (k.as_str(), c[MINUTE])))
    }

    /// Denials in the window `span` ([`BREAKER`] or [`DENIALS`]).
    pub(super) fn denials(self, span: usize) -> u32 {
        self.0.map_or(0, |r| r.denials[span])
    }
}

/// How a counter is named in the store: bytes, since an action's key
/// holds a NUL.
enum Counter {
    Calls,
    Denials,
    Action(String),
}

impl Counter {
    fn encode(&self) -> Vec<u8> {
        match self {
            Counter::Calls => b"c".to_vec(),
            Counter::Denials => b"d".to_vec(),
            Counter::Action(key) => [b"a", key.as_bytes()].concat(),
        }
    }

    fn decode(bytes: &[u8]) -> Option<Counter> {
        match bytes.split_first()? {
            (b'c', []) => Some(Counter::Calls),
            (b'd', []) => Some(Counter::Denials),
            (b'a', key) => String::from_utf8(key.to_vec()).ok().map(Counter::Action),
            _ => None,
        }
    }
}

impl Agents {
    /// The spans of [`Remote`]'s windows, in ms.
    pub(super) fn spans(&self) -> [u64; 3] {
        let mut spans = [0; 3];
        spans[MINUTE] = MINUTE_MS;
        spans[BREAKER] = self.window_ms();
        spans[DENIALS] = HOUR_MS.max(self.window_ms());
        spans
    }

    /// Sends what this replica counted since the last exchange to the
    /// shared store and takes the other replicas' counts: the fleet
    /// follower calls it every `state.window_merge_ms`. Returns how many
    /// per-second counts were sent.
    ///
    /// # Errors
    /// A [`StoreError`]; then the counts are kept for the next exchange
    /// and the others' stay as they were last read.
    pub fn exchange(&self) -> Result<usize, StoreError> {
        let Some(fleet) = &self.fleet else {
            return Ok(0);
        };
        let now = self.clock.now_ms();
        let spans = self.spans();
        let mut taken: Vec<(String, Unsent)> = Vec::new();
        for shard in &self.shards {
            let mut agents = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, a) in agents.iter_mut() {
                if !a.unsent.is_empty() {
                    taken.push((id.clone(), std::mem::take(&mut a.unsent)));
                }
            }
        }
        let mut counts = Vec::new();
        for (agent, unsent) in &taken {
            let mut push = |counter: Counter, b: &Buckets| {
                let counter = counter.encode();
                counts.extend(b.0.iter().map(|&(second, n)| BucketCount {
                    agent: agent.clone(),
                    counter: counter.clone(),
                    second,
                    n,
                }));
            };
            push(Counter::Calls, &unsent.calls);
            push(Counter::Denials, &unsent.denials);
            for (key, b) in &unsent.actions {
                push(Counter::Action(key.clone()), b);
            }
        }
        let totals = crate::state::blocking(|| {
            fleet
                .shared
                .windows
                .exchange(&fleet.instance, &counts, now, spans)
        });
        match totals {
            Ok(totals) => {
                let mut remote: HashMap<String, Remote> = HashMap::new();
                for t in totals {
                    let Some(counter) = Counter::decode(&t.counter) else {
                        continue;
                    };
                    let counts = t.counts.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
                    let r = remote.entry(t.agent).or_default();
                    match counter {
                        Counter::Calls => r.calls = counts,
                        Counter::Denials => r.denials = counts,
                        Counter::Action(key) => {
                            r.actions.insert(key, counts);
                        }
                    }
                }
                self.remote.store(std::sync::Arc::new(remote));
                Ok(counts.len())
            }
            Err(e) => {
                // Kept for the next exchange, less what left every window.
                let oldest = now.saturating_sub(spans[DENIALS]) / 1000;
                let keep =
                    |b: Buckets| Buckets(b.0.into_iter().filter(|&(s, _)| s >= oldest).collect());
                for (agent, unsent) in taken {
                    self.with_agent(&agent, |a| {
                        a.unsent.calls.merge(keep(unsent.calls).0);
                        a.unsent.denials.merge(keep(unsent.denials).0);
                        for (key, b) in unsent.actions {
                            a.unsent.actions.entry(key).or_default().merge(keep(b).0);
                        }
                    });
                }
                if let Some(m) = &self.metrics {
                    m.window_merge_failed();
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_per_second_in_order() {
        let mut b = Buckets::default();
        for t in [1_000, 1_999, 2_000, 5_500] {
            b.add(t);
        }
        assert_eq!(b.0, vec![(1, 2), (2, 1), (5, 1)]);
        // A clock stepped back is merged in place.
        b.add(2_100);
        assert_eq!(b.0, vec![(1, 2), (2, 2), (5, 1)]);
        b.merge(vec![(0, 4), (5, 1)]);
        assert_eq!(b.0, vec![(0, 4), (1, 2), (2, 2), (5, 2)]);
    }

    #[test]
    fn counters_survive_the_store_and_nothing_else_decodes() {
        for c in [
            Counter::Calls,
            Counter::Denials,
            Counter::Action("tool\0pay\0".into()),
        ] {
            let bytes = c.encode();
            assert_eq!(Counter::decode(&bytes).map(|d| d.encode()), Some(bytes));
        }
        for bad in [&b""[..], b"x", b"cc", b"a\xff"] {
            assert!(Counter::decode(bad).is_none(), "{bad:?}");
        }
    }
}
