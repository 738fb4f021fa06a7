//! OpenTelemetry: each decision as a span tree (a child per stage and per
//! policy), continuing the caller's `traceparent`, and each record of the
//! decision log as an OTLP log record carrying its sequence number and
//! hash, both exported over OTLP/gRPC. Off unless `[telemetry]` turns a
//! signal on.
//!
//! Nothing here is on a decision's critical path beyond a few clock reads
//! and one non-blocking send: spans are built, batched and exported by one
//! thread of its own ([`export`]), behind a bounded queue. When the queue is
//! full, or the collector does not take a batch, what could not go is
//! dropped and counted (`arbiter_otlp_dropped_total`), never waited for.

mod export;
mod records;
mod spans;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::decision::traceparent::TraceParent;
use crate::decision::{Decision, Request};
pub use spans::{Stage, Timeline};

/// `[telemetry]`: what is exported over OTLP, where, and how much may wait.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export a span tree per decision. Default: off.
    pub traces: bool,
    /// Export every record of the decision log as an OTLP log record.
    /// Default: off.
    pub decision_logs: bool,
    /// The collector's OTLP/gRPC endpoint, `http://host:port`. Default: the
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `_LOGS_ENDPOINT` /
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variables, else `http://localhost:4317`.
    pub endpoint: Option<String>,
    /// `service.name` of the resource. Default: `OTEL_SERVICE_NAME`, else
    /// `arbiter`.
    pub service_name: Option<String>,
    /// The share of decisions without a sampled parent that are traced,
    /// 0.0 to 1.0. A caller's `traceparent` decides for its own trace.
    /// Default: 1.0.
    pub sample_ratio: f64,
    /// Decisions and log batches waiting for the exporter; past it they are
    /// dropped and counted. Default: 8192.
    pub queue: usize,
    /// The most spans (or log records) in one export. Default: 512.
    pub batch: usize,
    /// Milliseconds between exports of a batch that is not full. Default:
    /// 1000.
    pub interval_ms: u64,
    /// Milliseconds one export may take before it is given up (and its
    /// batch dropped). Default: 10000.
    pub timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            traces: false,
            decision_logs: false,
            endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
            queue: 8192,
            batch: 512,
            interval_ms: 1000,
            timeout_ms: 10_000,
        }
    }
}

impl TelemetryConfig {
    /// Whether anything is exported.
    pub fn enabled(&self) -> bool {
        self.traces || self.decision_logs
    }

    /// Checks the values a parse cannot.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "`telemetry.sample_ratio` must be between 0.0 and 1.0, not {}",
                self.sample_ratio
            ));
        }
        if self.queue == 0 || self.batch == 0 || self.interval_ms == 0 || self.timeout_ms == 0 {
            return Err(
                "`telemetry.queue`, `telemetry.batch`, `telemetry.interval_ms` and `telemetry.timeout_ms` must be at least 1"
                    .into(),
            );
        }
        if let Some(e) = &self.endpoint {
            // TLS to a collector is not built in: refused rather than sent
            // in the clear to an address that expects TLS.
            if !e.starts_with("http://") {
                return Err(format!(
                    "`telemetry.endpoint` must be an `http://host:port` OTLP/gRPC endpoint (TLS to the collector is not supported; use a local collector or sidecar), not `{e}`"
                ));
            }
        }
        Ok(())
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its settings (an endpoint that is not a
    /// URI, say).
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
    /// The exporter's thread or runtime.
    #[error("the OTLP export thread could not start: {0}")]
    Thread(#[source] std::io::Error),
}

/// What was exported and what was not, per signal, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Spans the collector accepted.
    pub spans_exported: AtomicU64,
    /// Spans dropped: the queue was full.
    pub spans_queue_full: AtomicU64,
    /// Spans dropped: their export failed or timed out.
    pub spans_failed: AtomicU64,
    /// Log records the collector accepted.
    pub records_exported: AtomicU64,
    /// Log records dropped: the queue was full.
    pub records_queue_full: AtomicU64,
    /// Log records dropped: their export failed or timed out.
    pub records_failed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The counters as Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP arbiter_otlp_exported_total Spans and log records the OTLP collector accepted.\n# TYPE arbiter_otlp_exported_total counter\narbiter_otlp_exported_total{{signal=\"traces\"}} {}\narbiter_otlp_exported_total{{signal=\"logs\"}} {}",
            get(&self.spans_exported),
            get(&self.records_exported)
        );
        let _ = writeln!(
            out,
            "# HELP arbiter_otlp_dropped_total Spans and log records not exported, by why.\n# TYPE arbiter_otlp_dropped_total counter\narbiter_otlp_dropped_total{{signal=\"traces\",reason=\"queue-full\"}} {}\narbiter_otlp_dropped_total{{signal=\"traces\",reason=\"export-failed\"}} {}\narbiter_otlp_dropped_total{{signal=\"logs\",reason=\"queue-full\"}} {}\narbiter_otlp_dropped_total{{signal=\"logs\",reason=\"export-failed\"}} {}",
            get(&self.spans_queue_full),
            get(&self.spans_failed),
            get(&self.records_queue_full),
            get(&self.records_failed)
        );
    }
}

/// What the export thread is sent.
enum Item {
    /// A decision that was traced, to become its spans.
    Decision(Box<spans::Finished>),
    /// Lines the decision log wrote, to become log records.
    Records(Vec<u8>),
    /// Export everything queued before this, then answer.
    Flush(SyncSender<()>),
    /// Export everything queued before this, then stop.
    Stop,
}

/// A handle to the OTLP exporter; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    tx: SyncSender<Item>,
    counters: Arc<Counters>,
    traces: bool,
    decision_logs: bool,
    /// Root decisions whose random draw is below this are traced.
    sample_below: u64,
    thread: Mutex<Option<export::Running>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.inner.traces)
            .field("decision_logs", &self.inner.decision_logs)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts the export thread for `config`; `None` when it exports
    /// nothing. The exporter connects lazily: a collector that is down
    /// costs dropped batches, never a refused start.
    ///
    /// # Errors
    /// [`TelemetryError`] when the exporter or its thread cannot be made.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, TelemetryError> {
        if !config.enabled() {
            return Ok(None);
        }
        let counters = Arc::new(Counters::default());
        let (tx, running) = export::start(config, Arc::clone(&counters))?;
        // Saturating: a ratio of 1.0 traces every decision.
        let sample_below = if config.sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (config.sample_ratio * u64::MAX as f64) as u64
        };
        tracing::info!(
            traces = config.traces,
            decision_logs = config.decision_logs,
            endpoint = config
                .endpoint
                .as_deref()
                .unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
            "exporting over OTLP"
        );
        Ok(Some(Telemetry {
            inner: Arc::new(Inner {
                tx,
                counters,
                traces: config.traces,
                decision_logs: config.decision_logs,
                sample_below,
                thread: Mutex::new(Some(running)),
            }),
        }))
    }

    /// The export counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// A timeline for a decision whose caller sent `parent`: recording when
    /// the trace is sampled (the parent's flag, else the sample ratio),
    /// off otherwise.
    pub fn timeline(&self, parent: Option<TraceParent>) -> Timeline {
        if !self.inner.traces {
            return Timeline::off();
        }
        let sampled = match parent {
            Some(p) => p.sampled(),
            None => self.inner.sample_below == u64::MAX || spans::draw() < self.inner.sample_below,
        };
        if sampled {
            Timeline::start(parent)
        } else {
            Timeline::off()
        }
    }

    /// Queues the spans of `decision`, if `timeline` recorded it.
    pub fn decided(&self, timeline: Timeline, request: &Request, decision: &Decision) {
        let Some(finished) = timeline.finish(request, decision) else {
            return;
        };
        let spans = finished.span_count();
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.inner.tx.try_send(Item::Decision(Box::new(finished)))
        {
            Counters::add(&self.inner.counters.spans_queue_full, spans);
        }
    }

    /// Queues records the decision log has written (whole lines).
    pub fn records(&self, lines: &[u8]) {
        if !self.inner.decision_logs || lines.is_empty() {
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.inner.tx.try_send(Item::Records(lines.to_vec()))
        {
            let n = lines.iter().filter(|b| **b == b'\n').count();
            Counters::add(&self.inner.counters.records_queue_full, n);
        }
    }

    /// Exports everything queued so far, waiting at most `wait`; whether
    /// it finished in time.
    pub fn flush(&self, wait: Duration) -> bool {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.inner.tx.try_send(Item::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(wait).is_ok()
    }

    /// Exports what is queued and stops the thread, waiting at most
    /// `grace`; spans of decisions after this are dropped and counted.
    pub fn shutdown(&self, grace: Duration) {
        let running = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            running.stop(grace);
        }
    }
}
