//! Sliding windows of what each agent did, in milliseconds of the host's
//! clock: the counters policies see as `context.history`.
//!
//! A window keeps one entry per millisecond that saw an event (with a
//! count), so its memory is bounded by its length, not by the traffic, and
//! its edges are exact to the millisecond: an event at `t` counts in the
//! last minute until `t + 60 000 ms`, not after.

use std::collections::VecDeque;

/// Events over a window of a fixed length.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    /// (millisecond, events in it), oldest first.
    events: VecDeque<(u64, u32)>,
    total: u64,
}

impl Window {
    /// Counts one event at `now`.
    pub(crate) fn add(&mut self, now: u64) {
        match self.events.back_mut() {
            Some((t, n)) if *t == now => *n = n.saturating_add(1),
            _ => self.events.push_back((now, 1)),
        }
        self.total += 1;
    }

    /// Events in the `length` ms before `now` (`now - length` excluded),
    /// forgetting what is older.
    pub(crate) fn count(&mut self, now: u64, length: u64) -> u32 {
        while let Some(&(t, n)) = self.events.front() {
            if t.saturating_add(length) > now {
                break;
            }
            self.events.pop_front();
            self.total -= u64::from(n);
        }
        u32::try_from(self.total).unwrap_or(u32::MAX)
    }
}

/// The amount of an action's params in cents: `params.amount` in dollars,
/// when it is a positive finite number.
pub(crate) fn amount_cents(params: &serde_json::Value) -> Option<u64> {
    let dollars = params.get("amount")?.as_f64()?;
    (dollars.is_finite() && dollars > 0.0)
        .then(|| (dollars * 100.0).round().min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{DAY_MS, DaySpend};

    #[test]
    fn window_edges_are_exact_to_the_millisecond() {
        let mut w = Window::default();
        for t in [1_000, 1_000, 1_500, 30_000] {
            w.add(t);
        }
        assert_eq!(w.count(30_000, 60_000), 4);
        assert_eq!(w.count(60_999, 60_000), 4);
        // The two events at 1 000 leave at 61 000 exactly.
        assert_eq!(w.count(61_000, 60_000), 2);
        assert_eq!(w.count(61_500, 60_000), 1);
        assert_eq!(w.count(90_000, 60_000), 0);
        assert!(w.events.is_empty());
    }

    #[test]
    fn spend_resets_at_midnight_utc() {
        let mut s = DaySpend::default();
        let day = 20_000 * DAY_MS;
        s.add(day + 5, 250);
        s.add(day + DAY_MS - 1, 100);
        assert_eq!(s.today(day + DAY_MS - 1), 350);
        assert_eq!(s.today(day + DAY_MS), 0);
        s.add(day + DAY_MS, 7);
        assert_eq!(s.today(day + DAY_MS + 1), 7);
    }

    #[test]
    fn amounts_are_positive_finite_dollars() {
        use serde_json::json;
        assert_eq!(amount_cents(&json!({"amount": 12.345})), Some(1235));
        assert_eq!(amount_cents(&json!({"amount": 0})), None);
        assert_eq!(amount_cents(&json!({"amount": -3})), None);
        assert_eq!(amount_cents(&json!({"amount": "9"})), None);
        assert_eq!(amount_cents(&json!({})), None);
        assert_eq!(amount_cents(&json!([1])), None);
    }
}
