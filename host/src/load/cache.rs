//! The on-disk cache of compiled components, so a restart does not
//! recompile. Entries are keyed by the engine's compatibility hash (the
//! wasmtime version and every setting that changes generated code) and the
//! SHA-256 of the component bytes:
//! `<dir>/<engine hash>/<component sha256>.cwasm`.
//!
//! Deserializing a compiled artifact trusts its bytes, so only entries
//! this cache wrote are ever deserialized: each carries an HMAC-SHA256,
//! under a key the cache made at its first start (`cache.key`, 32 random
//! bytes, owner-only), over the engine hash, the component digest and the
//! artifact. An entry found by name whose tag does not verify (planted,
//! altered, or renamed from another component) is never deserialized: it
//! is counted ([`CompileCache::rejected`]), recompiled and replaced. The
//! directory is owner-only (0700) and entries are written to a temporary
//! name and renamed into place. Policy files given by users are always
//! compiled from source; a precompiled file is never accepted as a policy.
//!
//! What the key does not stop: a process running as Arbiter's own user
//! that reads `cache.key` can forge entries. Run governed servers and
//! agents as other users, which the stdio gateway's cleared environment
//! alone does not do.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::engine::Engine;

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Loaded from the cache: no compilation.
    Hit,
    /// Compiled now, and stored for next time.
    Miss,
    /// Compiled now; no cache is configured (or it could not be written).
    Disabled,
    /// Compiled now: the entry found did not authenticate, and was
    /// replaced.
    Rejected,
}

/// The first bytes of an entry: the format, then the 32-byte tag.
const MAGIC: &[u8; 8] = b"ARBCWSM1";
/// The key file's name in the cache directory.
pub const KEY_FILE: &str = "cache.key";

/// A directory of compiled components.
#[derive(Clone)]
pub struct CompileCache {
    dir: PathBuf,
    key: Arc<[u8; 32]>,
    rejected: Arc<AtomicU64>,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// Opens (creating it owner-only if needed) the cache at `dir`.
    ///
    /// # Errors
    /// The I/O error from creating the directory, or a refusal when group
    /// or others may write to it: native code is loaded from there.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        crate::paths::create_private_dir(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&dir)?.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "`{}` is writable by group or others (mode {:o}); compiled code is loaded from it, so it must not be",
                        dir.display(),
                        mode & 0o777
                    ),
                ));
            }
        }
        let key = Arc::new(crate::paths::secret_key(&dir.join(KEY_FILE))?);
        Ok(CompileCache {
            dir,
            key,
            rejected: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Entries refused since it opened: found, but not authenticated.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The tag of an entry for `digest_hex` under `engine_hash`.
    fn tag(&self, engine_hash: &str, digest_hex: &str, artifact: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length; 32 bytes always fit.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..])
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(engine_hash.as_bytes());
        mac.update(&[0]);
        mac.update(digest_hex.as_bytes());
        mac.update(&[0]);
        mac.update(artifact);
        mac
    }

    /// The default location: `$ARBITER_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/arbiter`, else `$HOME/.cache/arbiter`.
    pub fn default_dir() -> Option<PathBuf> {
        crate::paths::default_dir("ARBITER_CACHE_DIR", "XDG_CACHE_HOME", ".cache", "")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the compiled form of `bytes` (whose SHA-256 is `digest_hex`)
    /// from the cache, or compiles and stores it.
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest_hex: &str,
    ) -> wasmtime::Result<(Component, CacheStatus)> {
        let hash = engine_hash(engine);
        let engine_dir = self.dir.join(&hash);
        let path = engine_dir.join(format!("{digest_hex}.cwasm"));
        let mut found = CacheStatus::Miss;
        // Read into memory rather than `deserialize_file`, which maps the
        // file: a mapped entry truncated by anyone else would crash the
        // process with SIGBUS the next time its code runs.
        if let Ok(entry) = fs::read(&path) {
            match self.authenticated(&hash, digest_hex, &entry) {
                Some(artifact) => {
                    // SAFETY: the tag proves these bytes are an artifact this
                    // cache serialized, for this component, from an engine with
                    // the same compatibility hash (see the module doc).
                    // wasmtime still checks the header and refuses a mismatch.
                    match unsafe { Component::deserialize(engine.wasmtime(), artifact) } {
                        Ok(c) => return Ok((c, CacheStatus::Hit)),
                        Err(e) => tracing::warn!(
                            path = %path.display(),
                            error = %e,
                            "compiled cache entry unusable; recompiling"
                        ),
                    }
                }
                None => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    found = CacheStatus::Rejected;
                    tracing::warn!(
                        path = %path.display(),
                        "compiled cache entry fails authentication (planted or altered); not loaded, recompiling"
                    );
                }
            }
        }
        let component = engine.compile(bytes)?;
        let status = match self.store(&hash, digest_hex, &engine_dir, &path, &component) {
            Ok(()) => found,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache");
                CacheStatus::Disabled
            }
        };
        Ok((component, status))
    }
}

impl CompileCache {
    /// The artifact of `entry`, if its tag verifies.
    fn authenticated<'a>(&self, hash: &str, digest_hex: &str, entry: &'a [u8]) -> Option<&'a [u8]> {
        let rest = entry.strip_prefix(MAGIC)?;
        let (tag, artifact) = rest.split_at_checked(32)?;
        // `verify_slice` compares in constant time.
        self.tag(hash, digest_hex, artifact)
            .verify_slice(tag)
            .ok()
            .map(|()| artifact)
    }

    fn store(
        &self,
        hash: &str,
        digest_hex: &str,
        engine_dir: &Path,
        path: &Path,
        component: &Component,
    ) -> std::io::Result<()> {
        let serialized = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let tag = self
            .tag(hash, digest_hex, &serialized)
            .finalize()
            .into_bytes();
        crate::paths::create_private_dir(engine_dir)?;
        let tmp = engine_dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&tag)?;
        f.write_all(&serialized)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    }
}

/// The engine's compatibility hash as 16 hex digits. SHA-256 rather than
/// `DefaultHasher`, whose output may change between Rust releases.
fn engine_hash(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    engine
        .wasmtime()
        .precompile_compatibility_hash()
        .hash(&mut h);
    crate::hex::encode(&h.0.finalize()[..8])
}
