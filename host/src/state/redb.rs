//! The default state store: an embedded redb database, `state.redb` in the
//! state directory, for one node. Every write is a committed transaction
//! (synced before it returns), so what a change reported survives a crash
//! or a restart. Values are JSON, so a newer Arbiter reads what an older
//! one wrote and an operator can read a dump. One process holds the file
//! at a time; the changes it announces are its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::{
    AgentStore, Approval, ApprovalStore, Breaker, DaySpend, FlowStore, Pin, PinStore, State,
    StateChange, StoreError, StoredFlow, Suspension, fallback,
};
use crate::decision::ApprovalStatus;

/// A stored entry: its key, and its value or why it does not decode.
type Entry<T> = (String, Result<T, String>);

/// The file in the state directory.
pub const STATE_FILE: &str = "state.redb";

type Table = TableDefinition<'static, &'static str, &'static str>;

const SUSPENSIONS: Table = TableDefinition::new("suspensions");
const BREAKERS: Table = TableDefinition::new("breakers");
const APPROVALS: Table = TableDefinition::new("approvals");
const SPEND: Table = TableDefinition::new("spend");
/// By `server` NUL `tool`.
const MCP_TOOLS: Table = TableDefinition::new("mcp_tools");
/// Each session's flow, by session key.
const FLOWS: Table = TableDefinition::new("flows");

/// Changes announced at once that a slow subscriber may miss (it is then
/// told it lagged).
const CHANGES: usize = 1024;

/// The state in one redb file.
pub struct RedbState {
    db: Database,
    path: PathBuf,
    changes: broadcast::Sender<StateChange>,
    /// Entries read that did not decode.
    undecodable: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbState")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbState {
    /// Opens (or creates) the store in `dir`, creating the directory
    /// owner-only.
    ///
    /// # Errors
    /// A [`StoreError`] naming the file: it cannot be created, is locked by
    /// another process, or is not a database.
    pub fn open(dir: &Path) -> Result<RedbState, StoreError> {
        let path = dir.join(STATE_FILE);
        crate::paths::create_private_dir(dir).map_err(|source| StoreError::Directory {
            path: dir.to_owned(),
            source,
        })?;
        let db = Database::create(&path).map_err(|e| database(&path, "open", e))?;
        let store = RedbState {
            db,
            path,
            changes: broadcast::channel(CHANGES).0,
            undecodable: Arc::new(AtomicU64::new(0)),
        };
        // Tables exist from the first start, so reads never meet a missing one.
        store.write("create the tables", |w| {
            for table in [SUSPENSIONS, BREAKERS, APPROVALS, SPEND, MCP_TOOLS, FLOWS] {
                w.open_table(table)?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This store behind every state trait.
    pub fn into_state(self) -> State {
        let (changes, undecodable) = (self.changes.clone(), Arc::clone(&self.undecodable));
        State::of(self, changes).with_undecodable(undecodable)
    }

    /// Every entry of `table`: decoded, or the key of one that does not
    /// decode (counted and logged), for the caller to fail closed on.
    fn all<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<Entry<T>>, StoreError> {
        let fail = |e: redb::Error| database(&self.path, "read", e);
        let read = self.db.begin_read().map_err(|e| fail(e.into()))?;
        let t = read.open_table(table).map_err(|e| fail(e.into()))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| fail(e.into()))? {
            let (k, v) = entry.map_err(|e| fail(e.into()))?;
            let decoded = serde_json::from_str(v.value()).map_err(|e| {
                self.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    table = table.name(),
                    key = k.value(),
                    error = %e,
                    "a stored entry does not decode; failing closed on it"
                );
                e.to_string()
            });
            out.push((k.value().to_owned(), decoded));
        }
        Ok(out)
    }

    fn encode(&self, what: &'static str, value: &impl Serialize) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            what,
            source,
        })
    }

    fn put(
        &self,
        table: Table,
        key: &str,
        json: &str,
        change: StateChange,
    ) -> Result<(), StoreError> {
        self.write("write", |w| {
            w.open_table(table)?.insert(key, json)?;
            Ok(())
        })?;
        self.announce(change);
        Ok(())
    }

    fn remove(&self, table: Table, key: &str, change: StateChange) -> Result<(), StoreError> {
        self.write("remove", |w| {
            w.open_table(table)?.remove(key)?;
            Ok(())
        })?;
        self.announce(change);
        Ok(())
    }

    fn write<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let fail = |e: redb::Error| database(&self.path, what, e);
        let w = self.db.begin_write().map_err(|e| fail(e.into()))?;
        let out = f(&w).map_err(fail)?;
        w.commit().map_err(|e| fail(e.into()))?;
        Ok(out)
    }

    fn announce(&self, change: StateChange) {
        // Nobody listening is fine.
        let _ = self.changes.send(change);
    }
}

fn database(
    path: &Path,
    what: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Database {
        path: path.to_owned(),
        what,
        source: Box::new(e),
    }
}

fn pin_key(server: &str, tool: &str) -> String {
    format!("{server}\0{tool}")
}

impl AgentStore for RedbState {
    fn suspensions(&self) -> Result<Vec<(String, Suspension)>, StoreError> {
        Ok(self
            .all(SUSPENSIONS)?
            .into_iter()
            .map(|(agent, s)| (agent, s.unwrap_or_else(|e| fallback::suspension(&e))))
            .collect())
    }

    fn suspend(&self, agent: &str, suspension: &Suspension) -> Result<(), StoreError> {
        let json = self.encode("suspension", suspension)?;
        self.put(
            SUSPENSIONS,
            agent,
            &json,
            StateChange::Suspended(agent.to_owned()),
        )
    }

    fn resume(&self, agent: &str) -> Result<(), StoreError> {
        self.remove(SUSPENSIONS, agent, StateChange::Resumed(agent.to_owned()))
    }

    fn breakers(&self) -> Result<Vec<(String, Breaker)>, StoreError> {
        Ok(self
            .all(BREAKERS)?
            .into_iter()
            .map(|(agent, b)| (agent, b.unwrap_or_else(|_| fallback::breaker())))
            .collect())
    }

    fn open_breaker(&self, agent: &str, breaker: &Breaker) -> Result<(), StoreError> {
        let json = self.encode("breaker", breaker)?;
        self.put(
            BREAKERS,
            agent,
            &json,
            StateChange::BreakerOpened(agent.to_owned()),
        )
    }

    fn close_breaker(&self, agent: &str) -> Result<(), StoreError> {
        self.remove(
            BREAKERS,
            agent,
            StateChange::BreakerClosed(agent.to_owned()),
        )
    }

    fn spend(&self) -> Result<Vec<(String, DaySpend)>, StoreError> {
        Ok(self
            .all(SPEND)?
            .into_iter()
            .map(|(agent, d)| (agent, d.unwrap_or_else(|_| fallback::spend())))
            .collect())
    }

    fn save_spend(&self, spend: &[(String, DaySpend)]) -> Result<(), StoreError> {
        let encoded = spend
            .iter()
            .map(|(k, v)| Ok((k.as_str(), self.encode("spend", v)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write("save the spend", |w| {
            let mut t = w.open_table(SPEND)?;
            for (k, v) in &encoded {
                t.insert(*k, v.as_str())?;
            }
            Ok(())
        })
    }
}

impl ApprovalStore for RedbState {
    fn approvals(&self) -> Result<Vec<Approval>, StoreError> {
        // An approval that does not read back is left out: asking again
        // with its id is then a deny (`approval.unknown`).
        Ok(self
            .all(APPROVALS)?
            .into_iter()
            .filter_map(|(_, a)| a.ok())
            .collect())
    }

    fn create(&self, approval: &Approval) -> Result<(), StoreError> {
        let json = self.encode("approval", approval)?;
        self.put(
            APPROVALS,
            &approval.id,
            &json,
            StateChange::Approval(approval.id.clone()),
        )
    }

    fn transition(&self, from: ApprovalStatus, next: &Approval) -> Result<bool, StoreError> {
        let json = self.encode("approval", next)?;
        // Read and write in one write transaction: redb serializes them, so
        // two callers cannot both see `from`.
        let changed = self.write("change an approval", |w| {
            let mut t = w.open_table(APPROVALS)?;
            let current = t
                .get(next.id.as_str())?
                .and_then(|v| serde_json::from_str::<Approval>(v.value()).ok());
            if current.is_none_or(|a| a.status != from) {
                return Ok(false);
            }
            t.insert(next.id.as_str(), json.as_str())?;
            Ok(true)
        })?;
        if changed {
            self.announce(StateChange::Approval(next.id.clone()));
        }
        Ok(changed)
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        RedbState::remove(self, APPROVALS, id, StateChange::Approval(id.to_owned()))
    }
}

impl PinStore for RedbState {
    fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        Ok(self
            .all(MCP_TOOLS)?
            .into_iter()
            .map(|(key, p)| {
                p.unwrap_or_else(|e| {
                    let (server, tool) = key.split_once('\0').unwrap_or((&key, ""));
                    fallback::pin(server, tool, &e)
                })
            })
            .collect())
    }

    fn save_pins(&self, pins: &[Pin]) -> Result<(), StoreError> {
        let encoded = pins
            .iter()
            .map(|p| Ok((pin_key(&p.server, &p.tool), self.encode("pin", p)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write("save pins", |w| {
            let mut t = w.open_table(MCP_TOOLS)?;
            for (k, v) in &encoded {
                t.insert(k.as_str(), v.as_str())?;
            }
            Ok(())
        })?;
        self.announce(StateChange::Pins);
        Ok(())
    }
}

impl FlowStore for RedbState {
    fn flows(&self) -> Result<Vec<(String, StoredFlow)>, StoreError> {
        Ok(self
            .all(FLOWS)?
            .into_iter()
            // A flow that does not decode cannot be failed closed on label
            // by label: it is dropped, counted and logged by `all`.
            .filter_map(|(key, f)| f.ok().map(|f| (key, f)))
            .collect())
    }

    fn flow(&self, key: &str) -> Result<Option<StoredFlow>, StoreError> {
        let fail = |e: redb::Error| database(&self.path, "read", e);
        let read = self.db.begin_read().map_err(|e| fail(e.into()))?;
        let t = read.open_table(FLOWS).map_err(|e| fail(e.into()))?;
        let Some(v) = t.get(key).map_err(|e| fail(e.into()))? else {
            return Ok(None);
        };
        // A session whose labels cannot be read is not taken to hold none.
        serde_json::from_str(v.value())
            .map(Some)
            .map_err(|e| StoreError::Database {
                path: self.path.clone(),
                what: "decode a session's flow",
                source: Box::new(e),
            })
    }

    fn add_flow(&self, key: &str, added: &StoredFlow) -> Result<(), StoreError> {
        // Read, merged and written in one write transaction: redb has one
        // writer at a time.
        let encoded = std::cell::RefCell::new(Ok(()));
        self.write("add a session's flow", |w| {
            let mut t = w.open_table(FLOWS)?;
            let stored: Option<StoredFlow> = t
                .get(key)?
                .and_then(|v| serde_json::from_str(v.value()).ok());
            let merged = super::merged_flow(stored, added);
            match self.encode("flow", &merged) {
                Ok(json) => {
                    t.insert(key, json.as_str())?;
                }
                Err(e) => *encoded.borrow_mut() = Err(e),
            }
            Ok(())
        })?;
        encoded.into_inner()
    }

    fn forget_flow(&self, key: &str, names: &[String]) -> Result<(), StoreError> {
        self.write("forget a session's labels", |w| {
            let mut t = w.open_table(FLOWS)?;
            let stored: Option<StoredFlow> = t
                .get(key)?
                .and_then(|v| serde_json::from_str(v.value()).ok());
            match stored.and_then(|s| super::forgotten_flow(s, names)) {
                Some(kept) => {
                    // Numbers and strings: encoding cannot fail.
                    let json = serde_json::to_string(&kept).unwrap_or_default();
                    t.insert(key, json.as_str())?;
                }
                None => {
                    t.remove(key)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::conformance::suspension;

    #[test]
    fn what_is_written_is_read_after_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let s = RedbState::open(dir.path()).expect("open");
            s.suspend("bot", &suspension("r")).expect("put");
            s.suspend("gone", &suspension("x")).expect("put");
            s.resume("gone").expect("remove");
            s.save_spend(&[("bot".into(), DaySpend::default())])
                .expect("spend");
        }
        let s = RedbState::open(dir.path()).expect("reopen");
        assert_eq!(
            s.suspensions().expect("read"),
            [("bot".to_owned(), suspension("r"))]
        );
        assert!(s.breakers().expect("read").is_empty());
        assert_eq!(s.spend().expect("read").len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(STATE_FILE), b"not a database at all").expect("write");
        let e = RedbState::open(dir.path()).expect_err("refused");
        assert!(e.to_string().contains(STATE_FILE), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }
}
