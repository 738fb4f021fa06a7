//! Shadow: candidate versions evaluated on the same input as the version
//! that answered, off the caller's path.
//!
//! A decision whose policy has candidates hands a [`Job`] to a bounded
//! queue and returns; the answer never waits for it. When the queue is
//! full the job is dropped and counted, so a slow candidate cannot slow
//! the callers. Queuing makes no system call: the workers are never woken
//! by a caller (a wake-up costs the caller microseconds, more than the
//! rest of queuing), they look for work every millisecond while there is
//! some, backing off to 20 ms when idle. Worker threads take jobs, evaluate each candidate that did
//! not answer live (and the serving version, when a canary answered), take
//! an instance permit like any decision, and count the comparison in
//! [`Divergences`]. Each divergence is also written to the decision log as
//! a `shadow` record naming the decision it came from.
//!
//! [`replay`] does the same offline, from the inputs a decision log holds.

pub mod divergence;
pub mod replay;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::Semaphore;

pub use divergence::{Divergences, PairReport, Side, VersionRef};

use crate::config::RolloutConfig;
use crate::decision::PolicyReport;
use crate::engine::Engine;
use crate::evaluate::{self, Input};
use crate::evidence::log::DecisionLog;
use crate::evidence::metrics::Metrics;
use crate::load::LoadedPolicy;
use crate::mode::{Role, Rollout};
use crate::time::timestamp;
use divergence::{Compared, PairOf};

/// One decision's evaluations to run in the background.
pub struct Job {
    /// The serving version.
    pub(crate) primary: Arc<LoadedPolicy>,
    /// Its candidates, as they were when the decision ran.
    pub(crate) rollout: Arc<Rollout>,
    /// The candidate that answered live, by index; `None`: the serving one.
    pub(crate) live_candidate: Option<usize>,
    /// What answered live.
    pub(crate) live: Side,
    /// The input the live version saw.
    pub(crate) input: Input,
    /// Set once the decision has its id.
    pub(crate) decision_id: String,
    pub(crate) at: SystemTime,
}

impl Job {
    /// A job comparing `rollout`'s candidates with what answered `live`.
    pub(crate) fn new(
        primary: &Arc<LoadedPolicy>,
        rollout: &Arc<Rollout>,
        live_candidate: Option<usize>,
        live: &PolicyReport,
        input: &Input,
    ) -> Self {
        Job {
            primary: Arc::clone(primary),
            rollout: Arc::clone(rollout),
            live_candidate,
            live: side(live),
            input: input.clone(),
            decision_id: String::new(),
            at: SystemTime::now(),
        }
    }
}

/// What a report says, as one side of a comparison.
pub fn side(r: &PolicyReport) -> Side {
    Side {
        outcome: r.outcome.as_str().to_owned(),
        rule: r.rule.clone(),
    }
}

/// The version a loaded policy is, in a pair.
pub fn version_ref(p: &LoadedPolicy) -> VersionRef {
    VersionRef {
        version: p.version.clone(),
        settings: p.settings.clone(),
    }
}

/// How long an idle worker sleeps between looks, at first and at most.
const IDLE_FIRST: Duration = Duration::from_millis(1);
const IDLE_MAX: Duration = Duration::from_millis(20);

/// The bounded queue the callers and workers share.
struct Queue {
    jobs: Mutex<Jobs>,
    capacity: usize,
    max_bytes: usize,
    closed: AtomicBool,
}

/// The jobs waiting, and the bytes their inputs hold.
struct Jobs {
    waiting: VecDeque<(Job, usize)>,
    bytes: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Jobs {
    fn pop(&mut self) -> Option<Job> {
        let (job, bytes) = self.waiting.pop_front()?;
        self.bytes -= bytes;
        Some(job)
    }
}

/// The queue, its workers and what they found.
pub struct Shadow {
    queue: Arc<Queue>,
    /// Jobs queued or running.
    pending: Arc<AtomicU64>,
    dropped: Mutex<BTreeMap<String, u64>>,
    divergences: Arc<Divergences>,
    metrics: Option<Arc<Metrics>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The queue's state, for the divergence endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// Jobs the queue holds at most.
    pub capacity: usize,
    /// Jobs queued or running now.
    pub pending: u64,
    /// Jobs dropped because the queue was full, by policy.
    pub dropped: BTreeMap<String, u64>,
}

struct Worker {
    engine: Engine,
    permits: Arc<Semaphore>,
    divergences: Arc<Divergences>,
    log: Option<Arc<DecisionLog>>,
    metrics: Option<Arc<Metrics>>,
    pending: Arc<AtomicU64>,
    queue: Arc<Queue>,
}

impl Shadow {
    /// Starts `config.shadow_workers` threads evaluating on `engine`, each
    /// evaluation holding one of `permits` as a decision does.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(
        engine: &Engine,
        permits: &Arc<Semaphore>,
        config: &RolloutConfig,
        log: Option<Arc<DecisionLog>>,
        metrics: Option<Arc<Metrics>>,
    ) -> std::io::Result<Shadow> {
        let queue = Arc::new(Queue {
            jobs: Mutex::new(Jobs {
                waiting: VecDeque::with_capacity(config.shadow_queue.min(1 << 16)),
                bytes: 0,
            }),
            capacity: config.shadow_queue,
            max_bytes: config.shadow_queue_bytes,
            closed: AtomicBool::new(false),
        });
        let pending = Arc::new(AtomicU64::new(0));
        let divergences = Arc::new(Divergences::new(config.divergence_samples));
        let mut workers = Vec::new();
        for i in 0..config.shadow_workers {
            let worker = Worker {
                engine: engine.clone(),
                permits: Arc::clone(permits),
                divergences: Arc::clone(&divergences),
                log: log.clone(),
                metrics: metrics.clone(),
                pending: Arc::clone(&pending),
                queue: Arc::clone(&queue),
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("arbiter-shadow-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(Shadow {
            queue,
            pending,
            dropped: Mutex::new(BTreeMap::new()),
            divergences,
            metrics,
            workers: Mutex::new(workers),
        })
    }

    /// Queues `job` without waiting; a full (or closed) queue, by count
    /// or by bytes, drops it and counts the drop.
    pub fn submit(&self, job: Job) {
        let bytes = job.input.approx_bytes();
        let queued = {
            let mut jobs = self.queue.lock();
            if self.queue.closed.load(Ordering::Acquire)
                || jobs.waiting.len() >= self.queue.capacity
                || jobs.bytes.saturating_add(bytes) > self.queue.max_bytes
            {
                Err(job)
            } else {
                // Counted before a worker can see it, so the worker's
                // decrement never comes first.
                let pending = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
                jobs.waiting.push_back((job, bytes));
                jobs.bytes += bytes;
                Ok(pending)
            }
        };
        match queued {
            Err(job) => self.count_drop(&job.primary.name),
            Ok(pending) => {
                if let Some(m) = &self.metrics {
                    m.set_shadow_pending(pending);
                }
            }
        }
    }

    fn count_drop(&self, policy: &str) {
        *self
            .dropped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(policy.to_owned())
            .or_default() += 1;
        if let Some(m) = &self.metrics {
            m.record_shadow_dropped(policy);
        }
    }

    /// What the comparisons found.
    pub fn divergences(&self) -> &Divergences {
        &self.divergences
    }

    /// The queue's state.
    pub fn queue(&self) -> QueueStatus {
        QueueStatus {
            capacity: self.queue.capacity,
            pending: self.pending.load(Ordering::Acquire),
            dropped: self
                .dropped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops taking jobs, lets the workers finish the ones queued, and
    /// waits for them: before the decision log closes, so their records
    /// are written.
    pub fn close(&self) {
        self.queue.closed.store(true, Ordering::Release);
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.close();
    }
}

impl Worker {
    /// Takes jobs until the queue is closed and empty.
    fn run(&self) {
        // A comparison is worth less than any decision: when the cores are
        // busy, the caller runs first and the queue drops (and counts) what
        // the worker cannot keep up with.
        crate::engine::lower_priority("shadow");
        let mut idle = IDLE_FIRST;
        loop {
            let job = self.queue.lock().pop();
            match job {
                Some(job) => {
                    let policy = job.primary.name.clone();
                    // A bug in one comparison must not stop the others.
                    let compared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.compare(job)
                    }));
                    if compared.is_err() {
                        tracing::error!(%policy, "a shadow comparison panicked; it is not counted");
                    }
                    let pending = self.pending.fetch_sub(1, Ordering::AcqRel) - 1;
                    if let Some(m) = &self.metrics {
                        m.set_shadow_pending(pending);
                    }
                    idle = IDLE_FIRST;
                }
                None if self.queue.closed.load(Ordering::Acquire) => return,
                None => {
                    std::thread::sleep(idle);
                    idle = (idle * 2).min(IDLE_MAX);
                }
            }
        }
    }

    fn evaluate(&self, policy: &LoadedPolicy, input: &mut Input) -> Side {
        let Ok(_permit) = evaluate::block_on(self.permits.acquire()) else {
            return Side {
                outcome: "deny".into(),
                rule: "failure.host".into(),
            };
        };
        let eval = evaluate::evaluate(
            &self.engine,
            &policy.pre,
            &policy.limits,
            &policy.settings,
            input,
            Some(policy.instances()),
        );
        side(&policy.report(eval))
    }

    fn compare(&self, job: Job) {
        let Job {
            primary,
            rollout,
            live_candidate,
            live,
            mut input,
            decision_id,
            at,
        } = job;
        let at = timestamp(at);
        let primary_side = match live_candidate {
            None => live.clone(),
            Some(_) => self.evaluate(&primary, &mut input),
        };
        let primary_ref = version_ref(&primary);
        for (i, c) in rollout.candidates.iter().enumerate() {
            let candidate_side = if live_candidate == Some(i) {
                live.clone()
            } else {
                self.evaluate(&c.policy, &mut input)
            };
            let candidate_ref = version_ref(&c.policy);
            let role = match c.role {
                Role::Shadow => "shadow",
                Role::Canary { .. } => "canary",
            };
            let pair = PairOf {
                policy: &primary.name,
                primary: &primary_ref,
                candidate_id: &c.id,
                candidate: &candidate_ref,
                role,
            };
            let seen = Compared {
                primary: &primary_side,
                candidate: &candidate_side,
                decision_id: &decision_id,
                at: &at,
            };
            let diverged = self.divergences.record(pair, seen, || input.wire());
            if let Some(m) = &self.metrics {
                m.record_shadow(&primary.name, &c.id, diverged);
            }
            if diverged && let Some(log) = &self.log {
                let data = serde_json::json!({
                    "candidate": c.id,
                    "candidate_outcome": candidate_side.outcome,
                    "candidate_rule": candidate_side.rule,
                    "candidate_version": candidate_ref.version,
                    "decision_id": decision_id,
                    "policy": primary.name,
                    "primary_outcome": primary_side.outcome,
                    "primary_rule": primary_side.rule,
                    "primary_version": primary_ref.version,
                    "role": role,
                });
                if let Err(e) = log.record_event("shadow", &data) {
                    tracing::warn!(policy = %primary.name, candidate = %c.id, error = %e, "divergence not recorded in the decision log");
                }
            }
        }
    }
}
