//! The sandbox of one call: a new [`Store`] with fuel, an epoch deadline and
//! a memory limiter, holding nothing from any earlier call.

use std::time::Duration;

use serde::Deserialize;
use wasmtime::{ResourceLimiter, Store};

use super::deadline::{self, Meter};
use super::stdio::Captured;
use super::wasi::WasiGrants;
use crate::engine::Engine;

/// The limits one policy runs under; `[policies.limits]` in configuration.
///
/// Fuel bounds the instructions a call may execute and is deterministic;
/// the deadline bounds the time the policy runs, instantiation included,
/// and never counts time spent waiting for a CPU. Both always apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel per call (about one unit per wasm instruction). Default: 50
    /// million, several thousand times what the example policies use.
    pub fuel: u64,
    /// Running time allowed per call, in milliseconds (CPU time of the
    /// policy itself; waiting for a thread or a CPU is not counted).
    /// Default: 100.
    pub deadline_ms: u64,
    /// Cap on the policy's linear memory, in bytes. Default: 16 MiB.
    pub max_memory_bytes: usize,
    /// Cap on each table's elements. Default: 20,000.
    pub max_table_elements: usize,
    /// The WASI capabilities granted (`wasi = { clocks = true }`). Default:
    /// none.
    pub wasi: WasiGrants,
    /// Keeping instances for more than one decision (`reuse = { decisions
    /// = 100 }`). Default: off, a fresh instance for every decision.
    pub reuse: Reuse,
}

/// Bounded instance reuse, `[policies.limits.reuse]`: an instance that
/// decided successfully may decide again, up to `decisions` times, for the
/// same agent unless `across_agents`. It trades isolation between
/// decisions (a policy's memory survives from one to the next) for the
/// instantiation cost, which is most of a decision for interpreted
/// languages. An instance that failed in any way is never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reuse {
    /// At most this many decisions per instance; 0 or 1 turns reuse off.
    /// Default: 0.
    pub decisions: u32,
    /// Let one instance decide for different agents. Default: false, so
    /// nothing one agent's actions leave in memory reaches another's.
    pub across_agents: bool,
    /// At most this many idle instances kept for the policy, out of the
    /// engine's `idle_instances`. Default: 4.
    pub idle: u32,
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse {
            decisions: 0,
            across_agents: false,
            idle: 4,
        }
    }
}

impl Reuse {
    /// Whether instances are reused at all.
    pub fn enabled(&self) -> bool {
        self.decisions > 1 && self.idle > 0
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 50_000_000,
            deadline_ms: 100,
            max_memory_bytes: 16 << 20,
            max_table_elements: 20_000,
            wasi: WasiGrants::default(),
            reuse: Reuse::default(),
        }
    }
}

impl Limits {
    /// The deadline as a [`Duration`].
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// A short description for failure reasons.
    pub(crate) fn describe(&self) -> String {
        format!(
            "limits: {} fuel, {} ms, {} bytes of memory",
            self.fuel, self.deadline_ms, self.max_memory_bytes
        )
    }
}

/// A memory growth the limiter refused.
#[derive(Debug, thiserror::Error)]
#[error("memory growth to {desired} bytes refused; the cap is {cap} bytes")]
pub struct MemoryCapExceeded {
    /// The size asked for.
    pub desired: usize,
    /// The cap.
    pub cap: usize,
}

/// The policy called `wasi:cli/exit`.
#[derive(Debug, thiserror::Error)]
#[error("the policy called exit")]
pub struct PolicyExited;

/// Per-call host state.
pub(crate) struct StoreState {
    limiter: Limiter,
    pub(crate) stdio: Captured,
    /// The session's labels this call may ask about, and what it asked.
    pub(crate) flow: super::flow::Asked,
}

struct Limiter {
    max_memory_bytes: usize,
    max_table_elements: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            // An error, not `Ok(false)`: a refused `memory.grow` would make
            // the guest's allocator abort with a generic trap, and we want
            // the failure to say it was the memory cap.
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                desired,
                cap: self.max_memory_bytes,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}

/// A fresh store for one call, with every limit armed: fuel, the memory
/// cap, and the deadline `meter` keeps (yielding at each tick when the
/// call is async).
pub(crate) fn new_store(
    engine: &Engine,
    limits: &Limits,
    meter: Meter,
    yielding: bool,
) -> wasmtime::Result<Store<StoreState>> {
    let state = StoreState {
        limiter: Limiter {
            max_memory_bytes: limits.max_memory_bytes,
            max_table_elements: limits.max_table_elements,
        },
        stdio: Captured::default(),
        flow: super::flow::Asked::default(),
    };
    let mut store = Store::new(engine.wasmtime(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_fuel(limits.fuel)?;
    deadline::arm(&mut store, meter, yielding);
    Ok(store)
}
