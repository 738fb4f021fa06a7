//! The `arbiter` binary of this build, for the tests that run it as a
//! process (the MCP gateways). Cargo builds it beside this test binary when
//! the workspace is tested; a binary older than the sources it is built
//! from would test old code, so it is refused, saying how to rebuild it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The path of `target/<profile>/arbiter`, checked to be newer than every
/// file of `host/src` and the host's manifest and build scripts.
///
/// # Panics
/// When the binary is missing or stale, with the command that builds it.
pub fn arbiter() -> PathBuf {
    // Checked once per test binary: the sources do not change under it.
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED.get_or_init(checked).clone()
}

fn checked() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/all-<hash> → target/<profile>
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps")
        .to_owned();
    let bin = profile.join(format!("arbiter{}", std::env::consts::EXE_SUFFIX));
    let rebuild = "build it with `cargo test --release --workspace` (or `cargo build --release -p arbiter --bin arbiter`)";
    let built = modified(&bin)
        .unwrap_or_else(|| panic!("no arbiter binary at {}: {rebuild}", bin.display()));
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host");
    if let Some((source, changed)) = newest_source(&host) {
        assert!(
            built >= changed,
            "the arbiter binary at {} is older than {}: {rebuild}",
            bin.display(),
            source.display()
        );
    }
    bin
}

fn newest_source(host: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut files = Vec::new();
    walk(&host.join("src"), &mut files);
    files.extend(["Cargo.toml", "build.rs", "build_guests.rs"].map(|f| host.join(f)));
    files
        .into_iter()
        .filter_map(|f| modified(&f).map(|t| (f, t)))
        .max_by_key(|(_, t)| *t)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
