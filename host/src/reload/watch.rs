//! Watching: file events become reloads, on one worker thread.
//!
//! The directory of each watched file is watched rather than the file, so
//! a file replaced by an atomic rename, deleted and recreated, or swapped
//! through a symlink (as Kubernetes mounts do) is still seen. Events are
//! debounced per directory: a file being copied produces a burst of
//! writes, and it is loaded once the burst has been quiet for the
//! debounce time. Then each watched file in that directory whose
//! fingerprint (size, modification and change times, inode) changed is
//! reloaded through the [`Registry`]; a change seen by several events is
//! reloaded once. A copy that pauses longer
//! than the debounce is read half-written and refused at compile, with the
//! old version serving; its next write brings another event and another
//! attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher as _};

use super::{Registry, Target};

enum Message {
    Event(notify::Result<notify::Event>),
    /// Reload everything, as this actor (`sighup`, or an operator).
    ReloadAll(String),
    Stop,
}

/// The most a stream of changes postpones a reload, in debounce times.
const MAX_POSTPONE: u32 = 20;

/// The actor of reloads the watcher makes when files change.
pub const FILE_WATCH: &str = "file-watch";

/// The reload worker: a thread watching files (when the configuration
/// says so) and taking SIGHUP-style requests. Dropping it stops it.
pub struct Watcher {
    tx: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

/// Asks a running server's worker to reload; cheap to clone and send to
/// a signal handler or the admin plane.
#[derive(Clone, Default)]
pub struct ReloadHandle(Arc<std::sync::Mutex<Option<Watcher>>>);

impl ReloadHandle {
    /// Reloads the configuration file and every policy file, after any
    /// reload already running, as `actor` (`sighup`, or an operator's
    /// name). `false` before the first load has finished, and after
    /// shutdown: there is nothing to reload then.
    pub fn reload(&self, actor: &str) -> bool {
        match self.lock().as_ref() {
            Some(w) => {
                w.reload_all(actor);
                true
            }
            None => false,
        }
    }

    /// Puts `watcher` in charge of reloads.
    pub fn install(&self, watcher: Watcher) {
        *self.lock() = Some(watcher);
    }

    /// Takes the worker out, to stop it.
    pub fn take(&self) -> Option<Watcher> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Watcher>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch files: {0}")]
pub struct WatchError(String);

impl Watcher {
    /// Starts the worker for `registry`.
    ///
    /// # Errors
    /// [`WatchError`] if the OS refuses a file watcher or a thread.
    pub fn start(registry: Arc<Registry>) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let notify = notify::recommended_watcher(move |e| {
            let _ = events.send(Message::Event(e));
        })
        .map_err(|e| WatchError(e.to_string()))?;
        // Watches are in place, and changes made since the load are
        // caught up, before this returns: nothing can be missed.
        let mut worker = Worker::new(registry, notify);
        worker.catch_up();
        let thread = std::thread::Builder::new()
            .name("arbiter-reload".into())
            .spawn(move || worker.run(&rx))
            .map_err(|e| WatchError(e.to_string()))?;
        Ok(Watcher {
            tx,
            thread: Some(thread),
        })
    }

    /// Asks for the configuration and every policy file to be reloaded
    /// (SIGHUP), after any reload already running, as `actor`.
    pub fn reload_all(&self, actor: &str) {
        let _ = self.tx.send(Message::ReloadAll(actor.to_owned()));
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What is known of a file: enough to tell that it changed without
/// reading it. Any write moves the modification and change times (kept to
/// the nanosecond); a rename or symlink swap changes the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Option<(u64, Option<SystemTime>, i64, i64, u64)>);

impl Fingerprint {
    fn of(path: &Path) -> Self {
        // Follows symlinks, so a swapped link target counts as a change.
        Fingerprint(std::fs::metadata(path).ok().map(|m| {
            #[cfg(unix)]
            let (ctime, ctime_ns, inode) = {
                use std::os::unix::fs::MetadataExt as _;
                (m.ctime(), m.ctime_nsec(), m.ino())
            };
            #[cfg(not(unix))]
            let (ctime, ctime_ns, inode) = (0, 0, 0);
            (m.len(), m.modified().ok(), ctime, ctime_ns, inode)
        }))
    }
}

struct Watched {
    path: PathBuf,
    target: Target,
    fingerprint: Fingerprint,
}

struct Worker {
    registry: Arc<Registry>,
    notify: notify::RecommendedWatcher,
    files: Vec<Watched>,
    dirs: BTreeSet<PathBuf>,
    /// Directories with events, and when they will have been quiet long
    /// enough.
    due: BTreeMap<PathBuf, Instant>,
    /// When the first change of each directory still due was seen.
    first: BTreeMap<PathBuf, Instant>,
    /// The registry's targets generation when last refreshed.
    generation: u64,
}

impl Worker {
    fn new(registry: Arc<Registry>, notify: notify::RecommendedWatcher) -> Self {
        let mut worker = Worker {
            registry,
            notify,
            files: Vec::new(),
            dirs: BTreeSet::new(),
            due: BTreeMap::new(),
            first: BTreeMap::new(),
            generation: 0,
        };
        worker.refresh_targets();
        worker
    }

    /// Reloads each policy whose file changed between its load and the
    /// start of watching, which no event will report.
    fn catch_up(&mut self) {
        if self.dirs.is_empty() {
            return;
        }
        for file in &mut self.files {
            if let Target::Policy(name) = &file.target {
                // Fingerprinted before it is read: a later event is a
                // later change.
                file.fingerprint = Fingerprint::of(&file.path);
                if self.registry.file_differs(name) {
                    self.registry.reload_policy(name, FILE_WATCH);
                }
            }
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Message>) {
        loop {
            let now = Instant::now();
            let message = match self.due.values().min() {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(now)),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match message {
                Ok(Message::Event(Ok(event))) => self.note(&event),
                Ok(Message::Event(Err(e))) => {
                    // Lost events (a queue overflow): look at everything.
                    tracing::warn!(error = %e, "file watcher error; checking every watched file");
                    self.all_due();
                }
                Ok(Message::ReloadAll(actor)) => {
                    tracing::info!(%actor, "reloading the configuration and every policy");
                    self.registry.reload_all(&actor);
                    self.refresh_targets();
                }
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.fire();
        }
    }

    fn note(&mut self, event: &notify::Event) {
        if event.need_rescan() {
            self.all_due();
            return;
        }
        // Reading a file changes nothing; counting reads would let anyone
        // who keeps reading the directory (a log tailer, a backup) push
        // the quiet time back for ever, and no change would ever load.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let debounce = self.debounce();
        let now = Instant::now();
        for path in &event.paths {
            if let Some(dir) = path.parent().filter(|d| self.dirs.contains(*d)) {
                // Writes that never pause postpone a reload by at most
                // MAX_POSTPONE debounce times from the first of them.
                let first = self.first.entry(dir.to_owned()).or_insert(now);
                let latest = *first + debounce * MAX_POSTPONE;
                self.due
                    .insert(dir.to_owned(), (now + debounce).min(latest));
            }
        }
    }

    fn all_due(&mut self) {
        let at = Instant::now() + self.debounce();
        for dir in &self.dirs {
            self.due.insert(dir.clone(), at);
        }
    }

    /// Reloads what changed in the directories that have been quiet for
    /// the debounce time: the configuration first, since it may change
    /// which policies there are.
    fn fire(&mut self) {
        // A promotion moves a file from candidate to policy.
        if self.registry.targets_generation() != self.generation {
            self.refresh_targets();
        }
        let now = Instant::now();
        let quiet: Vec<PathBuf> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(d, _)| d.clone())
            .collect();
        if quiet.is_empty() {
            return;
        }
        let mut changed = BTreeSet::new();
        for dir in &quiet {
            self.due.remove(dir);
            self.first.remove(dir);
        }
        for file in &mut self.files {
            if !file
                .path
                .parent()
                .is_some_and(|d| quiet.iter().any(|q| q == d))
            {
                continue;
            }
            let fingerprint = Fingerprint::of(&file.path);
            if fingerprint != file.fingerprint {
                file.fingerprint = fingerprint;
                changed.insert(file.target.clone());
            }
        }
        if changed.remove(&Target::Config) {
            let _ = self.registry.reload_config(FILE_WATCH);
            self.refresh_targets();
        }
        for target in changed {
            match target {
                Target::Policy(name) => {
                    self.registry.reload_policy(&name, FILE_WATCH);
                }
                Target::Candidate(name, id) => {
                    self.registry.reload_candidate(&name, &id, FILE_WATCH);
                }
                Target::Config => {}
            }
        }
    }

    /// Takes the registry's current list of files, and watches (or stops
    /// watching) their directories as the configuration asks.
    fn refresh_targets(&mut self) {
        self.generation = self.registry.targets_generation();
        let watch = self.registry.config().reload.watch;
        let previous: BTreeMap<PathBuf, Fingerprint> = self
            .files
            .drain(..)
            .map(|f| (f.path, f.fingerprint))
            .collect();
        self.files = self
            .registry
            .targets()
            .into_iter()
            .map(|(path, target)| Watched {
                fingerprint: previous
                    .get(&path)
                    .cloned()
                    .unwrap_or_else(|| Fingerprint::of(&path)),
                path,
                target,
            })
            .collect();
        let wanted: BTreeSet<PathBuf> = if watch {
            self.files
                .iter()
                .filter_map(|f| f.path.parent().map(Path::to_owned))
                .collect()
        } else {
            BTreeSet::new()
        };
        for gone in self.dirs.difference(&wanted) {
            let _ = self.notify.unwatch(gone);
        }
        let mut dirs = BTreeSet::new();
        for dir in wanted {
            if self.dirs.contains(&dir) {
                dirs.insert(dir);
                continue;
            }
            match self.notify.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching");
                    dirs.insert(dir);
                }
                Err(e) => tracing::error!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch this directory; changes there need SIGHUP"
                ),
            }
        }
        self.dirs = dirs;
    }

    fn debounce(&self) -> Duration {
        Duration::from_millis(self.registry.config().reload.debounce_ms)
    }
}
