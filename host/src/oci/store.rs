//! The store: pulled artifacts on disk, one directory per manifest digest,
//! and for each reference the digest it last served, so a restart with
//! the registry down serves what served before. A reference that never
//! served has the digest of its first pull instead, which is what its
//! first load tries.
//!
//! ```text
//! <store>/sha256/<hex>/manifest.json      the manifest, as pulled
//! <store>/sha256/<hex>/policy.wasm        the component
//! <store>/sha256/<hex>/policy.wasm.sig    its signature, when signed
//! <store>/refs/<sha256 of the reference>         {"reference": …, "digest": …}, last served
//! <store>/refs/<sha256 of the reference>.pulled  the same, first pulled, before it served
//! ```
//!
//! Nothing read back is trusted for its name: the manifest must hash to
//! its directory's digest and each file to its layer's digest, or the
//! entry is treated as absent.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::OciError;
use super::artifact::{self, Artifact, digest_of, is_sha256_digest};

/// Pulled artifacts on disk, by digest.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// An artifact in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The manifest's digest.
    pub digest: String,
    /// The component file; its signature, when signed, is beside it as
    /// `policy.wasm.sig`, where the verify stage looks.
    pub component: PathBuf,
}

/// Which pin of a reference: what it served, or what was pulled for its
/// first load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    /// The digest that last served.
    Served,
    /// The digest pulled before the reference ever served.
    Pulled,
}

#[derive(Serialize, Deserialize)]
struct Pin {
    reference: String,
    digest: String,
}

impl Store {
    /// `$ARBITER_OCI_DIR`, else `$XDG_STATE_HOME/arbiter/oci`, else
    /// `~/.local/state/arbiter/oci`.
    pub fn default_dir() -> Option<PathBuf> {
        crate::paths::default_dir("ARBITER_OCI_DIR", "XDG_STATE_HOME", ".local/state", "oci")
    }

    /// The store in `dir`, created owner-only if it is not there.
    ///
    /// # Errors
    /// [`OciError::Store`] when it cannot be created.
    pub fn open(dir: &Path) -> Result<Store, OciError> {
        let store = Store {
            dir: dir.to_path_buf(),
        };
        for sub in ["", "sha256", "refs", "tmp"] {
            crate::paths::create_private_dir(&dir.join(sub))
                .map_err(|e| store.error(format!("cannot create it: {e}")))?;
        }
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(&self, problem: String) -> OciError {
        OciError::Store {
            dir: self.dir.clone(),
            problem,
        }
    }

    fn entry(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|_| is_sha256_digest(digest))?;
        Some(self.dir.join("sha256").join(hex))
    }

    /// Keeps `artifact`, whose manifest (`manifest`, hashing to `digest`)
    /// was checked by the caller.
    ///
    /// # Errors
    /// [`OciError::Store`] when it cannot be written.
    pub fn put(
        &self,
        digest: &str,
        manifest: &[u8],
        artifact: &Artifact,
        max_component: u64,
    ) -> Result<Stored, OciError> {
        let Some(entry) = self.entry(digest) else {
            return Err(self.error(format!("`{digest}` is not a sha256 digest")));
        };
        if let Some(stored) = self.get(digest, max_component)? {
            return Ok(stored);
        }
        let tmp = tempfile::Builder::new()
            .prefix("pull-")
            .tempdir_in(self.dir.join("tmp"))
            .map_err(|e| self.error(format!("cannot make a directory: {e}")))?;
        let write = |name: &str, bytes: &[u8]| {
            crate::paths::write_new(&tmp.path().join(name), bytes, 0o600)
                .map_err(|e| self.error(format!("cannot write {name}: {e}")))
        };
        write("manifest.json", manifest)?;
        write("policy.wasm", &artifact.component)?;
        if let Some(sig) = &artifact.signature {
            write("policy.wasm.sig", sig)?;
        }
        // An entry that failed its check above is replaced whole.
        if entry.exists() {
            std::fs::remove_dir_all(&entry)
                .map_err(|e| self.error(format!("cannot replace a damaged entry: {e}")))?;
        }
        let tmp = tmp.keep();
        std::fs::rename(&tmp, &entry)
            .map_err(|e| self.error(format!("cannot move the pull into place: {e}")))?;
        Ok(Stored {
            digest: digest.to_owned(),
            component: entry.join("policy.wasm"),
        })
    }

    /// The artifact stored under `digest`, if it is there whole: the
    /// manifest hashes to `digest` and each file to its layer's digest.
    ///
    /// # Errors
    /// [`OciError::Store`] when the store cannot be read.
    pub fn get(&self, digest: &str, max_component: u64) -> Result<Option<Stored>, OciError> {
        let Some(entry) = self.entry(digest) else {
            return Ok(None);
        };
        let read = |name: &str| match std::fs::read(entry.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error(format!("cannot read {name} of {digest}: {e}"))),
        };
        let Some(manifest) = read("manifest.json")? else {
            return Ok(None);
        };
        if digest_of(&manifest) != digest {
            tracing::warn!(%digest, "a stored manifest does not match its digest; pulling again");
            return Ok(None);
        }
        let Ok(layers) = artifact::layers(&manifest, max_component) else {
            return Ok(None);
        };
        let matches = |name: &str, layer: Option<&artifact::Descriptor>| {
            read(name).map(|bytes| match (bytes, layer) {
                (Some(b), Some(l)) => digest_of(&b) == l.digest,
                (None, None) => true,
                _ => false,
            })
        };
        let whole = matches("policy.wasm", Some(&layers.component))?
            && matches("policy.wasm.sig", layers.signature.as_ref())?;
        if !whole {
            tracing::warn!(%digest, "a stored artifact does not match its manifest; pulling again");
            return Ok(None);
        }
        Ok(Some(Stored {
            digest: digest.to_owned(),
            component: entry.join("policy.wasm"),
        }))
    }

    fn pin_path(&self, reference: &str, kind: PinKind) -> PathBuf {
        let name = &digest_of(reference.as_bytes())["sha256:".len()..];
        let name = match kind {
            PinKind::Served => name.to_owned(),
            PinKind::Pulled => format!("{name}.pulled"),
        };
        self.dir.join("refs").join(name)
    }

    /// The digest to load for `reference`: the one it last served, else
    /// the one first pulled for it.
    ///
    /// # Errors
    /// [`OciError::Store`] when a pin cannot be read.
    pub fn pinned(&self, reference: &str) -> Result<Option<String>, OciError> {
        match self.pin_of(reference, PinKind::Served)? {
            Some(d) => Ok(Some(d)),
            None => self.pin_of(reference, PinKind::Pulled),
        }
    }

    /// The digest `reference` last served, if it has.
    ///
    /// # Errors
    /// [`OciError::Store`] when the pin cannot be read.
    pub fn served(&self, reference: &str) -> Result<Option<String>, OciError> {
        self.pin_of(reference, PinKind::Served)
    }

    fn pin_of(&self, reference: &str, kind: PinKind) -> Result<Option<String>, OciError> {
        let path = self.pin_path(reference, kind);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(format!("cannot read the pin of `{reference}`: {e}"))),
        };
        let pin: Pin = serde_json::from_slice(&text)
            .map_err(|e| self.error(format!("the pin of `{reference}` is damaged: {e}")))?;
        if pin.reference != reference || !is_sha256_digest(&pin.digest) {
            return Err(self.error(format!("the pin of `{reference}` is damaged")));
        }
        Ok(Some(pin.digest))
    }

    /// Records that `reference` served `digest` (or, with
    /// [`PinKind::Pulled`], that it was pulled to serve first).
    ///
    /// # Errors
    /// [`OciError::Store`] when the pin cannot be written.
    pub fn pin(&self, reference: &str, digest: &str, kind: PinKind) -> Result<(), OciError> {
        let pin = serde_json::to_vec(&Pin {
            reference: reference.to_owned(),
            digest: digest.to_owned(),
        })
        .map_err(|e| self.error(e.to_string()))?;
        let path = self.pin_path(reference, kind);
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))
            .map_err(|e| self.error(format!("cannot write the pin of `{reference}`: {e}")))?;
        std::io::Write::write_all(&mut tmp, &pin)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| self.error(format!("cannot write the pin of `{reference}`: {e}")))?;
        tmp.persist(&path)
            .map_err(|e| self.error(format!("cannot write the pin of `{reference}`: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> (Artifact, Vec<u8>, String) {
        let a = Artifact {
            component: b"\0asm a component".to_vec(),
            signature: Some(b"{}".to_vec()),
        };
        let manifest = a.manifest("p", "1.0.0");
        let digest = digest_of(&manifest);
        (a, manifest, digest)
    }

    #[test]
    fn what_is_put_is_got_and_what_is_altered_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let (a, manifest, digest) = artifact();
        assert_eq!(store.get(&digest, 1 << 20).expect("get"), None);
        let stored = store.put(&digest, &manifest, &a, 1 << 20).expect("put");
        assert_eq!(std::fs::read(&stored.component).expect("read"), a.component);
        assert_eq!(
            store.get(&digest, 1 << 20).expect("get"),
            Some(stored.clone())
        );
        // Altered on disk: no longer there, and a new put repairs it.
        std::fs::write(&stored.component, b"\0asm another").expect("alter");
        assert_eq!(store.get(&digest, 1 << 20).expect("get"), None);
        store
            .put(&digest, &manifest, &a, 1 << 20)
            .expect("put again");
        assert_eq!(store.get(&digest, 1 << 20).expect("get"), Some(stored));
        // A digest that is not one never becomes a path.
        assert_eq!(store.get("sha256:../../x", 1 << 20).expect("get"), None);
        assert!(store.put("sha256:../../x", &manifest, &a, 1 << 20).is_err());
    }

    #[test]
    fn pins_are_per_reference_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let (_, _, digest) = artifact();
        assert_eq!(store.pinned("r/p:1").expect("pinned"), None);
        store
            .pin("r/p:1", "sha256:pulled", PinKind::Pulled)
            .expect("pin");
        assert_eq!(
            store.pinned("r/p:1").ok(),
            None,
            "a pin that is not a digest is damaged"
        );
        let other = digest_of(b"other");
        store.pin("r/p:1", &other, PinKind::Pulled).expect("pin");
        assert_eq!(store.pinned("r/p:1").expect("pinned"), Some(other.clone()));
        assert_eq!(store.served("r/p:1").expect("served"), None);
        store.pin("r/p:1", &digest, PinKind::Served).expect("pin");
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.pinned("r/p:1").expect("pinned"),
            Some(digest),
            "served wins"
        );
        assert_eq!(store.pinned("r/p:2").expect("pinned"), None);
    }
}
