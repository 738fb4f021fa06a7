//! Builds a workspace of guest policies for `wasm32-wasip2`; shared by the
//! host's and the test suite's build scripts.
//!
//! The guests are built by a nested `cargo build` into `<target>/policies`:
//! one directory shared by every build of the host and by the test suite,
//! so each guest is compiled once per run, and never the outer build's own
//! directory, so the two cargo processes never wait on each other's lock.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `<target>/policies`, where `<target>` is the outer build's target
/// directory: OUT_DIR is `<target>/<profile>/build/<pkg>-<hash>/out`, or
/// one level deeper when cross-compiling the host.
pub fn policies_target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("ARBITER_POLICIES_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let target = out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .or_else(|| out_dir.ancestors().nth(4))
        .expect("OUT_DIR is deep inside the target directory");
    target.join("policies")
}

/// Runs `cargo build --release --target wasm32-wasip2` on the guest
/// workspace `manifest`, panicking with the fix when the target is missing.
pub fn build_guests(manifest: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(manifest)
        // From the guest workspace, so its `.cargo/config.toml` applies.
        .current_dir(manifest.parent().unwrap_or(Path::new(".")))
        .env("CARGO_TARGET_DIR", target_dir)
        // The outer build's flags are for the host, not the guests.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{cargo}`: {e}"));
    if !status.success() {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"))
            .unwrap_or(true);
        if !installed {
            panic!(
                "the wasm32-wasip2 target is not installed; run `rustup target add wasm32-wasip2` \
                 (scripts/build does it for you)"
            );
        }
        panic!(
            "building the policies in {} failed (see above)",
            manifest.display()
        );
    }
}

/// The component the guest build made for crate `name`, panicking if it is
/// missing.
pub fn artifact(target_dir: &Path, name: &str) -> PathBuf {
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        wasm.is_file(),
        "the guest build did not produce {}",
        wasm.display()
    );
    wasm
}
