//! Builds the hostile test policies in `hostile/` for `wasm32-wasip2` and
//! writes `$OUT_DIR/artifacts.rs`: one path constant per component.

#[path = "../host/build_guests.rs"]
mod build_guests;

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

use build_guests::{artifact, build_guests, policies_target_dir};

const HOSTILE: &[&str] = &[
    "misbehave",
    "fs-import",
    "clock-import",
    "net-import",
    "verdict-allow",
    "verdict-deny",
    "other-world",
    "procurement-v0-1",
];

fn main() {
    let here = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let guests = here.join("hostile");
    for path in [
        "../wit",
        "../policy-sdk",
        "../example-policies/procurement/src",
    ] {
        println!("cargo:rerun-if-changed={}", here.join(path).display());
    }
    for path in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guests.join(path).display());
    }
    // `verdict` is the source both verdict-* packages build.
    for name in HOSTILE.iter().chain(&["verdict"]) {
        println!("cargo:rerun-if-changed={}", guests.join(name).display());
    }
    let target_dir = policies_target_dir(&out_dir);
    build_guests(&guests.join("Cargo.toml"), &target_dir);
    let mut code = String::new();
    for name in HOSTILE {
        let wasm = artifact(&target_dir, name);
        writeln!(
            code,
            "/// The `{name}` test policy.\npub const {}: &str = {:?};",
            name.replace('-', "_").to_uppercase(),
            wasm.display().to_string()
        )
        .expect("string");
    }
    std::fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}
