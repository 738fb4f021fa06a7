//! Admission: the first stage of every decision, whichever door it came
//! through. It bounds the decisions running or waiting at once, so a burst
//! is refused at once (the HTTP door answers 503 with `Retry-After`)
//! instead of queueing without end and holding memory and connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::decision::Decision;

/// The rule of a decision refused because too many are pending.
pub const SATURATED_RULE: &str = "admission.saturated";

/// The bound on decisions in flight, shared by every door of one arbiter.
#[derive(Debug)]
pub struct Admission {
    limit: AtomicUsize,
    pending: AtomicUsize,
}

/// A place among the decisions in flight, given back on drop.
#[derive(Debug)]
pub struct Admitted<'a>(&'a Admission);

/// Too many decisions are pending: the bound, for the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{limit} decisions are already pending; try again shortly")]
pub struct Saturated {
    /// The bound in force.
    pub limit: usize,
}

impl Admission {
    /// At most `limit` decisions at once.
    pub fn new(limit: usize) -> Self {
        Admission {
            limit: AtomicUsize::new(limit),
            pending: AtomicUsize::new(0),
        }
    }

    /// Changes the bound; decisions in flight keep their places, so a
    /// lower bound takes effect as they finish.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    /// The bound in force.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Decisions in flight now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// A place, or [`Saturated`] when every place is taken.
    ///
    /// # Errors
    /// [`Saturated`], naming the bound.
    pub fn admit(&self) -> Result<Admitted<'_>, Saturated> {
        let limit = self.limit();
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| Admitted(self))
            .map_err(|_| Saturated { limit })
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Saturated {
    /// The refusal as a deny, for doors that answer with a decision.
    pub fn decision(self, start: Instant) -> Decision {
        Decision::host_deny(
            SATURATED_RULE,
            format!("Arbiter is saturated: {self}; failing closed."),
            start,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let a = Admission::new(2);
        let one = a.admit().expect("first");
        let _two = a.admit().expect("second");
        assert_eq!(a.admit().expect_err("full"), Saturated { limit: 2 });
        drop(one);
        assert_eq!(a.pending(), 1);
        assert!(a.admit().is_ok());
    }

    #[test]
    fn a_lower_limit_refuses_new_decisions_until_enough_finish() {
        let a = Admission::new(3);
        let held: Vec<_> = (0..3).map(|_| a.admit().expect("place")).collect();
        a.set_limit(1);
        assert!(a.admit().is_err());
        drop(held);
        assert!(a.admit().is_ok());
    }

    #[test]
    fn a_refusal_is_a_deny_naming_the_bound() {
        let d = Saturated { limit: 7 }.decision(Instant::now());
        assert_eq!(d.outcome, crate::decision::Outcome::Deny);
        assert_eq!(d.rule, SATURATED_RULE);
        assert!(d.reason.contains("7 decisions"), "{}", d.reason);
    }
}
