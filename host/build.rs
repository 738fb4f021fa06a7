//! Builds the example policies for `wasm32-wasip2` and writes
//! `$OUT_DIR/examples.rs`, which embeds them.
//!
//! The guests are a workspace of their own (`example-policies/`), built by
//! [`build_guests`].

mod build_guests;

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

use build_guests::{artifact, build_guests, policies_target_dir};

const EXAMPLES: &[&str] = &[
    "procurement",
    "support-refunds",
    "pii-redact",
    "shell-guard",
    "rate-guard",
    "flow-guard",
];

fn main() {
    if env::var_os("CARGO_FEATURE_EXAMPLE_POLICIES").is_none() {
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ is inside the workspace");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let guests = root.join("example-policies");

    for path in ["wit", "policy-sdk/src", "policy-sdk/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.lock").display()
    );
    for name in EXAMPLES {
        println!(
            "cargo:rerun-if-changed={}",
            guests.join(name).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            guests.join(name).join("Cargo.toml").display()
        );
    }

    let target_dir = policies_target_dir(&out_dir);
    build_guests(&guests.join("Cargo.toml"), &target_dir);

    let mut code = String::from(
        "/// The embedded example policies: (name, component bytes).\nconst EXAMPLES: &[(&str, &[u8])] = &[\n",
    );
    for name in EXAMPLES {
        let wasm = artifact(&target_dir, name);
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            wasm.display().to_string()
        )
        .expect("string");
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("examples.rs"), code).expect("write examples.rs");
}
