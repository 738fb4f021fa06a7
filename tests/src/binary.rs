//! The `arbiter` binary of this build, for the tests that run it as a
//! process (the MCP gateways). Cargo builds it beside this test binary when
//! the workspace is tested; a binary older than the library it was built
//! from would test old code, so it is refused, saying how to rebuild it.

use std::path::PathBuf;
use std::time::SystemTime;

/// The path of `target/<profile>/arbiter`, checked to be as new as the
/// `arbiter` library this test binary links.
///
/// # Panics
/// When the binary is missing or stale, with the command that builds it.
pub fn arbiter() -> PathBuf {
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
    let newest_lib = std::fs::read_dir(profile.join("deps"))
        .expect("target/<profile>/deps")
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libarbiter-") && name.ends_with(".rlib")
        })
        .filter_map(|e| modified(&e.path()))
        .max();
    if let Some(lib) = newest_lib {
        assert!(
            built >= lib,
            "the arbiter binary at {} is older than the arbiter library: {rebuild}",
            bin.display()
        );
    }
    bin
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
