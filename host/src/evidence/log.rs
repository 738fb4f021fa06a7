//! The decision log: every decision, in every mode, appended as one
//! hash-chained JSON line ([`super::record`]) before its answer leaves.
//!
//! # Nothing lost
//!
//! A decision hands its serialized record to the writer thread and waits
//! for the writer to accept it: to have written it to the current segment
//! (to the OS, so a crash of the process cannot take it). Only then is the
//! decision answered. The writer takes records in batches, so one `write`
//! and, every `sync_interval_ms`, one `fdatasync` serve many decisions;
//! with `sync_interval_ms = 0` each batch is synced before it is accepted.
//!
//! When a batch cannot be written (disk full, read-only, I/O error), the
//! file is cut back to the last whole batch and, by default, the batch's
//! decisions become denies saying the log cannot be written. With
//! `on_failure = "serve"` they stand, unrecorded; either way, the first
//! write that works again is a `gap` record saying how many decisions,
//! between when and when, and why, and the metrics show it meanwhile.
//!
//! # Files
//!
//! In the log directory (created owner-only, held by one process at a
//! time through a lock on `.lock`): segments `decisions-<first seq>.jsonl`,
//! a new one when the current reaches `max_segment_bytes` or
//! `max_segment_age_s`, the chain running on across them; `checkpoints.jsonl`,
//! a copy of every signed checkpoint, so cutting the log's tail shows;
//! and, unless configured elsewhere, the checkpoint key pair.
//!
//! # Crashes
//!
//! At start the newest segment's last line is checked. Bytes after its
//! last newline are a record torn by a crash (never one that was
//! accepted: acceptance follows the write): they are cut, and a `crash`
//! record saying how many bytes, with their digest, continues the chain.
//! Each start also writes an `open` record.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use super::record::{self, GENESIS, ParamsRule, Parsed};
use crate::config::{LogConfig, LogFailurePolicy};
use crate::decision::{Decision, Request};
use crate::signing::KeyPair;

/// The most records the writer takes in one batch.
const MAX_BATCH: usize = 1024;

/// How often a log that cannot be written is tried again while no
/// decision comes in, so it recovers (and says so) on its own.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// The prefix and suffix of segment file names.
const SEGMENT_PREFIX: &str = "decisions-";
const SEGMENT_SUFFIX: &str = ".jsonl";

/// The decision log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O error on a named file or directory.
    #[error("decision log `{}`: {problem}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// Another process holds the directory.
    #[error("decision log `{}` is in use by another process (it holds `.lock`)", .0.display())]
    Locked(PathBuf),
    /// The newest segment's last whole record does not read back: this is
    /// damage, not a crash, and the chain cannot be continued from it.
    #[error(
        "decision log `{}`: its last record does not read back ({problem}); run `arbiter log verify` on it and move it aside",
        path.display()
    )]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The checkpoint key cannot be used.
    #[error("decision log checkpoint key `{}`: {problem}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// No directory was configured and none could be derived.
    #[error("no decision log directory: set `log.dir`, $ARBITER_LOG_DIR or $HOME")]
    NoDirectory,
}

/// Why a decision could not be recorded; the decision fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrecorded {
    /// Writing failed.
    #[error("the decision log cannot be written ({0})")]
    Write(String),
    /// The log is closed (the server is stopping).
    #[error("the decision log is closed")]
    Closed,
}

/// Where a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written, with this sequence number.
    Seq(u64),
    /// Not written, and the configuration says to serve anyway.
    Lost,
}

type Ack = oneshot::Sender<Result<Recorded, Unrecorded>>;

enum Msg {
    Record(Vec<u8>, Ack),
    Close(mpsc::SyncSender<()>),
}

/// A handle to the decision log; cheap to share behind an `Arc`.
pub struct DecisionLog {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    params: ParamsRule,
    dir: PathBuf,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The directory used when `log.dir` is not set: `$ARBITER_LOG_DIR`,
/// `$XDG_STATE_HOME/arbiter/decisions` or `~/.local/state/arbiter/decisions`.
pub fn default_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("ARBITER_LOG_DIR")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("arbiter").join("decisions")))
        .or_else(|| env("HOME").map(|d| d.join(".local/state/arbiter/decisions")))
}

/// The segment files of `dir`, oldest first.
///
/// # Errors
/// The I/O error from listing the directory.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SEGMENT_PREFIX) && n.ends_with(SEGMENT_SUFFIX))
        })
        .collect();
    // The first sequence number is zero-padded, so names sort in order.
    found.sort();
    Ok(found)
}

/// The checkpoints file `config` names, relative to `dir`.
pub fn checkpoints_path(config: &LogConfig, dir: &Path) -> PathBuf {
    config
        .checkpoints_file
        .as_ref()
        .map_or_else(|| dir.join("checkpoints.jsonl"), |p| dir.join(p))
}

fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

impl DecisionLog {
    /// Opens the log of `config` (relative paths against `base`): takes the
    /// directory's lock, repairs a torn tail, writes an `open` record and
    /// starts the writer thread.
    ///
    /// # Errors
    /// A [`LogError`] naming the file at fault.
    pub fn open(
        config: &LogConfig,
        base: &Path,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, LogError> {
        let dir = match &config.dir {
            Some(d) => base.join(d),
            None => default_dir().ok_or(LogError::NoDirectory)?,
        };
        let io = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| LogError::Io {
                path,
                problem: e.to_string(),
            }
        };
        crate::load::cache::create_private_dir(&dir).map_err(io(&dir))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LogError::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let key = checkpoint_key(config, &dir)?;
        let checkpoints_path = checkpoints_path(config, &dir);
        let checkpoints = append(&checkpoints_path).map_err(io(&checkpoints_path))?;
        let tail = recover(&dir)?;
        let segment = match &tail.segment {
            Some(p) => p.clone(),
            None => dir.join(segment_name(tail.seq + 1)),
        };
        let file = append(&segment).map_err(io(&segment))?;
        let len = file.metadata().map_err(io(&segment))?.len();
        let mut writer = Writer {
            dir: dir.clone(),
            segment,
            file,
            len,
            needs_cut: false,
            segment_started: tail.started,
            seq: tail.seq,
            head: tail.head,
            key,
            checkpoints,
            sync_interval: Duration::from_millis(config.sync_interval_ms),
            checkpoint_every: config.checkpoint_every,
            checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
            max_segment_bytes: config.max_segment_bytes,
            max_segment_age: Duration::from_secs(config.max_segment_age_s),
            on_failure: config.on_failure,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_sync: Instant::now(),
            dirty: false,
            gap: None,
            metrics,
            _lock: lock,
        };
        let mut first = Vec::new();
        if let Some((name, offset, torn)) = &tail.torn {
            tracing::warn!(segment = %name, torn_bytes = torn.len(), "decision log: cut a record torn by a crash");
            first.push(("crash", record::crash_data(name, *offset, torn)));
        }
        first.push(("open", record::open_data(config.params)));
        let mut buf = Vec::new();
        for (kind, data) in &first {
            writer.push(&mut buf, kind, data);
        }
        writer
            .commit(&buf, true)
            .map_err(|e| io(&writer.segment)(e))?;
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("arbiter-log".into())
            .spawn(move || writer.run(&rx))
            .map_err(io(&dir))?;
        tracing::info!(dir = %dir.display(), "decision log open");
        Ok(DecisionLog {
            tx: Mutex::new(Some(tx)),
            params: ParamsRule::new(config.params, &config.redact_fields),
            dir,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records `decision`, made for `request`, and returns once the writer
    /// has accepted it.
    ///
    /// # Errors
    /// [`Unrecorded`] when it could not be written and the configuration
    /// says to fail closed, or the log is closed.
    pub async fn record(
        &self,
        request: &Request,
        decision: &Decision,
    ) -> Result<Recorded, Unrecorded> {
        let data = record::DecisionData::new(request, decision, &self.params).encode();
        let (ack, answer) = oneshot::channel();
        let sent = match self.lock_tx().as_ref() {
            Some(tx) => tx.send(Msg::Record(data, ack)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Unrecorded::Closed);
        }
        answer.await.unwrap_or(Err(Unrecorded::Closed))
    }

    /// Writes what is pending, a final checkpoint, syncs, and stops the
    /// writer. Records asked for afterwards fail with [`Unrecorded::Closed`].
    pub fn close(&self) {
        let tx = self.lock_tx().take();
        if let Some(tx) = tx {
            let (done, wait) = mpsc::sync_channel(1);
            if tx.send(Msg::Close(done)).is_ok() {
                let _ = wait.recv();
            }
        }
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = worker {
            let _ = w.join();
        }
    }

    fn lock_tx(&self) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<Msg>>> {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The configured checkpoint key, or the default one in `dir`, made with
/// its public half the first time.
fn checkpoint_key(config: &LogConfig, dir: &Path) -> Result<KeyPair, LogError> {
    let path = config
        .checkpoint_key
        .as_ref()
        .map_or_else(|| dir.join("checkpoint.key"), |p| dir.join(p));
    let key_error = |problem: String| LogError::Key {
        path: path.clone(),
        problem,
    };
    match fs::read_to_string(&path) {
        Ok(text) => KeyPair::from_private_file(&text).map_err(|e| key_error(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.checkpoint_key.is_none() => {
            let mut id = [0u8; 4];
            getrandom::fill(&mut id).map_err(|e| key_error(e.to_string()))?;
            let pair = KeyPair::generate(&format!("log-{}", crate::hex::encode(&id)))
                .map_err(|e| key_error(e.to_string()))?;
            let write = |p: &Path, text: String, mode: u32| -> std::io::Result<()> {
                let mut options = OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
                #[cfg(not(unix))]
                let _ = mode;
                let mut f = options.open(p)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()
            };
            write(&path, pair.private_file(), 0o600).map_err(|e| key_error(e.to_string()))?;
            write(&dir.join("checkpoint.pub"), pair.public().file(), 0o644)
                .map_err(|e| key_error(e.to_string()))?;
            Ok(pair)
        }
        Err(e) => Err(key_error(e.to_string())),
    }
}

/// Where the chain stands after the last whole record on disk.
struct Tail {
    /// The newest segment, if any.
    segment: Option<PathBuf>,
    seq: u64,
    head: String,
    started: SystemTime,
    /// A torn last line that was cut: segment name, where, the bytes.
    torn: Option<(String, u64, Vec<u8>)>,
}

/// Reads the newest segments back to their last whole record, cutting a
/// torn last line.
fn recover(dir: &Path) -> Result<Tail, LogError> {
    let io = |path: &Path, e: std::io::Error| LogError::Io {
        path: path.to_owned(),
        problem: e.to_string(),
    };
    let all = segments(dir).map_err(|e| io(dir, e))?;
    let mut torn = None;
    for (i, path) in all.iter().enumerate().rev() {
        let bytes = fs::read(path).map_err(|e| io(path, e))?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        if keep < bytes.len() && i == all.len() - 1 {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io(path, e))?;
            f.set_len(keep as u64)
                .and_then(|()| f.sync_all())
                .map_err(|e| io(path, e))?;
            torn = Some((name, keep as u64, bytes[keep..].to_vec()));
        } else if keep < bytes.len() {
            return Err(LogError::Damaged {
                path: path.clone(),
                problem: "an older segment ends in an incomplete line".into(),
            });
        }
        let whole = &bytes[..keep];
        let Some(last) = whole[..whole.len().saturating_sub(1)]
            .split(|b| *b == b'\n')
            .next_back()
            .filter(|l| !l.is_empty())
        else {
            // Nothing whole in this segment (a torn first write): the chain
            // stands where the segment before it ends.
            continue;
        };
        let damaged = |problem: &str| LogError::Damaged {
            path: path.clone(),
            problem: problem.to_owned(),
        };
        let parsed = Parsed::from_line(last).ok_or_else(|| damaged("not a record"))?;
        if parsed.computed != parsed.hash {
            return Err(damaged("its content does not match its hash"));
        }
        let first = whole
            .split(|b| *b == b'\n')
            .next()
            .and_then(Parsed::from_line);
        let started = first
            .and_then(|f| humantime::parse_rfc3339(f.ts()).ok())
            .unwrap_or_else(SystemTime::now);
        return Ok(Tail {
            segment: all.last().cloned(),
            seq: parsed.seq,
            head: parsed.hash,
            started,
            torn,
        });
    }
    Ok(Tail {
        segment: all.last().cloned(),
        seq: 0,
        head: GENESIS.to_owned(),
        started: SystemTime::now(),
        torn,
    })
}

/// Decisions answered while the log could not be written.
struct Gap {
    count: u64,
    first_at: String,
    last_at: String,
    error: String,
}

/// The writer thread's state: the chain's head and the open files.
struct Writer {
    dir: PathBuf,
    segment: PathBuf,
    file: File,
    /// Bytes of whole batches in the segment.
    len: u64,
    /// A failed write may have left part of a batch: cut it before writing.
    needs_cut: bool,
    segment_started: SystemTime,
    /// The last sequence number written.
    seq: u64,
    /// The last hash written.
    head: String,
    key: KeyPair,
    checkpoints: File,
    sync_interval: Duration,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    max_segment_bytes: u64,
    max_segment_age: Duration,
    on_failure: LogFailurePolicy,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_sync: Instant,
    /// Written but not yet synced.
    dirty: bool,
    gap: Option<Gap>,
    metrics: Option<Arc<Metrics>>,
    _lock: File,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        let mut batch: Vec<(Vec<u8>, Ack)> = Vec::with_capacity(MAX_BATCH);
        let mut buf = Vec::with_capacity(1 << 20);
        loop {
            let first = match rx.recv_timeout(self.next_timer()) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let idle = first.is_none();
            let mut close = None;
            let mut next = first;
            while let Some(m) = next.take() {
                match m {
                    Msg::Record(data, ack) => batch.push((data, ack)),
                    Msg::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.write_batch(&mut batch, &mut buf);
            }
            self.on_timers(&mut buf, idle);
            if let Some(done) = close {
                self.finish(&mut buf);
                let _ = done.send(());
                return;
            }
        }
        self.finish(&mut buf);
    }

    /// Appends one record to `buf`, advancing the chain; returns its seq.
    fn push(&mut self, buf: &mut Vec<u8>, kind: &str, data: &[u8]) -> u64 {
        self.seq += 1;
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let body = record::body(kind, data, &self.head, self.seq, &ts);
        let hash = record::sha256(&body);
        let signature = (kind == "checkpoint").then(|| {
            crate::hex::encode(
                &self
                    .key
                    .sign_message(&record::checkpoint_message(self.seq, &hash)),
            )
        });
        buf.extend_from_slice(&record::line(&body, &hash, signature.as_deref()));
        self.head = hash;
        if kind == "checkpoint" {
            self.since_checkpoint = 0;
        } else {
            self.since_checkpoint += 1;
        }
        self.seq
    }

    /// Writes `buf` whole at the end of the segment, or cuts back what part
    /// of it got there. Syncs when `sync` or when every batch must be.
    fn commit(&mut self, buf: &[u8], sync: bool) -> std::io::Result<()> {
        if self.needs_cut {
            self.file.set_len(self.len)?;
            self.needs_cut = false;
        }
        let written = self.file.write_all(buf).and_then(|()| {
            if sync || self.sync_interval.is_zero() {
                self.file.sync_data()?;
                self.last_sync = Instant::now();
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.dirty = !(sync || self.sync_interval.is_zero());
                Ok(())
            }
            Err(e) => {
                // Keep the file a sequence of whole records.
                if self.file.set_len(self.len).is_err() {
                    self.needs_cut = true;
                }
                Err(e)
            }
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<(Vec<u8>, Ack)>, buf: &mut Vec<u8>) {
        let mark = (self.seq, self.head.clone(), self.since_checkpoint);
        buf.clear();
        if let Some(gap) = &self.gap {
            let answered = match self.on_failure {
                LogFailurePolicy::Deny => "deny",
                LogFailurePolicy::Serve => "served",
            };
            let data =
                record::gap_data(gap.count, &gap.first_at, &gap.last_at, &gap.error, answered);
            self.push(buf, "gap", &data);
        }
        let first_seq = self.seq + 1;
        for (data, _) in batch.iter() {
            self.push(buf, "decision", data);
        }
        let n = batch.len() as u64;
        match self.commit(buf, false) {
            Ok(()) => {
                if self.gap.take().is_some() {
                    tracing::warn!(
                        "decision log writable again; a gap record says what was missed"
                    );
                }
                self.count(|m| m.log_written(n, true));
                for (i, (_, ack)) in batch.drain(..).enumerate() {
                    let _ = ack.send(Ok(Recorded::Seq(first_seq + i as u64)));
                }
                if self.since_checkpoint >= self.checkpoint_every {
                    self.checkpoint(buf);
                }
                self.maybe_rotate(buf);
            }
            Err(e) => {
                (self.seq, self.head, self.since_checkpoint) = mark;
                let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                let error = e.to_string();
                if self.gap.is_none() {
                    tracing::error!(segment = %self.segment.display(), error = %error, "decision log cannot be written");
                }
                let gap = self.gap.get_or_insert_with(|| Gap {
                    count: 0,
                    first_at: now.clone(),
                    last_at: now.clone(),
                    error: error.clone(),
                });
                gap.count += n;
                gap.last_at = now;
                gap.error = error.clone();
                let deny = self.on_failure == LogFailurePolicy::Deny;
                self.count(|m| m.log_failed(n, deny));
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(if deny {
                        Err(Unrecorded::Write(error.clone()))
                    } else {
                        Ok(Recorded::Lost)
                    });
                }
            }
        }
    }

    /// A signed checkpoint in the log, synced, then in the checkpoints file.
    fn checkpoint(&mut self, buf: &mut Vec<u8>) {
        let mark = (self.seq, self.head.clone(), self.since_checkpoint);
        buf.clear();
        let data = record::checkpoint_data(self.key.id());
        self.push(buf, "checkpoint", &data);
        if let Err(e) = self.commit(buf, true) {
            (self.seq, self.head, self.since_checkpoint) = mark;
            tracing::error!(error = %e, "decision log: checkpoint not written");
            return;
        }
        self.last_checkpoint = Instant::now();
        self.count(Metrics::log_checkpoint);
        let copied = self
            .checkpoints
            .write_all(buf)
            .and_then(|()| self.checkpoints.sync_data());
        if let Err(e) = copied {
            // The log has it; the next checkpoint is copied with more.
            tracing::error!(error = %e, "decision log: checkpoint not copied to the checkpoints file");
        }
    }

    fn maybe_rotate(&mut self, buf: &mut Vec<u8>) {
        let old = self.segment_started.elapsed().unwrap_or_default() >= self.max_segment_age;
        if self.len < self.max_segment_bytes && !old {
            return;
        }
        // Seal the segment with a signature before starting the next.
        self.checkpoint(buf);
        if self.dirty && self.file.sync_data().is_err() {
            return;
        }
        let next = self.dir.join(segment_name(self.seq + 1));
        match append(&next) {
            Ok(file) => {
                self.file = file;
                self.segment = next;
                self.len = 0;
                self.dirty = false;
                self.segment_started = SystemTime::now();
                if let Ok(d) = File::open(&self.dir) {
                    let _ = d.sync_all();
                }
                self.count(Metrics::log_rotation);
                tracing::info!(segment = %self.segment.display(), "decision log: new segment");
            }
            Err(e) => {
                tracing::error!(segment = %next.display(), error = %e, "decision log: cannot start a new segment; staying on the current one");
            }
        }
    }

    fn next_timer(&self) -> Duration {
        let mut wait = Duration::from_secs(1);
        if self.dirty {
            wait = wait.min(self.sync_interval.saturating_sub(self.last_sync.elapsed()));
        }
        if self.since_checkpoint > 0 {
            wait = wait.min(
                self.checkpoint_interval
                    .saturating_sub(self.last_checkpoint.elapsed()),
            );
        }
        if self.gap.is_some() {
            wait = wait.min(RETRY_INTERVAL);
        }
        wait
    }

    fn on_timers(&mut self, buf: &mut Vec<u8>, idle: bool) {
        if idle && self.gap.is_some() {
            // Nothing came in: try the gap record alone.
            let mut none = Vec::new();
            self.write_batch(&mut none, buf);
        }
        if self.dirty && self.last_sync.elapsed() >= self.sync_interval {
            match self.file.sync_data() {
                Ok(()) => self.dirty = false,
                Err(e) => tracing::error!(error = %e, "decision log: sync failed"),
            }
            self.last_sync = Instant::now();
        }
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.checkpoint_interval
            && self.gap.is_none()
        {
            self.checkpoint(buf);
        }
    }

    fn finish(&mut self, buf: &mut Vec<u8>) {
        if self.gap.is_some() {
            let mut none = Vec::new();
            self.write_batch(&mut none, buf);
        }
        if self.since_checkpoint > 0 && self.gap.is_none() {
            self.checkpoint(buf);
        }
        let _ = self.file.sync_data();
        tracing::info!(seq = self.seq, "decision log closed");
    }

    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }
}
