//! The export thread: takes traced decisions and written log lines from a
//! bounded queue, builds spans and log records, and exports them in
//! batches over OTLP/gRPC on a runtime of its own, so a slow or absent
//! collector never holds a decision.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::{LogExporter, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord};
use opentelemetry_sdk::trace::SpanData;

use super::records::Maker;
use super::{Counters, Item, TelemetryConfig, TelemetryError};

/// The running thread, to stop.
pub(super) struct Running {
    stop: SyncSender<Item>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl Running {
    /// Asks the thread to export what is queued and stop; waits at most
    /// `grace` (it is left to finish on its own past that).
    pub(super) fn stop(self, grace: Duration) {
        // What is queued before the stop is exported first.
        let deadline = Instant::now() + grace;
        while self.stop.try_send(Item::Stop).is_err() {
            if Instant::now() >= deadline {
                tracing::warn!("OTLP export did not drain within the grace period");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(()) => {
                let _ = self.thread.join();
            }
            Err(_) => tracing::warn!("OTLP export did not finish within the grace period"),
        }
    }
}

/// Starts the thread; returns the queue's sender and the handle. The
/// exporters are built on the thread, in the runtime they run on (tonic's
/// lazy channel spawns its worker there), and their errors sent back.
pub(super) fn start(
    config: &TelemetryConfig,
    counters: Arc<Counters>,
) -> Result<(SyncSender<Item>, Running), TelemetryError> {
    let (tx, rx) = sync_channel(config.queue);
    let (done_tx, done) = sync_channel(1);
    let (built_tx, built) = sync_channel(1);
    let interval = Duration::from_millis(config.interval_ms);
    let config = config.clone();
    let thread = std::thread::Builder::new()
        .name("arbiter-otlp".into())
        .spawn(move || {
            let worker = Worker::new(&config, counters);
            let failed = worker.as_ref().err().map(ToString::to_string);
            let _ = built_tx.send(failed);
            if let Ok(mut worker) = worker {
                worker.run(&rx, interval);
            }
            let _ = done_tx.send(());
        })
        .map_err(TelemetryError::Thread)?;
    match built.recv() {
        Ok(None) => {}
        Ok(Some(e)) => return Err(TelemetryError::Exporter(e)),
        Err(_) => return Err(TelemetryError::Exporter("the export thread ended".into())),
    }
    Ok((
        tx.clone(),
        Running {
            stop: tx,
            done,
            thread,
        },
    ))
}

/// `service.name` from the configuration, else `OTEL_SERVICE_NAME` (and
/// `OTEL_RESOURCE_ATTRIBUTES`, read by the SDK), else `arbiter`.
fn resource(config: &TelemetryConfig) -> Resource {
    let b = Resource::builder();
    match &config.service_name {
        Some(name) => b.with_service_name(name.clone()).build(),
        None if std::env::var_os("OTEL_SERVICE_NAME").is_some() => b.build(),
        None => b.with_service_name("arbiter").build(),
    }
}

struct Worker {
    runtime: tokio::runtime::Runtime,
    spans: Option<SpanExporter>,
    logs: Option<LogExporter>,
    counters: Arc<Counters>,
    scope: InstrumentationScope,
    maker: Maker,
    batch: usize,
    timeout: Duration,
    pending_spans: Vec<SpanData>,
    /// Log lines wait for the next export, so the span of their decision
    /// (queued just after the line was written) can be named in them.
    pending_lines: Vec<u8>,
    /// Decision id → its span, for the decisions of the current batch.
    seen: HashMap<String, (TraceId, SpanId)>,
    /// The last export failed: the next success is logged.
    failing: bool,
}

impl Worker {
    fn new(config: &TelemetryConfig, counters: Arc<Counters>) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TelemetryError::Thread)?;
        let resource = resource(config);
        let timeout = Duration::from_millis(config.timeout_ms);
        let exporter =
            |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter(e.to_string());
        let (spans, logs) = runtime.block_on(async {
            let spans = if config.traces {
                let mut b = SpanExporter::builder().with_tonic().with_timeout(timeout);
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                let mut e = b.build().map_err(exporter)?;
                opentelemetry_sdk::trace::SpanExporter::set_resource(&mut e, &resource);
                Some(e)
            } else {
                None
            };
            let logs = if config.decision_logs {
                let mut b = LogExporter::builder().with_tonic().with_timeout(timeout);
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                let mut e = b.build().map_err(exporter)?;
                opentelemetry_sdk::logs::LogExporter::set_resource(&mut e, &resource);
                Some(e)
            } else {
                None
            };
            Ok::<_, TelemetryError>((spans, logs))
        })?;
        Ok(Worker {
            runtime,
            spans,
            logs,
            counters,
            scope: InstrumentationScope::builder("arbiter")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            maker: Maker::new(),
            batch: config.batch,
            timeout,
            pending_spans: Vec::new(),
            pending_lines: Vec::new(),
            seen: HashMap::new(),
            failing: false,
        })
    }

    fn run(&mut self, rx: &Receiver<Item>, interval: Duration) {
        let mut next = Instant::now() + interval;
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(Item::Decision(finished)) => {
                    let id = finished.decision_id().to_owned();
                    let spans = finished.spans(&self.scope);
                    if let Some(root) = spans.first() {
                        let c = &root.span_context;
                        self.seen.insert(id, (c.trace_id(), c.span_id()));
                    }
                    self.pending_spans.extend(spans);
                    if self.pending_spans.len() >= self.batch {
                        self.export_spans();
                    }
                }
                Ok(Item::Records(lines)) => {
                    self.pending_lines.extend_from_slice(&lines);
                    if self.pending_lines.iter().filter(|b| **b == b'\n').count() >= self.batch {
                        self.export_records();
                    }
                }
                Ok(Item::Flush(ack)) => {
                    self.export_all();
                    let _ = ack.try_send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export_all();
                    next = Instant::now() + interval;
                }
                Ok(Item::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.export_all();
                    return;
                }
            }
        }
    }

    fn export_all(&mut self) {
        self.export_spans();
        self.export_records();
        self.seen.clear();
    }

    fn export_spans(&mut self) {
        let Some(exporter) = &self.spans else {
            self.pending_spans.clear();
            return;
        };
        while !self.pending_spans.is_empty() {
            let n = self.pending_spans.len().min(self.batch);
            let batch: Vec<SpanData> = self.pending_spans.drain(..n).collect();
            let result = self.runtime.block_on(async {
                tokio::time::timeout(
                    self.timeout,
                    opentelemetry_sdk::trace::SpanExporter::export(exporter, batch),
                )
                .await
            });
            let ok = matches!(result, Ok(Ok(())));
            let counter = if ok {
                &self.counters.spans_exported
            } else {
                &self.counters.spans_failed
            };
            Counters::add(counter, n);
            self.failing = log_transition(self.failing, ok, "traces", &result);
        }
    }

    fn export_records(&mut self) {
        if self.pending_lines.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.pending_lines);
        let Some(exporter) = &self.logs else {
            return;
        };
        let mut records: Vec<SdkLogRecord> = Vec::new();
        let seen = &self.seen;
        let skipped = self
            .maker
            .records(&lines, |id| seen.get(id).copied(), &mut records);
        Counters::add(&self.counters.records_failed, skipped);
        for chunk in records.chunks(self.batch) {
            let pairs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                chunk.iter().map(|r| (r, &self.scope)).collect();
            let result = self.runtime.block_on(async {
                tokio::time::timeout(self.timeout, exporter.export(LogBatch::new(&pairs))).await
            });
            let ok = matches!(result, Ok(Ok(())));
            let counter = if ok {
                &self.counters.records_exported
            } else {
                &self.counters.records_failed
            };
            Counters::add(counter, chunk.len());
            self.failing = log_transition(self.failing, ok, "logs", &result);
        }
    }
}

/// Logs the first failure of a run of them and the recovery after, not
/// every batch.
fn log_transition<E: std::fmt::Debug>(failing: bool, ok: bool, signal: &str, result: &E) -> bool {
    match (failing, ok) {
        (false, false) => {
            tracing::warn!(signal, result = ?result, "OTLP export failed; batches are dropped and counted until it recovers");
        }
        (true, true) => tracing::info!(signal, "OTLP export recovered"),
        _ => {}
    }
    !ok
}
