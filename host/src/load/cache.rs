//! The on-disk cache of compiled components, so a restart does not
//! recompile. Entries are keyed by the engine's compatibility hash (the
//! wasmtime version and every setting that changes generated code) and the
//! SHA-256 of the component bytes:
//! `<dir>/<engine hash>/<component sha256>.cwasm`.
//!
//! Deserializing a compiled artifact trusts its bytes, so only files this
//! cache wrote are ever read: the directory is created owner-only (0700),
//! entries are written to a temporary name and renamed into place, and an
//! entry that fails to load is recompiled and replaced. Policy files given
//! by users are always compiled from source; a precompiled file is never
//! accepted as a policy.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

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
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
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
        Ok(CompileCache { dir })
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
        let engine_dir = self.dir.join(engine_hash(engine));
        let path = engine_dir.join(format!("{digest_hex}.cwasm"));
        // Read into memory rather than `deserialize_file`, which maps the
        // file: a mapped entry truncated by anyone else would crash the
        // process with SIGBUS the next time its code runs.
        if let Ok(compiled) = fs::read(&path) {
            // SAFETY: the bytes are an artifact this cache serialized from a
            // component compiled by an engine with the same compatibility
            // hash, in a directory only this user can write (see the module
            // doc). wasmtime still checks the header and refuses a mismatch.
            match unsafe { Component::deserialize(engine.wasmtime(), &compiled) } {
                Ok(c) => return Ok((c, CacheStatus::Hit)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "compiled cache entry unusable; recompiling"
                ),
            }
        }
        let component = Component::new(engine.wasmtime(), bytes)?;
        let status = match store(&engine_dir, &path, &component) {
            Ok(()) => CacheStatus::Miss,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache");
                CacheStatus::Disabled
            }
        };
        Ok((component, status))
    }
}

fn store(engine_dir: &Path, path: &Path, component: &Component) -> std::io::Result<()> {
    let serialized = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    crate::paths::create_private_dir(engine_dir)?;
    let tmp = engine_dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serialized)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
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
