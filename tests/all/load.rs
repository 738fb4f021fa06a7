//! The load pipeline: every refusal names its step and its cause, and the
//! compile cache spares a restart from recompiling.

use arbiter::evaluate::{Limits, Reuse, WasiGrants};
use arbiter::load::{self, CacheStatus, CompileCache, LoadProblem, LoadStep, PolicySpec};
use arbiter::route::RouteTable;
use arbiter::{Outcome, PolicySet};
use arbiter_tests::{arbiter, artifacts, engine, load_file, request, route_all};
use serde_json::json;

fn load_err(path: &str, settings: serde_json::Value, limits: Limits) -> load::LoadError {
    load_file("p", path, settings, limits).expect_err("refused")
}

#[test]
fn forbidden_imports_are_refused_by_name_and_why() {
    for (path, import, why) in [
        (artifacts::NET_IMPORT, "wasi:sockets/tcp@", "never provided"),
        (
            artifacts::CLOCK_IMPORT,
            "wasi:clocks/",
            "`wasi.clocks = true`",
        ),
        // Rust's std links the wall clock with the filesystem.
        (
            artifacts::FS_IMPORT,
            "wasi:clocks/wall-clock",
            "`wasi.clocks = true`",
        ),
    ] {
        let e = load_err(path, json!({}), Limits::default());
        assert_eq!(e.step, LoadStep::CheckImports);
        let LoadProblem::ForbiddenImports(imports) = &e.problem else {
            panic!("wrong problem: {e}");
        };
        assert!(
            imports
                .iter()
                .any(|(i, reason)| i.starts_with(import) && reason.contains(why)),
            "{imports:?}"
        );
        assert!(e.to_string().contains(import), "{e}");
        assert!(e.to_string().contains("at step check-imports"), "{e}");
    }
    // Granting clocks does not grant the network.
    let granted = Limits {
        wasi: WasiGrants {
            clocks: true,
            random: true,
        },
        ..Limits::default()
    };
    let e = load_err(artifacts::NET_IMPORT, json!({}), granted);
    assert!(e.to_string().contains("wasi:sockets/tcp@"), "{e}");
    assert!(!e.to_string().contains("wasi:clocks"), "{e}");
}

#[test]
fn granted_clocks_read_the_time_but_never_wait_and_the_filesystem_is_empty() {
    let clocks = Limits {
        wasi: WasiGrants {
            clocks: true,
            random: false,
        },
        ..Limits::default()
    };
    // The policy sleeps ten seconds; its pollables are ready at once, so
    // it answers well inside the 100 ms deadline instead of being cut off.
    let sleeper = load_file("sleeper", artifacts::CLOCK_IMPORT, json!({}), clocks).expect("loads");
    let d = arbiter(vec![sleeper]).decide(&request("tool", "x", json!({})));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "clock.sleep"),
        "{}",
        d.reason
    );
    // The filesystem is linked with no directory in it: reading
    // /etc/passwd finds nothing.
    let reader = load_file("reader", artifacts::FS_IMPORT, json!({}), clocks).expect("loads");
    let d = arbiter(vec![reader]).decide(&request("tool", "x", json!({})));
    assert_eq!(
        (d.outcome, d.reason.as_str()),
        (Outcome::Allow, "read 0 bytes")
    );
}

#[test]
fn a_route_to_a_policy_that_failed_to_load_denies_naming_the_failure() {
    // The one assembler keeps a policy that fails as a failure of the set.
    let config = arbiter::config::Config::parse(
        &format!(
            "[[policies]]\nname = \"reader\"\nfile = {:?}\n\n[[routes]]\nkind = \"*\"\nchain = [\"reader\"]\n",
            artifacts::NET_IMPORT
        ),
        "test",
    )
    .expect("config");
    let set = arbiter::set::assemble(&engine(), None, &config, std::path::Path::new("."))
        .expect("assembled")
        .set;
    assert!(set.failures().contains_key("reader"));
    let d = arbiter::Arbiter::new(engine(), set).decide(&request("tool", "x", json!({})));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Deny, "failure.missing")
    );
    assert!(d.reason.contains("wasi:sockets/"), "{}", d.reason);
}

#[test]
fn unreadable_and_invalid_bytes_name_their_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.wasm");
    let e = load_err(
        missing.to_str().expect("utf-8"),
        json!({}),
        Limits::default(),
    );
    assert_eq!(e.step, LoadStep::Read);
    assert!(e.to_string().contains("nope.wasm"), "{e}");

    for (bytes, what) in [
        (&b"not wasm at all"[..], "garbage"),
        (&b"\0asm\x01\0\0\0"[..], "a core module"),
    ] {
        let file = dir.path().join("bad.wasm");
        std::fs::write(&file, bytes).expect("write");
        let e = load_err(file.to_str().expect("utf-8"), json!({}), Limits::default());
        assert_eq!(e.step, LoadStep::Compile, "{what}: {e}");
        assert!(
            e.to_string().contains("not a valid WebAssembly component"),
            "{what}: {e}"
        );
    }
}

#[test]
fn precompiled_artifacts_are_never_accepted_as_policies() {
    let engine = engine();
    let bytes = std::fs::read(artifacts::MISBEHAVE).expect("read");
    let native = engine
        .wasmtime()
        .precompile_component(&bytes)
        .expect("precompile");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("p.cwasm");
    std::fs::write(&file, native).expect("write");
    let e = load_err(file.to_str().expect("utf-8"), json!({}), Limits::default());
    assert_eq!(e.step, LoadStep::Compile);
    assert!(e.to_string().contains("precompiled artifact"), "{e}");
}

#[test]
fn settings_refusals_name_the_policy_and_key() {
    let e = load_err(artifacts::MISBEHAVE, json!({"no": 1}), Limits::default());
    assert_eq!(e.step, LoadStep::ValidateSettings);
    assert_eq!(
        e.to_string(),
        format!(
            "policy `p` ({}) failed to load at step validate-settings: settings key `no`: refused on purpose",
            artifacts::MISBEHAVE
        )
    );
    let spec = PolicySpec {
        name: "procurement".into(),
        source: arbiter::examples::source("procurement").expect("embedded"),
        settings: json!({"tables": "orders"}),
        limits: Limits::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let e = load::load(&engine(), None, &spec).expect_err("refused");
    assert!(
        e.to_string().ends_with(
            "settings key `tables`: invalid type: string \"orders\", expected a sequence"
        ),
        "{e}"
    );
}

#[test]
fn validate_settings_that_fails_is_a_named_load_failure() {
    let e = load_err(
        artifacts::MISBEHAVE,
        json!({"x": "panic"}),
        Limits::default(),
    );
    assert!(
        matches!(&e.problem, LoadProblem::ValidateFailed(f) if f.kind.as_str() == "panic"),
        "{e}"
    );
    let small = Limits {
        fuel: 1_000_000,
        ..Limits::default()
    };
    let e = load_err(artifacts::MISBEHAVE, json!({"x": "loop"}), small);
    assert!(
        matches!(&e.problem, LoadProblem::ValidateFailed(f) if f.kind.as_str() == "fuel"),
        "{e}"
    );
}

#[test]
fn limits_over_the_engine_are_refused() {
    let limits = Limits {
        max_memory_bytes: 1 << 40,
        ..Limits::default()
    };
    let e = load_err(artifacts::MISBEHAVE, json!({}), limits);
    assert_eq!(e.step, LoadStep::CheckLimits);
    let tables = Limits {
        max_table_elements: 1 << 20,
        ..Limits::default()
    };
    let e = load_err(artifacts::MISBEHAVE, json!({}), tables);
    assert_eq!(e.step, LoadStep::CheckLimits);
    assert!(
        e.to_string()
            .contains("max_table_elements 1048576 is over the engine's max_table_elements 20000"),
        "{e}"
    );
    // Reuse asked for with nowhere to keep an instance is a mistake, not off.
    let nowhere = Limits {
        reuse: Reuse {
            decisions: 10,
            across_agents: false,
            idle: 0,
        },
        ..Limits::default()
    };
    let e = load_err(artifacts::MISBEHAVE, json!({}), nowhere);
    assert!(
        e.to_string().contains("reuse.idle must be at least 1"),
        "{e}"
    );
}

#[test]
fn the_compile_cache_spares_a_restart_and_survives_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = PolicySpec {
        name: "procurement".into(),
        source: arbiter::examples::source("procurement").expect("embedded"),
        settings: json!({}),
        limits: Limits::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let cache = CompileCache::open(dir.path()).expect("cache");
    let first = load::load(&engine(), Some(&cache), &spec).expect("loads");
    assert_eq!(first.cache, CacheStatus::Miss);
    // A restart: a new engine with the same settings, the same directory.
    let engine2 = arbiter::engine::Engine::new(&Default::default()).expect("engine");
    let cache2 = CompileCache::open(dir.path()).expect("cache");
    let second = load::load(&engine2, Some(&cache2), &spec).expect("loads");
    assert_eq!(second.cache, CacheStatus::Hit);
    assert_eq!(second.version, first.version);

    // Corrupt every entry: the next load refuses it unread, recompiles and
    // still decides.
    for entry in walk(dir.path()) {
        std::fs::write(&entry, b"garbage").expect("corrupt");
    }
    let third = load::load(&engine2, Some(&cache2), &spec).expect("loads");
    assert_eq!(third.cache, CacheStatus::Rejected);
    assert_eq!(cache2.rejected(), 1);
    let set = PolicySet::from_loaded(
        vec![third],
        RouteTable::new(vec![route_all(&["procurement"])]),
    );
    let d = arbiter::Arbiter::new(engine2, set).decide(&request("db", "db.query", json!({})));
    assert_eq!(d.rule, "db.table-not-allowed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let engine_dir = walk(dir.path())[0].parent().expect("parent").to_owned();
        let mode = std::fs::metadata(&engine_dir)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "entries must sit in an owner-only dir: {mode:o}"
        );
    }
}

#[cfg(unix)]
#[test]
fn a_cache_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let e = CompileCache::open(dir.path()).expect_err("refused");
    assert!(e.to_string().contains("writable by group or others"), "{e}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "cwasm") {
            out.push(p);
        }
    }
    out
}
