//! The decision log: every decision, in every mode, appended as one
//! hash-chained JSON line ([`mod@super::record`]) before its answer leaves.
//!
//! # Nothing lost
//!
//! A decision is answered only once its record has been written to the
//! current segment (to the OS, so a crash of the process cannot take it).
//! Writes are group commits on the deciding threads: a decision chains its
//! record into the pending batch, then takes the files and writes every
//! record pending, unless a write under way took its record too, in which
//! case it waits for that write (microseconds, a page-cache copy) and is
//! done. No record crosses to another thread and no decision awaits
//! another task, so none can be left without a writer. The log's own
//! thread syncs to disk every `sync_interval_ms`, signs checkpoints and
//! starts new segments; with `sync_interval_ms = 0` every write is synced
//! before its decisions are answered.
//!
//! When a write fails (disk full, read-only, I/O error), the file is cut
//! back to its last whole write, and every record not yet written is
//! dropped from the chain. By default their decisions become denies saying
//! the log cannot be written. With `on_failure = "serve"` they stand,
//! unrecorded; either way, the first write that works again begins with a
//! `gap` record saying how many decisions, between when and when, and why,
//! and the metrics show it meanwhile.
//!
//! # Files
//!
//! In the log directory (created owner-only, held by one process at a
//! time through a lock on `.lock`): segments `decisions-<first seq>.jsonl`,
//! a new one when the current reaches `max_segment_bytes` or
//! `max_segment_age_s`, each sealed by a checkpoint, the chain running on
//! across them; and `checkpoints.jsonl`, a copy of every signed checkpoint
//! made once the log holding it is synced, so cutting the log's tail
//! shows. The checkpoint key is never in the log directory: whoever can
//! write the log must not be able to sign one (by default it is made in
//! the state directory, [`default_checkpoint_key`]).
//!
//! # Crashes and cuts
//!
//! At start the newest segment's last line is checked. Bytes after its
//! last newline are a record torn by a crash (never one that was
//! answered: answers follow the write): they are cut, and a `crash` record
//! saying how many bytes, with their digest, continues the chain. The tail
//! is then checked against the last signed checkpoint copied out of the
//! log: a log that no longer reaches it, or differs from it, was cut or
//! rewritten, and the start is refused rather than a chain continued from
//! it. Each start writes an `open` record saying what that check found.
//!
//! # Retention
//!
//! With `[log.retention]`, the oldest sealed segments leave once the log
//! is bigger or older than allowed: first a `retention` record naming each
//! one (its first and last seq and hash) is written and synced, then the
//! files are removed, so a verifier can tell a log that starts later by
//! retention from one whose head was cut. The current segment and the one
//! before it always stay.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::audit::check_signature;
use super::metrics::Metrics;
use super::record::{self, GENESIS, ParamsRule, Parsed};
use crate::config::{LogConfig, LogFailurePolicy, RetentionConfig};
use crate::decision::{Decision, History, Request};
use crate::paths::{is_inside, shared_mode, write_new};
use crate::signing::{KeyPair, PublicKey};
use crate::telemetry::Telemetry;

/// How often a log that cannot be written is tried again while no
/// decision comes in, so it recovers (and says so) on its own.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// The largest batch buffer kept for reuse.
const MAX_SPARE_BYTES: usize = 4 << 20;

/// The checkpoints file in the log directory, unless configured elsewhere.
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";

/// The checkpoint key made in the state directory when none is
/// configured; verifiers read its public half, [`public_key_path`].
pub const CHECKPOINT_KEY_FILE: &str = "checkpoint.key";

/// The largest sequence number a log is continued from: an honest log
/// never comes near it, so a record claiming more is damage, and the
/// counter can never overflow.
const MAX_SEQ: u64 = 1 << 62;

/// How often the log's thread looks for segments to let go of, besides
/// right after starting a new one.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// The prefix and suffix of segment file names.
const SEGMENT_PREFIX: &str = "decisions-";
const SEGMENT_SUFFIX: &str = ".jsonl";

/// The decision log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O error on a named file or directory.
    #[error("decision log `{}`: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
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
    /// The log no longer reaches, or differs from, the last signed
    /// checkpoint copied out of it: its tail was cut or rewritten.
    #[error(
        "decision log `{}`: {problem}; keep the directory as evidence, move it aside (and its checkpoints file) and start a new log",
        path.display()
    )]
    Cut {
        /// The log directory.
        path: PathBuf,
        /// What the check found.
        problem: String,
    },
    /// The checkpoint key cannot be used.
    #[error("decision log checkpoint key `{}`: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No checkpoint key was configured or made.
    #[error("decision log: no checkpoint key (set `log.checkpoint_key`)")]
    NoKey,
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

/// A handle to the decision log; cheap to share behind an `Arc`.
pub struct DecisionLog {
    shared: Arc<Shared>,
    params: ParamsRule,
    maintenance: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// The directory used when `log.dir` is not set: `$ARBITER_LOG_DIR`,
/// `$XDG_STATE_HOME/arbiter/decisions` or `~/.local/state/arbiter/decisions`.
pub fn default_dir() -> Option<PathBuf> {
    crate::paths::default_dir(
        "ARBITER_LOG_DIR",
        "XDG_STATE_HOME",
        ".local/state",
        "decisions",
    )
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
        .map_or_else(|| dir.join(CHECKPOINTS_FILE), |p| dir.join(p))
}

fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number a segment's name gives.
fn segment_first_seq(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?
        .parse()
        .ok()
}

/// Where the public half of the private key file `private` is:
/// `checkpoint.key` → `checkpoint.pub`, as `arbiter keygen` writes them.
pub fn public_key_path(private: &Path) -> PathBuf {
    private.with_extension("pub")
}

/// The default checkpoint key, `checkpoint.key` in `state_dir`, made with
/// its public half the first time (owner-only; two first starts at once
/// agree on one). Returns its path.
///
/// # Errors
/// [`LogError::Key`] when it cannot be made.
pub fn default_checkpoint_key(state_dir: &Path) -> Result<PathBuf, LogError> {
    let path = state_dir.join(CHECKPOINT_KEY_FILE);
    let key_error = |e: Box<dyn std::error::Error + Send + Sync>| LogError::Key {
        path: path.clone(),
        source: e,
    };
    if path.exists() {
        return Ok(path);
    }
    crate::paths::create_private_dir(state_dir).map_err(|e| key_error(e.into()))?;
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| key_error(e.to_string().into()))?;
    let pair = KeyPair::generate(&format!("log-{}", crate::hex::encode(&id)))
        .map_err(|e| key_error(e.into()))?;
    // Public half first: a private key without it would be unverifiable.
    let public = public_key_path(&path);
    let tmp = public.with_extension(format!("pub.{}.tmp", std::process::id()));
    write_new(&tmp, pair.public().file().as_bytes(), 0o644)
        .and_then(|()| write_new(&path, pair.private_file().as_bytes(), 0o600))
        .and_then(|()| fs::rename(&tmp, &public))
        .or_else(|e| {
            let _ = fs::remove_file(&tmp);
            // Another first start won: use its key.
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| key_error(e.into()))?;
    Ok(path)
}

impl DecisionLog {
    /// Opens the log of `config` (relative paths against `base`): takes the
    /// directory's lock, repairs a torn tail, writes an `open` record and
    /// starts the log's thread (syncs, checkpoints, segments).
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
            move |source: std::io::Error| LogError::Io { path, source }
        };
        crate::paths::create_private_dir(&dir).map_err(io(&dir))?;
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
        let key = checkpoint_key(config, base, &dir)?;
        let checkpoints_path = checkpoints_path(config, &dir);
        // The copies are made from the first start on: a log without them
        // had them deleted, and could have lost its tail with them.
        if !checkpoints_path.exists() && !segments(&dir).map_err(io(&dir))?.is_empty() {
            return Err(LogError::Cut {
                path: dir,
                problem: format!(
                    "its checkpoints file `{}` is missing, so a cut tail could not be told",
                    checkpoints_path.display()
                ),
            });
        }
        let checkpoints = append(&checkpoints_path).map_err(io(&checkpoints_path))?;
        cut_torn_tail(&checkpoints, &checkpoints_path).map_err(io(&checkpoints_path))?;
        let tail = recover(&dir)?;
        let checked = check_tail(&dir, &checkpoints_path, &key.public(), &tail)?;
        let segment = match &tail.segment {
            Some(p) => p.clone(),
            None => dir.join(segment_name(tail.seq + 1)),
        };
        let file = append(&segment).map_err(io(&segment))?;
        let len = file.metadata().map_err(io(&segment))?.len();
        let sync_handle = file.try_clone().map_err(io(&segment))?;
        let shared = Arc::new(Shared {
            chain: Mutex::new(Chain {
                seq: tail.seq,
                head: tail.head.clone(),
                since_checkpoint: 0,
                written: (tail.seq, tail.head, 0),
                synced_seq: tail.seq,
                pending: Vec::new(),
                pending_decisions: 0,
                gap_pending: false,
                spare: Vec::new(),
                epoch: 0,
                last_error: String::new(),
                uncopied: Vec::new(),
                gap: None,
                closed: false,
                rotate: false,
                replica: config.replica.clone(),
            }),
            work: Condvar::new(),
            out: Mutex::new(Output {
                file,
                segment,
                len,
                needs_cut: false,
                started: tail.started,
            }),
            sync_handle: Mutex::new(Arc::new(sync_handle)),
            checkpoints: Mutex::new(checkpoints),
            checkpoints_path,
            key,
            dir: dir.clone(),
            sync_interval: Duration::from_millis(config.sync_interval_ms),
            checkpoint_every: config.checkpoint_every,
            checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
            max_segment_bytes: config.max_segment_bytes,
            max_segment_age: Duration::from_secs(config.max_segment_age_s),
            retention: config.retention.clone(),
            on_failure: config.on_failure,
            metrics,
            export: std::sync::OnceLock::new(),
            _lock: lock,
        });
        if let Some((name, offset, torn)) = &tail.torn {
            tracing::warn!(segment = %name, torn_bytes = torn.len(), "decision log: cut a record torn by a crash");
            shared
                .append_now("crash", &record::crash_data(name, *offset, torn))
                .map_err(|e| io(&dir)(std::io::Error::other(e.to_string())))?;
        }
        shared
            .append_now("open", &record::open_data(config.params, checked))
            .map_err(|e| io(&dir)(std::io::Error::other(e.to_string())))?;
        let worker = Arc::clone(&shared);
        let maintenance = std::thread::Builder::new()
            .name("arbiter-log".into())
            .spawn(move || worker.maintain())
            .map_err(io(&dir))?;
        tracing::info!(dir = %dir.display(), "decision log open");
        Ok(DecisionLog {
            shared,
            params: ParamsRule::new(config.params, &config.redact_fields),
            maintenance: Mutex::new(Some(maintenance)),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What `arbiter log verify` checks this log against: the public half
    /// of its checkpoint key and its checkpoints file.
    pub fn verify_options(&self) -> super::audit::VerifyOptions {
        super::audit::VerifyOptions {
            key: self.shared.key.public(),
            checkpoints_file: Some(self.shared.checkpoints_path.clone()),
        }
    }

    /// Records `decision`, made for `request` with the host's `history` of
    /// the agent, and returns once it is
    /// written. It does not wait on another thread: the caller writes,
    /// or finds that a write under way took its record too. That write is
    /// to the OS (its page cache), not to disk; syncs run on the log's own
    /// thread unless `sync_interval_ms = 0`.
    ///
    /// # Errors
    /// [`Unrecorded`] when it could not be written and the configuration
    /// says to fail closed, or the log is closed.
    pub fn record(
        &self,
        request: &Request,
        history: &History,
        decision: &Decision,
    ) -> Result<Recorded, Unrecorded> {
        let data = record::DecisionData::new(request, history, decision, &self.params).encode();
        let (seq, epoch) = self.shared.push("decision", &data)?;
        self.shared.wait_written(seq, epoch)
    }

    /// Exports every record written from now on (all kinds, the chain's
    /// own order) through `telemetry`; set once.
    pub fn export_to(&self, telemetry: Telemetry) {
        let _ = self.shared.export.set(telemetry);
    }

    /// Records an event that is not a decision (a `shadow` divergence, an
    /// `admin` change of mode or version) in the same chain, and returns
    /// once it is written.
    ///
    /// # Errors
    /// As [`DecisionLog::record`].
    pub fn record_event(
        &self,
        kind: &'static str,
        data: &serde_json::Value,
    ) -> Result<Recorded, Unrecorded> {
        let (seq, epoch) = self.shared.push(kind, &record::canonical(data))?;
        self.shared.wait_written(seq, epoch)
    }

    /// Writes what is pending and a final checkpoint, syncs, and stops the
    /// log's thread. Records asked for afterwards fail with
    /// [`Unrecorded::Closed`].
    pub fn close(&self) {
        let thread = self
            .maintenance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(thread) = thread else {
            return;
        };
        self.shared.lock_chain().closed = true;
        self.shared.work.notify_all();
        let _ = thread.join();
        if self.shared.lock_chain().gap.is_some() {
            self.shared.retry_gap();
        }
        self.shared.checkpoint(true, false);
        // Checkpoints made inline since the log's thread last looked.
        self.shared.copy_checkpoints(|| self.shared.sync());
        if let Err(e) = self.shared.sync() {
            tracing::error!(error = %e, "decision log: final sync failed");
        }
        tracing::info!(seq = self.shared.lock_chain().seq, "decision log closed");
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

/// Cuts what follows the last newline of `file` (a line torn by a crash),
/// so the next line appended stands on its own.
fn cut_torn_tail(file: &File, path: &Path) -> std::io::Result<()> {
    let bytes = fs::read(path)?;
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    if keep < bytes.len() {
        file.set_len(keep as u64)?;
    }
    Ok(())
}

/// The configured checkpoint key (relative to `base`), refused when it
/// lies in the log directory `dir` or others than its owner can read it.
fn checkpoint_key(config: &LogConfig, base: &Path, dir: &Path) -> Result<KeyPair, LogError> {
    let path = base.join(config.checkpoint_key.as_ref().ok_or(LogError::NoKey)?);
    let key_error = |e: Box<dyn std::error::Error + Send + Sync>| LogError::Key {
        path: path.clone(),
        source: e,
    };
    let meta = fs::metadata(&path).map_err(|e| key_error(e.into()))?;
    if is_inside(&path, dir) {
        return Err(key_error(
            "it is inside the log directory, where whoever can write the log could sign a forged one: keep it elsewhere".into(),
        ));
    }
    if let Some(mode) = shared_mode(&meta) {
        return Err(key_error(
            format!("it is readable by others than its owner (mode {mode:o}): `chmod 600` it")
                .into(),
        ));
    }
    let text = fs::read_to_string(&path).map_err(|e| key_error(e.into()))?;
    KeyPair::from_private_file(&text).map_err(|e| key_error(e.into()))
}

/// Checks the chain from the last signed checkpoint in the checkpoints
/// file `copies` to the tail: the log must reach that checkpoint, hold it
/// unchanged, and chain on from it. Returns what it found, for the `open`
/// record.
fn check_tail(
    dir: &Path,
    copies: &Path,
    key: &PublicKey,
    tail: &Tail,
) -> Result<serde_json::Value, LogError> {
    let io = |path: &Path, source: std::io::Error| LogError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = fs::read(copies).map_err(|e| io(copies, e))?;
    let Some(line) = bytes.split(|b| *b == b'\n').rfind(|l| !l.is_empty()) else {
        return Ok(serde_json::json!({"checkpoint_seq": null}));
    };
    let cut = |problem: String| LogError::Cut {
        path: dir.to_owned(),
        problem,
    };
    let c = Parsed::from_line(line)
        .filter(|c| c.computed == c.hash)
        .ok_or_else(|| {
            cut(format!(
                "the last line of `{}` is not a record",
                copies.display()
            ))
        })?;
    check_signature(&c, key).map_err(|why| cut(format!("in `{}`: {why}", copies.display())))?;
    if c.seq > tail.seq {
        return Err(cut(format!(
            "it ends at record {}, but the signed checkpoint {} in `{}` covers more: records {}..={} were cut",
            tail.seq,
            c.seq,
            copies.display(),
            tail.seq + 1,
            c.seq
        )));
    }
    let files = segments(dir).map_err(|e| io(dir, e))?;
    let from = files
        .iter()
        .rposition(|f| segment_first_seq(f).is_some_and(|first| first <= c.seq))
        .unwrap_or(0);
    let mut head: Option<(u64, String)> = None;
    let mut after = 0u64;
    for path in &files[from..] {
        let bytes = fs::read(path).map_err(|e| io(path, e))?;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let p = Parsed::from_line(line).filter(|p| p.computed == p.hash);
            let Some(p) = p else {
                return Err(cut(format!(
                    "a record after checkpoint {} in `{}` does not match its hash",
                    c.seq,
                    path.display()
                )));
            };
            match &head {
                None if p.seq < c.seq => {}
                None if p.seq == c.seq && p.hash == c.hash => head = Some((p.seq, p.hash)),
                None => {
                    return Err(cut(format!(
                        "record {} differs from the signed checkpoint copied to `{}`",
                        c.seq,
                        copies.display()
                    )));
                }
                Some((seq, hash)) if seq.checked_add(1) == Some(p.seq) && p.prev_hash == *hash => {
                    head = Some((p.seq, p.hash));
                    after += 1;
                }
                Some((seq, _)) => {
                    return Err(cut(format!(
                        "record {} in `{}` does not chain on from record {seq}",
                        p.seq,
                        path.display()
                    )));
                }
            }
        }
    }
    Ok(serde_json::json!({
        "checkpoint_seq": c.seq,
        "checkpoint_hash": c.hash,
        "records_after": after,
    }))
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
    let io = |path: &Path, source: std::io::Error| LogError::Io {
        path: path.to_owned(),
        source,
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
        if parsed.seq > MAX_SEQ {
            return Err(damaged(&format!(
                "its sequence number {} is beyond any a log reaches",
                parsed.seq
            )));
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

/// The chain's state: what is written, and the records waiting to be.
/// Held only for short steps that never block.
struct Chain {
    /// The last sequence number given.
    seq: u64,
    /// The last hash given.
    head: String,
    /// Records given since the last checkpoint.
    since_checkpoint: u64,
    /// `(seq, head, since_checkpoint)` after the last record written: where
    /// the chain goes back to when a write fails.
    written: (u64, String, u64),
    /// The last sequence number synced to disk.
    synced_seq: u64,
    /// Whole lines, chained after `written`, not yet written.
    pending: Vec<u8>,
    /// Decision records in `pending`.
    pending_decisions: u64,
    /// A `gap` record is in `pending` or being written.
    gap_pending: bool,
    /// The buffer of the last write, emptied, for the next.
    spare: Vec<u8>,
    /// Bumped each time a failed write drops records from the chain, so a
    /// decision can tell its record was dropped from its seq being reused.
    epoch: u64,
    /// Why the last write failed.
    last_error: String,
    /// Checkpoints not yet in the checkpoints file: seq and line. Copied
    /// once written and synced; dropped if their write fails.
    uncopied: Vec<(u64, Vec<u8>)>,
    gap: Option<Gap>,
    closed: bool,
    /// The segment is full or old: the log's thread starts the next.
    rotate: bool,
    /// The fleet replica named in every record.
    replica: Option<String>,
}

/// The files. Whoever holds this writes what is pending; everyone else
/// waits for that write rather than make one of their own.
struct Output {
    file: File,
    segment: PathBuf,
    /// Bytes of whole writes in the segment.
    len: u64,
    /// A failed write may have left part of a batch: cut it first.
    needs_cut: bool,
    started: SystemTime,
}

struct Shared {
    chain: Mutex<Chain>,
    /// Signalled when there is work for the log's thread (a checkpoint or
    /// a new segment is due, or the log is closing).
    work: Condvar,
    /// Lock order: `out`, then `chain`; never the other way.
    out: Mutex<Output>,
    /// A second handle on the current segment, so a sync never holds up
    /// a write.
    sync_handle: Mutex<Arc<File>>,
    checkpoints: Mutex<File>,
    checkpoints_path: PathBuf,
    key: KeyPair,
    dir: PathBuf,
    sync_interval: Duration,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    max_segment_bytes: u64,
    max_segment_age: Duration,
    retention: RetentionConfig,
    on_failure: LogFailurePolicy,
    metrics: Option<Arc<Metrics>>,
    /// Where written lines are exported, when they are.
    export: std::sync::OnceLock<Telemetry>,
    _lock: File,
}

impl Chain {
    /// Appends one record to `pending`, advancing the chain; returns its
    /// sequence number and where its line starts in `pending`.
    fn push(&mut self, key: &KeyPair, kind: &str, data: &[u8]) -> (u64, usize) {
        self.seq += 1;
        let start = self.pending.len();
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let seq = self.seq;
        let sign = |hash: &str| {
            (kind == "checkpoint").then(|| {
                crate::hex::encode(&key.sign_message(&record::checkpoint_message(seq, hash)))
            })
        };
        let place = record::Place {
            prev_hash: &self.head,
            replica: self.replica.as_deref(),
            seq,
            ts: &ts,
        };
        self.head = record::append_line(&mut self.pending, kind, data, place, sign);
        if kind == "checkpoint" {
            self.since_checkpoint = 0;
        } else {
            self.since_checkpoint += 1;
        }
        (seq, start)
    }

    /// A signed checkpoint at the end of `pending`, to be copied once
    /// written and synced.
    fn push_checkpoint(&mut self, key: &KeyPair) {
        let data = record::checkpoint_data(key.id());
        let (seq, start) = self.push(key, "checkpoint", &data);
        let line = self.pending[start..].to_vec();
        self.uncopied.push((seq, line));
    }

    /// After a failed write, the first record again says what was missed.
    fn push_gap(&mut self, key: &KeyPair, on_failure: LogFailurePolicy) {
        let Some(gap) = &self.gap else {
            return;
        };
        if self.gap_pending {
            return;
        }
        let answered = match on_failure {
            LogFailurePolicy::Deny => "deny",
            LogFailurePolicy::Serve => "served",
        };
        let data = record::gap_data(gap.count, &gap.first_at, &gap.last_at, &gap.error, answered);
        self.push(key, "gap", &data);
        self.gap_pending = true;
    }

    /// Everything pending, to write now.
    fn take(&mut self) -> Batch {
        let spare = std::mem::take(&mut self.spare);
        Batch {
            lines: std::mem::replace(&mut self.pending, spare),
            decisions: std::mem::take(&mut self.pending_decisions),
            // Still pending until written: no second gap record meanwhile.
            has_gap: self.gap_pending,
            after: (self.seq, self.head.clone(), self.since_checkpoint),
        }
    }
}

/// Lines taken from `pending` to write.
struct Batch {
    lines: Vec<u8>,
    decisions: u64,
    /// The `gap` record is among them.
    has_gap: bool,
    /// `(seq, head, since_checkpoint)` once they are written.
    after: (u64, String, u64),
}

impl Shared {
    fn lock_chain(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_out(&self) -> MutexGuard<'_, Output> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a record; returns its seq and the epoch it was given in.
    fn push(&self, kind: &str, data: &[u8]) -> Result<(u64, u64), Unrecorded> {
        let mut c = self.lock_chain();
        if c.closed {
            return Err(Unrecorded::Closed);
        }
        // Room for a gap record, this one and a checkpoint; the start
        // refuses a log anywhere near this, so it is never reached.
        if c.seq > u64::MAX - 3 {
            return Err(Unrecorded::Write("sequence numbers are exhausted".into()));
        }
        c.push_gap(&self.key, self.on_failure);
        c.push(&self.key, kind, data);
        if kind == "decision" {
            c.pending_decisions += 1;
        }
        let at = (c.seq, c.epoch);
        // Every `checkpoint_every` records exactly, whatever the load: the
        // signature is made here, the copy once the log is synced.
        if c.since_checkpoint >= self.checkpoint_every && c.gap.is_none() {
            c.push_checkpoint(&self.key);
            drop(c);
            self.work.notify_all();
        }
        Ok(at)
    }

    /// Returns once record `seq` of `epoch` is written: by whoever holds
    /// the files when it gets them, which is this caller when nobody else
    /// wrote it first. A write takes every record pending, so under load
    /// one write serves many decisions and most find theirs done.
    fn wait_written(&self, seq: u64, epoch: u64) -> Result<Recorded, Unrecorded> {
        loop {
            if let Some(done) = self.outcome(&self.lock_chain(), seq, epoch) {
                return done;
            }
            let mut out = self.lock_out();
            let batch = {
                let mut c = self.lock_chain();
                if let Some(done) = self.outcome(&c, seq, epoch) {
                    return done;
                }
                c.take()
            };
            self.write(&mut out, batch);
        }
    }

    /// Whether record `seq` of `epoch` is settled, and how.
    fn outcome(&self, c: &Chain, seq: u64, epoch: u64) -> Option<Result<Recorded, Unrecorded>> {
        if c.epoch != epoch {
            return Some(match self.on_failure {
                LogFailurePolicy::Deny => Err(Unrecorded::Write(c.last_error.clone())),
                LogFailurePolicy::Serve => Ok(Recorded::Lost),
            });
        }
        (c.written.0 >= seq).then_some(Ok(Recorded::Seq(seq)))
    }

    /// Writes `batch` at the end of the segment; the caller holds `out`.
    /// Returns whether it was written.
    fn write(&self, out: &mut Output, batch: Batch) -> bool {
        if batch.lines.is_empty() {
            return true;
        }
        let result = out.commit(&batch.lines, self.sync_interval.is_zero());
        // Exported only once in the chain: what a receiver gets is what
        // `arbiter log verify` proves.
        if let (Ok(()), Some(t)) = (&result, self.export.get()) {
            t.records(&batch.lines);
        }
        let full = out.len >= self.max_segment_bytes || self.aged(out);
        let Batch {
            mut lines,
            decisions,
            has_gap,
            after,
        } = batch;
        let mut c = self.lock_chain();
        match result {
            Ok(()) => {
                let since = after.2;
                c.written = after;
                if self.sync_interval.is_zero() {
                    c.synced_seq = c.written.0;
                }
                if has_gap && c.gap.take().is_some() {
                    tracing::warn!(
                        "decision log writable again; a gap record says what was missed"
                    );
                }
                c.rotate |= full;
                // Keep the buffer for the next write, unless a burst made it huge.
                if lines.capacity() <= MAX_SPARE_BYTES {
                    lines.clear();
                    c.spare = lines;
                }
                let wake = full || since >= self.checkpoint_every || !c.uncopied.is_empty();
                drop(c);
                self.count(|m| m.log_written(decisions, true));
                if wake {
                    self.work.notify_all();
                }
                true
            }
            Err(e) => {
                // Records chained after the failed ones leave with them.
                let dropped = decisions + std::mem::take(&mut c.pending_decisions);
                c.pending.clear();
                c.gap_pending = false;
                (c.seq, c.head, c.since_checkpoint) = c.written.clone();
                c.epoch += 1;
                let written = c.written.0;
                c.uncopied.retain(|(seq, _)| *seq <= written);
                let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                let error = e.to_string();
                if c.gap.is_none() {
                    tracing::error!(dir = %self.dir.display(), error = %error, "decision log cannot be written");
                }
                let gap = c.gap.get_or_insert_with(|| Gap {
                    count: 0,
                    first_at: now.clone(),
                    last_at: now.clone(),
                    error: error.clone(),
                });
                gap.count += dropped;
                gap.last_at = now;
                gap.error = error.clone();
                c.last_error = error;
                drop(c);
                let deny = self.on_failure == LogFailurePolicy::Deny;
                self.count(|m| m.log_failed(dropped, deny));
                false
            }
        }
    }

    /// Writes one record from a thread that is not a decision's (at start,
    /// for a gap while idle).
    fn append_now(&self, kind: &str, data: &[u8]) -> Result<u64, Unrecorded> {
        let (seq, epoch) = self.push(kind, data)?;
        match self.wait_written(seq, epoch)? {
            Recorded::Seq(seq) => Ok(seq),
            Recorded::Lost => Err(Unrecorded::Write(self.lock_chain().last_error.clone())),
        }
    }

    fn aged(&self, out: &Output) -> bool {
        out.started.elapsed().unwrap_or_default() >= self.max_segment_age
    }

    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }

    /// Syncs the current segment to disk.
    fn sync(&self) -> std::io::Result<()> {
        let seq = self.lock_chain().written.0;
        let handle = Arc::clone(
            &self
                .sync_handle
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        handle.sync_data()?;
        let mut c = self.lock_chain();
        c.synced_seq = c.synced_seq.max(seq);
        Ok(())
    }

    /// A signed checkpoint, if any record came since the last: written
    /// right after what is pending, synced, then copied to the checkpoints
    /// file. With `seal`, even when the log is closed; with `rotate`, the
    /// segment ends with it and the next one begins.
    fn checkpoint(&self, seal: bool, rotate: bool) {
        let mut out = self.lock_out();
        let batch = {
            let mut c = self.lock_chain();
            if rotate {
                c.rotate = false;
            }
            if c.gap.is_some() || (c.closed && !seal) {
                return;
            }
            if c.since_checkpoint == 0 {
                // The segment already ends in a checkpoint (with
                // `checkpoint_every = 1`, always): nothing to sign, but a
                // full segment is still sealed and a new one begun.
                if !rotate {
                    return;
                }
                None
            } else {
                c.push_checkpoint(&self.key);
                Some(c.take())
            }
        };
        if let Some(batch) = batch
            && !self.write(&mut out, batch)
        {
            tracing::error!("decision log: checkpoint not written");
            return;
        }
        let finished = if rotate {
            self.next_segment(&mut out)
        } else {
            None
        };
        drop(out);
        match finished {
            Some(old) => self.copy_checkpoints(|| old.sync_data()),
            None => self.copy_checkpoints(|| self.sync()),
        }
    }

    /// Copies the checkpoints written so far to the checkpoints file, once
    /// `sync` has put the log holding them on disk: a copy must never
    /// claim records a power loss could still take.
    fn copy_checkpoints(&self, sync: impl FnOnce() -> std::io::Result<()>) {
        let ready: Vec<(u64, Vec<u8>)> = {
            let mut c = self.lock_chain();
            let written = c.written.0;
            let (ready, later) = std::mem::take(&mut c.uncopied)
                .into_iter()
                .partition(|(seq, _)| *seq <= written);
            c.uncopied = later;
            ready
        };
        if ready.is_empty() {
            return;
        }
        if let Err(e) = sync() {
            // The log has them; the next checkpoint is copied with more.
            tracing::error!(error = %e, "decision log: sync before copying checkpoints failed");
            return;
        }
        let mut copies = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let copied = ready
            .iter()
            .try_for_each(|(_, line)| copies.write_all(line))
            .and_then(|()| copies.sync_data());
        match copied {
            Ok(()) => {
                for _ in &ready {
                    self.count(Metrics::log_checkpoint);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "decision log: checkpoints not copied to the checkpoints file");
            }
        }
    }

    /// Starts the next segment; returns the finished one, to be synced
    /// once the files are free again.
    fn next_segment(&self, out: &mut Output) -> Option<File> {
        let next = self.dir.join(segment_name(self.lock_chain().seq + 1));
        let opened = append(&next).and_then(|f| Ok((f.try_clone()?, f)));
        let (handle, file) = match opened {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(segment = %next.display(), error = %e, "decision log: cannot start a new segment; staying on the current one");
                return None;
            }
        };
        out.segment = next.clone();
        out.len = 0;
        out.needs_cut = false;
        out.started = SystemTime::now();
        let old = std::mem::replace(&mut out.file, file);
        *self
            .sync_handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(handle);
        // The chain's own check found the old segment full; this one is not.
        self.lock_chain().rotate = false;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.count(Metrics::log_rotation);
        tracing::info!(segment = %next.display(), "decision log: new segment");
        Some(old)
    }

    /// The log's own thread: syncs, checkpoints, new segments, and retries
    /// while the log cannot be written.
    fn maintain(&self) {
        let mut last_sync = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut last_retry = Instant::now();
        let mut last_retention: Option<Instant> = None;
        loop {
            let (sync, checkpoint, rotate, retry) = {
                let mut c = self.lock_chain();
                // A signal sent before this thread waits is seen here.
                let copies_ready = c
                    .uncopied
                    .first()
                    .is_some_and(|(seq, _)| *seq <= c.written.0);
                if !(c.rotate || c.closed || copies_ready) {
                    let wait = self.next_wait(&c, last_sync, last_checkpoint);
                    c = self
                        .work
                        .wait_timeout(c, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if c.closed {
                    return;
                }
                (
                    c.written.0 > c.synced_seq && last_sync.elapsed() >= self.sync_interval,
                    c.gap.is_none()
                        && c.since_checkpoint > 0
                        && (c.since_checkpoint >= self.checkpoint_every
                            || last_checkpoint.elapsed() >= self.checkpoint_interval),
                    c.rotate,
                    c.gap.is_some() && last_retry.elapsed() >= RETRY_INTERVAL,
                )
            };
            // Age is checked off the chain's lock (lock order: `out` first).
            let rotate = rotate || self.aged(&self.lock_out());
            if retry {
                self.retry_gap();
                last_retry = Instant::now();
            }
            if rotate || checkpoint {
                self.checkpoint(false, rotate);
                last_checkpoint = Instant::now();
            } else {
                self.copy_checkpoints(|| self.sync());
            }
            if (rotate || last_retention.is_none_or(|t| t.elapsed() >= RETENTION_INTERVAL))
                && (self.retention.max_total_bytes > 0 || self.retention.max_age_s > 0)
            {
                self.retain();
                last_retention = Some(Instant::now());
            }
            if sync {
                if let Err(e) = self.sync() {
                    tracing::error!(error = %e, "decision log: sync failed");
                }
                last_sync = Instant::now();
            }
        }
    }

    /// Lets the oldest sealed segments go while the log is bigger or older
    /// than `[log.retention]` allows: a `retention` record naming each is
    /// written and synced first, so the log never starts later without
    /// saying why. The current segment and the one before it stay, so the
    /// last checkpoint copied out is always in the log.
    fn retain(&self) {
        let current = self.lock_out().segment.clone();
        let Ok(files) = segments(&self.dir) else {
            return;
        };
        // Each segment with its size and when it was last written.
        let files: Vec<(&PathBuf, u64, SystemTime)> = files
            .iter()
            .map(|f| {
                let (len, modified) = fs::metadata(f).map_or((0, SystemTime::now()), |m| {
                    (m.len(), m.modified().unwrap_or_else(|_| SystemTime::now()))
                });
                (f, len, modified)
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        let sealed: Vec<_> = files.iter().filter(|(f, ..)| **f != current).collect();
        let oldest_kept =
            SystemTime::now().checked_sub(Duration::from_secs(self.retention.max_age_s));
        let mut leaving = Vec::new();
        for &&(path, len, modified) in sealed.iter().take(sealed.len().saturating_sub(1)) {
            let too_big =
                self.retention.max_total_bytes > 0 && total > self.retention.max_total_bytes;
            let too_old = self.retention.max_age_s > 0 && oldest_kept.is_some_and(|t| modified < t);
            if !(too_big || too_old) {
                break;
            }
            match sealed_ends(path) {
                Some(ends) => leaving.push((
                    path,
                    ends,
                    len,
                    if too_big {
                        "max_total_bytes"
                    } else {
                        "max_age_s"
                    },
                )),
                None => {
                    tracing::warn!(segment = %path.display(), "decision log: a segment to let go is not sealed by a checkpoint; keeping it and those after it");
                    break;
                }
            }
            total -= len;
        }
        if leaving.is_empty() {
            return;
        }
        let removed: Vec<record::Retained> = leaving
            .iter()
            .map(|(path, (first, last), bytes, reason)| record::Retained {
                segment: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                first_seq: first.0,
                first_hash: first.1.clone(),
                last_seq: last.0,
                last_hash: last.1.clone(),
                bytes: *bytes,
                reason: (*reason).to_owned(),
            })
            .collect();
        let written = self
            .append_now("retention", &record::retention_data(&removed))
            .map_err(|e| e.to_string())
            .and_then(|_| self.sync().map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::error!(error = %e, "decision log: the retention record was not written; keeping every segment");
            return;
        }
        // Oldest first: a removal cut short leaves a log that still starts
        // where one of the named segments ended.
        for (path, ..) in &leaving {
            if let Err(e) = fs::remove_file(path) {
                tracing::error!(segment = %path.display(), error = %e, "decision log: cannot remove a segment retention let go");
                return;
            }
            tracing::info!(segment = %path.display(), "decision log: segment removed by retention");
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// While the log cannot be written and nothing comes in, tries the
    /// `gap` record alone, so the log recovers (and says so) by itself.
    fn retry_gap(&self) {
        let mut out = self.lock_out();
        let batch = {
            let mut c = self.lock_chain();
            c.push_gap(&self.key, self.on_failure);
            c.take()
        };
        self.write(&mut out, batch);
    }

    fn next_wait(&self, c: &Chain, last_sync: Instant, last_checkpoint: Instant) -> Duration {
        let mut wait = Duration::from_secs(1);
        if c.written.0 > c.synced_seq {
            wait = wait.min(self.sync_interval.saturating_sub(last_sync.elapsed()));
        }
        if c.since_checkpoint > 0 {
            wait = wait.min(
                self.checkpoint_interval
                    .saturating_sub(last_checkpoint.elapsed()),
            );
        }
        if c.gap.is_some() {
            wait = wait.min(RETRY_INTERVAL);
        }
        wait.max(Duration::from_millis(1))
    }
}

/// The first and last records (seq, hash) of a segment whose last record
/// is a checkpoint; `None` for one that is not sealed or does not read.
fn sealed_ends(path: &Path) -> Option<((u64, String), (u64, String))> {
    let bytes = fs::read(path).ok()?;
    let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let first = Parsed::from_line(lines.next()?)?;
    let last = match lines.next_back() {
        Some(l) => Parsed::from_line(l)?,
        None => first.clone(),
    };
    let sealed = last.kind == "checkpoint" && last.computed == last.hash && bytes.ends_with(b"\n");
    sealed.then_some(((first.seq, first.hash), (last.seq, last.hash)))
}

impl Output {
    /// Writes `buf` whole at the end of the segment, or cuts back what part
    /// of it got there.
    fn commit(&mut self, buf: &[u8], sync: bool) -> std::io::Result<()> {
        if self.needs_cut {
            self.file.set_len(self.len)?;
            self.needs_cut = false;
        }
        let written = self.file.write_all(buf).and_then(|()| {
            if sync {
                self.file.sync_data()?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Action, Context, Decision, Outcome, Principal};
    use crate::evidence::audit::{self, VerifyOptions};
    use crate::signing::PublicKey;

    /// The log in `dir/log`, its key made in `dir/keys`.
    fn config(dir: &Path) -> LogConfig {
        LogConfig {
            dir: Some(dir.join("log")),
            checkpoint_key: Some(default_checkpoint_key(&dir.join("keys")).expect("key")),
            ..LogConfig::default()
        }
    }

    fn request() -> Request {
        Request {
            trace: None,
            action: Action {
                kind: "tool".into(),
                name: "send_email".into(),
                target: String::new(),
                params: serde_json::json!({"to": "a@b.example"}),
            },
            context: Context {
                agent: Principal {
                    id: "bot".into(),
                    roles: Vec::new(),
                },
                ..Context::default()
            },
            history: History::default(),
            approval_id: None,
        }
    }

    fn verify(dir: &Path) -> audit::Verified {
        let key = public_key_path(&dir.join("keys").join(CHECKPOINT_KEY_FILE));
        let text = fs::read_to_string(key).expect("public key");
        let options = VerifyOptions {
            key: PublicKey::from_file(&text).expect("key"),
            checkpoints_file: Some(dir.join("log").join(CHECKPOINTS_FILE)),
        };
        audit::verify(&dir.join("log"), &options)
            .expect("readable")
            .expect("the chain verifies")
    }

    #[test]
    fn decisions_and_events_chain_and_verify_across_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let deny = Decision::host_deny("r", "why".into(), Instant::now());
        assert_eq!(deny.outcome, Outcome::Deny);
        {
            let log = DecisionLog::open(&config(dir.path()), Path::new("."), None).expect("open");
            log.record(&request(), &History::default(), &deny)
                .expect("recorded");
            log.record_event("admin", &serde_json::json!({"change": "mode"}))
                .expect("event");
            log.close();
        }
        {
            let log = DecisionLog::open(&config(dir.path()), Path::new("."), None).expect("reopen");
            log.record(&request(), &History::default(), &deny)
                .expect("recorded");
            log.close();
        }
        let v = verify(dir.path());
        assert!(v.records >= 3, "{} records", v.records);
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let first = DecisionLog::open(&config(dir.path()), Path::new("."), None).expect("open");
        let second = DecisionLog::open(&config(dir.path()), Path::new("."), None);
        assert!(matches!(second, Err(LogError::Locked(_))), "{second:?}");
        first.close();
    }

    #[cfg(unix)]
    #[test]
    fn the_generated_checkpoint_key_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let log = DecisionLog::open(&config(dir.path()), Path::new("."), None).expect("open");
        log.close();
        let mode = fs::metadata(dir.path().join("keys").join(CHECKPOINT_KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn an_unreadable_key_names_the_file_and_keeps_the_cause() {
        let dir = tempfile::tempdir().expect("dir");
        fs::write(dir.path().join("bad.key"), "not a key").expect("write");
        let config = LogConfig {
            checkpoint_key: Some(dir.path().join("bad.key")),
            ..config(dir.path())
        };
        let e = DecisionLog::open(&config, Path::new("."), None).expect_err("refused");
        assert!(matches!(e, LogError::Key { .. }), "{e:?}");
        assert!(e.to_string().contains("bad.key"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_closed_log_refuses_records_so_decisions_fail_closed() {
        let dir = tempfile::tempdir().expect("dir");
        let log = DecisionLog::open(&config(dir.path()), Path::new("."), None).expect("open");
        log.close();
        let deny = Decision::host_deny("r", "why".into(), Instant::now());
        assert_eq!(
            log.record(&request(), &History::default(), &deny)
                .expect_err("closed"),
            Unrecorded::Closed
        );
    }
}
