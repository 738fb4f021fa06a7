//! Why a policy failed to decide. A failure is a value, not an error: the
//! evaluation stage turns it into a deny whose reason names the kind.

use std::fmt;

use wasmtime::Trap;

use super::sandbox::{MemoryCapExceeded, PolicyExited, StoreState};
use crate::decision::{Mode, Outcome, PolicyReport};

/// The kinds of failure, each with a stable name used in reasons, rules
/// (`failure.<name>`) and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The policy used up its fuel (too many instructions).
    Fuel,
    /// The policy ran past its deadline (its own running time).
    Deadline,
    /// The policy tried to grow its memory past its cap.
    Memory,
    /// The policy recursed past the wasm stack limit.
    StackOverflow,
    /// The policy panicked (its message is kept in the detail).
    Panic,
    /// The policy called `exit`.
    Exit,
    /// Any other trap (`unreachable`, out-of-bounds access, ...).
    Trap,
    /// The policy returned something the contract forbids.
    InvalidOutput,
    /// No loaded policy answers to the configured name.
    Missing,
    /// Arbiter could not instantiate the policy.
    Instantiate,
}

impl FailureKind {
    /// The stable name, e.g. `fuel`, `deadline`, `invalid-output`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Fuel => "fuel",
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::StackOverflow => "stack-overflow",
            FailureKind::Panic => "panic",
            FailureKind::Exit => "exit",
            FailureKind::Trap => "trap",
            FailureKind::InvalidOutput => "invalid-output",
            FailureKind::Missing => "missing",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure and what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// A short, readable explanation.
    pub detail: String,
}

impl PolicyFailure {
    /// A failure of `kind` explained by `detail`.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        PolicyFailure {
            kind,
            detail: detail.into(),
        }
    }

    /// Classifies an error from instantiating or calling a policy, using
    /// what the store saw (a refused memory growth, captured stderr).
    pub(crate) fn classify(error: &wasmtime::Error, state: &StoreState, limits_hint: &str) -> Self {
        if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
            return Self::new(FailureKind::Memory, cap.to_string());
        }
        if error.downcast_ref::<PolicyExited>().is_some() {
            return Self::new(FailureKind::Exit, "the policy called exit");
        }
        let trap = error.downcast_ref::<Trap>().copied();
        match trap {
            Some(Trap::OutOfFuel) => {
                return Self::new(FailureKind::Fuel, format!("fuel exhausted ({limits_hint})"));
            }
            Some(Trap::Interrupt) => {
                return Self::new(
                    FailureKind::Deadline,
                    format!("deadline exceeded ({limits_hint})"),
                );
            }
            Some(Trap::StackOverflow) => {
                return Self::new(FailureKind::StackOverflow, "wasm call stack exhausted");
            }
            _ => {}
        }
        // A Rust panic prints its message to stderr and then traps; the
        // message is the most useful thing we can report.
        if let Some(message) = state.stdio.panic_message() {
            return Self::new(FailureKind::Panic, message);
        }
        match trap {
            Some(trap) => Self::new(FailureKind::Trap, trap.to_string()),
            None => Self::new(FailureKind::Trap, format!("{error:#}")),
        }
    }
}

impl fmt::Display for PolicyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}
impl PolicyFailure {
    /// This failure as policy `name`'s deny report: fail closed, the
    /// reason naming the kind.
    pub fn report(&self, name: &str, version: &str) -> PolicyReport {
        PolicyReport {
            name: name.to_owned(),
            version: version.to_owned(),
            signer: None,
            signed_version: None,
            mode: Mode::Enforce,
            candidate: None,
            outcome: Outcome::Deny,
            rule: format!("failure.{}", self.kind),
            reason: format!(
                "Policy `{name}` failed ({}): {}; failing closed.",
                self.kind, self.detail
            ),
            risk: 100,
            params: None,
            fuel: 0,
            micros: 0,
            failure: Some(self.kind.to_string()),
            labels: Vec::new(),
            questions: Vec::new(),
        }
    }
}
