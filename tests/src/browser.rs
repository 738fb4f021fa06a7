//! The operator console's browser tests: Debian's Chromium driven by
//! playwright-core (both installed by `scripts/browser-peers`) through the
//! scenarios of `tests/console/e2e.mjs`, against a server the Rust test
//! started.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Where playwright-core is installed, installing it first if needed.
fn peers() -> &'static Path {
    static PEERS: OnceLock<PathBuf> = OnceLock::new();
    PEERS.get_or_init(|| {
        let o = Command::new(repo().join("scripts/browser-peers"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/browser-peers");
        assert!(o.status.success(), "scripts/browser-peers failed");
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
    })
}

/// Where the scenarios leave their screenshots: an artifact of the run,
/// never committed.
pub fn screenshots() -> PathBuf {
    let dir = repo().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Runs scenario `name` of `tests/console/e2e.mjs` with `input` (the
/// server's addresses, the tokens, what to expect) and returns the JSON
/// it prints last. Panics with everything it printed if it fails.
pub fn scenario(name: &str, input: &serde_json::Value) -> serde_json::Value {
    let mut input = input.clone();
    input["playwright"] = peers()
        .join("node_modules/playwright-core/index.mjs")
        .display()
        .to_string()
        .into();
    input["screenshots"] = screenshots().display().to_string().into();
    let mut child = Command::new("node")
        .arg(repo().join("tests/console/e2e.mjs"))
        .arg(name)
        .env("ARBITER_CONSOLE_TEST", input.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (Node.js) runs");
    // A scenario takes seconds; a hung browser is killed, not waited on.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console scenario `{name}` failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("scenario `{name}` printed no result ({e}):\n{stdout}"))
}
