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
}
