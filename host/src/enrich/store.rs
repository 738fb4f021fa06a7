//! The host's durable state on local disk (suspensions, open breakers,
//! approvals): an embedded redb database in
//! the state directory. Every write is a committed transaction (synced
//! before it returns), so what a change reported survives a crash or a
//! restart. Values are JSON, so a newer Arbiter reads what an older one
//! wrote and an operator can read a dump.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The file in the state directory.
pub const STATE_FILE: &str = "state.redb";

/// A table of JSON values by string key.
pub type Table = TableDefinition<'static, &'static str, &'static str>;

/// Suspended agents, by id.
pub const SUSPENSIONS: Table = TableDefinition::new("suspensions");
/// Open circuit breakers, by agent id.
pub const BREAKERS: Table = TableDefinition::new("breakers");
/// Approvals, by id.
pub const APPROVALS: Table = TableDefinition::new("approvals");
/// Each agent's spend of the day, by agent id.
pub const SPEND: Table = TableDefinition::new("spend");
/// MCP tool definitions pinned by the gateway, by server and tool.
pub const MCP_TOOLS: Table = TableDefinition::new("mcp_tools");

/// The durable store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The state could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store `{path}`: {problem}")]
pub struct StoreError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: String,
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating the directory
    /// owner-only. One process holds it at a time.
    ///
    /// # Errors
    /// A [`StoreError`] naming the file: it cannot be created, is locked by
    /// another process, or is not a database.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(STATE_FILE);
        let fail = |problem: String| StoreError {
            path: path.clone(),
            problem,
        };
        create_private_dir(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
        let db = Database::create(&path).map_err(|e| fail(e.to_string()))?;
        let store = Store { db, path };
        // Tables exist from the first start, so reads never meet a missing one.
        store.write(|w| {
            for table in [SUSPENSIONS, BREAKERS, APPROVALS, SPEND, MCP_TOOLS] {
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

    /// Every entry of `table`, decoded; entries that do not decode are
    /// skipped with a warning rather than stopping the start.
    ///
    /// # Errors
    /// A [`StoreError`] when the table cannot be read.
    pub fn all<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = read.open_table(table).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.fail(e))? {
            let (k, v) = entry.map_err(|e| self.fail(e))?;
            match serde_json::from_str(v.value()) {
                Ok(value) => out.push((k.value().to_owned(), value)),
                Err(e) => tracing::warn!(
                    table = table.name(),
                    key = k.value(),
                    error = %e,
                    "a stored entry does not decode; skipped"
                ),
            }
        }
        Ok(out)
    }

    /// Sets `key` to `value` in `table`, committed before it returns.
    ///
    /// # Errors
    /// A [`StoreError`] when the transaction cannot commit.
    pub fn put(&self, table: Table, key: &str, value: &impl Serialize) -> Result<(), StoreError> {
        let json = serde_json::to_string(value).map_err(|e| self.fail(e))?;
        self.write(|w| {
            w.open_table(table)?.insert(key, json.as_str())?;
            Ok(())
        })
    }

    /// Sets every `(key, value)` of `entries` in `table`, in one committed
    /// transaction.
    ///
    /// # Errors
    /// A [`StoreError`] when the transaction cannot commit.
    pub fn put_all<T: Serialize>(
        &self,
        table: Table,
        entries: &[(String, T)],
    ) -> Result<(), StoreError> {
        let encoded = entries
            .iter()
            .map(|(k, v)| Ok((k.as_str(), serde_json::to_string(v)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| self.fail(e))?;
        self.write(|w| {
            let mut t = w.open_table(table)?;
            for (k, v) in &encoded {
                t.insert(*k, v.as_str())?;
            }
            Ok(())
        })
    }

    /// Removes `key` from `table`, committed before it returns.
    ///
    /// # Errors
    /// A [`StoreError`] when the transaction cannot commit.
    pub fn remove(&self, table: Table, key: &str) -> Result<(), StoreError> {
        self.write(|w| {
            w.open_table(table)?.remove(key)?;
            Ok(())
        })
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| self.fail(e))?;
        f(&w).map_err(|e| self.fail(e))?;
        w.commit().map_err(|e| self.fail(e))
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            problem: e.to_string(),
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The default state directory: `$ARBITER_STATE_DIR`,
/// `$XDG_STATE_HOME/arbiter/state` or `~/.local/state/arbiter/state`.
pub fn default_dir() -> Option<PathBuf> {
    crate::config::env_path("ARBITER_STATE_DIR")
        .or_else(|| crate::config::env_path("XDG_STATE_HOME").map(|d| d.join("arbiter/state")))
        .or_else(|| crate::config::env_path("HOME").map(|h| h.join(".local/state/arbiter/state")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_is_read_after_a_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.put(SUSPENSIONS, "bot", &serde_json::json!({"reason": "r"}))
                .expect("put");
            s.put(SUSPENSIONS, "gone", &serde_json::json!({}))
                .expect("put");
            s.remove(SUSPENSIONS, "gone").expect("remove");
        }
        let s = Store::open(dir.path()).expect("reopen");
        let all: Vec<(String, serde_json::Value)> = s.all(SUSPENSIONS).expect("read");
        assert_eq!(
            all,
            [("bot".to_owned(), serde_json::json!({"reason": "r"}))]
        );
        assert!(
            s.all::<serde_json::Value>(BREAKERS)
                .expect("read")
                .is_empty()
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(STATE_FILE), b"not a database at all").expect("write");
        let e = Store::open(dir.path()).expect_err("refused");
        assert!(e.to_string().contains(STATE_FILE), "{e}");
    }
}
