//! Where the host keeps files: directories from the environment, and
//! owner-only directories for what other users must not read or plant
//! (compiled code, decision logs, state).

use std::path::{Path, PathBuf};

/// The path in environment variable `name`, if set and not empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$OVERRIDE`, else `$XDG_<BASE>/arbiter/<sub>` (`XDG_STATE_HOME` or
/// `XDG_CACHE_HOME`), else `$HOME/<home_base>/arbiter/<sub>`.
pub fn default_dir(over: &str, xdg: &str, home_base: &str, sub: &str) -> Option<PathBuf> {
    let under = |base: PathBuf| {
        let dir = base.join("arbiter");
        if sub.is_empty() { dir } else { dir.join(sub) }
    };
    env_path(over)
        .or_else(|| env_path(xdg).map(under))
        .or_else(|| env_path("HOME").map(|h| under(h.join(home_base))))
}

/// Creates `dir` and its parents; the last one readable by its owner only.
///
/// # Errors
/// The I/O error of the creation.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `bytes` to `path` as a new file (never over an existing one)
/// with permissions `mode`, synced before it returns.
///
/// # Errors
/// The I/O error; `AlreadyExists` when `path` is there.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Whether `path` lies inside `dir`, both resolved through links; false
/// when either cannot be resolved.
pub fn is_inside(path: &Path, dir: &Path) -> bool {
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(path), Ok(dir)) => path.starts_with(dir),
        _ => false,
    }
}

/// The permission bits of a file others than its owner may read or
/// write, as a private key must not be; `None` when it is owner-only (or
/// the platform has no such bits).
pub fn shared_mode(meta: &std::fs::Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// A 32-byte secret kept in the file `path`: read, or at the first start
/// made from the OS's randomness and written owner-only (whole, before
/// any use). Two first starts at once agree: the first to link its file
/// in place wins, and both read that one back.
///
/// # Errors
/// The I/O error, or a file that does not hold 32 bytes.
pub fn secret_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("`{}` is not a 32-byte key", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            write_new(&tmp, &key, 0o600)?;
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            secret_key(path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_private_dir_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("a/b");
        create_private_dir(&dir).expect("create");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_key_is_made_once_owner_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("dir");
        let path = root.path().join("k");
        let first = secret_key(&path).expect("made");
        assert_eq!(secret_key(&path).expect("read"), first);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        std::fs::write(&path, b"short").expect("write");
        assert!(secret_key(&path).is_err());
    }
}
