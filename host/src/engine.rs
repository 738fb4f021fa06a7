//! Engine: the one wasmtime [`wasmtime::Engine`] of the process, its pooling
//! allocator, the epoch ticker that interrupts running policies so their
//! deadlines can be checked, the compile threads, and the background thread
//! that makes spare instances and tears used ones down.
//!
//! Every number the engine is built with is here, with the reason for it.
//! The defaults suit small policies (a few hundred KiB of code, a few MiB of
//! heap); interpreted-language policies need a larger `max_memory_bytes`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use wasmtime::{Enabled, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// 64 KiB: the size of one WebAssembly page.
const WASM_PAGE_BYTES: usize = 64 * 1024;

/// Engine-wide settings, from the `[engine]` table of the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// How many policy instances may be alive at once. Each evaluation holds
    /// one for its duration; callers beyond this wait. Default: 128.
    pub max_instances: u32,
    /// How many idle instances policies with `limits.reuse` may keep, in
    /// all, on top of `max_instances`. Default: 16.
    pub idle_instances: u32,
    /// The largest linear memory any policy may be given, in bytes; each
    /// policy's own `max_memory_bytes` must fit under it. Default: 64 MiB.
    pub max_memory_bytes: usize,
    /// The most elements any policy's table may hold; each policy's own
    /// `max_table_elements` must fit under it. Default: 20,000.
    pub max_table_elements: usize,
    /// How many spare instances, fresh and never called, policies may keep
    /// ready in all, made ahead of the decisions that take them; 0 makes
    /// every decision instantiate on its own path. Default: 16.
    pub spare_instances: u32,
    /// Bytes of each memory slot kept resident and reset with `memset` after
    /// use instead of being returned to the kernel, so the next instance in
    /// that slot takes no page faults. Default: 1 MiB.
    pub keep_resident_bytes: usize,
    /// The epoch tick, in milliseconds: the granularity of deadlines.
    /// Default: 1.
    pub epoch_tick_ms: u64,
    /// Use the pooling allocator. When the machine refuses its reservation
    /// (a low `ulimit -v`, say), Arbiter falls back to on-demand allocation
    /// and logs it. Default: true.
    pub pooling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_instances: 128,
            idle_instances: 16,
            spare_instances: 16,
            max_memory_bytes: 64 << 20,
            max_table_elements: 20_000,
            keep_resident_bytes: 1 << 20,
            epoch_tick_ms: 1,
            pooling: true,
        }
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A setting is out of range.
    #[error("engine setting `{key}`: {problem}")]
    Setting {
        /// The `[engine]` key at fault.
        key: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// wasmtime refused the configuration.
    #[error("cannot create the WebAssembly engine: {0}")]
    Wasmtime(String),
}

/// The process's engine, with its epoch ticker running. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    tick: Duration,
    max_memory_bytes: usize,
    max_table_elements: usize,
    max_instances: u32,
    pooling: bool,
    idle: Arc<IdleCount>,
    spares: Arc<IdleCount>,
    background: Arc<Background>,
    compile: Option<Arc<rayon::ThreadPool>>,
    _ticker: Arc<EpochTicker>,
}

impl Engine {
    /// Builds the engine and starts the epoch ticker.
    ///
    /// # Errors
    /// [`EngineError`] when a setting is out of range or wasmtime refuses
    /// the configuration even without pooling.
    pub fn new(config: &EngineConfig) -> Result<Self, EngineError> {
        if config.epoch_tick_ms == 0 {
            return Err(EngineError::Setting {
                key: "epoch_tick_ms",
                problem: "must be at least 1",
            });
        }
        if config.max_instances == 0 {
            return Err(EngineError::Setting {
                key: "max_instances",
                problem: "must be at least 1",
            });
        }
        if config.max_memory_bytes < WASM_PAGE_BYTES {
            return Err(EngineError::Setting {
                key: "max_memory_bytes",
                problem: "must be at least one 64 KiB page",
            });
        }
        let (inner, pooling) = if config.pooling {
            match wasmtime::Engine::new(&wasmtime_config(config, true)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "pooling allocator unavailable; falling back to on-demand allocation"
                    );
                    (build(config, false)?, false)
                }
            }
        } else {
            (build(config, false)?, false)
        };
        let tick = Duration::from_millis(config.epoch_tick_ms);
        let ticker = EpochTicker::start(&inner, tick);
        let compile = compile_pool().map(Arc::new);
        Ok(Engine {
            inner,
            tick,
            max_memory_bytes: config.max_memory_bytes,
            max_table_elements: config.max_table_elements,
            max_instances: config.max_instances,
            pooling,
            idle: Arc::new(IdleCount::new(config.idle_instances)),
            spares: Arc::new(IdleCount::new(config.spare_instances)),
            background: Arc::new(Background::start()),
            compile,
            _ticker: Arc::new(ticker),
        })
    }

    /// Compiles `bytes` to a component on the compile threads: one fewer
    /// than the machine has cores (at least one), each below the
    /// decisions in priority, so a reload never starves the decisions
    /// being made meanwhile.
    ///
    /// # Errors
    /// wasmtime's, when the bytes are not a valid component.
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<wasmtime::component::Component> {
        let compile = || wasmtime::component::Component::new(&self.inner, bytes);
        match &self.compile {
            Some(pool) => pool.install(compile),
            None => compile(),
        }
    }

    /// The wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// The epoch tick: how often a running policy's deadline is checked.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The largest memory any policy may be given, in bytes.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// The most elements any policy's table may hold.
    pub fn max_table_elements(&self) -> usize {
        self.max_table_elements
    }

    /// The engine-wide bound on instances kept idle for reuse.
    pub(crate) fn idle_slots(&self) -> &Arc<IdleCount> {
        &self.idle
    }

    /// The engine-wide bound on spare instances.
    pub(crate) fn spare_slots(&self) -> &Arc<IdleCount> {
        &self.spares
    }

    /// Whether policies keep spare instances at all.
    pub(crate) fn spares_enabled(&self) -> bool {
        self.spares.max > 0
    }

    /// Runs `job` on the engine's background thread, or gives it back
    /// when [`OFFLOAD_BOUND`] jobs are already waiting (or the thread
    /// could not start), for the caller to run itself.
    ///
    /// # Errors
    /// The job, not run.
    pub(crate) fn offload(&self, job: Job) -> Result<(), Job> {
        self.background.offload(job)
    }

    /// How many instances may be alive at once.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }

    /// Whether the pooling allocator is in use (false after a fallback).
    pub fn pooling(&self) -> bool {
        self.pooling
    }
}

fn build(config: &EngineConfig, pooling: bool) -> Result<wasmtime::Engine, EngineError> {
    wasmtime::Engine::new(&wasmtime_config(config, pooling))
        .map_err(|e| EngineError::Wasmtime(format!("{e:#}")))
}

fn wasmtime_config(config: &EngineConfig, pooling: bool) -> wasmtime::Config {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true)
        .cranelift_opt_level(OptLevel::Speed)
        // Limits: fuel bounds instructions, epochs bound wall-clock time.
        .consume_fuel(true)
        .epoch_interruption(true)
        // 512 KiB of wasm stack is plenty for a policy and turns unbounded
        // recursion into a clean `StackOverflow` trap long before the host
        // thread's own stack is at risk.
        .max_wasm_stack(512 * 1024)
        // Small reservations: a memory never needs more address space than
        // its cap, so a pool of many slots stays cheap. The price is an
        // explicit bounds check on each access, which is small next to
        // instantiation for a policy.
        .memory_reservation(config.max_memory_bytes as u64)
        .memory_reservation_for_growth(0)
        .memory_guard_size(WASM_PAGE_BYTES as u64)
        .memory_init_cow(true)
        .parallel_compilation(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        // Decisions in flight, kept and spare instances, and the used ones
        // waiting for the background thread to tear them down.
        let slots = config
            .max_instances
            .saturating_add(config.idle_instances)
            .saturating_add(config.spare_instances)
            .saturating_add(OFFLOAD_BOUND as u32);
        // A Rust policy holds one or two core instances (the guest and its
        // adapter shims); a Python one, linked from libpython and its
        // libraries, a dozen sharing one memory; the preview-1 adapter a
        // memory of its own. Core instance and table slots cost address
        // space only until used.
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(16))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            .table_elements(config.max_table_elements)
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(64 * 1024)
            // Scan for the resident pages rather than assume the low ones,
            // where the kernel (6.7+) has PAGEMAP_SCAN; ignored elsewhere.
            .pagemap_scan(Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// Work for the engine's background thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// At most this many jobs wait for the background thread; each may hold a
/// used instance's pool slot until it runs.
pub(crate) const OFFLOAD_BOUND: usize = 32;

/// The engine's background thread: it makes spare instances and tears used
/// ones down, off the decisions' path. Stopped when the engine is dropped,
/// after the jobs already queued.
struct Background {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The thread waits on `wake`: only then is a notification (a system
    /// call) needed.
    sleeping: bool,
    stop: bool,
}

impl Background {
    fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let mine = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("arbiter-instances".into())
            .spawn(move || mine.run())
            .map_err(|e| tracing::warn!(error = %e, "cannot start the instance thread"))
            .ok();
        Background { shared, thread }
    }

    fn offload(&self, job: Job) -> Result<(), Job> {
        if self.thread.is_none() {
            return Err(job);
        }
        let mut q = self.shared.lock();
        if q.jobs.len() >= OFFLOAD_BOUND || q.stop {
            return Err(job);
        }
        q.jobs.push_back(job);
        if q.sleeping {
            q.sleeping = false;
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        loop {
            let job = {
                let mut q = self.lock();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    if q.stop {
                        return;
                    }
                    q.sleeping = true;
                    q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            // A job that panics costs its own work, not the thread.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("a background instance job panicked");
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        {
            let mut q = self.shared.lock();
            q.stop = true;
        }
        self.shared.wake.notify_one();
        // The last engine may be dropped by a job on the thread itself.
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

/// The compile threads, or `None` (compiling on the caller's thread and
/// rayon's own) when the machine refuses them.
fn compile_pool() -> Option<rayon::ThreadPool> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    rayon::ThreadPoolBuilder::new()
        .num_threads(cores.saturating_sub(1).max(1))
        .thread_name(|i| format!("arbiter-compile-{i}"))
        .start_handler(|_| lower_priority("compile"))
        .build()
        .map_err(|e| tracing::warn!(error = %e, "cannot start the compile threads"))
        .ok()
}

/// Lowers the calling thread's scheduling priority to nice 10, for work
/// that must yield to decisions (compiling, shadow comparisons): on Linux
/// the nice value belongs to the thread, so decisions on other threads
/// keep theirs and the scheduler runs them first.
pub(crate) fn lower_priority(what: &str) {
    // SAFETY: setpriority reads only its integer arguments; `0` names the
    // calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        tracing::debug!(thread = what, "cannot lower the thread's priority");
    }
}

/// A thread that advances the engine's epoch once per tick. It holds only a
/// weak reference, so it also ends if the engine is dropped first.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &wasmtime::Engine, tick: Duration) -> Self {
        let weak = engine.weak();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("arbiter-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        if thread.is_none() {
            // Without a ticker no deadline fires; fuel still bounds every
            // call, so this degrades rather than fails open.
            tracing::error!("cannot start the epoch ticker thread; deadlines will not fire");
        }
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One of the engine's idle-instance slots, given back on drop.
pub(crate) struct IdleSlot(Arc<IdleCount>);

/// The engine-wide count of idle instances and its bound.
#[derive(Debug)]
pub(crate) struct IdleCount {
    count: AtomicU32,
    max: u32,
}

impl IdleCount {
    /// A count bounded by `max`.
    pub(crate) fn new(max: u32) -> Self {
        IdleCount {
            count: AtomicU32::new(0),
            max,
        }
    }
}

impl IdleSlot {
    pub(crate) fn acquire(idle: &Arc<IdleCount>) -> Option<Self> {
        idle.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < idle.max).then_some(n + 1)
            })
            .ok()
            .map(|_| IdleSlot(Arc::clone(idle)))
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_slots_are_bounded_and_given_back() {
        let idle = Arc::new(IdleCount::new(2));
        let a = IdleSlot::acquire(&idle).expect("first");
        let _b = IdleSlot::acquire(&idle).expect("second");
        assert!(IdleSlot::acquire(&idle).is_none());
        drop(a);
        assert!(IdleSlot::acquire(&idle).is_some());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn components_compile_on_fewer_threads_below_the_decisions() {
        let engine = Engine::new(&EngineConfig {
            max_instances: 4,
            ..EngineConfig::default()
        })
        .expect("engine");
        // An empty component is enough to start the compile threads.
        engine.compile(b"\0asm\x0d\0\x01\0").expect("compiles");
        let pool = engine.compile.as_ref().expect("compile threads");
        let on = pool.install(|| std::thread::current().name().map(str::to_owned));
        assert!(on.is_some_and(|n| n.starts_with("arbiter-compile-")));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(pool.current_num_threads(), cores.saturating_sub(1).max(1));
        let mut compile_threads = 0;
        for task in std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("arbiter-compil") {
                continue;
            }
            compile_threads += 1;
            let stat = std::fs::read_to_string(task.path().join("stat")).expect("stat");
            // Fields after the parenthesized name: state is field 3, nice 19.
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let nice: i32 = after
                .split_whitespace()
                .nth(16)
                .and_then(|n| n.parse().ok())
                .expect("nice");
            assert_eq!(nice, 10, "{comm}");
        }
        assert!(compile_threads >= 1);
    }

    #[test]
    fn a_pool_the_machine_cannot_reserve_falls_back_to_on_demand() {
        // 4 million slots of 64 MiB is 256 TiB of address space: more than
        // a 47-bit user address space holds, so the reservation fails.
        let engine = Engine::new(&EngineConfig {
            max_instances: 4_000_000,
            ..EngineConfig::default()
        })
        .expect("falls back instead of failing");
        assert!(!engine.pooling());
        let small = Engine::new(&EngineConfig {
            max_instances: 4,
            ..EngineConfig::default()
        })
        .expect("engine");
        assert!(small.pooling());
    }

    #[test]
    fn bad_settings_name_the_key() {
        let e = Engine::new(&EngineConfig {
            epoch_tick_ms: 0,
            ..EngineConfig::default()
        })
        .err()
        .expect("refused");
        assert_eq!(
            e.to_string(),
            "engine setting `epoch_tick_ms`: must be at least 1"
        );
    }
}
